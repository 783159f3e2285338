"""Anomaly detection in the controller's service: windows judged against the twin with the
correction fixed at its start, a slowed link found and named, the records (store, Prometheus), gRPC
ListAnomalies and its refusals, and the watch-only service that never runs the loop."""

from __future__ import annotations

import json
import threading
import time

import grpc
import numpy as np
import pytest

from analysis.anomaly import AnomalyDetector, DetectorSettings, LinkLoad, Observation
from controller.api import ndt_api_pb2 as pb
from controller.api import ndt_api_pb2_grpc as services
from controller.api.server import NdtService, serve
from controller.loop.service import ANOMALY_KIND, LoopService, ServiceSettings
from controller.probes import PathStat
from telemetry.exporter import Metrics
from telemetry.store import LinkSample, TelemetryStore
from tests.unit.test_loop_service import QT, StandInController, square
from twin.calibration.correction import CalibratedPredictor, Correction


class SlowableProbes:
    """The stand-in's probes: the queueing model's delay × 1.2 (the twin's residual on this
    network), plus ``extra`` s on every path crossing ``slow_link``; six probes a path, 3 % error."""

    def __init__(self, controller):
        self.controller = controller
        self.slow_link, self.extra = None, 0.0
        self.rng = np.random.default_rng(0)
        self.asked_pooled, self.asked_edge = [], []

    def delays(self, start, end, min_samples=3, host_edge=True):
        return {pair: stat.mean for pair, stat in self._stats().items()}

    def noise(self, start, end, min_samples=3):
        return 0.03

    def stats(self, start, end, min_samples=3, robust=False, pooled=True, host_edge=True):
        self.asked_pooled.append(pooled)
        self.asked_edge.append(host_edge)
        return self._stats()

    def _stats(self):
        routed = self.controller.state.with_flows(self.controller.traffic.flows)
        delays = CalibratedPredictor(QT, Correction()).predict_delays([routed])[0] * 1.2
        names = [(lk.src, lk.dst) for lk in routed.links]
        out = {}
        for i, (flow, delay) in enumerate(zip(routed.flows, delays)):
            crossed = {names[k] for k in routed.routes.links[i]}
            mean = delay + (self.extra if self.slow_link in crossed else 0.0)
            out[(flow.src, flow.dst)] = PathStat(float(mean * (1 + self.rng.normal(0, 0.03))), 6, float(0.03 * mean))
        return out


def watching(optimize=False):
    """A service over the stand-in that only watches, its clock advanced by hand (s)."""
    controller = StandInController(square(rate=1.0e6))
    controller.path_delays = SlowableProbes(controller)
    store, metrics = TelemetryStore(), Metrics()
    now = [1000.0]
    settings = ServiceSettings(window_s=10.0, anomaly_window_s=10.0, check_s=0.01, optimize=optimize,
                               anomaly=DetectorSettings(reference_windows=3, persistence=2))
    start = time.time()
    loop = LoopService(controller, store, metrics, lambda: (QT, Correction()), settings, clock=lambda: now[0],
                       wall=lambda: start + now[0])
    loop.predictor, prior = loop._twin()
    loop.calibration.set_prior(prior)
    loop._last_change = -1000.0
    return loop, controller, store, metrics, now


class PortCounters:
    """The stand-in's port counters: each link carries what the traffic matrix puts on it, plus
    ``extra`` bit/s on ``link`` (an unannounced flow); with ``packets``, also the packets (1,000 bytes)
    its route rules offered to it and its port transmitted, ``lost`` of them not on ``lossy``."""

    def __init__(self, packets: bool = False):
        self.sent: dict[tuple[str, str], float] = {}  # bytes so far
        self.offered: dict[tuple[str, str], float] = {}  # bytes offered so far
        self.link, self.extra, self.packets = None, 0.0, packets
        self.lossy, self.lost = None, 0.0

    def sample(self, store, controller, wall: float, seconds: float) -> None:
        routed = controller.state.with_flows(controller.traffic.flows)
        samples, offered = [], {}
        for lk, load in zip(routed.links, routed.link_loads()):
            pair = (lk.src, lk.dst)
            rate = load + (self.extra if pair == self.link else 0.0)
            self.offered[pair] = self.offered.get(pair, 0.0) + rate * seconds / 8.0
            self.sent[pair] = self.sent.get(pair, 0.0) + rate * seconds / 8.0 * (
                1.0 - (self.lost if pair == self.lossy else 0.0))
            offered[pair] = int(self.offered[pair] / 1000)
            samples.append(LinkSample(wall, lk.src, lk.dst, int(self.sent[pair]),
                                      int(self.sent[pair] / 1000) if self.packets else None, None, None))
        store.add_link_samples(samples)
        if self.packets:
            store.add_offered_packets(wall, offered)


