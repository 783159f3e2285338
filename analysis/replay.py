"""Replaying the past from the telemetry store: what the twin says the network did, beside what it measured.

The store holds no topology (capacities, buffers, propagation), so a replay starts from the state file
the controller was started with (its links and nodes; its own traffic is replaced). For each step of
``step_s`` seconds, ``[t, t + step_s)``:

* the routing in place at ``t``: the weights of the latest ``routing`` config record at or before ``t``
  (every push by the loop, an operator's Apply, a rollback or a state-file reload writes one); before
  the first record, the state file's weights;
* the links out of service at ``t``: the latest snapshot at or before ``t``, from ``link`` config records
  (payload ``{"down": ["a->b", ...]}``, written when the set changes) and from the closed loop's decisions
  (kind ``loop``, field ``down``: the links the loop saw out of service when it read its window; only
  decisions that read one count: actions keep, push, rollback, propose); before the first snapshot, none;
* the traffic matrix measured over the step (mean of the positive samples per pair, bit/s) and the mean
  packet size from the port counters over the step (bits; 8000 when they give none);
* the measured per-path delay over the step (mean per pair, s), of one kind for the whole replay:
  ``probe`` (the controller's in-band probes) or ``measured`` (the hosts' own, gRPC ReportMeasured);
  ``auto`` picks the kind with more samples in the window.

Every step's state is predicted in one batch. Per step: the traffic-weighted predicted and measured mean
over the pairs that have both (s), the predicted one over every demand, and per path the relative residual
``(measured - predicted) / predicted``. A path *disagrees* when its measured delay lies outside the twin's
prediction interval (where the model has intervals and the state lies in its safe range) or, otherwise,
when its relative residual exceeds ``tolerance`` in size. A step whose measurements mix two states is
flagged ``changed`` and left out of the suspects: the routing or the links changed during it or in the
MEASUREMENT_SPAN_S before it (a probe row averages the probes of the 10 s before its time).

Suspects, a simple Boolean tomography over the steady steps: every compared (step, path) is one
observation, agreeing or disagreeing, and marks every directed link on its path. For link ``l`` with
``D`` disagreeing and ``A`` agreeing observations crossing it, out of ``D_total`` disagreeing ones::

    score(l) = (D / D_total) * (D / (D + A))

the share of the disagreement the link could explain, times the share of its own observations that
disagree (a link that agreeing paths cross is partly exonerated). 1 means every disagreeing path crosses
it and no agreeing path does. Links with ``D = 0`` are not suspects.

The counterfactual (:func:`counterfactual`) rebuilds the moment ``at`` twice on the traffic measured over
``[at, at + step_s)`` and the links out of service at ``at``: with the routing in place (the last push at
or before ``at``) and with the routing that push replaced, and predicts both.

Times are Unix seconds; delays s; rates bit/s. :func:`open_store` opens a store file read-only.
"""

from __future__ import annotations

import math
import sqlite3
import threading
from bisect import bisect_right
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from analysis.scenario import reachable_flows
from telemetry.store import DECISION_KIND, LINK_KIND, ROUTING_KIND, TelemetryStore
from telemetry.traffic_matrix import estimated_state, traffic_matrix
from twin.models.intervals import Intervals, judge
from twin.state.errors import NdtError
from twin.state.metrics import finite_float, finite_or_none, mean_delay
from twin.state.model import NetworkState

MEASURED_KINDS = ("probe", "measured")  # the path-delay kinds of the store that are measurements
DEFAULT_STEP_S = 10.0
DEFAULT_TOLERANCE = 0.25  # relative residual beyond which twin and network disagree, without intervals
DEFAULT_PACKET_BITS = 8000.0  # when the port counters give no packet count over a step
MAX_STEPS = 5000  # a longer replay needs a larger step
MEASUREMENT_SPAN_S = 10.0  # a probe row averages the 10 s before its time (the controller's PROBE_REPORT_S)
VIEWING_ACTIONS = ("keep", "push", "rollback", "propose")  # loop decisions that read the links out of service
ROLLBACK_WHO = "ndt loop: rollback"
LOOP_WHO = "ndt loop"
_TABLES = ("traffic", "path_delay", "config", "link_stats")


