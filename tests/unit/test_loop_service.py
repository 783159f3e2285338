"""The closed loop as a controller service, against a stand-in controller whose probes report the
queueing model's delays for whatever routing was pushed last: push, keep, rollback, dry run,
deferral, triggers and hold-down, the decision records, and the gRPC calls that steer it."""

from __future__ import annotations

import time

import grpc
import numpy as np
import pytest

from controller.api import ndt_api_pb2 as pb
from controller.api import ndt_api_pb2_grpc as services
from controller.api.server import NdtService, serve
from controller.app import NetworkView
from controller.reported_delays import ReportedDelays
from controller.loop.service import HOSTS_STALE_WINDOWS, LoopService, ServiceSettings, common_mean, measured_vector
from optimizer.intent import Intent
from telemetry.exporter import Metrics
from telemetry.store import TelemetryStore
from twin.calibration.correction import CalibratedPredictor, Correction
from twin.models.registry import get_predictor
from twin.state.model import Flow, Link, NetworkState

QT = get_predictor("qt")


def square(rate: float = 1.7e6) -> NetworkState:
    """Flows 1->2 and 1->3 share link 1->2 under unit weights (3.4 of 4 Mbit/s: 85 % loaded); 1->3
    round by 4 leaves both links half loaded."""
    edges = [("s1", "s2"), ("s2", "s3"), ("s3", "s4"), ("s4", "s1")]
    links = tuple(Link(a, b, capacity=4e6, buffer=64) for x, y in edges for a, b in ((x, y), (y, x)))
    flows = (Flow("s1", "s2", rate=rate, packet_size=8000.0), Flow("s1", "s3", rate=rate, packet_size=8000.0))
    return NetworkState(nodes=("s1", "s2", "s3", "s4"), links=links, flows=flows, name="square")


class Probes:
    """``delays()`` as the controller's probe record: the routed state's delays under the queueing
    model with the structural correction (queueing only, as emulated links) × ``slowdown``."""

    def __init__(self, controller):
        self.controller = controller
        self.asked_edge = []

    def noise(self, start, end, min_samples=3):
        return 0.0

    def delays(self, start, end, min_samples=3, host_edge=True):
        self.asked_edge.append(host_edge)
        routed = self.controller.state.with_flows(self.controller.traffic.flows)
        delays = CalibratedPredictor(QT, Correction()).predict_delays([routed])[0] * self.controller.slowdown()
        return {(f.src, f.dst): float(d) for f, d in zip(routed.flows, delays)}


class StandInController:
    """What the loop service uses of the os-ken app; ``slow_after_push``: every routing but the
    first measures this many times slower."""

    def __init__(self, state: NetworkState, slow_after_push: float = 1.0):
        self.traffic = state
        self.state = state.with_flows(())
        self.initial = self.state.link_arrays["weight"].copy()
        self.slow_after_push = slow_after_push
        self.route_version = 1
        self.applied = []
        self.listeners = []
        self.down = frozenset()
        self.path_delays = Probes(self)
        self.reported_delays = ReportedDelays()

    def slowdown(self) -> float:
        same = np.array_equal(self.state.link_arrays["weight"], self.initial)
        return 1.0 if same else self.slow_after_push

    def snapshot(self):
        return NetworkView(state=self.state, ports={}, hosts=(), macs=(), down=self.down, route_version=self.route_version,
                           switches_connected=4, last_switch_over_s=0.0)

    def apply_weights(self, weights, who, predicted=None):
        current = {(lk.src, lk.dst): lk.weight for lk in self.state.links}
        current.update(weights)
        self.state = self.state.with_weights([current[(lk.src, lk.dst)] for lk in self.state.links])
        self.applied.append(who)
        self.route_version += 1
        return len(self.applied)

    def wait_for_routes(self, after, timeout):
        return self.route_version

    def add_listener(self, listener):
        self.listeners.append(listener)