def window(loop, store, controller, now, counters=None) -> object:
    """Ten more seconds: traffic (and, with ``counters``, port counters) in the store up to now,
    the calibration's window, one detection."""
    now[0] += 10.0
    wall = loop.wall()
    for ago, seconds in ((9.0, 1.0), (0.5, 8.5)):
        store.add_traffic_matrix(wall - ago, {(f.src, f.dst): f.rate for f in controller.traffic.flows})
        if counters is not None:
            counters.sample(store, controller, wall - ago, seconds)
    loop.observe()
    return loop.detect()


def test_a_slowed_link_is_flagged_after_persistence_windows_and_named_first():
    loop, controller, store, metrics, now = watching()
    assert window(loop, store, controller, now) is None  # the calibration has no window yet: nothing fixed
    assert metrics._gauges["anomaly_learning"] == 1.0
    verdicts = [window(loop, store, controller, now) for _ in range(5)]
    assert loop._detection_correction is not None
    assert [v.learning for v in verdicts if v is not None][:3] == [True, True, True]
    assert not verdicts[-1].learning and not verdicts[-1].anomalies  # a twin 20 % low is this network's normal
    controller.path_delays.slow_link, controller.path_delays.extra = ("s1", "s2"), 2e-3
    first = window(loop, store, controller, now)
    assert not first.anomalies and all(p.side == 1 for p in first.paths)
    second = window(loop, store, controller, now)
    assert {(p.src, p.dst) for p in second.anomalies} == {("s1", "s2"), ("s1", "s3")}
    assert (second.suspects[0].src, second.suspects[0].dst, second.suspects[0].score) == ("s1", "s2", 1.0)
    assert second.anomalies[0].links and second.anomalies[0].hi_s < second.anomalies[0].measured_s
    assert metrics._gauges["anomaly_paths"] == 2 and metrics._counters["anomalies"] == 2
    assert metrics._suspects[("s1", "s2")] == 1.0 and metrics._gauges["anomaly_learning"] == 0.0
    records = [c for c in store.configs(0, loop.wall() + 1) if c.kind == ANOMALY_KIND]
    assert len(records) == 1 and {(p["src"], p["dst"]) for p in records[0].payload["anomalous"]} == {
        ("s1", "s2"), ("s1", "s3")}
    assert records[0].payload["suspects"][0]["src"] == "s1"
    controller.path_delays.extra = 0.0
    cleared = window(loop, store, controller, now)
    assert not cleared.anomalies and metrics._gauges["anomaly_paths"] == 0 and not metrics._suspects
    records = [c for c in store.configs(0, loop.wall() + 1) if c.kind == ANOMALY_KIND]
    assert len(records) == 2 and records[1].payload["cleared"] == ["s1->s2", "s1->s3"]
    assert controller.path_delays.asked_pooled and not any(controller.path_delays.asked_pooled)  # own probes
    # anomaly detection's own probes, raw: a refit of the hosts' edge would move every path at once
    assert not any(controller.path_delays.asked_edge)


def test_every_judged_window_is_logged_for_replay(tmp_path):
    loop, controller, store, _, now = watching()
    loop.settings.anomaly_log = tmp_path / "anomaly.jsonl"
    counters = PortCounters()
    judged = [v for v in (window(loop, store, controller, now, counters) for _ in range(7)) if v is not None]
    lines = [json.loads(line) for line in loop.settings.anomaly_log.read_text().splitlines()]
    assert [line["ts"] for line in lines] == [v.ts for v in judged]
    assert all(len(line["loads"]) == len(controller.state.links) for line in lines[1:])
    replayed = AnomalyDetector(loop.settings.anomaly)
    for line in lines:
        observations = [Observation(**{**o, "links": tuple(map(tuple, o["links"]))}) for o in line["observations"]]
        verdict = replayed.judge(line["ts"], observations, [LinkLoad(**lk) for lk in line["loads"]])
    assert [(p.src, p.dst, p.lo_s, p.hi_s) for p in verdict.paths] == [(p.src, p.dst, p.lo_s, p.hi_s)
                                                                       for p in judged[-1].paths]
    assert verdict.links and [(lk.src, lk.dst, lk.lo_bps, lk.hi_bps) for lk in verdict.links] == [
        (lk.src, lk.dst, lk.lo_bps, lk.hi_bps) for lk in judged[-1].links]


