"""Forwarding decisions as pure data: network state + wiring + hosts → flow-mod descriptions.

Nothing here talks to a switch (Faucet's ``valve`` style): the os-ken app turns the
:class:`FlowOp` batches into OpenFlow 1.3 messages and sends a barrier after each batch.

Pipeline installed on every switch:

- table 0 (classifier): delay probes at their destination's switch → controller; ARP and IPv6
  neighbour discovery → controller; a frame from a host port between a known
  (source host, destination host) pair of MAC addresses → a per-pair counting rule (the
  traffic matrix), then table 1; everything else → table 1.
- table 1 (routes): one rule per (switch, destination host MAC), output to the next-hop
  port of OSPF destination-based routing (``twin.routing.next_hop_links``, ties to the
  lowest node index); miss → controller. Matching the destination MAC rather than its
  IPv4 address carries whatever a host sends to another host's MAC: a router's packets for
  the networks behind its peer router, and any protocol over Ethernet. With ECMP (``routing.ecmp`` in the
  state) a switch with several equal-cost next hops outputs to an OpenFlow select group
  whose buckets are those ports (equal weights; the switch hashes each flow onto one).

Where the switch has OpenFlow meters, the rules that send hosts' frames to the controller (the
neighbour discovery rules and the route miss; not the probes') pass its packet-in meter first, a
drop band at the controller's ``--packet-in-rate``: a host flooding the network is then held back
by its switch, not by the controller's CPU.

Route rules carry their version in the cookie and alternate between two priorities,
so a new rule set is installed beside the old one. :func:`plan_update` orders the
switch-over so that no packet loops or finds no rule: a (switch, destination) entry
that changes its next hop flips only after every switch closer to the destination on
the new tree has flipped (rounds by new hop count; with ECMP the longest equal-cost path),
then the old version is deleted. A version's select groups are added before any rule uses
them and deleted after its rules; group ids alternate with the version's parity like the
priorities.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from twin.state.errors import NdtError
from twin.state.model import NetworkState
from twin.state.routing import equal_cost_links, next_hop_links

CLASSIFIER_TABLE = 0
ROUTE_TABLE = 1

MISS_PRIORITY = 0
COUNTER_PRIORITY = 200
ARP_PRIORITY = 250  # above the counting rules, which match any frame between two known hosts
PROBE_PRIORITY = 300
ROUTE_PRIORITY = 1000  # versions alternate between ROUTE_PRIORITY and ROUTE_PRIORITY + 1

BASE_COOKIE = 0x4E44_5400_0000_0000  # "NDT\0": table-miss, ARP and goto rules
COUNTER_COOKIE = 0x4E44_5401_0000_0000
ROUTE_COOKIE = 0x4E44_5402_0000_0000  # | version (low 32 bits)
PROBE_COOKIE = 0x4E44_5403_0000_0000  # delay probes returned to the controller at their last switch
COOKIE_KIND_MASK = 0xFFFF_FFFF_0000_0000
NDT_COOKIE_MASK = 0xFFFF_FF00_0000_0000  # every rule ndt installs has BASE_COOKIE under this mask
VERSION_MASK = 0xFFFF_FFFF
GROUP_PARITY = 1 << 24  # select-group ids: version parity x GROUP_PARITY + 1 + index at the switch
STALE_GROUPS = 64  # per parity, the group ids a connecting switch has deleted (an earlier process's leftovers)

PACKET_IN_METER = 1  # the meter id of the packet-in meter (base_rules with metered=True)

ETH_TYPE_IPV4 = 0x0800
ETH_TYPE_ARP = 0x0806
ETH_TYPE_IPV6 = 0x86DD
IP_PROTO_UDP = 17
IP_PROTO_ICMPV6 = 58
NEIGHBOUR_SOLICITATION, NEIGHBOUR_ADVERTISEMENT = 135, 136  # ICMPv6 types: IPv6's ARP
PROBE_UDP_PORT = 47_474  # the controller's delay probes; hosts' own traffic to this UDP port is taken too


class RuleError(NdtError, ValueError):
    """Inputs to the rule computation are inconsistent; the message names the switch, link or host."""


@dataclass(frozen=True)
class Host:
    """A host attached to switch ``switch`` (a node of the state) at OpenFlow port ``port``: an end
    host or a router, known by the address (IPv4 from its ARP, IPv6 from its neighbour discovery)
    and MAC it announced. A host with several addresses is several hosts with one MAC."""

    ip: str
    mac: str
    switch: str
    port: int

    @property
    def ipv4(self) -> bool:
        """True for an IPv4 address (the probes' kind), False for IPv6."""
        return ":" not in self.ip


@dataclass(frozen=True)
class Wiring:
    """How the state's nodes map onto OpenFlow switches.

    dpids: node name → datapath id; ports: directed link (src, dst) → output port on ``src``.
    """

    dpids: dict[str, int]
    ports: dict[tuple[str, str], int]
    names: dict[int, str] = field(init=False, compare=False, repr=False)
    _links_by_port: dict[tuple[int, int], tuple[str, str]] = field(init=False, compare=False, repr=False)

    def __post_init__(self):
        object.__setattr__(self, "names", {dpid: name for name, dpid in self.dpids.items()})
        if len(self.names) != len(self.dpids):
            raise RuleError("two switches share one datapath id in the wiring")
        by_port = {}
        for (src, dst), port in self.ports.items():
            if src in self.dpids:
                by_port[(self.dpids[src], port)] = (src, dst)
        object.__setattr__(self, "_links_by_port", by_port)

    def check(self, state: NetworkState, down: frozenset[tuple[str, str]] = frozenset()) -> None:
        """Raise :class:`RuleError` unless every node has a dpid and every link not ``down`` an output port."""
        for node in state.nodes:
            if node not in self.dpids:
                raise RuleError(f"switch {node!r}: no datapath id in the wiring")
        for link in state.links:
            if (link.src, link.dst) not in self.ports and (link.src, link.dst) not in down:
                raise RuleError(f"link {link.src}->{link.dst}: no output port in the wiring")

    def link_at(self, dpid: int, port: int) -> tuple[str, str] | None:
        """The directed link leaving switch ``dpid`` through ``port``, or None for a host (edge) port."""
        return self._links_by_port.get((dpid, port))

    def links_at(self, dpid: int) -> dict[int, tuple[str, str]]:
        """The directed links leaving switch ``dpid``, by output port."""
        return {port: link for (switch, port), link in self._links_by_port.items() if switch == dpid}

    def is_edge_port(self, dpid: int, port: int) -> bool:
        """True when ``port`` of switch ``dpid`` does not lead to another switch of the wiring."""
        return self.link_at(dpid, port) is None


@dataclass(frozen=True)
class FlowRule:
    """One OpenFlow 1.3 flow entry.

    match: sorted (field, value) pairs in os-ken OFPMatch names (``eth_type``, ``ipv4_dst``, ``in_port``, …).
    actions: ("output", port), ("controller",), ("group", id) and ("goto", table) entries, applied in order,
    after a ("meter", id) entry, which the switch applies first.
    """

    dpid: int
    table: int
    priority: int
    match: tuple[tuple[str, object], ...]
    actions: tuple[tuple, ...]
    cookie: int

    @property
    def key(self) -> tuple:
        """What OpenFlow identifies an entry by (a second add with the same key replaces it)."""
        return (self.dpid, self.table, self.priority, self.match)


@dataclass(frozen=True)
class FlowOp:
    """One flow-mod: ``add`` or ``delete_strict`` a rule, or ``delete_cookie`` (every entry of
    ``table`` on ``dpid`` whose cookie equals ``cookie``); or one group-mod: ``add_group`` (a select
    group ``group`` with one bucket per output port in ``ports``) or ``delete_group``."""

    kind: str
    dpid: int
    rule: FlowRule | None = None
    table: int = ROUTE_TABLE
    cookie: int = 0
    group: int = 0
    ports: tuple[int, ...] = ()


@dataclass(frozen=True)
class RouteSet:
    """The route rules of one version: (dpid, destination MAC) → rule, that switch's hop count to
    the destination's switch along the new next hops (0 at the host's own switch; with ECMP the
    longest equal-cost path), and the select groups the rules use: (dpid, group id) → ports."""

    version: int
    rules: dict[tuple[int, str], FlowRule]
    hops: dict[tuple[int, str], int]
    groups: dict[tuple[int, int], tuple[int, ...]] = field(default_factory=dict)

    def ports_of(self, key: tuple[int, str]) -> tuple:
        """Where the rule at ``key`` forwards: its output ports, a group resolved to its buckets."""
        out = []
        for action in self.rules[key].actions:
            out.extend(self.groups[(key[0], action[1])] if action[0] == "group" else [action])
        return tuple(out)


def _match(**fields) -> tuple[tuple[str, object], ...]:
    return tuple(sorted(fields.items()))


def route_cookie(version: int) -> int:
    return ROUTE_COOKIE | (version & VERSION_MASK)


def route_priority(version: int) -> int:
    return ROUTE_PRIORITY + (version % 2)


def base_rules(dpid: int, metered: bool = False) -> list[FlowRule]:
    """The rules every switch gets on connect: ARP and IPv6 neighbour solicitations and
    advertisements to the controller, classifier miss → routes, route miss → controller;
    ``metered``: those to the controller pass the :data:`PACKET_IN_METER` first."""
    neighbour = [_match(eth_type=ETH_TYPE_IPV6, ip_proto=IP_PROTO_ICMPV6, icmpv6_type=kind)
                 for kind in (NEIGHBOUR_SOLICITATION, NEIGHBOUR_ADVERTISEMENT)]
    to_controller = ((("meter", PACKET_IN_METER),) if metered else ()) + (("controller",),)
    return [
        FlowRule(dpid, CLASSIFIER_TABLE, MISS_PRIORITY, (), (("goto", ROUTE_TABLE),), BASE_COOKIE),
        *(FlowRule(dpid, CLASSIFIER_TABLE, ARP_PRIORITY, match, to_controller, BASE_COOKIE)
          for match in (_match(eth_type=ETH_TYPE_ARP), *neighbour)),
        FlowRule(dpid, ROUTE_TABLE, MISS_PRIORITY, (), to_controller, BASE_COOKIE),
    ]


def counter_rules(hosts: list[Host], wiring: Wiring) -> list[FlowRule]:
    """Per (source host, destination host) counting rules, by MAC, at each source's ingress port.

    Their packet and byte counters are the traffic matrix; they forward nothing themselves
    (goto the route table).
    """
    rules = []
    by_mac = hosts_by_mac(hosts)
    for src in by_mac.values():
        dpid = _dpid(wiring, src.switch, f"host {src.ip}")
        for dst in by_mac.values():
            if dst.mac == src.mac:
                continue
            match = _match(in_port=src.port, eth_src=src.mac, eth_dst=dst.mac)
            rules.append(FlowRule(dpid, CLASSIFIER_TABLE, COUNTER_PRIORITY, match, (("goto", ROUTE_TABLE),), COUNTER_COOKIE))
    return rules


def probe_rules(hosts: list[Host], wiring: Wiring) -> list[FlowRule]:
    """At each host's switch, delay probes towards that host go to the controller instead of the host.

    A probe is a UDP packet to :data:`PROBE_UDP_PORT` sent by packet-out into the first switch's
    pipeline: it matches nothing there (its destination is elsewhere), follows the route rules like
    the hosts' packets, and is caught here at the destination's switch (table 0, ahead of the
    counting rules, which only match packets from host ports). Probes are IPv4: IPv6 addresses get none.
    """
    rules = []
    for host in hosts:
        if not host.ipv4:
            continue
        dpid = _dpid(wiring, host.switch, f"host {host.ip}")
        match = _match(eth_type=ETH_TYPE_IPV4, ip_proto=IP_PROTO_UDP, ipv4_dst=host.ip, udp_dst=PROBE_UDP_PORT)
        rules.append(FlowRule(dpid, CLASSIFIER_TABLE, PROBE_PRIORITY, match, (("controller",),), PROBE_COOKIE))
    return rules


def edge_rules_left_behind(moved: Host, old_place: tuple[str, int], macs: list[Host], addresses: list[Host],
                           wiring: Wiring) -> list[FlowRule]:
    """The counting and probe rules that a MAC which moved to ``moved``'s place from ``old_place``
    (switch, port) leaves at the old one: its counting rules there towards every other MAC of ``macs``
    (one host per MAC), and the probe rules there of its IPv4 addresses among ``addresses`` (when it
    left the switch)."""
    switch, port = old_place
    old = Host(moved.ip, moved.mac, switch, port)
    counting = [rule for rule in counter_rules([old, *(h for h in macs if h.mac != moved.mac)], wiring)
                if dict(rule.match)["eth_src"] == moved.mac]
    probing = probe_rules([Host(h.ip, h.mac, switch, port) for h in addresses if h.mac == moved.mac], wiring) \
        if switch != moved.switch else []
    return counting + probing


def edge_rules_of_departed(departed: list[Host], addresses: list[Host], macs_left: list[Host],
                           wiring: Wiring) -> list[FlowRule]:
    """The counting and probe rules of MACs the controller forgot (``departed``, one host per MAC, with
    their ``addresses``): their counting rules towards every MAC of ``macs_left`` and every MAC left's
    towards them, and the probe rules of their IPv4 addresses. (Their route rules go with the next
    route version.)"""
    gone = {host.mac for host in departed}
    counting = [rule for rule in counter_rules([*departed, *macs_left], wiring)
                if dict(rule.match)["eth_src"] in gone or dict(rule.match)["eth_dst"] in gone]
    return counting + probe_rules(addresses, wiring)


def route_rules(state: NetworkState, wiring: Wiring, hosts: list[Host], version: int,
                down: frozenset[tuple[str, str]] = frozenset()) -> RouteSet:
    """Destination-based route rules for every host under the state's OSPF weights.

    ``down``: directed links (src, dst) that are out of service; they carry no route.
    A switch from which a host's switch is unreachable gets no rule for that host
    (its packets go to the controller via the table-miss rule).
    """
    wiring.check(state, down)
    unknown = set(down) - set(state.link_index)
    if unknown:
        src, dst = sorted(unknown)[0]
        raise RuleError(f"link {src}->{dst} is marked down but is not in the topology")
    up, forwarding = _forwarding(state, down)
    idx = state.node_index
    cookie, priority = route_cookie(version), route_priority(version)
    rules: dict[tuple[int, str], FlowRule] = {}
    hops: dict[tuple[int, str], int] = {}
    groups: dict[tuple[int, int], tuple[int, ...]] = {}
    group_ids: dict[tuple[int, tuple[int, ...]], int] = {}  # (dpid, ports) -> group id
    groups_at: dict[int, int] = {}  # dpid -> groups so far
    for host in hosts_by_mac(hosts).values():
        if host.switch not in idx:
            raise RuleError(f"host {host.ip}: switch {host.switch!r} is not a node of the state")
        d = idx[host.switch]
        match = _match(eth_dst=host.mac)
        for v, node in enumerate(state.nodes):
            dpid = wiring.dpids[node]
            if v == d:
                ports, count = (host.port,), 0
            else:
                links = forwarding.next_links(v, d)
                if not links:
                    continue
                ports = tuple(sorted({wiring.ports[(up[link].src, up[link].dst)] for link in links}))
                count = forwarding.hop_count(v, d)
            if len(ports) == 1:
                actions = (("output", ports[0]),)
            else:
                if (dpid, ports) not in group_ids:
                    groups_at[dpid] = groups_at.get(dpid, 0) + 1
                    group_ids[(dpid, ports)] = (version % 2) * GROUP_PARITY + groups_at[dpid]
                    groups[(dpid, group_ids[(dpid, ports)])] = ports
                gid = group_ids[(dpid, ports)]
                actions = (("group", gid),)
            rules[(dpid, host.mac)] = FlowRule(dpid, ROUTE_TABLE, priority, match, actions, cookie)
            hops[(dpid, host.mac)] = count
    return RouteSet(version, rules, hops, groups)


def hosts_by_mac(hosts: list[Host]) -> dict[str, Host]:
    """One host per MAC (a router's several addresses share one), in order of first appearance;
    :class:`RuleError` when one MAC is at two places."""
    by_mac: dict[str, Host] = {}
    for host in hosts:
        first = by_mac.setdefault(host.mac, host)
        if (first.switch, first.port) != (host.switch, host.port):
            raise RuleError(f"host MAC {host.mac}: at two places ({first.switch} port {first.port} as {first.ip}, "
                            f"{host.switch} port {host.port} as {host.ip})")
    return by_mac


def probe_routes(state: NetworkState, down: frozenset[tuple[str, str]], switches: list[str]) -> dict[tuple[str, str], tuple]:
    """The links, as (src, dst) names in hop order, that a packet between each ordered pair of
    ``switches`` crosses under :func:`route_rules` for the same state and ``down`` links. Left out:
    unreachable pairs and, with ECMP, pairs split over several equal-cost routes (a probe takes one
    of them, the hosts' packets all)."""
    up, forwarding = _forwarding(state, down)
    idx = state.node_index
    routes = {}
    for a in switches:
        for b in switches:
            if a == b or a not in idx or b not in idx:
                continue
            node, hops = idx[a], []
            while node != idx[b] and len(hops) < len(idx):
                links = forwarding.next_links(node, idx[b])
                if len(links) != 1:
                    break
                hops.append((up[links[0]].src, up[links[0]].dst))
                node = idx[up[links[0]].dst]
            if node == idx[b]:
                routes[(a, b)] = tuple(hops)
    return routes


def _forwarding(state: NetworkState, down: frozenset[tuple[str, str]]):
    """(the links in service, their next hops per (node, destination)) under the state's weights."""
    up = [lk for lk in state.links if (lk.src, lk.dst) not in down]
    idx = state.node_index
    src = np.array([idx[lk.src] for lk in up], dtype=np.int64)
    dst = np.array([idx[lk.dst] for lk in up], dtype=np.int64)
    weight = np.array([lk.weight for lk in up], dtype=np.float64)
    forwarding = _EqualCost(len(idx), src, dst, weight) if state.ecmp else _SinglePath(src, dst, weight, len(idx))
    return up, forwarding


class _SinglePath:
    """One next hop per (node, destination): OSPF with ties to the lowest node index."""

    def __init__(self, src, dst, weight, n_nodes):
        self.table = next_hop_links(n_nodes, src, dst, weight)
        self.link_dst = dst

    def next_links(self, v: int, d: int) -> list[int]:
        link = self.table[v, d]
        return [] if link < 0 else [int(link)]

    def hop_count(self, v: int, d: int) -> int:
        return _hop_count(self.table, self.link_dst, v, d)


class _EqualCost:
    """Every equal-cost next hop per (node, destination); hop counts along the longest equal-cost path."""

    def __init__(self, n_nodes: int, src, dst, weight):
        self.dist_to, self.on_shortest = equal_cost_links(n_nodes, src, dst, weight)
        self.src, self.dst = src, dst
        self._depth: dict[int, np.ndarray] = {}

    def next_links(self, v: int, d: int) -> list[int]:
        return [int(link) for link in np.flatnonzero(self.on_shortest[d] & (self.src == v))]

    def hop_count(self, v: int, d: int) -> int:
        if d not in self._depth:
            depth = np.zeros(len(self.dist_to), dtype=np.int64)
            reachable = np.flatnonzero(np.isfinite(self.dist_to[d]))
            for node in reachable[np.argsort(self.dist_to[d, reachable], kind="stable")]:
                if node != d:
                    depth[node] = 1 + max(depth[self.dst[link]] for link in self.next_links(int(node), d))
            self._depth[d] = depth
        return int(self._depth[d][v])


def plan_update(old: RouteSet | None, new: RouteSet) -> list[list[FlowOp]]:
    """Make-before-break switch-over from ``old`` to ``new`` as batches of flow-mods.

    Send the batches in order with a barrier after each; ops within one batch may
    be applied in any order. Batches: the new version's select groups (any stale group
    with the same id deleted first, then each added); rules that change no forwarding (new
    copies of unchanged entries; with a lower new priority, every new rule); one batch per
    new hop count, nearest the destination first, flipping the entries whose output
    changes; delete every rule left of the old version; delete the old version's groups.
    Entries the new set drops (unreachable destinations) disappear only in the cleanup.
    """
    new_groups = [[FlowOp("delete_group", dpid, group=gid) for dpid, gid in sorted(new.groups)],
                  [FlowOp("add_group", dpid, group=gid, ports=ports) for (dpid, gid), ports in sorted(new.groups.items())]]
    if old is None:
        rounds = _rounds(new, set(new.rules), lambda key: FlowOp("add", key[0], new.rules[key]))
        return [batch for batch in [*new_groups, *rounds] if batch]
    if new.version == old.version or route_priority(new.version) == route_priority(old.version):
        raise RuleError(f"route version {new.version} must differ in parity from the installed version {old.version}")
    takeover_on_add = route_priority(new.version) > route_priority(old.version)
    prepare: list[FlowOp] = []
    changed = set()
    for key, rule in new.rules.items():
        if key in old.rules and old.ports_of(key) == new.ports_of(key):
            prepare.append(FlowOp("add", key[0], rule))
        elif takeover_on_add or key not in old.rules:
            changed.add(key)
        else:
            prepare.append(FlowOp("add", key[0], rule))
            changed.add(key)

    def flip(key):
        if takeover_on_add or key not in old.rules:
            return FlowOp("add", key[0], new.rules[key])
        return FlowOp("delete_strict", key[0], old.rules[key])

    dpids = sorted({key[0] for key in old.rules})
    cleanup = [FlowOp("delete_cookie", dpid, table=ROUTE_TABLE, cookie=route_cookie(old.version)) for dpid in dpids]
    old_groups = [FlowOp("delete_group", dpid, group=gid) for dpid, gid in sorted(old.groups)]
    batches = [*new_groups, prepare, *_rounds(new, changed, flip), cleanup, old_groups]
    return [batch for batch in batches if batch]


def _rounds(new: RouteSet, keys: set, make) -> list[list[FlowOp]]:
    if not keys:
        return []
    depth = max(new.hops[key] for key in keys)
    rounds: list[list[FlowOp]] = [[] for _ in range(depth + 1)]
    for key in sorted(keys):
        rounds[new.hops[key]].append(make(key))
    return rounds


def _hop_count(table: np.ndarray, link_dst: np.ndarray, v: int, d: int) -> int:
    count = 0
    while v != d:
        v = int(link_dst[table[v, d]])
        count += 1
        if count > table.shape[0]:
            raise RuleError(f"routing loop towards node index {d}")  # next_hop_links never produces one
    return count


def _dpid(wiring: Wiring, switch: str, tag: str) -> int:
    try:
        return wiring.dpids[switch]
    except KeyError:
        raise RuleError(f"{tag}: switch {switch!r} has no datapath id in the wiring") from None


def leftover_group_ids(count: int = STALE_GROUPS) -> list[int]:
    """The select-group ids a switch is cleared of when it connects: the first ``count`` of each parity,
    which an earlier controller process may have left behind. A group past them stays until its id is
    used again (``plan_update`` deletes every id just before adding it), so it never makes an add fail."""
    return [parity * GROUP_PARITY + 1 + index for parity in (0, 1) for index in range(count)]
