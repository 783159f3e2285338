"""Route rules and the make-before-break switch-over, checked without a switch.

A tiny model of the route table (highest priority wins) replays the planned flow-mods
one at a time, in random order within each batch, and walks every (switch, host) pair
after each step.
"""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from controller.routing_rules import (
    ARP_PRIORITY,
    COUNTER_PRIORITY,
    GROUP_PARITY,
    PROBE_PRIORITY,
    PROBE_UDP_PORT,
    ROUTE_TABLE,
    Host,
    RuleError,
    Wiring,
    PACKET_IN_METER,
    base_rules,
    counter_rules,
    plan_update,
    probe_rules,
    route_cookie,
    route_rules,
)
from twin.state.model import Link, NetworkState


def make_net(n: int, edges: list[tuple[int, int]], weights: list[float], ecmp: bool = False):
    """State, wiring and one host per switch (port 1; link ports from 2 up)."""
    nodes = tuple(f"s{i + 1}" for i in range(n))
    links, ports, next_port = [], {}, {node: 2 for node in nodes}
    for k, (a, b) in enumerate(edges):
        for j, (u, v) in enumerate(((nodes[a], nodes[b]), (nodes[b], nodes[a]))):
            links.append(Link(u, v, capacity=1e7, weight=weights[2 * k + j]))
            ports[(u, v)] = next_port[u]
            next_port[u] += 1
    state = NetworkState(nodes=nodes, links=tuple(links), ecmp=ecmp)
    wiring = Wiring(dpids={node: i + 1 for i, node in enumerate(nodes)}, ports=ports)
    hosts = [Host(f"10.0.0.{i + 1}", f"00:00:00:00:00:{i + 1:02x}", node, 1) for i, node in enumerate(nodes)]
    return state, wiring, hosts


class Tables:
    """Route tables and select groups of every switch: the highest-priority rule matching the
    destination MAC decides. As in OpenFlow 1.3, a rule cannot name a group that does not exist, a group id cannot be
    added twice, and deleting a group removes the rules that forward to it."""

    def __init__(self):
        self.entries: dict[tuple, object] = {}
        self.groups: dict[tuple[int, int], tuple[int, ...]] = {}

    def apply(self, op) -> None:
        if op.kind == "add":
            for action in op.rule.actions:
                assert action[0] != "group" or (op.dpid, action[1]) in self.groups, f"{op}: no such group"
            self.entries[op.rule.key] = op.rule
        elif op.kind == "add_group":
            assert (op.dpid, op.group) not in self.groups, f"{op}: the group exists"
            self.groups[(op.dpid, op.group)] = op.ports
        elif op.kind == "delete_group":
            self.groups.pop((op.dpid, op.group), None)
            for key, rule in list(self.entries.items()):
                if rule.dpid == op.dpid and ("group", op.group) in rule.actions:
                    del self.entries[key]
        elif op.kind == "delete_strict":
            self.entries.pop(op.rule.key, None)
        elif op.kind == "delete_cookie":
            for key, rule in list(self.entries.items()):
                if rule.dpid == op.dpid and rule.table == op.table and rule.cookie == op.cookie:
                    del self.entries[key]
        else:
            raise AssertionError(op.kind)

    def output(self, dpid: int, mac: str):
        best = None
        for rule in self.entries.values():
            if rule.dpid == dpid and rule.table == ROUTE_TABLE and dict(rule.match)["eth_dst"] == mac:
                if best is None or rule.priority > best.priority:
                    best = rule
        return None if best is None else best.actions[0][1]

    def outputs(self, dpid: int, mac: str) -> tuple[int, ...] | None:
        """The ports a frame to ``mac`` may leave ``dpid`` by: one, or a select group's buckets."""
        action = self.output(dpid, mac)
        best = max((r for r in self.entries.values() if r.dpid == dpid and r.table == ROUTE_TABLE
                    and dict(r.match)["eth_dst"] == mac), key=lambda r: r.priority, default=None)
        if best is None:
            return None
        return self.groups[(dpid, action)] if best.actions[0][0] == "group" else (action,)


