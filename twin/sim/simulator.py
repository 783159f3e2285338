"""Packet-level discrete-event simulator: the ground truth ndt trains and judges against.

Every directed link is an output port with finite queues (tail drop), a
transmitter of ``capacity`` bit/s and a wire of ``prop_delay`` s. Flows emit
packets by their time and size distributions and follow their routed path.
The event loop is compiled with numba: one 4-ary heap of packet events, one
ring of departure times per link; no per-packet Python. States whose ports
all are FIFO run that loop; a state with SP, WFQ or DRR ports runs a second
loop, ``_run_scheduled``, where each port keeps its waiting packets in one ring
per queue and picks the next to send when a transmission ends (non-preemptive).

Semantics: packets are generated during ``[0, duration]``, then the network is
drained, so every packet sent is either delivered or dropped. Statistics count
the packets born after ``warmup`` (per path) and the arrivals in
``[warmup, duration]`` (per link). Delay is creation → arrival of the last bit at the destination.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numba
import numpy as np

from twin.state.errors import StateError
from twin.state.metrics import finite_or_none
from twin.state.model import NetworkState

N_BINS = 1024
BIN_RATIO = 1.02  # bins grow by 2 %: percentiles within ~1 %, from the minimum delay up to 6·10⁸ times it
MAX_PACKETS = 2e9  # packets a run may generate (about an hour of one core); beyond it the run is refused
_TIME = {"poisson": 0, "cbr": 1, "onoff": 2}
_SIZE = {"deterministic": 0, "exponential": 1, "binomial": 2}
_POLICY = {"fifo": 0, "sp": 1, "wfq": 2, "drr": 3}


@dataclass
class SimResult:
    """Per-path and per-link statistics of one simulation run (units: s, s², packets, ratios)."""

    state: NetworkState
    delay: np.ndarray  # mean delay per flow, s (nan when nothing was delivered)
    jitter: np.ndarray  # delay variance per flow, s²
    loss: np.ndarray  # dropped / sent per flow
    p50: np.ndarray
    p90: np.ndarray
    p99: np.ndarray
    sent: np.ndarray
    delivered: np.ndarray
    dropped: np.ndarray
    utilization: np.ndarray  # per link, busy time / measured window
    occupancy: np.ndarray  # per link, mean packets waiting (excludes the one in transmission)
    link_drops: np.ndarray
    link_arrivals: np.ndarray
    packet_hops: int
    wall_s: float
    duration: float  # s of traffic generation
    warmup: float  # s discarded at the start
    queue_first: np.ndarray  # per link, the index of its first queue in the queue_* arrays (one more entry at the end)
    queue_utilization: np.ndarray  # per queue, busy time serving it / measured window
    queue_occupancy: np.ndarray  # per queue, mean packets waiting
    queue_drops: np.ndarray  # per queue

    def to_dict(self) -> dict:
        """The result shape every delay source shares (docs/state.md)."""
        paths = []
        for i, flow in enumerate(self.state.flows):
            paths.append(
                {
                    "src": flow.src,
                    "dst": flow.dst,
                    "tos": int(flow.tos),
                    "delay": finite_or_none(self.delay[i]),
                    "jitter": finite_or_none(self.jitter[i]),
                    "loss": finite_or_none(self.loss[i]),
                    "p50": finite_or_none(self.p50[i]),
                    "p90": finite_or_none(self.p90[i]),
                    "p99": finite_or_none(self.p99[i]),
                    "sent": int(self.sent[i]),
                    "delivered": int(self.delivered[i]),
                    "dropped": int(self.dropped[i]),
                }
            )
        links = []
        for j, link in enumerate(self.state.links):
            links.append(
                {
                    "src": link.src,
                    "dst": link.dst,
                    "utilization": finite_or_none(self.utilization[j]),
                    "occupancy": finite_or_none(self.occupancy[j]),
                    "drops": int(self.link_drops[j]),
                    "queues": [
                        {
                            "utilization": finite_or_none(self.queue_utilization[q]),
                            "occupancy": finite_or_none(self.queue_occupancy[q]),
                            "drops": int(self.queue_drops[q]),
                        }
                        for q in range(self.queue_first[j], self.queue_first[j + 1])
                    ],
                }
            )
        return {
            "paths": paths,
            "links": links,
            "packet_hops": int(self.packet_hops),
            "wall_s": round(self.wall_s, 4),
            "duration": self.duration,
            "warmup": self.warmup,
            "packet_hops_per_s": round(self.packet_hops / max(self.wall_s, 1e-9)),
        }


def simulate(
    state: NetworkState,
    duration: float | None = None,
    warmup: float | None = None,
    seed: int = 0,
    packets_per_flow: float = 2000.0,
    max_delay: float = math.inf,
) -> SimResult:
    """Simulate ``state`` and return per-path and per-link statistics.

    duration: generation time, s. When omitted it is chosen so the average flow
    sends about ``packets_per_flow`` packets. warmup: s discarded at the start
    (default 10 % of the duration). max_delay: a packet's delay counts as at most
    this much (s) in the path statistics, as in a reference simulator that limits
    it (the gnnet2020 datanet: 20 time units); by default no limit.
    """
    if not state.flows:
        raise StateError("the state has no traffic to simulate")
    arrays = _compile(state)
    if duration is None:
        pkt_rates = np.bincount(state.routes.owner, weights=arrays["rate"] / arrays["mean_size"])  # per flow
        active = pkt_rates[pkt_rates > 0]
        if len(active) == 0:
            raise StateError("every flow has rate 0: nothing to simulate")
        duration = packets_per_flow / float(np.mean(active)) / 0.9
    if not (duration > 0 and math.isfinite(duration)):
        raise StateError(f"duration must be positive, got {duration!r}")
    if warmup is None:
        warmup = 0.1 * duration
    if not 0 <= warmup < duration:
        raise StateError(f"warmup must lie in [0, duration), got {warmup!r}")
    if not max_delay > 0:
        raise StateError(f"max_delay must be positive, got {max_delay!r}")
    packets = float(np.sum(arrays["rate"] / arrays["mean_size"])) * duration
    if packets > MAX_PACKETS:
        raise StateError(f"the run would generate about {packets:.3g} packets in {duration:.3g} s, more than "
                         f"{MAX_PACKETS:.0e}: shorten the duration or lower the rates")
    window = duration - warmup
    flow_arrays = (arrays["rate"], arrays["time_code"], arrays["on_time"], arrays["off_time"],
                   arrays["size_code"], arrays["mean_size"], arrays["small"], arrays["large"], arrays["p_small"],
                   arrays["path"], arrays["path_len"], arrays["hist_base"])
    started = time.perf_counter()
    if state.scheduled:
        queues = _compile_queues(state, arrays)
        out = _run_scheduled(
            arrays["capacity"], arrays["prop"], *flow_arrays, queues["tos"], queues["policy"], queues["first"],
            queues["size"], queues["weight"], queues["quantum"], float(duration), float(warmup), int(seed),
            float(max_delay),
        )
        wall = time.perf_counter() - started
        (sent, delivered, dropped, sum_d, sum_d2, hist, q_arrivals, q_drops, q_busy, q_wait, hops) = out
        first = queues["first"]
        arrivals, link_drops, busy, wait_sum = (np.add.reduceat(v, first[:-1]) for v in (q_arrivals, q_drops, q_busy, q_wait))
    else:
        out = _run(arrays["capacity"], arrays["buffer"], arrays["prop"], *flow_arrays,
                   float(duration), float(warmup), int(seed), float(max_delay))
        wall = time.perf_counter() - started
        (sent, delivered, dropped, sum_d, sum_d2, hist, arrivals, link_drops, busy, wait_sum, hops) = out
        first, q_drops, q_busy, q_wait = np.arange(len(state.links) + 1), link_drops, busy, wait_sum
    base = arrays["hist_base"]
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_excess = sum_d / delivered
        delay = base + mean_excess
        jitter = np.maximum(sum_d2 / delivered - mean_excess**2, 0.0)
        loss = np.where(sent > 0, dropped / np.maximum(sent, 1), np.nan)
    p50, p90, p99 = _percentiles(hist, base, (0.5, 0.9, 0.99))
    owner = state.routes.owner
    if len(owner) != len(state.flows):
        (delay, jitter, loss, p50, p90, p99, sent, delivered, dropped) = _per_flow(
            owner, len(state.flows), delay, jitter, sent, delivered, dropped, hist, base)
    return SimResult(
        state=state, delay=delay, jitter=jitter, loss=loss, p50=p50, p90=p90, p99=p99,
        sent=sent, delivered=delivered, dropped=dropped,
        utilization=busy / window, occupancy=wait_sum / window, link_drops=link_drops,
        link_arrivals=arrivals, packet_hops=int(hops), wall_s=wall, duration=float(duration), warmup=float(warmup),
        queue_first=first, queue_utilization=q_busy / window, queue_occupancy=q_wait / window, queue_drops=q_drops,
    )


def _percentiles(hist: np.ndarray, base: np.ndarray, quantiles) -> list[np.ndarray]:
    """Per-flow delay quantiles (s) from the log-binned histograms (bin centres; nan without packets)."""
    total = hist.sum(axis=1)
    cum = np.cumsum(hist, axis=1)
    out = []
    for q in quantiles:
        k = np.argmax(cum >= np.ceil(q * total)[:, None], axis=1)
        out.append(np.where(total > 0, base * BIN_RATIO ** (k + 0.5), np.nan))
    return out


def _per_flow(owner, n_flows, delay, jitter, sent, delivered, dropped, hist, base):
    """Statistics of a flow's ECMP routes merged into the flow's: its packets pooled over its routes."""
    def total(values):
        return np.bincount(owner, weights=np.where(delivered > 0, values, 0.0), minlength=n_flows)

    with np.errstate(invalid="ignore", divide="ignore"):
        pooled = total(delivered.astype(float))
        mean = total(delivered * delay) / pooled
        variance = np.maximum(total(delivered * (jitter + delay**2)) / pooled - mean**2, 0.0)
        sent_f = np.bincount(owner, weights=sent, minlength=n_flows).astype(np.int64)
        dropped_f = np.bincount(owner, weights=dropped, minlength=n_flows).astype(np.int64)
        loss = np.where(sent_f > 0, dropped_f / np.maximum(sent_f, 1), np.nan)
    centres = base[:, None] * BIN_RATIO ** (np.arange(N_BINS) + 0.5)
    quantiles = np.full((3, n_flows), np.nan)
    for flow in range(n_flows):
        mine = owner == flow
        values, counts = centres[mine].ravel(), hist[mine].ravel()
        if counts.sum() == 0:
            continue
        rank = np.argsort(values)
        cum = np.cumsum(counts[rank])
        for row, q in enumerate((0.5, 0.9, 0.99)):
            quantiles[row, flow] = values[rank[np.searchsorted(cum, np.ceil(q * cum[-1]))]]
    return (mean, variance, loss, *quantiles, sent_f, pooled.astype(np.int64), dropped_f)


def _compile(state: NetworkState) -> dict[str, np.ndarray]:
    """Flatten a state into the arrays the compiled event loop reads."""
    la = state.link_arrays
    routes = state.routes
    paths = routes.links
    n_flows = len(paths)
    max_hops = max(len(p) for p in paths)
    path = np.full((n_flows, max_hops), -1, dtype=np.int64)
    path_len = np.zeros(n_flows, dtype=np.int64)
    for i, links in enumerate(paths):
        path[i, : len(links)] = links
        path_len[i] = len(links)
    flows = [state.flows[i] for i in routes.owner]
    mean_size = np.array([f.packet_size for f in flows])
    small = np.array([f.packet_sizes[0] if f.packet_sizes else f.packet_size for f in flows])
    large = np.array([f.packet_sizes[1] if f.packet_sizes else f.packet_size for f in flows])
    with np.errstate(invalid="ignore", divide="ignore"):
        p_small = np.where(large > small, (large - mean_size) / (large - small), 1.0)
    size_code = np.array([_SIZE[f.size_dist] for f in flows], dtype=np.int64)
    min_size = np.where(size_code == 1, 0.0, small)
    hist_base = np.empty(n_flows)
    for i, links in enumerate(paths):
        transmit_min = np.sum(min_size[i] / la["capacity"][links])
        transmit_mean = np.sum(mean_size[i] / la["capacity"][links])
        hist_base[i] = max(transmit_min + np.sum(la["prop_delay"][links]), 1e-3 * transmit_mean)
    return {
        "capacity": la["capacity"],
        "buffer": la["buffer"],
        "prop": la["prop_delay"],
        "rate": np.array([f.rate for f in flows], dtype=np.float64) * routes.share,
        "time_code": np.array([_TIME[f.time_dist] for f in flows], dtype=np.int64),
        "on_time": np.array([f.on_time or 0.0 for f in flows]),
        "off_time": np.array([f.off_time or 0.0 for f in flows]),
        "size_code": size_code,
        "mean_size": mean_size,
        "small": small,
        "large": large,
        "p_small": p_small,
        "path": path,
        "path_len": path_len,
        "hist_base": hist_base,
    }


def _compile_queues(state: NetworkState, arrays: dict) -> dict[str, np.ndarray]:
    """The ports' queues as arrays for ``_run_scheduled``: per route its ToS; per link its policy code and
    the index of its first queue (``first``, one entry more than links); per queue its size (packets), its
    weight (a fraction of the port) and its DRR quantum (bits: the largest packet for the lightest queue)."""
    counts = [len(link.queues) for link in state.links]
    weights = []
    for link, count in zip(state.links, counts):
        share = np.asarray(link.queue_weights or (1.0,) * count, dtype=np.float64)
        weights.append(share / share.sum())
    largest = float(np.max(np.maximum(arrays["large"], arrays["mean_size"])))
    return {
        "tos": np.array([state.flows[i].tos for i in state.routes.owner], dtype=np.int64),
        "policy": np.array([_POLICY[link.policy] for link in state.links], dtype=np.int64),
        "first": np.concatenate(([0], np.cumsum(counts))).astype(np.int64),
        "size": np.array([size for link in state.links for size in link.queues], dtype=np.int64),
        "weight": np.concatenate(weights),
        "quantum": np.concatenate([largest * w / w.min() for w in weights]),
    }


@numba.njit(cache=True, inline="always")
def _in_window(start, end, warmup, duration):
    """How much of [start, end] lies in the measured window [warmup, duration], s: a link's busy and
    waiting time count there only, so utilization stays at most 1 and occupancy within the buffer."""
    return max(0.0, min(end, duration) - max(start, warmup))


@numba.njit(cache=True, inline="always")
def _heap_push(h_time, h_slot, n, t, slot):
    """Insert (t, slot) into a 4-ary min-heap of size n (4 children per node: shallower than binary)."""
    i = n
    while i > 0:
        parent = (i - 1) >> 2
        if h_time[parent] <= t:
            break
        h_time[i] = h_time[parent]
        h_slot[i] = h_slot[parent]
        i = parent
    h_time[i] = t
    h_slot[i] = slot


@numba.njit(cache=True, inline="always")
def _heap_replace_top(h_time, h_slot, n, t, slot):
    """Put (t, slot) in place of the root of a 4-ary heap of size n and restore the order."""
    i = 0
    while True:
        first = 4 * i + 1
        if first >= n:
            break
        best = first
        best_t = h_time[first]
        last = first + 4 if first + 4 < n else n
        for c in range(first + 1, last):
            if h_time[c] < best_t:
                best = c
                best_t = h_time[c]
        if best_t >= t:
            break
        h_time[i] = best_t
        h_slot[i] = h_slot[best]
        i = best
    h_time[i] = t
    h_slot[i] = slot


@numba.njit(cache=True, inline="always")
def _heap_pop(h_time, h_slot, n):
    """Remove the root of a 4-ary heap of size n (the caller reads it first)."""
    _heap_replace_top(h_time, h_slot, n - 1, h_time[n - 1], h_slot[n - 1])


@numba.njit(cache=True, inline="always")
def _packet_size(code, mean, small, large, p_small):
    if code == 0:
        return mean
    if code == 1:
        return np.random.exponential(mean)
    return small if np.random.random() < p_small else large


@numba.njit(cache=True, inline="always")
def _next_departure(t, code, rate, mean_size, on_time, off_time, on_end, flow):
    """Next packet creation time of a flow after one at ``t`` (updates on_end for ON/OFF)."""
    iat = mean_size / rate
    if code == 1:
        return t + iat
    if code == 0:
        return t + np.random.exponential(iat)
    peak_iat = iat * on_time / (on_time + off_time)
    nxt = t + np.random.exponential(peak_iat)
    while nxt > on_end[flow]:
        start = on_end[flow] + np.random.exponential(off_time)
        on_end[flow] = start + np.random.exponential(on_time)
        nxt = start + np.random.exponential(peak_iat)
    return nxt


@numba.njit(cache=True, inline="always")
def _record_delivery(f, d, max_delay, hist_base, bins_per_e, delivered, sum_d, sum_d2, hist):
    """Count a packet of flow ``f`` delivered after ``d`` s (at most ``max_delay``): its delay's excess over
    the flow's base, squared, and its histogram bin (log-spaced from the base)."""
    if d > max_delay:
        d = max_delay
    delivered[f] += 1
    excess = d - hist_base[f]
    sum_d[f] += excess
    sum_d2[f] += excess * excess
    ratio = d / hist_base[f]
    k = 0
    if ratio > 1.0:
        k = int(math.log(ratio) * bins_per_e)
        if k > N_BINS - 1:
            k = N_BINS - 1
    hist[f, k] += 1


