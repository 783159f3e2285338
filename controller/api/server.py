"""The gRPC API (``ndt.v1.Ndt`` in ``ndt_api.proto``), with server reflection and the standard health service.

Messages and stubs are generated from the .proto at install (``make install`` runs
grpcio-tools' protoc into ``controller/api/ndt_api_pb2*.py``).
Bad requests end with INVALID_ARGUMENT, NOT_FOUND or FAILED_PRECONDITION and a message naming
the field; the server keeps serving. Listens on localhost unless told otherwise; TLS, client
certificates (mTLS) and a bearer token when configured (the token is not asked of the health
service and reflection; with mTLS every connection needs a client certificate). Beyond loopback
it refuses to listen without a token and TLS unless told ``insecure`` (docs/operations.md).

Budgets keep control answering under abuse: at most ``max_streams`` telemetry streams and
``max_twin_calls`` twin calls (Predict, WhatIf, Optimize) run at once, further ones end at once
with RESOURCE_EXHAUSTED, so the long calls never hold more than 6 of the 16 workers and the short
ones (health, GetStatus, Apply, …) keep the rest; a stream wakes as soon as its client goes; a
state to predict has at most ``max_flows`` flows.
"""

from __future__ import annotations

import functools
import ipaddress
import json
import logging
import math
import socket
import threading
import time
from concurrent import futures
from contextlib import contextmanager
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from analysis.scenario import Scenario
from analysis.scenario import apply as apply_scenario
from controller.tls_files import TlsOptions, check_tls_files
from telemetry.accuracy import delay_mape
from telemetry.exporter import Metrics
from telemetry.store import CONTROL_KIND, StoreError, TelemetryStore
from telemetry.traffic_matrix import estimated_state
from twin.models.intervals import judge
from twin.state.errors import NdtError, shown
from twin.state.files import parse_json
from twin.state.model import NetworkState

try:
    from controller.api import ndt_api_pb2 as pb
    from controller.api import ndt_api_pb2_grpc as services
except ModuleNotFoundError:
    raise NdtError("the gRPC code has not been generated from controller/api/ndt_api.proto: run 'make install'") from None
SERVICE_NAME = pb.DESCRIPTOR.services_by_name["Ndt"].full_name
LOG = logging.getLogger("ndt.api")
APPLY_WAIT_S = 5.0
STREAM_INTERVAL_S = (0.1, 60.0)  # allowed telemetry stream interval, s
MAX_WEIGHT = 65535  # OSPF link weights are whole numbers 1..65535
MAX_WHO_CHARS = 64
MAX_DELAY_S = 60.0  # a measured path delay above this is a measurement error
MAX_CLOCK_SKEW_S = 5.0  # a reported window may end this far after the controller's now (clocks differ)
MAX_REPORT_WINDOW_S = 3600.0  # the longest window a report's means may cover, s
MAX_REPORT_AGE_S = 3600.0  # a report's window must have ended at most this long ago, s
MAX_TRAFFIC_SCALE = 100.0
MAX_MESSAGE_CHARS = 400  # status messages are cut here (gRPC metadata is limited)
TRAFFIC_WINDOW_S = 10.0  # a measured traffic matrix older than this is not "the running network's"
MAX_SUSPECTS = 100  # suspect links ListAnomalies returns at most
DEFAULT_SUSPECTS = 10
PREDICTION_WINDOW_S = 600.0  # measurements are compared with predictions made at most this long before


class ApiError(Exception):
    """Ends an RPC with ``code`` and ``message`` (the field at fault named in it)."""

    def __init__(self, code: grpc.StatusCode, message: str):
        super().__init__(message)
        self.code = code


