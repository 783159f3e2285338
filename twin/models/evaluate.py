"""Evaluation of the twin against simulator labels: the paper's Figure 3, and zero-shot on a datanet.

Errors are per-path relative errors of the mean delay, |predicted − label| /
label (fractions), over paths with a positive label. A bucket reports their
mean (MAPE) and 15th/85th percentiles, per model, plus the time each model
and the simulator spend per sample (s). Models that predict jitter (delay
variance) and loss too (QT, RouteNet-F) add the jitter MAPE (paths whose
jitter label reaches JITTER_FLOOR: a delay standard deviation of at least a
tenth of their transmission time) and the loss MAE (absolute error of the share of packets
lost). ``by_policy`` repeats the figures for the paths grouped by the
scheduling policy of the busiest port they cross, ``by_load`` for the paths grouped by that port's
offered load (all classes, a share of its capacity; LOAD_BUCKETS).

The default evaluation set is fixed and seeded: one ``ndt dataset`` directory
per topology-size bucket (25–50 nodes is the training distribution; the rest
are sizes never trained on), generated on first use into a cache directory
outside git and reused afterwards.
"""

from __future__ import annotations

import itertools
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from twin.data.dataset import DatasetConfig, generate, iter_samples, make_state
from twin.models.features import JITTER_FLOOR, error_scales, fixed_delays
from twin.models.tails import SCORED_QUANTILES, TailCorrection, delay_quantile
from twin.state.errors import StateError
from twin.state.model import POLICIES


@dataclass(frozen=True)
class Bucket:
    """A topology-size range and how many seeded samples evaluate it (packets_per_flow: label accuracy)."""

    min_nodes: int
    max_nodes: int
    samples: int
    packets_per_flow: float

    @property
    def label(self) -> str:
        return f"{self.min_nodes}-{self.max_nodes}"

    def config(self, seed: int) -> DatasetConfig:
        return DatasetConfig(samples=self.samples, min_nodes=self.min_nodes, max_nodes=self.max_nodes,
                             packets_per_flow=self.packets_per_flow, shard_size=1, seed=seed)


BUCKETS = (
    Bucket(25, 50, 20, 2500.0),
    Bucket(51, 100, 6, 1500.0),
    Bucket(101, 200, 3, 1000.0),
    Bucket(201, 300, 2, 600.0),
)
EVAL_SEED = 7_000_003  # never a training seed
LOAD_BUCKETS = ((0.0, 0.5), (0.5, 0.8), (0.8, 1.0), (1.0, 1.2), (1.2, 1.5), (1.5, math.inf))  # bottleneck load ranges


def cache_dir() -> Path:
    """Where generated evaluation sets live: $NDT_CACHE, else ~/.cache/ndt."""
    return Path(os.environ.get("NDT_CACHE", Path.home() / ".cache" / "ndt")) / "eval"


def ensure_eval_sets(buckets=BUCKETS, directory: Path | None = None, workers: int | None = None,
                     progress: bool = True) -> dict[str, Path]:
    """Generate (or resume) the seeded evaluation set of each bucket; returns bucket label → directory."""
    root = directory or cache_dir()
    out = {}
    for k, bucket in enumerate(buckets):
        path = root / bucket.label
        generate(bucket.config(EVAL_SEED + k), path, workers=workers, progress=progress)
        out[bucket.label] = path
    return out


def summarize(errors: list[np.ndarray]) -> dict:
    """MAPE (mean), p15 and p85 of all paths' relative errors."""
    flat = np.concatenate(errors) if errors else np.zeros(0)
    if len(flat) == 0:
        return {"mape": None, "p15": None, "p85": None}
    return {"mape": float(flat.mean()), "p15": float(np.percentile(flat, 15)), "p85": float(np.percentile(flat, 85))}