def walk(tables: Tables, wiring: Wiring, hosts: list[Host], start: str, host: Host, down=frozenset()) -> str:
    """'delivered', 'loop', 'no rule' or 'dead link' for a packet entering ``start`` towards ``host``;
    with select groups every bucket is followed, and any branch that fails decides."""
    stack = [(start, frozenset())]
    while stack:
        node, visited = stack.pop()
        if node in visited:
            return "loop"
        ports = tables.outputs(wiring.dpids[node], host.mac)
        if ports is None:
            return "no rule"
        for port in ports:
            if node == host.switch and port == host.port:
                continue
            link = wiring.link_at(wiring.dpids[node], port)
            assert link is not None, f"{node} outputs {host.ip} to edge port {port}"
            if link in down:
                return "dead link"
            stack.append((link[1], visited | {node}))
    return "delivered"


def install(plan) -> Tables:
    tables = Tables()
    for batch in plan:
        for op in batch:
            tables.apply(op)
    return tables


def replay_checked(tables, plan, wiring, hosts, nodes, down=frozenset(), allowed=("delivered",), seed=0):
    """Apply ``plan`` op by op (shuffled within batches), asserting every walk's outcome is allowed."""
    rng = random.Random(seed)
    for batch in plan:
        ops = list(batch)
        rng.shuffle(ops)
        for op in ops:
            tables.apply(op)
            for start in nodes:
                for host in hosts:
                    outcome = walk(tables, wiring, hosts, start, host, down)
                    assert outcome in allowed, f"{start}->{host.ip}: {outcome} after {op}"


# --------------------------------------------------------------------- fixed examples
SQUARE = [(0, 1), (1, 2), (2, 3), (3, 0)]


def test_square_routes_follow_weights():
    state, wiring, hosts = make_net(4, SQUARE, [1] * 8)
    routes = route_rules(state, wiring, hosts, version=1)
    tables = install(plan_update(None, routes))
    # s1 -> s3: two equal-cost paths, the tie goes to the lowest node index (s2).
    assert tables.output(1, "00:00:00:00:00:03") == wiring.ports[("s1", "s2")]
    heavy = state.with_weights([10 if (lk.src, lk.dst) == ("s1", "s2") else 1 for lk in state.links])
    routes2 = route_rules(heavy, wiring, hosts, version=2)
    replay_checked(tables, plan_update(routes, routes2), wiring, hosts, state.nodes)
    assert tables.output(1, "00:00:00:00:00:03") == wiring.ports[("s1", "s4")]
    assert {r.cookie for r in tables.entries.values()} == {route_cookie(2)}
    assert len(tables.entries) == 16


def test_ecmp_splits_over_a_select_group_and_switches_over_cleanly():
    state, wiring, hosts = make_net(4, SQUARE, [1] * 8, ecmp=True)
    routes = route_rules(state, wiring, hosts, version=1)
    plan = plan_update(None, routes)
    assert {op.kind for op in plan[0]} == {"delete_group"} and {op.kind for op in plan[1]} == {"add_group"}
    tables = install(plan)
    # s1 -> s3: both equal-cost next hops, through s2 and through s4, as one select group
    assert tables.outputs(1, "00:00:00:00:00:03") == tuple(sorted((wiring.ports[("s1", "s2")], wiring.ports[("s1", "s4")])))
    assert tables.outputs(1, "00:00:00:00:00:02") == (wiring.ports[("s1", "s2")],)  # one next hop: a plain output
    assert len(routes.groups) == 4 and all(gid > GROUP_PARITY for _, gid in routes.groups)  # odd version
    assert routes.hops[(1, "00:00:00:00:00:03")] == 2
    heavy = state.with_weights([10 if (lk.src, lk.dst) == ("s1", "s2") else 1 for lk in state.links])
    heavy = NetworkState(heavy.nodes, heavy.links, ecmp=True)
    routes2 = route_rules(heavy, wiring, hosts, version=2)
    replay_checked(tables, plan_update(routes, routes2), wiring, hosts, state.nodes)
    assert tables.outputs(1, "00:00:00:00:00:03") == (wiring.ports[("s1", "s4")],)
    assert tables.groups == routes2.groups and all(gid < GROUP_PARITY for _, gid in routes2.groups)


def test_every_pair_reachable_and_host_port_last():
    state, wiring, hosts = make_net(5, [(0, 1), (1, 2), (2, 3), (3, 4), (4, 0), (0, 2)], list(range(1, 13)))
    routes = route_rules(state, wiring, hosts, version=1)
    tables = install(plan_update(None, routes))
    for host in hosts:
        assert tables.output(wiring.dpids[host.switch], host.mac) == host.port
        for start in state.nodes:
            assert walk(tables, wiring, hosts, start, host) == "delivered"
    assert all(routes.hops[(wiring.dpids[h.switch], h.mac)] == 0 for h in hosts)