def service(state=None, traffic=True, **settings) -> tuple[LoopService, StandInController, TelemetryStore, Metrics]:
    controller = StandInController(state or square(), settings.pop("slow_after_push", 1.0))
    store, metrics = TelemetryStore(), Metrics()
    if traffic:  # for more than a window (10 s)
        for ago in (12.0, 1.0):
            store.add_traffic_matrix(time.time() - ago, {(f.src, f.dst): f.rate for f in controller.traffic.flows})
    defaults = dict(intent=Intent(max_evaluations=300, time_limit_s=20.0), window_s=10.0, verify_s=0.01,
                    hold_down_s=60.0, check_s=0.01)
    loop = LoopService(controller, store, metrics, lambda: (QT, Correction()),
                       ServiceSettings(**{**defaults, **settings}))
    loop.predictor, prior = loop._twin()
    loop.calibration.set_prior(prior)
    loop._last_change -= 100.0  # the routing has been steady since long before the window
    return loop, controller, store, metrics


def test_a_better_routing_is_pushed_and_recorded_everywhere():
    loop, controller, store, metrics = service()
    decision = loop.run_once("start")
    assert decision.action == "push", decision.reason
    assert controller.applied == ["ndt loop (start)"]
    assert decision.predicted_chosen_s < 0.95 * decision.predicted_current_s
    assert decision.after_s < decision.measured_s
    assert decision.route_version == controller.route_version == 2
    records = [c for c in store.configs(0, time.time() + 1) if c.kind == "loop"]
    assert [r.payload["action"] for r in records] == ["push"] and records[0].payload["trigger"] == "start"
    assert records[0].payload["weights"]
    assert metrics._loop_counts == {("trigger", "start"): 1, ("decision", "push"): 1}
    assert loop.pushes == 1 and loop.runs == 1
    # before and after from the raw probes: a refit of the hosts' edge in between would move one of them
    assert controller.path_delays.asked_edge.count(False) >= 2
    assert True in controller.path_delays.asked_edge  # no host reports: the twin is scored on the probes with it


def test_a_push_that_measures_worse_is_rolled_back():
    loop, controller, _, _ = service(slow_after_push=10.0)
    decision = loop.run_once("start")
    assert decision.action == "rollback"
    assert controller.applied == ["ndt loop (start)", "ndt loop: rollback"]
    assert np.array_equal(controller.state.link_arrays["weight"], controller.initial)
    assert loop.rollbacks == 1 and "rolled back" in decision.reason


def test_nothing_better_keeps_the_routing():
    one_flow = square()
    loop, controller, _, _ = service(one_flow.with_flows(one_flow.flows[:1]))
    decision = loop.run_once("periodic")
    assert decision.action == "keep" and controller.applied == []
    assert "no candidate beats" in decision.reason


def test_dry_run_proposes_and_pushes_nothing():
    loop, controller, _, _ = service(dry_run=True)
    decision = loop.run_once("operator")
    assert decision.action == "propose" and decision.weights and controller.applied == []


def test_without_traffic_the_run_is_deferred_until_a_window_has_some():
    loop, controller, store, _ = service(traffic=False)
    assert loop._next_trigger() is None
    decision = loop.run_once("operator")
    assert decision.action == "defer" and "no traffic" in decision.reason and controller.applied == []
    store.add_traffic_matrix(time.time() - 2.0, {("s1", "s2"): 1e6})
    assert loop._next_trigger() is None  # traffic for 2 s of a 10-s window
    store.add_traffic_matrix(time.time() - 11.0, {("s1", "s2"): 1e6})
    assert loop._next_trigger() == "start"


def test_twin_mape_is_scored_before_the_window_joins_the_fit():
    loop, _, _, metrics = service()
    decision = loop.run_once("start")
    assert decision.twin_mape == pytest.approx(0.0, abs=1e-9)  # the probes are the model's own delays
    assert metrics._gauges["loop_twin_error_ratio"] == decision.twin_mape
    assert decision.calibration["windows"] == 0  # 2 flows: fewer than the fit needs; the prior is used
    assert decision.calibration["windows_left_out"] == 0