class ReplayError(NdtError, ValueError):
    """A replay cannot be made: an empty window, no telemetry in it, a store that is not one, or a store
    that does not match the state; the message says which."""


class ReadOnlyStore(TelemetryStore):
    """A telemetry store file opened read-only: the reads of :class:`TelemetryStore`, and no write can
    reach the file (SQLite refuses them). Unlike opening a ``TelemetryStore``, nothing is created,
    migrated or checked by writing. A store a controller has open (its write-ahead log beside it) is read
    through that log with SQLite's locking; a closed one as an immutable file, so that not even the log
    and shared-memory files a reader of a write-ahead-log database would otherwise create appear beside it."""

    def __init__(self, path: str | Path):  # the parent's __init__ writes (schema, journal mode): not called
        path = Path(path)
        if not path.is_file():
            raise ReplayError(f"telemetry store {path}: {'a directory, not a store file' if path.is_dir() else 'no such file'}")
        live = path.with_name(path.name + "-wal").exists()
        uri = f"{path.resolve().as_uri()}?mode=ro{'' if live else '&immutable=1'}"
        try:
            self._db = sqlite3.connect(uri, uri=True, check_same_thread=False)
        except sqlite3.Error as exc:
            raise ReplayError(f"telemetry store {path}: cannot be opened ({exc})") from None
        self._lock = threading.Lock()
        try:
            tables = {row[0] for row in self._read("SELECT name FROM sqlite_master WHERE type = 'table'", ())}
        except sqlite3.Error as exc:
            self.close()
            raise ReplayError(f"telemetry store {path}: not an SQLite database ({exc})") from None
        missing = [t for t in _TABLES if t not in tables]
        if missing:
            self.close()
            raise ReplayError(f"telemetry store {path}: not an ndt telemetry store (no table {', '.join(missing)})")
        columns = {row[1] for row in self._read("PRAGMA table_info(path_delay)", ())}
        self._samples_sql = "samples" if "samples" in columns else "NULL"  # a store from before the counts

    def traffic_span(self) -> tuple[float, float] | None:
        """The first and last time (s) of a traffic-matrix sample, or None when there is none."""
        first, last = self._read("SELECT MIN(ts), MAX(ts) FROM traffic", ())[0]
        return None if first is None else (float(first), float(last))


def open_store(path: str | Path) -> ReadOnlyStore:
    """The store file at ``path``, read-only; a ReplayError when it is missing or not a telemetry store."""
    return ReadOnlyStore(path)


