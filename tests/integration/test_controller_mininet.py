"""The controller against the real stack: Open vSwitch (userspace datapath) in Mininet, ``ndt controller``
in a subprocess, pings between hosts, the switches' own port counters, the store file and the metrics
endpoint. Needs root (network namespaces, OVS); skipped otherwise.

Topology: a square s1-s2-s3-s4-s1, host hN (10.0.0.N) on port 1 of sN, 10 Mbit/s links in the state.
With equal weights s1 reaches s3 through s2 (ties go to the lowest node index).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from mininet_topos.network import free_ports
from tests.integration.pinging import lost_pings, ping_command, ping_counts, ping_deadline

pytestmark = pytest.mark.root

REPO = Path(__file__).resolve().parents[2]
SQUARE = [(1, 2), (2, 3), (3, 4), (4, 1)]
OVS_CTL = "/usr/share/openvswitch/scripts/ovs-ctl"


@pytest.fixture(scope="module", autouse=True)
def open_vswitch():
    """Open vSwitch running and no Mininet leftovers, before and after the module."""
    for tool in ("ovs-vsctl", "ovs-ofctl", "mnexec", "ethtool"):
        if shutil.which(tool) is None:
            pytest.fail(f"{tool} not found: run scripts/install-system-deps.sh")
    if subprocess.run([OVS_CTL, "status"], capture_output=True).returncode != 0:
        subprocess.run([OVS_CTL, "start", "--system-id=random"], check=True, capture_output=True)
    from mininet.clean import cleanup
    from mininet.log import setLogLevel

    setLogLevel("error")
    cleanup()
    yield
    cleanup()



class Emulation:
    """A Mininet network of userspace OVS switches, its state/wiring files, and ``ndt controller``."""

    def __init__(self, tmp: Path, n: int, edges: list[tuple[int, int]], poll_interval: float = 0.5,
                 discover: bool = False, ecmp: bool = False, controller_args: tuple[str, ...] = ()):
        from mininet.net import Mininet
        from mininet.node import OVSSwitch, RemoteController
        from mininet.topo import Topo

        class Net(Topo):
            def build(self):
                for i in range(1, n + 1):
                    self.addSwitch(f"s{i}", dpid=f"{i:016x}")
                    self.addHost(f"h{i}", ip=f"10.0.0.{i}/24", mac=f"00:00:00:00:00:{i:02x}")
                    self.addLink(f"h{i}", f"s{i}")
                for a, b in edges:
                    self.addLink(f"s{a}", f"s{b}")

        self.tmp = tmp
        self.ofp_port, self.metrics_port, self.grpc_port = free_ports(3)
        self.net = Mininet(
            topo=Net(), autoSetMacs=False, waitConnected=False,
            switch=lambda name, **kw: OVSSwitch(name, datapath="user", protocols="OpenFlow13", failMode="secure", **kw),
            controller=lambda name: RemoteController(name, ip="127.0.0.1", port=self.ofp_port))
        self.ports: dict[tuple[str, str], int] = {}
        links = []
        for link in self.net.links:
            a, b = link.intf1, link.intf2
            if a.node.name.startswith("s") and b.node.name.startswith("s"):
                for x, y in ((a, b), (b, a)):
                    self.ports[(x.node.name, y.node.name)] = x.node.ports[x]
                    links.append({"src": x.node.name, "dst": y.node.name, "capacity": 1e7, "weight": 1.0})
        self.state = {"name": f"{n} switches", "nodes": [f"s{i}" for i in range(1, n + 1)], "links": links,
                      "routing": {"kind": "ospf", "ecmp": ecmp}}
        self.state_path = tmp / "state.json"
        self.state_path.write_text(json.dumps(self.state))
        (tmp / "wiring.json").write_text(json.dumps({"ports": {f"{s}->{d}": p for (s, d), p in self.ports.items()}}))
        self.store_path = tmp / "telemetry.db"
        self.log = open(tmp / "controller.log", "w")
        topology = ["--discover"] if discover else ["--wiring", str(tmp / "wiring.json")]
        self.command = [sys.executable, "-m", "ndt.cli", "controller", "--state", str(self.state_path), *topology,
                        "--ofp-port", str(self.ofp_port), "--metrics-port", str(self.metrics_port),
                        "--store", str(self.store_path), "--poll-interval", str(poll_interval),
                        "--grpc", f"127.0.0.1:{self.grpc_port}", *controller_args]
        self.start_controller()
        self.net.start()
        for host in self.net.hosts:
            host.cmd(f"ethtool -K {host.defaultIntf()} tx off")
        wait_for(lambda: self.metric("ndt_switches_connected") == n, 20, f"{n} switches to connect")

    def start_controller(self):
        self.controller = subprocess.Popen(self.command, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)},
                                           stdout=self.log, stderr=subprocess.STDOUT)
        wait_for(lambda: self.metrics() is not None, 20, "the controller's metrics endpoint")

    def stop_controller(self):
        self.controller.send_signal(signal.SIGTERM)
        try:
            self.controller.wait(10)
        except subprocess.TimeoutExpired:
            self.controller.kill()

    def stop(self):
        self.net.stop()
        self.stop_controller()
        self.log.close()

    def log_text(self) -> str:
        return (self.tmp / "controller.log").read_text()

    # ------------------------------------------------------------ observations
    def metrics(self) -> str | None:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=2) as resp:
                return resp.read().decode()
        except OSError:
            return None

    def metric(self, name: str, **labels) -> float | None:
        text = self.metrics() or ""
        want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
        pattern = rf"^{re.escape(name)}(?:\{{{re.escape(want)}\}})? (\S+)$" if want else rf"^{re.escape(name)} (\S+)$"
        match = re.search(pattern, text, re.M)
        return None if match is None else float(match.group(1))

    def tx_bytes(self, src: str, dst: str) -> int:
        """Bytes sent by src's port towards dst, read from the switch itself (not the controller)."""
        out = subprocess.run(["ovs-ofctl", "-O", "OpenFlow13", "dump-ports", src, str(self.ports[(src, dst)])],
                             capture_output=True, text=True, check=True).stdout
        return int(re.search(r"tx pkts=\d+, bytes=(\d+)", out).group(1))

    def ping(self, src: int, dst: int, count: int, interval: float = 0.01) -> tuple[int, int]:
        """(sent, received) of ``count`` pings from h{src} to h{dst} (a single one waits 1 s for its reply)."""
        wait = f"-w {ping_deadline(count, interval)}" if count > 1 else "-W 1"
        return ping_counts(self.net.get(f"h{src}").cmd(f"ping -n -q -i {interval} {wait} -c {count} 10.0.0.{dst}"))

    # ------------------------------------------------------------ actions
    def push_weights(self, weights: dict[tuple[str, str], float]) -> float:
        """Rewrite the state file's weights and SIGHUP the controller; returns the new route version."""
        before = self.metric("ndt_route_version") or 0
        for link in self.state["links"]:
            link["weight"] = weights.get((link["src"], link["dst"]), 1.0)
        self.state_path.write_text(json.dumps(self.state))
        self.controller.send_signal(signal.SIGHUP)
        return wait_for(lambda: (v := self.metric("ndt_route_version") or 0) > before and v, 10, "the new routes")


