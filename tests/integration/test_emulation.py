"""The emulation against the real stack: Mininet with userspace OVS, HTB-shaped links, ``ndt controller``,
the UDP generator in the hosts. Needs root; small topologies; names prefixed ``t``/``u`` so a running
demo (``l``/``v``) is not disturbed.

Square s1-s2-s3-s4-s1 at 2 Mbit/s with flows 1→2 and 1→3 of 1.2 Mbit/s each: shortest paths (ties to
the lowest index) send both over 1→2 (120 % load, a full queue), while 1→3 via 4 leaves every link at 60 %.
"""

from __future__ import annotations

import json
import socket
import sqlite3
import subprocess

import numpy as np
import pytest

from controller.api.client import ControllerClient
from controller.loop.closed_loop import ClosedLoop, LoopSettings
from controller.loop.emulated import EmulatedLive, run_loop
from mininet_topos import network
from mininet_topos.network import EmulatedNetwork, EmulationError
from mininet_topos.traffic import play
from optimizer.intent import Intent
from twin.calibration.correction import Correction
from twin.models.registry import get_predictor
from twin.state.model import Flow, Link, NetworkState
from twin.state.traffic import shift_traffic

pytestmark = [pytest.mark.root, pytest.mark.usefixtures("open_vswitch_running")]

CAPACITY = 2e6  # bit/s
FRAME = 8000.0  # bits


def square(rate: float = 1.2e6, buffer: int = 20) -> NetworkState:
    nodes = ("s1", "s2", "s3", "s4")
    edges = [("s1", "s2"), ("s2", "s3"), ("s3", "s4"), ("s4", "s1")]
    links = tuple(Link(a, b, capacity=CAPACITY, buffer=buffer) for x, y in edges for a, b in ((x, y), (y, x)))
    flows = (Flow("s1", "s2", rate=rate, packet_size=FRAME), Flow("s1", "s3", rate=rate, packet_size=FRAME))
    return NetworkState(nodes=nodes, links=links, flows=flows, name="square")


def test_generator_measures_a_known_queue():
    """CBR above capacity fills the FIFO: delay = buffer × frame / capacity, loss = 1 − capacity / rate;
    a light CBR flow on another path waits for nothing (delay = forwarding only)."""
    buffer = 20
    nodes = ("a", "b", "c")
    links = (Link("a", "b", capacity=CAPACITY, buffer=buffer), Link("b", "a", capacity=CAPACITY, buffer=buffer),
             Link("a", "c", capacity=CAPACITY, buffer=buffer), Link("c", "a", capacity=CAPACITY, buffer=buffer))
    flows = (Flow("a", "b", rate=2.5e6, time_dist="cbr", packet_size=FRAME),
             Flow("a", "c", rate=0.2e6, time_dist="cbr", packet_size=FRAME))
    state = NetworkState(nodes=nodes, links=links, flows=flows)
    with EmulatedNetwork(state, ControllerClient, prefix="t", tag="test-known") as net:
        m = play(net, state, duration=8.0, warmup=3.0)
    full_queue = buffer * FRAME / CAPACITY
    print(f"full queue: measured {1e3 * m.delay[0]:.2f} ms (expected {1e3 * full_queue:.1f}), loss {m.loss[0]:.3f} "
          f"(expected {1 - CAPACITY / 2.5e6:.3f}); light flow {1e3 * m.delay[1]:.3f} ms; sender late p99 "
          f"{1e3 * m.sender_late_p99:.1f} ms, load average {m.load_average:.1f}")
    assert m.delay[0] == pytest.approx(full_queue, rel=0.15)
    assert m.loss[0] == pytest.approx(1 - CAPACITY / 2.5e6, abs=0.05)
    assert m.delay[1] < 0.1 * full_queue and m.loss[1] < 0.02