class NdtService(services.NdtServicer):
    """Serves the RPCs from a running controller (``snapshot()``, ``apply_weights()``,
    ``wait_for_routes()``), the telemetry store and the metrics snapshot."""

    def __init__(self, controller, store: TelemetryStore, metrics: Metrics, predictor_factory=None,
                 default_model: str | None = None, max_streams: int = 4, max_twin_calls: int = 2,
                 max_flows: int = 20_000, loop=None, intervals_factory=None):
        """``predictor_factory(name)`` returns an object with ``predict_delays(states)`` (default:
        ``twin.models.registry.get_predictor``, whose last listed model is then the default);
        ``intervals_factory(name)``: the model's prediction intervals or None (default: the shipped ones);
        ``loop``: the closed loop running in the controller (:class:`controller.loop.service.LoopService`), if any."""
        self._streams = _Budget(max_streams, "telemetry streams")
        self._twin_calls = _Budget(max_twin_calls, "twin calls (Predict, WhatIf, Optimize)")
        self.max_flows = max_flows
        self.loop = loop
        self.controller = controller
        self.store = store
        self.metrics = metrics
        if predictor_factory is None:
            from twin.models.registry import PREDICTORS
            from twin.models.registry import get_predictor as predictor_factory

            default_model = default_model or PREDICTORS[-1]
        self.predictor_factory = predictor_factory
        self.default_model = default_model
        self.intervals_factory = intervals_factory or _shipped_intervals

    # ------------------------------------------------------------------ read side
    def GetTopology(self, request, context):
        view = self.controller.snapshot()
        links = [pb.Link(src=lk.src, dst=lk.dst, capacity_bps=lk.capacity, weight=lk.weight,
                         up=(lk.src, lk.dst) not in view.down, port=view.ports.get((lk.src, lk.dst), 0))
                 for lk in view.state.links]
        hosts = [pb.Host(ip=h.ip, mac=h.mac, switch=h.switch, port=h.port) for h in view.hosts]
        return pb.Topology(nodes=list(view.state.nodes), links=links, hosts=hosts, route_version=view.route_version)

    def GetStatus(self, request, context):
        view = self.controller.snapshot()
        return pb.Status(switches_connected=view.switches_connected, switches_total=len(view.state.nodes),
                         route_version=view.route_version, hosts=len(view.macs), links_down=len(view.down),
                         last_switch_over_s=view.last_switch_over_s)

    def StreamTelemetry(self, request, context):
        interval = request.interval_s or 1.0
        low, high = STREAM_INTERVAL_S
        if not (math.isfinite(interval) and low <= interval <= high):
            raise ApiError(grpc.StatusCode.INVALID_ARGUMENT, f"interval_s must be from {low} to {high} s, got {interval}")
        gone = threading.Event()
        context.add_callback(gone.set)
        with self._streams.held():
            while context.is_active():
                now = time.time()
                links = [pb.LinkStats(src=s.src, dst=s.dst, tx_bytes=s.tx_bytes, utilization=s.utilization or 0.0,
                                      has_utilization=s.utilization is not None)
                         for s in self.store.latest_link_samples()]
                traffic = [pb.TrafficRate(src=s, dst=d, rate_bps=r) for (s, d), r in self._measured_traffic(now).items()]
                yield pb.Telemetry(ts=now, links=links, traffic=traffic, route_version=self.controller.route_version)
                if gone.wait(interval):
                    return

    # ------------------------------------------------------------------ the twin
    def Predict(self, request, context):
        if request.state_json:
            try:
                state = NetworkState.from_dict(_json(request.state_json, "state_json"))
            except NdtError as exc:
                raise ApiError(grpc.StatusCode.INVALID_ARGUMENT, f"state_json: {exc}") from None
            if not state.flows:
                raise ApiError(grpc.StatusCode.INVALID_ARGUMENT, "state_json: the state has no traffic to predict")
            if len(state.flows) > self.max_flows:
                raise ApiError(grpc.StatusCode.RESOURCE_EXHAUSTED,
                               f"state_json: {len(state.flows)} flows, more than this controller predicts in one call "
                               f"({self.max_flows}, --max-predict-flows); use 'ndt predict' for large states")
        else:
            state = self._running_state()
        model, predictor = self._predictor(request.model)
        started = time.perf_counter()
        delays = self._predict(predictor, [state])[0]
        if not request.state_json:  # a prediction for the running network is telemetry too
            predicted = {(f.src, f.dst): float(d) for f, d in zip(state.flows, delays) if math.isfinite(d) and d >= 0}
            try:
                self.store.add_path_delays(time.time(), "predicted", predicted)
            except StoreError as exc:  # the store's trouble, not the caller's: answer anyway
                LOG.error("%s", exc)
            self.metrics.set_path_delays("predicted", predicted)
        infer_s = time.perf_counter() - started
        intervals = self._intervals(model)
        judged = judge(state, delays, intervals)
        return pb.PredictReply(paths=_judged_paths(state, judged), infer_s=infer_s, model=model,
                               in_safe_range=bool(judged.in_safe_range), out_of_range_reasons=judged.reasons,
                               nominal_coverage=intervals.nominal if intervals else 0.0)

    def GetState(self, request, context):
        return pb.StateReply(state_json=json.dumps(self._running_state().to_dict()))

    def WhatIf(self, request, context):
        before = self._running_state()
        if request.traffic_scale and not (math.isfinite(request.traffic_scale)
                                          and 0 < request.traffic_scale <= MAX_TRAFFIC_SCALE):
            raise ApiError(grpc.StatusCode.INVALID_ARGUMENT,
                           f"traffic_scale must be > 0 and <= {MAX_TRAFFIC_SCALE:g}, got {request.traffic_scale}")
        for i, ref in enumerate(request.failed_links):
            if (ref.src, ref.dst) not in before.link_index:
                raise ApiError(grpc.StatusCode.NOT_FOUND,
                               f"failed_links[{i}]: link {_short(ref.src)}->{_short(ref.dst)} is not in the topology")
        for i, node in enumerate(request.failed_nodes):
            if node not in before.node_index:
                raise ApiError(grpc.StatusCode.NOT_FOUND, f"failed_nodes[{i}]: {_short(node)!r} is not a node")
        scenario = Scenario(failed_links=tuple((ref.src, ref.dst) for ref in request.failed_links),
                            failed_nodes=tuple(request.failed_nodes), traffic_scale=request.traffic_scale or 1.0,
                            weights=tuple((a, b, w) for (a, b), w in _weight_changes(before, request.weights).items()))
        try:
            after, _ = apply_scenario(before, scenario)
        except NdtError as exc:
            raise ApiError(grpc.StatusCode.FAILED_PRECONDITION, f"scenario: {exc}") from None
        if not after.flows:
            raise ApiError(grpc.StatusCode.FAILED_PRECONDITION,
                           "scenario: every demand leaves with the failed nodes; nothing is left to predict")
        model, predictor = self._predictor(request.model)
        delays_before, delays_after = self._predict(predictor, [before, after])
        intervals = self._intervals(model)
        return pb.WhatIfReply(before=_judged_paths(before, judge(before, delays_before, intervals)),
                              after=_judged_paths(after, judge(after, delays_after, intervals)), model=model)

    def Optimize(self, request, context):
        from optimizer.intent import parse_intent_text
        from optimizer.search import InfeasibleIntent, optimize
        from twin.state.metrics import mean_delay

        try:
            intent = parse_intent_text(request.intent_yaml)
        except NdtError as exc:
            raise ApiError(grpc.StatusCode.INVALID_ARGUMENT, f"intent_yaml: {exc}") from None
        state = self._running_state()
        _, predictor = self._predictor(request.model)
        try:
            with self._twin_calls.held():
                result = optimize(state, intent, predictor, seed=request.seed)
        except InfeasibleIntent as exc:
            raise ApiError(grpc.StatusCode.FAILED_PRECONDITION, f"intent_yaml: {exc}") from None
        except NdtError as exc:
            raise ApiError(grpc.StatusCode.INVALID_ARGUMENT, f"intent_yaml: {exc}") from None
        self.metrics.inc("optimizer_runs")
        final = state.with_weights(result.weights)
        return pb.OptimizeReply(
            weights=[pb.WeightChange(src=lk.src, dst=lk.dst, weight=float(w)) for lk, w in zip(state.links, result.weights)],
            changed_links=[pb.LinkRef(src=c["src"], dst=c["dst"]) for c in result.changed_links],
            feasible=result.after.feasible,
            predicted_mean_delay_before_s=mean_delay(state, result.delays_before),
            predicted_mean_delay_after_s=mean_delay(final, result.delays_after))

    # ------------------------------------------------------------------ the write side
    def Apply(self, request, context):
        if not request.weights:
            raise ApiError(grpc.StatusCode.INVALID_ARGUMENT, "weights: give at least one link weight")
        view = self.controller.snapshot()
        weights = _weight_changes(view.state, request.weights)
        if len(request.who) > MAX_WHO_CHARS or not request.who.isprintable():
            raise ApiError(grpc.StatusCode.INVALID_ARGUMENT,
                           f"who: at most {MAX_WHO_CHARS} printable characters (no newlines or control characters)")
        who = request.who or f"gRPC {_short(context.peer(), MAX_WHO_CHARS)}"
        config_id = self.controller.apply_weights(weights, who=who)
        version = self.controller.wait_for_routes(view.route_version, APPLY_WAIT_S)
        return pb.ApplyReply(config_id=config_id, route_version=version)

    def ReportMeasured(self, request, context):
        if not request.paths:
            raise ApiError(grpc.StatusCode.INVALID_ARGUMENT, "paths: give at least one measured path delay")
        nodes = set(self.controller.snapshot().state.nodes)
        measured, samples = {}, {}
        for i, path in enumerate(request.paths):
            for end in (path.src, path.dst):
                if end not in nodes:
                    raise ApiError(grpc.StatusCode.NOT_FOUND, f"paths[{i}]: node {shown(end)} is not in the topology")
            if path.src == path.dst:
                raise ApiError(grpc.StatusCode.INVALID_ARGUMENT, f"paths[{i}]: src and dst are the same node {shown(path.src)}")
            if not (math.isfinite(path.delay_s) and 0 <= path.delay_s <= MAX_DELAY_S):
                raise ApiError(grpc.StatusCode.INVALID_ARGUMENT,
                               f"paths[{i}]: {path.src}->{path.dst} delay_s must be finite, >= 0 and <= {MAX_DELAY_S:g} s, "
                               f"got {path.delay_s}")
            measured[(path.src, path.dst)] = path.delay_s
            if path.samples:
                samples[(path.src, path.dst)] = path.samples
            else:
                samples.pop((path.src, path.dst), None)  # a pair given twice: its last delay, with its own count
        now = time.time()
        window = _report_window(request.start, request.end, now)
        self.store.add_path_delays(window[1] if window else now, "measured", measured, samples)
        if window:
            self.controller.reported_delays.add(*window, measured, samples)
        self.metrics.set_path_delays("measured", measured)
        predicted = {(p.src, p.dst): p.value
                     for p in self.store.path_delays("predicted", now - PREDICTION_WINDOW_S, now + 1.0)}
        error = delay_mape(predicted, measured)
        if error is None:
            return pb.ReportReply(has_twin_error=False)
        self.metrics.set_gauge("twin_error_ratio", error)
        return pb.ReportReply(has_twin_error=True, twin_error_ratio=error)

    # ------------------------------------------------------------------ the closed loop
    def GetLoopStatus(self, request, context):
        return self._loop_status()

    def ControlLoop(self, request, context):
        loop = self._require_loop()
        if len(request.who) > MAX_WHO_CHARS or not request.who.isprintable():
            raise ApiError(grpc.StatusCode.INVALID_ARGUMENT,
                           f"who: at most {MAX_WHO_CHARS} printable characters (no newlines or control characters)")
        action = request.action
        names = pb.LoopControl.Action
        if action not in names.values():
            raise ApiError(grpc.StatusCode.INVALID_ARGUMENT, f"action: {action} is not a LoopControl.Action")
        if loop.stopped:
            raise ApiError(grpc.StatusCode.FAILED_PRECONDITION, f"the loop has stopped: {loop.failure or 'shut down'}")
        if action == names.Value("RUN_NOW") and loop.paused:
            raise ApiError(grpc.StatusCode.FAILED_PRECONDITION, "the loop is paused: RESUME it first")
        {names.Value("PAUSE"): lambda: loop.pause(True), names.Value("RESUME"): lambda: loop.pause(False),
         names.Value("DRY_RUN_ON"): lambda: loop.set_dry_run(True),
         names.Value("DRY_RUN_OFF"): lambda: loop.set_dry_run(False),
         names.Value("RUN_NOW"): loop.run_now}.get(action, lambda: None)()
        if action != names.Value("STATUS"):
            who = request.who or f"gRPC {_short(context.peer(), MAX_WHO_CHARS)}"
            LOG.info("loop: %s by %s", names.Name(action), who)
            try:
                self.store.add_config(time.time(), who, CONTROL_KIND, {"action": names.Name(action)})
            except StoreError as exc:
                LOG.error("%s", exc)
        return self._loop_status()

    def StreamLoopDecisions(self, request, context):
        loop = self._require_loop()
        interval = request.interval_s or 1.0
        low, high = STREAM_INTERVAL_S
        if not (math.isfinite(interval) and low <= interval <= high):
            raise ApiError(grpc.StatusCode.INVALID_ARGUMENT, f"interval_s must be from {low} to {high} s, got {interval}")
        with self._streams.held():
            seen = max(0, loop.runs - 1)  # a subscriber starts from the last decision
            while context.is_active():
                decisions, seen = loop.wait_for_decision(seen, interval)
                for decision in decisions:
                    yield _decision(decision)
                if loop.stopped:
                    return

    # ------------------------------------------------------------------ anomaly detection
    def ListAnomalies(self, request, context):
        if request.max_suspects > MAX_SUSPECTS:
            raise ApiError(grpc.StatusCode.INVALID_ARGUMENT,
                           f"max_suspects must be from 0 to {MAX_SUSPECTS} (0: {DEFAULT_SUSPECTS}), got {request.max_suspects}")
        loop = self.loop
        if loop is None or loop.detector is None:
            return pb.AnomaliesReply(enabled=False)
        verdict = loop.anomalies
        if verdict is None or verdict.learning:
            return pb.AnomaliesReply(enabled=True, learning=True, window_ts=verdict.ts if verdict else 0.0)
        paths = [pb.AnomalousPath(src=p.src, dst=p.dst, measured_s=p.measured_s, predicted_s=p.predicted_s, lo_s=p.lo_s,
                                  hi_s=p.hi_s, since=p.since, direction="slower" if p.side > 0 else "faster",
                                  windows=p.streak, samples=p.samples,
                                  links=[pb.LinkRef(src=a, dst=b) for a, b in p.links])
                 for p in verdict.anomalies]
        links = [pb.AnomalousLink(src=lk.src, dst=lk.dst, measured_bps=lk.measured_bps, expected_bps=lk.expected_bps,
                                  lo_bps=lk.lo_bps, hi_bps=lk.hi_bps, since=lk.since,
                                  direction="lost" if lk.lost else "more" if lk.side > 0 else "less",
                                  windows=lk.loss_streak if lk.lost else lk.streak,
                                  loss_ratio=lk.loss if lk.lost else 0.0)
                 for lk in verdict.link_anomalies]
        suspects = [pb.SuspectLink(src=s.src, dst=s.dst, score=s.score, anomalous_paths=s.anomalous_paths,
                                   normal_paths=s.normal_paths, load_deviation=s.load_deviation,
                                   loss_ratio=s.loss_ratio)
                    for s in verdict.suspects[:request.max_suspects or DEFAULT_SUSPECTS]]
        return pb.AnomaliesReply(enabled=True, window_ts=verdict.ts, paths_judged=len(verdict.paths), paths=paths,
                                 suspects=suspects, model_spread=verdict.model_spread, links=links)

    def _require_loop(self):
        if self.loop is None or not self.loop.settings.optimize:
            raise ApiError(grpc.StatusCode.FAILED_PRECONDITION,
                           "this controller runs no closed loop (start it with 'ndt controller --intent FILE')")
        return self.loop

    def _loop_status(self):
        loop = self.loop
        if loop is None or not loop.settings.optimize:
            return pb.LoopStatus(enabled=False)
        return pb.LoopStatus(enabled=True, paused=loop.paused, dry_run=loop.settings.dry_run, running=loop.running,
                             runs=loop.runs, pushes=loop.pushes, rollbacks=loop.rollbacks,
                             twin_mape=loop.twin_mape if math.isfinite(loop.twin_mape) else -1.0,
                             calibrated_online=loop.calibration.last.fitted,
                             calibration_windows=loop.calibration.last.windows,
                             validate=loop.settings.validate, error=loop.failure,
                             measured_by=loop.measured_by,
                             recent=[_decision(d) for d in list(loop.decisions)[-10:]],
                             scores=[pb.TwinScore(ts=w.ts, start=w.start, mape=w.mape if math.isfinite(w.mape) else -1.0, measured_by=w.measured_by, pairs=w.pairs,
                                                  calibrated_online=w.calibrated_online) for w in list(loop.scores)])

    # ------------------------------------------------------------------ helpers
    def _running_state(self) -> NetworkState:
        """The running network: current weights, links in service, the measured traffic (or the state file's)."""
        view = self.controller.snapshot()
        state = view.state
        measured = self._measured_traffic(time.time())
        if measured:
            state = estimated_state(state, measured)
        if not state.flows:
            raise ApiError(grpc.StatusCode.FAILED_PRECONDITION,
                           "the running network has no traffic: none measured yet and none in the state file")
        try:
            return state.without_links(view.down) if view.down else state
        except NdtError as exc:
            raise ApiError(grpc.StatusCode.FAILED_PRECONDITION, f"links out of service: {exc}") from None

    def _measured_traffic(self, now: float) -> dict[tuple[str, str], float]:
        latest = {}
        for sample in self.store.traffic_matrices(now - TRAFFIC_WINDOW_S, now + 1.0):
            latest[(sample.src, sample.dst)] = sample.value
        return latest

    def _predictor(self, name: str):
        name = name or self.default_model
        try:
            return name, self.predictor_factory(name)
        except NdtError as exc:
            raise ApiError(grpc.StatusCode.INVALID_ARGUMENT, f"model: {exc}") from None

    def _intervals(self, model: str):
        """The model's prediction intervals (None when none were fitted); a damaged file is logged, not fatal."""
        try:
            return self.intervals_factory(model)
        except NdtError as exc:
            LOG.error("%s", exc)
            return None

    def _predict(self, predictor, states):
        with self._twin_calls.held():
            try:
                return predictor.predict_delays(states)
            except NdtError as exc:
                raise ApiError(grpc.StatusCode.FAILED_PRECONDITION, f"prediction failed: {exc}") from None