def wait_for(condition, timeout: float, what: str, check: bool = True):
    """Poll ``condition`` until it is truthy; on timeout raise (or, with check=False, return False)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.1)
    if not check:
        return False
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


@pytest.fixture
def square(tmp_path):
    bed = Emulation(tmp_path, 4, SQUARE)
    yield bed
    bed.stop()
    from mininet.clean import cleanup

    cleanup()


def warm_up(bed: Emulation, n: int) -> None:
    """Every host pings every other once, so the controller has learned them all and installed routes."""
    for src in range(1, n + 1):
        for dst in range(1, n + 1):
            if src != dst:
                bed.ping(src, dst, 1, 0.2)
    wait_for(lambda: bed.metric("ndt_route_version") and "16 rules" in bed.log_text(), 10, "routes for 4 hosts")


def test_hosts_ping_and_stats_reach_store_and_exporter(square):
    for src in range(1, 5):
        for dst in range(1, 5):
            if src != dst:
                assert square.ping(src, dst, 3, 0.05)[1] == 3, f"h{src} -> h{dst}"
    polls = square.metric("ndt_stats_polls_total") or 0
    wait_for(lambda: (square.metric("ndt_stats_polls_total") or 0) >= polls + 2, 10, "two more statistics polls")
    for (src, dst) in square.ports:
        assert square.metric("ndt_link_transmit_bytes_total", src=src, dst=dst) > 0, f"{src}->{dst}"
        assert square.metric("ndt_link_up", src=src, dst=dst) == 1
        assert square.metric("ndt_link_utilization_ratio", src=src, dst=dst) is not None
    assert square.metric("ndt_traffic_bytes_total", src="s1", dst="s3") >= 3 * 98
    assert 0 < square.metric("ndt_stats_poll_duration_seconds") < 0.5
    db = sqlite3.connect(f"file:{square.store_path}?mode=ro", uri=True)
    links = db.execute("SELECT COUNT(DISTINCT src || dst), MAX(tx_bytes) FROM link_stats").fetchone()
    assert links[0] == 8 and links[1] > 0
    assert db.execute("SELECT COUNT(*) FROM traffic WHERE src = 's1' AND dst = 's3'").fetchone()[0] > 0


def counter_bytes(bed: Emulation, switch: str, src_host: str, dst_host: str) -> int:
    """Bytes counted so far by the controller's edge counter rule for src_host → dst_host (their MACs),
    read from the switch."""
    src_mac, dst_mac = bed.net.get(src_host).MAC(), bed.net.get(dst_host).MAC()
    out = subprocess.run(["ovs-ofctl", "-O", "OpenFlow13", "dump-flows", switch,
                          f"table=0,dl_src={src_mac},dl_dst={dst_mac}"], capture_output=True, text=True, check=True).stdout
    return sum(int(b) for b in re.findall(r"n_bytes=(\d+)", out))


def test_stored_pair_rates_average_to_the_counter_rules_rate(square):
    """The traffic matrix the controller stores, over a few seconds of a ping stream, against the bytes
    its edge counter rule counted in the switch over the same seconds."""
    warm_up(square, 4)
    h1 = square.net.get("h1")
    h1.cmd("ping -n -q -i 0.01 -s 1200 -c 700 10.0.0.3 > /dev/null 2>&1 &")
    time.sleep(1.0)
    started, bytes_start = time.time(), counter_bytes(square, "s1", "h1", "h3")
    time.sleep(5.0)
    ended, bytes_end = time.time(), counter_bytes(square, "s1", "h1", "h3")
    time.sleep(1.5)
    true_bps = 8.0 * (bytes_end - bytes_start) / (ended - started)
    assert true_bps > 5e5, f"the ping stream sent {true_bps:.0f} bit/s"
    db = sqlite3.connect(f"file:{square.store_path}?mode=ro", uri=True)
    stored = [r for (r,) in db.execute("SELECT rate_bps FROM traffic WHERE src = 's1' AND dst = 's3' AND ts BETWEEN ? AND ?",
                                       (started + 1.0, ended))]
    assert len(stored) >= 5
    assert abs(sum(stored) / len(stored) / true_bps - 1.0) < 0.15, (sum(stored) / len(stored), true_bps, stored)


def test_pushed_weights_move_traffic_without_losing_pings(square):
    warm_up(square, 4)

    def carried(count=100):
        before = square.tx_bytes("s1", "s2"), square.tx_bytes("s1", "s4")
        assert square.ping(1, 3, count) == (count, count)
        return square.tx_bytes("s1", "s2") - before[0], square.tx_bytes("s1", "s4") - before[1]

    via_s2, via_s4 = carried()
    assert via_s2 >= 100 * 98 and via_s4 < 10 * 98, "equal weights: s1 reaches s3 through s2"
    square.push_weights({("s1", "s2"): 10.0})
    via_s2, via_s4 = carried()
    assert via_s4 >= 100 * 98 and via_s2 < 10 * 98, "heavy s1->s2: s1 reaches s3 through s4"
    config = sqlite3.connect(f"file:{square.store_path}?mode=ro", uri=True).execute(
        "SELECT who, kind, payload FROM config WHERE kind = 'weights' ORDER BY id DESC LIMIT 1").fetchone()
    assert config[1] == "weights" and json.loads(config[2])["s1->s2"] == 10.0 and "state.json" in config[0]

    # Flip the weights back and forth while h1 pings h3 every 10 ms: not one ping may be lost.
    pinger = square.net.get("h1").popen(ping_command("10.0.0.3", 500, 0.01), stdout=subprocess.PIPE, text=True)
    switch_overs = []
    for weights in ({}, {("s1", "s2"): 10.0}, {("s1", "s4"): 10.0, ("s3", "s2"): 10.0}, {}):
        time.sleep(0.6)
        square.push_weights(weights)
        switch_overs.append(square.metric("ndt_routing_switch_over_seconds"))
    sent, received, lost = lost_pings(pinger.communicate(timeout=30)[0])
    assert (sent, received) == (500, 500), f"pings lost (sequence numbers): {lost}"
    assert max(switch_overs) < 2.0, switch_overs
    print(f"switch-over seconds: {switch_overs}; pings {received}/{sent}")


TCP_SINK = """
import socket, threading
server = socket.socket()
server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
server.bind(("0.0.0.0", 5001))
server.listen(128)
def drain(conn):
    while conn.recv(65536):
        pass
