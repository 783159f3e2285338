"""Numba kernels of the learned twins' forward pass (float32, all cores): the GRU along every path (with
RouteNet-E's per-link sum of the path states), RouteNet-E's embeddings, queue and link GRU steps and its
per-hop occupancy readout.

The kernels are specialised for states of ``STATE_DIM`` (the shipped models' width): loops of a
constant length are unrolled and vectorised by LLVM. The path GRUs advance a chunk of paths one hop
at a time, so the recurrent matmul of every path at that hop is one BLAS call (the BLAS is held to
one thread per call by the caller); that runs 1.6–1.9x faster than a matrix-vector product per path.

A GRU step is ``z = σ(x_z + h·U_z + b_z)``, ``r = σ(x_r + h·U_r + b_r)``,
``h' = z·h + (1 − z)·tanh(x_h + r·(h·U_h + b_h))`` (Keras's GRU with the reset gate after the
matmul). ``tanh`` is the rational approximation Eigen evaluates on CPU, accurate to 4e-7 and,
unlike a libm call, vectorisable; ``σ(x) = (1 + tanh(x/2)) / 2``. Sums run in another order than
TensorFlow's (and per thread), so results agree with it to float32 rounding, not bit for bit.
"""

from __future__ import annotations

import numba
import numpy as np

_CLAMP = np.float32(7.90531110763549805)
_A13, _A11, _A9, _A7, _A5, _A3, _A1 = (np.float32(a) for a in (
    -2.76076847742355e-16, 2.00018790482477e-13, -8.60467152213735e-11, 5.12229709037114e-08,
    1.48572235717979e-05, 6.37261928875436e-04, 4.89352455891786e-03))
_B6, _B4, _B2, _B0 = (np.float32(b) for b in (1.19825839466702e-06, 1.18534705686654e-04,
                                                2.26843463243900e-03, 4.89352518554385e-03))
STATE_DIM = 32
_GATES = 3 * STATE_DIM
_HIDDEN = STATE_DIM // 2
_HALF = np.float32(0.5)
_ONE = np.float32(1.0)
_ZERO = np.float32(0.0)
CHUNK = 128  # paths per task: their hop-k states times the recurrent kernel are one small matmul (BLAS)


@numba.njit(cache=True, fastmath=True, inline="always")
def _tanh(x):
    x = min(max(x, -_CLAMP), _CLAMP)
    x2 = x * x
    p = ((((((_A13 * x2 + _A11) * x2 + _A9) * x2 + _A7) * x2 + _A5) * x2 + _A3) * x2 + _A1) * x
    q = ((_B6 * x2 + _B4) * x2 + _B2) * x2 + _B0
    return p / q


@numba.njit(cache=True, fastmath=True, inline="always")
def _sigmoid(x):
    return _HALF + _HALF * _tanh(_HALF * x)


@numba.njit(cache=True, fastmath=True, inline="always")
def _gru_update(states, i, x, gates, recurrent_bias, message, share):
    """The elementwise half of a GRU step: row ``i`` of ``states`` (n, d) in place from its projected
    input ``x`` (3d) and row ``i`` of ``gates`` = states · recurrent kernel (n, 3d); adds ``share`` ×
    the new state to ``message`` (d)."""
    for m in range(STATE_DIM):
        z = _sigmoid(x[m] + gates[i, m] + recurrent_bias[m])
        r = _sigmoid(x[STATE_DIM + m] + gates[i, STATE_DIM + m] + recurrent_bias[STATE_DIM + m])
        candidate = _tanh(x[2 * STATE_DIM + m]
                          + r * (gates[i, 2 * STATE_DIM + m] + recurrent_bias[2 * STATE_DIM + m]))
        new = z * states[i, m] + (_ONE - z) * candidate
        states[i, m] = new
        message[m] += share * new


@numba.njit(cache=True, inline="always")
def _dealt(task, n_chunks, threads):
    """The chunk prange iteration ``task`` of ``threads × ceil(n_chunks / threads)`` works on, -1 for none.
    A parallel loop hands each thread one contiguous block of iterations; paths sorted longest first
    would give the first thread the long ones (a 2-thread GRU ran 1.4x, not 2x, faster than one). So
    the chunks are dealt round-robin: thread j's block holds chunks j, j + threads, j + 2·threads, …"""
    per_thread = (n_chunks + threads - 1) // threads
    chunk = (task % per_thread) * threads + task // per_thread
    return chunk if chunk < n_chunks else -1