def _report_window(start: float, end: float, now: float) -> tuple[float, float] | None:
    """A report's window (Unix s), None when not given (both 0); bad windows are refused."""
    if start == 0 and end == 0:
        return None
    if not (math.isfinite(start) and math.isfinite(end) and 0 < start < end):
        raise ApiError(grpc.StatusCode.INVALID_ARGUMENT,
                       f"start, end: the window must be Unix seconds with start < end, got [{start}, {end})")
    if not now - MAX_REPORT_AGE_S <= end <= now + MAX_CLOCK_SKEW_S or end - start > MAX_REPORT_WINDOW_S:
        raise ApiError(grpc.StatusCode.INVALID_ARGUMENT,
                       f"start, end: the window [{start:.3f}, {end:.3f}) must end by now ({now:.3f}, give or take "
                       f"{MAX_CLOCK_SKEW_S:g} s) and not before {MAX_REPORT_AGE_S:g} s ago, and last at most "
                       f"{MAX_REPORT_WINDOW_S:g} s")
    return start, end


def _decision(decision) -> pb.LoopDecision:
    """A :class:`controller.loop.service.Decision` as its message (unmeasured figures 0, twin_mape -1)."""

    def figure(value: float, missing: float = 0.0) -> float:
        return float(value) if math.isfinite(value) else missing

    return pb.LoopDecision(
        ts=decision.ts, trigger=decision.trigger, action=decision.action, reason=decision.reason,
        measured_s=figure(decision.measured_s), predicted_current_s=figure(decision.predicted_current_s),
        predicted_chosen_s=figure(decision.predicted_chosen_s), validated_current_s=figure(decision.validated_current_s),
        validated_chosen_s=figure(decision.validated_chosen_s), after_s=figure(decision.after_s),
        twin_mape=figure(decision.twin_mape, -1.0), measured_by=decision.measured_by, loop_s=figure(decision.loop_s),
        route_version=decision.route_version, candidates=max(0, len(decision.candidates) - 1),
        details_json=json.dumps(decision.to_json()))