def report_hosts(loop, controller, factor: float, at: float, samples: dict | None = None) -> dict:
    """The hosts report ``factor`` × the probes' delays over the window ending ``at`` (Unix s), with
    the packets behind each mean where ``samples`` gives them."""
    delays = {pair: factor * d for pair, d in controller.path_delays.delays(0, 0).items()}
    controller.reported_delays.add(at - 0.5 * loop.settings.window_s, at, delays, samples)
    return delays


def test_the_hosts_reports_replace_the_probes_for_the_score_and_the_fit():
    loop, controller, store, metrics = service()
    loop.calibration.min_flows, loop.calibration.min_windows = 1, 2
    loop.observe()  # probes only
    assert loop.measured_by == "probes" and len(loop.calibration._windows) == 1
    clock = [time.monotonic()]
    loop.clock = lambda: clock[0]
    for k in range(3):
        clock[0] += loop.settings.window_s
        report_hosts(loop, controller, 1.5, time.time(), {("s1", "s2"): 300, ("s1", "s3"): 20})
        loop.observe()
        score = loop.scores[-1]
        assert score.measured_by == "hosts" and score.pairs == 2
        if k == 0:  # the probes' window is dropped; scored with the prior, which misses the hosts' 1.5x
            assert loop.measured_by == "hosts" and len(loop.calibration._windows) == 1
            assert score.mape == pytest.approx(1 / 3, rel=1e-6) and not score.calibrated_online
    assert score.calibrated_online and score.mape < 0.01  # the fit learned the hosts' delays
    state, _, samples = loop.calibration._windows[-1]
    assert dict(zip([(f.src, f.dst) for f in state.flows], samples)) == {("s1", "s2"): 900, ("s1", "s3"): 60}  # 3 reports
    assert metrics._gauges["loop_twin_error_ratio"] == score.mape
    predicted = store.path_delays("predicted", 0, time.time() + 1)
    assert {(r.src, r.dst) for r in predicted} == {("s1", "s2"), ("s1", "s3")}
    latest = {(r.src, r.dst): r.value for r in predicted if r.ts == max(p.ts for p in predicted)}
    assert metrics._delays["predicted"] == pytest.approx(latest)
    decision = loop.run_once("operator")
    assert decision.measured_by == "hosts" and decision.twin_mape < 0.01


def test_without_host_reports_for_a_while_the_loop_goes_back_to_the_probes():
    loop, controller, _, metrics = service()
    clock = [time.monotonic()]
    loop.clock = lambda: clock[0]
    report_hosts(loop, controller, 1.5, time.time())
    loop.observe()
    assert loop.measured_by == "hosts"
    clock[0] += loop.settings.window_s  # the report's window is no longer in the loop's
    controller.reported_delays = ReportedDelays()
    loop.observe()
    assert loop.measured_by == "hosts" and loop.scores[-1].measured_by == "probes"
    assert len(loop.calibration._windows) == 1  # a probes' window does not join the hosts' fit
    assert metrics._gauges["loop_twin_error_ratio"] == pytest.approx(1 / 3)  # nor move the hosts' figure
    clock[0] += HOSTS_STALE_WINDOWS * loop.settings.window_s
    loop.observe()
    assert loop.measured_by == "probes" and len(loop.calibration._windows) == 1


def test_between_runs_the_loop_scores_the_twin_and_feeds_the_online_fit():
    loop, _, _, metrics = service()
    loop.observe()
    assert loop.calibration.last.windows == 0 and len(loop.calibration._windows) == 1
    assert metrics._gauges["loop_twin_error_ratio"] == pytest.approx(0.0, abs=1e-9)
    loop.observe()  # the same window again: not added twice
    assert len(loop.calibration._windows) == 1
    loop._added_at -= 10.0
    loop.observe()
    assert len(loop.calibration._windows) == 2


