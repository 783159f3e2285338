"""The closed loop as a service of the controller: it runs beside the OpenFlow app, on any network
the controller routes, with no hosts of its own.

Each run: the traffic matrix from the edge counters and the path delays from the in-band probes
over the last ``window_s`` → the network state the twin is asked about (the topology without the
links that are down, the routing in place, the measured traffic; the mean packet size from the
port counters) → the twin's correction refitted from the windows so far
(:mod:`twin.calibration.online`) → NES + the calibrated twin propose candidates → validation
(the twin's ranking, or a Mininet sandbox built from the state) → the winner pushed only if it
beats the routing in place by ``margin`` (and the twin does not rate it worse) → ``verify_s`` of
probes → rollback if delay got worse. Runs are triggered at start, by a traffic shift beyond
``shift_threshold``, by link or switch events, periodically and by operators; after a push no
other run starts within ``hold_down_s`` (so a flapping link or noisy traffic cannot make the
routing flap). Every decision goes to the store's config history, to Prometheus (``ndt_loop_*``)
and to gRPC subscribers. With ``settings.optimize`` off the service only watches: it calibrates the
twin and detects anomalies, and never runs the loop.

Anomaly detection (``settings.anomaly``; :mod:`analysis.anomaly`) judges every
``anomaly_window_s`` the probes' path delays over that window against the calibrated twin's
prediction for the window's measured traffic and routing in place; the probes' median, not their
mean (a probe or two stalled in the controller would move a mean of six by milliseconds), whose
offset from the twin's mean is part of each path's learned bias. It starts once the online
calibration has had its first windows, with the correction in place then, kept for detection:
the online fit goes on adding windows (also faulty ones), and a twin that followed it would learn
the fault it should flag. Delays in s, rates in bit/s; probes on the monotonic clock, the store on
Unix time.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import deque
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from analysis.anomaly import AnomalyDetector, DetectorSettings, LinkLoad, Observation, Verdict
from controller.loop.decisions import choose, should_roll_back, top_candidates, traffic_shifted
from optimizer.intent import Intent
from telemetry.offered import window_losses
from telemetry.store import CONTROL_KIND, DECISION_KIND
from telemetry.traffic_matrix import TrafficMatrixError, carried_loads, estimated_state, traffic_matrix
from twin.calibration.correction import CalibratedPredictor
from twin.calibration.online import OnlineCalibration
from twin.models.intervals import judge
from twin.state.errors import NdtError
from twin.state.files import jsonable
from twin.state.metrics import mape
from twin.state.model import NetworkState

LOG = logging.getLogger("ndt.loop")
VALIDATIONS = ("twin", "sandbox")
DEFAULT_PACKET_BITS = 8000.0  # when the port counters give no packet count yet
SETTLE_S = 2.0  # after a routing change, probes this much later count (queues re-form)
KEEP_DECISIONS = 100  # decisions kept for GetLoopStatus and late subscribers
KEEP_SCORES = 500  # windows' twin scores kept for GetLoopStatus (at a 20-s window, the last 2.8 h)
HOSTS_STALE_WINDOWS = 5  # windows without host reports after which the loop goes back to the probes
STEADY_LOAD_CHANGE = 0.10  # a window whose halves load some link this far apart (share of capacity) is not steady
RESUME_HISTORY_S = 7 * 86400.0  # how far back a restarted loop reads its decisions
ANOMALY_KIND = "anomaly"  # config rows: anomaly detection's anomalies as they start and end


@dataclass
class ServiceSettings:
    """window_s: telemetry and probes per run, s; verify_s: probes after a push before it is judged,
    s; period_s: a run at least this often, s; hold_down_s: no run sooner than this after a push
    (operators excepted), s; check_s: how often the traffic is checked for a shift, s;
    shift_threshold: relative change of the traffic matrix that triggers a run; candidates:
    routings validated besides the current one; margin: relative improvement needed to push;
    rollback_tolerance: relative worsening after a push that rolls back; validate: ``twin`` or
    ``sandbox``; sandbox_s: traffic per candidate in the sandbox, s; dry_run: propose only;
    optimize: run the loop (off: calibrate and detect anomalies only); anomaly: the anomaly
    detector's settings (None: no detection); anomaly_window_s: the window it judges, s;
    anomaly_log: a file every judged window's observations are appended to (JSON lines), or None."""

    intent: Intent = field(default_factory=lambda: Intent(max_evaluations=1500, time_limit_s=20.0))
    window_s: float = 20.0
    verify_s: float = 20.0
    period_s: float = 600.0
    hold_down_s: float = 60.0
    check_s: float = 5.0
    shift_threshold: float = 0.15
    candidates: int = 2
    margin: float = 0.05
    rollback_tolerance: float = 0.05
    validate: str = "twin"
    sandbox_s: float = 8.0
    dry_run: bool = False
    seed: int = 0
    optimize: bool = True
    anomaly: DetectorSettings | None = None
    anomaly_window_s: float = 10.0
    anomaly_log: Path | None = None