def test_link_down_routes_around_and_never_loops():
    state, wiring, hosts = make_net(4, SQUARE, [1] * 8)
    old = route_rules(state, wiring, hosts, version=1)
    tables = install(plan_update(None, old))
    down = frozenset({("s1", "s2"), ("s2", "s1")})
    new = route_rules(state, wiring, hosts, version=2, down=down)
    assert all(wiring.link_at(r.dpid, r.actions[0][1]) not in down for r in new.rules.values())
    replay_checked(tables, plan_update(old, new), wiring, hosts, state.nodes, down,
                   allowed=("delivered", "dead link"))
    for host in hosts:
        for start in state.nodes:
            assert walk(tables, wiring, hosts, start, host, down) == "delivered"


def test_partition_drops_unreachable_rules():
    state, wiring, hosts = make_net(3, [(0, 1), (1, 2)], [1] * 4)
    down = frozenset({("s2", "s3"), ("s3", "s2")})
    routes = route_rules(state, wiring, hosts, version=1, down=down)
    assert (1, "00:00:00:00:00:03") not in routes.rules and (3, "00:00:00:00:00:01") not in routes.rules
    assert (3, "00:00:00:00:00:03") in routes.rules


def test_alternating_priorities_and_cookies():
    state, wiring, hosts = make_net(3, [(0, 1), (1, 2)], [1] * 4)
    r1, r2 = (route_rules(state, wiring, hosts, version=v) for v in (1, 2))
    assert {r.priority for r in r1.rules.values()} != {r.priority for r in r2.rules.values()}
    with pytest.raises(RuleError, match="parity"):
        plan_update(r1, route_rules(state, wiring, hosts, version=3))
    plan = plan_update(r1, r2)  # nothing changes: one prepare batch, one cleanup batch
    assert len(plan) == 2 and {op.kind for op in plan[-1]} == {"delete_cookie"}


def test_base_and_counter_rules():
    state, wiring, hosts = make_net(3, [(0, 1), (1, 2)], [1] * 4)
    assert {(r.table, r.priority) for r in base_rules(7)} == {(0, 0), (0, ARP_PRIORITY), (1, 0)}
    to_controller = {r.match for r in base_rules(7) if r.actions == (("controller",),) and r.table == 0}
    assert to_controller == {(("eth_type", 0x0806),),
                             (("eth_type", 0x86DD), ("icmpv6_type", 135), ("ip_proto", 58)),
                             (("eth_type", 0x86DD), ("icmpv6_type", 136), ("ip_proto", 58))}
    assert ARP_PRIORITY > COUNTER_PRIORITY  # ARP between two known hosts still reaches the controller
    metered = {rule.key: rule.actions for rule in base_rules(7, metered=True)}
    for rule in base_rules(7):  # the same rules, those to the controller through the meter first
        assert metered[rule.key] == ((("meter", PACKET_IN_METER),) + rule.actions if rule.actions == (("controller",),)
                                     else rule.actions)
    counters = counter_rules(hosts, wiring)
    assert len(counters) == 6 and all(r.priority == COUNTER_PRIORITY for r in counters)
    assert {(dict(r.match)["eth_src"], dict(r.match)["eth_dst"]) for r in counters} == \
        {(a.mac, b.mac) for a in hosts for b in hosts if a != b}
    assert all(dict(r.match)["in_port"] == 1 and "eth_type" not in dict(r.match) for r in counters)


def test_a_router_is_one_destination_whatever_its_addresses():
    """A router's several addresses share its MAC: one route and one counter per MAC, and the frames
    it sends for the networks behind it are routed by that MAC."""
    state, wiring, hosts = make_net(3, [(0, 1), (1, 2)], [1] * 4)
    router = [Host("10.0.0.3", hosts[2].mac, "s3", 1), Host("192.0.2.1", hosts[2].mac, "s3", 1)]
    mixed = hosts[:2] + router
    routes = route_rules(state, wiring, mixed, version=1)
    assert sorted(routes.rules) == sorted((wiring.dpids[node], host.mac) for node in state.nodes for host in hosts)
    assert all(dict(rule.match) == {"eth_dst": mac} for (_, mac), rule in routes.rules.items())
    assert len(counter_rules(mixed, wiring)) == 6
    with pytest.raises(RuleError, match=f"host MAC {hosts[2].mac}: at two places"):
        route_rules(state, wiring, [*mixed, Host("192.0.2.9", hosts[2].mac, "s1", 1)], version=1)


