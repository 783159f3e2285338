"""The gRPC API (``ndt.v1.Ndt`` in ``ndt_api.proto``), with server reflection and the standard health service.

Messages and stubs are generated from the .proto at install (``make install`` runs
grpcio-tools' protoc into ``controller/api/ndt_api_pb2*.py``).
Bad requests end with INVALID_ARGUMENT, NOT_FOUND or FAILED_PRECONDITION and a message naming
the field; the server keeps serving. Listens on localhost unless told otherwise; TLS and a
bearer token when configured (the health service stays open for probes).
"""

from __future__ import annotations

import math
import time
from concurrent import futures
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from telemetry.accuracy import delay_mape
from telemetry.exporter import Metrics
from telemetry.store import TelemetryStore
from telemetry.traffic_matrix import estimated_state
from twin.state.errors import NdtError
from twin.state.model import NetworkState

try:
    from controller.api import ndt_api_pb2 as pb
    from controller.api import ndt_api_pb2_grpc as services
except ModuleNotFoundError:
    raise NdtError("the gRPC code has not been generated from controller/api/ndt_api.proto: run 'make install'") from None
SERVICE_NAME = pb.DESCRIPTOR.services_by_name["Ndt"].full_name
APPLY_WAIT_S = 5.0
TRAFFIC_WINDOW_S = 10.0  # a measured traffic matrix older than this is not "the running network's"
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
                 default_model: str | None = None):
        """``predictor_factory(name)`` returns an object with ``predict_delays(states)`` (default:
        ``twin.models.registry.get_predictor``, whose last listed model is then the default)."""
        self.controller = controller
        self.store = store
        self.metrics = metrics
        if predictor_factory is None:
            from twin.models.registry import PREDICTORS
            from twin.models.registry import get_predictor as predictor_factory

            default_model = default_model or PREDICTORS[-1]
        self.predictor_factory = predictor_factory
        self.default_model = default_model

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
                         route_version=view.route_version, hosts=len(view.hosts), links_down=len(view.down),
                         last_switch_over_s=view.last_switch_over_s)

    def StreamTelemetry(self, request, context):
        interval = request.interval_s or 1.0
        if not (math.isfinite(interval) and interval >= 0.1):
            raise ApiError(grpc.StatusCode.INVALID_ARGUMENT, f"interval_s must be >= 0.1 s, got {interval}")
        while context.is_active():
            now = time.time()
            links = [pb.LinkStats(src=s.src, dst=s.dst, tx_bytes=s.tx_bytes, utilization=s.utilization or 0.0,
                                  has_utilization=s.utilization is not None) for s in self.store.latest_link_samples()]
            traffic = [pb.TrafficRate(src=s, dst=d, rate_bps=r) for (s, d), r in self._measured_traffic(now).items()]
            yield pb.Telemetry(ts=now, links=links, traffic=traffic, route_version=self.controller.route_version)
            time.sleep(interval)

    # ------------------------------------------------------------------ the twin
    def Predict(self, request, context):
        if request.state_json:
            try:
                state = NetworkState.from_dict(_json(request.state_json, "state_json"))
            except NdtError as exc:
                raise ApiError(grpc.StatusCode.INVALID_ARGUMENT, f"state_json: {exc}") from None
            if not state.flows:
                raise ApiError(grpc.StatusCode.INVALID_ARGUMENT, "state_json: the state has no traffic to predict")
        else:
            state = self._running_state()
        model, predictor = self._predictor(request.model)
        started = time.perf_counter()
        delays = self._predict(predictor, [state])[0]
        if not request.state_json:  # a prediction for the running network is telemetry too
            predicted = {(f.src, f.dst): float(d) for f, d in zip(state.flows, delays) if math.isfinite(d)}
            self.store.add_path_delays(time.time(), "predicted", predicted)
            self.metrics.set_path_delays("predicted", predicted)
        return pb.PredictReply(paths=_paths(state, delays), infer_s=time.perf_counter() - started, model=model)

    def WhatIf(self, request, context):
        before = self._running_state()
        after = before
        if request.weights:
            after = after.with_weights(self._weights(after, request.weights))
        if request.traffic_scale:
            if not (math.isfinite(request.traffic_scale) and request.traffic_scale > 0):
                raise ApiError(grpc.StatusCode.INVALID_ARGUMENT,
                               f"traffic_scale must be positive, got {request.traffic_scale}")
            after = after.scaled(request.traffic_scale)
        if request.failed_links:
            failed = set()
            for i, ref in enumerate(request.failed_links):
                if (ref.src, ref.dst) not in after.link_index:
                    raise ApiError(grpc.StatusCode.NOT_FOUND, f"failed_links[{i}]: link {ref.src}->{ref.dst} is not in the topology")
                failed |= {(ref.src, ref.dst), (ref.dst, ref.src)} & set(after.link_index)
            try:
                after = after.without_links(failed)
            except NdtError as exc:
                raise ApiError(grpc.StatusCode.FAILED_PRECONDITION, f"failed_links: {exc}") from None
        model, predictor = self._predictor(request.model)
        delays_before, delays_after = self._predict(predictor, [before, after])
        return pb.WhatIfReply(before=_paths(before, delays_before), after=_paths(after, delays_after), model=model)

    def Optimize(self, request, context):
        import yaml

        from optimizer.intent import parse_intent
        from optimizer.search import InfeasibleIntent, optimize
        from twin.state.metrics import mean_delay

        try:
            intent = parse_intent(yaml.safe_load(request.intent_yaml or "{}") or {})
        except yaml.YAMLError as exc:
            raise ApiError(grpc.StatusCode.INVALID_ARGUMENT, f"intent_yaml: not valid YAML ({exc})") from None
        except NdtError as exc:
            raise ApiError(grpc.StatusCode.INVALID_ARGUMENT, f"intent_yaml: {exc}") from None
        state = self._running_state()
        _, predictor = self._predictor(request.model)
        try:
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
        weights = {}
        for i, change in enumerate(request.weights):
            if (change.src, change.dst) not in view.state.link_index:
                raise ApiError(grpc.StatusCode.NOT_FOUND, f"weights[{i}]: link {change.src}->{change.dst} is not in the topology")
            if not (math.isfinite(change.weight) and change.weight > 0):
                raise ApiError(grpc.StatusCode.INVALID_ARGUMENT,
                               f"weights[{i}]: link {change.src}->{change.dst} weight must be positive, got {change.weight}")
            weights[(change.src, change.dst)] = change.weight
        config_id = self.controller.apply_weights(weights, who=request.who or f"gRPC {context.peer()}")
        version = self.controller.wait_for_routes(view.route_version, APPLY_WAIT_S)
        return pb.ApplyReply(config_id=config_id, route_version=version)

    def ReportMeasured(self, request, context):
        if not request.paths:
            raise ApiError(grpc.StatusCode.INVALID_ARGUMENT, "paths: give at least one measured path delay")
        nodes = set(self.controller.snapshot().state.nodes)
        measured = {}
        for i, path in enumerate(request.paths):
            for end in (path.src, path.dst):
                if end not in nodes:
                    raise ApiError(grpc.StatusCode.NOT_FOUND, f"paths[{i}]: node {end!r} is not in the topology")
            if not (math.isfinite(path.delay_s) and path.delay_s >= 0):
                raise ApiError(grpc.StatusCode.INVALID_ARGUMENT,
                               f"paths[{i}]: {path.src}->{path.dst} delay_s must be finite and >= 0, got {path.delay_s}")
            measured[(path.src, path.dst)] = path.delay_s
        now = time.time()
        self.store.add_path_delays(now, "measured", measured)
        self.metrics.set_path_delays("measured", measured)
        predicted = {(p.src, p.dst): p.value
                     for p in self.store.path_delays("predicted", now - PREDICTION_WINDOW_S, now + 1.0)}
        error = delay_mape(predicted, measured)
        if error is None:
            return pb.ReportReply(has_twin_error=False)
        self.metrics.set_gauge("twin_error_ratio", error)
        return pb.ReportReply(has_twin_error=True, twin_error_ratio=error)

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

    @staticmethod
    def _predict(predictor, states):
        try:
            return predictor.predict_delays(states)
        except NdtError as exc:
            raise ApiError(grpc.StatusCode.FAILED_PRECONDITION, f"prediction failed: {exc}") from None

    @staticmethod
    def _weights(state: NetworkState, changes) -> list[float]:
        current = {(lk.src, lk.dst): lk.weight for lk in state.links}
        for i, change in enumerate(changes):
            if (change.src, change.dst) not in current:
                raise ApiError(grpc.StatusCode.NOT_FOUND, f"weights[{i}]: link {change.src}->{change.dst} is not in the topology")
            if not (math.isfinite(change.weight) and change.weight > 0):
                raise ApiError(grpc.StatusCode.INVALID_ARGUMENT,
                               f"weights[{i}]: link {change.src}->{change.dst} weight must be positive, got {change.weight}")
            current[(change.src, change.dst)] = change.weight
        return [current[(lk.src, lk.dst)] for lk in state.links]