def test_a_window_whose_traffic_began_within_it_is_neither_scored_nor_fitted():
    """The network idle for the window's first half, loaded in its second: the measured delays
    belong to the loaded half and the window's mean traffic to neither."""
    loop, controller, _, metrics = service(traffic=False)
    now = time.time()
    for ago in (9.0, 7.0, 5.5):
        loop.store.add_traffic_matrix(now - ago, {(f.src, f.dst): 0.0 for f in controller.traffic.flows})
    for ago in (4.0, 2.0, 0.5):
        loop.store.add_traffic_matrix(now - ago, {(f.src, f.dst): f.rate for f in controller.traffic.flows})
    loop.observe()
    assert not loop.scores and not loop.calibration._windows
    assert "loop_twin_error_ratio" not in metrics._gauges
    for ago in (9.0, 7.0, 5.5):  # the first half loaded as well: steady
        loop.store.add_traffic_matrix(now - ago + 0.1, {(f.src, f.dst): 2 * f.rate for f in controller.traffic.flows})
    loop.observe()
    assert len(loop.scores) == 1 and len(loop.calibration._windows) == 1


def test_triggers_hold_down_pause_and_operator():
    loop, controller, _, _ = service()
    assert loop._next_trigger() == "start"
    loop.run_once("start")
    assert loop.pushes == 1
    controller.listeners[0]("link s1->s2 down")
    loop._last_change -= 100.0
    assert loop._next_trigger() is None  # within the hold-down after the push (only)
    loop.run_now()
    assert loop._next_trigger() == "operator"
    loop.pause(True)
    loop.run_now()
    assert loop._next_trigger() is None
    loop.pause(False)
    assert loop._next_trigger() == "operator"  # and it answers the link event too
    loop._last_push = loop._last_change = -np.inf
    assert loop._next_trigger() is None
    controller.listeners[0]("link s1->s2 up")
    assert loop._next_trigger() is None  # probes have not yet measured the new routing
    loop._last_change -= loop.settle_s
    assert loop._next_trigger() == "topology"


def test_a_traffic_shift_triggers_a_run():
    loop, _, store, _ = service(hold_down_s=0.0)
    loop.run_once(loop._next_trigger())
    loop._last_change -= 100.0  # the probes have measured the pushed routing
    assert loop._next_trigger() is None
    store.add_traffic_matrix(time.time() - 0.5, {("s1", "s2"): 3.4e6, ("s1", "s3"): 1.7e6})
    assert loop._next_trigger() == "traffic"


def test_links_down_are_left_out_of_the_state_the_twin_sees():
    loop, controller, _, _ = service()
    controller.down = frozenset({("s1", "s4"), ("s4", "s1")})
    decision = loop.run_once("topology")
    assert decision.action in ("keep", "push")
    assert "s1->s4" not in decision.weights and decision.down == ["s1->s4", "s4->s1"]


def test_without_a_probe_of_the_routing_in_place_nothing_is_pushed():
    loop, controller, _, _ = service()
    controller.path_delays.delays = lambda start, end, min_samples=3, host_edge=True: {}
    decision = loop.run_once("topology")
    assert decision.action == "keep" and "could not be verified" in decision.reason and controller.applied == []


def test_a_twin_that_cannot_load_turns_the_loop_off_and_says_why():
    loop, _, store, _ = service()
    loop._twin = lambda: (_ for _ in ()).throw(OSError("weights file missing"))
    loop.serve()
    assert loop.stopped and "weights file missing" in loop.failure
    assert store.configs(0, time.time() + 1, kind="loop")[-1].payload["action"] == "error"