@dataclass
class Decision:
    """One run of the loop, as recorded and streamed (delays s; NaN where not measured; ``ts`` the
    end of the window it read, ``pushed_at`` when its flow rules were in, ``finished`` when it was
    recorded: Unix s; ``down``: the links out of service it saw)."""

    ts: float
    trigger: str
    action: str = "keep"
    reason: str = ""
    measured_s: float = float("nan")
    predicted_current_s: float = float("nan")
    predicted_chosen_s: float = float("nan")
    validated_current_s: float = float("nan")
    validated_chosen_s: float = float("nan")
    after_s: float = float("nan")
    twin_mape: float = float("nan")
    measured_by: str = ""
    probe_noise_mape: float = float("nan")
    loop_s: float = float("nan")
    route_version: int = 0
    pushed_at: float = float("nan")
    finished: float = float("nan")
    down: list = field(default_factory=list)
    candidates: list = field(default_factory=list)
    weights: dict = field(default_factory=dict)
    calibration: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        """The decision as plain JSON (NaN as None, at every depth)."""
        return jsonable(asdict(self))


@dataclass(frozen=True)
class WindowScore:
    """The calibrated twin's MAPE on one window against what measured it over [``start``, ``ts``)
    (Unix s; the part of the window the routing was steady) (``hosts``: reports through gRPC
    ReportMeasured; ``probes``), over ``pairs`` measured pairs, with a correction fitted online
    (else the prior)."""

    ts: float
    start: float
    mape: float
    measured_by: str
    pairs: int
    calibrated_online: bool


@dataclass
class Window:
    """What the loop reads of the last window: the traffic matrix (bit/s), the state the twin is
    asked about, the probes' delay per flow's pair since the routing last changed (s), the delays
    the twin is scored and fitted on (the hosts' reports over that span when there are any, else the
    probes'), which of the two, how long the routing was steady (s), the links down, the most
    any link's load (share of its capacity) differed between the two halves of that span, and per
    reported pair how many measurements its delay is over (where the reports said)."""

    rates: dict
    estimated: NetworkState
    probed: dict
    reference: dict
    measured_by: str
    steady_s: float
    down: list
    load_change: float = 0.0
    samples: dict = field(default_factory=dict)

    @property
    def steady(self) -> bool:
        """True when the traffic held still over the measured span (:data:`STEADY_LOAD_CHANGE`)."""
        return self.load_change <= STEADY_LOAD_CHANGE


_FLOAT_FIELDS = {name for name, f in Decision.__dataclass_fields__.items() if f.type in ("float", float)}


def measured_vector(state: NetworkState, values: dict[tuple[str, str], float]) -> np.ndarray:
    """``values`` (pair → a delay, s, or the samples behind one) per flow of ``state``, NaN where a
    pair was not measured."""
    return np.array([values.get((f.src, f.dst), np.nan) for f in state.flows], dtype=float)


def load_change(state: NetworkState, samples, start: float, end: float) -> float:
    """The most any link's load (share of its capacity) differs between the traffic ``samples``
    (:class:`telemetry.store.PairValue` rates) of [start, mid] and of [mid, end], routed as in
    ``state``; 0 when a half holds no sample (the counters were not read there: nothing tells of a
    change)."""
    middle = 0.5 * (start + end)
    loads = []
    for a, b in ((start, middle), (middle, end)):
        if not any(a <= s.ts <= b for s in samples):
            return 0.0
        rates = traffic_matrix(samples, a, b)
        loads.append(estimated_state(state, rates).utilization() if rates else np.zeros(len(state.links)))
    return float(np.max(np.abs(loads[1] - loads[0]), initial=0.0))


def common_mean(before: dict, after: dict) -> tuple[float, float]:
    """Mean delay over the pairs measured in both, before and after (NaN, NaN when none)."""
    pairs = sorted(set(before) & set(after))
    if not pairs:
        return float("nan"), float("nan")
    return float(np.mean([before[p] for p in pairs])), float(np.mean([after[p] for p in pairs]))