def test_a_routing_change_in_most_of_the_window_is_not_judged():
    loop, controller, store, _, now = watching()
    for _ in range(5):
        window(loop, store, controller, now)
    loop._last_change = now[0] + 5.0  # changed 5 s before the next window ends
    assert window(loop, store, controller, now) is None


def test_a_partitioned_network_is_not_judged():
    loop, controller, store, _, now = watching()
    for _ in range(5):
        window(loop, store, controller, now)
    controller.down = frozenset({("s1", "s2"), ("s1", "s4")})  # s1's traffic has no way out
    now[0] += 10.0
    store.add_traffic_matrix(loop.wall(), {(f.src, f.dst): f.rate for f in controller.traffic.flows})
    assert loop.detect() is None


def test_the_watching_service_detects_and_never_runs_the_loop():
    loop, controller, store, _, now = watching()
    loop.settings.anomaly_window_s = loop.settings.window_s = 0.5
    loop._detected_at = -np.inf
    real = time.monotonic
    loop.clock, loop.wall = real, time.time
    thread = threading.Thread(target=loop.serve, daemon=True)
    thread.start()
    deadline = real() + 20
    while (loop.anomalies is None or loop.anomalies.learning) and real() < deadline:
        store.add_traffic_matrix(time.time(), {(f.src, f.dst): f.rate for f in controller.traffic.flows})
        time.sleep(0.05)
    loop.stop()
    thread.join(5)
    assert loop.anomalies is not None and not loop.anomalies.learning
    assert loop.runs == 0 and controller.applied == []


@pytest.fixture
def api():
    loop, controller, store, metrics, now = watching()
    server, port = serve(NdtService(controller, store, metrics, predictor_factory=lambda name: QT,
                                    default_model="qt", loop=loop), "127.0.0.1:0")
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    yield services.NdtStub(channel), loop, controller, store, now
    channel.close()
    server.stop(0)


def test_grpc_lists_the_anomalies_with_the_suspects_ranked(api):
    stub, loop, controller, store, now = api
    reply = stub.ListAnomalies(pb.AnomaliesRequest(), timeout=5)
    assert reply.enabled and reply.learning and not reply.paths
    for _ in range(5):
        window(loop, store, controller, now)
    controller.path_delays.slow_link, controller.path_delays.extra = ("s1", "s2"), 2e-3
    for _ in range(2):
        window(loop, store, controller, now)
    reply = stub.ListAnomalies(pb.AnomaliesRequest(max_suspects=1), timeout=5)
    assert reply.enabled and not reply.learning and reply.paths_judged == 2 and reply.window_ts > 0
    assert {(p.src, p.dst) for p in reply.paths} == {("s1", "s2"), ("s1", "s3")}
    path = next(p for p in reply.paths if p.dst == "s3")
    assert path.direction == "slower" and path.windows == 2 and path.since > 0 and path.measured_s > path.hi_s
    assert [(lk.src, lk.dst) for lk in path.links] == [("s1", "s2"), ("s2", "s3")]
    assert [(s.src, s.dst, s.score, s.anomalous_paths) for s in reply.suspects] == [("s1", "s2", 1.0, 2)]
    assert len(stub.ListAnomalies(pb.AnomaliesRequest(), timeout=5).suspects) == 2
    assert not stub.GetLoopStatus(pb.Empty(), timeout=5).enabled  # watching only: no loop to steer
    with pytest.raises(grpc.RpcError) as refused:
        stub.ControlLoop(pb.LoopControl(action=pb.LoopControl.RUN_NOW), timeout=5)
    assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION and "--intent" in refused.value.details()
    with pytest.raises(grpc.RpcError) as bad:
        stub.ListAnomalies(pb.AnomaliesRequest(max_suspects=101), timeout=5)
    assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "max_suspects" in bad.value.details()