def test_a_failed_run_is_recorded_as_an_error_and_the_service_goes_on():
    loop, controller, _, _ = service()
    controller.snapshot = lambda: (_ for _ in ()).throw(RuntimeError("switch table full"))
    loop._twin = lambda: (QT, Correction())
    loop.settings.window_s = 0.0
    loop.run_now()
    import threading

    thread = threading.Thread(target=loop.serve, daemon=True)
    thread.start()
    decisions, _ = loop.wait_for_decision(0, 10.0)
    loop.stop()
    thread.join(5)
    assert decisions and decisions[0].action == "error" and "switch table full" in decisions[0].reason
    assert not thread.is_alive()


def test_helpers():
    state = square()
    assert np.isnan(measured_vector(state, {("s1", "s2"): 0.01})[1])
    assert common_mean({("a", "b"): 1.0, ("a", "c"): 5.0}, {("a", "b"): 2.0}) == (1.0, 2.0)
    assert all(np.isnan(common_mean({("a", "b"): 1.0}, {})))


@pytest.fixture
def api():
    loop, controller, store, metrics = service()
    server, port = serve(NdtService(controller, store, metrics, predictor_factory=lambda name: QT,
                                    default_model="qt", loop=loop), "127.0.0.1:0")
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    yield services.NdtStub(channel), loop, store
    channel.close()
    server.stop(0)


def test_grpc_pauses_resumes_and_switches_dry_run(api):
    stub, loop, store = api
    status = stub.GetLoopStatus(pb.Empty(), timeout=5)
    assert status.enabled and not status.paused and not status.dry_run and status.validate == "twin"
    assert stub.ControlLoop(pb.LoopControl(action=pb.LoopControl.PAUSE, who="ops"), timeout=5).paused
    assert loop.paused
    with pytest.raises(grpc.RpcError) as refused:
        stub.ControlLoop(pb.LoopControl(action=pb.LoopControl.RUN_NOW), timeout=5)
    assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION and "RESUME" in refused.value.details()
    status = stub.ControlLoop(pb.LoopControl(action=pb.LoopControl.DRY_RUN_ON, who="ops"), timeout=5)
    assert status.paused and status.dry_run and loop.settings.dry_run
    assert not stub.ControlLoop(pb.LoopControl(action=pb.LoopControl.RESUME, who="ops"), timeout=5).paused
    controls = [c.payload["action"] for c in store.configs(0, time.time() + 1) if c.kind == "loop-control"]
    assert controls == ["PAUSE", "DRY_RUN_ON", "RESUME"]
    with pytest.raises(grpc.RpcError) as bad:
        stub.ControlLoop(pb.LoopControl(action=pb.LoopControl.PAUSE, who="a\nb"), timeout=5)
    assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT and not loop.paused


def test_grpc_streams_decisions_as_they_are_made(api):
    stub, loop, _ = api
    loop.run_once("operator")
    stream = stub.StreamLoopDecisions(pb.StreamRequest(interval_s=0.2), timeout=30)
    first = next(stream)  # a subscriber starts from the last decision
    loop.run_once("periodic")
    second = next(stream)
    stream.cancel()
    assert second.trigger == "periodic"
    assert first.trigger == "operator" and first.action == "push" and first.candidates >= 1
    assert first.after_s > 0 and first.twin_mape >= 0 and '"weights"' in first.details_json
    status = stub.GetLoopStatus(pb.Empty(), timeout=5)
    assert status.runs == 2 and status.pushes >= 1 and status.recent[0].action == "push" and not status.error


def test_a_controller_without_loop_says_how_to_start_one():
    loop, controller, store, metrics = service()
    server, port = serve(NdtService(controller, store, metrics, predictor_factory=lambda name: QT,
                                    default_model="qt"), "127.0.0.1:0")
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = services.NdtStub(channel)
        assert not stub.GetLoopStatus(pb.Empty(), timeout=5).enabled
        with pytest.raises(grpc.RpcError) as refused:
            stub.ControlLoop(pb.LoopControl(action=pb.LoopControl.PAUSE), timeout=5)
    server.stop(0)
    assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION and "--intent" in refused.value.details()


