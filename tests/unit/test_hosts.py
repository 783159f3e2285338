"""Where the controller thinks each host is (controller/hosts.py), and how its ARP, neighbour
discovery and counting-rule handlers use that, on os-ken's own packet objects (no switch)."""

from __future__ import annotations

import threading
from types import SimpleNamespace

from os_ken.ofproto import ofproto_v1_3, ofproto_v1_3_parser

from controller.flooding import FloodLimiter
from controller.hosts import HostTable, Learned
from telemetry.exporter import Metrics
from telemetry.rates import CounterRates
from controller.routing_rules import Host, Wiring, edge_rules_left_behind, edge_rules_of_departed, route_rules
from twin.state.model import Link, NetworkState

A, B, ROUTER = "00:00:00:00:00:0a", "00:00:00:00:00:0b", "00:00:00:00:00:0c"


def test_a_new_mac_is_a_new_place_a_second_address_is_not():
    table = HostTable()
    assert table.learn(Host("10.0.0.1", A, "s1", 1)) == Learned(place=True, address=True)
    assert table.learn(Host("10.0.0.1", A, "s1", 1)) == Learned(place=False, address=False)
    assert table.learn(Host("fd00::1", A, "s1", 1)) == Learned(place=False, address=True)
    assert [h.mac for h in table.macs()] == [A] and len(table.addresses()) == 2


def test_a_mac_that_moves_takes_its_addresses_with_it():
    table = HostTable()
    table.learn(Host("10.0.0.1", A, "s1", 1))
    table.learn(Host("fd00::1", A, "s1", 1))
    assert table.learn(Host("10.0.0.1", A, "s2", 3)) == Learned(place=True, address=False, moved_from=("s1", 1))
    assert {(h.ip, h.switch, h.port) for h in table.addresses()} == {("10.0.0.1", "s2", 3), ("fd00::1", "s2", 3)}
    assert table.by_mac(A).switch == "s2"


def test_an_address_passing_to_another_mac_leaves_the_first_macs_routes():
    table = HostTable()
    table.learn(Host("10.0.0.1", ROUTER, "s1", 1))
    table.learn(Host("fe80::1", ROUTER, "s1", 1))
    assert table.learn(Host("fe80::1", B, "s2", 1)) == Learned(place=True, address=True,
                                                              replaced=Host("fe80::1", ROUTER, "s1", 1))
    assert table.by_address("fe80::1").mac == B and table.by_mac(ROUTER) is not None
    state = NetworkState(nodes=("s1", "s2"), links=(Link("s1", "s2", 1e7), Link("s2", "s1", 1e7)))
    wiring = Wiring({"s1": 1, "s2": 2}, {("s1", "s2"): 2, ("s2", "s1"): 2})
    routes = route_rules(state, wiring, table.macs(), version=1)  # two labels may share an address
    assert {mac for _, mac in routes.rules} == {ROUTER, B}


class FakeApp(SimpleNamespace):
    """The part of NdtController its host handlers use, recording what they send."""

    def __init__(self):
        from controller.app import NdtController

        wiring = Wiring({"s1": 1, "s2": 2}, {("s1", "s2"): 9, ("s2", "s1"): 9})
        super().__init__(wiring=wiring, _lock=threading.RLock(), _hosts=HostTable(), _edge_version=0, sent=[],
                         reroutes=[], edge_rules=[], metrics=Metrics(), flow_mods=[], _counter_bytes={},
                         _traffic_rates=CounterRates())
        self._datapaths = {dpid: SimpleNamespace(id=dpid, ofproto=ofproto_v1_3, ofproto_parser=ofproto_v1_3_parser,
                                                 send_msg=self.flow_mods.append) for dpid in (1, 2)}
        self._flow_mod = NdtController._flow_mod
        self._arp_ready = lambda: True
        self._packet_out = lambda switch, port, data: self.sent.append((switch, port))
        self._flood_edges = lambda data, exclude: self.sent.append(("flood", exclude))
        self._flood_limiter = FloodLimiter(1e6)
        self._flood_from_edge = lambda *a: NdtController._flood_from_edge(self, *a)
        self._install_edge_rules = lambda macs, addresses: self.edge_rules.append((len(macs), len(addresses)))
        self.request_reroute = self.reroutes.append
        self._learn = lambda host: NdtController._learn(self, host)
        self._forget_hosts = lambda choose, why: NdtController._forget_hosts(self, choose, why)
        self._forget_counters = lambda deleted: NdtController._forget_counters(self, deleted)
        self._port_is_up = NdtController._port_is_up
        self._send_rules = lambda kind, rules: NdtController._send_rules(self, kind, rules)
        self._carry = lambda *a: NdtController._carry(self, *a)
        self.handle = SimpleNamespace(**{name: (lambda method: lambda *a: method(self, *a))(getattr(NdtController, name))
                                         for name in ("_on_arp", "_on_neighbour_discovery", "_on_counter_stats",
                                                      "_on_port_change", "_forget_hosts")})