def test_probes_are_caught_only_at_their_destination_switch():
    state, wiring, hosts = make_net(3, [(0, 1), (1, 2)], [1] * 4)
    rules = probe_rules([*hosts, Host("fd00::1", hosts[0].mac, hosts[0].switch, 1)], wiring)
    assert len(rules) == len(hosts)  # the probes are IPv4: an IPv6 address gets none
    for rule, host in zip(rules, hosts):
        match = dict(rule.match)
        assert rule.dpid == wiring.dpids[host.switch] and rule.table == 0 and rule.actions == (("controller",),)
        assert match == {"eth_type": 0x0800, "ip_proto": 17, "ipv4_dst": host.ip, "udp_dst": PROBE_UDP_PORT}
    assert PROBE_PRIORITY > COUNTER_PRIORITY  # a probe from a host port is still a probe
    caught_at = {(r.dpid, dict(r.match)["ipv4_dst"]) for r in rules}
    for host in hosts:
        others = [d for name, d in wiring.dpids.items() if name != host.switch]
        assert not any((d, host.ip) in caught_at for d in others)  # elsewhere it follows the routes


def test_errors_name_the_bad_element():
    state, wiring, hosts = make_net(3, [(0, 1), (1, 2)], [1] * 4)
    partial = Wiring(dpids=wiring.dpids, ports={k: v for k, v in wiring.ports.items() if k != ("s2", "s3")})
    with pytest.raises(RuleError, match="link s2->s3"):
        route_rules(state, partial, hosts, version=1)
    with pytest.raises(RuleError, match="switch 's3'"):
        route_rules(state, Wiring(dpids={"s1": 1, "s2": 2}, ports=wiring.ports), hosts, version=1)
    with pytest.raises(RuleError, match="host 10.0.0.9: switch 's9'"):
        route_rules(state, wiring, [Host("10.0.0.9", "00:00:00:00:00:09", "s9", 1)], version=1)
    with pytest.raises(RuleError, match="link s1->s3"):
        route_rules(state, wiring, hosts, version=1, down=frozenset({("s1", "s3")}))
    with pytest.raises(RuleError, match="host MAC 00:00:00:00:00:01: at two places"):
        route_rules(state, wiring, hosts + [Host("10.0.0.9", "00:00:00:00:00:01", "s2", 1)], version=1)


# --------------------------------------------------------------------- property test
@st.composite
def networks(draw):
    n = draw(st.integers(3, 7))
    edges = [(draw(st.integers(0, i - 1)), i) for i in range(1, n)]  # a spanning tree: connected
    extra = draw(st.lists(st.tuples(st.integers(0, n - 1), st.integers(0, n - 1)), max_size=n))
    for a, b in extra:
        if a != b and (a, b) not in edges and (b, a) not in edges:
            edges.append((a, b))
    w = st.lists(st.integers(1, 9), min_size=2 * len(edges), max_size=2 * len(edges))
    return n, edges, draw(w), draw(w), draw(st.integers(1, 1000)), draw(st.integers(0, 2**16))


@settings(max_examples=60, deadline=None)
@given(networks(), st.booleans())
def test_switch_over_never_loops_or_blackholes(net, ecmp):
    n, edges, w_old, w_new, version, seed = net
    state, wiring, hosts = make_net(n, edges, w_old, ecmp)
    old = route_rules(state, wiring, hosts, version=version)
    tables = install(plan_update(None, old))
    new_state = state.with_weights(w_new)
    new = route_rules(new_state, wiring, hosts, version=version + 1)
    replay_checked(tables, plan_update(old, new), wiring, hosts, state.nodes, seed=seed)
    for (dpid, ip), rule in new.rules.items():  # final tables are exactly the new version
        assert tables.output(dpid, ip) == rule.actions[0][1]
    assert {r.cookie for r in tables.entries.values()} == {route_cookie(version + 1)}
    assert tables.groups == new.groups


def test_leftover_group_ids_cover_the_first_ids_of_both_parities():
    from controller.routing_rules import GROUP_PARITY, leftover_group_ids

    ids = leftover_group_ids(3)
    assert ids == [1, 2, 3, GROUP_PARITY + 1, GROUP_PARITY + 2, GROUP_PARITY + 3]
    state, wiring, hosts = make_net(4, SQUARE, [1] * 8, ecmp=True)
    for version in (1, 2):  # both parities: every group a small network uses is among the ids cleared
        groups = route_rules(state, wiring, hosts, version=version).groups
        assert groups and {gid for _, gid in groups} <= set(leftover_group_ids())