def bottlenecks(state) -> tuple[np.ndarray, np.ndarray]:
    """Per flow, the busiest port its first route crosses: its scheduling policy (a POLICIES name) and its
    offered load (a share of its capacity; a flow without a route: "fifo", 0)."""
    load = state.utilization()
    policies = np.array([link.policy for link in state.links])
    first = {}
    for route, owner in enumerate(state.routes.owner):
        first.setdefault(int(owner), route)
    policy, busiest = [], []
    for flow in range(len(state.flows)):
        links = state.routes.links[first[flow]] if flow in first else np.zeros(0, dtype=np.int64)
        top = links[np.argmax(load[links])] if len(links) else None
        policy.append("fifo" if top is None else policies[top])
        busiest.append(0.0 if top is None else float(load[top]))
    return np.array(policy), np.array(busiest)


def grouped(models, errors: dict, policies: np.ndarray, loads: np.ndarray) -> dict:
    """``by_policy`` and ``by_load``: :func:`error_fields` over the paths of each bottleneck policy and of
    each LOAD_BUCKETS range of the bottleneck's load (groups without paths left out)."""
    by_load = []
    for lo, hi in LOAD_BUCKETS:
        keep = (loads >= lo) & (loads < hi)
        if np.any(keep):
            by_load.append({"load": f"{lo:g}-{hi:g}" if math.isfinite(hi) else f">={lo:g}",
                            "paths": int(np.sum(keep)), **error_fields(models, errors, keep)})
    return {"by_policy": [{"policy": policy, "paths": int(np.sum(policies == policy)),
                           **error_fields(models, errors, policies == policy)}
                          for policy in POLICIES if np.any(policies == policy)],
            "by_load": by_load}


def path_errors(predicted: dict, labels: dict, wait_scale: np.ndarray, jitter_floor: np.ndarray) -> dict[str, np.ndarray]:
    """Per path of one state, NaN where undefined: delay and waiting relative errors, and where predicted the
    jitter relative error (paths whose jitter label reaches ``jitter_floor``, s²), the loss absolute error and
    the relative errors of the percentiles of SCORED_QUANTILES."""
    delay = labels["delay"]
    ok = np.isfinite(delay) & (delay > 0)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = {"delay": np.where(ok, np.abs(predicted["delay"] - delay) / delay, np.nan),
               "waiting": np.where(ok, np.abs(predicted["delay"] - delay) / wait_scale, np.nan)}
        if "jitter" in predicted and "jitter" in labels:
            jitter = labels["jitter"]
            out["jitter"] = np.where(np.isfinite(jitter) & (jitter >= jitter_floor) & (jitter > 0),
                                     np.abs(predicted["jitter"] - jitter) / jitter, np.nan)
        if "loss" in predicted and "loss" in labels:
            out["loss"] = np.abs(predicted["loss"] - labels["loss"])
        for name in SCORED_QUANTILES:
            if name in predicted and name in labels:
                label = labels[name]
                out[name] = np.where(np.isfinite(label) & (label > 0), np.abs(predicted[name] - label) / label, np.nan)
    return out


def evaluate_samples(models: dict, samples, correction: TailCorrection | None = None) -> dict:
    """Run every model on each sample (one state per call); per-path errors (``path_errors``; percentiles with
    the tail ``correction``, default the shipped one), the paths' bottleneck policies and loads
    (:func:`bottlenecks`), and seconds per sample per model."""
    errors = {name: [] for name in models}
    seconds = {name: [] for name in models}
    sim_s, nodes, policies, loads = [], [], [], []
    for sample in samples:
        nodes.append(len(sample.state.nodes))
        sim_s.append(sample.meta.get("sim_wall_s", np.nan))
        policy, load = bottlenecks(sample.state)
        policies.append(policy)
        loads.append(load)
        prop, transmit = fixed_delays(sample.state)
        wait_scale = error_scales(sample.labels["delay"], prop, transmit, "waiting")
        for name, model in models.items():
            started = time.perf_counter()
            if hasattr(model, "predict_metrics"):
                predicted = model.predict_metrics([sample.state])[0]
            else:
                predicted = {"delay": model.predict_delays([sample.state])[0]}
            seconds[name].append(time.perf_counter() - started)
            predicted.update(tails(prop, predicted, correction))
            errors[name].append(path_errors(predicted, sample.labels, wait_scale, JITTER_FLOOR * transmit**2))
    return {"errors": errors, "seconds": seconds, "sim_s": sim_s, "nodes": nodes, "policies": policies,
            "loads": loads}


