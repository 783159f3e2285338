"""How sure the twin is: prediction intervals per path, and the safe operating range it was checked on.

Intervals are split-conformal (Vovk et al.; Lei et al. 2018) on the ratio simulated / predicted
delay, one set of quantiles per load bucket (Mondrian conformal): on held-out simulator samples
the ratio's lower and upper quantiles at the nominal level, with the finite-sample correction,
become the bounds ``predicted × ratio``. The ratio keeps them scale-free, like the twin's features.
Bucketing by the path's busiest-link utilization keeps the coverage near nominal at every load,
where one pooled quantile would be too wide at light load and too narrow near saturation.

The safe operating range is what the held-out samples spanned (topology size, busiest-link
utilization, buffer sizes, path length, traffic models); a state outside it gets reasons and no
interval, because coverage there was never measured. Files: ``STEM.intervals.json`` beside the
model's weights (``ndt intervals fit`` writes them).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from twin.models.model_files import MODELS_DIR
from twin.models.registry import LEARNED
from twin.state.errors import NdtError
from twin.state.model import SIZE_DISTS, TIME_DISTS, NetworkState

NOMINAL = 0.9
LOAD_EDGES = (0.5, 0.7, 0.9)  # bucket boundaries of a path's busiest-link utilization
MIN_BUCKET_PATHS = 50  # fewer held-out paths in a bucket: it borrows the pooled quantiles
SIZE_EDGES = (25, 50, 75)  # topology-size buckets of the coverage report, nodes


class IntervalError(NdtError):
    """An intervals file is missing, damaged or made for another model."""


def path_max_load(state: NetworkState) -> np.ndarray:
    """Per flow, the offered utilization of the busiest link any of its routes crosses."""
    routes = state.routes
    out = np.zeros(len(state.flows))
    if len(routes.owner):
        busiest = np.maximum.reduceat(state.utilization()[routes.hop_links], routes.first_hop)
        np.maximum.at(out, routes.owner, busiest)
    return out


def load_bucket(load: np.ndarray) -> np.ndarray:
    """Index of each load's bucket in LOAD_EDGES (0 = below the first edge)."""
    return np.searchsorted(np.asarray(LOAD_EDGES), load, side="right")


def bucket_labels(edges=LOAD_EDGES) -> list[str]:
    bounds = [0.0, *edges, math.inf]
    return [f"{a:g}-{b:g}" if math.isfinite(b) else f">={a:g}" for a, b in zip(bounds, bounds[1:])]


@dataclass
class SafeRange:
    """The ranges the held-out samples spanned; outside them the interval's coverage is unknown."""

    nodes: tuple[int, int]
    max_utilization: float  # busiest link of a state, offered load / capacity
    buffer: tuple[int, int]  # packets
    hops: int  # longest path
    time_dists: tuple[str, ...]
    size_dists: tuple[str, ...]
    ecmp: bool = False  # some checked state split traffic over equal-cost paths
    scheduled: bool = False  # some checked state had ports with several queues (sp, wfq, drr)

    @classmethod
    def of(cls, states: list[NetworkState]) -> "SafeRange":
        return cls(
            nodes=(min(len(s.nodes) for s in states), max(len(s.nodes) for s in states)),
            max_utilization=math.ceil(max(float(s.utilization().max()) for s in states) * 1e4) / 1e4,
            buffer=(min(int(s.link_arrays["buffer"].min()) for s in states),
                    max(int(s.link_arrays["buffer"].max()) for s in states)),
            hops=max(int(s.routes.hop_counts.max(initial=0)) for s in states),
            time_dists=tuple(sorted({f.time_dist for s in states for f in s.flows})),
            size_dists=tuple(sorted({f.size_dist for s in states for f in s.flows})),
            ecmp=any(s.ecmp for s in states), scheduled=any(s.scheduled for s in states),
        )

    def reasons(self, state: NetworkState) -> list[str]:
        """Why ``state`` lies outside the range, one sentence each (empty: inside)."""
        out = []
        n = len(state.nodes)
        if not self.nodes[0] <= n <= self.nodes[1]:
            out.append(f"{n} nodes, the intervals were checked on {self.nodes[0]}-{self.nodes[1]}")
        utilization = state.utilization()
        busiest = float(utilization.max()) if state.links else 0.0
        if busiest > self.max_utilization:
            link = state.links[int(np.argmax(utilization))]
            out.append(f"link {link.src}->{link.dst} is loaded to {busiest:.3f} of its capacity, "
                       f"beyond {self.max_utilization:.3f}")
        buffers = state.link_arrays["buffer"]
        if buffers.min() < self.buffer[0] or buffers.max() > self.buffer[1]:
            out.append(f"buffers of {int(buffers.min())}-{int(buffers.max())} packets, "
                       f"outside {self.buffer[0]}-{self.buffer[1]}")
        longest = int(state.routes.hop_counts.max(initial=0))
        if longest > self.hops:
            out.append(f"a path of {longest} hops, longer than {self.hops}")
        columns = state.flow_columns
        for kind, column, names, known in (("time_dist", "time", TIME_DISTS, self.time_dists),
                                           ("size_dist", "size", SIZE_DISTS, self.size_dists)):
            unseen = sorted({names[i] for i in np.unique(columns[column])} - set(known))
            if unseen:
                out.append(f"traffic with {kind} {', '.join(unseen)}, never among the checked samples")
        if state.ecmp and not self.ecmp:
            out.append("ECMP splits traffic over equal-cost paths, which no checked sample did")
        if state.scheduled and not self.scheduled:
            out.append("ports schedule several queues (sp, wfq or drr), which no checked sample had")
        return out

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "SafeRange":
        return cls(nodes=tuple(data["nodes"]), max_utilization=float(data["max_utilization"]),
                   buffer=tuple(data["buffer"]), hops=int(data["hops"]), time_dists=tuple(data["time_dists"]),
                   size_dists=tuple(data["size_dists"]), ecmp=bool(data.get("ecmp", False)),
                   scheduled=bool(data.get("scheduled", False)))


