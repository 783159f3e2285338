"""Tail delay from a path's predicted mean, variance and loss.

A path's delay is its propagation (s, known exactly) plus the time its packets spend in transmission
and in queues. The models that predict jitter give the delay's mean and variance; that second part is
taken as gamma-distributed with that mean and variance (exponential for an M/M/1 sojourn, tighter
when the variance is smaller), and the q-quantile of the delay is the propagation plus the gamma's.
Taking the transmission of a mean packet as fixed too made the 99th percentile worse (13 % against
7 % off on ``data/test-qos``, docs/results/2026-12-06-fair-shares.md): packet sizes vary.

The gamma is not the simulator's distribution: with the simulator's own mean and variance its 99th
percentile is about 4 % too long where the shape k = mean² / variance is 1–3 and 8 % too short
where it is 3–10, and on paths that lose packets (a full queue bounds their delay) it is too long at
every k. A :class:`TailCorrection` fitted on simulated samples (``ndt tails fit``) scales the part
above the propagation by a factor that depends on k and on whether the path loses packets, so it
applies to any model that predicts the mean, the variance and the loss. ``ndt eval`` measures the
result against the simulator's per-path percentiles (``p90_mape``, ``p99_mape``; the gnnet archives
record the 90th) and ``ndt tails check`` the form alone, given the simulator's own moments
(docs/results/2026-12-06-tail-correction.md).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Iterable

import numpy as np
from scipy.special import gammaincinv

from twin.models.features import fixed_delays
from twin.models.model_files import MODELS_DIR
from twin.state.errors import NdtError
from twin.state.model import NetworkState

TAIL_QUANTILE = 0.99  # what intents' ``max_p99`` and ``ndt eval``'s p99 figures mean
SCORED_QUANTILES = {"p90": 0.9, "p99": TAIL_QUANTILE}  # label name -> quantile, as ``ndt eval`` scores them
TAILS_PATH = MODELS_DIR / "tails.json"  # the shipped correction (``ndt tails fit`` with its defaults)
KNOTS = 32  # shape bins of a fitted table, each with the same number of paths
MIN_FIT_PATHS = 20 * KNOTS  # a class of paths with fewer is left uncorrected
LOSSY_FROM = 1e-3  # share of packets lost from which a path's tail follows the lossy table
CLASSES = ("lossless", "lossy")


class TailError(NdtError):
    """A tail-correction file is missing or damaged, or the samples cannot fit one."""


@dataclass(frozen=True)
class ShapeTable:
    """Per quantile name, ln(simulated / gamma) of the q-quantile's part above the propagation at knots of
    ln k (k = the gamma's shape), linear between knots and constant beyond them."""

    log_shape: np.ndarray  # knots, ascending
    log_factor: dict[str, np.ndarray]  # quantile name (SCORED_QUANTILES) -> value at each knot
    paths: int  # fitted on

    def factor(self, name: str, shape: np.ndarray) -> np.ndarray:
        """Per path of gamma shape ``shape``, the factor on quantile ``name``; 1 where it was not fitted."""
        if name not in self.log_factor:
            return np.ones_like(shape)
        return np.exp(np.interp(np.log(shape), self.log_shape, self.log_factor[name]))


@dataclass(frozen=True)
class TailCorrection:
    """A :class:`ShapeTable` per class of path (CLASSES); a class without one is not corrected."""

    tables: dict[str, ShapeTable]
    lossy_from: float = LOSSY_FROM  # share of packets lost
    fitted_on: dict = field(default_factory=dict)

    def factor(self, q: float, shape: np.ndarray, loss: np.ndarray | None = None) -> np.ndarray:
        """Per path of gamma shape ``shape`` and loss ``loss`` (share; None: lossless), the factor on the
        q-quantile's part above the propagation; 1 for a quantile or class not fitted."""
        out = np.ones_like(shape)
        name = next((n for n, value in SCORED_QUANTILES.items() if value == q), None)
        lossy = np.zeros(shape.shape, dtype=bool) if loss is None else np.asarray(loss) >= self.lossy_from
        for path_class, inside in (("lossless", ~lossy), ("lossy", lossy)):
            if path_class in self.tables and name is not None and inside.any():
                out[inside] = self.tables[path_class].factor(name, shape[inside])
        return out

    def to_dict(self) -> dict:
        return {"kind": "tail_correction", "form": "gamma", "lossy_from": self.lossy_from,
                "quantiles": dict(SCORED_QUANTILES),
                "tables": {c: {"log_shape": t.log_shape.round(6).tolist(), "paths": t.paths,
                               "log_factor": {n: v.round(6).tolist() for n, v in t.log_factor.items()}}
                           for c, t in self.tables.items()},
                "fitted_on": self.fitted_on}

    def save(self, path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), indent=1) + "\n")
        return path