def iso(ts: float) -> str:
    """``ts`` (Unix s) as ISO 8601 UTC to the second, e.g. 2026-12-04T18:00:00Z."""
    return datetime.fromtimestamp(ts, tz=timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


# ---------------------------------------------------------------------- what was in place when
@dataclass(frozen=True, eq=False)
class Change:
    """One change of what was in place: a routing record (``weights``, one per link of the base state)
    or a snapshot of the links out of service (``down``)."""

    ts: float
    config: int  # the config record's id
    who: str
    weights: np.ndarray | None = None
    down: frozenset | None = None


@dataclass(frozen=True)
class Moment:
    """What was in place at one time: the routing record (None: the state file's weights) and the
    directed links out of service."""

    routing: Change | None
    down: frozenset


class Timeline:
    """The routing records and the link snapshots that changed the set of links out of service, in time
    order, against the base state."""

    def __init__(self, base: NetworkState, routing: list[Change], snapshots: list[Change]):
        self.base = base
        self.routing = routing
        self.links = []
        for snapshot in snapshots:  # the loop repeats the same snapshot run after run: keep the changes
            if snapshot.down != (self.links[-1].down if self.links else frozenset()):
                self.links.append(snapshot)
        self._routing_ts = [c.ts for c in routing]
        self._links_ts = [c.ts for c in self.links]
        self._position = {c.config: i for i, c in enumerate(routing)}

    def at(self, t: float) -> Moment:
        """What was in place at ``t`` (changes at ``t`` itself included)."""
        r = bisect_right(self._routing_ts, t)
        k = bisect_right(self._links_ts, t)
        return Moment(self.routing[r - 1] if r else None, self.links[k - 1].down if k else frozenset())

    def before(self, change: Change) -> Change | None:
        """The routing record ``change`` replaced (None: the state file's weights)."""
        i = self._position[change.config]
        return self.routing[i - 1] if i else None

    def last_push(self, t: float) -> Change | None:
        """The latest push at or before ``t``: a routing record that changed the weights and is no rollback
        (a reload of unchanged weights and a rollback are not pushes to undo)."""
        for change in reversed(self.routing[:bisect_right(self._routing_ts, t)]):
            if change.who != ROLLBACK_WHO and np.any(change.weights != self.weights(self.before(change))):
                return change
        return None

    def weights(self, routing: Change | None) -> np.ndarray:
        """The weights of a routing record, per link of the base state (None: the state file's)."""
        return self.base.link_arrays["weight"] if routing is None else routing.weights

    def changed_within(self, start: float, end: float) -> bool:
        """Whether the weights or the links out of service changed at a time in (start, end)."""
        return (any(start < c.ts < end for c in self.links)
                or any(start < c.ts < end and np.any(c.weights != self.weights(self.before(c))) for c in self.routing))

    def events(self, start: float, end: float) -> list[dict]:
        """Pushes, rollbacks and link events with start <= ts <= end, oldest first: ``ts``, ``kind``
        (push | rollback | link), ``label``, ``who``, ``config``, and for pushes ``links_changed``."""
        out = []
        for change in self.routing:
            if start <= change.ts <= end:
                changed = int(np.sum(self.weights(self.before(change)) != change.weights))
                kind = "rollback" if change.who == ROLLBACK_WHO else "push"
                by = "loop" if change.who.startswith(LOOP_WHO) else "operator"
                label = "rollback" if kind == "rollback" else f"push ({by}, {changed} weights)"
                out.append({"ts": change.ts, "time": iso(change.ts), "kind": kind, "label": label, "who": change.who,
                            "config": change.config, "links_changed": changed})
        was = frozenset()
        for change in self.links:
            if start <= change.ts <= end:
                for label in _link_changes(was, change.down):
                    out.append({"ts": change.ts, "time": iso(change.ts), "kind": "link", "label": label,
                                "who": change.who, "config": change.config})
            was = change.down
        return sorted(out, key=lambda e: (e["ts"], e["config"]))


def _link_changes(was: frozenset, now: frozenset) -> list[str]:
    """"link a-b down" / "link a->b up" per physical link whose state changed (both directions together)."""
    out = []
    for verb, links in (("down", now - was), ("up", was - now)):
        seen = set()
        for a, b in sorted(links):
            if (a, b) in seen:
                continue
            both = (b, a) in links
            seen |= {(a, b), (b, a)}
            out.append(f"link {a}-{b} {verb}" if both else f"link {a}->{b} {verb}")
    return out


def timeline(store, base: NetworkState, end: float) -> Timeline:
    """The store's routing records and link snapshots up to ``end`` (inclusive), checked against ``base``."""
    until = math.nextafter(end, math.inf)
    names = {f"{lk.src}->{lk.dst}": i for i, lk in enumerate(base.links)}
    routing = []
    for record in store.configs(0.0, until, kind=ROUTING_KIND):
        stored = record.payload.get("weights") if isinstance(record.payload, dict) else None
        if not isinstance(stored, dict) or set(stored) != set(names):
            other = sorted(set(stored or {}) ^ set(names))
            raise ReplayError(f"routing record {record.id} ({iso(record.ts)}) has weights for other links than the "
                              f"state (e.g. {other[0] if other else 'none'}); give the state file the controller "
                              "was started with")
        weights = np.zeros(len(names))
        for name, w in stored.items():
            weights[names[name]] = finite_float(w) or 0.0
        if not np.all(weights > 0):
            raise ReplayError(f"routing record {record.id} ({iso(record.ts)}): a weight is not a positive number")
        routing.append(Change(record.ts, record.id, record.who, weights=weights))
    links = []
    for record in store.configs(0.0, until, kind=LINK_KIND):
        links.append(Change(record.ts, record.id, record.who, down=_down(record, names)))
    for record in store.configs(0.0, until, kind=DECISION_KIND):
        if record.payload.get("action") in VIEWING_ACTIONS:
            links.append(Change(record.ts, record.id, "ndt loop (seen when it ran)", down=_down(record, names)))
    links.sort(key=lambda c: (c.ts, c.config))
    return Timeline(base, routing, links)


def _down(record, names: dict) -> frozenset:
    down = record.payload.get("down", [])
    if not isinstance(down, list) or not all(isinstance(x, str) for x in down):
        raise ReplayError(f"config record {record.id} ({record.kind}, {iso(record.ts)}): 'down' is not a list of "
                          "link names")
    unknown = [x for x in down if x not in names]
    if unknown:
        raise ReplayError(f"config record {record.id} ({record.kind}, {iso(record.ts)}): link {unknown[0]} is not "
                          "in the state; give the state file the controller was started with")
    return frozenset(tuple(x.split("->", 1)) for x in down)


# ---------------------------------------------------------------------- the state at one step
def moment_state(base: NetworkState, weights: np.ndarray, down: frozenset, rates: dict,
                 packet_bits: float) -> tuple[NetworkState, list[tuple[str, str]]]:
    """``base``'s topology routed by ``weights`` without the ``down`` links, carrying ``rates`` (pair →
    bit/s) in packets of ``packet_bits``; and the demands the down links cut off (dropped)."""
    unknown = sorted({n for pair in rates for n in pair} - set(base.node_index))
    if unknown:
        raise ReplayError(f"the traffic matrix names node {unknown[0]!r}, which the state does not have; give the "
                          "state file the controller was started with")
    state = estimated_state(base.with_weights(weights), rates, packet_bits)
    if not down:
        return state, []
    links = [lk for lk in state.links if (lk.src, lk.dst) not in down]
    keep = reachable_flows(state, links)
    cut = [(f.src, f.dst) for f, k in zip(state.flows, keep) if not k]
    return state.restricted(links, keep), cut


def _packet_bits(samples) -> float:
    """Mean packet size over the link samples (bits): bytes sent / packets sent between each link's first
    and last sample; DEFAULT_PACKET_BITS when the counters give none."""
    first, last = {}, {}
    for s in samples:
        if s.tx_packets is not None:
            first.setdefault((s.src, s.dst), s)
            last[(s.src, s.dst)] = s
    sent = packets = 0
    for key, end in last.items():
        start = first[key]
        if end.tx_bytes >= start.tx_bytes and end.tx_packets >= start.tx_packets:  # no counter reset between
            sent += end.tx_bytes - start.tx_bytes
            packets += end.tx_packets - start.tx_packets
    return 8.0 * sent / packets if packets > 0 and sent > 0 else DEFAULT_PACKET_BITS


def _buckets(rows, start: float, step_s: float, n: int) -> list[list]:
    out = [[] for _ in range(n)]
    for row in rows:
        k = int((row.ts - start) // step_s)
        if 0 <= k < n:
            out[k].append(row)
    return out


def _pair_means(rows) -> dict[tuple[str, str], float]:
    """Per pair, the mean of its delay rows (s): weighted by the measurements behind each where every
    row of the pair says how many, else each row alike."""
    values: dict[tuple[str, str], list[tuple[float, int | None]]] = {}
    for row in rows:
        values.setdefault((row.src, row.dst), []).append((row.value, row.samples))
    means = {}
    for pair, rows_of_pair in values.items():
        delays, samples = zip(*rows_of_pair)
        counted = all(n is not None for n in samples)
        means[pair] = float(np.average(delays, weights=samples if counted else None))
    return means


def measured_kind(store, start: float, end: float, kind: str = "auto") -> str | None:
    """The path-delay kind a replay compares with: ``kind`` itself, or with ``auto`` the one of
    MEASURED_KINDS with more samples in [start, end) (None: neither has any)."""
    if kind != "auto":
        if kind not in MEASURED_KINDS:
            raise ReplayError(f"measured delay kind {kind!r} is not one of auto, {', '.join(MEASURED_KINDS)}")
        return kind
    counts = {k: len(store.path_delays(k, start, end)) for k in MEASURED_KINDS}
    best = max(MEASURED_KINDS, key=lambda k: counts[k])
    return best if counts[best] else None


# ---------------------------------------------------------------------- the replay
@dataclass
class Step:
    """One step of a replay, [ts, end): what was in place, what the twin and the network said (s)."""

    ts: float
    end: float
    routing: int | None  # the routing record in place (None: the state file's weights)
    down: list[str]
    changed: bool  # the routing or the links changed during the step or just before (MEASUREMENT_SPAN_S)
    flows: int = 0
    cut: list = field(default_factory=list)
    packet_bits: float = DEFAULT_PACKET_BITS
    predicted_mean: float = float("nan")  # over the pairs with both a prediction and a measurement
    measured_mean: float = float("nan")
    predicted_mean_all: float = float("nan")  # over every demand of the step
    pairs: int = 0  # pairs with both a prediction and a measurement
    disagreeing: int = 0
    in_safe_range: bool | None = None
    paths: list[dict] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"ts": self.ts, "time": iso(self.ts), "end": self.end, "routing": self.routing, "down": self.down,
                "changed": self.changed, "flows": self.flows, "cut": [{"src": a, "dst": b} for a, b in self.cut],
                "packet_bits": self.packet_bits, "predicted_mean": finite_or_none(self.predicted_mean),
                "measured_mean": finite_or_none(self.measured_mean),
                "predicted_mean_all": finite_or_none(self.predicted_mean_all), "pairs": self.pairs,
                "disagreeing": self.disagreeing, "in_safe_range": self.in_safe_range, "paths": self.paths}


def replay(store: ReadOnlyStore, base: NetworkState, start: float, end: float, predictor,
           step_s: float = DEFAULT_STEP_S, intervals: Intervals | None = None, kind: str = "auto",
           tolerance: float = DEFAULT_TOLERANCE) -> dict:
    """The network over [start, end) in steps of ``step_s`` s, replayed through ``predictor`` from ``store``
    (:func:`open_store`) on ``base``'s topology.

    Returns ``steps`` (:class:`Step` rows as dicts; their ``paths`` carry ``residual``, ``disagree`` and
    ``judged_by``: interval or tolerance), ``events`` (pushes, rollbacks, link events in the window),
    ``suspects`` (links ranked by the tomography score, best first), ``measured_kind``, ``tolerance`` and
    ``judged_by`` (how many compared paths each rule judged)."""
    n = _check_window(start, end, step_s)
    rates_rows = store.traffic_matrices(start, end)
    if not rates_rows:
        raise _no_traffic(store, start, end)
    kind = measured_kind(store, start, end, kind)
    delay_rows = store.path_delays(kind, start, end) if kind else []
    link_rows = store.link_samples(start, end)
    line = timeline(store, base, end)
    steps, states, carried = [], [], False
    for k, (rates_k, delays_k, links_k) in enumerate(zip(_buckets(rates_rows, start, step_s, n),
                                                         _buckets(delay_rows, start, step_s, n),
                                                         _buckets(link_rows, start, step_s, n))):
        t = start + k * step_s
        t_end = min(t + step_s, end)
        moment = line.at(t)
        step = Step(t, t_end, None if moment.routing is None else moment.routing.config,
                    sorted(f"{a}->{b}" for a, b in moment.down),
                    line.changed_within(t - MEASUREMENT_SPAN_S, t_end))
        rates = traffic_matrix(rates_k, t, t_end)
        if rates:
            carried = True
            step.packet_bits = _packet_bits(links_k)
            state, step.cut = moment_state(base, line.weights(moment.routing), moment.down, rates, step.packet_bits)
            step.flows = len(state.flows)
            if state.flows:
                states.append((step, state, _pair_means(delays_k)))
        steps.append(step)
    if not carried:
        raise ReplayError(f"no telemetry between {iso(start)} and {iso(end)}: every traffic-matrix sample in that "
                          "window is zero (no traffic was carried)")
    if not states:
        raise ReplayError(f"no demand left to predict between {iso(start)} and {iso(end)}: the links out of "
                          "service cut off all the measured traffic")
    predicted = predictor.predict_delays([state for _, state, _ in states])
    observations = []
    for (step, state, measured), delays in zip(states, predicted):
        _compare(step, state, delays, measured, intervals, tolerance)
        if not step.changed:
            observations.append((step, state))
    judged_by = {"interval": 0, "tolerance": 0}
    for step in steps:
        for row in step.paths:
            if row["judged_by"]:
                judged_by[row["judged_by"]] += 1
    return {"steps": [s.to_dict() for s in steps], "events": line.events(start, end),
            "suspects": suspects(observations), "measured_kind": kind, "tolerance": tolerance,
            "judged_by": judged_by}


def _check_window(start: float, end: float, step_s: float) -> int:
    """The number of steps of the window; a ReplayError when it is empty, reversed or too finely cut."""
    if not (math.isfinite(start) and math.isfinite(end)):
        raise ReplayError("the window's ends must be finite times")
    if start >= end:
        raise ReplayError(f"the window is empty: from {iso(start)} is not before to {iso(end)}")
    if not (math.isfinite(step_s) and step_s > 0):
        raise ReplayError(f"the step must be a positive number of seconds, got {step_s}")
    n = math.ceil((end - start) / step_s)
    if n > MAX_STEPS:
        raise ReplayError(f"{n} steps of {step_s:g} s from {iso(start)} to {iso(end)}: at most {MAX_STEPS}; take a "
                          f"step of at least {math.ceil((end - start) / MAX_STEPS)} s or a shorter window")
    return n


def _no_traffic(store: ReadOnlyStore, start: float, end: float) -> ReplayError:
    span = store.traffic_span()
    where = (f"; the store's traffic runs from {iso(span[0])} to {iso(span[1])}" if span
             else "; the store holds no traffic matrix at all")
    return ReplayError(f"no telemetry between {iso(start)} and {iso(end)}: no traffic matrix in that window{where}")


def _compare(step: Step, state: NetworkState, delays: np.ndarray, measured: dict, intervals, tolerance: float):
    """Fill ``step``'s means, path rows and disagreement from the prediction ``delays`` and ``measured``."""
    judged = judge(state, delays, intervals)
    step.in_safe_range = judged.in_safe_range
    step.predicted_mean_all = mean_delay(state, delays)
    rates, pred_sum, meas_sum = 0.0, 0.0, 0.0
    for i, flow in enumerate(state.flows):
        p, m = float(delays[i]), measured.get((flow.src, flow.dst))
        row = {"src": flow.src, "dst": flow.dst, "rate": flow.rate, "predicted": finite_or_none(p), "measured": m,
               "residual": None, "delay_lo": None if judged.lo is None else float(judged.lo[i]),
               "delay_hi": None if judged.hi is None else float(judged.hi[i]), "disagree": None, "judged_by": None}
        if m is not None and math.isfinite(p) and p > 0:
            row["residual"] = (m - p) / p
            if judged.lo is not None:
                row["disagree"], row["judged_by"] = bool(m < judged.lo[i] or m > judged.hi[i]), "interval"
            else:
                row["disagree"], row["judged_by"] = abs(row["residual"]) > tolerance, "tolerance"
            rates += flow.rate
            pred_sum += flow.rate * p
            meas_sum += flow.rate * m
            step.pairs += 1
            step.disagreeing += row["disagree"]
        step.paths.append(row)
    if rates > 0:
        step.predicted_mean, step.measured_mean = pred_sum / rates, meas_sum / rates


def suspects(observations: list[tuple[Step, NetworkState]]) -> list[dict]:
    """Directed links ranked by the tomography score (module docstring) over the compared paths of the
    steady ``observations``, highest first: ``link``, ``score``, ``disagreeing``, ``agreeing``,
    ``mean_residual`` (of the disagreeing paths crossing it). Empty when no path disagrees."""
    against: dict[str, int] = {}
    along: dict[str, int] = {}
    residuals: dict[str, list[float]] = {}
    total = 0
    for step, state in observations:
        for row, links in zip(step.paths, _crossed(state)):
            if row["disagree"] is None:
                continue
            total += row["disagree"]
            for i in links:
                name = f"{state.links[i].src}->{state.links[i].dst}"
                if row["disagree"]:
                    against[name] = against.get(name, 0) + 1
                    residuals.setdefault(name, []).append(row["residual"])
                else:
                    along[name] = along.get(name, 0) + 1
    out = []
    for name, d in against.items():
        a = along.get(name, 0)
        out.append({"link": name, "score": (d / total) * (d / (d + a)), "disagreeing": d, "agreeing": a,
                    "mean_residual": float(np.mean(residuals[name]))})
    return sorted(out, key=lambda r: (-r["score"], -r["disagreeing"], r["link"]))


def _crossed(state: NetworkState) -> list[set[int]]:
    """Per flow, the links any of its routes crosses (with ECMP, every equal-cost path)."""
    out = [set() for _ in state.flows]
    routes = state.routes
    for owner, links in zip(routes.owner, routes.links):
        out[owner].update(int(i) for i in links)
    return out


def _node_paths(state: NetworkState) -> list[list[list[str]]]:
    """Per flow, the node sequence of each of its routes (one without ECMP)."""
    out = [[] for _ in state.flows]
    routes = state.routes
    for owner, links in zip(routes.owner, routes.links):
        out[owner].append([state.links[links[0]].src] + [state.links[i].dst for i in links])
    return out


# ---------------------------------------------------------------------- the counterfactual
def counterfactual(store: ReadOnlyStore, base: NetworkState, at: float, predictor, step_s: float = DEFAULT_STEP_S,
                   kind: str = "auto") -> dict:
    """The moment ``at`` as it was and without the last push at or before it (the routing in place replaced
    by the one that push replaced), on the traffic measured over [at, at + step_s) and the links out of service at ``at``.

    Returns ``at``, ``push`` (ts, who, config, links_changed), ``with_push`` and ``without_push``
    (traffic-weighted predicted mean delay over every demand, s; ``measured_mean`` on the side that
    happened, over the pairs measured), ``difference`` (without − with, s), ``paths_changed`` (demands
    routed differently) and ``paths`` (src, dst, predicted with and without, measured, and the node
    sequences of the routes with and without: one each, several with ECMP)."""
    _check_window(at, at + step_s, step_s)
    line = timeline(store, base, at)
    moment = line.at(at)
    push = line.last_push(at)
    if push is None:
        raise ReplayError(f"no push at or before {iso(at)} in the store: nothing to undo (no record changed the "
                          "weights, or only rollbacks did)")
    end = at + step_s
    rates = traffic_matrix(store.traffic_matrices(at, end), at, end)
    if not rates:
        raise _no_traffic(store, at, end)
    bits = _packet_bits(store.link_samples(at, end))
    earlier = line.before(push)
    with_state, _ = moment_state(base, line.weights(moment.routing), moment.down, rates, bits)
    without_state, _ = moment_state(base, line.weights(earlier), moment.down, rates, bits)
    if not with_state.flows:
        raise ReplayError(f"no demand left at {iso(at)}: the links out of service cut off all the measured traffic")
    with_delays, without_delays = predictor.predict_delays([with_state, without_state])
    kind = measured_kind(store, at, end, kind)
    measured = _pair_means(store.path_delays(kind, at, end)) if kind else {}
    rows, changed, rate_sum, meas_sum = [], 0, 0.0, 0.0
    for flow, d_with, d_without, routes_with, routes_without in zip(
            with_state.flows, with_delays, without_delays, _node_paths(with_state), _node_paths(without_state)):
        moved = routes_with != routes_without
        changed += moved
        m = measured.get((flow.src, flow.dst))
        if m is not None:
            rate_sum += flow.rate
            meas_sum += flow.rate * m
        rows.append({"src": flow.src, "dst": flow.dst, "rate": flow.rate, "with_push": float(d_with),
                     "without_push": float(d_without), "measured": m, "path_changed": moved,
                     "routes_with": routes_with, "routes_without": routes_without})
    with_mean, without_mean = mean_delay(with_state, with_delays), mean_delay(without_state, without_delays)
    previous = line.weights(earlier)
    return {"at": at, "time": iso(at),
            "push": {"ts": push.ts, "time": iso(push.ts), "who": push.who, "config": push.config,
                     "links_changed": int(np.sum(previous != push.weights)),
                     "replaced": None if earlier is None else earlier.config},
            "with_push": {"predicted_mean": finite_or_none(with_mean),
                          "measured_mean": finite_or_none(meas_sum / rate_sum) if rate_sum > 0 else None},
            "without_push": {"predicted_mean": finite_or_none(without_mean)},
            "difference": finite_or_none(without_mean - with_mean), "paths_changed": changed,
            "down": sorted(f"{a}->{b}" for a, b in moment.down), "measured_kind": kind, "paths": rows}


# ---------------------------------------------------------------------- the picture
def replay_picture(report: dict, path, model: str, whatif_at: float | None = None) -> Path:
    """Predicted and measured mean delay (ms) over the replay's steps (and, dotted, the predicted one over
    every demand), with a vertical line at every push, rollback and link event (labelled) and, if given,
    at the counterfactual's moment."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = report["steps"]
    origin = steps[0]["ts"]
    x = np.array([(s["ts"] + s["end"]) / 2 - origin for s in steps])
    predicted = np.array([np.nan if s["predicted_mean"] is None else 1e3 * s["predicted_mean"] for s in steps])
    measured = np.array([np.nan if s["measured_mean"] is None else 1e3 * s["measured_mean"] for s in steps])
    every = np.array([np.nan if s["predicted_mean_all"] is None else 1e3 * s["predicted_mean_all"] for s in steps])
    fig, ax = plt.subplots(figsize=(11, 4.8))
    ax.plot(x, every, ":", linewidth=1, color="#1f77b4", label="predicted, every demand")
    ax.plot(x, predicted, "o-", markersize=3, color="#1f77b4", label=f"predicted (twin: {model})")
    ax.plot(x, measured, "s-", markersize=3, color="#d62728", label=f"measured ({report['measured_kind']})")
    colours = {"push": "#2ca02c", "rollback": "#ff7f0e", "link": "#7f7f7f", "counterfactual": "#9467bd"}
    marks = [(e["ts"], e["kind"], e["label"]) for e in report["events"]]
    if whatif_at is not None:
        marks.append((whatif_at, "counterfactual", "counterfactual"))
    top = 1.35 * max(np.nanmax(np.concatenate([predicted, measured, every, [0.0]])), 1e-3)
    ax.set_ylim(0, top)
    for ts, kind, label in marks:
        ax.axvline(ts - origin, color=colours[kind], linestyle=":" if kind == "counterfactual" else "--", linewidth=1)
        ax.annotate(label, (ts - origin, top), xytext=(-2, -3), textcoords="offset points", rotation=90, fontsize=7,
                    va="top", ha="right", color=colours[kind])
    ax.set_xlabel(f"s since {iso(origin)}")
    ax.set_ylabel("traffic-weighted mean delay, ms")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    first = report["suspects"][0]["link"] if report["suspects"] else "none"
    ax.set_title(f"replay: twin vs network, {len(steps)} steps of {steps[0]['end'] - steps[0]['ts']:g} s; "
                 f"first suspect: {first}", fontsize=10)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
