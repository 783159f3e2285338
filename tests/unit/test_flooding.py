"""What the controller carries to every edge port (controller/flooding.py and the packet-in handler),
on os-ken's own packet objects (no switch)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from controller.flooding import FLOOD_BURST_S, FloodLimiter, is_group_mac
from controller.routing_rules import Host
from tests.unit.test_hosts import A, B, FakeApp


def test_group_macs_are_broadcast_and_multicast():
    assert is_group_mac("ff:ff:ff:ff:ff:ff") and is_group_mac("33:33:00:00:00:01") and is_group_mac("01:00:5e:00:00:fb")
    assert not is_group_mac(A) and not is_group_mac("02:42:ac:11:00:02")


def test_each_port_gets_its_rate_after_a_burst():
    limiter = FloodLimiter(10.0)
    burst = sum(limiter.allow("p1", 0.0) for _ in range(100))
    assert burst == pytest.approx(10.0 * FLOOD_BURST_S, abs=1)
    assert limiter.allow("p2", 0.0)  # another port has its own bucket
    assert not limiter.allow("p1", 0.05)  # half a token back
    assert limiter.allow("p1", 0.1)
    assert sum(limiter.allow("p1", 1.1 + i / 1000) for i in range(100)) == pytest.approx(10, abs=1)  # 1 s: 10 more
    assert not FloodLimiter(0.0).allow("p1", 0.0)


def frame(dst_mac: str, src_mac: str = A) -> bytes:
    from os_ken.lib.packet import ethernet, ipv4, packet, udp

    pkt = packet.Packet()
    pkt.add_protocol(ethernet.ethernet(dst=dst_mac, src=src_mac, ethertype=0x0800))
    pkt.add_protocol(ipv4.ipv4(src="0.0.0.0", dst="255.255.255.255", proto=17))
    pkt.add_protocol(udp.udp(src_port=68, dst_port=67))
    pkt.add_protocol(b"dhcp discover")
    pkt.serialize()
    return bytes(pkt.data)


def test_hosts_frames_to_no_learned_mac_go_to_every_other_edge_port_within_the_budget(monkeypatch):
    from controller.app import NdtController

    monkeypatch.setattr("controller.app.time.monotonic", lambda: 1000.0)  # no token comes back during the test
    app = FakeApp()
    app._flood_limiter = FloodLimiter(1.0)
    app._on_probe = lambda *a: False
    app._flood_from_edge = lambda *a: NdtController._flood_from_edge(app, *a)

    def packet_in(dpid: int, port: int, data: bytes) -> None:
        msg = SimpleNamespace(datapath=SimpleNamespace(id=dpid), match={"in_port": port}, data=data)
        NdtController._on_packet_in(app, SimpleNamespace(msg=msg))

    packet_in(1, 1, frame("ff:ff:ff:ff:ff:ff"))  # a DHCP discover from s1's host port
    packet_in(1, 1, frame("33:33:00:00:00:01"))  # IPv6 all-nodes multicast
    assert app.sent == [("flood", (1, 1))] * 2
    packet_in(1, 9, frame("ff:ff:ff:ff:ff:ff"))  # from a link: the controller carries between switches itself
    packet_in(2, 1, frame(B))  # unicast to a MAC nobody announced (a DHCP server's offer)
    assert app.sent == [("flood", (1, 1))] * 2 + [("flood", (2, 1))]
    app._hosts.learn(Host("10.0.0.2", B, "s2", 1))
    packet_in(1, 1, frame(B))  # to a learned host: to its port (its route is on the way)
    assert app.sent[-1] == ("s2", 1)
    for _ in range(5):
        packet_in(1, 1, frame("ff:ff:ff:ff:ff:ff"))
    counts = {m.name: m.samples[0].value for m in app.metrics.collect()
              if m.name in ("ndt_frames_flooded", "ndt_frames_not_flooded")}
    assert counts["ndt_frames_flooded"] == 3 and counts["ndt_frames_not_flooded"] == 5  # s1 port 1's 2-frame burst is spent


def test_a_group_mac_is_never_learned_as_a_host():
    from os_ken.lib.packet import arp, ethernet

    app = FakeApp()
    broadcast = "ff:ff:ff:ff:ff:ff"
    app.handle._on_arp(SimpleNamespace(id=1), 1, ethernet.ethernet(dst=broadcast, src=broadcast, ethertype=0x0806),
                       arp.arp(opcode=arp.ARP_REQUEST, src_mac=broadcast, src_ip="10.0.0.66",
                               dst_mac="00:00:00:00:00:00", dst_ip="10.0.0.2"), b"")
    assert app._hosts.by_mac(broadcast) is None and app.edge_rules == [] and app.reroutes == []
