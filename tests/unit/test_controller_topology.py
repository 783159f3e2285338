"""The wiring file and the ``ndt controller`` launcher's input errors (no switch needed)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from controller.routing_rules import RuleError
from controller.topology import load_wiring, wiring_from_dict
from mininet_topos.network import free_port
from telemetry.rates import CounterRates, counted_since, pair_rates
from twin.state.model import Link, NetworkState

REPO = Path(__file__).resolve().parents[2]
STATE = NetworkState(nodes=("s1", "s2"), links=(Link("s1", "s2", 1e7), Link("s2", "s1", 1e7)))
PORTS = {"s1->s2": 2, "s2->s1": 2}


def test_dpids_default_to_the_trailing_number():
    wiring = wiring_from_dict({"ports": PORTS}, STATE)
    assert wiring.dpids == {"s1": 1, "s2": 2}
    assert wiring.link_at(1, 2) == ("s1", "s2") and wiring.is_edge_port(1, 1)


@pytest.mark.parametrize("text, dpid", [("0x1A", 26), ("000000000000001a", 26), ("00:00:00:00:00:00:00:1a", 26),
                                        (" 0x1a ", 26), ("01:02:03:04:05:06:07:08", 0x0102030405060708)])
def test_dpids_as_open_vswitch_prints_them(text, dpid):
    wiring = wiring_from_dict({"ports": PORTS, "dpids": {"s1": 1, "s2": text}}, STATE)
    assert wiring.dpids == {"s1": 1, "s2": dpid}


@pytest.mark.parametrize("data, message", [
    ({"ports": {"s1->s2": 2}}, "link s2->s1: no output port"),
    ({"ports": {**PORTS, "s1-s2": 3}}, "'s1-s2' is not of the form"),
    ({"ports": {**PORTS, "s1->s3": 3}}, "link s1->s3, which is not in the state"),
    ({"ports": {"s1->s2": 0, "s2->s1": 2}}, r"ports\['s1->s2'\] must be an OpenFlow port"),
    ({"ports": PORTS, "dpids": {"s1": 1}}, "switch 's2': no datapath id"),
    ({"ports": PORTS, "dpids": {"s1": 1, "s2": "x"}}, r"dpids\['s2'\]: 'x' is not a datapath id; give a number, or hex"),
    ({"ports": PORTS, "dpids": {"s1": 1, "s2": "12"}}, r"'12' is not a datapath id"),  # decimal or hex: refused
    ({"ports": PORTS, "dpids": {"s1": 1, "s2": "0x1g"}}, r"'0x1g' is not a datapath id"),
    ({"ports": PORTS, "dpids": {"s1": 1, "s2": "0x" + "f" * 17}}, r"is not a datapath id"),
    ({"ports": PORTS, "dpids": {"s1": 1, "s2": "1:2:3:4:5:6:7:8"}}, r"'1:2:3:4:5:6:7:8' is not a datapath id"),
    ({"ports": PORTS, "dpids": {"s1": 1, "s2": "::::::1:a"}}, r"is not a datapath id"),
    ({"ports": PORTS, "dpids": {"s1": 1, "s2": 2.0}}, r"dpids\['s2'\] must be a datapath id from 0 to 2\*\*64-1"),
    ({"ports": PORTS, "dpids": {"s1": 1, "s2": 2**70}}, r"dpids\['s2'\] must be a datapath id .* got 1180591620717411303424"),
    ({"ports": PORTS, "dpids": {"s1": 1, "s2": 1}}, "share one datapath id"),
    ({"ports": PORTS, "hosts": []}, "unknown field 'hosts'"),
    ([], "expected an object"),
])
def test_wiring_errors_name_the_key(data, message):
    with pytest.raises(RuleError, match=message):
        wiring_from_dict(data, STATE)


def test_unnumbered_switch_needs_a_dpid(tmp_path):
    state = NetworkState(nodes=("a", "b"), links=(Link("a", "b", 1e7),))
    with pytest.raises(RuleError, match="switch 'a' has no trailing number"):
        wiring_from_dict({"ports": {"a->b": 1}}, state)
    (tmp_path / "w.json").write_text("{oops")
    with pytest.raises(RuleError, match=r"w.json: not valid JSON \(line 1"):
        load_wiring(tmp_path / "w.json", state)


def test_counter_rates():
    rates = CounterRates()
    assert rates.update("a", 0.0, 100) is None
    assert rates.update("a", 2.0, 300) == 100.0
    assert rates.update("a", 3.0, 50) is None  # counter reset
    assert rates.update("a", 4.0, 150) == 100.0
    rates.forget(lambda key: key == "a")
    assert rates.update("a", 5.0, 500) is None


def test_counted_since_takes_a_count_that_went_down_as_counted_from_zero():
    last: dict = {}
    assert counted_since(last, {"a": 500, "b": 0}) == {"a": 500, "b": 0}, "a new counter counted all of its value"
    assert counted_since(last, {"a": 800}) == {"a": 300} and last == {"a": 800, "b": 0}
    assert counted_since(last, {"a": 120, "b": 0}) == {"a": 120, "b": 0}, "a counter put back counts from zero"
    assert last == {"a": 120, "b": 0}


def test_pair_rates_come_from_the_switch_clock():
    """Two rules of one pair, installed half a second apart, read every second: the pair's rate is
    the sum of the rules' rates by their own durations, whenever the replies reach the controller."""
    rates = CounterRates()
    byte_rate = {"h1": 1000.0, "h2": 250.0}
    started = {"h1": 0.0, "h2": 0.5}  # the rules were installed half a second apart

    def reading(switch_s):
        return [((1, ip, "10.0.0.3"), ("s1", "s3"), switch_s - started[ip], byte_rate[ip] * (switch_s - started[ip]))
                for ip in byte_rate]

    assert pair_rates(reading(1.0), rates) == {}, "a first reading has no rate"
    for switch_s in (2.0, 3.0, 4.0):
        assert pair_rates(reading(switch_s), rates) == {("s1", "s3"): pytest.approx(8 * 1250.0)}
    new_rule = [((1, "h3", "10.0.0.3"), ("s1", "s3"), 0.1, 10)]
    assert pair_rates(reading(5.0) + new_rule, rates) == {}, "a pair with a rule not yet measured is left out"