while True:
    threading.Thread(target=drain, args=(server.accept()[0],), daemon=True).start()
"""
TCP_FLOWS = """
import socket
for port in range(41000, 41064):
    s = socket.create_connection(("10.0.0.3", 5001), source_address=("10.0.0.1", port))
    s.sendall(bytes(20000))
    s.close()
"""


def test_ecmp_spreads_flows_over_a_select_group_and_switches_over_without_loss(tmp_path):
    """Then a switch that reconnects with a group an earlier controller process left is cleared of it."""
    bed = Emulation(tmp_path, 4, SQUARE, ecmp=True)
    try:
        warm_up(bed, 4)
        groups = subprocess.run(["ovs-ofctl", "-O", "OpenFlow13", "dump-groups", "s1"], capture_output=True, text=True,
                                check=True).stdout
        assert "type=select" in groups and groups.count("bucket=") == 2, groups
        sink = bed.net.get("h3").popen([sys.executable, "-c", TCP_SINK])
        time.sleep(0.5)
        before = bed.tx_bytes("s1", "s2"), bed.tx_bytes("s1", "s4")
        # 64 TCP connections, 20 kB each: the switches hash TCP ports (OVS's symmetric L3/L4 hash leaves
        # UDP ports out), so the connections spread over both equal-cost paths
        done = bed.net.get("h1").popen([sys.executable, "-c", TCP_FLOWS])
        assert done.wait(60) == 0
        sink.kill()
        via_s2, via_s4 = bed.tx_bytes("s1", "s2") - before[0], bed.tx_bytes("s1", "s4") - before[1]
        total = 64 * 20_000
        assert via_s2 + via_s4 >= total and min(via_s2, via_s4) >= 0.15 * total, (via_s2, via_s4)

        pinger = bed.net.get("h1").popen(ping_command("10.0.0.3", 300, 0.01), stdout=subprocess.PIPE, text=True)
        for weights in ({("s1", "s2"): 10.0}, {}, {("s1", "s4"): 10.0}):
            time.sleep(0.6)
            bed.push_weights(weights)
        sent, received, lost = lost_pings(pinger.communicate(timeout=30)[0])
        assert (sent, received) == (300, 300), f"pings lost (sequence numbers): {lost}"
        assert "rejected a message" not in bed.log_text()

        def ofctl(*args):
            return subprocess.run(["ovs-ofctl", "-O", "OpenFlow13", *args], capture_output=True, text=True,
                                  check=True).stdout

        bed.push_weights({})  # equal costs again: s1 splits over a select group
        bed.stop_controller()  # a new controller process takes over the switches
        ofctl("add-group", "s1", "group_id=7,type=select,bucket=output:1")  # as an earlier process may leave one
        assert "group_id=7," in ofctl("dump-groups", "s1")
        bed.start_controller()
        wait_for(lambda: bed.metric("ndt_switches_connected") == 4, 30, "the switches to connect again")
        for host in bed.net.hosts:  # the new process learns hosts from their ARP, so the hosts ask again
            host.cmd("ip neigh flush all")
        for dst in (2, 3, 4):
            bed.ping(1, dst, 1, 0.2)
        wait_for(lambda: "type=select" in ofctl("dump-groups", "s1"), 20, "s1's groups to be installed again")
        assert "group_id=7," not in ofctl("dump-groups", "s1")
        assert bed.ping(1, 3, 20) == (20, 20)
    finally:
        bed.stop()
        from mininet.clean import cleanup

        cleanup()


def test_link_down_is_routed_around_and_back(square):
    warm_up(square, 4)
    version = square.metric("ndt_route_version")
    square.net.configLinkStatus("s1", "s2", "down")
    wait_for(lambda: square.metric("ndt_route_version") > version, 10, "routes after the link went down")
    assert square.metric("ndt_link_up", src="s1", dst="s2") == 0
    before = square.tx_bytes("s1", "s4")
    assert square.ping(1, 3, 50) == (50, 50)
    assert square.ping(2, 1, 20) == (20, 20)  # s2 -> s1 now goes the long way round
    assert square.tx_bytes("s1", "s4") - before >= 50 * 98
    version = square.metric("ndt_route_version")
    square.net.configLinkStatus("s1", "s2", "up")
    wait_for(lambda: square.metric("ndt_route_version") > version, 10, "routes after the link came back")
    before = square.tx_bytes("s1", "s2")
    assert square.ping(1, 3, 50) == (50, 50)
    assert square.tx_bytes("s1", "s2") - before >= 50 * 98
    records = sqlite3.connect(f"file:{square.store_path}?mode=ro", uri=True).execute(
        "SELECT payload FROM config WHERE kind = 'link' ORDER BY id").fetchall()
    downs = [json.loads(payload)["down"] for (payload,) in records]
    assert ["s1->s2", "s2->s1"] in downs and downs[-1] == []  # the failure and the recovery, for ndt replay


def test_grpc_client_reads_the_network_and_applies_weights(square):
    import grpc

    from controller.api.server import pb, services

    warm_up(square, 4)
    with grpc.insecure_channel(f"127.0.0.1:{square.grpc_port}") as channel:
        stub = services.NdtStub(channel)
        status = stub.GetStatus(pb.Empty(), timeout=5)
        assert (status.switches_connected, status.hosts, status.links_down) == (4, 4, 0)
        topo = stub.GetTopology(pb.Empty(), timeout=5)
        assert {(lk.src, lk.dst): lk.port for lk in topo.links} == square.ports
        reply = stub.Apply(pb.ApplyRequest(weights=[pb.WeightChange(src="s1", dst="s2", weight=10)], who="pytest"),
                           timeout=10)
        assert reply.route_version > status.route_version
        before = square.tx_bytes("s1", "s4")
        assert square.ping(1, 3, 50) == (50, 50)
        assert square.tx_bytes("s1", "s4") - before >= 50 * 98, "Apply moved s1->s3 traffic onto s1->s4"
        with pytest.raises(grpc.RpcError) as bad:
            stub.Apply(pb.ApplyRequest(weights=[pb.WeightChange(src="s1", dst="s3", weight=1)]), timeout=5)
        assert bad.value.code() == grpc.StatusCode.NOT_FOUND and "s1->s3" in bad.value.details()
        assert stub.GetStatus(pb.Empty(), timeout=5).route_version == reply.route_version


def test_a_restarted_controller_routes_by_the_weights_it_last_pushed(square):
    """Weights pushed through gRPC, then a new controller process on the same store: it routes by the
    pushed weights (the store's last routing), not by the state file's unit weights."""
    import grpc

    from controller.api.server import pb, services

    warm_up(square, 4)
    with grpc.insecure_channel(f"127.0.0.1:{square.grpc_port}") as channel:
        services.NdtStub(channel).Apply(pb.ApplyRequest(weights=[pb.WeightChange(src="s1", dst="s2", weight=10)],
                                                        who="pytest"), timeout=10)
    square.stop_controller()
    square.start_controller()
    wait_for(lambda: square.metric("ndt_switches_connected") == 4, 30, "the switches to connect again")
    assert "resuming the routing in place before the restart" in square.log_text()
    for host in square.net.hosts:  # the new process learns hosts from their ARP, so the hosts ask again
        host.cmd("ip neigh flush all")
    for dst in (2, 3, 4):
        square.ping(1, dst, 1, 0.2)
    square.ping(3, 1, 1, 0.2)
    before = square.tx_bytes("s1", "s2"), square.tx_bytes("s1", "s4")
    out = square.net.get("h1").cmd(f"ping -n -q -s 1000 -i 0.02 -w {ping_deadline(50, 0.02)} -c 50 10.0.0.3")
    assert " 0% packet loss" in out, out
    via_s2, via_s4 = square.tx_bytes("s1", "s2") - before[0], square.tx_bytes("s1", "s4") - before[1]
    assert via_s4 >= 0.9 * 50 * 1042 > 5 * via_s2, (via_s2, via_s4)


def test_reconnecting_switch_gets_its_rules_back(square):
    warm_up(square, 4)
    version = square.metric("ndt_route_version")
    subprocess.run(["ovs-vsctl", "del-controller", "s2"], check=True)
    wait_for(lambda: square.metric("ndt_switches_connected") == 3, 10, "s2 to disconnect")
    wait_for(lambda: square.metric("ndt_route_version") > version, 10, "routes around s2")
    subprocess.run(["ovs-ofctl", "-O", "OpenFlow13", "del-flows", "s2"], check=True)
    assert square.ping(1, 3, 20) == (20, 20), "s2 is out of service: the controller routes s1->s3 through s4"
    subprocess.run(["ovs-vsctl", "set-controller", "s2", f"tcp:127.0.0.1:{square.ofp_port}"], check=True)
    wait_for(lambda: square.metric("ndt_switches_connected") == 4, 10, "s2 to reconnect")
    h3_mac = square.net.get("h3").MAC()
    wait_for(lambda: f"dl_dst={h3_mac}" in subprocess.run(["ovs-ofctl", "-O", "OpenFlow13", "dump-flows", "s2", "table=1"],
                                                          capture_output=True, text=True).stdout, 10, "s2's routes")
    assert square.ping(2, 3, 20) == (20, 20)
    before = square.tx_bytes("s1", "s2")
    assert square.ping(1, 3, 20) == (20, 20)
    assert square.tx_bytes("s1", "s2") - before >= 20 * 98, "s1 routes through s2 again"


FLOOD_FRAMES = 3000


def broadcast_flood(interface: str, frames: int) -> str:
    """A host's shell command sending ``frames`` broadcast frames of an experimental EtherType (nothing
    answers them) out of ``interface``, in bursts of 100 every 20 ms."""
    script = ("import socket, time; s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW); "
              f"s.bind(('{interface}', 0)); frame = bytes.fromhex('ffffffffffff' '000000000001' '88b5') + bytes(46); "
              f"[(s.send(frame), k % 100 or time.sleep(0.02)) for k in range({frames})]")
    return f"python3 -c \"{script}\""


def host_port_rx_packets(switch: str) -> int:
    """Frames the switch has received on port 1, its host's, read from the switch."""
    out = subprocess.run(["ovs-ofctl", "-O", "OpenFlow13", "dump-ports", switch, "1"], capture_output=True, text=True,
                         check=True).stdout
    return int(re.search(r"rx pkts=(\d+)", out).group(1))


