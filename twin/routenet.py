"""RouteNet-E (Ferriol-Galmés et al., INFOCOM 2022) in Keras 3 / TensorFlow, and the learned-twin wrapper.

The network reads like the paper's algorithm: initial path, link and queue
states (32-d) from the scale-free features of :mod:`twin.features`; T = 8
iterations in which a path GRU runs over the per-hop sequence of
[queue ‖ link] states, each queue aggregates the path states at its hop
(weighted by the path's share of the link, rate / C, so the message stays
bounded however many paths cross it) and is GRU-updated, and each link is
GRU-updated from its queue; then a per-hop readout of the queue occupancy
(sigmoid × buffer, packets) gives

    delay(path) = Σ_hops occupancy × mean_size / C + size / C + propagation   (s).

The recurrent pass is the fast form of DESIGN.md §5: paths sorted by length,
one GRUCell step per hop position over the prefix of paths still active.

:class:`LearnedTwin` wraps a network with its feature normalisation and gives
every model the one interface ``predict_delays(states) -> list[np.ndarray]``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import keras  # noqa: E402
import tensorflow as tf  # noqa: E402

from ndt.errors import NdtError  # noqa: E402
from twin.features import GraphBatch, build_batch  # noqa: E402
from twin.state import NetworkState  # noqa: E402

MODELS_DIR = Path(__file__).parent / "models"
MIN_HOPS = 16  # the recurrent pass always spans at least this many hop positions (empty ones cost ~nothing),
HOP_BUCKET = 8  # and longer paths round up to a multiple of this: one traced graph serves almost every state


class ModelFileError(NdtError):
    """A model's weights or description file is missing or does not match the network."""


def mlp(units: list[int], name: str, last_bias: float = 0.0) -> keras.Sequential:
    """Dense layers with ReLU between them and a linear last layer (its bias starting at ``last_bias``)."""
    layers = [keras.layers.Dense(u, activation="relu") for u in units[:-1]]
    last = keras.layers.Dense(units[-1], bias_initializer=keras.initializers.Constant(last_bias))
    return keras.Sequential(layers + [last], name=name)


@keras.saving.register_keras_serializable(package="ndt")
class HopGRU(keras.layers.Layer):
    """A GRU cell whose input projection is applied once per entity, not once per hop.

    ``project(x)`` maps per-link (or per-hop) inputs to the three gate
    pre-activations; ``step(xp, h)`` advances the states ``h`` given projected
    inputs ``xp``. Same equations as Keras's GRUCell (reset gate after the matmul).
    """

    def __init__(self, units: int, **kwargs):
        super().__init__(**kwargs)
        self.units = units

    def build(self, input_shape):
        dim = input_shape[-1] if isinstance(input_shape, (tuple, list)) else int(input_shape)
        self.kernel = self.add_weight(shape=(dim, 3 * self.units), initializer="glorot_uniform", name="kernel")
        self.recurrent_kernel = self.add_weight(shape=(self.units, 3 * self.units), initializer="orthogonal",
                                                name="recurrent_kernel")
        self.bias = self.add_weight(shape=(2, 3 * self.units), initializer="zeros", name="bias")

    def project(self, x: tf.Tensor) -> tf.Tensor:
        return tf.matmul(x, self.kernel) + self.bias[0]

    def step(self, xp: tf.Tensor, h: tf.Tensor) -> tf.Tensor:
        x_z, x_r, x_h = tf.split(xp, 3, axis=1)
        h_z, h_r, h_h = tf.split(tf.matmul(h, self.recurrent_kernel) + self.bias[1], 3, axis=1)
        z = tf.sigmoid(x_z + h_z)
        r = tf.sigmoid(x_r + h_r)
        candidate = tf.tanh(x_h + r * h_h)
        return z * h + (1.0 - z) * candidate

    def get_config(self):
        return {**super().get_config(), "units": self.units}


def path_recurrence(cell: HopGRU, h: tf.Tensor, hop_inputs: tf.Tensor, counts: tf.Tensor, offsets: tf.Tensor,
                    max_hops: int) -> tuple[tf.Tensor, tf.Tensor]:
    """Run ``cell`` along every path, one hop position at a time, over the active prefix only.

    h: (P, d) initial path states, paths sorted longest first; hop_inputs: (H, 3d)
    projected inputs ordered by hop position then path. Returns the final path
    states (P, d) and the state after each hop (H, d), in the order of ``hop_inputs``.
    """
    outputs, finished = [], [h[counts[0]:]]  # paths with no hop keep their state
    for k in range(max_hops):
        n, start = counts[k], offsets[k]
        h = cell.step(hop_inputs[start:start + n], h[:n])
        outputs.append(h)
        following = counts[k + 1] if k + 1 < max_hops else 0
        finished.append(h[following:])  # paths whose last hop is k
    return tf.concat(finished[::-1], axis=0), tf.concat(outputs, axis=0)


