"""The gRPC API over a real channel, against a stand-in controller (no switches): every RPC, the status
codes and messages of bad requests, health, reflection, the bearer token, and that it keeps serving."""

from __future__ import annotations

import json
import re
import time

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from controller.api.client import ControllerClient
from controller.api.server import NdtService, exposure_warnings, pb, serve, services
from controller.reported_delays import Mean
from telemetry.exporter import Metrics
from telemetry.store import LinkSample, TelemetryStore
from tests.api_stand_in import StandIn, square_state
from twin.state.model import NetworkState
from twin.models.registry import get_predictor
from twin.state.errors import NdtError


def service(controller=None) -> NdtService:
    return NdtService(controller or StandIn(), TelemetryStore(), Metrics(), get_predictor, "qt")


@pytest.fixture(scope="module")
def api():
    controller, store, metrics = StandIn(), TelemetryStore(), Metrics()
    store.add_link_samples([LinkSample(1e12, "s1", "s2", 1000, 10, 0, 0.5)])
    server, port = serve(NdtService(controller, store, metrics, get_predictor, "qt"), "127.0.0.1:0")
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    yield services.NdtStub(channel), channel, controller, metrics
    channel.close()
    server.stop(None)


def error(call, *args) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as info:
        call(*args)
    return info.value.code(), info.value.details()


def test_topology_and_status(api):
    stub, *_ = api
    topo = stub.GetTopology(pb.Empty())
    assert list(topo.nodes) == ["s1", "s2", "s3", "s4"] and len(topo.links) == 10 and topo.route_version == 7
    s12 = next(lk for lk in topo.links if (lk.src, lk.dst) == ("s1", "s2"))
    assert (s12.port, s12.up, s12.capacity_bps) == (2, True, 1e7)
    assert not next(lk for lk in topo.links if (lk.src, lk.dst) == ("s3", "s4")).up
    assert topo.hosts[0].ip == "10.0.0.1"
    status = stub.GetStatus(pb.Empty())
    assert (status.switches_connected, status.switches_total, status.links_down, status.hosts) == (4, 4, 2, 1)


def test_predict_and_what_if(api):
    stub, *_ = api
    reply = stub.Predict(pb.PredictRequest(state_json=json.dumps(square_state().to_dict()), model="qt"))
    assert [(p.src, p.dst) for p in reply.paths] == [("s1", "s3"), ("s2", "s4")]
    assert all(p.delay_s > 0 for p in reply.paths) and reply.model == "qt"
    running = stub.Predict(pb.PredictRequest())  # the running network: s3-s4 is down
    assert len(running.paths) == 2
    assert api[3]._delays["predicted"][("s1", "s3")] == running.paths[0].delay_s  # exported as telemetry
    what = stub.WhatIf(pb.WhatIfRequest(traffic_scale=3.0, failed_links=[pb.LinkRef(src="s1", dst="s2")]))
    assert what.after[0].delay_s > what.before[0].delay_s


def test_get_state_and_what_if_with_a_failed_node(api):
    stub, *_ = api
    running = NetworkState.from_dict(json.loads(stub.GetState(pb.Empty()).state_json))
    assert ("s3", "s4") not in running.link_index and len(running.flows) == 2  # the link out of service is gone
    what = stub.WhatIf(pb.WhatIfRequest(failed_nodes=["s2"], model="qt"))
    assert [(p.src, p.dst) for p in what.after] == [("s1", "s3")]  # s2's own demand leaves with it
    code, details = error(stub.WhatIf, pb.WhatIfRequest(failed_nodes=["s9"]))
    assert code == grpc.StatusCode.NOT_FOUND and "failed_nodes[0]: 's9' is not a node" in details


def test_optimize_and_apply(api):
    stub, _, controller, metrics = api
    intent = "objective: {minimize: max_utilization}\nsearch: {max_evaluations: 40}\n"
    reply = stub.Optimize(pb.OptimizeRequest(intent_yaml=intent, seed=1))
    assert len(reply.weights) == 8 and reply.feasible  # the links in service (s3-s4 is down)
    assert metrics._counters["optimizer_runs"] == 1
    applied = stub.Apply(pb.ApplyRequest(weights=[pb.WeightChange(src="s1", dst="s2", weight=5)], who="test"))
    assert (applied.config_id, applied.route_version) == (42, 8)
    assert controller.applied[-1] == ({("s1", "s2"): 5.0}, "test")