@numba.njit(cache=True)
def _grow_pool(reals, ints, free, n_free):
    """The slot arrays doubled (``reals`` and ``ints``: one row per field, one column per slot), and
    the free list with the new slots on it; returns (reals, ints, free, n_free)."""
    cap = reals.shape[1]
    more_reals = np.empty((reals.shape[0], 2 * cap))
    more_reals[:, :cap] = reals
    more_ints = np.empty((ints.shape[0], 2 * cap), dtype=np.int64)
    more_ints[:, :cap] = ints
    more_free = np.empty(2 * cap, dtype=np.int64)
    more_free[:n_free] = free[:n_free]
    for s in range(2 * cap - 1, cap - 1, -1):
        more_free[n_free] = s
        n_free += 1
    return more_reals, more_ints, more_free, n_free


@numba.njit(cache=True)
def _first_creations(rate, time_code, on_time, off_time, mean_size, on_end, reals, ints, free, n_free, duration):
    """Put each flow's first packet creation on the heap (an ON/OFF flow starts ON with its ON share's
    probability); returns the counts the event loops carry: heap size, free slots, packet-hops (0)."""
    h_time, h_slot, s_flow, s_hop = reals[0], ints[0], ints[1], ints[2]
    n_heap = 0
    for f in range(rate.shape[0]):
        if rate[f] <= 0:
            continue
        iat = mean_size[f] / rate[f]
        if time_code[f] == 1:
            t0 = np.random.random() * iat
        elif time_code[f] == 0:
            t0 = np.random.exponential(iat)
        else:
            on_end[f] = np.random.exponential(on_time[f])
            if np.random.random() >= on_time[f] / (on_time[f] + off_time[f]):
                on_end[f] = 0.0
            t0 = _next_departure(0.0, 2, rate[f], mean_size[f], on_time[f], off_time[f], on_end, f)
        if t0 > duration:
            continue
        n_free -= 1
        slot = free[n_free]
        s_flow[slot] = f
        s_hop[slot] = -1
        _heap_push(h_time, h_slot, n_heap, t0, slot)
        n_heap += 1
    return np.array([n_heap, n_free, 0])