class LoopService:
    """The loop over ``controller`` (the os-ken app: ``snapshot()``, ``apply_weights()``,
    ``wait_for_routes()``, ``path_delays``, ``add_listener()``), reading ``store`` and reporting to
    ``metrics``. ``twin()`` returns the twin (``predict_delays``) and the prior correction; it is
    called in the service's thread, so loading TensorFlow does not hold up the controller's start.
    ``sandbox``: a :class:`~controller.loop.network.Sandbox`, needed when ``settings.validate`` is
    ``sandbox``; ``intervals``: the twin's prediction intervals (:class:`twin.models.intervals.Intervals`)
    for anomaly detection, or None."""

    def __init__(self, controller, store, metrics, twin, settings: ServiceSettings, sandbox=None,
                 clock=time.monotonic, wall=time.time, intervals=None):
        if settings.validate not in VALIDATIONS:
            raise NdtError(f"validate must be one of {', '.join(VALIDATIONS)}, got {settings.validate!r}")
        if settings.validate == "sandbox" and sandbox is None:
            raise NdtError("sandbox validation needs a sandbox (Mininet on this machine)")
        self.controller, self.store, self.metrics = controller, store, metrics
        self.settings, self.sandbox = settings, sandbox
        self._twin = twin
        self.predictor = None
        self.calibration = OnlineCalibration()
        self.clock, self.wall = clock, wall
        self.paused = False
        self.running = False
        self.failure = ""
        self.runs = self.pushes = self.rollbacks = 0
        self.twin_mape = float("nan")
        self.measured_by = "probes"  # what the online fit and the twin's score use
        self._hosts_seen_at = -np.inf
        self.scores: deque[WindowScore] = deque(maxlen=KEEP_SCORES)
        self.decisions: deque[Decision] = deque(maxlen=KEEP_DECISIONS)
        self._changed = threading.Condition()
        self._pending: list[str] = []
        self._last_rates: dict | None = None
        self._last_run = -np.inf
        self._last_push = -np.inf
        self._last_change = clock()
        self._observed_at = self._added_at = self._retry_at = -np.inf
        self._stop = threading.Event()
        self._dry_run_asked = settings.dry_run
        self.intervals = intervals
        self.detector = AnomalyDetector(settings.anomaly) if settings.anomaly is not None else None
        self.anomalies: Verdict | None = None  # the last window anomaly detection judged
        self._detection_correction = None  # the correction anomaly detection compares with (fixed at its start)
        self._windows_added = 0
        self._detected_at = -np.inf
        self._resume()
        controller.add_listener(self.topology_changed)
        metrics.set_gauge("loop_paused", float(self.paused))
        metrics.set_gauge("loop_dry_run", float(settings.dry_run))

    def _resume(self) -> None:
        """Pick up where the loop stood before a restart: the operators' last pause or resume and
        dry-run switch, however old (``--dry-run`` on the command line wins), the decisions of the
        last week (and their counts), the hold-down of a recent push."""
        end = self.wall()
        for record in sorted(self.store.configs(0.0, end + 1.0, kind=CONTROL_KIND), key=lambda r: r.id):
            action = record.payload.get("action")
            if action in ("PAUSE", "RESUME"):
                self.paused = action == "PAUSE"
            elif action in ("DRY_RUN_ON", "DRY_RUN_OFF") and not self._dry_run_asked:
                self.settings.dry_run = action == "DRY_RUN_ON"
        records = self.store.configs(end - RESUME_HISTORY_S, end + 1.0, kind=DECISION_KIND)
        for record in records:
            try:
                decision = Decision(**{k: (float("nan") if v is None and k in _FLOAT_FIELDS else v)
                                       for k, v in record.payload.items() if k in Decision.__dataclass_fields__})
            except TypeError:
                LOG.warning("loop: config %d is not a decision this version reads; skipped", record.id)
                continue
            self.decisions.append(decision)
            self.runs += 1
            self.pushes += decision.action in ("push", "rollback")
            self.rollbacks += decision.action == "rollback"
            if np.isfinite(decision.pushed_at):
                self._last_push = self.clock() - (end - decision.pushed_at)
        if records or self.paused:
            LOG.info("loop resumed from the store: %d earlier runs, %s%s", self.runs,
                     "paused" if self.paused else "running", ", dry run" if self.settings.dry_run else "")

    # ------------------------------------------------------------------ operators and events
    def topology_changed(self, reason: str) -> None:
        """The controller installed new routes for ``reason`` ("; "-joined). A link, switch or host
        event triggers a run (the routes already follow the current weights); weights from someone
        else (gRPC Apply, a state-file reload) hold the loop down as its own push would, so it does
        not fight them; its own pushes change nothing here."""
        now = self.clock()
        reasons = [r for r in reason.split("; ") if r]
        external = [r for r in reasons if r.startswith("weights from") and not r.startswith("weights from ndt loop")]
        events = [r for r in reasons if not r.startswith("weights from")]
        if external:
            self._last_change = now
            if self.runs:  # before its first run the loop has nothing to fight over (initial routes)
                self._last_push = now
                LOG.info("loop: routing changed from outside (%s): holding down", "; ".join(external))
        if events:
            self._last_change = now
            self._trigger("topology")
            LOG.info("loop: topology changed (%s)", "; ".join(events))

    def run_now(self) -> None:
        self._trigger("operator")

    def pause(self, paused: bool) -> None:
        self.paused = paused
        self.metrics.set_gauge("loop_paused", float(paused))
        with self._changed:
            self._changed.notify_all()

    def set_dry_run(self, dry_run: bool) -> None:
        self.settings.dry_run = dry_run
        self.metrics.set_gauge("loop_dry_run", float(dry_run))

    def stop(self) -> None:
        self._stop.set()
        with self._changed:
            self._changed.notify_all()

    def wait_for_decision(self, after: int, timeout: float) -> tuple[list[Decision], int]:
        """The decisions made after the first ``after`` runs (those still kept), waiting up to
        ``timeout`` s for one, and the number of runs so far."""
        with self._changed:
            self._changed.wait_for(lambda: self.runs > after or self._stop.is_set(), timeout)
            recent = list(self.decisions)
            return (recent[len(recent) - min(len(recent), self.runs - after):] if self.runs > after else []), self.runs

    @property
    def stopped(self) -> bool:
        return self._stop.is_set()

    def _trigger(self, trigger: str) -> None:
        with self._changed:
            if trigger not in self._pending:
                self._pending.append(trigger)
            self._changed.notify_all()

    # ------------------------------------------------------------------ the service thread
    def serve(self) -> None:
        """Run until :meth:`stop`: wait for a trigger, then run once (the first after one window of telemetry)."""
        started = self.clock()
        try:
            self.predictor, prior = self._twin()
        except Exception as exc:  # no twin, no loop: said once, in the log, the status and the store
            LOG.exception("loop: the twin could not be loaded; the closed loop is off")
            self.failure = f"the twin could not be loaded: {str(exc)[:300]}"
            self._record(Decision(ts=self.wall(), trigger="start", action="error", reason=self.failure))
            self._stop.set()
            return
        self.calibration.set_prior(prior)
        LOG.info("loop: twin ready in %.1f s", self.clock() - started)
        self._stop.wait(max(0.0, self.settings.window_s - (self.clock() - started)))
        while not self._stop.is_set():
            trigger = self._next_trigger() if self.settings.optimize else self._idle()
            if self.detector is not None and self.clock() - self._detected_at >= self.settings.anomaly_window_s:
                try:
                    self.detect()
                except Exception:  # the service must survive any single failed detection
                    LOG.exception("anomaly detection failed on this window")
            if trigger is None:
                if self.clock() - self._observed_at >= self.settings.window_s:
                    try:
                        self.observe()
                    except Exception:  # the service must survive any single failed observation
                        LOG.exception("loop: observing the window failed")
                        self._observed_at = self.clock()
                continue
            try:
                self.run_once(trigger)
            except Exception as exc:  # the service must survive any single failed run
                LOG.exception("loop run failed")
                self._retry_at = self.clock() + self.settings.window_s  # not again before a new window
                self._record(Decision(ts=self.wall(), trigger=trigger, action="error", reason=str(exc)[:400]))

    def _next_trigger(self) -> str | None:
        """The trigger to run for now, or None after waiting up to ``check_s`` s for one."""
        settings = self.settings

        def held() -> bool:
            """In the hold-down after a push, the routing changed too recently for probes of it, or
            a failed run's back-off."""
            now = self.clock()
            return (now - self._last_push < settings.hold_down_s or now - self._last_change < self.settle_s
                    or now < self._retry_at)

        def due() -> bool:
            return self._stop.is_set() or (not self.paused and ("operator" in self._pending or (
                bool(self._pending) and self._last_rates is not None and not held())))

        with self._changed:
            self._changed.wait_for(due, self._wait_s())
            now = self.clock()
            if self._stop.is_set() or self.paused:
                return None
            if "operator" in self._pending:
                self._pending.clear()  # one run answers every trigger so far
                return "operator"
            if held():
                return None
            if self._last_rates is None:  # no run has seen traffic: the first waits for a whole window of it
                if not self._traffic_for_a_window():
                    return None
                self._pending.clear()
                return "start"
            if self._pending:
                trigger = self._pending[0]
                self._pending.clear()
                return trigger
        if now - self._last_run >= settings.period_s:
            return "periodic"
        if self._last_rates is not None and traffic_shifted(self._last_rates, self._rates(), settings.shift_threshold):
            return "traffic"
        return None

    def _wait_s(self) -> float:
        """How long the service may wait for a trigger: ``check_s``, or less when anomaly detection's
        next window is due sooner, s."""
        if self.detector is None:
            return self.settings.check_s
        due = self._detected_at + self.settings.anomaly_window_s - self.clock()
        return min(self.settings.check_s, max(0.05, due))

    def _idle(self) -> None:
        """Watching only: wait for the next detection or observation, or a stop."""
        self._stop.wait(self._wait_s())

    @property
    def settle_s(self) -> float:
        """After a routing change (push, link or switch event) a run waits this long, s: queues
        re-form, then a quarter window of probes measures the routing it starts from."""
        return SETTLE_S + 0.25 * self.settings.window_s

    def _traffic_for_a_window(self) -> bool:
        """True when the edge counters have measured traffic for at least one window, up to now."""
        end = self.wall()
        samples = [s.ts for s in self.store.traffic_matrices(end - 2 * self.settings.window_s, end) if s.value > 0]
        return bool(samples) and min(samples) <= end - self.settings.window_s and max(samples) >= end - self.settings.window_s

    def _rates(self) -> dict:
        end = self.wall()
        return traffic_matrix(self.store.traffic_matrices(end - self.settings.window_s, end),
                              end - self.settings.window_s, end)

    def _packet_bits(self, start: float, end: float) -> float:
        """Mean packet size on the links over [start, end) from the port counters, bits."""
        first, last = {}, {}
        for s in self.store.link_samples(start, end):
            if s.tx_packets is not None:
                first.setdefault((s.src, s.dst), s)
                last[(s.src, s.dst)] = s
        sent = sum(last[k].tx_bytes - first[k].tx_bytes for k in last)
        packets = sum(last[k].tx_packets - first[k].tx_packets for k in last)
        return 8.0 * sent / packets if packets > 0 and sent > 0 else DEFAULT_PACKET_BITS

    # ------------------------------------------------------------------ one run
    def run_once(self, trigger: str) -> Decision:
        """Read the window, refit the correction, propose, validate, push or keep, verify."""
        settings = self.settings
        self.running = True
        self.metrics.count_loop("trigger", trigger)
        wall_end, mono_end = self.wall(), self.clock()
        decision = Decision(ts=wall_end, trigger=trigger)
        try:
            decision.route_version = self.controller.route_version
            try:
                window = self._window(wall_end, mono_end)
            except TrafficMatrixError as exc:
                self._last_rates, self._last_run = None, mono_end  # the next waits for a whole window of traffic
                decision.action, decision.reason = "defer", str(exc)
                return self._record(decision)
            rates, estimated, before, decision.down = window.rates, window.estimated, window.probed, window.down
            self._last_rates = rates
            self._last_run = mono_end
            loop_started = self.clock()
            twin = self._calibrated(window, wall_end, mono_end, decision)
            current = estimated.link_arrays["weight"].copy()
            candidates, optimization = top_candidates(estimated, settings.intent, twin, settings.candidates,
                                                      settings.seed + self.runs)
            self.metrics.inc("optimizer_runs")
            chosen = self._validate(estimated, current, candidates, twin, decision)
            decision.loop_s = self.clock() - loop_started
            if chosen is None:
                decision.reason = decision.reason or (f"no candidate beats the routing in place by "
                                                      f"{100 * settings.margin:g} %")
                return self._record(decision)
            decision.weights = {f"{lk.src}->{lk.dst}": float(w) for lk, w in zip(estimated.links, chosen)}
            if not before:
                decision.reason = "no probe measured the routing in place, so a push could not be verified: kept"
                return self._record(decision)
            if settings.dry_run:
                decision.action, decision.reason = "propose", "dry run: proposed, not pushed"
                return self._record(decision)
            self._push(estimated, chosen, current, before, trigger, decision, loop_started)
            return self._record(decision)
        finally:
            self.running = False

    def _window(self, wall_end: float, mono_end: float) -> Window:
        """The last window (:class:`Window`)."""
        settings = self.settings
        view = self.controller.snapshot()
        state = view.state.without_links(view.down) if view.down else view.state
        start = wall_end - settings.window_s
        samples = self.store.traffic_matrices(start, wall_end)
        rates = traffic_matrix(samples, start, wall_end)
        estimated = estimated_state(state, rates, self._packet_bits(start, wall_end))
        steady_from = min(mono_end, max(mono_end - settings.window_s, self._last_change + SETTLE_S))
        steady_start = wall_end - (mono_end - steady_from)  # the same instant on the store's clock
        pairs = {(f.src, f.dst) for f in estimated.flows}
        probed = self.controller.path_delays.delays(steady_from, mono_end, host_edge=False)  # as verify's after
        before = {pair: delay for pair, delay in probed.items() if pair in pairs}
        reported = self.controller.reported_delays.means(steady_start, wall_end)
        hosts = {pair: mean.delay for pair, mean in reported.items() if pair in pairs}
        measured = hosts or {  # else what hosts would see: the probes with the hosts' edge, where fitted
            pair: delay for pair, delay in self.controller.path_delays.delays(steady_from, mono_end).items()
            if pair in pairs}
        return Window(rates, estimated, before, measured, "hosts" if hosts else "probes",
                      mono_end - steady_from, sorted(f"{a}->{b}" for a, b in view.down),
                      load_change(state, samples, steady_start, wall_end),
                      {pair: reported[pair].samples for pair in hosts})

    def observe(self) -> None:
        """Between runs: score the twin on the last window and add it to the online fit, refitted
        here, off the runs' path."""
        wall_end, mono_end = self.wall(), self.clock()
        try:
            window = self._window(wall_end, mono_end)
        except TrafficMatrixError:
            return
        self._learn(window, wall_end, mono_end)
        self.calibration.current(self.predictor)

    def _learn(self, window: Window, wall_end: float, mono_end: float) -> float:
        """The twin's MAPE on the window with the correction fitted before it (a prediction's error,
        not a fit's; NaN when nothing measured it); the window joins the online fit if the routing
        was steady for most of it, it does not overlap the last window added, and it was measured
        the way the fit's windows are. A window whose traffic did not hold still over the measured
        span (:attr:`Window.steady`: it began, ended or shifted there) is neither scored nor fitted:
        the twin answers for a steady state, and the measured delays then belong to part of it. The
        first window the hosts measured starts the fit again from the prior, on their reports only;
        without reports for ``HOSTS_STALE_WINDOWS`` windows the loop goes back to the probes. The
        window's prediction goes to the store and Prometheus (``kind="predicted"``)."""
        self._observed_at = mono_end
        if window.measured_by == "hosts":
            self._hosts_seen_at = mono_end
        stale = mono_end - self._hosts_seen_at > HOSTS_STALE_WINDOWS * self.settings.window_s
        if window.measured_by != self.measured_by and (window.measured_by == "hosts" or stale):
            LOG.info("loop: the twin is now scored and fitted on the %s' delays", window.measured_by)
            self.measured_by = window.measured_by
            self.calibration.restart()
            self._windows_added = 0  # anomaly detection waits for windows of the new kind
        if not window.reference:
            return float("nan")
        estimated = window.estimated
        measured = measured_vector(estimated, window.reference)
        in_use = self.calibration.last
        predicted = CalibratedPredictor(self.predictor, in_use.correction).predict_delays([estimated])[0]
        self._publish_prediction(wall_end, estimated, predicted)
        if not window.steady:
            LOG.info("loop: the traffic moved within the window (a link's load by %.0f %% of its capacity): "
                     "not scored or fitted", 100 * window.load_change)
            return float("nan")
        score = mape(predicted, measured)
        self.scores.append(WindowScore(wall_end, wall_end - window.steady_s, score, window.measured_by,
                                       int(np.isfinite(measured).sum()), in_use.fitted))
        if window.measured_by == self.measured_by:  # the figure operators watch compares with one kind of measurement
            self.twin_mape = score
            self.metrics.set_gauge("loop_twin_error_ratio", score)
        half = 0.5 * self.settings.window_s
        if (window.measured_by == self.measured_by and window.steady_s >= half
                and mono_end - self._added_at >= half):
            self.calibration.add(estimated, measured, measured_vector(estimated, window.samples))
            self._added_at = mono_end
            self._windows_added += 1
        return score

    # ------------------------------------------------------------------ anomaly detection
    def detect(self) -> Verdict | None:
        """Judge the last ``anomaly_window_s`` of probes (after the last routing change) against the
        twin; None when there is nothing to judge (no correction fixed yet, a routing change in most
        of the window, no traffic, a network the twin cannot be asked about: partitioned)."""
        window = self.settings.anomaly_window_s
        wall_end, mono_end = self.wall(), self.clock()
        self._detected_at = mono_end
        if self._detection_correction is None:
            if self._windows_added < self.calibration.min_windows:
                self.metrics.set_gauge("anomaly_learning", 1.0)
                return None
            self._detection_correction = self.calibration.current(self.predictor).correction
            LOG.info("anomaly detection starts, with the twin's correction %s", asdict(self._detection_correction))
        steady_from = max(mono_end - window, self._last_change + SETTLE_S)
        if mono_end - steady_from < 0.5 * window:
            return None
        view = self.controller.snapshot()
        start = wall_end - window
        try:
            rates = traffic_matrix(self.store.traffic_matrices(start, wall_end), start, wall_end)
            estimated = estimated_state(view.state.without_links(view.down) if view.down else view.state, rates,
                                        self._packet_bits(start, wall_end))
        except NdtError as exc:  # no traffic measured, or flows with no path left
            LOG.info("anomaly detection: window not judged: %s", exc)
            return None
        predicted = CalibratedPredictor(self.predictor, self._detection_correction).predict_delays([estimated])[0]
        judged = judge(estimated, predicted, self.intervals)
        names = [(lk.src, lk.dst) for lk in estimated.links]
        routes: dict[int, list] = {}
        for owner, links in zip(estimated.routes.owner, estimated.routes.links):
            routes.setdefault(int(owner), []).extend(names[i] for i in links)
        # each path's own probes: pooled estimates would spread one path's burst over its links, and
        # the paths sharing them would seem to corroborate it
        # (without the hosts' edge, whose refits would move every path at once)
        stats = self.controller.path_delays.stats(steady_from, mono_end, robust=True, pooled=False, host_edge=False)
        observations = []
        for i, flow in enumerate(estimated.flows):
            stat = stats.get((flow.src, flow.dst))
            if stat is not None and np.isfinite(predicted[i]) and predicted[i] > 0:
                bounds = (None, None) if judged.lo is None else (float(judged.lo[i]), float(judged.hi[i]))
                observations.append(Observation(flow.src, flow.dst, stat.mean, stat.samples, stat.stderr,
                                                float(predicted[i]), tuple(routes.get(i, ())), *bounds))
        loads = self._link_loads(estimated, start, wall_end) if steady_from <= mono_end - window else []
        verdict = self.detector.judge(wall_end, observations, loads)
        if self.settings.anomaly_log is not None:
            with open(self.settings.anomaly_log, "a") as log:
                log.write(json.dumps({"ts": wall_end, "observations": [asdict(o) for o in observations],
                                      "loads": [asdict(lk) for lk in loads]}) + "\n")
        minimum = self.settings.anomaly.min_loss_packets
        self._report_anomalies(verdict, {lk.pair: loss for lk in loads if (loss := lk.loss(minimum)) is not None})
        return verdict

    def _link_loads(self, estimated: NetworkState, start: float, end: float) -> list[LinkLoad]:
        """Per link of ``estimated``: what its port counters carried from ``start`` to ``end`` (Unix s)
        beside the load the measured traffic matrix puts on it (anomaly detection's link loads)."""
        samples = self.store.link_samples(start, end + 1e-6)
        carried = carried_loads(samples)
        packets = window_losses(self.store.offered_packets(start, end + 1e-6), samples)
        expected = estimated.link_loads()
        return [LinkLoad(lk.src, lk.dst, carried[(lk.src, lk.dst)], float(expected[i]), lk.capacity,
                         *packets.get((lk.src, lk.dst), (None, None)))
                for i, lk in enumerate(estimated.links) if (lk.src, lk.dst) in carried]

    def _report_anomalies(self, verdict: Verdict, losses: dict) -> None:
        """The window's verdict to gRPC (kept), Prometheus (with ``losses``, each counted link's share of
        its offered packets lost in the window), and, when the anomalous paths or links changed, the
        store's config history (kind ``anomaly``) and the log."""
        before_paths, before_links = ((_named(self.anomalies.anomalies), _named(self.anomalies.link_anomalies))
                                      if self.anomalies is not None else (set(), set()))
        self.anomalies = verdict
        self.metrics.set_gauge("anomaly_learning", float(verdict.learning))
        self.metrics.set_anomalies(len(verdict.anomalies), {(s.src, s.dst): s.score for s in verdict.suspects},
                                   len(verdict.new), {(lk.src, lk.dst): lk.deviation if np.isfinite(lk.deviation)
                                                      else 0.0 for lk in verdict.link_anomalies},
                                   len(verdict.new_links), losses)
        paths, links = _named(verdict.anomalies), _named(verdict.link_anomalies)
        if (paths, links) == (before_paths, before_links):
            return
        payload = jsonable({"anomalous": [asdict(p) for p in verdict.anomalies],
                            "cleared": sorted(before_paths - paths),
                            "anomalous_links": [asdict(lk) for lk in verdict.link_anomalies],
                            "cleared_links": sorted(before_links - links),
                            "suspects": [asdict(s) for s in verdict.suspects[:10]],
                            "model_spread": verdict.model_spread})
        try:
            self.store.add_config(verdict.ts, "ndt anomaly detection", ANOMALY_KIND, payload)
        except NdtError as exc:
            LOG.error("%s", exc)
        top = verdict.suspects[0] if verdict.suspects else None
        LOG.warning("anomaly: %d paths outside the twin's band (new: %s, cleared: %s), %d links whose load is not "
                    "the expected or that lose packets (new: %s, cleared: %s)%s", len(paths),
                    _listed(paths - before_paths), _listed(before_paths - paths), len(links),
                    _listed(links - before_links), _listed(before_links - links),
                    f"; suspect {top.src}->{top.dst} (score {top.score:.2f}, load {top.load_deviation:+.1%} of "
                    f"capacity, loss {top.loss_ratio:.1%} beyond its usual)" if top else "")

    def _publish_prediction(self, ts: float, estimated: NetworkState, predicted: np.ndarray) -> None:
        """The calibrated twin's per-pair delays for the window ending at ``ts`` (Unix s) to the store
        and Prometheus, beside the measured ones."""
        delays = {(f.src, f.dst): float(d) for f, d in zip(estimated.flows, predicted) if np.isfinite(d) and d > 0}
        if not delays:
            return
        try:
            self.store.add_path_delays(ts, "predicted", delays)
        except NdtError as exc:
            LOG.error("%s", exc)
        self.metrics.set_path_delays("predicted", delays)

    def _calibrated(self, window: Window, wall_end: float, mono_end: float, decision: Decision):
        """The twin with the online fit including this window; the window's twin MAPE in ``decision``,
        beside what a perfect model would score against these probes."""
        decision.twin_mape = self._learn(window, wall_end, mono_end)
        decision.measured_by = window.measured_by
        decision.probe_noise_mape = self.controller.path_delays.noise(mono_end - window.steady_s, mono_end)
        fitted = self.calibration.current(self.predictor)
        twin = CalibratedPredictor(self.predictor, fitted.correction)
        decision.calibration = {"fitted_online": fitted.fitted, "windows": fitted.windows, "flows": fitted.flows,
                                "windows_left_out": fitted.left_out, "fit_mape": fitted.mape,
                                **asdict(fitted.correction)}
        if window.probed:
            decision.measured_s = float(np.mean(list(window.probed.values())))
        return twin

    def _validate(self, estimated: NetworkState, current: np.ndarray, candidates: list, twin,
                  decision: Decision) -> np.ndarray | None:
        """The candidate to push, or None to keep the routing in place."""
        settings = self.settings
        routings = [current] + candidates
        decision.candidates = []
        predicted = [float(np.mean(d)) for d in
                     twin.predict_delays([estimated.with_weights(w) for w in routings])]
        if settings.validate == "sandbox" and candidates:
            validations = self.sandbox.validate(estimated, routings, self.predictor, self.calibration.current(
                self.predictor).correction, settings.sandbox_s, min(2.0, settings.sandbox_s / 4), settings.seed)
            validated = [v.mean_measured(estimated) for v in validations]
        else:
            validated = predicted
        for p, v in zip(predicted, validated):
            decision.candidates.append({"predicted_s": p, "validated_s": v})
        decision.predicted_current_s = decision.predicted_chosen_s = predicted[0]
        decision.validated_current_s = decision.validated_chosen_s = validated[0]
        winner = choose(validated, settings.margin) if candidates else 0
        if winner and predicted[winner] >= predicted[0]:
            decision.reason = "the sandbox's best is rated worse by the twin; kept"
            winner = 0
        if not winner:
            return None
        decision.predicted_chosen_s, decision.validated_chosen_s = predicted[winner], validated[winner]
        return routings[winner]

    def _push(self, estimated: NetworkState, chosen: np.ndarray, current: np.ndarray, before: dict,
              trigger: str, decision: Decision, loop_started: float) -> None:
        """Push ``chosen``, measure ``verify_s`` of probes, roll back to ``current`` if worse."""
        settings = self.settings
        links = [(lk.src, lk.dst) for lk in estimated.links]
        version = self.controller.route_version
        self.controller.apply_weights(dict(zip(links, map(float, chosen))), who=f"ndt loop ({trigger})",
                                      predicted={"mean_delay_s": decision.predicted_chosen_s})
        decision.route_version = self.controller.wait_for_routes(version, 30.0)
        decision.loop_s = self.clock() - loop_started
        decision.pushed_at = self.wall()
        self._last_push = self._last_change = pushed = self.clock()
        decision.action = "push"
        self.pushes += 1
        self._stop.wait(settings.verify_s + SETTLE_S)
        after = self.controller.path_delays.delays(pushed + SETTLE_S, self.clock(), min_samples=1, host_edge=False)
        mean_before, mean_after = common_mean(before, after)
        decision.after_s = mean_after
        if self.controller.route_version != decision.route_version:
            decision.reason = "the routing changed again during the verification (an operator or an event): not judged"
        elif not np.isfinite(mean_after) or should_roll_back(mean_before, mean_after, settings.rollback_tolerance):
            version = self.controller.route_version
            self.controller.apply_weights(dict(zip(links, map(float, current))), who="ndt loop: rollback")
            decision.route_version = self.controller.wait_for_routes(version, 30.0)
            self._last_change = self.clock()
            decision.action = "rollback"
            decision.reason = ("no probe measured the pushed routing: rolled back" if not np.isfinite(mean_after) else
                               f"measured {1e3 * mean_after:.3f} ms after the push against {1e3 * mean_before:.3f} ms "
                               f"before: rolled back")
            self.rollbacks += 1

    def _record(self, decision: Decision) -> Decision:
        """The decision to the store's config history, Prometheus, the log and the subscribers."""
        decision.finished = self.wall()
        payload = decision.to_json()
        try:
            self.store.add_config(decision.ts, "ndt loop", DECISION_KIND, payload)
        except NdtError as exc:  # the store's trouble: the decision still goes to the log, metrics and streams
            LOG.error("%s", exc)
        self.metrics.count_loop("decision", decision.action)
        self.metrics.set_gauge("loop_last_run_timestamp_seconds", decision.ts)
        for gauge, value in (("loop_duration_seconds", decision.loop_s),
                             ("loop_measured_delay_seconds", decision.measured_s),
                             ("loop_predicted_delay_seconds", decision.predicted_chosen_s)):
            if np.isfinite(value):
                self.metrics.set_gauge(gauge, value)
        LOG.info("loop %s (%s): %s%s", decision.action, decision.trigger, json.dumps(
            {k: payload[k] for k in ("measured_s", "predicted_current_s", "predicted_chosen_s", "after_s",
                                     "twin_mape", "loop_s")}), f"; {decision.reason}" if decision.reason else "")
        with self._changed:
            self.decisions.append(decision)
            self.runs += 1
            self._changed.notify_all()
        return decision


def _named(verdicts) -> set[str]:
    """The names ("src->dst") of path or link verdicts."""
    return {f"{v.src}->{v.dst}" for v in verdicts}


def _listed(names: set[str]) -> str:
    return ", ".join(sorted(names)) or "none"