def test_a_flooding_host_is_held_back_by_its_switchs_packet_in_meter(tmp_path):
    bed = Emulation(tmp_path, 2, [(1, 2)], controller_args=("--packet-in-rate", "50"))
    try:
        wait_for(lambda: "s1: packet-in meter at 50 frames/s" in bed.log_text(), 10, "s1's packet-in meter")
        meters = subprocess.run(["ovs-ofctl", "-O", "OpenFlow13", "dump-meters", "s1"], capture_output=True, text=True,
                                check=True).stdout
        assert re.search(r"meter=1 pktps burst stats bands=\s*type=drop rate=50 burst_size=50", meters), meters
        routes = subprocess.run(["ovs-ofctl", "-O", "OpenFlow13", "dump-flows", "s1", "table=1"],
                                capture_output=True, text=True, check=True).stdout
        miss = next(line for line in routes.splitlines() if "priority=0" in line)
        assert "meter:1" in miss and "CONTROLLER" in miss, routes
        assert bed.ping(1, 2, 3, 0.05)[1] == 3  # hosts' first frames still pass
        received_before = host_port_rx_packets("s1")
        bed.net.get("h1").cmd(broadcast_flood("h1-eth0", FLOOD_FRAMES))
        flooded = host_port_rx_packets("s1") - received_before  # what the switch took in (a few pings' too)
        assert flooded >= FLOOD_FRAMES / 2, flooded
        wait_for(lambda: (bed.metric("ndt_packet_in_meter_dropped_total", switch="s1") or 0) >= flooded / 2, 10,
                 "the meter's drops in the statistics")
        time.sleep(1.0)
        reached = (bed.metric("ndt_frames_flooded_total") or 0) + (bed.metric("ndt_frames_not_flooded_total") or 0)
        dropped = bed.metric("ndt_packet_in_meter_dropped_total", switch="s1")
        assert reached < 0.2 * flooded and reached + dropped >= 0.9 * flooded, (flooded, reached, dropped)
        assert bed.ping(1, 2, 3, 0.05)[1] == 3
    finally:
        bed.stop()
        from mininet.clean import cleanup

        cleanup()