def test_a_restarted_loop_resumes_its_decisions_pause_dry_run_and_hold_down():
    loop, controller, store, metrics = service()
    loop.run_once("start")
    store.add_config(time.time(), "ops", "loop-control", {"action": "PAUSE"})
    store.add_config(time.time(), "ops", "loop-control", {"action": "DRY_RUN_ON"})
    again = LoopService(controller, store, Metrics(), lambda: (QT, Correction()),
                        ServiceSettings(hold_down_s=60.0, check_s=0.01))
    assert again.paused and again.settings.dry_run
    assert again.runs == 1 and again.pushes == 1 and again.decisions[-1].action == "push"
    assert np.isfinite(again.decisions[-1].pushed_at) and np.isfinite(again.decisions[-1].after_s)
    again.pause(False)
    again._last_change -= 100.0
    again.settings.window_s = 10.0
    assert again._next_trigger() is None  # the push before the restart still holds the loop down
    again._last_push = -np.inf
    assert again._next_trigger() == "start"


def test_the_controller_resumes_the_routing_in_the_store_unless_the_state_file_is_newer(tmp_path):
    from controller.app import resumed_state
    from telemetry.store import ROUTING_KIND

    state = square()
    store = TelemetryStore()
    assert resumed_state(state, store.latest_config(ROUTING_KIND), None) is state
    weights = {f"{lk.src}->{lk.dst}": 3.0 for lk in state.links}
    # a second before now: a file's mtime comes from a coarser clock than time.time() and may read a few
    # milliseconds earlier than a time taken just before the file was written
    store.add_config(time.time() - 1.0, "ndt loop (start)", ROUTING_KIND, {"weights": weights})
    resumed = resumed_state(state, store.latest_config(ROUTING_KIND), None)
    assert set(resumed.link_arrays["weight"]) == {3.0}
    path = tmp_path / "state.json"
    state.save(path)  # written after the routing record: the operator's file wins
    assert resumed_state(state, store.latest_config(ROUTING_KIND), path) is state
    store.add_config(time.time() + 5, "x", ROUTING_KIND, {"weights": {"s1->s2": 2.0}})
    assert resumed_state(state, store.latest_config(ROUTING_KIND), None) is state  # other links: not ours
    store.add_config(time.time() - 30 * 86400, "old", "weights", {})
    store.maintain(time.time() + 8 * 86400)
    assert store.latest_config(ROUTING_KIND) is not None  # the routing in place survives retention
    assert store.latest_config("weights") is None


def test_retention_without_a_routing_record_and_the_operators_last_controls():
    store = TelemetryStore()
    old = time.time() - 30 * 86400
    store.add_config(old, "x", "weights", {"s1->s2": 2.0})
    for action in ("PAUSE", "DRY_RUN_ON", "RESUME", "PAUSE"):
        store.add_config(old, "ops", "loop-control", {"action": action})
    store.maintain()
    assert store.latest_config("weights") is None  # expired although no routing record exists
    kept = [c.payload["action"] for c in store.configs(0, time.time(), kind="loop-control")]
    assert kept == ["DRY_RUN_ON", "RESUME", "PAUSE"]  # the latest of each action, however old
    loop = LoopService(StandInController(square()), store, Metrics(), lambda: (QT, Correction()),
                       ServiceSettings())
    assert loop.paused and loop.settings.dry_run
    store.add_config(time.time(), "ops", "loop-control", {"action": "DRY_RUN_OFF"})
    asked = LoopService(StandInController(square()), store, Metrics(), lambda: (QT, Correction()),
                        ServiceSettings(dry_run=True))
    assert asked.settings.dry_run  # --dry-run on the command line wins over the store


