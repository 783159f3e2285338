"""What-if scenarios: a change to a network state that an operator wants to see before it happens.

A scenario fails links (both directions), nodes (their links and the traffic they source or sink)
and shared-risk link groups; scales traffic globally, per node (flows from or to it) or per pair;
and sets link weights or capacities. :func:`apply` checks every name against the state and refuses
a scenario that would cut a remaining demand off, naming the pair; :func:`apply_failure` is the
sweep's variant, which reports the cut demands instead.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np
from scipy.sparse import csr_matrix
from scipy.sparse.csgraph import breadth_first_order, connected_components

from twin.state.errors import NdtError, shown
from twin.state.model import MAX_RATE_BPS, MAX_WEIGHT, MIN_CAPACITY_BPS, NetworkState

MAX_SCALE = 1e6  # a traffic factor beyond this is a typo, not a scenario


class ScenarioError(NdtError):
    """A scenario names something the state does not have, or cuts a demand off; the message says which."""


@dataclass(frozen=True)
class Scenario:
    """Changes applied in this order: weights and capacities, failures, traffic. Rates and capacities
    in bit/s; a link named by (src, dst) for weights and capacities is the directed link, for failures
    both directions."""

    failed_links: tuple[tuple[str, str], ...] = ()
    failed_nodes: tuple[str, ...] = ()
    failed_groups: tuple[str, ...] = ()  # names of shared-risk link groups
    traffic_scale: float = 1.0
    node_scale: tuple[tuple[str, float], ...] = ()  # flows from or to the node
    pair_scale: tuple[tuple[str, str, float], ...] = ()
    weights: tuple[tuple[str, str, float], ...] = ()
    capacities: tuple[tuple[str, str, float], ...] = ()
    ecmp: bool | None = None  # None: as the state says

    @property
    def empty(self) -> bool:
        return self == Scenario()

    def describe(self) -> str:
        """One line for a report: what this scenario changes."""
        parts = [f"fail {a}-{b}" for a, b in self.failed_links] + [f"fail node {n}" for n in self.failed_nodes]
        parts += [f"fail group {g}" for g in self.failed_groups]
        if self.traffic_scale != 1.0:
            parts.append(f"traffic x{self.traffic_scale:g}")
        parts += [f"traffic of {n} x{f:g}" for n, f in self.node_scale]
        parts += [f"traffic {a}->{b} x{f:g}" for a, b, f in self.pair_scale]
        parts += [f"weight {a}->{b} = {w:g}" for a, b, w in self.weights]
        parts += [f"capacity {a}->{b} = {c:g} bit/s" for a, b, c in self.capacities]
        if self.ecmp is not None:
            parts.append("ECMP " + ("on" if self.ecmp else "off"))
        return ", ".join(parts) or "no change"


def apply(state: NetworkState, scenario: Scenario, groups: dict | None = None) -> tuple[NetworkState, list]:
    """The state after ``scenario``, and the demands (src, dst) lost with a failed node.

    ``groups`` maps a shared-risk group's name to its links [(src, dst), ...]. Raises ScenarioError on
    an unknown name or when a failure cuts a demand between two working nodes off."""
    changed, lost, cut = _apply(state, scenario, groups or {})
    if cut:
        a, b = cut[0]
        more = f" (and {len(cut) - 1} more demands)" if len(cut) > 1 else ""
        raise ScenarioError(f"{scenario.describe()}: disconnects the demand {a}->{b}{more}; no path is left")
    return changed, lost


def apply_failure(state: NetworkState, scenario: Scenario, groups: dict | None = None):
    """Like :func:`apply`, but the demands a failure cuts off are dropped and returned, not refused:
    (state, lost with failed nodes, cut off)."""
    return _apply(state, scenario, groups or {})


def _apply(state: NetworkState, scenario: Scenario, groups: dict):
    state = _reconfigure(state, scenario)
    failed = _failed_links(state, scenario, groups)
    keep = np.ones(len(state.flows), dtype=bool)
    lost, cut = [], []
    if scenario.failed_nodes:
        nodes = set(scenario.failed_nodes)
        keep = np.array([f.src not in nodes and f.dst not in nodes for f in state.flows], dtype=bool)
        lost = [(f.src, f.dst) for f, k in zip(state.flows, keep) if not k]
    if failed:
        links = tuple(lk for lk in state.links if (lk.src, lk.dst) not in failed)
        if not links:
            raise ScenarioError(f"{scenario.describe()}: no link is left in service")
        reachable = reachable_flows(state, links)
        cut = [(state.flows[i].src, state.flows[i].dst) for i in np.flatnonzero(keep & ~reachable)]
        state = _without(state, links, keep & reachable, failed)
    return _scale_traffic(state, scenario), lost, cut


def _without(state: NetworkState, links, keep: np.ndarray, failed: set) -> NetworkState:
    """The state on ``links`` carrying the flows ``keep`` selects. OSPF re-routes everything; a state routed
    by explicit paths keeps every path that avoids the failed links and re-routes only the others, by OSPF
    on what is left (as the IGP under an explicit path takes over the traffic whose path broke)."""
    if state.routing_kind == "ospf":
        return state.restricted(links, keep)
    rerouted = replace(state, routing_kind="ospf", paths={}).restricted(links, keep)
    paths = {}
    for i, flow in enumerate(rerouted.flows):
        path = state.paths[(flow.src, flow.dst)]
        broken = any((a, b) in failed for a, b in zip(path, path[1:]))
        paths[(flow.src, flow.dst)] = tuple(rerouted.flow_path(i)) if broken else path
    return replace(rerouted, routing_kind="paths", paths=paths)


def _reconfigure(state: NetworkState, scenario: Scenario) -> NetworkState:
    index = state.link_index
    links = list(state.links)
    for where, changes, field, low, low_allowed, high in (
            ("weight", scenario.weights, "weight", 0.0, False, MAX_WEIGHT),
            ("capacity", scenario.capacities, "capacity", MIN_CAPACITY_BPS, True, MAX_RATE_BPS)):
        for src, dst, value in changes:
            if (src, dst) not in index:
                raise ScenarioError(f"{where} {src}->{dst}: {_no_link(state, src, dst)}")
            number = isinstance(value, (int, float)) and math.isfinite(value)
            if not (number and (low <= value if low_allowed else low < value) and value <= high):
                raise ScenarioError(f"{where} {src}->{dst}: must be {'>=' if low_allowed else '>'} {low:g} and "
                                    f"<= {high:g}, got {shown(value)}")
            links[index[(src, dst)]] = replace(links[index[(src, dst)]], **{field: float(value)})
    routing = {}
    if scenario.weights:
        routing = {"routing_kind": "ospf", "paths": {}}
    if scenario.ecmp is not None:
        if scenario.ecmp and state.routing_kind != "ospf" and not scenario.weights:
            raise ScenarioError("ECMP splits traffic over equal-cost OSPF paths; this state routes by explicit paths")
        routing["ecmp"] = scenario.ecmp
    if not scenario.weights and not scenario.capacities and not routing:
        return state
    return replace(state, links=tuple(links), **routing)


def _failed_links(state: NetworkState, scenario: Scenario, groups: dict) -> set:
    index = state.link_index
    failed = set()
    named = list(scenario.failed_links)
    for name in scenario.failed_groups:
        if name not in groups:
            known = ", ".join(sorted(groups)) or "none were given"
            raise ScenarioError(f"shared-risk group {name!r} is not defined (known: {known})")
        named += [tuple(link) for link in groups[name]]
    for src, dst in named:
        if (src, dst) not in index and (dst, src) not in index:
            raise ScenarioError(f"failed link {src}-{dst}: {_no_link(state, src, dst)}")
        failed |= {(src, dst), (dst, src)} & set(index)
    for node in scenario.failed_nodes:
        if node not in state.node_index:
            raise ScenarioError(f"failed node {node!r} is not a node of the network")
        failed |= {pair for pair in index if node in pair}
    return failed


def _scale_traffic(state: NetworkState, scenario: Scenario) -> NetworkState:
    factor = np.full(len(state.flows), _factor(scenario.traffic_scale, "traffic scale"))
    if not scenario.node_scale and not scenario.pair_scale:
        return state if factor.size == 0 or factor[0] == 1.0 else state.scaled(float(factor[0]))
    nodes = set(state.node_index)
    for node, f in scenario.node_scale:
        if node not in nodes:
            raise ScenarioError(f"traffic of {node!r}: not a node of the network")
        factor *= np.array([_factor(f, f"traffic of {node}") if node in (fl.src, fl.dst) else 1.0
                            for fl in state.flows])
    position = {(fl.src, fl.dst): i for i, fl in enumerate(state.flows)}
    for src, dst, f in scenario.pair_scale:
        if (src, dst) not in position:
            missing = [n for n in (src, dst) if n not in nodes]
            why = f"{missing[0]!r} is not a node of the network" if missing else "the traffic matrix has no such demand"
            raise ScenarioError(f"traffic {src}->{dst}: {why}")
        factor[position[(src, dst)]] *= _factor(f, f"traffic {src}->{dst}")
    if np.all(factor == 1.0):
        return state
    return state.with_flows(replace(fl, rate=fl.rate * float(k)) for fl, k in zip(state.flows, factor))


def _factor(value, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (0 <= value <= MAX_SCALE):
        raise ScenarioError(f"{where}: a factor from 0 to {MAX_SCALE:g}, got {shown(value)}")
    return float(value)


def _no_link(state: NetworkState, src: str, dst: str) -> str:
    missing = [n for n in (src, dst) if n not in state.node_index]
    return f"{missing[0]!r} is not a node of the network" if missing else "no such link in the topology"


def reachable_flows(state: NetworkState, links) -> np.ndarray:
    """Per flow of ``state``, whether its destination can be reached over ``links``: flows inside one
    strongly connected component are; for the others, one breadth-first search per source decides."""
    index = state.node_index
    n = len(state.nodes)
    graph = csr_matrix((np.ones(len(links)), ([index[lk.src] for lk in links], [index[lk.dst] for lk in links])),
                       shape=(n, n))
    src, dst = state.flow_columns["src"], state.flow_columns["dst"]
    _, component = connected_components(graph, directed=True, connection="strong")
    ok = component[src] == component[dst]
    for source in np.unique(src[~ok]):
        seen = np.zeros(n, dtype=bool)
        seen[breadth_first_order(graph, source, directed=True, return_predecessors=False)] = True
        mine = ~ok & (src == source)
        ok[mine] = seen[dst[mine]]
    return ok