def test_report_measured_delays_sets_the_twin_error(api):
    stub, _, _, metrics = api
    predicted = {(p.src, p.dst): p.delay_s for p in stub.Predict(pb.PredictRequest()).paths}
    measured = [pb.PathDelay(src=s, dst=d, delay_s=1.25 * v) for (s, d), v in predicted.items()]
    reply = stub.ReportMeasured(pb.MeasuredDelays(paths=measured, source="pytest"))
    assert reply.has_twin_error and reply.twin_error_ratio == pytest.approx(0.2)
    assert metrics._gauges["twin_error_ratio"] == pytest.approx(0.2)
    assert metrics._delays["measured"][("s1", "s3")] == measured[0].delay_s


@pytest.mark.parametrize("start, end, words", [
    (10.0, 5.0, "the window must be Unix seconds with start < end"),
    (1000.0, 1010.0, "not before 3600 s ago"),
    (time.time(), 4e9, "must end by now"),
    (1.0, time.time(), "last at most 3600 s"),
])
def test_a_report_with_a_bad_window_is_refused_and_changes_nothing(start, end, words):
    controller, store = StandIn(), TelemetryStore()
    server, port = serve(NdtService(controller, store, Metrics(), get_predictor, "qt"), "127.0.0.1:0")
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            code, details = error(services.NdtStub(channel).ReportMeasured, pb.MeasuredDelays(
                paths=[pb.PathDelay(src="s1", dst="s2", delay_s=0.1)], start=start, end=end))
        assert code == grpc.StatusCode.INVALID_ARGUMENT and words in details, details
        assert store.path_delays("measured", 0, 5e9) == [] and controller.reported_delays.means(0, 5e9) == {}
    finally:
        server.stop(None)


def test_reported_delays_with_their_window_reach_the_closed_loop_and_the_store():
    controller, store = StandIn(), TelemetryStore()
    server, port = serve(NdtService(controller, store, Metrics(), get_predictor, "qt"), "127.0.0.1:0")
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            now = time.time()
            measured = [pb.PathDelay(src="s1", dst="s3", delay_s=0.004, samples=250),
                        pb.PathDelay(src="s2", dst="s4", delay_s=0.002)]
            services.NdtStub(channel).ReportMeasured(pb.MeasuredDelays(paths=measured, source="pytest",
                                                                       start=now - 10, end=now))
    finally:
        server.stop(None)
    assert controller.reported_delays.means(now - 11, now) == {("s1", "s3"): Mean(0.004, 250), ("s2", "s4"): Mean(0.002, 0)}
    assert controller.reported_delays.means(now - 5, now) == {}  # the report covers more than that span
    stored = {(p.src, p.dst): (p.ts, p.samples) for p in store.path_delays("measured", now - 11, now + 1)}
    assert stored == {("s1", "s3"): (pytest.approx(now), 250), ("s2", "s4"): (pytest.approx(now), None)}  # at its end


def test_stream_telemetry(api):
    stub, *_ = api
    stream = stub.StreamTelemetry(pb.StreamRequest(interval_s=0.1))
    first, second = next(stream), next(stream)
    stream.cancel()
    assert second.ts > first.ts and first.links[0].tx_bytes == 1000 and first.links[0].has_utilization