def _json(text: str, field: str):
    import json

    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ApiError(grpc.StatusCode.INVALID_ARGUMENT,
                       f"{field}: not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})") from None


def _paths(state: NetworkState, delays) -> list:
    return [pb.PathDelay(src=f.src, dst=f.dst, delay_s=float(d)) for f, d in zip(state.flows, delays)]


class _Guard(grpc.ServerInterceptor):
    """Turns ApiError into its status and any other exception into INTERNAL without a stack trace;
    checks the bearer token when one is configured (not for the health service)."""

    def __init__(self, token: str | None):
        self.token = token

    def intercept_service(self, continuation, details):
        handler = continuation(details)
        if handler is None or not details.method.startswith(f"/{SERVICE_NAME}/"):
            return handler
        metadata = dict(details.invocation_metadata or ())
        authorized = self.token is None or metadata.get("authorization") == f"Bearer {self.token}"

        def guard(behaviour, streaming: bool):
            def unary(request, context):
                _check(authorized, context)
                try:
                    return behaviour(request, context)
                except ApiError as exc:
                    context.abort(exc.code, str(exc))
                except NdtError as exc:
                    context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))

            def stream(request, context):
                _check(authorized, context)
                try:
                    yield from behaviour(request, context)
                except ApiError as exc:
                    context.abort(exc.code, str(exc))
                except NdtError as exc:
                    context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))

            return stream if streaming else unary

        if handler.unary_unary:
            return handler._replace(unary_unary=guard(handler.unary_unary, False))
        if handler.unary_stream:
            return handler._replace(unary_stream=guard(handler.unary_stream, True))
        return handler


def _check(authorized: bool, context) -> None:
    if not authorized:
        context.abort(grpc.StatusCode.UNAUTHENTICATED, "authorization: a valid 'Bearer <token>' is required")


def serve(service: NdtService, address: str = "127.0.0.1:50051", token: str | None = None,
          tls_cert: Path | None = None, tls_key: Path | None = None, workers: int = 8) -> tuple[grpc.Server, int]:
    """Start the server (non-blocking); returns it and the bound port (``address`` may end in ``:0``)."""
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=workers), interceptors=[_Guard(token)])
    services.add_NdtServicer_to_server(service, server)
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    for name in ("", SERVICE_NAME):
        health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    reflection.enable_server_reflection((SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), server)
    if tls_cert is not None:
        credentials = grpc.ssl_server_credentials([(Path(tls_key).read_bytes(), Path(tls_cert).read_bytes())])
        port = server.add_secure_port(address, credentials)
    else:
        port = server.add_insecure_port(address)
    if port == 0:
        raise NdtError(f"gRPC: cannot listen on {address}")
    server.start()
    return server, port