def test_a_link_carrying_traffic_the_matrix_does_not_see_is_listed_with_its_load(api):
    """Port counters show 0.3 × capacity more on s2->s3 than the traffic matrix puts there: listed
    after two windows on gRPC, in Prometheus and in the store's history, and first among the suspects."""
    stub, loop, controller, store, now = api
    counters = PortCounters()
    for _ in range(7):
        window(loop, store, controller, now, counters)
    assert not loop.anomalies.learning and not loop.anomalies.anomalous
    capacity = controller.state.links[controller.state.link_index[("s2", "s3")]].capacity
    counters.link, counters.extra = ("s2", "s3"), 0.3 * capacity
    assert not window(loop, store, controller, now, counters).link_anomalies
    verdict = window(loop, store, controller, now, counters)
    assert [(lk.src, lk.dst) for lk in verdict.link_anomalies] == [("s2", "s3")] and not verdict.anomalies
    reply = stub.ListAnomalies(pb.AnomaliesRequest(), timeout=5)
    assert not reply.paths and [(lk.src, lk.dst, lk.direction, lk.windows) for lk in reply.links] == [
        ("s2", "s3", "more", 2)]
    link = reply.links[0]
    assert link.measured_bps == pytest.approx(link.expected_bps + 0.3 * capacity, rel=0.01)
    assert link.measured_bps > link.hi_bps
    assert (reply.suspects[0].src, reply.suspects[0].dst) == ("s2", "s3")
    assert reply.suspects[0].load_deviation == pytest.approx(0.3, abs=0.01)
    metrics = loop.metrics
    assert metrics._gauges["anomaly_links"] == 1 and metrics._counters["link_anomalies"] == 1
    assert metrics._load_deviations[("s2", "s3")] == pytest.approx(0.3, abs=0.01)
    records = [c for c in store.configs(0, loop.wall() + 1) if c.kind == ANOMALY_KIND]
    assert [(lk["src"], lk["dst"]) for lk in records[-1].payload["anomalous_links"]] == [("s2", "s3")]
    counters.extra = 0.0
    assert not window(loop, store, controller, now, counters).anomalous
    assert metrics._gauges["anomaly_links"] == 0
    assert store.configs(0, loop.wall() + 1)[-1].payload["cleared_links"] == ["s2->s3"]


def test_a_link_losing_packets_is_listed_as_lost_with_its_share(api):
    """s2->s3's port transmits 5 % fewer packets than its rules sent to it (its load under 0.02 of
    capacity short: inside the load band): listed "lost" on gRPC, first suspect, its loss in Prometheus."""
    stub, loop, controller, store, now = api
    counters = PortCounters(packets=True)
    for _ in range(7):
        window(loop, store, controller, now, counters)
    assert not loop.anomalies.learning and not loop.anomalies.anomalous
    counters.lossy, counters.lost = ("s2", "s3"), 0.05
    assert not window(loop, store, controller, now, counters).link_anomalies
    verdict = window(loop, store, controller, now, counters)
    assert [(lk.src, lk.dst, lk.lost, lk.side) for lk in verdict.link_anomalies] == [("s2", "s3", True, 0)]
    reply = stub.ListAnomalies(pb.AnomaliesRequest(), timeout=5)
    assert [(lk.src, lk.dst, lk.direction, lk.windows) for lk in reply.links] == [("s2", "s3", "lost", 2)]
    assert reply.links[0].loss_ratio == pytest.approx(0.05, abs=0.002)
    assert (reply.suspects[0].src, reply.suspects[0].dst) == ("s2", "s3")
    assert reply.suspects[0].loss_ratio == pytest.approx(0.05, abs=0.002) and reply.suspects[0].load_deviation == 0.0
    losses = loop.metrics._losses
    assert losses[("s2", "s3")] == pytest.approx(0.05, abs=0.002)
    assert all(abs(value) < 0.002 for pair, value in losses.items() if pair != ("s2", "s3"))
    counters.lost = 0.0
    assert not window(loop, store, controller, now, counters).anomalous


def test_grpc_says_when_no_detection_runs():
    loop, controller, store, metrics, _ = watching()
    server, port = serve(NdtService(controller, store, metrics, predictor_factory=lambda name: QT,
                                    default_model="qt"), "127.0.0.1:0")
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        assert not services.NdtStub(channel).ListAnomalies(pb.AnomaliesRequest(), timeout=5).enabled
    server.stop(0)