def neighbour(kind: int, src_ip: str, src_mac: str, dst_mac: str, target: str):
    from os_ken.lib.packet import ethernet, icmpv6, ipv6

    return (ethernet.ethernet(dst=dst_mac, src=src_mac, ethertype=0x86DD), ipv6.ipv6(src=src_ip, dst="ff02::1:ff00:2"),
            icmpv6.icmpv6(type_=kind, data=icmpv6.nd_neighbor(dst=target)))


def test_neighbour_discovery_is_learned_and_delivered_never_back_to_its_sender():
    app, s1, s2 = FakeApp(), SimpleNamespace(id=1), SimpleNamespace(id=2)
    app.handle._on_neighbour_discovery(s1, 1, *neighbour(135, "::", A, "33:33:ff:00:00:01", "fd00::1"), b"")
    assert app._hosts.addresses() == [] and app.sent == [("flood", (1, 1))]  # a duplicate-address test: not learned
    app.handle._on_neighbour_discovery(s1, 1, *neighbour(135, "fd00::1", A, "33:33:ff:00:00:02", "fd00::2"), b"")
    assert app._hosts.by_address("fd00::1") == Host("fd00::1", A, "s1", 1) and app.reroutes == ["host fd00::1 learned"]
    app.handle._on_neighbour_discovery(s2, 1, *neighbour(136, "fd00::2", B, A, "fd00::2"), b"")
    assert app.sent[-1] == ("s1", 1)  # the answer goes to the host that asked
    app.handle._on_neighbour_discovery(s2, 1, *neighbour(135, "fd00::2", B, "33:33:ff:00:00:01", "fd00::1"), b"")
    assert app.sent[-1] == ("s1", 1)  # a solicitation goes to the solicited host
    sent = len(app.sent)
    app.handle._on_neighbour_discovery(s1, 1, *neighbour(135, "::", A, "33:33:ff:00:00:01", "fd00::1"), b"")
    assert len(app.sent) == sent  # its own address test is not sent back to it
    app.handle._on_neighbour_discovery(s1, 9, *neighbour(135, "fd00::7", ROUTER, "33:33:ff:00:00:01", "fd00::1"), b"")
    assert app._hosts.by_address("fd00::7") is None  # a link port: not a host's


def test_arp_learns_only_what_its_frame_vouches_for():
    from os_ken.lib.packet import arp, ethernet

    app, s1 = FakeApp(), SimpleNamespace(id=1)

    def request(src_mac: str, frame_src: str, src_ip: str):
        return (ethernet.ethernet(dst="ff:ff:ff:ff:ff:ff", src=frame_src, ethertype=0x0806),
                arp.arp(opcode=arp.ARP_REQUEST, src_mac=src_mac, src_ip=src_ip, dst_mac="00:00:00:00:00:00",
                        dst_ip="10.0.0.2"), b"")

    app.handle._on_arp(s1, 1, *request(B, A, "10.0.0.1"))
    assert app._hosts.addresses() == [] and app.sent == []  # announces B from A's frame: ignored
    app.handle._on_arp(s1, 1, *request(A, A, "0.0.0.0"))
    assert app._hosts.addresses() == [] and app.sent == [("flood", (1, 1))]  # an address probe: carried, not learned
    app.handle._on_arp(s1, 1, *request(A, A, "10.0.0.1"))
    assert app._hosts.by_address("10.0.0.1") == Host("10.0.0.1", A, "s1", 1) and app.edge_rules == [(1, 1)]
    app.handle._on_arp(SimpleNamespace(id=2), 1, *request(A, A, "10.0.0.1"))  # A shows up at s2
    gauges = {m.name: m.samples[0].value for m in app.metrics.collect() if m.name in ("ndt_hosts", "ndt_host_moves")}
    assert gauges == {"ndt_hosts": 1, "ndt_host_moves": 1}
    deleted = [(m.datapath.id, dict(m.match.items())) for m in app.flow_mods if m.command == ofproto_v1_3.OFPFC_DELETE_STRICT]
    assert deleted == [(1, {"eth_type": 0x0800, "ip_proto": 17, "ipv4_dst": "10.0.0.1", "udp_dst": 47474})]  # its probe rule at s1
    assert app.reroutes[-1] == "host 10.0.0.1 moved"
    app.sent.clear()
    app.handle._on_arp(s1, 1, *request(A, A, "10.0.0.2")[:1], arp.arp(
        opcode=arp.ARP_REQUEST, src_mac=A, src_ip="10.0.0.1", dst_mac="00:00:00:00:00:00", dst_ip="10.0.0.1"), b"")
    assert app.sent == [("flood", (1, 1))]  # gratuitous: to every other edge port, never back
    app._hosts.learn(Host("10.0.0.3", B, "s1", 1))  # two hosts behind one port (a hub)
    app.sent.clear()
    app.handle._on_arp(s1, 1, *request(A, A, "10.0.0.1")[:1], arp.arp(
        opcode=arp.ARP_REQUEST, src_mac=A, src_ip="10.0.0.1", dst_mac="00:00:00:00:00:00", dst_ip="10.0.0.3"), b"")
    assert app.sent == []  # the host it asks for is on its own segment and answers itself