@dataclass
class Intervals:
    """Per load bucket, the simulated/predicted delay ratios that bound ``nominal`` of the paths."""

    model: str
    nominal: float
    ratio_lo: list[float]  # one per load bucket
    ratio_hi: list[float]
    paths: list[int]  # held-out paths per bucket
    safe: SafeRange
    fitted_on: dict = field(default_factory=dict)  # data directory, samples

    def bounds(self, state: NetworkState, delays: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Lower and upper delay bound per flow, s (same order as ``delays``)."""
        bucket = load_bucket(path_max_load(state))
        delays = np.asarray(delays, dtype=float)
        return delays * np.asarray(self.ratio_lo)[bucket], delays * np.asarray(self.ratio_hi)[bucket]

    def to_dict(self) -> dict:
        return {"model": self.model, "nominal": self.nominal, "load_edges": list(LOAD_EDGES),
                "ratio_lo": self.ratio_lo, "ratio_hi": self.ratio_hi, "paths": self.paths,
                "safe_range": self.safe.to_dict(), "fitted_on": self.fitted_on}

    def save(self, path) -> Path:
        path = Path(path)
        path.write_text(json.dumps(self.to_dict(), indent=1) + "\n")
        return path

    @classmethod
    def load(cls, path) -> "Intervals":
        path = Path(path)
        try:
            data = json.loads(path.read_text())
            if list(data["load_edges"]) != list(LOAD_EDGES):
                raise IntervalError(f"{path}: fitted for load buckets {data['load_edges']}, this ndt uses "
                                    f"{list(LOAD_EDGES)}; refit with 'ndt intervals fit'")
            buckets = len(LOAD_EDGES) + 1
            if not len(data["ratio_lo"]) == len(data["ratio_hi"]) == len(data["paths"]) == buckets:
                raise IntervalError(f"{path}: expected {buckets} load buckets of ratios and path counts")
            return cls(model=data["model"], nominal=float(data["nominal"]), ratio_lo=list(data["ratio_lo"]),
                       ratio_hi=list(data["ratio_hi"]), paths=list(data["paths"]),
                       safe=SafeRange.from_dict(data["safe_range"]), fitted_on=data.get("fitted_on", {}))
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise IntervalError(f"{path}: not a readable intervals file ({type(exc).__name__}: {exc})") from None


@dataclass
class JudgedPrediction:
    """Per-flow delays (s) with their bounds; bounds are None outside the safe range or without intervals."""

    delay: np.ndarray
    lo: np.ndarray | None
    hi: np.ndarray | None
    in_safe_range: bool | None  # None: no intervals were fitted for the model
    reasons: list[str]

    def path_rows(self, state: NetworkState) -> list[dict]:
        """The command contract's ``paths``: src, dst, delay, delay_lo, delay_hi (s)."""
        rows = []
        for i, flow in enumerate(state.flows):
            rows.append({"src": flow.src, "dst": flow.dst, "delay": float(self.delay[i]),
                         "delay_lo": None if self.lo is None else float(self.lo[i]),
                         "delay_hi": None if self.hi is None else float(self.hi[i])})
        return rows


def judge(state: NetworkState, delays: np.ndarray, intervals: Intervals | None) -> JudgedPrediction:
    """``delays`` with their intervals, or the reasons the twin cannot vouch for them."""
    delays = np.asarray(delays, dtype=float)
    if intervals is None:
        return JudgedPrediction(delays, None, None, None, ["no prediction intervals were fitted for this model "
                                                           "('ndt intervals fit')"])
    reasons = intervals.safe.reasons(state)
    if reasons:
        return JudgedPrediction(delays, None, None, False, reasons)
    lo, hi = intervals.bounds(state, delays)
    return JudgedPrediction(delays, lo, hi, True, [])


def intervals_path(model: str, directory=None) -> Path:
    """Where ``model``'s intervals live: beside its weights (default: the shipped twin/models/weights)."""
    return Path(directory or MODELS_DIR) / f"{LEARNED.get(model, model)}.intervals.json"


def load_intervals(model: str, directory=None) -> Intervals | None:
    """``model``'s intervals, or None when none were fitted for it."""
    path = intervals_path(model, directory)
    if not path.exists():
        return None
    intervals = Intervals.load(path)
    if intervals.model != model:
        raise IntervalError(f"{path}: fitted for model {intervals.model!r}, not {model!r}")
    return intervals


def held_out_ratios(samples, predictor) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[NetworkState]]:
    """Per held-out path: simulated / predicted delay, its load bucket, its state's node count; and the states.
    Paths the simulator delivered nothing on are left out."""
    ratios, buckets, sizes, states = [], [], [], []
    for sample in samples:
        state = sample.state
        predicted = predictor.predict_delays([state])[0]
        label = np.asarray(sample.labels["delay"], dtype=float)
        ok = np.isfinite(label) & (label > 0) & np.isfinite(predicted) & (predicted > 0)
        ratios.append(label[ok] / predicted[ok])
        buckets.append(load_bucket(path_max_load(state))[ok])
        sizes.append(np.full(int(ok.sum()), len(state.nodes)))
        states.append(state)
    if not states:
        raise IntervalError("no held-out samples to fit intervals on")
    return np.concatenate(ratios), np.concatenate(buckets), np.concatenate(sizes), states


