"""The closed loop running inside ``ndt controller --intent`` against the real stack: Mininet with
userspace OVS and HTB-shaped links, traffic from the hosts only. Needs root; names prefixed ``c``.

Square s1-s2-s3-s4-s1 at 2 Mbit/s with flows 1→2 and 1→3 of 0.7 Mbit/s each: shortest paths (ties
to the lowest index) put both on link 1→2 (70 % load: a queue, but with headroom, so that a machine
that emulates a little slow drops no ping before the push), while 1→3 via 4 halves it. Nobody tells
the controller to act: its loop must find that from its own counters and probes.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request

import pytest

from controller.api import ndt_api_pb2 as pb
from controller.api.client import ControllerClient
from mininet_topos.network import REPO, EmulatedNetwork, free_port
from mininet_topos.traffic import play, received_rows, window_delays
from telemetry.store import TelemetryStore
from tests.integration.pinging import ping_counts, ping_deadline
from twin.state.model import Flow, Link, NetworkState

pytestmark = [pytest.mark.root, pytest.mark.usefixtures("open_vswitch_running")]

INTENT = "objective:\n  minimize: mean_delay\nsearch:\n  max_evaluations: 300\n  time_limit_s: 10\n"


def square(rate: float = 0.7e6) -> NetworkState:
    edges = [("s1", "s2"), ("s2", "s3"), ("s3", "s4"), ("s4", "s1")]
    links = tuple(Link(a, b, capacity=2e6, buffer=64) for x, y in edges for a, b in ((x, y), (y, x)))
    flows = (Flow("s1", "s2", rate=rate, packet_size=8000.0), Flow("s1", "s3", rate=rate, packet_size=8000.0))
    return NetworkState(nodes=("s1", "s2", "s3", "s4"), links=links, flows=flows, name="square")


def loop_args(intent, hold_down: float = 5.0) -> tuple[str, ...]:
    return ("--intent", str(intent), "--model", "qt", "--loop-window", "8", "--verify-s", "6", "--hold-down",
            str(hold_down), "--probe-rate", "50", "--period", "3600")


def ping(net, src: str, dst: str, seconds: float) -> tuple[int, int]:
    """(sent, received) of ``seconds`` of 20 pings/s from ``src``'s host to ``dst``'s."""
    count = int(seconds * 20)
    return ping_counts(net.host(src).cmd(f"ping -n -q -i 0.05 -w {ping_deadline(count, 0.05)} -c {count} "
                                         f"{net.names.ip_of(dst)}"))


def test_the_loop_pushes_a_better_routing_on_its_own_without_losing_pings(tmp_path):
    state = square()
    intent = tmp_path / "intent.yaml"
    intent.write_text(INTENT)
    with EmulatedNetwork(state, ControllerClient, "c", tag="test-service", controller_args=loop_args(intent)) as net:
        version = net.status().route_version
        pings = {}
        pinger = threading.Thread(target=lambda: pings.update(result=ping(net, "s1", "s3", 40.0)), daemon=True)
        pinger.start()
        play(net, state, 42.0, 2.0, 0, net.workdir / "traffic")
        pinger.join(60)
        status = net.client.stub.GetLoopStatus(pb.Empty(), timeout=10)
        metrics = urllib.request.urlopen(net.metrics_url, timeout=5).read().decode()
        rows = received_rows(net.workdir / "traffic" / "traffic-0", len(state.nodes))
        store = TelemetryStore(net.store_path)
        probes = store.path_delays("probe", 0, time.time() + 1)
        decisions = [c for c in store.configs(0, time.time() + 1) if c.kind == "loop"]
        store.close()
        final_version = net.status().route_version
    print([(d.trigger, d.action, d.measured_s, d.predicted_current_s, d.predicted_chosen_s, d.after_s, d.reason)
           for d in status.recent])
    push = next(d for d in status.recent if d.action == "push")
    assert push.trigger == "start" and push.predicted_chosen_s < push.predicted_current_s
    assert final_version > version and status.pushes >= 1 and status.rollbacks == 0
    assert [d.payload["action"] for d in decisions][:1] == ["push"]
    assert 0 < push.after_s < push.measured_s  # the probes saw the improvement
    before = window_delays(rows, 2, rows[:, 2].min() + 2.0, push.ts - 1.0, min_packets=100)
    after = window_delays(rows, 2, json.loads(push.details_json)["pushed_at"] + 2.0, rows[:, 2].max(), min_packets=100)
    assert after[1] < 0.8 * before[1]  # 1->3 left the busy link: the hosts measured it too
    sent, received = pings["result"]
    assert sent == received, f"{sent - received} of {sent} pings lost across the push"
    assert {(p.src, p.dst) for p in probes} >= {("s1", "s2"), ("s1", "s3")}
    assert all(isinstance(p.samples, int) and p.samples >= 1 for p in probes)  # each with its probes' count
    assert 'ndt_loop_decisions_total{action="push"}' in metrics
    assert 'ndt_path_delay_seconds{dst="s3",kind="probe",src="s1"}' in metrics
    assert "ndt_loop_twin_error_ratio" in metrics
    loopbacks = {line.split('"')[1]: float(line.split()[-1]) for line in metrics.splitlines()
                 if line.startswith("ndt_probe_loopback_seconds_count")}
    assert set(loopbacks) == {"s1", "s2", "s3", "s4"} and min(loopbacks.values()) > 0


def test_the_loop_measures_its_candidates_in_a_sandbox_before_it_pushes(tmp_path):
    """``--validate sandbox``: the controller's loop brings up a Mininet copy of the estimated state
    beside the live network, measures the routing in place and the candidates there, and pushes the
    measured best."""
    state = square()
    intent = tmp_path / "intent.yaml"
    intent.write_text(INTENT)
    args = loop_args(intent) + ("--validate", "sandbox", "--candidates", "1")
    with EmulatedNetwork(state, ControllerClient, "c", tag="test-sandbox", controller_args=args) as net:
        player = threading.Thread(target=lambda: play(net, state, 100.0, 2.0, 0, net.workdir / "traffic"), daemon=True)
        player.start()
        deadline = time.monotonic() + 110
        status = net.client.stub.GetLoopStatus(pb.Empty(), timeout=10)
        while not any(d.action in ("push", "rollback") for d in status.recent) and time.monotonic() < deadline:
            time.sleep(2.0)
            status = net.client.stub.GetLoopStatus(pb.Empty(), timeout=10)
        player.join(120)
        log = (net.workdir / "controller.log").read_text()
    print([(d.trigger, d.action, d.validated_current_s, d.validated_chosen_s, d.reason) for d in status.recent])
    push = next(d for d in status.recent if d.action == "push")
    details = json.loads(push.details_json)
    validated = [c["validated_s"] for c in details["candidates"]]
    predicted = [c["predicted_s"] for c in details["candidates"]]
    assert len(validated) == 2 and validated != predicted, "the candidates were measured, not only predicted"
    assert push.validated_chosen_s < push.validated_current_s
    assert "Traceback" not in log


def test_a_link_failure_is_rerouted_at_once_and_then_reoptimized(tmp_path):
    state = square(rate=0.4e6)
    intent = tmp_path / "intent.yaml"
    intent.write_text(INTENT)
    with EmulatedNetwork(state, ControllerClient, "c", tag="test-service-failure",
                         controller_args=loop_args(intent, hold_down=0.0)) as net:
        traffic = threading.Thread(target=lambda: play(net, state, 40.0, 2.0, 1, net.workdir / "traffic"),
                                   daemon=True)
        traffic.start()
        stream = net.client.stub.StreamLoopDecisions(pb.StreamRequest(interval_s=0.5), timeout=90)
        first = next(d for d in stream if d.action != "defer")  # the start run, once a window of traffic is in
        version = net.status().route_version
        started = time.monotonic()
        net.net.configLinkStatus(net.names.switch_of("s1"), net.names.switch_of("s2"), "down")
        while net.status().route_version == version and time.monotonic() - started < 5:
            time.sleep(0.01)
        reroute_s = time.monotonic() - started
        topology = next(d for d in stream if d.trigger == "topology")
        stream.cancel()
        traffic.join(60)
        weights = net.weights()
    print(f"rerouted in {reroute_s:.3f} s; start run {first.action}; topology run {topology.action} "
          f"({topology.reason}), loop_s {topology.loop_s:.2f}")
    assert first.trigger == "start" and first.action in ("keep", "push")
    assert reroute_s <= 2.0
    assert topology.action in ("keep", "push") and "s1->s2" not in json.loads(topology.details_json)["weights"]
    assert set(weights) == {(lk.src, lk.dst) for lk in state.links}


def test_sigterm_takes_the_demo_down_with_its_controller_and_switches(tmp_path):
    """``ndt demo`` stopped by SIGTERM (a service manager, a CI timeout) as by Ctrl-C: its clean-ups
    run, so neither the controller process it started nor its switches stay behind."""
    metrics_port = free_port()
    output = tmp_path / "demo.out"
    log = open(output, "w")
    demo = subprocess.Popen([sys.executable, "-m", "ndt.cli", "demo", "--topology", "ring:4", "--load", "0.5",
                             "--phase-s", "60", "--metrics-port", str(metrics_port), "--no-prometheus",
                             "--out", str(tmp_path / "out")],
                            cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, stdout=log, stderr=subprocess.STDOUT)

    def controllers() -> list[str]:
        found = subprocess.run(["pgrep", "-f", f"ndt.cli controller .*--metrics-port {metrics_port} "],
                               capture_output=True, text=True).stdout
        return found.split()

    def bridges() -> set[str]:
        return set(subprocess.run(["ovs-vsctl", "list-br"], capture_output=True, text=True).stdout.split())

    deadline = time.monotonic() + 120
    while "phase 1" not in output.read_text():
        assert demo.poll() is None and time.monotonic() < deadline, output.read_text()
        time.sleep(0.5)
    assert controllers(), "the demo's controller is running"
    running = bridges()
    assert running, "the demo's switches are up"
    demo.send_signal(signal.SIGTERM)
    assert demo.wait(60) == 143
    log.close()
    assert "terminated" in output.read_text()
    assert not controllers(), "no controller left behind"
    assert not running & bridges(), "no switch left behind"