@numba.njit(cache=True, error_model="numpy")
def _run(capacity, buffer, prop, rate, time_code, on_time, off_time, size_code, mean_size, small,
         large, p_small, path, path_len, hist_base, duration, warmup, seed, max_delay):
    """The FIFO event loop. A slot holds a packet (flow, hop, birth, size) or, with hop == -1, a
    flow's next packet creation; the heap orders slots by event time. The loop itself is
    ``_fifo_events``; this sets up, and grows the slot arrays whenever it runs out of slots."""
    np.random.seed(seed)
    n_links = capacity.shape[0]
    n_flows = rate.shape[0]
    # per-link ring of departure times of the packets in the system (waiting + transmitting), and of
    # some that have left: they are discarded when the ring is full
    ring_cap = buffer + 1
    ring_off = np.zeros(n_links + 1, dtype=np.int64)
    for l in range(n_links):
        ring_off[l + 1] = ring_off[l] + ring_cap[l]
    links = (capacity, prop, ring_cap, ring_off, np.zeros(ring_off[n_links]), np.zeros(n_links, dtype=np.int64),
             np.zeros(n_links, dtype=np.int64), np.zeros(n_links))
    on_end = np.zeros(n_flows)
    flows = (rate, time_code, on_time, off_time, size_code, mean_size, small, large, p_small, path, path_len,
             hist_base, on_end)
    stats = (np.zeros(n_flows, dtype=np.int64), np.zeros(n_flows, dtype=np.int64), np.zeros(n_flows, dtype=np.int64),
             np.zeros(n_flows), np.zeros(n_flows), np.zeros((n_flows, N_BINS), dtype=np.uint32),
             np.zeros(n_links, dtype=np.int64), np.zeros(n_links, dtype=np.int64), np.zeros(n_links),
             np.zeros(n_links))
    cap = 1024 + 4 * n_flows + ring_off[n_links]
    reals = np.empty((3, cap))  # heap times; per slot: birth, size
    ints = np.empty((3, cap), dtype=np.int64)  # heap slots; per slot: flow, hop
    free = np.arange(cap - 1, -1, -1)
    n_free = cap
    counts = _first_creations(rate, time_code, on_time, off_time, mean_size, on_end, reals, ints, free, n_free,
                              duration)
    while not _fifo_events(flows, links, stats, reals, ints, free, counts, duration, warmup, max_delay):
        reals, ints, free, counts[1] = _grow_pool(reals, ints, free, counts[1])
    return stats + (counts[2],)