def conformal_bounds(ratios: np.ndarray, nominal: float) -> tuple[float, float]:
    """Equal-tailed split-conformal quantiles of ``ratios`` at coverage ``nominal`` (finite-sample corrected)."""
    n = len(ratios)
    tail = (1.0 - nominal) / 2
    lo_rank = max(math.floor((n + 1) * tail), 1)
    hi_rank = min(math.ceil((n + 1) * (1 - tail)), n)
    ordered = np.sort(ratios)
    return float(ordered[lo_rank - 1]), float(ordered[hi_rank - 1])


def fit_intervals(samples, predictor, model: str, nominal: float = NOMINAL, fitted_on: dict | None = None) -> Intervals:
    """Intervals of ``predictor`` from held-out ``samples`` (an iterable of dataset samples)."""
    if not 0.5 <= nominal < 1:
        raise IntervalError(f"nominal coverage must lie in [0.5, 1), got {nominal}")
    ratios, buckets, _, states = held_out_ratios(samples, predictor)
    if len(ratios) < MIN_BUCKET_PATHS:
        raise IntervalError(f"{len(ratios)} held-out paths, at least {MIN_BUCKET_PATHS} are needed")
    pooled = conformal_bounds(ratios, nominal)
    lo, hi, counts = [], [], []
    for k in range(len(LOAD_EDGES) + 1):
        mine = ratios[buckets == k]
        low, high = conformal_bounds(mine, nominal) if len(mine) >= MIN_BUCKET_PATHS else pooled
        lo.append(low)
        hi.append(high)
        counts.append(int(len(mine)))
    return Intervals(model=model, nominal=nominal, ratio_lo=lo, ratio_hi=hi, paths=counts,
                     safe=SafeRange.of(states), fitted_on=dict(fitted_on or {}, samples=len(states)))


def coverage(samples, predictor, intervals: Intervals) -> dict:
    """Share of held-out simulated delays inside the intervals, overall, per load bucket and per size bucket.
    States outside the safe range are counted apart (they get no interval)."""
    inside_states, outside = [], 0
    ratio_parts, bucket_parts, size_parts = [], [], []
    for sample in samples:
        if intervals.safe.reasons(sample.state):
            outside += 1
            continue
        r, b, s, _ = held_out_ratios([sample], predictor)
        ratio_parts.append(r)
        bucket_parts.append(b)
        size_parts.append(s)
        inside_states.append(sample.state)
    if not ratio_parts:
        raise IntervalError("every held-out sample lies outside the safe operating range; nothing to check")
    ratios, buckets, sizes = map(np.concatenate, (ratio_parts, bucket_parts, size_parts))
    lo, hi = np.asarray(intervals.ratio_lo)[buckets], np.asarray(intervals.ratio_hi)[buckets]
    hit = (ratios >= lo) & (ratios <= hi)

    def rows(keys, labels):
        out = []
        for k, label in enumerate(labels):
            mine = keys == k
            out.append({"bucket": label, "paths": int(mine.sum()),
                        "coverage": float(hit[mine].mean()) if mine.any() else None,
                        "median_relative_width": float(np.median((hi - lo)[mine])) if mine.any() else None})
        return out

    return {"nominal": intervals.nominal, "paths": int(len(hit)), "samples": len(inside_states),
            "outside_safe_range": outside, "coverage": float(hit.mean()),
            "by_load": rows(buckets, bucket_labels()),
            "by_size": rows(np.searchsorted(np.asarray(SIZE_EDGES), sizes, side="right"),
                            bucket_labels(SIZE_EDGES))}