def test_the_demo_picks_a_shift_and_a_failure_that_keep_every_flow_routed_and_carried():
    from controller.loop.deployment import busiest_destination, busiest_link
    from twin.state.errors import NdtError

    state = square()
    assert busiest_destination(state) in ("s2", "s3")
    a, b = busiest_link(state)
    assert state.without_links({(a, b), (b, a)}).flow_links
    narrow = NetworkState(nodes=state.nodes, flows=state.flows, links=tuple(
        Link(lk.src, lk.dst, capacity=3e6 if "s4" in (lk.src, lk.dst) else lk.capacity, buffer=64) for lk in state.links))
    # s1->s2 is the busiest (85 %), but without it both flows would cross s1->s4 (113 %): s2->s3 fails instead
    assert busiest_link(narrow) == ("s2", "s3")
    assert narrow.without_links({("s2", "s3"), ("s3", "s2")}).utilization().max() <= 0.95
    line = NetworkState(nodes=("a", "b"), links=(Link("a", "b", 1e6), Link("b", "a", 1e6)),
                        flows=(Flow("a", "b", 1e5),))
    with pytest.raises(NdtError, match="no link can fail"):
        busiest_link(line)


def test_weights_from_someone_else_hold_the_loop_down_and_its_own_do_not():
    loop, controller, _, _ = service(hold_down_s=60.0)
    loop.topology_changed("weights from l: initial routes")  # before the first run: nothing to fight over
    assert loop._last_push == -np.inf
    loop.run_once("start")
    loop._last_push = loop._last_change = -np.inf
    loop.topology_changed("weights from ndt loop (start)")
    assert loop._last_push == -np.inf and not loop._pending
    loop.topology_changed("weights from gRPC ipv4:127.0.0.1:5555; host 10.0.0.9 learned")
    assert np.isfinite(loop._last_push) and loop._pending == ["topology"]


def test_a_push_the_probes_never_measured_is_rolled_back_and_a_changed_routing_is_not_judged():
    loop, controller, _, _ = service()
    real = controller.path_delays.delays
    controller.path_delays.delays = lambda start, end, min_samples=3, host_edge=True: (
        real(start, end) if not controller.applied else {})
    decision = loop.run_once("start")
    assert decision.action == "rollback" and "no probe measured the pushed routing" in decision.reason
    loop, controller, _, _ = service(slow_after_push=10.0)
    apply = controller.apply_weights

    def apply_and_then_an_event(weights, who, predicted=None):
        config = apply(weights, who, predicted)
        controller.route_version += 1  # a link event right after the push
        return config

    controller.apply_weights = apply_and_then_an_event
    controller.wait_for_routes = lambda after, timeout: controller.route_version - 1
    decision = loop.run_once("start")
    assert decision.action == "push" and "not judged" in decision.reason and loop.rollbacks == 0


def test_a_failed_run_is_not_retried_before_a_new_window():
    loop, controller, _, _ = service()
    loop.run_once("start")
    loop._last_run = loop._last_push = loop._last_change = -np.inf  # a periodic run is due
    controller.snapshot = lambda: (_ for _ in ()).throw(RuntimeError("switch table full"))
    import threading

    loop.settings.window_s = 2.0  # serve() starts after 2 s; without a back-off the periodic trigger
    thread = threading.Thread(target=loop.serve, daemon=True)  # would fire again every check
    thread.start()
    time.sleep(3.5)
    loop.stop()
    thread.join(5)
    assert [d.action for d in loop.decisions] == ["push", "error"]


def test_a_stopped_loop_streams_its_last_decision_and_refuses_controls(api):
    stub, loop, _ = api
    loop._twin = lambda: (_ for _ in ()).throw(OSError("weights file missing"))
    loop.serve()
    decisions = list(stub.StreamLoopDecisions(pb.StreamRequest(interval_s=0.2), timeout=10))
    assert [d.action for d in decisions] == ["error"] and "weights file missing" in decisions[0].reason
    with pytest.raises(grpc.RpcError) as refused:
        stub.ControlLoop(pb.LoopControl(action=pb.LoopControl.RUN_NOW), timeout=5)
    assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION and "weights file missing" in refused.value.details()
    assert "weights file missing" in stub.GetLoopStatus(pb.Empty(), timeout=5).error