def hop_delays(occupancy: tf.Tensor, x: dict) -> tf.Tensor:
    """Per-path delay (s) from per-hop occupancy (packets): Σ waiting + transmission, plus propagation."""
    per_hop = occupancy * x["hop_service"] + x["hop_transmit"]
    n_paths = tf.shape(x["path_x"])[0]
    return tf.math.unsorted_segment_sum(per_hop, x["hop_path"], n_paths) + x["path_prop"]


@keras.saving.register_keras_serializable(package="ndt")
class RouteNetE(keras.Model):
    """RouteNet-Erlang's message passing with the scalable per-hop occupancy readout."""

    def __init__(self, state_dim: int = 32, iterations: int = 8, **kwargs):
        super().__init__(**kwargs)
        self.state_dim = state_dim
        self.iterations = iterations
        self.path_embed = mlp([state_dim, state_dim], "path_embed")
        self.link_embed = mlp([state_dim, state_dim], "link_embed")
        self.queue_embed = mlp([state_dim, state_dim], "queue_embed")
        self.path_cell = HopGRU(state_dim, name="path_gru")
        self.path_cell.build(2 * state_dim)
        self.queue_cell = keras.layers.GRUCell(state_dim, name="queue_gru")
        self.link_cell = keras.layers.GRUCell(state_dim, name="link_gru")
        self.readout = mlp([state_dim, state_dim // 2, 1], "occupancy_readout", last_bias=-4.0)

    def call(self, x: dict, max_hops: int) -> tf.Tensor:
        """Per sorted path mean delay, s."""
        path = tf.tanh(self.path_embed(x["path_x"]))
        link = tf.tanh(self.link_embed(x["link_x"]))
        queue = tf.tanh(self.queue_embed(x["queue_x"]))
        n_links = tf.shape(link)[0]
        share = x["hop_share"][:, None]
        for _ in range(self.iterations):
            hop_inputs = tf.gather(self.path_cell.project(tf.concat([queue, link], axis=1)), x["hop_link"])
            path, seq = path_recurrence(self.path_cell, path, hop_inputs, x["counts"], x["offsets"], max_hops)
            message = tf.math.unsorted_segment_sum(seq * share, x["hop_link"], n_links)
            queue, _ = self.queue_cell(message, [queue])
            link, _ = self.link_cell(queue, [link])
        readout_in = tf.concat([seq, tf.gather(queue, x["hop_link"])], axis=1)
        occupancy = tf.sigmoid(self.readout(readout_in)[:, 0]) * x["hop_buffer"]
        return hop_delays(occupancy, x)

    def get_config(self):
        return {**super().get_config(), "state_dim": self.state_dim, "iterations": self.iterations}


class Normalizer:
    """Per-feature standardisation of link, queue and path features (mean, std from a training set)."""

    KEYS = ("link_x", "queue_x", "path_x")

    def __init__(self, stats: dict[str, dict[str, list[float]]]):
        self.stats = {k: {s: np.asarray(v[s], dtype=np.float32) for s in ("mean", "std")} for k, v in stats.items()}

    @classmethod
    def fit(cls, batch: GraphBatch) -> "Normalizer":
        stats = {}
        for key in cls.KEYS:
            values = getattr(batch, key).astype(np.float64)
            std = values.std(axis=0)
            stats[key] = {"mean": values.mean(axis=0).tolist(), "std": np.where(std > 1e-6, std, 1.0).tolist()}
        return cls(stats)

    def to_dict(self) -> dict:
        return {k: {s: v[s].tolist() for s in ("mean", "std")} for k, v in self.stats.items()}

    def apply(self, key: str, values: np.ndarray) -> np.ndarray:
        return (values - self.stats[key]["mean"]) / self.stats[key]["std"]


def padded_hops(batch: GraphBatch) -> int:
    """Hop positions the recurrent pass spans: MIN_HOPS, or the longest path rounded up to HOP_BUCKET."""
    return max(MIN_HOPS, -(-batch.max_hops // HOP_BUCKET) * HOP_BUCKET)


def batch_tensors(batch: GraphBatch, norm: Normalizer) -> dict[str, tf.Tensor]:
    """The model inputs of a batch: normalised features, index tensors, per-hop scales (float32, s)."""
    pad = padded_hops(batch) - batch.max_hops
    counts = np.concatenate([batch.counts, np.zeros(pad, dtype=np.int64)])
    offsets = np.concatenate([batch.offsets, np.full(pad, len(batch.hop_link), dtype=np.int64)])
    hop_link = batch.hop_link
    arrays = {
        "link_x": norm.apply("link_x", batch.link_x),
        "queue_x": norm.apply("queue_x", batch.queue_x),
        "path_x": norm.apply("path_x", batch.path_x),
        "hop_link": hop_link.astype(np.int32),
        "hop_path": batch.hop_path.astype(np.int32),
        "counts": counts.astype(np.int32),
        "offsets": offsets.astype(np.int32),
        "hop_buffer": batch.link_buffer[hop_link],
        "hop_service": batch.link_service[hop_link],
        "hop_transmit": batch.hop_transmit,
        "hop_share": batch.path_rate[batch.hop_path] / batch.link_capacity[hop_link],
        "path_prop": batch.path_prop,
    }
    return {k: tf.constant(v, dtype=tf.int32 if v.dtype.kind == "i" else tf.float32) for k, v in arrays.items()}


class LearnedTwin:
    """A trained network plus its normalisation: ``predict_delays(states)`` → per-flow delays, s."""

    def __init__(self, net: keras.Model, norm: Normalizer, kind: str, info: dict | None = None):
        self.net = net
        self.norm = norm
        self.kind = kind
        self.name = kind
        self.info = info or {}
        self._forward = tf.function(self._call, reduce_retracing=True)

    def _call(self, x, max_hops):
        return self.net(x, max_hops=max_hops)

    def forward(self, batch: GraphBatch) -> tf.Tensor:
        """Per sorted path delay, s (a tensor)."""
        return self._forward(batch_tensors(batch, self.norm), padded_hops(batch))

    def predict_batch(self, batch: GraphBatch) -> list[np.ndarray]:
        return batch.unsort(self.forward(batch).numpy().astype(np.float64))

    def predict_delays(self, states: list[NetworkState]) -> list[np.ndarray]:
        """Per-flow mean delay (s), one array per state in flow order; the states run as one batch."""
        return self.predict_batch(build_batch(states))

    def save(self, directory, stem: str) -> tuple[Path, Path]:
        """Write ``stem.weights.h5`` and ``stem.json`` (model kind, sizes, normalisation, training info)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        weights = directory / f"{stem}.weights.h5"
        meta = directory / f"{stem}.json"
        self.net.save_weights(weights)
        description = {"kind": self.kind, "config": network_config(self.net), "norm": self.norm.to_dict(),
                       "info": self.info}
        meta.write_text(json.dumps(description, indent=1))
        return weights, meta


def network_config(net: keras.Model) -> dict:
    return {"state_dim": net.state_dim, "iterations": getattr(net, "iterations", 0)}


def make_network(kind: str, config: dict) -> keras.Model:
    """A fresh network of ``kind`` (``routenet_e`` or ``rnn``)."""
    if kind == "routenet_e":
        return RouteNetE(state_dim=config.get("state_dim", 32), iterations=config.get("iterations", 8))
    if kind == "rnn":
        from twin.rnn import PathRNN

        return PathRNN(state_dim=config.get("state_dim", 32))
    raise ModelFileError(f"unknown model kind {kind!r} (known: routenet_e, rnn)")


def build(net: keras.Model, norm: Normalizer, probe: GraphBatch) -> None:
    """Create the network's variables by running it once on ``probe``."""
    net(batch_tensors(probe, norm), max_hops=padded_hops(probe))


def load_twin(stem: str = "routenet_e", directory=None) -> LearnedTwin:
    """Load ``stem.weights.h5`` + ``stem.json`` from ``directory`` (default: the weights shipped in twin/models)."""
    directory = Path(directory) if directory is not None else MODELS_DIR
    meta_path = directory / f"{stem}.json"
    weights = directory / f"{stem}.weights.h5"
    for path in (meta_path, weights):
        if not path.exists():
            raise ModelFileError(f"{path}: no such model file; train one with 'ndt train' first")
    try:
        meta = json.loads(meta_path.read_text())
        norm = Normalizer(meta["norm"])
        net = make_network(meta["kind"], meta["config"])
    except (json.JSONDecodeError, KeyError) as exc:
        raise ModelFileError(f"{meta_path}: not a model description ({exc})") from None
    build(net, norm, _probe_batch())
    try:
        net.load_weights(weights)
    except (ValueError, OSError) as exc:
        raise ModelFileError(f"{weights}: weights do not fit a {meta['kind']} network ({exc})") from None
    return LearnedTwin(net, norm, meta["kind"], meta.get("info", {}))


def _probe_batch() -> GraphBatch:
    """A three-node state, enough to create every variable of a network."""
    from twin.state import Flow, Link

    links = (Link("a", "b", 1e6), Link("b", "c", 1e6), Link("b", "a", 1e6), Link("c", "b", 1e6))
    state = NetworkState(nodes=("a", "b", "c"), links=links, flows=(Flow("a", "c", 1e5),))
    return build_batch([state])
