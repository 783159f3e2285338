"""What the twin's delays mean in this emulation, and a correction fitted to measurements.

The twin predicts per-path delay = queueing + transmission + propagation (s). An emulated link
is a FIFO server that never serializes (HTB over veth, docs/emulation.md), and netem (propagation)
is missing, so an emulated path's delay is its queueing wait plus OVS userspace forwarding at
every switch plus the hosts' stacks. The correction keeps that structure:

    emulated = queue_scale · queueing(twin at capacity_scale × capacity) + per_hop_s · switches + base_s
               + random_hop_s · random hops + port_s · ports walked + wrap_s · wraps

``queueing`` is the twin's prediction minus the path's transmission (mean packet / capacity per
link) and propagation; ``switches`` = links on the path + 1; the last three terms are OVS's
forwarding as its thread walks the ports (:mod:`twin.calibration.port_walk`), from the network's
measured walk or, unknown, averaged over random walks of ``walk_ports`` ports. Pure functions
except the JSON on disk.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
from scipy.optimize import linprog

from twin.calibration.port_walk import Walk, walk_features
from twin.models.features import fixed_delays
from twin.models.registry import get_predictor
from twin.sim.simulator import simulate
from twin.state.errors import NdtError
from twin.state.files import read_json
from twin.state.metrics import mape
from twin.state.model import NetworkState

DATA_DIR = Path(__file__).resolve().parents[2] / "data"  # where ndt calibrate writes calibration-<model>.json
SHIPPED_DIR = Path(__file__).resolve().parent / "shipped"  # calibrations fitted on one machine (docs/emulation.md)


class CalibrationError(NdtError, ValueError):
    """A calibration file is unreadable or malformed; the message names the file and field."""


@dataclass(frozen=True)
class Correction:
    """capacity_scale: the emulated links' effective rate / their nominal capacity (HTB loses a
    little to timer lateness; at 90 % load 1 % of rate is 10 % of waiting); queue_scale: multiplies
    the twin's queueing wait; per_hop_s: forwarding cost per switch, s; base_s: per-path constant
    (host stacks), s; random_hop_s, port_s, wrap_s: per random-phase hop, per port the thread
    walks, per main-loop round (:mod:`twin.calibration.port_walk`), s; walk_ports: ports per round
    when the walk is unknown. The default is the uncorrected structural model."""

    queue_scale: float = 1.0
    per_hop_s: float = 0.0
    base_s: float = 0.0
    capacity_scale: float = 1.0
    random_hop_s: float = 0.0
    port_s: float = 0.0
    wrap_s: float = 0.0
    walk_ports: int = 0

    @property
    def coefficients(self) -> np.ndarray:
        """The coefficients of :func:`design_matrices`' columns, in order."""
        return np.array([self.queue_scale, self.per_hop_s, self.base_s, self.random_hop_s, self.port_s, self.wrap_s])


CAPACITY_SCALES = np.round(np.arange(0.96, 1.0201, 0.0025), 4)  # the grid ``fit`` searches


def effective_state(state: NetworkState, correction: Correction) -> NetworkState:
    """``state`` with every link at its effective rate: what the twin is asked about."""
    if correction.capacity_scale == 1.0:
        return state
    links = tuple(replace(lk, capacity=lk.capacity * correction.capacity_scale) for lk in state.links)
    return replace(state, links=links)


