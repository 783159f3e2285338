"""Topologies into network states: GML/GraphML files (Topology Zoo), topohub keys, generators.

Undirected edges become two directed links. Capacities come from the file when it
has them (``capacity``/``bandwidth`` in bit/s, Topology Zoo's ``LinkSpeedRaw``),
otherwise the default given; propagation delay comes from the link length
(topohub's ``dist`` in km, or the great-circle distance between Topology Zoo node
coordinates) at 2·10⁸ m/s in fibre.
"""

from __future__ import annotations

import math
from pathlib import Path

import networkx as nx
import numpy as np

from twin.state.errors import StateError
from twin.state.files import read_text
from twin.state.metrics import finite_float
from twin.state.model import Flow, Link, NetworkState

FIBRE_M_PER_S = 2e8
DEFAULT_CAPACITY = 10e6  # bit/s
DEFAULT_BUFFER = 32  # packets


def load_topology(source: str, capacity: float = DEFAULT_CAPACITY, buffer: int = DEFAULT_BUFFER) -> NetworkState:
    """A state (with the source's demand matrix when it has one) from a file path or a topohub key.

    Files: ``.gml``, ``.graphml``, or ``.json`` (a saved network state). Anything else
    is taken as a topohub key such as ``topozoo/Abilene`` or ``sndlib/abilene``.
    """
    path = Path(source)
    suffix = path.suffix.lower()
    if suffix == ".json":
        return NetworkState.load(path)
    if suffix in (".gml", ".graphml"):
        graph = parse_graph(read_text(path, "the topology file", StateError), suffix[1:], path)
        return from_graph(graph, capacity=capacity, buffer=buffer, name=path.stem)
    return from_topohub(source, capacity=capacity, buffer=buffer)


# What networkx's GML and GraphML parsers raise on malformed input, besides their own error
_PARSER_ERRORS = (nx.NetworkXError, ValueError, SyntaxError, KeyError, TypeError, IndexError, AttributeError)


def parse_graph(text: str, kind: str, path) -> nx.Graph:
    """A graph from GML (``kind`` "gml", integer ids as node keys) or GraphML text; malformed or too
    deeply nested text raises StateError naming ``path``."""
    try:
        return nx.parse_gml(text, label="id") if kind.lower() == "gml" else nx.parse_graphml(text)
    except _PARSER_ERRORS as exc:
        raise StateError(f"{path}: not a readable {kind.upper()} file ({str(exc)[:200]})") from None
    except RecursionError:
        raise StateError(f"{path}: {kind.upper()} nested too deeply") from None


def from_topohub(key: str, capacity: float = DEFAULT_CAPACITY, buffer: int = DEFAULT_BUFFER) -> NetworkState:
    """A topohub topology (e.g. ``sndlib/abilene``); its demand matrix, if any, becomes the traffic."""
    import topohub

    try:
        data = topohub.get(key)
    except (KeyError, FileNotFoundError, ModuleNotFoundError, ValueError):
        raise StateError(
            f"{key!r} is neither a .json/.gml/.graphml file nor a topohub key "
            "(examples: topozoo/Abilene, sndlib/abilene, gabriel/25/0)"
        ) from None
    graph = nx.node_link_graph(data, edges="edges")
    demands = data["graph"].get("demands") or {}
    return from_graph(graph, capacity=capacity, buffer=buffer, name=key, demands=demands)


def topohub_positions(key: str) -> dict[str, tuple[float, float]] | None:
    """The drawing coordinates topohub keeps for ``key``'s nodes (longitude, latitude for real networks),
    by node name as :func:`from_topohub` names them; None when ``key`` is no topohub key or has none."""
    import topohub

    try:
        data = topohub.get(key)
    except (KeyError, FileNotFoundError, ModuleNotFoundError, ValueError, TypeError):
        return None
    graph = nx.node_link_graph(data, edges="edges")
    names = _node_names(graph)
    positions = {}
    for node, attrs in graph.nodes(data=True):
        pos = attrs.get("pos")
        if not isinstance(pos, (list, tuple)) or len(pos) != 2:
            return None
        positions[names[node]] = (float(pos[0]), float(pos[1]))
    return positions