def test_a_shaped_link_is_a_fifo_server():
    """Poisson arrivals of equal frames at half the capacity wait as in M/D/1 (Pollaczek–Khinchine:
    ρ·S / (2(1 − ρ)) = 4 ms frame time → 2 ms) on top of the forwarding floor a light flow shows;
    a shaper whose bucket holds a whole frame would let most packets skip the queue (≈ 0.4 ms)."""
    rho, service = 0.5, FRAME / CAPACITY
    links = (Link("a", "b", capacity=CAPACITY, buffer=64), Link("b", "a", capacity=CAPACITY, buffer=64))
    flows = (Flow("a", "b", rate=rho * CAPACITY, packet_size=FRAME), Flow("b", "a", rate=0.1e6, packet_size=FRAME))
    state = NetworkState(nodes=("a", "b"), links=links, flows=flows)
    with EmulatedNetwork(state, ControllerClient, prefix="t", tag="test-fifo") as net:
        m = play(net, state, duration=22.0)
    wait = rho * service / (2 * (1 - rho))
    light_wait = 0.05 * service / (2 * 0.95)
    floor = m.delay[1] - light_wait
    print(f"M/D/1 at rho 0.5: measured {1e3 * m.delay[0]:.3f} ms, expected {1e3 * (wait + floor):.3f} ms "
          f"(wait {1e3 * wait:.1f} + forwarding {1e3 * floor:.3f}); {int(m.received[0])} packets")
    assert m.delay[0] == pytest.approx(wait + floor, rel=0.2)


def test_loop_pushes_the_routing_it_validated(tmp_path):
    state = square()
    settings = LoopSettings(duration=6.0, validate_s=6.0, verify_s=6.0, candidates=1,
                            intent=Intent(max_evaluations=300, time_limit_s=10.0))
    report = run_loop(state, get_predictor("qt"), Correction(), settings, tmp_path, log=lambda _msg: None,
                      prefixes=("t", "u"), tag="test-loop")
    assert report["pushed"] and not report["rolled_back"]
    winner = next(v for v in report["validated"] if v["weights"] == report["pushed_weights"])
    current = report["validated"][0]
    assert winner["mean_measured"] < current["mean_measured"]
    routed = state.with_weights(np.array(report["pushed_weights"]))
    assert routed.flow_path(1) == ["s1", "s4", "s3"], "the validated winner moves 1->3 off the full link"
    config = sqlite3.connect(f"file:{report['store']}?mode=ro", uri=True).execute(
        "SELECT who, payload FROM config WHERE who LIKE 'ndt loop%' AND kind = 'weights' "
        "ORDER BY id DESC LIMIT 1").fetchone()
    assert config[0] == "ndt loop: validated winner"
    pushed = json.loads(config[1])
    assert [pushed[f"{lk.src}->{lk.dst}"] for lk in state.links] == report["pushed_weights"]
    assert report["measured"]["after"] < 0.5 * report["measured"]["before"]
    assert 0 < report["measurement_noise_mape"] < 1
    for walk in (report["walk"], winner["walk"]):  # ovs-vswitchd's walk, read with strace (live, sandbox)
        positions = [*walk["host"].values(), *walk["link"].values()]
        assert len(positions) == 4 + 8 and len(set(positions)) == 12 and max(positions) < walk["ports"]
    assert report["walk"]["ports"] < winner["walk"]["ports"], "the sandbox's walk serves the live network's ports too"
    assert (tmp_path / "report.json").exists() and (tmp_path / "report.png").stat().st_size > 10_000