def path_components(state: NetworkState, delays: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(queueing wait, s; switches traversed) per flow, from the twin's per-flow ``delays`` (s)."""
    prop, transmit = fixed_delays(state)
    switches = np.array([len(links) + 1 for links in state.flow_links], dtype=float)
    return np.maximum(np.asarray(delays, dtype=float) - prop - transmit, 0.0), switches


def emulated_delays(state: NetworkState, delays: np.ndarray, correction: Correction,
                    walk: Walk | None = None) -> np.ndarray:
    """What the emulation should measure (s) for ``state``, from the twin's per-flow ``delays`` (s)
    for ``effective_state(state, correction)``; ``walk``: the network's measured walk, if known."""
    return _emulated(effective_state(state, correction), delays, correction, walk)


def _emulated(effective: NetworkState, delays: np.ndarray, correction: Correction,
              walk: Walk | None = None) -> np.ndarray:
    """:func:`emulated_delays` for a state already at its effective rate."""
    return design_matrix(effective, delays, walk, correction.walk_ports) @ correction.coefficients


def design_matrix(effective: NetworkState, delays: np.ndarray, walk: Walk | None, walk_ports: int) -> np.ndarray:
    """One row per flow: the twin's queueing wait (s), the switches on the path, 1, then the walk's
    random hops, ports walked and wraps (:func:`~twin.calibration.port_walk.walk_features`) — the
    columns :attr:`Correction.coefficients` multiply."""
    queueing, switches = path_components(effective, delays)
    return np.column_stack([queueing, switches, np.ones(len(queueing)), walk_features(effective, walk, walk_ports)])


def fit(states: list[NetworkState], measured: list[np.ndarray], predictor, walks: list[Walk | None] | None = None,
        capacity_scales=CAPACITY_SCALES) -> Correction:
    """The correction with the least mean MAPE over ``states`` and their ``measured`` per-flow
    delays (NaN where unmeasured): for each capacity scale of the grid, the twin (``predictor``)
    predicts the states at that rate and the other coefficients are those of least MAPE
    (:func:`least_relative_deviation`). With the ``walks`` the states were measured under (all
    known), the walk's three coefficients are fitted too and ``walk_ports`` is their median round."""
    known = walks is not None and all(w is not None for w in walks)
    columns = 6 if known else 3
    walk_ports = int(np.median([w.ports for w in walks])) if known else 0
    best, best_error = Correction(), np.inf
    oks = [np.isfinite(values) & (values > 0) for values in measured]
    for scale in capacity_scales:
        designs = [x[:, :columns] for x in design_matrices(states, predictor, float(scale), walks if known else None)]
        relative = np.concatenate([x[ok] / m[ok, None] for x, ok, m in zip(designs, oks, measured)])
        if not len(relative):
            raise CalibrationError("the calibration fit has no measured flow to fit (each state's flows with "
                                   "enough packets)")
        coef = least_relative_deviation(relative)
        error = np.nanmean([mape(x @ coef, m) for x, m in zip(designs, measured)])
        if error < best_error:
            coefficients = dict(zip(("queue_scale", "per_hop_s", "base_s", "random_hop_s", "port_s", "wrap_s"),
                                    map(float, coef)))
            best = Correction(**coefficients, capacity_scale=float(scale), walk_ports=walk_ports)
            best_error = error
    return best


def design_matrices(states: list[NetworkState], predictor, capacity_scale: float,
                    walks: list[Walk | None] | None = None) -> list[np.ndarray]:
    """Per state, :func:`design_matrix` with every link at ``capacity_scale`` × its capacity (the
    walk columns zero where ``walks`` is None or holds None)."""
    effective = [effective_state(s, Correction(capacity_scale=capacity_scale)) for s in states]
    walks = walks or [None] * len(states)
    return [design_matrix(state, delays, walk, 0) for state, delays, walk in
            zip(effective, predictor.predict_delays(effective), walks)]


def least_relative_deviation(relative: np.ndarray) -> np.ndarray:
    """Non-negative ``c`` minimising mean |relative @ c − 1|: the coefficients of least MAPE when each
    row is a flow's design row divided by its measured delay. A linear program (c, then one bound
    per row on the absolute deviation); least squares would let a few short paths pull the split
    between per-switch and per-path costs."""
    rows, columns = relative.shape
    cost = np.concatenate([np.zeros(columns), np.full(rows, 1.0 / rows)])
    bounds_upper = np.block([[relative, -np.eye(rows)], [-relative, -np.eye(rows)]])
    limits = np.concatenate([np.ones(rows), -np.ones(rows)])
    solved = linprog(cost, A_ub=bounds_upper, b_ub=limits, bounds=[(0, None)] * (columns + rows), method="highs")
    if not solved.success:
        raise CalibrationError(f"the calibration fit failed: {solved.message}")
    return solved.x[:columns]


def measurement_noise(state: NetworkState, correction: Correction, duration: float, warmup: float,
                      min_packets: int, runs: int = 4, seed: int = 0) -> float:
    """The MAPE a perfect model would score against one emulation measurement of ``duration`` s
    (``warmup`` s of it not counted).

    The emulated links are FIFO servers without serialization, so the simulator (minus transmission
    and propagation, through ``correction``) is the emulation's own model: its long-run per-path
    delays are compared with ``runs`` simulated windows of the measurement's length, over flows
    with at least ``min_packets`` packets in the window, as the twin is compared with a measurement.
    """
    effective = effective_state(state, correction)
    reference = _emulated(effective, simulate(effective, duration=200 * duration, warmup=warmup, seed=seed).delay,
                          correction)
    errors = []
    for run in range(runs):
        window = simulate(effective, duration=duration, warmup=warmup, seed=seed + 1 + run)
        measured = _emulated(effective, window.delay, correction)
        errors.append(mape(reference, np.where(window.delivered >= min_packets, measured, np.nan)))
    return float(np.mean(errors))


class CalibratedPredictor:
    """A predictor whose delays are those the emulation should measure (``predict_delays`` in s);
    ``walk``: the emulated network's measured walk (:mod:`twin.calibration.port_walk`), if known."""

    def __init__(self, predictor, correction: Correction, walk: Walk | None = None):
        self.predictor = predictor
        self.correction = correction
        self.walk = walk
        self.name = f"{getattr(predictor, 'name', 'model')}+emulation"

    @property
    def heads(self) -> tuple[str, ...]:
        return getattr(self.predictor, "heads", ("delay",))

    def predict_delays(self, states: list[NetworkState]) -> list[np.ndarray]:
        raw = self.predictor.predict_delays([effective_state(s, self.correction) for s in states])
        return [emulated_delays(s, d, self.correction, self.walk) for s, d in zip(states, raw)]

    def predict_metrics(self, states: list[NetworkState]) -> list[dict[str, np.ndarray]]:
        """The predictor's heads on the corrected states: the delay as the emulation should measure it, jitter
        (s²) and loss as the model gives them (the correction is one of delay)."""
        raw = self.predictor.predict_metrics([effective_state(s, self.correction) for s in states])
        return [{**m, "delay": emulated_delays(s, m["delay"], self.correction, self.walk)} for s, m in zip(states, raw)]


def save(path: Path, correction: Correction, info: dict) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({**asdict(correction), **info}, indent=1))