def read_tail_correction(path) -> TailCorrection:
    """The correction in ``path`` (``ndt tails fit`` writes it); :class:`TailError` naming what is wrong."""
    path = Path(path)
    try:
        raw = json.loads(path.read_text())
        tables = {}
        for path_class, table in raw["tables"].items():
            factors = {n: np.asarray(v, dtype=np.float64) for n, v in table["log_factor"].items()}
            tables[path_class] = ShapeTable(np.asarray(table["log_shape"], dtype=np.float64), factors,
                                            int(table["paths"]))
        lossy_from = float(raw["lossy_from"])
    except FileNotFoundError:
        raise TailError(f"{path}: no such tail-correction file") from None
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise TailError(f"{path}: not a tail-correction file ({type(exc).__name__}: {exc})") from None
    if raw.get("kind") != "tail_correction" or raw.get("form") != "gamma":
        raise TailError(f"{path}: not a tail correction of the gamma form")
    if not 0 < lossy_from < 1:
        raise TailError(f"{path}: lossy_from must be a share of packets between 0 and 1, got {lossy_from}")
    for path_class, table in tables.items():
        where = f"{path}: tables.{path_class}"
        if path_class not in CLASSES:
            raise TailError(f"{where}: unknown class of path (known: {', '.join(CLASSES)})")
        knots = table.log_shape
        if knots.ndim != 1 or len(knots) < 2 or not np.all(np.isfinite(knots)) or not np.all(np.diff(knots) > 0):
            raise TailError(f"{where}.log_shape must be at least two ascending finite numbers")
        for name, values in table.log_factor.items():
            if name not in SCORED_QUANTILES:
                raise TailError(f"{where}: unknown quantile {name!r} (known: {', '.join(SCORED_QUANTILES)})")
            if values.shape != knots.shape or not np.all(np.isfinite(values)):
                raise TailError(f"{where}.log_factor.{name} needs one finite number per knot ({len(knots)})")
    return TailCorrection(tables, lossy_from, raw.get("fitted_on", {}))


PLAIN = TailCorrection({})  # no table: the plain gamma form


@lru_cache(maxsize=1)
def shipped_correction() -> TailCorrection | None:
    """The correction shipped beside the weights, or None where there is none (the plain gamma)."""
    return read_tail_correction(TAILS_PATH) if TAILS_PATH.exists() else None