@pytest.mark.parametrize("rpc, request_, code, words", [
    ("Predict", pb.PredictRequest(state_json="{nope"), grpc.StatusCode.INVALID_ARGUMENT, "state_json: not valid JSON"),
    ("Predict", pb.PredictRequest(state_json='{"nodes": ["a"], "links": [], "bogus": 1}'),
     grpc.StatusCode.INVALID_ARGUMENT, "state_json: unknown top-level field 'bogus'"),
    ("Predict", pb.PredictRequest(model="oracle"), grpc.StatusCode.INVALID_ARGUMENT, "model: unknown model 'oracle'"),
    ("WhatIf", pb.WhatIfRequest(failed_links=[pb.LinkRef(src="s1", dst="s9")]), grpc.StatusCode.NOT_FOUND,
     "failed_links[0]: link s1->s9"),
    ("WhatIf", pb.WhatIfRequest(traffic_scale=-1), grpc.StatusCode.INVALID_ARGUMENT, "traffic_scale"),
    ("WhatIf", pb.WhatIfRequest(failed_links=[pb.LinkRef(src="s1", dst="s3"), pb.LinkRef(src="s2", dst="s3")]),
     grpc.StatusCode.FAILED_PRECONDITION, "disconnects the demand"),
    ("Apply", pb.ApplyRequest(), grpc.StatusCode.INVALID_ARGUMENT, "weights: give at least one"),
    ("Apply", pb.ApplyRequest(weights=[pb.WeightChange(src="s2", dst="s4", weight=1)]), grpc.StatusCode.NOT_FOUND,
     "weights[0]: link s2->s4"),
    ("Apply", pb.ApplyRequest(weights=[pb.WeightChange(src="s1", dst="s2", weight=-2)]),
     grpc.StatusCode.INVALID_ARGUMENT, "weights[0]: link s1->s2 weight must be a whole number from 1 to 65535"),
    ("ReportMeasured", pb.MeasuredDelays(), grpc.StatusCode.INVALID_ARGUMENT, "paths: give at least one"),
    ("ReportMeasured", pb.MeasuredDelays(paths=[pb.PathDelay(src="s1", dst="s7", delay_s=0.1)]),
     grpc.StatusCode.NOT_FOUND, "paths[0]: node 's7'"),
    ("ReportMeasured", pb.MeasuredDelays(paths=[pb.PathDelay(src="s1", dst="s2", delay_s=float("nan"))]),
     grpc.StatusCode.INVALID_ARGUMENT, "paths[0]: s1->s2 delay_s must be finite"),
    ("Optimize", pb.OptimizeRequest(intent_yaml="objective: [oops"), grpc.StatusCode.INVALID_ARGUMENT, "not valid YAML"),
    ("Optimize", pb.OptimizeRequest(intent_yaml="objective: {minimize: happiness}"), grpc.StatusCode.INVALID_ARGUMENT,
     "happiness"),
])
def test_bad_requests_name_the_field_and_the_server_keeps_serving(api, rpc, request_, code, words):
    stub, *_ = api
    got_code, details = error(getattr(stub, rpc), request_)
    assert got_code == code and words in details, details
    assert "Traceback" not in details
    assert stub.GetStatus(pb.Empty()).switches_total == 4


def test_bad_stream_interval(api):
    stub, *_ = api
    code, details = error(lambda r: next(stub.StreamTelemetry(r)), pb.StreamRequest(interval_s=0.01))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "interval_s" in details


def test_health_and_reflection(api):
    _, channel, *_ = api
    health = health_pb2_grpc.HealthStub(channel)
    assert health.Check(health_pb2.HealthCheckRequest(service="ndt.v1.Ndt")).status == health_pb2.HealthCheckResponse.SERVING
    refl = reflection_pb2_grpc.ServerReflectionStub(channel)
    replies = refl.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]))
    names = {s.name for s in next(replies).list_services_response.service}
    assert {"ndt.v1.Ndt", "grpc.health.v1.Health"} <= names


def test_bearer_token():
    server, port = serve(service(), "127.0.0.1:0", token="s3cret")
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = services.NdtStub(channel)
            code, details = error(stub.GetStatus, pb.Empty())
            assert code == grpc.StatusCode.UNAUTHENTICATED and "Bearer" in details
            wrong = error(lambda r: stub.GetStatus(r, metadata=[("authorization", "Bearer nope")]), pb.Empty())
            assert wrong[0] == grpc.StatusCode.UNAUTHENTICATED
            assert stub.GetStatus(pb.Empty(), metadata=[("authorization", "Bearer s3cret")]).switches_total == 4
            health = health_pb2_grpc.HealthStub(channel)
            assert health.Check(health_pb2.HealthCheckRequest()).status == health_pb2.HealthCheckResponse.SERVING
        client = ControllerClient(f"127.0.0.1:{port}", ready_s=5, token="s3cret")
        assert client.status().switches_total == 4 and client.weights()
        stream = client.stub.StreamTelemetry(pb.StreamRequest(interval_s=0.5))  # a unary-stream call carries it too
        assert next(stream).ts > 0
        stream.cancel()
        client.close()
        stranger = ControllerClient(f"127.0.0.1:{port}", ready_s=5, token="nope")
        with pytest.raises(grpc.RpcError) as refused:
            stranger.status()
        assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
        with pytest.raises(grpc.RpcError) as refused:
            next(stranger.stub.StreamTelemetry(pb.StreamRequest(interval_s=0.5)))
        assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
        stranger.close()
    finally:
        server.stop(None)


def self_signed(tmp_path, name: str) -> tuple[bytes, bytes]:
    """A self-signed certificate for localhost (it is its own CA) and its key, PEM, also written to tmp_path."""
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now)
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_pem = cert.public_bytes(serialization.Encoding.PEM)
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    (tmp_path / f"{name}.pem").write_bytes(cert_pem)
    (tmp_path / f"{name}-key.pem").write_bytes(key_pem)
    return cert_pem, key_pem


