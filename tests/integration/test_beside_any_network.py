"""The operator's path of docs/deployment.md on a network ndt did not build (root): a plain Mininet
network whose switches point at a remote controller, its datapath ids and ports read with
``ovs-ofctl show`` and written into a wiring file under the operator's own node names, checked with
``ndt controller --check``, then the controller started beside it: a host two switches from a DHCP
server (dnsmasq) gets a lease from it (udhcpc) before the controller knows either, every host reaches
every other over IPv4 and IPv6, and the hosts of a network behind a router reach the rest through it."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mininet_topos.network import free_ports
from tests.integration.metrics import metric, switches_connected
from twin.state.model import Link, NetworkState

pytestmark = pytest.mark.root

REPO = Path(__file__).resolve().parents[2]
NAMES = {"bs1": "west", "bs2": "mid", "bs3": "east"}  # the operator's names for the switches


def ofctl_show(switch: str) -> tuple[str, dict[str, int]]:
    """What the operator reads off a switch: its datapath id as printed, and port number by interface name."""
    text = subprocess.run(["ovs-ofctl", "-O", "OpenFlow13", "show", switch], check=True, capture_output=True,
                          text=True).stdout
    dpid = re.search(r"dpid:([0-9a-f]{16})", text).group(1)
    return dpid, {name: int(number) for number, name in re.findall(r"^\s*(\d+)\((\S+)\):", text, re.M)}


def stop(process: subprocess.Popen) -> None:
    """Terminate ``process``, killed if it has not ended 10 s later."""
    process.terminate()
    try:
        process.wait(10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(10)


def test_the_controller_runs_beside_a_network_it_did_not_build(tmp_path, open_vswitch_running):
    from mininet.net import Mininet
    from mininet.node import OVSSwitch, RemoteController
    from mininet.topo import Topo

    class Line(Topo):
        """bh1 - bs1 - bs2 - bs3 - bh3, bh2 at bs2, and the router br at bs3 with the host bn behind it
        (prefixed names leave other Mininet networks alone)."""

        def build(self):
            switches = [self.addSwitch(f"bs{i}") for i in (1, 2, 3)]
            for i, switch in enumerate(switches, start=1):
                self.addLink(self.addHost(f"bh{i}"), switch)
            self.addLink(switches[0], switches[1])
            self.addLink(switches[1], switches[2])
            self.addLink(self.addHost("br"), switches[2])
            self.addLink(self.addHost("bn"), "br")

    ofp_port, metrics_port = free_ports(2)
    net = Mininet(topo=Line(), autoSetMacs=True, waitConnected=False,
                  switch=lambda name, **kw: OVSSwitch(name, datapath="user", protocols="OpenFlow13", failMode="secure",
                                                      **kw),
                  controller=lambda name: RemoteController("bc0", ip="127.0.0.1", port=ofp_port))
    controller = None
    try:
        net.start()
        shown = {switch: ofctl_show(switch) for switch in NAMES}
        ports = {}
        for link in net.links:
            ends = (link.intf1, link.intf2)
            if all(end.node.name in NAMES for end in ends):
                for here, there in (ends, ends[::-1]):
                    ports[f"{NAMES[here.node.name]}->{NAMES[there.node.name]}"] = shown[here.node.name][1][here.name]
        wiring = {"dpids": {NAMES[switch]: dpid for switch, (dpid, _) in shown.items()}, "ports": ports}
        (tmp_path / "wiring.json").write_text(json.dumps(wiring))
        NetworkState(nodes=("west", "mid", "east"), links=tuple(
            Link(a, b, 1e7) for a, b in (("west", "mid"), ("mid", "west"), ("mid", "east"), ("east", "mid")))
        ).save(tmp_path / "net.json")
        command = [sys.executable, "-m", "ndt.cli", "controller", "--state", str(tmp_path / "net.json"),
                   "--wiring", str(tmp_path / "wiring.json"), "--store", str(tmp_path / "t.db"), "--ofp-port",
                   str(ofp_port), "--metrics-port", str(metrics_port), "--grpc", "off", "--probe-rate", "0"]
        check = subprocess.run([*command, "--check"], cwd=REPO, capture_output=True, text=True, timeout=120)
        assert check.returncode == 0 and "3 switches, 4 links" in check.stdout, check.stderr
        assert "west=0x1, mid=0x2, east=0x3" in check.stdout and "4 link ports" in check.stdout, check.stdout
        with open(tmp_path / "log", "w") as log:
            controller = subprocess.Popen(command, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 30
        while switches_connected(metrics_port) < 3 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert switches_connected(metrics_port) == 3, (tmp_path / "log").read_text()
        for host in net.hosts:  # a wire carries whole checksums; a veth offloading them leaves them to userspace OVS
            host.cmd(f"ethtool -K {host.defaultIntf()} tx off")
        dhcp_server, dhcp_client = net.get("bh3"), net.get("bh1")  # two switches apart; no host learned yet
        with open(tmp_path / "dnsmasq.log", "w") as server_log:
            server = dhcp_server.popen(["dnsmasq", "--no-daemon", "--log-dhcp", "--port=0", "--user=root",
                                        "--bind-interfaces", f"--interface={dhcp_server.defaultIntf()}", "--no-ping",
                                        "--dhcp-range=10.0.0.100,10.0.0.120,10m", f"--dhcp-leasefile={tmp_path / 'leases'}",
                                        f"--pid-file={tmp_path / 'dnsmasq.pid'}"], stdout=server_log, stderr=subprocess.STDOUT)
        flooded = metric(metrics_port, "ndt_frames_flooded_total")
        try:  # broadcast discover and request, unicast offer and ack to a MAC the controller has not learned
            lease = dhcp_client.cmd(f"udhcpc -i {dhcp_client.defaultIntf()} -f -q -n -t 5 -T 2 -s /bin/true 2>&1")
        finally:
            stop(server)
        assert re.search(r"lease of 10\.0\.0\.1[0-2]\d obtained", lease), (
            lease + (tmp_path / "dnsmasq.log").read_text() + (tmp_path / "log").read_text())
        assert metric(metrics_port, "ndt_frames_flooded_total") >= flooded + 4  # discover, offer, request, ack
        router, behind = net.get("br"), net.get("bn")
        router.cmd("sysctl -qw net.ipv4.ip_forward=1")
        router.setIP("192.168.5.1/24", intf="br-eth1")
        behind.setIP("192.168.5.2/24", intf="bn-eth0")
        behind.cmd("ip route add default via 192.168.5.1")
        fabric = [net.get(name) for name in ("bh1", "bh2", "bh3", "br")]
        for host in fabric[:3]:
            host.cmd(f"ip route add 192.168.5.0/24 via {router.IP()}")
        loss = 100.0
        deadline = time.monotonic() + 30
        while loss > 0 and time.monotonic() < deadline:  # the first pings wait for ARP and the routes
            loss = net.ping(fabric, timeout=2)
        assert loss == 0, (tmp_path / "log").read_text()
        for number, host in enumerate(fabric[:3], start=1):
            host.cmd(f"ip -6 addr add fd00::{number}/64 dev {host.defaultIntf()} nodad")
        for host, peer in ((fabric[0], 3), (fabric[2], 2)):  # neighbour discovery through the controller, then routes
            reply = host.cmd(f"ping -6 -n -c 5 -i 0.2 -W 2 fd00::{peer}")
            assert " 0% packet loss" in reply, reply + (tmp_path / "log").read_text()
        west_east = 'ndt_traffic_bytes_total{dst="east",src="west"}'
        time.sleep(2.5)  # two statistics polls: the count of the pings above is in
        before = metric(metrics_port, west_east)
        for host in fabric[:2]:  # across the fabric to the router's MAC, on to the network behind it
            reply = host.cmd("ping -n -c 5 -i 0.2 -W 2 192.168.5.2")
            assert " 0% packet loss" in reply, reply + (tmp_path / "log").read_text()
        deadline = time.monotonic() + 10
        while metric(metrics_port, west_east) < before + 5 * 98 and time.monotonic() < deadline:
            time.sleep(0.5)
        assert metric(metrics_port, west_east) >= before + 5 * 98  # bh1's pings to the router's network count
        log = (tmp_path / "log").read_text()
        assert "switch west (dpid 0000000000000001) connected" in log and "routes v" in log, log
    finally:
        if controller is not None:
            stop(controller)
        net.stop()