def error_fields(models, errors: dict, keep=None) -> dict:
    """Report fields of every model: delay MAPE with p15/p85, waiting MAPE, and jitter MAPE, loss MAE and the
    MAPE of the 90th and 99th percentiles where predicted, over the paths ``keep`` selects (a boolean per path of the
    concatenated samples)."""
    row = {}
    for name in models:
        per_path = {key: np.concatenate([e[key] for e in errors[name]]) for key in errors[name][0]}
        if keep is not None:
            per_path = {key: values[keep] for key, values in per_path.items()}
        delay = summarize([per_path["delay"][np.isfinite(per_path["delay"])]])
        row[f"{name}_mape"], row[f"{name}_p15"], row[f"{name}_p85"] = delay["mape"], delay["p15"], delay["p85"]
        row[f"{name}_waiting_mape"] = summarize([per_path["waiting"][np.isfinite(per_path["waiting"])]])["mape"]
        if "jitter" in per_path:
            row[f"{name}_jitter_mape"] = summarize([per_path["jitter"][np.isfinite(per_path["jitter"])]])["mape"]
        if "loss" in per_path:
            finite = per_path["loss"][np.isfinite(per_path["loss"])]
            row[f"{name}_loss_mae"] = float(finite.mean()) if len(finite) else None
        for tail in SCORED_QUANTILES:
            if tail in per_path:
                row[f"{name}_{tail}_mape"] = summarize([per_path[tail][np.isfinite(per_path[tail])]])["mape"]
    return row


def figure3(models: dict, sets: dict[str, Path], warm=(), correction: TailCorrection | None = None) -> dict:
    """The Figure 3 report over bucket label → dataset directory (see ``ndt eval``); ``warm``: states run untimed
    first; ``correction``: the tail correction of the percentiles (default: the shipped one)."""
    for state in warm:
        for model in models.values():
            model.predict_delays([state])
    buckets = []
    all_seconds = {name: [] for name in models}
    all_sim = []
    for label, path in sets.items():
        run = evaluate_samples(models, iter_samples(path), correction)
        row = {"nodes": label, "samples": len(run["nodes"]), **error_fields(models, run["errors"])}
        for name in models:
            row[f"{name}_s_per_sample"] = float(np.mean(run["seconds"][name]))
            all_seconds[name] += run["seconds"][name]
        row.update(grouped(models, run["errors"], np.concatenate(run["policies"]),
                           np.concatenate(run["loads"])))
        row["simulator_s_per_sample"] = float(np.nanmean(run["sim_s"]))
        all_sim += run["sim_s"]
        buckets.append(row)
    infer = {name: float(np.mean(s)) for name, s in all_seconds.items()}
    infer["simulator"] = float(np.nanmean(all_sim))
    return {"buckets": buckets, "infer_s": infer}


def tails(prop: np.ndarray, predicted: dict, correction: TailCorrection | None = None) -> dict:
    """Per flow, the percentiles of SCORED_QUANTILES (s) that a model's mean delay, jitter and loss imply above
    the flows' propagation ``prop`` (s; :mod:`twin.models.tails`, with ``correction``, default the shipped
    one); none for a model without jitter."""
    if "jitter" not in predicted:
        return {}
    return {name: delay_quantile(predicted["delay"], predicted["jitter"], prop, q, predicted.get("loss"), correction)
            for name, q in SCORED_QUANTILES.items()}