def default_path(model: str) -> Path:
    """Where ``ndt calibrate`` writes the correction of ``model``."""
    return DATA_DIR / f"calibration-{model}.json"


def find(model: str) -> Path | None:
    """The correction file for ``model``: the one ``ndt calibrate`` wrote, else the shipped one, else None."""
    for path in (default_path(model), SHIPPED_DIR / f"calibration-{model}.json"):
        if path.exists():
            return path
    return None


def tuned_model_stem(path: Path) -> Path:
    """Where the twin fine-tuned with the correction at ``path`` lives (``load_predictor(stem.name, stem.parent)``)."""
    path = Path(path)
    return path.with_name(f"{path.stem}-twin")


def tuned_predictor(path: Path, info: dict, topology: str):
    """The twin ``ndt calibrate`` fine-tuned for ``topology`` alongside the correction at ``path``, or
    None when it tuned none or tuned it for another topology."""
    stem = tuned_model_stem(path)
    if not info.get("tuned") or info.get("topology") != topology:
        return None
    from twin.models.inference import load_predictor

    return load_predictor(stem.name, stem.parent)


def load(path: Path) -> tuple[Correction, dict]:
    """The correction and its fit report from a calibration JSON file."""
    path = Path(path)
    data = read_json(path, "the calibration", CalibrationError, hint="; run 'ndt calibrate'")
    if not isinstance(data, dict) or "queue_scale" not in data:
        raise CalibrationError(f"{path}: not a calibration file (a JSON object with queue_scale, per_hop_s and "
                               "base_s, as 'ndt calibrate' writes)")
    values = {}
    defaults = {"capacity_scale": 1.0, "random_hop_s": 0.0, "port_s": 0.0, "wrap_s": 0.0, "walk_ports": 0}
    for key in ("queue_scale", "per_hop_s", "base_s", *defaults):
        value = data.get(key, defaults.get(key))
        positive = key == "capacity_scale"
        number = not isinstance(value, bool) and isinstance(value, (int, float)) and np.isfinite(value)
        if not number or value < 0 or (positive and value == 0):
            raise CalibrationError(f"{path}: {key} must be a number {'> 0' if positive else '>= 0'}, got {value!r}")
        values[key] = int(value) if key == "walk_ports" else float(value)
    return Correction(**values), {k: v for k, v in data.items() if k not in values}


@dataclass
class CalibratedTwin:
    """The twin a loop runs with: ``predictor`` (tuned for the topology when ``ndt calibrate`` tuned
    one) and its ``correction``, read from ``path`` (None: uncorrected) with its fit report ``info``."""

    model: str
    predictor: object
    correction: Correction
    path: Path | None
    info: dict
    tuned: bool


def calibrated_twin(model: str, path: Path | None, topology: str, log=print) -> CalibratedTwin:
    """The twin ``model`` with the correction at ``path`` (default: :func:`find`), warning through
    ``log`` when there is none or it was fitted for another model."""
    path = path or find(model)
    if path is None:
        correction, info = Correction(), {}
        log(f"warning: no calibration for model {model!r}: run 'ndt calibrate --model {model}'; "
            "using the uncorrected queueing-only model")
    else:
        correction, info = load(path)
    if info.get("model") not in (None, model):
        log(f"warning: {path} was fitted for model {info['model']!r}, not {model!r}; "
            f"run 'ndt calibrate --model {model}' for an honest twin-vs-emulation error")
    tuned = tuned_predictor(path, info, topology) if path is not None and info.get("model") == model else None
    return CalibratedTwin(model, tuned or get_predictor(model), correction, path, info, tuned is not None)