@numba.njit(cache=True, error_model="numpy")
def _fifo_events(flows, links, stats, reals, ints, free, counts, duration, warmup, max_delay):
    """Handle events until none is left (returns True) or a packet is due while no slot is free
    (returns False, before touching that event, for the caller to grow the pool and call again).
    ``counts`` holds the heap size, the free slots and the packet-hops so far. No array is
    reassigned here: growing them inside this loop made it 1.8 times slower.

    The root event is handled in place: an event that continues (the next creation of a flow, a
    packet's next hop) replaces the root with one sift-down instead of a pop and a push."""
    (rate, time_code, on_time, off_time, size_code, mean_size, small, large, p_small, path, path_len,
     hist_base, on_end) = flows
    capacity, prop, ring_cap, ring_off, ring, ring_head, ring_count, last_dep = links
    sent, delivered, dropped, sum_d, sum_d2, hist, arrivals, link_drops, busy, wait_sum = stats
    h_time, s_birth, s_size = reals[0], reals[1], reals[2]
    h_slot, s_flow, s_hop = ints[0], ints[1], ints[2]
    n_heap, n_free, hops = counts[0], counts[1], counts[2]
    bins_per_e = 1.0 / math.log(BIN_RATIO)  # histogram bins per factor e of delay
    finished = True
    while n_heap > 0:
        if n_free == 0:
            finished = False
            break
        t = h_time[0]
        slot = h_slot[0]
        f = s_flow[slot]
        hop = s_hop[slot]
        at_root = True  # the packet handled below is still the heap's root
        if hop == -1:
            # a packet is created now; the creation event is rescheduled in the same slot
            nxt = _next_departure(t, time_code[f], rate[f], mean_size[f], on_time[f], off_time[f], on_end, f)
            if nxt <= duration:
                _heap_replace_top(h_time, h_slot, n_heap, nxt, slot)
            else:
                _heap_pop(h_time, h_slot, n_heap)
                n_heap -= 1
                free[n_free] = slot
                n_free += 1
            at_root = False
            n_free -= 1
            slot = free[n_free]
            s_flow[slot] = f
            s_hop[slot] = 0
            s_birth[slot] = t
            s_size[slot] = _packet_size(size_code[f], mean_size[f], small[f], large[f], p_small[f])
            hop = 0
            if t >= warmup:
                sent[f] += 1
        birth = s_birth[slot]
        counted = birth >= warmup
        size = s_size[slot]
        l = path[f, hop]
        hops += 1
        # The ring may still hold packets that have left: only a full ring needs the exact count,
        # so departures are discarded only then.
        base = ring_off[l]
        rc = ring_cap[l]
        head = ring_head[l]
        count = ring_count[l]
        if count == rc:
            while count > 0 and ring[base + head] <= t:
                head += 1
                if head == rc:
                    head = 0
                count -= 1
            ring_head[l] = head
        in_window = warmup <= t <= duration
        if in_window:
            arrivals[l] += 1
        if count >= rc:
            ring_count[l] = count
            if in_window:
                link_drops[l] += 1
            if counted:
                dropped[f] += 1
            if at_root:
                _heap_pop(h_time, h_slot, n_heap)
                n_heap -= 1
            free[n_free] = slot
            n_free += 1
            continue
        start = t if t > last_dep[l] else last_dep[l]
        service = size / capacity[l]
        dep = start + service
        last_dep[l] = dep
        tail = head + count
        if tail >= rc:
            tail -= rc
        ring[base + tail] = dep
        ring_count[l] = count + 1
        busy[l] += _in_window(start, dep, warmup, duration)
        wait_sum[l] += _in_window(t, start, warmup, duration)
        arrive = dep + prop[l]
        if hop + 1 == path_len[f]:
            if counted:
                _record_delivery(f, arrive - birth, max_delay, hist_base, bins_per_e, delivered, sum_d, sum_d2, hist)
            if at_root:
                _heap_pop(h_time, h_slot, n_heap)
                n_heap -= 1
            free[n_free] = slot
            n_free += 1
        else:
            s_hop[slot] = hop + 1
            if at_root:
                _heap_replace_top(h_time, h_slot, n_heap, arrive, slot)
            else:
                _heap_push(h_time, h_slot, n_heap, arrive, slot)
                n_heap += 1
    counts[0], counts[1], counts[2] = n_heap, n_free, hops
    return finished