def test_launcher_reports_bad_files_in_one_line(tmp_path):
    STATE.save(tmp_path / "state.json")
    (tmp_path / "wiring.json").write_text(json.dumps({"ports": {"s1->s2": 2}}))
    run = subprocess.run([sys.executable, "-m", "ndt.cli", "controller", "--state", str(tmp_path / "state.json"),
                          "--wiring", str(tmp_path / "wiring.json"), "--store", str(tmp_path / "t.db")],
                         cwd=REPO, capture_output=True, text=True, timeout=60)
    assert run.returncode == 2
    assert run.stderr.strip().endswith("wiring.json: link s2->s1: no output port in the wiring")
    assert "Traceback" not in run.stderr


def test_check_says_what_would_run_and_starts_nothing(tmp_path):
    import socket

    STATE.save(tmp_path / "state.json")
    (tmp_path / "wiring.json").write_text(json.dumps({"dpids": {"s1": "0x1a", "s2": 2}, "ports": PORTS}))
    (tmp_path / "intent.yaml").write_text("objective: {minimize: mean_delay}\n")

    def check(*extra):
        return subprocess.run([sys.executable, "-m", "ndt.cli", "controller", "--state", str(tmp_path / "state.json"),
                               "--wiring", str(tmp_path / "wiring.json"), "--store", str(tmp_path / "t.db"),
                               "--metrics-port", str(free_port()), "--grpc", f"127.0.0.1:{free_port()}",
                               "--intent", str(tmp_path / "intent.yaml"), "--model", "qt", "--check", *extra],
                              cwd=REPO, capture_output=True, text=True, timeout=120)

    ofp_port = free_port()
    done = check("--ofp-port", str(ofp_port))
    assert done.returncode == 0, done.stderr
    assert "2 switches, 2 links" in done.stdout and "s2=0x2, s1=0x1a" in done.stdout, done.stdout
    assert f"OpenFlow 1.3 on 127.0.0.1:{ofp_port}" in done.stdout and "ready to start" in done.stdout
    assert not (tmp_path / "t.db").exists(), "--check created the store"
    assert "too low" not in done.stderr, done.stderr
    sparse = check("--ofp-port", str(ofp_port), "--probe-rate", "0.5")
    assert sparse.returncode == 0 and "--probe-rate 0.5 is too low for 2 switches: anomaly detection's 10-s window " \
        "needs about 0.8 probes/s" in sparse.stderr, sparse.stderr
    twice = check("--ofp-port", str(ofp_port), "--metrics-port", str(ofp_port))
    assert twice.returncode == 2 and f"Prometheus 127.0.0.1:{ofp_port}: cannot listen" in twice.stderr, twice.stderr
    (tmp_path / "t.db").write_bytes(b"")
    assert check("--ofp-port", str(ofp_port)).returncode == 0
    assert (tmp_path / "t.db").read_bytes() == b"" and not list(tmp_path.glob("t.db-*")), "--check wrote to the store"
    (tmp_path / "t.db").write_bytes(b"not a database" * 100)
    damaged = check("--ofp-port", str(ofp_port))
    assert damaged.returncode == 2 and "damaged, cannot be used" in damaged.stderr, damaged.stderr
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", ofp_port))
        taken.listen()
        busy = check("--ofp-port", str(ofp_port))
    assert busy.returncode == 2 and f"OpenFlow 127.0.0.1:{ofp_port}: cannot listen" in busy.stderr, busy.stderr