def within_delay_limit(predicted: dict, delay_limit: float) -> dict:
    """Per-path predictions as a reference that counts each packet's delay as at most ``delay_limit`` (s) would
    report them: the mean at most the limit, and the variance (jitter, s²) at most (limit − mean) · mean, the
    Bhatia–Davis bound for values in [0, limit]."""
    out = dict(predicted)
    out["delay"] = np.minimum(predicted["delay"], delay_limit)
    for name in SCORED_QUANTILES:  # a percentile of values limited to L is the unlimited one, at most L
        if name in predicted:
            out[name] = np.minimum(predicted[name], delay_limit)
    if "jitter" in predicted:
        out["jitter"] = np.minimum(predicted["jitter"], (delay_limit - out["delay"]) * out["delay"])
    return out


def zero_shot(models: dict, directory, limit: int | None = None, correction: TailCorrection | None = None) -> dict:
    """MAPE of each model on a BNN-UPC datanet directory, nothing trained on it. Where the reference limits
    each packet's delay (gnnet2020: 20 time units), the predictions pass through that limit first
    (:func:`within_delay_limit`); the report's ``delay_limit`` (s) says so. ``correction``: the tail correction
    of the percentiles (default: the shipped one)."""
    from twin.data.datanet_reader import read_datanet

    if limit is not None and limit < 1:
        raise StateError(f"limit must be at least 1, got {limit}")
    errors = {name: [] for name in models}
    seconds = {name: 0.0 for name in models}
    policies, loads, delay_limits = [], [], set()
    count = 0
    for sample in itertools.islice(read_datanet(directory), limit):
        count += 1
        labels = {"delay": sample.delay, "jitter": sample.jitter, "loss": sample.loss, "p90": sample.p90}
        prop, transmit = fixed_delays(sample.state)
        wait_scale = error_scales(sample.delay, prop, transmit, "waiting")
        policy, load = bottlenecks(sample.state)
        policies.append(policy)
        loads.append(load)
        for name, model in models.items():
            started = time.perf_counter()
            if hasattr(model, "predict_metrics"):
                predicted = model.predict_metrics([sample.state])[0]
            else:
                predicted = {"delay": model.predict_delays([sample.state])[0]}
            seconds[name] += time.perf_counter() - started
            predicted.update(tails(prop, predicted, correction))
            if math.isfinite(sample.delay_limit):
                delay_limits.add(sample.delay_limit)
                predicted = within_delay_limit(predicted, sample.delay_limit)
            errors[name].append(path_errors(predicted, labels, wait_scale, JITTER_FLOOR * transmit**2))
    if count == 0:
        raise StateError(f"{directory}: no usable samples")
    report = {"directory": str(directory), "samples": count, **error_fields(models, errors),
              "delay_limit": max(delay_limits) if delay_limits else None}
    for name in models:
        report[f"{name}_s_per_sample"] = seconds[name] / count
    report.update(grouped(models, errors, np.concatenate(policies), np.concatenate(loads)))
    return report


def plot_figure3(report: dict, models: list[str], path) -> Path:
    """Bars of MAPE per bucket and model with 15th–85th percentile whiskers, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    buckets = report["buckets"]
    x = np.arange(len(buckets))
    width = 0.8 / len(models)
    fig, ax = plt.subplots(figsize=(7, 4))
    for k, name in enumerate(models):
        mape = np.array([100 * (b[f"{name}_mape"] or 0) for b in buckets])
        low = np.array([100 * (b[f"{name}_p15"] or 0) for b in buckets])
        high = np.array([100 * (b[f"{name}_p85"] or 0) for b in buckets])
        ax.bar(x + (k - (len(models) - 1) / 2) * width, mape, width, label=name,
               yerr=[np.maximum(mape - low, 0), np.maximum(high - mape, 0)], capsize=3)
    ax.set_xticks(x, [f"{b['nodes']}\n({b['samples']} samples)" for b in buckets])
    ax.set_xlabel("topology size (nodes); trained on 25-50")
    ax.set_ylabel("delay relative error, %\n(bar: mean, whiskers: p15-p85)")
    ax.legend()
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def warm_states() -> list:
    """Two small seeded states every model runs before timing, so graph tracing is not counted."""
    config = DatasetConfig(samples=2, min_nodes=25, max_nodes=40, real_fraction=0.0, seed=EVAL_SEED)
    return [make_state(config, i)[0] for i in range(2)]