@numba.njit(cache=True, inline="always")
def _next_queue(l, policy, first, end, q_len, q_head, ring, ring_off, s_tag, s_size, deficit, quantum, turn, fresh):
    """The queue of link ``l`` (global index in first..end-1) whose head packet is sent next; some queue
    holds a packet. SP: the lowest-numbered non-empty queue; WFQ: the smallest finish tag among the
    heads; DRR: the queue whose turn it is, once its deficit covers the head packet."""
    if policy <= 1:
        for q in range(first, end):
            if q_len[q] > 0:
                return q
    if policy == 2:
        best = -1
        best_tag = math.inf
        for q in range(first, end):
            if q_len[q] > 0:
                tag = s_tag[ring[ring_off[q] + q_head[q]]]
                if tag < best_tag:
                    best = q
                    best_tag = tag
        return best
    while True:
        q = first + turn[l]
        if q_len[q] == 0:
            deficit[q] = 0.0
        else:
            if fresh[l]:
                deficit[q] += quantum[q]
                fresh[l] = False
            size = s_size[ring[ring_off[q] + q_head[q]]]
            if size <= deficit[q]:
                deficit[q] -= size
                return q
        turn[l] = turn[l] + 1 if first + turn[l] + 1 < end else 0
        fresh[l] = True