def test_worse_routing_after_a_push_is_rolled_back():
    """Flows 1->2, 1->3 (0.6 Mbit/s) and 1->4 (1 Mbit/s): unit weights load link 1->2 to 60 %; a heavy
    weight on 1->4 sends 1->4 round 1-2-3-4, so 1->2 carries 2.2 Mbit/s on 2 Mbit/s."""
    light = square(rate=0.6e6)
    heavy = light.with_flows(list(light.flows) + [Flow("s1", "s4", rate=1.0e6, packet_size=FRAME)])
    old = heavy.link_arrays["weight"].copy()
    bad = old.copy()
    bad[heavy.link_index[("s1", "s4")]] = 10.0
    settings = LoopSettings(duration=6.0, verify_s=6.0)
    with EmulatedNetwork(heavy, ControllerClient, prefix="t", tag="test-rollback") as net:
        loop = ClosedLoop(EmulatedLive(net), None, get_predictor("qt"), Correction(), settings)
        before = loop.measure(heavy, 0, "before")
        outcome = loop.push_and_verify(heavy, old, bad, before, 1)
        assert outcome.rolled_back
        assert net.weights() == {(lk.src, lk.dst): lk.weight for lk in heavy.links}
    restored = outcome.after_rollback.mean_delay(heavy)
    print(f"before {1e3 * before.mean_delay(heavy):.2f} ms, pushed {1e3 * outcome.after.mean_delay(heavy):.2f} ms, "
          f"rolled back {1e3 * restored:.2f} ms")
    assert outcome.after.mean_delay(heavy) > 2 * before.mean_delay(heavy)


def test_loop_follows_a_traffic_shift_and_a_link_failure(tmp_path):
    """After the first push (1->3 round by 4), the traffic to 3 halves (a 25 % move: re-optimize),
    then link 1-4 fails: the controller reroutes 1->3 by 2 at once, and the loop, left with six
    directed links and one routing, keeps it and keeps delivering."""
    state = square()
    settings = LoopSettings(duration=6.0, validate_s=5.0, verify_s=6.0, candidates=1,
                            intent=Intent(max_evaluations=300, time_limit_s=10.0))
    report = run_loop(state, get_predictor("qt"), Correction(), settings, tmp_path, log=lambda _msg: None,
                      prefixes=("t", "u"), tag="test-events", shifts=(shift_traffic(state, "s3", 0.5),),
                      failures=(("s1", "s4"),))
    first, shifted, failed = report["iterations"]
    assert [it["event"] for it in report["iterations"]] == ["start", "shift", "fail s1-s4"]
    assert first["pushed"] and shifted["reoptimized"] and failed["reoptimized"]
    assert len(failed["final_weights"]) == len(state.links) - 2
    assert np.isfinite(failed["after"]) and failed["after"] < 0.05, "traffic still delivered, queues bounded"


def test_a_port_taken_before_the_controller_binds_it_is_chosen_again(monkeypatch):
    chosen = network.free_ports
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        taken = busy.getsockname()[1]
        first = iter([[chosen(1)[0], taken, chosen(1)[0]]])
        monkeypatch.setattr(network, "free_ports", lambda count: next(first, None) or chosen(count))
        with EmulatedNetwork(square(), ControllerClient, "u", tag="test-port-retry") as net:
            assert net.grpc_port != taken
            assert net.status().switches_connected == 4


def test_a_controller_that_cannot_start_is_reported_with_its_own_error():
    before = revalidate()
    with pytest.raises(EmulationError, match=r"exited with code 2 \(ndt controller: error: .*--loop-window"):
        with EmulatedNetwork(square(), ControllerClient, "u", tag="test-bad-controller",
                             controller_args=("--loop-window", "-1")):
            pass
    assert revalidate() == before  # Open vSwitch's setting restored by the failed start too


def revalidate() -> str | None:
    """Open vSwitch's other_config:max-revalidator (None: unset)."""
    got = subprocess.run(["ovs-vsctl", "--if-exists", "get", "Open_vSwitch", ".", "other_config:max-revalidator"],
                         capture_output=True, text=True, check=True)
    return got.stdout.strip().strip('"') or None


@pytest.mark.parametrize("operators", [None, 700])
def test_rule_counters_are_refreshed_faster_while_the_network_runs_and_the_setting_restored_after(operators):
    """Unset (Open vSwitch's default) or an operator's own value: back as it was after the network stops."""
    before = network.set_ovs_revalidate(operators)
    try:
        with EmulatedNetwork(square(), ControllerClient, "u", tag="test-revalidate"):
            assert revalidate() == str(network.OVS_REVALIDATE_MS)
        assert revalidate() == (None if operators is None else str(operators))
    finally:
        network.set_ovs_revalidate(before)