class _Budget:
    """At most ``limit`` holders at once; one more ends its RPC with RESOURCE_EXHAUSTED instead of waiting."""

    def __init__(self, limit: int, what: str):
        self.limit, self.what = limit, what
        self._slots = threading.BoundedSemaphore(limit)

    @contextmanager
    def held(self):
        if not self._slots.acquire(blocking=False):
            raise ApiError(grpc.StatusCode.RESOURCE_EXHAUSTED,
                           f"{self.limit} {self.what} are already running; retry when one has finished")
        try:
            yield
        finally:
            self._slots.release()


def _weight_changes(state: NetworkState, changes) -> dict[tuple[str, str], float]:
    """The requested weight per link; unknown links, and weights that are not whole numbers 1..65535, refused."""
    weights = {}
    for i, change in enumerate(changes):
        tag = f"weights[{i}]: link {_short(change.src)}->{_short(change.dst)}"
        if (change.src, change.dst) not in state.link_index:
            raise ApiError(grpc.StatusCode.NOT_FOUND, f"{tag} is not in the topology")
        if not (math.isfinite(change.weight) and change.weight == int(change.weight) and 1 <= change.weight <= MAX_WEIGHT):
            raise ApiError(grpc.StatusCode.INVALID_ARGUMENT,
                           f"{tag} weight must be a whole number from 1 to {MAX_WEIGHT}, got {change.weight}")
        weights[(change.src, change.dst)] = float(change.weight)
    return weights