@numba.njit(cache=True, error_model="numpy")
def _run_scheduled(capacity, prop, rate, time_code, on_time, off_time, size_code, mean_size, small, large, p_small,
                   path, path_len, hist_base, tos, policy, q_first, q_size, q_weight, quantum, duration, warmup, seed,
                   max_delay):
    """The event loop for ports with several queues. Events: a flow's next packet (hop -1), a packet
    arriving at a link (hop >= 0), and a link ending a transmission (the slot number is the link's,
    slots 0..links-1 are kept for these). WFQ as the BNN-UPC simulator behaves (docs/simulator.md): a
    queue's finish tag grows by size / weight with each packet it admits, without a virtual time and
    never reset, so backlogged queues share by weight and a queue kept below its share goes first.
    Statistics per queue: arrivals, drops, busy time and waiting time of the packets that arrived in the
    window. The loop itself is ``_scheduled_events``; this sets up, and grows the slot arrays whenever it
    runs out of slots."""
    np.random.seed(seed)
    n_links = capacity.shape[0]
    n_flows = rate.shape[0]
    n_queues = q_size.shape[0]
    # per queue: a ring of the slots of its waiting packets
    ring_off = np.zeros(n_queues + 1, dtype=np.int64)
    for q in range(n_queues):
        ring_off[q + 1] = ring_off[q] + q_size[q]
    ring = np.zeros(ring_off[n_queues], dtype=np.int64)
    q_head = np.zeros(n_queues, dtype=np.int64)
    q_len = np.zeros(n_queues, dtype=np.int64)
    last_tag = np.zeros(n_queues)  # WFQ: finish tag of the queue's last packet (bits per unit of weight)
    deficit = np.zeros(n_queues)  # DRR: bits the queue may still send in its turn
    # per link
    sending = np.full(n_links, -1, dtype=np.int64)  # slot of the packet in transmission, -1 when idle
    waiting = np.zeros(n_links, dtype=np.int64)
    turn = np.zeros(n_links, dtype=np.int64)  # DRR: the queue whose turn it is, within the link
    fresh = np.ones(n_links, dtype=np.bool_)  # DRR: the turn has not yet added its quantum
    # statistics
    sent = np.zeros(n_flows, dtype=np.int64)
    delivered = np.zeros(n_flows, dtype=np.int64)
    dropped = np.zeros(n_flows, dtype=np.int64)
    sum_d = np.zeros(n_flows)
    sum_d2 = np.zeros(n_flows)
    hist = np.zeros((n_flows, N_BINS), dtype=np.uint32)
    q_arrivals = np.zeros(n_queues, dtype=np.int64)
    q_drops = np.zeros(n_queues, dtype=np.int64)
    q_busy = np.zeros(n_queues)
    q_wait = np.zeros(n_queues)
    on_end = np.zeros(n_flows)
    flows = (rate, time_code, on_time, off_time, size_code, mean_size, small, large, p_small, path, path_len,
             hist_base, on_end, tos)
    links = (capacity, prop, policy, q_first, sending, waiting, turn, fresh)
    queues = (q_size, q_weight, quantum, ring, ring_off, q_head, q_len, last_tag, deficit)
    stats = (sent, delivered, dropped, sum_d, sum_d2, hist, q_arrivals, q_drops, q_busy, q_wait)
    cap = 1024 + 4 * n_flows + n_links + ring_off[n_queues]
    reals = np.empty((5, cap))  # heap times; per slot: birth, size, arrival at its link, WFQ finish tag there
    ints = np.empty((3, cap), dtype=np.int64)  # heap slots; per slot: flow, hop
    free = np.arange(cap - 1, n_links - 1, -1)  # slots 0 .. links-1 stand for the links' transmissions
    n_free = cap - n_links
    counts = _first_creations(rate, time_code, on_time, off_time, mean_size, on_end, reals, ints, free, n_free,
                              duration)
    while not _scheduled_events(flows, links, queues, stats, reals, ints, free, counts, duration, warmup, max_delay):
        reals, ints, free, counts[1] = _grow_pool(reals, ints, free, counts[1])
    return stats + (counts[2],)


