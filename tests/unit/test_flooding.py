"""What the controller carries to every edge port (controller/flooding.py and the packet-in handler),
on os-ken's own packet objects (no switch)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from controller.flooding import FLOOD_BURST_S, FloodLimiter, MeterPlan, is_group_mac, may_flood, packet_in_meter
from controller.routing_rules import Host
from tests.unit.test_hosts import A, B, Clock, FakeApp


def test_group_macs_and_what_no_bridge_forwards():
    assert is_group_mac("ff:ff:ff:ff:ff:ff") and is_group_mac("33:33:00:00:00:01") and is_group_mac("01:00:5e:00:00:fb")
    assert not is_group_mac(A) and not is_group_mac("02:42:ac:11:00:02")
    assert may_flood("ff:ff:ff:ff:ff:ff") and may_flood("33:33:00:00:00:01") and may_flood(B)
    assert not may_flood("01:80:c2:00:00:00") and not may_flood("01:80:C2:00:00:0E")  # STP, LLDP


def test_each_port_gets_its_rate_after_a_burst():
    clock = Clock()
    limiter = FloodLimiter(10.0, clock)
    assert sum(limiter.allow("p1") for _ in range(100)) == 10.0 * FLOOD_BURST_S
    assert limiter.allow("p2")  # another port has its own bucket
    clock.now = 0.05
    assert not limiter.allow("p1")  # half a frame's tokens back
    clock.now = 0.1
    assert limiter.allow("p1")
    clock.now = 1.1
    assert sum(limiter.allow("p1") for _ in range(100)) == 10  # a second later: ten more
    assert not FloodLimiter(0.0, clock).allow("p1")
    slow = FloodLimiter(0.2, clock)  # under one frame per burst: still one, then one per 5 s
    assert slow.allow("p1") and not slow.allow("p1")
    clock.now += 5.0
    assert slow.allow("p1")


def frame(dst_mac: str, src_mac: str = A) -> bytes:
    from os_ken.lib.packet import ethernet, ipv4, packet, udp

    pkt = packet.Packet()
    pkt.add_protocol(ethernet.ethernet(dst=dst_mac, src=src_mac, ethertype=0x0800))
    pkt.add_protocol(ipv4.ipv4(src="0.0.0.0", dst="255.255.255.255", proto=17))
    pkt.add_protocol(udp.udp(src_port=68, dst_port=67))
    pkt.add_protocol(b"dhcp discover")
    pkt.serialize()
    return bytes(pkt.data)


def app_receiving(rate_pps: float):
    """A FakeApp whose packet-in handler is the controller's, and the function feeding it frames."""
    from controller.app import NdtController

    app = FakeApp()
    app._flood_limiter = FloodLimiter(rate_pps, lambda: 1000.0)  # no token comes back during a test
    app._on_probe = lambda *a: False
    app._on_arp = lambda *a: NdtController._on_arp(app, *a)

    def packet_in(dpid: int, port: int, data: bytes) -> None:
        msg = SimpleNamespace(datapath=SimpleNamespace(id=dpid), match={"in_port": port}, data=data)
        NdtController._on_packet_in(app, SimpleNamespace(msg=msg))

    return app, packet_in


def counts(app) -> dict:
    return {m.name: m.samples[0].value for m in app.metrics.collect()
            if m.name in ("ndt_frames_flooded", "ndt_frames_not_flooded")}


def test_hosts_frames_to_no_learned_mac_go_to_every_other_edge_port_within_the_budget():
    app, packet_in = app_receiving(1.0)
    packet_in(1, 1, frame("ff:ff:ff:ff:ff:ff"))  # a DHCP discover from s1's host port
    packet_in(1, 1, frame("33:33:00:00:00:01"))  # IPv6 all-nodes multicast
    assert app.sent == [("flood", (1, 1))] * 2
    packet_in(1, 9, frame("ff:ff:ff:ff:ff:ff"))  # from a link: the controller carries between switches itself
    packet_in(2, 1, frame(B))  # unicast to a MAC nobody announced (a DHCP server's offer)
    packet_in(2, 1, frame("01:80:c2:00:00:00"))  # spanning tree: ends at the first bridge
    assert app.sent == [("flood", (1, 1))] * 2 + [("flood", (2, 1))]
    app._hosts.learn(Host("10.0.0.2", B, "s2", 1))
    packet_in(1, 1, frame(B))  # to a learned host: to its port (its route is on the way)
    assert app.sent[-1] == ("s2", 1)
    for _ in range(5):
        packet_in(1, 1, frame("ff:ff:ff:ff:ff:ff"))
    assert counts(app) == {"ndt_frames_flooded": 3, "ndt_frames_not_flooded": 5}  # s1 port 1's 2-frame burst is spent