def _short(text: str, limit: int = 40) -> str:
    """``text`` cut to ``limit`` characters for a message."""
    return text if len(text) <= limit else text[:limit] + "…"


def _json(text: str, field: str):
    try:
        return parse_json(text)
    except NdtError as exc:
        raise ApiError(grpc.StatusCode.INVALID_ARGUMENT, f"{field}: {exc}") from None


@functools.lru_cache(maxsize=None)
def _shipped_intervals(model: str):
    from twin.models.intervals import load_intervals

    return load_intervals(model)


def _judged_paths(state: NetworkState, judged) -> list:
    """Per flow, its predicted delay and interval (both bounds 0 where there is none)."""
    return [pb.PathDelay(src=row["src"], dst=row["dst"], delay_s=row["delay"], delay_lo_s=row["delay_lo"] or 0.0,
                         delay_hi_s=row["delay_hi"] or 0.0) for row in judged.path_rows(state)]


class _Guard(grpc.ServerInterceptor):
    """Turns ApiError into its status and any other exception into INTERNAL without a stack trace
    (logged on the controller); checks the bearer token when one is configured (not for the
    health service or reflection)."""

    def __init__(self, token: str | None):
        self.token = token

    def intercept_service(self, continuation, details):
        handler = continuation(details)
        if handler is None or not details.method.startswith(f"/{SERVICE_NAME}/"):
            return handler
        metadata = dict(details.invocation_metadata or ())
        authorized = self.token is None or metadata.get("authorization") == f"Bearer {self.token}"
        method = details.method.rsplit("/", 1)[-1]

        @contextmanager
        def statuses(context):
            try:
                yield
            except ApiError as exc:
                context.abort(exc.code, _short(str(exc), MAX_MESSAGE_CHARS))
            except NdtError as exc:
                context.abort(grpc.StatusCode.INVALID_ARGUMENT, _short(str(exc), MAX_MESSAGE_CHARS))
            except Exception:
                LOG.exception("gRPC %s failed", method)
                context.abort(grpc.StatusCode.INTERNAL, f"{method}: internal error, see the controller's log")

        def guard(behaviour, streaming: bool):
            def unary(request, context):
                _check(authorized, context)
                with statuses(context):
                    return behaviour(request, context)

            def stream(request, context):
                _check(authorized, context)
                with statuses(context):
                    yield from behaviour(request, context)

            return stream if streaming else unary

        if handler.unary_unary:
            return handler._replace(unary_unary=guard(handler.unary_unary, False))
        if handler.unary_stream:
            return handler._replace(unary_stream=guard(handler.unary_stream, True))
        return handler


