"""A trained network with its feature normalisation in Keras / TensorFlow: the learned twin that trains,
behind the one interface ``predict_delays(states) -> list[np.ndarray]`` (s), saved and loaded as
``stem.weights.h5`` + ``stem.json``. Predictions run faster without TensorFlow
(:mod:`twin.models.inference`, the same numbers)."""

from __future__ import annotations

import json
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from twin.models.features import GraphBatch, build_batch
from twin.models.model_files import (
    HEADS,
    KINDS,
    ModelFileError,
    WAIT_SCALE,
    Normalizer,
    model_inputs,
    model_paths,
    read_description,
)
from twin.models.rnn import PathRNN
from twin.models.routenet import RouteNetE
from twin.models.routenet_f import RouteNetF
from twin.state.model import Flow, Link, NetworkState

MIN_HOPS = 16  # the recurrent pass always spans at least this many hop positions (empty ones cost ~nothing),
HOP_BUCKET = 8  # and longer paths round up to a multiple of this: one traced graph serves almost every state


def padded_hops(batch: GraphBatch) -> int:
    """Hop positions the recurrent pass spans: MIN_HOPS, or the longest path rounded up to HOP_BUCKET."""
    return max(MIN_HOPS, -(-batch.max_hops // HOP_BUCKET) * HOP_BUCKET)


def batch_tensors(batch: GraphBatch, norm: Normalizer, hops: int | None = None) -> dict[str, tf.Tensor]:
    """The model inputs of a batch: normalised features, index tensors, per-hop scales (float32, s); the
    recurrent pass spans ``hops`` positions (default: :func:`padded_hops`)."""
    pad = (hops or padded_hops(batch)) - batch.max_hops
    counts = np.concatenate([batch.counts, np.zeros(pad, dtype=np.int64)])
    offsets = np.concatenate([batch.offsets, np.full(pad, len(batch.hop_link), dtype=np.int64)])
    arrays = {**model_inputs(batch, norm), "hop_link": batch.hop_link, "hop_path": batch.hop_path,
              "counts": counts, "offsets": offsets}
    if "class_x" in arrays:
        arrays.update(hop_class=batch.hop_class, class_link=batch.class_link)
    return {k: tf.constant(v, dtype=tf.int32 if v.dtype.kind == "i" else tf.float32) for k, v in arrays.items()}


class LearnedTwin:
    """A trained network plus its normalisation: ``predict_delays(states)`` → per-flow delays, s; a model with
    several heads (RouteNet-F) also answers ``predict_metrics(states)``: per flow delay, jitter and loss."""

    def __init__(self, net: keras.Model, norm: Normalizer, kind: str, info: dict | None = None):
        self.net = net
        self.norm = norm
        self.kind = kind
        self.name = kind
        self.info = info or {}
        self._forward = tf.function(self._call, reduce_retracing=True)

    def _call(self, x, max_hops):
        return self.net(x, max_hops=max_hops)

    @property
    def heads(self) -> tuple[str, ...]:
        """What the network predicts per path, in the columns of its output."""
        return HEADS if self.kind == "routenet_f" else ("delay",)

    def forward(self, batch: GraphBatch) -> tf.Tensor:
        """Per sorted path delay, s (a tensor); (P, len(heads)) for a model of several heads."""
        return self._forward(batch_tensors(batch, self.norm), padded_hops(batch))

    def predict_batch(self, batch: GraphBatch) -> list[np.ndarray]:
        out = self.forward(batch).numpy().astype(np.float64)
        return batch.per_flow(out[:, 0] if out.ndim == 2 else out)

    def predict_metrics_batch(self, batch: GraphBatch) -> list[dict[str, np.ndarray]]:
        """Per state, per flow: each of ``heads`` (delay s, jitter s², loss share); an ECMP flow's delay and loss
        are the share-weighted means over its paths, its jitter their pooled variance."""
        return batch.per_flow_metrics(self.forward(batch).numpy().astype(np.float64).reshape(batch.n_paths, -1),
                                      self.heads)

    def predict_metrics(self, states: list[NetworkState]) -> list[dict[str, np.ndarray]]:
        """Per state, per flow: delay (s), jitter (s²) and loss (share of packets) where the model has them."""
        return self.predict_metrics_batch(build_batch(states))

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
    config = {"state_dim": net.state_dim, "iterations": getattr(net, "iterations", 0)}
    if isinstance(net, RouteNetF):
        config["wait_scale"] = WAIT_SCALE
    return config


def make_network(kind: str, config: dict) -> keras.Model:
    """A fresh network of ``kind`` (one of KINDS)."""
    if kind == "routenet_e":
        return RouteNetE(state_dim=config.get("state_dim", 32), iterations=config.get("iterations", 8))
    if kind == "routenet_f":
        return RouteNetF(state_dim=config.get("state_dim", 32), iterations=config.get("iterations", 8))
    if kind == "rnn":
        return PathRNN(state_dim=config.get("state_dim", 32))
    raise ModelFileError(f"unknown model kind {kind!r} (known: {', '.join(KINDS)})")


def build(net: keras.Model, norm: Normalizer, probe: GraphBatch) -> None:
    """Create the network's variables by running it once on ``probe``."""
    net(batch_tensors(probe, norm), max_hops=padded_hops(probe))


def load_twin(stem: str = "routenet_e", directory=None, fine_tune: bool = False) -> LearnedTwin:
    """Load ``stem.weights.h5`` + ``stem.json`` from ``directory`` (default: the weights shipped in twin/models);
    ``fine_tune``: as the start of a training run (see :func:`read_description`)."""
    meta_path, weights = model_paths(stem, directory)
    description = read_description(meta_path, fine_tune)
    norm, kind = description["norm"], description["kind"]
    net = make_network(kind, description["config"])
    build(net, norm, _probe_batch())
    try:
        net.load_weights(weights)
    except (ValueError, OSError) as exc:
        first_line = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise ModelFileError(f"{weights}: weights do not fit the {kind} network {meta_path.name} describes "
                             f"({first_line})") from None
    return LearnedTwin(net, norm, kind, description["info"])


def _probe_batch() -> GraphBatch:
    """A three-node state, enough to create every variable of a network."""
    links = (Link("a", "b", 1e6), Link("b", "c", 1e6), Link("b", "a", 1e6), Link("c", "b", 1e6))
    state = NetworkState(nodes=("a", "b", "c"), links=links, flows=(Flow("a", "c", 1e5),))
    return build_batch([state])