def test_tls(tmp_path):
    cert_pem, _ = self_signed(tmp_path, "server")
    server, port = serve(service(), "127.0.0.1:0", tls_cert=tmp_path / "server.pem", tls_key=tmp_path / "server-key.pem")
    try:
        credentials = grpc.ssl_channel_credentials(root_certificates=cert_pem)
        with grpc.secure_channel(f"localhost:{port}", credentials) as channel:
            assert services.NdtStub(channel).GetStatus(pb.Empty(), timeout=5).switches_total == 4
        with grpc.insecure_channel(f"127.0.0.1:{port}") as plain:
            with pytest.raises(grpc.RpcError):
                services.NdtStub(plain).GetStatus(pb.Empty(), timeout=2)
    finally:
        server.stop(None)


def test_mutual_tls_admits_only_clients_with_a_certificate_from_the_ca(tmp_path):
    server_pem, _ = self_signed(tmp_path, "server")
    client_pem, client_key = self_signed(tmp_path, "client")
    stranger_pem, stranger_key = self_signed(tmp_path, "stranger")
    server, port = serve(service(), "127.0.0.1:0", tls_cert=tmp_path / "server.pem",
                         tls_key=tmp_path / "server-key.pem", tls_client_ca=tmp_path / "client.pem")
    try:
        def status(chain=None, key=None):
            credentials = grpc.ssl_channel_credentials(server_pem, private_key=key, certificate_chain=chain)
            with grpc.secure_channel(f"localhost:{port}", credentials) as channel:
                return services.NdtStub(channel).GetStatus(pb.Empty(), timeout=3).switches_total

        assert status(client_pem, client_key) == 4
        for chain, key in ((None, None), (stranger_pem, stranger_key)):
            with pytest.raises(grpc.RpcError):
                status(chain, key)
        client = ControllerClient(f"localhost:{port}", ready_s=5, tls_ca=tmp_path / "server.pem",
                                  tls_cert=tmp_path / "client.pem", tls_key=tmp_path / "client-key.pem")
        assert client.status().switches_total == 4
        client.close()
    finally:
        server.stop(None)


def test_bad_tls_material_is_refused_before_serving(tmp_path):
    (tmp_path / "junk.pem").write_text("not a certificate")
    self_signed(tmp_path, "server")
    with pytest.raises(NdtError, match="not a PEM certificate and its private key"):
        serve(service(), "127.0.0.1:0", tls_cert=tmp_path / "junk.pem", tls_key=tmp_path / "junk.pem")
    with pytest.raises(NdtError, match="--tls-client-ca .*not a PEM CA certificate"):
        serve(service(), "127.0.0.1:0", tls_cert=tmp_path / "server.pem", tls_key=tmp_path / "server-key.pem",
              tls_client_ca=tmp_path / "junk.pem")


@pytest.mark.parametrize("request_, code, words", [
    (pb.ApplyRequest(weights=[pb.WeightChange(src="s1", dst="s2", weight=70000)]), grpc.StatusCode.INVALID_ARGUMENT,
     "weight must be a whole number from 1 to 65535, got 70000"),
    (pb.ApplyRequest(weights=[pb.WeightChange(src="s1", dst="s2", weight=2.5)]), grpc.StatusCode.INVALID_ARGUMENT,
     "got 2.5"),
    (pb.ApplyRequest(weights=[pb.WeightChange(src="s1", dst="s2", weight=3)], who="ops\nFORGED log line"),
     grpc.StatusCode.INVALID_ARGUMENT, "who: at most 64 printable characters"),
    (pb.MeasuredDelays(paths=[pb.PathDelay(src="s1", dst="s1", delay_s=0.1)]), grpc.StatusCode.INVALID_ARGUMENT,
     "src and dst are the same node"),
    (pb.MeasuredDelays(paths=[pb.PathDelay(src="s1", dst="s2", delay_s=1e300)]), grpc.StatusCode.INVALID_ARGUMENT,
     "<= 60 s"),
    (pb.WhatIfRequest(traffic_scale=1e300), grpc.StatusCode.INVALID_ARGUMENT, "traffic_scale must be > 0 and <= 100"),
    (pb.PredictRequest(state_json="[" * 100_000 + "]" * 100_000), grpc.StatusCode.INVALID_ARGUMENT,
     "state_json: JSON nested too deeply"),
    (pb.PredictRequest(state_json='{"nodes": [' + "9" * 5000 + "]}"), grpc.StatusCode.INVALID_ARGUMENT,
     "state_json: JSON holds an integer of more than 4,300 digits"),
    (pb.OptimizeRequest(intent_yaml="a: &x [1, 2]\nb: *x\n"), grpc.StatusCode.INVALID_ARGUMENT, "aliases"),
])
def test_out_of_range_requests_are_refused_and_nothing_is_applied(api, request_, code, words):
    stub, _, controller, _ = api
    applied = len(controller.applied)
    rpc = {pb.ApplyRequest: stub.Apply, pb.MeasuredDelays: stub.ReportMeasured, pb.WhatIfRequest: stub.WhatIf,
           pb.PredictRequest: stub.Predict, pb.OptimizeRequest: stub.Optimize}[type(request_)]
    got_code, details = error(rpc, request_)
    assert got_code == code and words in details, details
    assert len(controller.applied) == applied