def _check(authorized: bool, context) -> None:
    if not authorized:
        context.abort(grpc.StatusCode.UNAUTHENTICATED, "authorization: a valid 'Bearer <token>' is required")


def split_address(address: str) -> tuple[str, int]:
    """(host, port) of 'host:port' or '[v6]:port'; port 0..65535 (0: any free port)."""
    host, sep, port = address.rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise NdtError(f"gRPC address {address!r}: expected host:port with a port from 0 to 65535, "
                       "e.g. 127.0.0.1:50051 or [::1]:50051")
    return host, int(port)


def is_loopback(host: str) -> bool:
    """Whether every address ``host`` resolves to is a loopback address (a name that does not resolve is refused)."""
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None)
    except (socket.gaierror, UnicodeError):
        raise NdtError(f"gRPC address: host {host!r} is neither an IP address nor a name that resolves") from None
    return all(ipaddress.ip_address(info[4][0].split("%")[0]).is_loopback for info in infos)


def exposure_warnings(host: str, token: str | None, tls: bool, insecure: bool) -> list[str]:
    """Refuse an API that anyone on the network could use to change routing; the warnings to log otherwise.

    Beyond loopback the API needs a bearer token and TLS, unless ``insecure`` is given (then it warns).
    """
    if is_loopback(host):
        return [] if tls or token is None else [
            "the bearer token travels in clear text on loopback (no TLS); local users can read it"]
    missing = [(what, how) for what, how, have in (("bearer token", "NDT_API_TOKEN", token),
                                                   ("TLS", "--tls-cert/--tls-key", tls)) if not have]
    if not missing:
        return []
    if not insecure:
        needs = " and ".join(f"{what} ({how})" for what, how in missing)
        raise NdtError(f"gRPC address {host}: beyond loopback the API needs a {needs}, or --insecure "
                       "to serve it anyway (anyone who reaches it could change the routing)")
    exposed = "anyone who reaches it can change the routing" if token is None else \
        "the token crosses the network in clear text"
    return [f"--insecure: the API on {host} has no {' and no '.join(what for what, _ in missing)}; {exposed}"]