def gamma_shape(delay: np.ndarray, jitter: np.ndarray, floor: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per path, whether its delay spreads above ``floor`` (s), and where it does the gamma's shape
    (mean² / variance of the part above the floor, dimensionless; NaN elsewhere)."""
    wait = np.asarray(delay, dtype=np.float64) - floor
    variance = np.asarray(jitter, dtype=np.float64)
    spread = (wait > 0) & (variance > 0) & np.isfinite(wait) & np.isfinite(variance)
    shape = np.full(wait.shape, np.nan)
    shape[spread] = wait[spread] ** 2 / variance[spread]
    return spread, shape


def _gamma_quantile(delay: np.ndarray, jitter: np.ndarray, floor: np.ndarray,
                    q: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`gamma_quantile`, with the :func:`gamma_shape` it was computed from (spread mask, shape)."""
    spread, shape = gamma_shape(delay, jitter, floor)
    out = np.array(delay, dtype=np.float64)
    if np.any(spread):
        wait = out[spread] - floor[spread]
        out[spread] = floor[spread] + gammaincinv(shape[spread], q) * wait / shape[spread]
    return out, spread, shape


def gamma_quantile(delay: np.ndarray, jitter: np.ndarray, floor: np.ndarray, q: float = TAIL_QUANTILE) -> np.ndarray:
    """Per path, the ``q``-quantile of the delay (s): ``floor`` (s) plus a gamma with the mean ``delay`` −
    ``floor`` and the variance ``jitter`` (s²). A path with nothing above its floor, or no variance, gets
    its mean."""
    return _gamma_quantile(delay, jitter, floor, q)[0]


def delay_quantile(delay: np.ndarray, jitter: np.ndarray, floor: np.ndarray, q: float = TAIL_QUANTILE,
                   loss: np.ndarray | None = None, correction: TailCorrection | None = None) -> np.ndarray:
    """Per path, the ``q``-quantile of the delay (s): :func:`gamma_quantile`, its part above ``floor``
    scaled by ``correction`` (default: the shipped one, if any) for the path's shape and ``loss`` (share of
    packets; None: taken as lossless)."""
    correction = correction or shipped_correction()
    out, spread, shape = _gamma_quantile(delay, jitter, floor, q)
    if correction is None:
        return out
    lost = None if loss is None else np.asarray(loss, dtype=np.float64)[spread]
    out[spread] = floor[spread] + (out[spread] - floor[spread]) * correction.factor(q, shape[spread], lost)
    return out


def tail_delays(state: NetworkState, delay: np.ndarray, jitter: np.ndarray, loss: np.ndarray | None = None,
                q: float = TAIL_QUANTILE) -> np.ndarray:
    """Per flow of ``state`` (state order), the ``q``-quantile of its delay (s) from the predicted mean
    ``delay`` (s), variance ``jitter`` (s²) and ``loss`` (share); :func:`delay_quantile` above the flow's
    propagation."""
    prop, _ = fixed_delays(state)
    return delay_quantile(delay, jitter, prop, q, loss)


def with_p99(state: NetworkState, metrics: dict) -> dict:
    """``metrics`` (per flow of ``state``: delay s, and jitter s², loss where predicted) with ``p99`` (s) added
    from :func:`tail_delays` when they have the jitter and no p99 of their own (the simulator's)."""
    if "jitter" not in metrics or "p99" in metrics:
        return metrics
    return {**metrics, "p99": tail_delays(state, metrics["delay"], metrics["jitter"], metrics.get("loss"))}


def _weighted_median(values: np.ndarray, weights: np.ndarray) -> float:
    order = np.argsort(values)
    cumulative = np.cumsum(weights[order])
    return float(values[order][np.searchsorted(cumulative, 0.5 * cumulative[-1])])


def tail_points(samples: Iterable[tuple[NetworkState, dict]], lossy_from: float = LOSSY_FROM) -> dict:
    """Every path of the (state, labels) samples whose simulated mean, variance and labelled quantiles
    (SCORED_QUANTILES that the labels have) are finite and above its propagation: ``floor`` (s), ``shape``,
    ``lossy`` (loses at least ``lossy_from`` of its packets), and per quantile name the ``simulated`` one
    and the ``gamma``'s from the simulated mean and variance (s)."""
    parts: dict[str, list] = {"floor": [], "shape": [], "lossy": []}
    simulated: dict[str, list] = {}
    gamma: dict[str, list] = {}
    for state, labels in samples:
        prop, _ = fixed_delays(state)
        names = [n for n in SCORED_QUANTILES if n in labels]
        delay, jitter = np.asarray(labels["delay"], dtype=np.float64), np.asarray(labels["jitter"], dtype=np.float64)
        with np.errstate(invalid="ignore"):
            ok = np.isfinite(delay) & np.isfinite(jitter) & (delay > prop) & (jitter > 0)
            for name in names:
                ok &= np.isfinite(labels[name]) & (np.asarray(labels[name]) > prop)
        _, shape = gamma_shape(delay[ok], jitter[ok], prop[ok])
        loss = np.nan_to_num(np.asarray(labels.get("loss", np.zeros(len(prop))), dtype=np.float64)[ok])
        parts["floor"].append(prop[ok])
        parts["shape"].append(shape)
        parts["lossy"].append(loss >= lossy_from)
        for name in names:
            simulated.setdefault(name, []).append(np.asarray(labels[name], dtype=np.float64)[ok])
            gamma.setdefault(name, []).append(gamma_quantile(delay[ok], jitter[ok], prop[ok], SCORED_QUANTILES[name]))
    points = {key: np.concatenate(value) if value else np.empty(0) for key, value in parts.items()}
    points["simulated"] = {n: np.concatenate(v) for n, v in simulated.items()}
    points["gamma"] = {n: np.concatenate(v) for n, v in gamma.items()}
    return points


def fit_tail_correction(samples: Iterable[tuple[NetworkState, dict]], knots: int = KNOTS,
                        fitted_on: dict | None = None) -> TailCorrection:
    """A correction from simulated (state, labels) samples. Per class of path (lossless, lossy) with at least
    MIN_FIT_PATHS paths, the paths split into ``knots`` bins of equal count by gamma shape; per quantile, each
    bin's factor minimises the relative error of its paths' quantiles (a weighted median of simulated /
    gamma above the propagation), placed at the bin's median ln k."""
    p = tail_points(samples)
    if not p["simulated"]:
        raise TailError("the samples have no delay percentiles to fit a tail correction on")
    tables = {}
    for path_class, inside in (("lossless", ~p["lossy"]), ("lossy", p["lossy"])):
        if inside.sum() < MIN_FIT_PATHS:
            continue
        ln_k = np.log(p["shape"][inside])
        bins = np.array_split(np.argsort(ln_k), knots)
        floor = p["floor"][inside]
        factors = {}
        for name, simulated in p["simulated"].items():
            above, gamma_above = simulated[inside] - floor, p["gamma"][name][inside] - floor
            ratio = np.log(above / gamma_above)
            weight = gamma_above / simulated[inside]  # |error| / simulated = weight × |e^c − e^ratio|
            factors[name] = np.array([_weighted_median(ratio[b], weight[b]) for b in bins])
        log_shape = np.array([np.median(ln_k[b]) for b in bins])
        distinct = np.concatenate([[True], np.diff(log_shape) > 0])
        tables[path_class] = ShapeTable(log_shape[distinct], {n: v[distinct] for n, v in factors.items()},
                                        int(inside.sum()))
    if not tables:
        raise TailError(f"too few usable paths to fit a tail correction ({len(p['shape'])}; at least "
                        f"{MIN_FIT_PATHS} of one class, lossless or lossy)")
    return TailCorrection(tables, LOSSY_FROM, fitted_on or {})


def tail_errors(samples: Iterable[tuple[NetworkState, dict]], correction: TailCorrection) -> dict:
    """Per quantile name the labels have (and usable paths): MAPE of the gamma form and of the corrected form
    against the simulated quantiles, both from the simulated mean and variance (the form's error alone), with
    the signed mean error by class of path and shape."""
    p = tail_points(samples, correction.lossy_from)
    report = {}
    for name, simulated in p["simulated"].items():
        if not len(simulated):
            continue
        gamma = p["gamma"][name]
        loss = np.where(p["lossy"], 1.0, 0.0)
        corrected = p["floor"] + (gamma - p["floor"]) * correction.factor(SCORED_QUANTILES[name], p["shape"], loss)
        gamma_error = (gamma - simulated) / simulated
        corrected_error = (corrected - simulated) / simulated
        buckets = []
        for path_class, lossy in (("lossless", False), ("lossy", True)):
            for lo, hi in zip((0, 1, 3, 10), (1, 3, 10, np.inf)):
                inside = (p["lossy"] == lossy) & (p["shape"] >= lo) & (p["shape"] < hi)
                if inside.any():
                    buckets.append({"class": path_class, "shape": f"{lo}-{hi:g}" if np.isfinite(hi) else f">={lo}",
                                    "paths": int(inside.sum()), "gamma_bias": float(gamma_error[inside].mean()),
                                    "corrected_bias": float(corrected_error[inside].mean())})
        report[name] = {"paths": len(simulated), "gamma_mape": float(np.abs(gamma_error).mean()),
                        "corrected_mape": float(np.abs(corrected_error).mean()), "by_shape": buckets}
    return report
