"""The learned twins answering without TensorFlow: RouteNet-E's, RouteNet-F's and the RNN's forward pass in
NumPy and Numba, from the same weight files ``ndt train`` writes.

Training needs TensorFlow (:mod:`twin.models.learned`, :mod:`twin.models.train`); a prediction
does not, so ``ndt predict`` answers in under a second from a cold process and a 300-node
state runs on every core without graph tracing. The arithmetic is the Keras models' own,
step for step (float32); ``tests/unit/test_inference.py`` holds the two to the same numbers.
"""

from __future__ import annotations

import threading
from functools import lru_cache

import numba
import numpy as np
from scipy.special import expit

from twin.models import kernels
from twin.models.features import CLASS_FEATURES, LINK_FEATURES, PATH_FEATURES, QUEUE_FEATURES, GraphBatch, build_batch
from twin.models.model_files import (
    HEADS,
    ModelFileError,
    Normalizer,
    model_inputs,
    model_paths,
    read_description,
    read_weights,
)
from twin.state.model import NetworkState


def _dense_stack(x: np.ndarray, params: list[np.ndarray]) -> np.ndarray:
    """An MLP of :func:`twin.models.layers.mlp`: ReLU between Dense layers, the last linear."""
    for i in range(0, len(params), 2):
        x = x @ params[i] + params[i + 1]
        if i + 2 < len(params):
            np.maximum(x, 0.0, out=x)
    return x


def _embed(x: np.ndarray, params: list[np.ndarray]) -> np.ndarray:
    """tanh of a two-layer :func:`twin.models.layers.mlp` on every row of ``x`` (float32, all cores)."""
    w_hidden, b_hidden, w_out, b_out = params
    out = np.empty((len(x), w_out.shape[1]), dtype=np.float32)
    kernels.embed_rows(np.ascontiguousarray(x), w_hidden, b_hidden, w_out, b_out, out)
    return out


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 + 0.5 * np.tanh(0.5 * x)


def _gru_step(x: np.ndarray, h: np.ndarray, params: list[np.ndarray]) -> np.ndarray:
    """One step of Keras's GRUCell (reset gate after the matmul) on every row of ``h`` (float32, updated
    in place and returned)."""
    kernel, recurrent_kernel, bias = params
    kernels.gru_rows(h, np.ascontiguousarray(x @ kernel + bias[0]), recurrent_kernel, bias[1])
    return h


_FORWARD_LOCK = threading.Lock()
KEPT_HOP_STATES_MIB = 64  # the largest per-hop state buffer kept between passes (a 300-node all-pairs state: 39 MiB)


@lru_cache(maxsize=1)
def _thread_pools():
    """The process's native thread pools (BLAS), found once."""
    from threadpoolctl import ThreadpoolController

    return ThreadpoolController()


class CompiledTwin:
    """A trained model's forward pass (a subclass's ``_forward``): ``predict_delays(states)`` → per-flow
    delays (s), the interface of every predictor."""

    def __init__(self, kind: str, layers: dict[str, list[np.ndarray]], norm: Normalizer, config: dict,
                 info: dict | None = None):
        self.kind = kind
        self.name = kind
        self.layers = layers
        self.norm = norm
        self.config = config
        self.info = info or {}

    def forward(self, batch: GraphBatch) -> np.ndarray:
        """Per sorted path mean delay, s (float32). One pass at a time per process: each uses every core,
        and the BLAS limit below must not be restored by one caller while another still runs."""
        # a BLAS pool left spinning after its small matmuls would halve the kernels' cores
        with _FORWARD_LOCK, _thread_pools().limit(limits=1, user_api="blas"):
            return self._forward(batch)

    def predict_batch(self, batch: GraphBatch) -> list[np.ndarray]:
        return batch.per_flow(self.forward(batch).astype(np.float64))

    def predict_delays(self, states: list[NetworkState]) -> list[np.ndarray]:
        """Per-flow mean delay (s), one array per state in flow order; the states run as one batch."""
        return self.predict_batch(build_batch(states))