def _credentials(tls_cert: Path, tls_key: Path, tls_client_ca: Path | None):
    """Server credentials, after checking that the files are PEM and the key matches the certificate."""
    check_tls_files(tls_cert, tls_key, tls_client_ca, TlsOptions(ca="--tls-client-ca"))
    client_ca = None if tls_client_ca is None else Path(tls_client_ca).read_bytes()
    return grpc.ssl_server_credentials([(Path(tls_key).read_bytes(), Path(tls_cert).read_bytes())],
                                       root_certificates=client_ca, require_client_auth=client_ca is not None)


class ApiServer:
    """A bound, not yet serving gRPC server: binding first lets a bad address or certificate stop the
    controller before it serves OpenFlow."""

    def __init__(self, address: str = "127.0.0.1:50051", token: str | None = None, tls_cert: Path | None = None,
                 tls_key: Path | None = None, tls_client_ca: Path | None = None, insecure: bool = False,
                 workers: int = 16):
        host, _ = split_address(address)
        if tls_client_ca is not None and tls_cert is None:
            raise NdtError("--tls-client-ca needs --tls-cert and --tls-key (client certificates are checked over TLS)")
        self.warnings = exposure_warnings(host, token, tls_cert is not None, insecure)
        self.address, self.token_required = address, token is not None
        self.tls, self.mtls = tls_cert is not None, tls_client_ca is not None
        credentials = None if tls_cert is None else _credentials(tls_cert, tls_key, tls_client_ca)
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=workers), interceptors=[_Guard(token)])
        try:
            if credentials is None:
                self.port = self.server.add_insecure_port(address)
            else:
                self.port = self.server.add_secure_port(address, credentials)
        except RuntimeError:
            self.port = 0
        if self.port == 0:
            raise NdtError(f"gRPC: cannot listen on {address} (address in use, or not an address of this host)")

    def describe(self) -> list[str]:
        """What protects the API, for the log line: ', TLS', ', client certificates', ', bearer token'."""
        return [text for text, on in ((", TLS", self.tls), (", client certificates required", self.mtls),
                                      (", bearer token required", self.token_required)) if on]

    def start(self, service: NdtService) -> grpc.Server:
        services.add_NdtServicer_to_server(service, self.server)
        health_servicer = health.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(health_servicer, self.server)
        for name in ("", SERVICE_NAME):
            health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
        reflection.enable_server_reflection((SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), self.server)
        for warning in self.warnings:
            LOG.warning("%s", warning)
        self.server.start()
        return self.server


def serve(service: NdtService, address: str = "127.0.0.1:50051", **options) -> tuple[grpc.Server, int]:
    """Bind and start (non-blocking); returns the server and the bound port (``address`` may end in ``:0``).
    ``options`` are those of :class:`ApiServer`."""
    api = ApiServer(address, **options)
    return api.start(service), api.port