@numba.njit(cache=True, error_model="numpy")
def _scheduled_events(flows, links, queues, stats, reals, ints, free, counts, duration, warmup, max_delay):
    """The loop of ``_run_scheduled``: returns and resumes as ``_fifo_events`` does."""
    (rate, time_code, on_time, off_time, size_code, mean_size, small, large, p_small, path, path_len,
     hist_base, on_end, tos) = flows
    capacity, prop, policy, q_first, sending, waiting, turn, fresh = links
    q_size, q_weight, quantum, ring, ring_off, q_head, q_len, last_tag, deficit = queues
    sent, delivered, dropped, sum_d, sum_d2, hist, q_arrivals, q_drops, q_busy, q_wait = stats
    h_time, s_birth, s_size, s_arrive, s_tag = reals[0], reals[1], reals[2], reals[3], reals[4]
    h_slot, s_flow, s_hop = ints[0], ints[1], ints[2]
    n_links = capacity.shape[0]
    n_heap, n_free, hops = counts[0], counts[1], counts[2]
    bins_per_e = 1.0 / math.log(BIN_RATIO)
    finished = True

    while n_heap > 0:
        if n_free == 0:
            finished = False
            break
        t = h_time[0]
        slot = h_slot[0]
        if slot < n_links:
            # link `slot` ends a transmission: it starts the next packet, the sent one travels on
            l = slot
            done = sending[l]
            first = q_first[l]
            end = q_first[l + 1]
            if waiting[l] > 0:
                q = _next_queue(l, policy[l], first, end, q_len, q_head, ring, ring_off, s_tag, s_size,
                                deficit, quantum, turn, fresh)
                nxt = ring[ring_off[q] + q_head[q]]
                q_head[q] = q_head[q] + 1 if q_head[q] + 1 < q_size[q] else 0
                q_len[q] -= 1
                waiting[l] -= 1
                sending[l] = nxt
                service = s_size[nxt] / capacity[l]
                q_busy[q] += _in_window(t, t + service, warmup, duration)
                q_wait[q] += _in_window(s_arrive[nxt], t, warmup, duration)
                if policy[l] == 3 and q_len[q] == 0:
                    deficit[q] = 0.0
                    turn[l] = turn[l] + 1 if q + 1 < end else 0
                    fresh[l] = True
                _heap_replace_top(h_time, h_slot, n_heap, t + service, l)
            else:
                sending[l] = -1
                _heap_pop(h_time, h_slot, n_heap)
                n_heap -= 1
            f = s_flow[done]
            hop = s_hop[done]
            arrive = t + prop[l]
            if hop + 1 == path_len[f]:
                birth = s_birth[done]
                if birth >= warmup:
                    _record_delivery(f, arrive - birth, max_delay, hist_base, bins_per_e, delivered, sum_d, sum_d2,
                                     hist)
                free[n_free] = done
                n_free += 1
            else:
                s_hop[done] = hop + 1
                _heap_push(h_time, h_slot, n_heap, arrive, done)
                n_heap += 1
            continue
        f = s_flow[slot]
        hop = s_hop[slot]
        at_root = True  # the packet handled below is still the heap's root
        if hop == -1:
            # a packet is created now; the creation event is rescheduled in the same slot
            nxt_t = _next_departure(t, time_code[f], rate[f], mean_size[f], on_time[f], off_time[f], on_end, f)
            if nxt_t <= duration:
                _heap_replace_top(h_time, h_slot, n_heap, nxt_t, slot)
            else:
                _heap_pop(h_time, h_slot, n_heap)
                n_heap -= 1
                free[n_free] = slot
                n_free += 1
            at_root = False
            n_free -= 1
            slot = free[n_free]
            s_flow[slot] = f
            s_hop[slot] = 0
            s_birth[slot] = t
            s_size[slot] = _packet_size(size_code[f], mean_size[f], small[f], large[f], p_small[f])
            hop = 0
            if t >= warmup:
                sent[f] += 1
        # the packet arrives at its hop's link: sent at once, queued, or dropped
        l = path[f, hop]
        hops += 1
        first = q_first[l]
        q = first + min(tos[f], q_first[l + 1] - first - 1)
        size = s_size[slot]
        in_window = warmup <= t <= duration
        if in_window:
            q_arrivals[q] += 1
        if sending[l] < 0 or q_len[q] < q_size[q]:
            last_tag[q] += size / q_weight[q]
            s_tag[slot] = last_tag[q]
        if sending[l] < 0:
            sending[l] = slot
            service = size / capacity[l]
            q_busy[q] += _in_window(t, t + service, warmup, duration)
            if at_root:
                _heap_replace_top(h_time, h_slot, n_heap, t + service, l)
            else:
                _heap_push(h_time, h_slot, n_heap, t + service, l)
                n_heap += 1
            continue
        if at_root:
            _heap_pop(h_time, h_slot, n_heap)
            n_heap -= 1
        if q_len[q] >= q_size[q]:
            if in_window:
                q_drops[q] += 1
            if s_birth[slot] >= warmup:
                dropped[f] += 1
            free[n_free] = slot
            n_free += 1
            continue
        tail = q_head[q] + q_len[q]
        if tail >= q_size[q]:
            tail -= q_size[q]
        ring[ring_off[q] + tail] = slot
        q_len[q] += 1
        waiting[l] += 1
        s_arrive[slot] = t
    counts[0], counts[1], counts[2] = n_heap, n_free, hops
    return finished