def test_a_state_larger_than_the_bound_is_refused_before_prediction():
    server, port = serve(NdtService(StandIn(), TelemetryStore(), Metrics(), get_predictor, "qt", max_flows=1),
                         "127.0.0.1:0")
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            code, details = error(services.NdtStub(channel).Predict,
                                  pb.PredictRequest(state_json=json.dumps(square_state().to_dict())))
        assert code == grpc.StatusCode.RESOURCE_EXHAUSTED and "2 flows" in details and "--max-predict-flows" in details
    finally:
        server.stop(None)


class Broken(StandIn):
    def snapshot(self):
        raise KeyError("secret internals")


def test_an_unexpected_failure_is_internal_and_leaks_nothing():
    server, port = serve(service(Broken()), "127.0.0.1:0")
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            code, details = error(services.NdtStub(channel).GetStatus, pb.Empty())
        assert code == grpc.StatusCode.INTERNAL and "secret" not in details and "GetStatus" in details
    finally:
        server.stop(None)


def test_64_abusive_streams_leave_health_status_and_apply_answering():
    """Streams beyond the budget end at once with RESOURCE_EXHAUSTED; those admitted hold a worker, yet
    health, GetStatus and Apply still answer; a cancelled stream frees its slot at once."""
    controller = StandIn()
    server, port = serve(NdtService(controller, TelemetryStore(), Metrics(), get_predictor, "qt", max_streams=4),
                         "127.0.0.1:0")
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = services.NdtStub(channel)
            streams = [stub.StreamTelemetry(pb.StreamRequest(interval_s=60)) for _ in range(64)]
            outcomes = []
            for stream in streams:
                try:
                    next(stream)
                    outcomes.append("open")
                except grpc.RpcError as exc:
                    outcomes.append(exc.code())
            assert outcomes.count("open") == 4
            assert outcomes.count(grpc.StatusCode.RESOURCE_EXHAUSTED) == 60
            health = health_pb2_grpc.HealthStub(channel)
            assert health.Check(health_pb2.HealthCheckRequest(), timeout=1).status == health_pb2.HealthCheckResponse.SERVING
            assert stub.GetStatus(pb.Empty(), timeout=1).switches_total == 4
            stub.Apply(pb.ApplyRequest(weights=[pb.WeightChange(src="s1", dst="s2", weight=3)]), timeout=1)
            for stream in streams:
                stream.cancel()
            again = stub.StreamTelemetry(pb.StreamRequest(interval_s=60))
            for _ in range(50):  # the server learns of the cancellations within moments
                try:
                    next(again)
                    break
                except grpc.RpcError:
                    time.sleep(0.1)
                    again = stub.StreamTelemetry(pb.StreamRequest(interval_s=60))
            else:
                pytest.fail("cancelled streams kept their slots")
            again.cancel()
    finally:
        server.stop(None)


@pytest.mark.parametrize("host, token, tls, insecure, outcome", [
    ("127.0.0.1", None, False, False, []),
    ("::1", "t", True, False, []),
    ("127.0.0.1", "t", False, False, ["clear text"]),
    ("0.0.0.0", None, False, False, "needs a bearer token (NDT_API_TOKEN) and TLS"),
    ("0.0.0.0", "t", False, False, "needs a TLS"),
    ("0.0.0.0", "t", True, False, []),
    ("0.0.0.0", None, False, True, ["--insecure: the API on 0.0.0.0 has no bearer token and no TLS"]),
])
def test_beyond_loopback_the_api_needs_a_token_and_tls_or_an_explicit_insecure(host, token, tls, insecure, outcome):
    if isinstance(outcome, str):
        with pytest.raises(NdtError, match=re.escape(outcome)):
            exposure_warnings(host, token, tls, insecure)
    else:
        warnings = exposure_warnings(host, token, tls, insecure)
        assert len(warnings) == len(outcome) and all(w in got for w, got in zip(outcome, warnings))