def flows(switch: str, table: int) -> str:
    return subprocess.run(["ovs-ofctl", "-O", "OpenFlow13", "dump-flows", switch, f"table={table}"],
                          capture_output=True, text=True, check=True).stdout


def test_a_host_is_forgotten_when_its_port_goes_down_or_it_falls_silent_and_learned_again(tmp_path):
    bed = Emulation(tmp_path, 2, [(1, 2)], controller_args=("--host-age", "6"))
    h1, h2 = bed.net.get("h1"), bed.net.get("h2")
    try:
        assert bed.ping(1, 2, 3, 0.05)[1] == 3
        wait_for(lambda: bed.metric("ndt_hosts") == 2, 10, "both hosts learned")
        h1.cmd("ping -n -q -i 0.2 10.0.0.2 > /dev/null 2>&1 &")  # frames both ways, no ARP for a while
        time.sleep(9)
        assert bed.metric("ndt_hosts") == 2 and bed.metric("ndt_hosts_forgotten_total") == 0, \
            "frames counted at their ports keep the hosts heard from past the ageing time"
        bed.net.configLinkStatus("h2", "s2", "down")
        wait_for(lambda: bed.metric("ndt_hosts") == 1, 10, "h2 forgotten when its port went down")
        assert "host 00:00:00:00:00:02 (10.0.0.2) at s2 port 1 forgotten: its port (s2 port 1) went down" in bed.log_text()
        wait_for(lambda: "dl_dst=00:00:00:00:00:02" not in flows("s1", 1), 10, "h2's route at s1 gone")
        assert "dl_dst=00:00:00:00:00:02" not in flows("s1", 0) and "nw_dst=10.0.0.2" not in flows("s2", 0), \
            "h2's counting and probe rules gone"
        h1.cmd("kill %ping")
        bed.net.configLinkStatus("h2", "s2", "up")
        h2.cmd("ip neigh flush all")
        assert bed.ping(2, 1, 3, 0.05)[1] == 3
        wait_for(lambda: bed.metric("ndt_hosts") == 2, 10, "h2 learned again from its ARP")
        wait_for(lambda: bed.metric("ndt_hosts") == 0, 20, "both hosts aged out once silent")
        assert bed.metric("ndt_hosts_forgotten_total") == 3
        assert "forgotten: not heard from for 6 s" in bed.log_text()
        wait_for(lambda: "dl_dst=" not in flows("s1", 1), 10, "their routes gone")
        for host in (h1, h2):
            host.cmd("ip neigh flush all")
        assert bed.ping(1, 2, 3, 0.05)[1] == 3
        wait_for(lambda: bed.metric("ndt_hosts") == 2, 10, "both learned again")
    finally:
        bed.stop()
        from mininet.clean import cleanup

        cleanup()