def test_the_shipped_three_switch_example_passes_check(tmp_path):
    """docs/deployment.md's example files: a state, a wiring in Open vSwitch's forms, a generic intent."""
    done = subprocess.run([sys.executable, "-m", "ndt.cli", "controller", "--state", "examples/net.json",
                           "--wiring", "examples/wiring.json", "--intent", "examples/min-delay.yaml", "--model", "qt",
                           "--store", str(tmp_path / "t.db"), "--ofp-port", str(free_port()), "--metrics-port", "0",
                           "--grpc", "127.0.0.1:0", "--check"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "nyc=0x1, chi=0x2, lax=0x3; 4 link ports" in done.stdout, done.stdout


def test_bad_state_reload_is_rejected_and_the_controller_keeps_running(tmp_path):
    import signal
    import time
    import urllib.request

    def log_has(text, timeout=20.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if text in (tmp_path / "log").read_text():
                return True
            time.sleep(0.1)
        return False

    STATE.save(tmp_path / "state.json")
    (tmp_path / "wiring.json").write_text(json.dumps({"ports": PORTS}))
    metrics_port = free_port()
    with open(tmp_path / "log", "w") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "ndt.cli", "controller", "--state", str(tmp_path / "state.json"),
             "--wiring", str(tmp_path / "wiring.json"), "--store", str(tmp_path / "t.db"),
             "--ofp-port", str(free_port()), "--metrics-port", str(metrics_port), "--grpc", "off"],
            cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
        try:
            assert log_has("metrics on http"), (tmp_path / "log").read_text()
            (tmp_path / "state.json").write_text('{"nodes": ["s1", "s2"], "links": [{"src": "s1", "dst": "s2", '
                                                 '"capacity": 1e7, "weight": -3}]}')
            proc.send_signal(signal.SIGHUP)
            assert log_has("state reload rejected"), (tmp_path / "log").read_text()
            assert "link s1->s2: weight must be positive" in (tmp_path / "log").read_text()
            STATE.with_weights([2.0, 2.0]).save(tmp_path / "state.json")
            proc.send_signal(signal.SIGHUP)
            assert log_has("weights from state file")
            NetworkState(nodes=STATE.nodes, links=(Link("s1", "s2", 2e7), Link("s2", "s1", 1e7))).save(
                tmp_path / "state.json")
            proc.send_signal(signal.SIGHUP)
            assert log_has("capacities of s1->s2 changed"), (tmp_path / "log").read_text()
            assert proc.poll() is None
            with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5) as resp:
                assert b"ndt_routing_changes_total" in resp.read()
        finally:
            proc.terminate()
            proc.wait(10)