def test_a_moved_mac_leaves_its_counting_and_probe_rules_behind_to_delete():
    wiring = Wiring({"s1": 1, "s2": 2}, {("s1", "s2"): 9, ("s2", "s1"): 9})
    hosts = [Host("10.0.0.1", A, "s2", 3), Host("fd00::1", A, "s2", 3), Host("10.0.0.2", B, "s2", 1),
             Host("10.0.0.3", ROUTER, "s1", 2)]
    left = edge_rules_left_behind(hosts[0], ("s1", 1), hosts, hosts, wiring)
    counting = [dict(r.match) for r in left if "eth_src" in dict(r.match)]
    assert all(r.dpid == 1 for r in left) and len(left) == 3  # two counting rules, one (IPv4) probe rule
    assert {(m["in_port"], m["eth_src"], m["eth_dst"]) for m in counting} == {(1, A, B), (1, A, ROUTER)}
    assert [dict(r.match)["ipv4_dst"] for r in left if "ipv4_dst" in dict(r.match)] == ["10.0.0.1"]
    same_switch = edge_rules_left_behind(hosts[0], ("s2", 5), hosts, hosts, wiring)
    assert len(same_switch) == 2 and all(dict(r.match)["in_port"] == 5 for r in same_switch)  # its probe rule stays
    orphan = Host("10.0.0.9", "00:00:00:00:00:0f", "s1", 7)  # a MAC whose only address passed to another MAC
    towards_orphan = edge_rules_left_behind(hosts[0], ("s1", 1), [*hosts, orphan], hosts, wiring)
    assert (1, A, orphan.mac) in {(dict(r.match)["in_port"], dict(r.match)["eth_src"], dict(r.match)["eth_dst"])
                                  for r in towards_orphan if "eth_src" in dict(r.match)}


def test_a_moved_mac_leaves_no_counts_of_its_old_rules_behind():
    app = FakeApp()
    app._learn(Host("10.0.0.1", A, "s1", 1))
    app._learn(Host("10.0.0.2", B, "s2", 1))
    app._counter_bytes.update({(1, 1, A, B): 9_000, (2, 1, B, A): 700})
    app._traffic_rates.update((1, 1, A, B), 0.0, 9_000.0)
    app._learn(Host("10.0.0.1", A, "s1", 4))  # A moved: its rule at port 1 is deleted
    assert app._counter_bytes == {(2, 1, B, A): 700}  # put back later, its rule counts from zero
    assert app._traffic_rates.update((1, 1, A, B), 10.0, 100.0) is None