def from_graph(graph: nx.Graph, capacity: float = DEFAULT_CAPACITY, buffer: int = DEFAULT_BUFFER,
               name: str = "", demands: dict | None = None) -> NetworkState:
    """A state from a networkx graph; ``demands[src][dst]`` (any unit) become Poisson flows."""
    names = _node_names(graph)
    nodes = tuple(names[n] for n in graph.nodes)
    links = {}
    for u, v, attrs in graph.edges(data=True):
        if u == v:
            continue
        cap = _capacity(attrs, capacity)
        delay = _prop_delay(graph, u, v, attrs)
        directions = ((u, v),) if graph.is_directed() else ((u, v), (v, u))
        for a, b in directions:
            key = (names[a], names[b])
            if key not in links or links[key].capacity < cap:
                links[key] = Link(key[0], key[1], capacity=cap, buffer=buffer, prop_delay=delay)
    flows = []
    for src, row in (demands or {}).items():
        for dst, value in row.items():
            if src in names and dst in names and src != dst and value > 0:
                flows.append(Flow(names[src], names[dst], rate=float(value)))
    return NetworkState(nodes=nodes, links=tuple(links.values()), flows=tuple(flows), name=name)


def _node_names(graph: nx.Graph) -> dict:
    labels = {n: str(graph.nodes[n].get("name") or graph.nodes[n].get("label") or n) for n in graph.nodes}
    if len(set(labels.values())) == len(labels):
        return labels
    return {n: str(n) for n in graph.nodes}


def _capacity(attrs: dict, default: float) -> float:
    for key in ("capacity", "bandwidth", "LinkSpeedRaw"):
        value = attrs.get(key)
        try:
            value = float(value)
        except (TypeError, ValueError):
            continue
        if value > 0 and math.isfinite(value):
            return value
    return default


def _prop_delay(graph: nx.Graph, u, v, attrs: dict) -> float:
    """Seconds of propagation: from the link length in km, or node coordinates, else 0. A length or
    coordinate that is not a finite number raises StateError naming the link or node."""
    if "dist" in attrs:
        km = _finite(attrs["dist"], f"link {u}-{v}: dist")
    else:
        a, b = graph.nodes[u], graph.nodes[v]
        if {"Latitude", "Longitude"} <= a.keys() and {"Latitude", "Longitude"} <= b.keys():
            coordinates = [_finite(n[key], f"node {name}: {key}") for name, n in ((u, a), (v, b))
                           for key in ("Latitude", "Longitude")]
            km = _great_circle_km(*coordinates)
        elif "pos" in a and "pos" in b:
            for name, n in ((u, a), (v, b)):
                if not isinstance(n["pos"], (list, tuple)) or len(n["pos"]) < 2:
                    raise StateError(f"node {name}: pos must be [longitude, latitude], got {str(n['pos'])[:40]!r}")
            km = _great_circle_km(*(_finite(x, f"node {name}: pos") for name, n in ((u, a), (v, b))
                                    for x in (n["pos"][1], n["pos"][0])))
        else:
            return 0.0
    return max(km, 0.0) * 1e3 / FIBRE_M_PER_S


def _finite(value, where: str) -> float:
    number = finite_float(value)
    if number is None:
        raise StateError(f"{where} must be a finite number, got {str(value)[:40]!r}")
    return number


def _great_circle_km(lat1, lon1, lat2, lon2) -> float:
    p1, p2 = math.radians(lat1), math.radians(lat2)
    dp, dl = p2 - p1, math.radians(lon2 - lon1)
    h = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    return 2 * 6371.0 * math.asin(math.sqrt(min(1.0, h)))


def powerlaw_graph(n_nodes: int, rng: np.random.Generator) -> nx.Graph:
    """A connected topology with a power-law degree distribution (Holme–Kim, 2 edges per new node)."""
    while True:
        graph = nx.powerlaw_cluster_graph(n_nodes, 2, 0.1, seed=int(rng.integers(2**31)))
        if nx.is_connected(graph):
            return graph