def test_lldp_discovery_finds_the_wiring(tmp_path):
    """With --discover and no wiring file, LLDP finds every link's port and hosts can talk."""
    bed = Emulation(tmp_path, 4, SQUARE, discover=True)
    try:
        found = wait_for(lambda: bed.log_text().count("discovered link") >= 8, 90, "LLDP to find all 8 directed links",
                         check=False)
        assert found, "LLDP did not find all 8 links; controller log ends:\n" + bed.log_text()[-3000:]
        for (src, dst), port in bed.ports.items():
            assert f"discovered link {src}->{dst} on port {port}" in bed.log_text()
        for src, dst in ((1, 3), (2, 4), (4, 1)):
            assert bed.ping(src, dst, 5, 0.05)[1] == 5, f"h{src} -> h{dst}"
        before = bed.tx_bytes("s1", "s2")
        assert bed.ping(1, 3, 30) == (30, 30)
        assert bed.tx_bytes("s1", "s2") - before >= 30 * 98
        probes = lldp_probes_received(bed, "s1")
        time.sleep(4)
        assert lldp_probes_received(bed, "s1") - probes >= 4, \
            "LLDP probes keep coming after discovery (a lost probe is sent again)"
    finally:
        bed.stop()


def lldp_probes_received(bed, switch: str) -> int:
    """LLDP frames ``switch`` has sent to the controller so far (its LLDP rule's packet count)."""
    rules = subprocess.run(["ovs-ofctl", "-O", "OpenFlow13", "dump-flows", switch, "dl_type=0x88cc"],
                           capture_output=True, text=True, check=True).stdout
    return sum(int(line.split("n_packets=")[1].split(",")[0]) for line in rules.splitlines() if "n_packets=" in line)