def test_counting_rules_count_at_their_source_macs_place_only():
    from os_ken.ofproto import ofproto_v1_3_parser as parser

    from controller.app import NdtController
    from telemetry.store import TelemetryStore

    app = FakeApp()
    app._hosts.learn(Host("10.0.0.1", A, "s1", 1))
    app._hosts.learn(Host("10.0.0.2", B, "s2", 1))
    app._hosts.learn(Host("10.0.0.1", A, "s1", 4))  # A moved: its rule at port 1 is left behind
    app.__dict__.update(_traffic_rates=CounterRates(), _traffic_totals={}, _counter_bytes={}, store=TelemetryStore(),
                        metrics=Metrics(), _store=NdtController._store)

    def rule(in_port: int, byte_count: int):
        return parser.OFPFlowStats(table_id=0, duration_sec=5, duration_nsec=0, priority=200, idle_timeout=0,
                                   hard_timeout=0, flags=0, cookie=1, packet_count=1, byte_count=byte_count,
                                   match=parser.OFPMatch(in_port=in_port, eth_src=A, eth_dst=B), instructions=[])

    app.handle._on_counter_stats(SimpleNamespace(datapath=SimpleNamespace(id=1)), [rule(1, 10_000), rule(4, 300)], 10.0)
    assert app._traffic_totals == {("s1", "s2"): 300}
    s1 = SimpleNamespace(datapath=SimpleNamespace(id=1))
    app.handle._on_counter_stats(s1, [rule(4, 100)], 11.0)  # the rule was put back: it counts from zero again
    app.handle._on_counter_stats(s1, [rule(4, 250)], 12.0)
    assert app._traffic_totals == {("s1", "s2"): 550}  # the bytes sent never go down


class Clock:
    """A clock the test sets (s)."""

    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_a_mac_is_forgotten_with_all_its_addresses_and_only_when_silent_for_the_ageing_time():
    clock = Clock()
    table = HostTable(clock)
    table.learn(Host("10.0.0.1", A, "s1", 1))
    table.learn(Host("fd00::1", A, "s1", 1))
    table.learn(Host("10.0.0.2", B, "s2", 1))
    both = {"s1", "s2"}
    clock.now = 100.0
    table.heard(["00:00:00:00:00:99"])  # an unknown MAC: skipped
    clock.now = 200.0
    table.heard([A])  # A's rule counted frames: A heard from at 200 s
    clock.now = 300.0
    assert [h.mac for h in table.silent(300.0, both)] == [B]  # B: heard from when learned, at 0 s
    clock.now = 500.0
    assert [h.mac for h in table.silent(300.0, both)] == [A, B]
    assert table.silent(300.0, {"s2"}) == [Host("10.0.0.2", B, "s2", 1)]  # s1 not read: its hosts are not judged
    table.refresh("s1")  # s1 back: its hosts count as heard from now
    assert [h.mac for h in table.silent(300.0, both)] == [B]
    assert table.at("s1", 1) == [Host("10.0.0.1", A, "s1", 1)] and table.at("s1", 2) == []
    gone = table.forget([A, A, "00:00:00:00:00:99"])
    assert gone.macs == [Host("10.0.0.1", A, "s1", 1)]
    assert {h.ip for h in gone.addresses} == {"10.0.0.1", "fd00::1"}
    assert table.by_mac(A) is None and table.by_address("fd00::1") is None and table.by_address("10.0.0.2") is not None
    clock.now = 510.0
    assert table.learn(Host("10.0.0.1", A, "s2", 4)) == Learned(place=True, address=True)  # back: new, not moved
    clock.now = 600.0
    table.heard([B])
    assert [h.mac for h in table.silent(50.0, both)] == [A]


def test_a_departed_mac_leaves_counting_rules_both_ways_and_its_probe_rules():
    wiring = Wiring({"s1": 1, "s2": 2}, {("s1", "s2"): 9, ("s2", "s1"): 9})
    departed = [Host("10.0.0.1", A, "s1", 3)]
    addresses = [Host("10.0.0.1", A, "s1", 3), Host("fd00::1", A, "s1", 3)]
    left = [Host("10.0.0.2", B, "s2", 1), Host("10.0.0.3", ROUTER, "s1", 2)]
    rules = edge_rules_of_departed(departed, addresses, left, wiring)
    counting = {(r.dpid, dict(r.match)["in_port"], dict(r.match)["eth_src"], dict(r.match)["eth_dst"])
                for r in rules if "eth_src" in dict(r.match)}
    assert counting == {(1, 3, A, B), (1, 3, A, ROUTER), (2, 1, B, A), (1, 2, ROUTER, A)}
    assert [(r.dpid, dict(r.match)["ipv4_dst"]) for r in rules if "ipv4_dst" in dict(r.match)] == [(1, "10.0.0.1")]