@numba.njit(cache=True, inline="always")
def _n_tasks(n_items, chunk, threads):
    """Iterations of a parallel loop that deals chunks of ``chunk`` items with :func:`_dealt`."""
    per_thread = ((n_items + chunk - 1) // chunk + threads - 1) // threads
    return threads * per_thread


@numba.njit(cache=True, inline="always")
def _dealt_items(task, n_items, chunk, threads):
    """(first item, items) of the chunk iteration ``task`` works on; (0, 0) for none."""
    c = _dealt(task, (n_items + chunk - 1) // chunk, threads)
    if c < 0:
        return 0, 0
    return c * chunk, min(chunk, n_items - c * chunk)


@numba.njit(cache=True, fastmath=True, parallel=True)
def path_gru(h, table, index, counts, offsets, recurrent_kernel, recurrent_bias, hop_share, messages, seq,
             chunk=CHUNK):
    """Run a GRU along every path, in place: ``h`` (P, d) the paths' states, sorted longest first, on
    return their final states. ``messages`` (threads, L, d: one per Numba thread), zero on entry,
    receives per thread the sum over hops of ``hop_share · state after the hop`` by link ``index``
    (RouteNet-E's message to each queue: sum it over threads); ``seq`` (H, d), unless empty, the
    state after every hop.

    Hop ``k`` of sorted path ``p`` is row ``offsets[k] + p`` (present while ``p < counts[k]``); its
    projected input (3d, ``x·W + b``) is ``table[index[row]]``. d = STATE_DIM.
    """
    n_paths = h.shape[0]
    keep = seq.shape[0] > 0
    threads = messages.shape[0]
    for task in numba.prange(_n_tasks(n_paths, chunk, threads)):
        first, width = _dealt_items(task, n_paths, chunk, threads)
        if width == 0:
            continue
        states = h[first:first + width].copy()
        gates = np.empty((width, _GATES), dtype=np.float32)
        message = messages[numba.get_thread_id()]
        for k in range(counts.shape[0]):
            active = min(width, counts[k] - first)
            if active <= 0:
                break
            np.dot(states[:active], recurrent_kernel, gates[:active])
            for i in range(active):
                row = offsets[k] + first + i
                link = index[row]
                _gru_update(states, i, table[link], gates, recurrent_bias, message[link], hop_share[row])
                if keep:
                    seq[row] = states[i]
        h[first:first + width] = states


@numba.njit(cache=True, fastmath=True, parallel=True)
def path_gru_summed(h, hop_table, hop_index, path_table, hop_scale, scale_row, counts, offsets, recurrent_kernel,
                    recurrent_bias, threads, chunk=CHUNK):
    """:func:`path_gru` without the per-hop states, each hop's projected input the sum
    ``hop_table[hop_index[row]] + path_table[p] + hop_scale[row] · scale_row`` (the RNN's inputs:
    the features of the hop's link and queue, path features, the path's share of the link);
    ``threads``: Numba's thread count."""
    n_paths = h.shape[0]
    for task in numba.prange(_n_tasks(n_paths, chunk, threads)):
        first, width = _dealt_items(task, n_paths, chunk, threads)
        if width == 0:
            continue
        states = h[first:first + width].copy()
        gates = np.empty((width, _GATES), dtype=np.float32)
        x = np.empty(_GATES, dtype=np.float32)
        unused = np.zeros(STATE_DIM, dtype=np.float32)  # the RNN sends no messages
        for k in range(counts.shape[0]):
            active = min(width, counts[k] - first)
            if active <= 0:
                break
            np.dot(states[:active], recurrent_kernel, gates[:active])
            for i in range(active):
                row = offsets[k] + first + i
                entity, scale, path = hop_table[hop_index[row]], hop_scale[row], path_table[first + i]
                for m in range(_GATES):
                    x[m] = entity[m] + path[m] + scale * scale_row[m]
                _gru_update(states, i, x, gates, recurrent_bias, unused, _ZERO)
        h[first:first + width] = states


@numba.njit(cache=True, fastmath=True, parallel=True)
def gru_rows(h, projected, recurrent_kernel, recurrent_bias, chunk=CHUNK):
    """One GRU step on every row of ``h`` (n, d), in place, given each row's projected input
    ``projected`` (n, 3d: x·W + b); RouteNet-E's queue and link updates. d = STATE_DIM."""
    n_rows = h.shape[0]
    unused = np.zeros(STATE_DIM, dtype=np.float32)
    for c in numba.prange((n_rows + chunk - 1) // chunk):
        start = c * chunk
        stop = min(n_rows, start + chunk)
        states = h[start:stop].copy()
        gates = np.dot(states, recurrent_kernel)
        for i in range(stop - start):
            _gru_update(states, i, projected[start + i], gates, recurrent_bias, unused, _ZERO)
        h[start:stop] = states


@numba.njit(cache=True, fastmath=True, parallel=True)
def embed_rows(x, w_hidden, b_hidden, w_out, b_out, out, chunk=CHUNK):
    """RouteNet-E's embedding MLP on every row of ``x`` (n, f) into ``out`` (n, d):
    tanh(relu(x·W1 + b1)·W2 + b2), a chunk of rows per matmul (the path, link and queue states)."""
    n_rows = x.shape[0]
    width = w_hidden.shape[1]
    for c in numba.prange((n_rows + chunk - 1) // chunk):
        start = c * chunk
        stop = min(n_rows, start + chunk)
        hidden = np.dot(x[start:stop], w_hidden)
        for i in range(stop - start):
            for m in range(width):
                hidden[i, m] = max(hidden[i, m] + b_hidden[m], _ZERO)
        y = np.dot(hidden, w_out)
        for i in range(stop - start):
            for m in range(out.shape[1]):
                out[start + i, m] = _tanh(y[i, m] + b_out[m])


@numba.njit(cache=True, fastmath=True, parallel=True)
def occupancy_logits(seq, hop_link, link_term, w_seq, w_hidden, b_hidden, w_out, b_out, out, chunk=CHUNK):
    """RouteNet-E's readout MLP on every hop: ``out[i]`` = logit of hop ``i``'s queue occupancy from
    [seq[i] ‖ queue[link]] (64 → 32 ReLU → 16 ReLU → 1), the queue's share ``link_term`` (L, 32:
    queue · W_queue + b) precomputed per link; a chunk of hops per matmul. d = STATE_DIM."""
    n_hops = seq.shape[0]
    for c in numba.prange((n_hops + chunk - 1) // chunk):
        start = c * chunk
        stop = min(n_hops, start + chunk)
        first = np.dot(seq[start:stop], w_seq)
        for i in range(stop - start):
            term = link_term[hop_link[start + i]]
            for m in range(STATE_DIM):
                first[i, m] = max(first[i, m] + term[m], _ZERO)
        hidden = np.dot(first, w_hidden)
        for i in range(stop - start):
            logit = b_out
            for m in range(_HIDDEN):
                logit += max(hidden[i, m] + b_hidden[m], _ZERO) * w_out[m]
            out[start + i] = logit