GRID = [(5 * r + c + 1, 5 * r + c + 2) for r in range(5) for c in range(4)] + \
       [(5 * r + c + 1, 5 * r + c + 6) for r in range(4) for c in range(5)]


def test_grid_of_25_switches_polls_and_switches_over_without_loss(tmp_path):
    """25 switches polled every second keep being polled; network-wide weight changes lose no ping.

    The durations (poll rounds, switch-over seconds) are printed, not asserted: timing targets
    belong in benchmarks on a shared 2-core machine."""
    bed = Emulation(tmp_path, 25, GRID, poll_interval=1.0)
    try:
        for src in range(2, 26):
            assert bed.ping(src, 1, 1, 0.2)[1] == 1, f"h{src} -> h1"
        wait_for(lambda: "(625 rules)" in bed.log_text(), 15,
                 "routes for 25 hosts")
        polls = bed.metric("ndt_stats_polls_total")
        time.sleep(5.0)
        done = bed.metric("ndt_stats_polls_total") - polls
        assert done >= 1, "no statistics round completed in 5 s at 1 s polling"
        poll_s = bed.metric("ndt_stats_poll_duration_seconds")
        pinger = bed.net.get("h1").popen(ping_command("10.0.0.25", 400, 0.01), stdout=subprocess.PIPE, text=True)
        started = time.monotonic()
        corner_paths = [{("s1", "s2"): 10.0, ("s2", "s1"): 10.0}, {("s1", "s6"): 10.0, ("s6", "s1"): 10.0}, {}]
        switch_overs = []
        pushed_at = []
        for weights in corner_paths:
            time.sleep(0.8)
            pushed_at.append(round(time.monotonic() - started, 2))
            bed.push_weights(weights)
            switch_overs.append(bed.metric("ndt_routing_switch_over_seconds"))
        sent, received, lost = lost_pings(pinger.communicate(timeout=30)[0])
        print(f"25 switches: {done} polls in 5 s, last poll {poll_s:.3f} s; switch-overs {switch_overs} s; "
              f"pings {received}/{sent}")
        assert (sent, received) == (400, 400), (f"pings lost (sequence numbers, 10 ms apart): {lost}; pushes began at "
                                                f"{pushed_at} s after the first")
    finally:
        bed.stop()
