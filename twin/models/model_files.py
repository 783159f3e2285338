"""A trained model on disk, read without TensorFlow: ``stem.json`` (kind, sizes, feature normalisation,
training info) beside ``stem.weights.h5`` (Keras 3 weights, HDF5)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from twin.models.features import GraphBatch
from twin.state.errors import NdtError

MODELS_DIR = Path(__file__).parent / "weights"
KINDS = ("routenet_e", "rnn", "routenet_f")
HEADS = ("delay", "jitter", "loss")  # what RouteNet-F predicts per path, the columns of its output
WAIT_SCALE = "served_share"  # RouteNet-F's readouts scale by QT's served share (its files' config "wait_scale")
CLASS_KINDS = ("routenet_f", "rnn")  # models that read each hop's queue (class) features, not only its link's


class ModelFileError(NdtError):
    """A model's weights or description file is missing or does not match the network."""


class Normalizer:
    """Per-feature standardisation of link, queue, path (and, for CLASS_KINDS, class) features (mean, std from a
    training set)."""

    KEYS = ("link_x", "queue_x", "path_x")

    def __init__(self, stats: dict[str, dict[str, list[float]]]):
        self.stats = {k: {s: np.asarray(v[s], dtype=np.float32) for s in ("mean", "std")} for k, v in stats.items()}

    @classmethod
    def fit(cls, batch: GraphBatch, classes: bool = False) -> "Normalizer":
        stats = {}
        for key in cls.KEYS + (("class_x",) if classes else ()):
            values = getattr(batch, key).astype(np.float64)
            std = values.std(axis=0)
            stats[key] = {"mean": values.mean(axis=0).tolist(), "std": np.where(std > 1e-6, std, 1.0).tolist()}
        return cls(stats)

    def to_dict(self) -> dict:
        return {k: {s: v[s].tolist() for s in ("mean", "std")} for k, v in self.stats.items()}

    def apply(self, key: str, values: np.ndarray) -> np.ndarray:
        return (values - self.stats[key]["mean"]) / self.stats[key]["std"]


def model_inputs(batch: GraphBatch, norm: Normalizer) -> dict[str, np.ndarray]:
    """What both engines feed a learned model: normalised features and per-hop scales of ``batch``
    (float32; the scales in s, packets and shares of capacity). A model with class statistics in ``norm``
    (CLASS_KINDS) gets the class features too, each hop's buffer and service time are its queue's, and
    ``hop_speed`` is the share of its link QT serves that queue at (1 without the QT hints)."""
    link = batch.hop_link
    classes = "class_x" in norm.stats
    arrays = {
        "link_x": norm.apply("link_x", batch.link_x),
        "path_x": norm.apply("path_x", batch.path_x),
        "hop_buffer": batch.class_buffer[batch.hop_class] if classes else batch.link_buffer[link],
        "hop_service": batch.class_service[batch.hop_class] if classes else batch.link_service[link],
        "hop_transmit": batch.hop_transmit,
        "hop_share": batch.path_rate[batch.hop_path] / batch.link_capacity[link],
        "path_prop": batch.path_prop,
    }
    if classes:  # per-queue states replace the per-link queue
        arrays["class_x"] = norm.apply("class_x", batch.class_x)
        speed = batch.class_speed if batch.class_speed is not None else np.ones(len(batch.class_link))
        arrays["hop_speed"] = speed[batch.hop_class]
    else:
        arrays["queue_x"] = norm.apply("queue_x", batch.queue_x)
    return {k: v.astype(np.float32) for k, v in arrays.items()}


def model_paths(stem: str, directory=None) -> tuple[Path, Path]:
    """``(stem.json, stem.weights.h5)`` in ``directory`` (default: the weights shipped in twin/models),
    both checked to exist."""
    directory = Path(directory) if directory is not None else MODELS_DIR
    meta, weights = directory / f"{stem}.json", directory / f"{stem}.weights.h5"
    for path in (meta, weights):
        if not path.exists():
            raise ModelFileError(f"{path}: no such model file; train one with 'ndt train' first")
    return meta, weights


def read_description(path: Path, fine_tune: bool = False) -> dict:
    """A model description: ``kind`` (one of KINDS), ``config``, ``norm`` (a :class:`Normalizer`), ``info``.
    ``fine_tune`` accepts a RouteNet-F of an earlier version as the start of a training run: its weights fit,
    and training relearns its readouts on the served share's scale."""
    try:
        meta = json.loads(Path(path).read_text())
        description = {"kind": meta["kind"], "config": meta["config"], "norm": Normalizer(meta["norm"]),
                       "info": meta.get("info", {})}
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise ModelFileError(f"{path}: not a model description ({exc})") from None
    if description["kind"] not in KINDS:
        raise ModelFileError(f"{path}: unknown model kind {description['kind']!r} (known: {', '.join(KINDS)})")
    if description["kind"] in CLASS_KINDS and "class_x" not in description["norm"].stats:
        raise ModelFileError(f"{path}: a {description['kind']} model reads queue features, but its normalisation "
                             "has none (a model of an earlier ndt version? retrain it)")
    if fine_tune and description["kind"] == "routenet_f":
        description["config"]["wait_scale"] = WAIT_SCALE
    if description["kind"] == "routenet_f" and description["config"].get("wait_scale") != WAIT_SCALE:
        raise ModelFileError(f"{path}: a RouteNet-F of an earlier ndt version, whose readouts stop at the buffer "
                             "drained at the link's full rate; retrain it (docs/twin.md, RouteNet-F)")
    return description


def read_weights(path: Path) -> dict[str, list[np.ndarray]]:
    """The variables of a Keras 3 weights file by layer name, in creation order (float32).

    A GRU cell gives ``[kernel, recurrent_kernel, bias]``; an MLP (Sequential) gives
    ``[kernel_1, bias_1, kernel_2, bias_2, ...]``.
    """
    import h5py

    layers: dict[str, list[np.ndarray]] = {}

    def variables(group) -> list[np.ndarray]:
        return [np.asarray(group[k], dtype=np.float32) for k in sorted(group, key=int)]

    def by_suffix(name: str) -> int:
        return int(name.rsplit("_", 1)[1]) if "_" in name and name.rsplit("_", 1)[1].isdigit() else 0

    def collect(group) -> None:
        for key, child in group.items():
            if key == "vars" or not isinstance(child, h5py.Group):
                continue
            if "vars" not in child:  # a container of layers
                collect(child)
            elif "layers" in child and not len(child["vars"]):  # a Sequential: its Dense layers in order
                layers[child["vars"].attrs.get("name", key)] = [
                    v for sub in sorted(child["layers"], key=by_suffix) for v in variables(child["layers"][sub]["vars"])]
            elif len(child["vars"]):
                layers[child["vars"].attrs.get("name", key)] = variables(child["vars"])

    try:
        with h5py.File(path, "r") as f:
            collect(f)
    except (OSError, KeyError, ValueError) as exc:
        raise ModelFileError(f"{path}: not a Keras weights file ({exc})") from None
    return layers
