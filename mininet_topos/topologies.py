"""Network states to emulate: topohub keys and synthetic generators, scaled to what Mininet can carry.

Capacities are small on purpose (a few Mbit/s): the 2-core machine forwards every packet in
OVS userspace, so the emulation keeps packet rates low and queueing (ms) large against the
forwarding cost (tens of µs). Units as in :mod:`twin.state.model`: bit/s, bits, packets, s.
"""

from __future__ import annotations

from dataclasses import replace

import networkx as nx
import numpy as np

from twin.state.errors import NdtError
from twin.state.model import Flow, NetworkState
from twin.state.topologies import from_graph, load_topology, powerlaw_graph
from twin.state.traffic import scale_to_utilization

SYNTHETIC = ("line", "ring", "grid", "powerlaw")
EMU_CAPACITY = 2e6  # bit/s per link (docs/emulation.md: well inside what the machine emulates faithfully)
EMU_BUFFER = 32  # packets
EMU_PACKET = 8000.0  # bits on the wire (1000-byte Ethernet frames)


class TopologyError(NdtError, ValueError):
    """A topology name or size the emulation cannot build; the message names it."""


def synthetic_graph(kind: str, n: int, seed: int = 0) -> nx.Graph:
    """An undirected graph of ``n`` switches: ``line``, ``ring``, ``grid`` (n must be a square) or ``powerlaw``."""
    if kind not in SYNTHETIC:
        raise TopologyError(f"synthetic topology {kind!r} is not one of {', '.join(SYNTHETIC)}")
    if n < 2:
        raise TopologyError(f"synthetic topology {kind}: needs at least 2 switches, got {n}")
    if kind == "line":
        return nx.path_graph(n)
    if kind == "ring":
        return nx.cycle_graph(n)
    if kind == "grid":
        side = int(round(n ** 0.5))
        if side * side != n:
            raise TopologyError(f"synthetic topology grid: {n} switches is not a square number")
        return nx.convert_node_labels_to_integers(nx.grid_2d_graph(side, side))
    return powerlaw_graph(n, np.random.default_rng(seed))


def emulation_state(source: str, load: float, capacity: float = EMU_CAPACITY, buffer: int = EMU_BUFFER,
                    packet_size: float = EMU_PACKET, seed: int = 0) -> NetworkState:
    """A state to emulate: ``source`` is a topohub key / state file, or ``line:N``, ``ring:N``, ``grid:N``,
    ``powerlaw:N``; every link ``capacity`` bit/s with ``buffer`` packets, Poisson flows of ``packet_size``
    bits scaled so the busiest link carries ``load`` × capacity under shortest-path routing.

    Sources without a demand matrix get one flow per ordered pair with rates uniform in [0.1, 1].
    """
    kind, _, size = source.partition(":")
    if kind in SYNTHETIC:
        try:
            n = int(size)
        except ValueError:
            raise TopologyError(f"topology {source!r}: write {kind}:N with N the number of switches") from None
        base = from_graph(synthetic_graph(kind, n, seed), capacity=capacity, buffer=buffer, name=source)
    else:
        base = load_topology(source, capacity=capacity, buffer=buffer)
    base = NetworkState(nodes=base.nodes, links=tuple(_uniform(lk, capacity, buffer) for lk in base.links),
                        flows=base.flows, name=base.name or source)
    flows = base.flows
    if not flows:
        rng = np.random.default_rng(seed)
        flows = tuple(Flow(a, b, rate=float(rng.uniform(0.1, 1.0))) for a in base.nodes for b in base.nodes if a != b)
    flows = tuple(Flow(f.src, f.dst, rate=f.rate, time_dist="poisson", packet_size=packet_size) for f in flows)
    return scale_to_utilization(base.with_flows(flows), load)


def _uniform(link, capacity: float, buffer: int):
    return replace(link, capacity=capacity, buffer=buffer, weight=1.0)