def test_arp_floods_share_the_ports_budget():
    from os_ken.lib.packet import arp, ethernet, packet

    app, packet_in = app_receiving(1.0)
    request = packet.Packet()
    request.add_protocol(ethernet.ethernet(dst="ff:ff:ff:ff:ff:ff", src=A, ethertype=0x0806))
    request.add_protocol(arp.arp(opcode=arp.ARP_REQUEST, src_mac=A, src_ip="10.0.0.1", dst_mac="00:00:00:00:00:00",
                                 dst_ip="10.0.0.9"))
    request.serialize()
    for _ in range(4):
        packet_in(1, 1, bytes(request.data))  # for an address nobody has: to every edge port, twice
    assert app.sent == [("flood", (1, 1))] * 2 and counts(app) == {"ndt_frames_flooded": 2, "ndt_frames_not_flooded": 2}


def test_a_frame_from_a_group_mac_is_neither_learned_nor_carried():
    from os_ken.lib.packet import arp, ethernet, packet

    app, packet_in = app_receiving(100.0)
    broadcast = "ff:ff:ff:ff:ff:ff"
    forged = packet.Packet()
    forged.add_protocol(ethernet.ethernet(dst=broadcast, src=broadcast, ethertype=0x0806))
    forged.add_protocol(arp.arp(opcode=arp.ARP_REQUEST, src_mac=broadcast, src_ip="10.0.0.66",
                                dst_mac="00:00:00:00:00:00", dst_ip="10.0.0.2"))
    forged.serialize()
    packet_in(1, 1, bytes(forged.data))
    packet_in(1, 1, frame(broadcast, src_mac="01:00:5e:00:00:01"))
    assert app._hosts.by_mac(broadcast) is None and app.edge_rules == [] and app.sent == []


def test_a_switch_gets_a_packet_in_meter_only_where_its_meters_can_drop_packets_per_second():
    from os_ken.ofproto import ofproto_v1_3 as ofp

    drop, pktps, burst, stats = 1 << ofp.OFPMBT_DROP, ofp.OFPMF_PKTPS, ofp.OFPMF_BURST, ofp.OFPMF_STATS
    assert packet_in_meter(250.4, 262144, drop, pktps | burst | stats | ofp.OFPMF_KBPS, 1) == \
        MeterPlan(ofp.OFPMF_PKTPS | ofp.OFPMF_BURST | ofp.OFPMF_STATS, 250, 250)  # Open vSwitch's features
    assert packet_in_meter(0.2, 8, drop, pktps, 1) == MeterPlan(ofp.OFPMF_PKTPS, 1, 0)  # no burst size to give
    assert "no OpenFlow meters" in packet_in_meter(100, 0, 0, 0, 1)
    assert "cannot drop by packets" in packet_in_meter(100, 8, drop, ofp.OFPMF_KBPS, 1)
    assert "cannot drop by packets" in packet_in_meter(100, 8, 1 << ofp.OFPMBT_DSCP_REMARK, pktps, 1)
    assert "is 0" in packet_in_meter(0, 8, drop, pktps, 1)


def test_a_metered_rule_goes_out_with_the_meter_before_its_actions():
    from os_ken.ofproto import ofproto_v1_3, ofproto_v1_3_parser

    from controller.app import NdtController
    from controller.routing_rules import PACKET_IN_METER, FlowOp, base_rules

    dp = SimpleNamespace(id=7, ofproto=ofproto_v1_3, ofproto_parser=ofproto_v1_3_parser)
    for rule in base_rules(7, metered=True):
        kinds = [type(i).__name__ for i in NdtController._flow_mod(dp, FlowOp("add", 7, rule)).instructions]
        assert kinds == (["OFPInstructionMeter", "OFPInstructionActions"] if rule.actions[0][0] == "meter"
                         else ["OFPInstructionGotoTable"])
    metered = next(rule for rule in base_rules(7, metered=True) if rule.actions[0][0] == "meter")
    assert NdtController._flow_mod(dp, FlowOp("add", 7, metered)).instructions[0].meter_id == PACKET_IN_METER


def test_a_switch_that_refuses_its_meter_gets_its_rules_back_unmetered():
    from os_ken.ofproto import ofproto_v1_3, ofproto_v1_3_parser

    from controller.app import NdtController
    from controller.routing_rules import base_rules

    sent = []
    dp = SimpleNamespace(id=7, ofproto=ofproto_v1_3, ofproto_parser=ofproto_v1_3_parser, send_msg=sent.append)
    app = SimpleNamespace(wiring=SimpleNamespace(names={7: "s7"}), _metered_switches={7},
                          _flow_mod=NdtController._flow_mod)
    app._send_base_rules = lambda *a: NdtController._send_base_rules(app, *a)

    def refused(code):
        NdtController._on_error(app, SimpleNamespace(msg=SimpleNamespace(
            datapath=dp, type=ofproto_v1_3.OFPET_METER_MOD_FAILED, code=code)))

    refused(ofproto_v1_3.OFPMMFC_UNKNOWN_METER)  # the delete of a meter that was not there: nothing to undo
    assert app._metered_switches == {7} and not sent
    refused(ofproto_v1_3.OFPMMFC_OUT_OF_METERS)
    assert app._metered_switches == set() and len(sent) == len(base_rules(7))
    assert not any(type(i).__name__ == "OFPInstructionMeter" for mod in sent for i in mod.instructions)