def test_a_host_whose_port_goes_down_is_forgotten_with_its_rules_and_routes():
    app = FakeApp()
    app._hosts.learn(Host("10.0.0.1", A, "s1", 1))
    app._hosts.learn(Host("10.0.0.2", B, "s2", 1))
    app._traffic_rates.update((1, 1, A, B), 0.0, 100.0)
    app._traffic_rates.update((2, 1, B, A), 0.0, 100.0)
    app._counter_bytes.update({(1, 1, A, B): 100, (2, 1, B, A): 100, (2, 1, B, ROUTER): 50})
    app._set_port = lambda dpid, port, up: False  # the link's state is another test's
    s1 = SimpleNamespace(id=1, ports={}, ofproto=ofproto_v1_3)
    app.handle._on_port_change(SimpleNamespace(datapath=s1, port_no=9))  # a link port: no host there
    assert app._hosts.by_mac(A) is not None and app.flow_mods == []
    app.handle._on_port_change(SimpleNamespace(datapath=s1, port_no=1))  # A's port, deleted
    assert app._hosts.by_mac(A) is None and app._hosts.by_address("10.0.0.1") is None
    deleted = {(m.datapath.id if hasattr(m, "datapath") else None, tuple(sorted(dict(m.match.items()).items())))
               for m in app.flow_mods if m.command == ofproto_v1_3.OFPFC_DELETE_STRICT}
    assert len(deleted) == 3  # A → B at s1 port 1, B → A at s2 port 1, A's probe rule at s1
    assert app.reroutes == [f"host {A} forgotten"] and app._edge_version == 1
    assert app._traffic_rates.update((1, 1, A, B), 10.0, 200.0) is None  # its counters start again if it comes back
    assert app._counter_bytes == {(2, 1, B, ROUTER): 50}
    metrics = {m.name: m.samples[0].value for m in app.metrics.collect() if m.name in ("ndt_hosts", "ndt_hosts_forgotten")}
    assert metrics == {"ndt_hosts": 1, "ndt_hosts_forgotten": 1}
    app.handle._on_port_change(SimpleNamespace(datapath=s1, port_no=1))  # nothing left there: nothing happens
    assert app.reroutes == [f"host {A} forgotten"]


def test_frames_counted_at_a_macs_place_keep_it_heard_from_same_switch_peers_included():
    from os_ken.ofproto import ofproto_v1_3_parser as parser

    from controller.app import NdtController
    from telemetry.store import TelemetryStore

    clock = Clock()
    app = FakeApp()
    app.__dict__.update(_hosts=HostTable(clock), _traffic_rates=CounterRates(), _traffic_totals={}, _counter_bytes={},
                        store=TelemetryStore(), _store=NdtController._store)
    app._hosts.learn(Host("10.0.0.1", A, "s1", 1))
    app._hosts.learn(Host("10.0.0.3", ROUTER, "s1", 2))

    def rule(in_port: int, src: str, dst: str, byte_count: int):
        return parser.OFPFlowStats(table_id=0, duration_sec=5, duration_nsec=0, priority=200, idle_timeout=0,
                                   hard_timeout=0, flags=0, cookie=1, packet_count=1, byte_count=byte_count,
                                   match=parser.OFPMatch(in_port=in_port, eth_src=src, eth_dst=dst), instructions=[])

    s1 = SimpleNamespace(datapath=SimpleNamespace(id=1))
    clock.now = 100.0
    app.handle._on_counter_stats(s1, [rule(1, A, ROUTER, 0), rule(2, ROUTER, A, 0)], 100.0)
    clock.now = 250.0
    app.handle._on_counter_stats(s1, [rule(1, A, ROUTER, 900), rule(2, ROUTER, A, 0), rule(7, ROUTER, A, 50)], 250.0)
    clock.now = 360.0
    assert [h.mac for h in app._hosts.silent(200.0, {"s1"})] == [ROUTER]  # its count at port 7 is not at its place
    app.handle._on_counter_stats(s1, [rule(1, A, ROUTER, 100), rule(2, ROUTER, A, 0)], 360.0)  # A's rule put back
    clock.now = 500.0
    assert [h.mac for h in app._hosts.silent(200.0, {"s1"})] == [ROUTER]  # its 100 bytes came since: A heard at 360 s
    assert app._traffic_totals == {}  # one switch: no traffic-matrix entry