class CompiledRouteNet(CompiledTwin):
    """:class:`twin.models.routenet.RouteNetE`'s message passing and occupancy readout."""

    _kept_hop_states = np.empty((0, kernels.STATE_DIM), dtype=np.float32)

    def _hop_states(self, n_hops: int, width: int) -> np.ndarray:
        """An (n_hops, width) float32 buffer for the last iteration's per-hop states. Up to
        KEPT_HOP_STATES_MIB it is kept for the next pass (one pass runs at a time), so a pass does not
        fault in fresh pages for it (docs/twin.md, Speed)."""
        if n_hops * width * 4 > KEPT_HOP_STATES_MIB * 2**20:
            return np.empty((n_hops, width), dtype=np.float32)
        if self._kept_hop_states.shape[0] < n_hops or self._kept_hop_states.shape[1] != width:
            self._kept_hop_states = np.empty((n_hops, width), dtype=np.float32)
        return self._kept_hop_states[:n_hops]

    def release_buffers(self) -> None:
        """Drop the buffer kept between passes (a memory measurement then counts all a pass holds)."""
        self._kept_hop_states = CompiledRouteNet._kept_hop_states

    LAYERS = ("path_embed", "link_embed", "queue_embed", "path_gru", "queue_gru", "link_gru", "occupancy_readout")
    INPUTS = {"path_embed": len(PATH_FEATURES), "link_embed": len(LINK_FEATURES), "queue_embed": len(QUEUE_FEATURES),
              "path_gru": 2 * kernels.STATE_DIM}

    def _message_passing(self, x: dict, batch: GraphBatch, hop_queue: np.ndarray,
                         queue_link: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        """The embeddings and every iteration; returns the last iteration's per-hop states and the queues'
        states. Hop ``i`` waits in queue ``hop_queue[i]``; queue ``q`` belongs to link ``queue_link[q]``
        (RouteNet-F's queues per port), or to link ``q`` when ``queue_link`` is None (RouteNet-E's one
        queue per link), and a link's state follows the sum of its queues'."""
        w = self.layers
        path, link = _embed(x["path_x"], w["path_embed"]), _embed(x["link_x"], w["link_embed"])
        queue = _embed(x["queue_x" if queue_link is None else "class_x"], w["queue_embed"])
        messages = np.empty((numba.get_num_threads(), len(queue), path.shape[1]), dtype=np.float32)
        no_seq = np.empty((0, path.shape[1]), dtype=np.float32)
        kernel, recurrent_kernel, bias = w["path_gru"]
        iterations = self.config["iterations"]
        for i in range(iterations):
            entity = np.concatenate([queue, link if queue_link is None else link[queue_link]], axis=1)
            table = np.ascontiguousarray(entity @ kernel + bias[0])
            seq = self._hop_states(len(hop_queue), path.shape[1]) if i == iterations - 1 else no_seq
            messages[:] = 0.0
            kernels.path_gru(path, table, hop_queue, batch.counts, batch.offsets, recurrent_kernel, bias[1],
                             x["hop_share"], messages, seq)
            queue = _gru_step(messages.sum(axis=0), queue, w["queue_gru"])
            link_input = queue
            if queue_link is not None:
                link_input = np.zeros_like(link)
                np.add.at(link_input, queue_link, queue)
            link = _gru_step(link_input, link, w["link_gru"])
        return seq, queue

    def _logits(self, name: str, seq: np.ndarray, queue: np.ndarray, hop_queue: np.ndarray) -> np.ndarray:
        """Per hop, readout ``name``'s logit on [its state after the hop ‖ its queue's state]."""
        w_first, b_first, w_hidden, b_hidden, w_out, b_out = self.layers[name]
        d = queue.shape[1]
        logit = np.empty(len(hop_queue), dtype=np.float32)
        kernels.occupancy_logits(seq, hop_queue, queue @ w_first[d:] + b_first, w_first[:d], w_hidden, b_hidden,
                                 w_out[:, 0], b_out[0], logit)
        return logit

    def _forward(self, batch: GraphBatch) -> np.ndarray:
        x = model_inputs(batch, self.norm)
        seq, queue = self._message_passing(x, batch, batch.hop_link, None)
        occupancy = _sigmoid(self._logits("occupancy_readout", seq, queue, batch.hop_link)) * x["hop_buffer"]
        per_hop = occupancy * x["hop_service"] + x["hop_transmit"]
        return np.bincount(batch.hop_path, weights=per_hop, minlength=batch.n_paths).astype(np.float32) + x["path_prop"]


class CompiledRouteNetF(CompiledRouteNet):
    """:class:`twin.models.routenet_f.RouteNetF`: RouteNet-E's pass over a state per port queue (a hop waits in
    the queue its ToS selects, a link's state follows the sum of its queues'), with delay, jitter and loss
    heads. ``forward`` gives (P, 3) per sorted path; ``predict_metrics`` the three per flow."""

    heads = HEADS
    LAYERS = CompiledRouteNet.LAYERS + ("spread_readout", "drop_readout")
    INPUTS = {**CompiledRouteNet.INPUTS, "queue_embed": len(CLASS_FEATURES)}

    def _forward(self, batch: GraphBatch) -> np.ndarray:
        x, n_paths = model_inputs(batch, self.norm), batch.n_paths
        seq, queue = self._message_passing(x, batch, batch.hop_class, batch.class_link)
        # expit, not the tanh form: exact near 0, where a drop probability of 1e-9 lives
        share = {name: expit(self._logits(name, seq, queue, batch.hop_class))
                 for name in ("occupancy_readout", "spread_readout", "drop_readout")}
        reach = x["hop_buffer"] / x["hop_speed"]  # the most a hop can wait, in full-rate service times
        wait = share["occupancy_readout"] * reach
        delay = np.bincount(batch.hop_path, weights=wait * x["hop_service"] + x["hop_transmit"], minlength=n_paths)
        spread = share["spread_readout"] * reach * x["hop_service"]
        jitter = np.bincount(batch.hop_path, weights=np.square(spread), minlength=n_paths)
        drop = np.minimum(share["drop_readout"], np.float32(1.0 - 1e-6))
        survive = np.bincount(batch.hop_path, weights=np.log1p(-drop), minlength=n_paths)
        return np.stack([delay + x["path_prop"], jitter, -np.expm1(survive)], axis=1).astype(np.float32)

    def predict_batch(self, batch: GraphBatch) -> list[np.ndarray]:
        return batch.per_flow(self.forward(batch)[:, 0].astype(np.float64))

    def predict_metrics_batch(self, batch: GraphBatch) -> list[dict[str, np.ndarray]]:
        """Per state, per flow: delay (s), jitter (s²) and loss (share); an ECMP flow's delay and loss are the
        share-weighted means over its paths, its jitter their pooled variance."""
        return batch.per_flow_metrics(self.forward(batch).astype(np.float64), self.heads)

    def predict_metrics(self, states: list[NetworkState]) -> list[dict[str, np.ndarray]]:
        """Per state, per flow: delay (s), jitter (s²) and loss (share of packets)."""
        return self.predict_metrics_batch(build_batch(states))


class CompiledRNN(CompiledTwin):
    """:class:`twin.models.rnn.PathRNN`: a GRU over each path's hops (link and queue features), an MLP readout
    of its waiting time."""

    LAYERS = ("path_embed", "path_gru", "wait_readout")
    INPUTS = {"path_embed": len(PATH_FEATURES),
              "path_gru": len(LINK_FEATURES) + len(CLASS_FEATURES) + len(PATH_FEATURES) + 1}

    def _forward(self, batch: GraphBatch) -> np.ndarray:
        x, w = model_inputs(batch, self.norm), self.layers
        n_paths = batch.n_paths
        path = np.ascontiguousarray(np.tanh(_dense_stack(x["path_x"], w["path_embed"])))
        kernel, recurrent_kernel, bias = w["path_gru"]
        n_link, n_class = x["link_x"].shape[1], x["class_x"].shape[1]
        per_queue = x["link_x"][batch.class_link] @ kernel[:n_link] + x["class_x"] @ kernel[n_link:n_link + n_class]
        per_path = x["path_x"] @ kernel[n_link + n_class:-1] + bias[0]
        kernels.path_gru_summed(path, np.ascontiguousarray(per_queue), batch.hop_class, np.ascontiguousarray(per_path),
                                x["hop_share"], kernel[-1], batch.counts, batch.offsets, recurrent_kernel, bias[1],
                                numba.get_num_threads())
        service = np.bincount(batch.hop_path, weights=x["hop_service"], minlength=n_paths)
        transmit = np.bincount(batch.hop_path, weights=x["hop_transmit"], minlength=n_paths)
        wait = np.logaddexp(0.0, _dense_stack(path, w["wait_readout"])[:, 0]) * service
        return (wait + transmit).astype(np.float32) + x["path_prop"]


COMPILED = {"routenet_e": CompiledRouteNet, "routenet_f": CompiledRouteNetF, "rnn": CompiledRNN}


def load_compiled(stem: str = "routenet_e", directory=None) -> CompiledTwin:
    """The model ``stem`` in ``directory`` (default: the weights shipped in twin/models), ready to predict."""
    meta_path, weights_path = model_paths(stem, directory)
    description = read_description(meta_path)
    width = description["config"].get("state_dim")
    iterations = description["config"].get("iterations")
    if description["kind"] in ("routenet_e", "routenet_f") and (not isinstance(iterations, int) or iterations < 1):
        raise ModelFileError(f"{meta_path}: config.iterations must be a whole number >= 1, got "
                             f"{iterations!r}")
    if width != kernels.STATE_DIM:
        raise ModelFileError(f"{meta_path}: state_dim {width}; the compiled kernels run {kernels.STATE_DIM} "
                             "(load it with twin.models.learned.load_twin)")
    if description["kind"] not in COMPILED:
        raise ModelFileError(f"{meta_path}: a {description['kind']} model runs on TensorFlow "
                             "(load it with twin.models.learned.load_twin)")
    cls = COMPILED[description["kind"]]
    layers = read_weights(weights_path)
    missing = [name for name in cls.LAYERS if name not in layers]
    if missing:
        raise ModelFileError(f"{weights_path}: weights do not fit a {description['kind']} network "
                             f"(no layer {', '.join(missing)})")
    for name, width in cls.INPUTS.items():
        if layers[name][0].shape[0] != width:
            raise ModelFileError(f"{weights_path}: layer {name} takes {layers[name][0].shape[0]} inputs, the "
                                 f"features give {width} (a model of another ndt version? retrain it)")
    return cls(description["kind"], layers, description["norm"], description["config"], description["info"])


def load_predictor(stem: str = "routenet_e", directory=None):
    """The model ``stem`` on the fastest engine that runs it: compiled at the kernels' width
    (:data:`twin.models.kernels.STATE_DIM`), TensorFlow's (:mod:`twin.models.learned`) for any other width."""
    meta_path, _ = model_paths(stem, directory)
    description = read_description(meta_path)
    if description["kind"] in COMPILED and description["config"].get("state_dim") == kernels.STATE_DIM:
        return load_compiled(stem, directory)
    from twin.models.learned import load_twin

    return load_twin(stem, directory)


def compile_kernels() -> None:
    """Compile the kernels of the shipped models into Numba's on-disk cache (``make install`` does), so a
    first prediction from a fresh clone does not wait seconds for the compiler."""
    from twin.state.model import Flow, Link

    links = (Link("a", "b", 1e6), Link("b", "c", 1e6), Link("b", "a", 1e6), Link("c", "b", 1e6))
    state = NetworkState(nodes=("a", "b", "c"), links=links, flows=(Flow("a", "c", 1e5), Flow("c", "a", 1e5)))
    for stem in COMPILED:
        load_compiled(stem).predict_delays([state])
