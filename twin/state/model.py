"""The network state: the one input type of ndt (docs/state.md).

A state is a topology (nodes, directed links), a traffic matrix (one flow per
source→destination pair) and a routing (explicit paths, or OSPF link weights
resolved to destination-based shortest paths). Units: bit/s for capacities and
rates, bits for packet sizes, packets for buffers, seconds for delays.

Every check raises :class:`StateError` with a message naming the offending
link, node pair or field.
"""

from __future__ import annotations

import json
import math
from dataclasses import MISSING, dataclass, field, replace
from functools import cache, cached_property
from itertools import compress
from pathlib import Path

import numpy as np

from twin.state.errors import StateError, shown
from twin.state.files import read_json
from twin.state.routing import MAX_ECMP_PATHS, ecmp_routes, ospf_flow_hops, split_hops

TIME_DISTS = ("poisson", "cbr", "onoff")
# What a state may hold (docs/state.md); beyond these no simulation or prediction is meaningful.
MAX_RATE_BPS = 1e15  # capacities and flow rates, bit/s (1 Pb/s)
MIN_CAPACITY_BPS = 1.0
MAX_BUFFER_PACKETS = 10**6
MAX_PROP_DELAY_S = 10.0
MAX_PACKET_BITS = 1e9  # far above any frame (a jumbo frame is 72,000 bits); keeps scaled states valid
MAX_PERIOD_S = 3600.0  # on/off periods
MAX_WEIGHT = 65535.0
SIZE_DISTS = ("deterministic", "exponential", "binomial")
ROUTING_KINDS = ("ospf", "paths")
POLICIES = ("fifo", "sp", "wfq", "drr")  # how a port serves its queues (docs/state.md)
MAX_QUEUES = 64  # queues per port
MAX_TOS = 255  # a flow's QoS class


@dataclass(frozen=True)
class Link:
    """A directed link: an output port at ``src`` feeding a wire to ``dst``.

    capacity: bit/s; buffer: packets that can wait in a FIFO port (the one in
    transmission not counted); prop_delay: s; weight: OSPF cost (> 0).
    policy: how the port serves its queues, ``fifo`` (one queue of ``buffer``),
    ``sp`` (strict priority, queue 0 first), ``wfq`` or ``drr`` (shares by
    ``queue_weights``); queue_sizes: packets that can wait in each queue (default
    ``buffer`` for each of one queue); queue_weights: one positive weight per queue
    (wfq and drr; default equal).
    """

    src: str
    dst: str
    capacity: float
    buffer: int = 32
    prop_delay: float = 0.0
    weight: float = 1.0
    policy: str = "fifo"
    queue_sizes: tuple[int, ...] | None = None
    queue_weights: tuple[float, ...] | None = None

    @property
    def queues(self) -> tuple[int, ...]:
        """Packets that can wait in each queue of the port."""
        return self.queue_sizes or (self.buffer,)


@dataclass(frozen=True)
class Flow:
    """Traffic from ``src`` to ``dst``.

    rate: mean offered load, bit/s. time_dist: inter-departure model
    (``poisson``, ``cbr``, or ``onoff`` with exponential ON/OFF periods of mean
    ``on_time``/``off_time`` s and Poisson departures while ON). packet_size:
    mean size in bits; size_dist ``binomial`` draws one of ``packet_sizes``
    (two sizes, bits) with the probability that gives the mean. tos: the QoS
    class; at each port it selects queue ``min(tos, queues - 1)``.
    """

    src: str
    dst: str
    rate: float
    time_dist: str = "poisson"
    packet_size: float = 8000.0
    size_dist: str = "deterministic"
    packet_sizes: tuple[float, float] | None = None
    on_time: float | None = None
    off_time: float | None = None
    tos: int = 0


@dataclass(frozen=True)
class Routes:
    """The paths traffic takes: route ``r`` (its ``hop_counts[r]`` link indices, in hop order, among
    ``hop_links``: every route's links, route after route) carries the fraction ``share[r]`` of flow
    ``owner[r]``. Without ECMP, route ``r`` is flow ``r`` with share 1. The arrays are read-only."""

    hop_links: np.ndarray
    hop_counts: np.ndarray
    owner: np.ndarray
    share: np.ndarray

    def __post_init__(self):
        for values in (self.hop_links, self.hop_counts, self.owner, self.share):
            _read_only(values)

    @cached_property
    def links(self) -> list[np.ndarray]:
        """Each route's link indices in hop order (views of ``hop_links``)."""
        return split_hops(self.hop_links, self.hop_counts)

    @cached_property
    def first_hop(self) -> np.ndarray:
        """Where each route's links start in ``hop_links`` (read-only)."""
        return _read_only(np.cumsum(self.hop_counts) - self.hop_counts)

    @cached_property
    def hop_route(self) -> np.ndarray:
        """The route each entry of ``hop_links`` belongs to (read-only)."""
        return _read_only(np.repeat(np.arange(len(self.hop_counts)), self.hop_counts))

    def per_flow(self, values: np.ndarray, n_flows: int) -> np.ndarray:
        """Per-route values → per flow, the share-weighted mean (the values themselves without ECMP)."""
        if len(self.owner) == n_flows:
            return np.asarray(values)
        return np.bincount(self.owner, weights=self.share * np.asarray(values, dtype=float), minlength=n_flows)


@dataclass(frozen=True)
class NetworkState:
    """Topology + traffic matrix + routing.

    routing_kind ``ospf`` routes every flow on the destination-based shortest
    path under the link weights (ties broken towards the lowest node index), or,
    with ``ecmp``, splits it evenly at each hop over all equal-cost next hops;
    ``paths`` uses ``paths``: one node sequence per flow pair.
    """

    nodes: tuple[str, ...]
    links: tuple[Link, ...]
    flows: tuple[Flow, ...] = ()
    routing_kind: str = "ospf"
    paths: dict[tuple[str, str], tuple[str, ...]] = field(default_factory=dict, compare=False)
    name: str = ""
    ecmp: bool = False

    def __post_init__(self):
        self._validate()

    # ----------------------------------------------------------- validation
    def _validate(self) -> None:
        if not self.nodes:
            raise StateError("the state has no nodes")
        seen = set()
        for node in self.nodes:
            if not isinstance(node, str) or not node:
                raise StateError(f"node {node!r}: node names must be non-empty strings")
            if node in seen:
                raise StateError(f"node {node!r} is listed twice")
            seen.add(node)
        pairs = set()
        for link in self.links:
            tag = f"link {link.src}->{link.dst}"
            for end in (link.src, link.dst):
                if end not in seen:
                    raise StateError(f"{tag}: unknown node {end!r}")
            if link.src == link.dst:
                raise StateError(f"{tag}: a link cannot loop back to its own node")
            if (link.src, link.dst) in pairs:
                raise StateError(f"{tag}: parallel links between the same nodes are not supported")
            pairs.add((link.src, link.dst))
            _positive(tag, "capacity", link.capacity, MAX_RATE_BPS, low=MIN_CAPACITY_BPS)
            if (not isinstance(link.buffer, (int, np.integer)) or isinstance(link.buffer, bool)
                    or not 1 <= link.buffer <= MAX_BUFFER_PACKETS):
                raise StateError(f"{tag}: buffer must be a whole number of packets from 1 to {MAX_BUFFER_PACKETS}, "
                                 f"got {shown(link.buffer)}")
            _finite_nonneg(tag, "prop_delay", link.prop_delay, MAX_PROP_DELAY_S)
            _positive(tag, "weight", link.weight, MAX_WEIGHT)
            _validate_scheduling(tag, link)
        flow_pairs = set()
        for flow in self.flows:
            tag = f"flow {flow.src}->{flow.dst}"
            for end in (flow.src, flow.dst):
                if end not in seen:
                    raise StateError(f"{tag}: unknown node {end!r} in the traffic matrix")
            if flow.src == flow.dst:
                raise StateError(f"{tag}: source and destination are the same node")
            if (flow.src, flow.dst) in flow_pairs:
                raise StateError(f"{tag}: the traffic matrix lists this pair twice")
            flow_pairs.add((flow.src, flow.dst))
            _finite_nonneg(tag, "rate", flow.rate, MAX_RATE_BPS)
            if not _whole(flow.tos) or not 0 <= flow.tos <= MAX_TOS:
                raise StateError(f"{tag}: tos must be a whole number from 0 to {MAX_TOS}, got {shown(flow.tos)}")
            _positive(tag, "packet_size", flow.packet_size, MAX_PACKET_BITS)
            if flow.time_dist not in TIME_DISTS:
                raise StateError(f"{tag}: time_dist {flow.time_dist!r} is not one of {TIME_DISTS}")
            if flow.size_dist not in SIZE_DISTS:
                raise StateError(f"{tag}: size_dist {flow.size_dist!r} is not one of {SIZE_DISTS}")
            if flow.time_dist == "onoff":
                _positive(tag, "on_time", flow.on_time, MAX_PERIOD_S)
                _positive(tag, "off_time", flow.off_time, MAX_PERIOD_S)
            if flow.size_dist == "binomial":
                sizes = flow.packet_sizes
                if not isinstance(sizes, tuple) or len(sizes) != 2:
                    raise StateError(f"{tag}: size_dist binomial needs packet_sizes [small, large]")
                small, large = sizes
                _positive(tag, "packet_sizes", small, MAX_PACKET_BITS)
                _positive(tag, "packet_sizes", large, MAX_PACKET_BITS)
                if not small < flow.packet_size < large:
                    raise StateError(
                        f"{tag}: packet_size {flow.packet_size} must lie strictly between packet_sizes {list(sizes)}"
                    )
        if self.routing_kind not in ROUTING_KINDS:
            raise StateError(f"routing kind {self.routing_kind!r} is not one of {ROUTING_KINDS}")
        if not isinstance(self.ecmp, bool):
            raise StateError(f"routing: ecmp must be true or false, got {shown(self.ecmp)}")
        if self.ecmp and self.routing_kind != "ospf":
            raise StateError("routing: ecmp splits traffic over equal-cost OSPF paths; it needs \"kind\": \"ospf\"")
        if self.routing_kind == "paths":
            self._validate_paths(seen, pairs)
        _ = self.routes  # resolves routes: unreachable pairs and loops raise here

    def _validate_paths(self, nodes: set, pairs: set) -> None:
        for flow in self.flows:
            path = self.paths.get((flow.src, flow.dst))
            tag = f"path {flow.src}->{flow.dst}"
            if path is None:
                raise StateError(f"{tag}: the routing has no path for this traffic pair")
            if path[0] != flow.src or path[-1] != flow.dst:
                raise StateError(f"{tag}: the path {'-'.join(path)} must start at {flow.src} and end at {flow.dst}")
            if len(set(path)) != len(path):
                raise StateError(f"{tag}: routing loop, the path {'-'.join(path)} visits a node twice")
            for a, b in zip(path, path[1:]):
                if (a, b) not in pairs:
                    raise StateError(f"{tag}: hop {a}->{b} does not follow a link")

    # ----------------------------------------------------------- derived views
    @cached_property
    def node_index(self) -> dict[str, int]:
        return {n: i for i, n in enumerate(self.nodes)}

    @cached_property
    def link_index(self) -> dict[tuple[str, str], int]:
        return {(lk.src, lk.dst): i for i, lk in enumerate(self.links)}

    @cached_property
    def link_arrays(self) -> dict[str, np.ndarray]:
        """Per-link arrays: src, dst (node indices), capacity, buffer, prop_delay, weight."""
        idx = self.node_index
        return {
            "src": np.array([idx[lk.src] for lk in self.links], dtype=np.int64),
            "dst": np.array([idx[lk.dst] for lk in self.links], dtype=np.int64),
            "capacity": np.array([lk.capacity for lk in self.links], dtype=np.float64),
            "buffer": np.array([lk.buffer for lk in self.links], dtype=np.int64),
            "prop_delay": np.array([lk.prop_delay for lk in self.links], dtype=np.float64),
            "weight": np.array([lk.weight for lk in self.links], dtype=np.float64),
        }

    @cached_property
    def flow_links(self) -> list[np.ndarray]:
        """For each flow, the link indices of its path in hop order (without ECMP)."""
        return split_hops(*self._flow_hops)

    @cached_property
    def _flow_hops(self) -> tuple[np.ndarray, np.ndarray]:
        """Every flow's path (without ECMP) flat: the link indices flow after flow, and the links per flow."""
        if self.routing_kind == "ospf":
            return self._ospf_flow_hops()
        index = self.link_index
        paths = [self.paths[(flow.src, flow.dst)] for flow in self.flows]
        hop_links = np.array([index[(a, b)] for path in paths for a, b in zip(path, path[1:])], dtype=np.int64)
        return hop_links, np.array([len(path) - 1 for path in paths], dtype=np.int64)

    def _ospf_flow_hops(self) -> tuple[np.ndarray, np.ndarray]:
        if not self.flows:
            return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
        arrays, columns = self.link_arrays, self.flow_columns
        try:
            return ospf_flow_hops(len(self.nodes), arrays["src"], arrays["dst"], arrays["weight"], columns["src"],
                                  columns["dst"])
        except LookupError as exc:
            flow = self.flows[exc.args[0]]
            raise StateError(f"flow {flow.src}->{flow.dst}: unreachable destination, no path follows the links") from None

    @cached_property
    def flow_columns(self) -> dict[str, np.ndarray]:
        """Per-flow numbers as arrays, in flow order: src and dst (node indices), rate (bit/s), packet_size
        (bits), time and size (indices into TIME_DISTS and SIZE_DISTS), on_time and off_time (s; 0 unless
        on/off), small and large (bits: the two binomial sizes, else packet_size twice)."""
        time_index = {name: i for i, name in enumerate(TIME_DISTS)}
        size_index = {name: i for i, name in enumerate(SIZE_DISTS)}
        idx = self.node_index
        rows = np.array([
            (idx[f.src], idx[f.dst], f.rate, f.packet_size, time_index[f.time_dist], size_index[f.size_dist],
             f.on_time or 0.0, f.off_time or 0.0, *(f.packet_sizes or (f.packet_size, f.packet_size)))
            for f in self.flows
        ], dtype=np.float64).reshape(-1, 10)
        names = ("src", "dst", "rate", "packet_size", "time", "size", "on_time", "off_time", "small", "large")
        columns = dict(zip(names, rows.T))
        for name in ("src", "dst", "time", "size"):
            columns[name] = columns[name].astype(np.int64)
        return {name: _read_only(values) for name, values in columns.items()}

    @cached_property
    def scheduled(self) -> bool:
        """Some port is not a plain FIFO (the simulator then schedules queues)."""
        return any(lk.policy != "fifo" for lk in self.links)

    @cached_property
    def routes(self) -> "Routes":
        """The paths traffic takes: one per flow, or with ECMP every equal-cost path with its share."""
        if not self.ecmp or not self.flows:
            return Routes(*self._flow_hops, np.arange(len(self.flows)), np.ones(len(self.flows)))
        arrays, columns = self.link_arrays, self.flow_columns
        try:
            hop_links, hop_counts, owner, share = ecmp_routes(len(self.nodes), arrays["src"], arrays["dst"],
                                                              arrays["weight"], columns["src"], columns["dst"])
        except LookupError as exc:
            flow = self.flows[exc.args[0]]
            raise StateError(f"flow {flow.src}->{flow.dst}: unreachable destination, no path follows the links") from None
        except OverflowError as exc:
            flow = self.flows[exc.args[0]]
            raise StateError(f"flow {flow.src}->{flow.dst}: more than {MAX_ECMP_PATHS} equal-cost paths; "
                             "perturb the weights or turn ecmp off") from None
        return Routes(hop_links, hop_counts, owner, share)

    @cached_property
    def routing_key(self) -> tuple:
        """Identifies the routing by the paths it gives the flows (different weights may route alike)."""
        routes = self.routes
        return tuple(values.tobytes() for values in (routes.hop_links, routes.hop_counts, routes.owner, routes.share))

    def flow_path(self, i: int) -> list[str]:
        """Node names along flow ``i``'s path."""
        links = self.flow_links[i]
        return [self.links[links[0]].src] + [self.links[l].dst for l in links]

    def link_loads(self) -> np.ndarray:
        """Offered load per link, bit/s (sum of the rates of the flows routed over it, by their ECMP shares;
        read-only)."""
        return self._link_loads

    @cached_property
    def _link_loads(self) -> np.ndarray:
        routes = self.routes
        rates = self.flow_columns["rate"][routes.owner] * routes.share
        hop_rate = np.repeat(rates, routes.hop_counts)
        return _read_only(np.bincount(routes.hop_links, weights=hop_rate, minlength=len(self.links)))

    def utilization(self) -> np.ndarray:
        """Offered load / capacity per link (may exceed 1 under overload)."""
        return self.link_loads() / self.link_arrays["capacity"]

    # ----------------------------------------------------------- transformations
    def with_weights(self, weights) -> "NetworkState":
        """The same state routed by OSPF with new link weights (one per link, in link order)."""
        weights = np.asarray(weights, dtype=float)
        if weights.shape != (len(self.links),):
            raise StateError(f"weights: expected {len(self.links)} values (one per link), got shape {weights.shape}")
        links = tuple(replace(lk, weight=float(w)) for lk, w in zip(self.links, weights))
        return replace(self, links=links, routing_kind="ospf", paths={})

    def with_flows(self, flows) -> "NetworkState":
        return replace(self, flows=tuple(flows))

    def scaled(self, factor: float) -> "NetworkState":
        """Every flow's rate multiplied by ``factor``."""
        _finite_nonneg("traffic scaling", "factor", factor)
        return self.with_flows(replace(f, rate=f.rate * factor) for f in self.flows)

    def restricted(self, links, keep) -> "NetworkState":
        """The state with only ``links`` (a subset of its own) and the flows where the boolean mask ``keep``
        is set, routed by OSPF on what is left. A subset of a valid state is valid, so only the routing is
        resolved again (it raises on a flow left without a path); the checks of every field are skipped and
        the flows' columns carried over, which what-if sweeps need."""
        keep = np.asarray(keep, dtype=bool)
        if self.routing_kind != "ospf":
            raise StateError("restricted() routes what is left by OSPF; a state routed by explicit paths must keep "
                             "them (analysis.scenario re-routes only the flows a failure cuts)")
        if keep.shape != (len(self.flows),):
            raise StateError(f"restricted(): keep has {keep.size} entries for {len(self.flows)} flows")
        state = object.__new__(NetworkState)
        flows = tuple(compress(self.flows, keep))
        for name, value in (("nodes", self.nodes), ("links", tuple(links)), ("flows", flows),
                            ("routing_kind", "ospf"), ("paths", {}), ("name", self.name), ("ecmp", self.ecmp)):
            object.__setattr__(state, name, value)
        if "flow_columns" in self.__dict__:
            state.__dict__["flow_columns"] = {name: _read_only(values[keep]) for name, values in self.flow_columns.items()}
        _ = state.routes
        return state

    def without_links(self, pairs) -> "NetworkState":
        """The state after the given (src, dst) links fail (both directions must be named)."""
        drop = set(map(tuple, pairs))
        unknown = drop - set(self.link_index)
        if unknown:
            raise StateError(f"link {sorted(unknown)[0][0]}->{sorted(unknown)[0][1]} is not in the topology")
        links = tuple(lk for lk in self.links if (lk.src, lk.dst) not in drop)
        return replace(self, links=links, routing_kind="ospf", paths={})

    # ----------------------------------------------------------- JSON
    def to_dict(self) -> dict:
        out = {
            "name": self.name,
            "nodes": list(self.nodes),
            "links": [_link_dict(lk) for lk in self.links],
            "traffic": [_flow_dict(f) for f in self.flows],
            "routing": {"kind": self.routing_kind},
        }
        if self.routing_kind == "paths":
            out["routing"]["paths"] = [list(self.paths[(f.src, f.dst)]) for f in self.flows]
        if self.ecmp:
            out["routing"]["ecmp"] = True
        return out

    @classmethod
    def from_dict(cls, data: dict) -> "NetworkState":
        if not isinstance(data, dict):
            raise StateError("a network state must be a JSON object with nodes, links, traffic, routing")
        for key in ("nodes", "links"):
            if key not in data:
                raise StateError(f"the state has no {key!r} field")
        unknown = set(data) - {"name", "nodes", "links", "traffic", "routing"}
        if unknown:
            raise StateError(f"unknown top-level field {sorted(unknown)[0]!r}")
        nodes = tuple(_node_name(n, f"nodes[{i}]") for i, n in enumerate(_list(data, "nodes")))
        if not _list(data, "links"):
            raise StateError("the state has no links")
        links = tuple(_build(Link, item, f"links[{i}]") for i, item in enumerate(_list(data, "links")))
        flows = tuple(_build(Flow, item, f"traffic[{i}]") for i, item in enumerate(_list(data, "traffic", [])))
        routing = data.get("routing", {"kind": "ospf"})
        if not isinstance(routing, dict):
            raise StateError("routing must be an object such as {\"kind\": \"ospf\"}")
        unknown = set(routing) - {"kind", "paths", "ecmp"}
        if unknown:
            raise StateError(f"routing: unknown field {sorted(map(str, unknown))[0]!r} (known: kind, paths, ecmp)")
        kind = routing.get("kind", "ospf")
        paths = {}
        if kind == "paths":
            known = set(nodes)
            for i, path in enumerate(_list(routing, "paths")):
                if not isinstance(path, list) or len(path) < 2:
                    raise StateError(f"routing.paths[{i}]: a path is a list of at least two node names")
                path = tuple(_node_name(n, f"routing.paths[{i}]") for n in path)
                stranger = next((n for n in path if n not in known), None)
                if stranger is not None:
                    raise StateError(f"routing.paths[{i}]: unknown node {stranger!r}")
                if (path[0], path[-1]) in paths:
                    raise StateError(f"routing.paths[{i}]: a second path for {path[0]}->{path[-1]} "
                                     "(one path per traffic pair)")
                paths[(path[0], path[-1])] = path
        elif "paths" in routing:
            raise StateError(f"routing: paths are given but kind is {shown(kind)}; set \"kind\": \"paths\"")
        return cls(nodes=nodes, links=links, flows=flows, routing_kind=kind, paths=paths, name=str(data.get("name", "")),
                   ecmp=routing.get("ecmp", False))

    def save(self, path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=1))

    @classmethod
    def load(cls, path) -> "NetworkState":
        data = read_json(path, "the state file", StateError)
        try:
            return cls.from_dict(data)
        except StateError as exc:
            raise StateError(f"{path}: {exc}") from None


def _number(tag: str, name: str, value) -> float:
    if value is None or isinstance(value, bool) or not isinstance(value, (int, float, np.number)):
        raise StateError(f"{tag}: {name} must be a number, got {shown(value)}")
    try:
        return float(value)
    except OverflowError:
        return math.inf


def _positive(tag: str, name: str, value, high: float = math.inf, low: float = 0.0) -> None:
    number = _number(tag, name, value)
    if not (math.isfinite(number) and number > 0 and low <= number <= high):
        bounds = f"positive and at most {high:g}" if low == 0 else f"positive, from {low:g} to {high:g}"
        raise StateError(f"{tag}: {name} must be {bounds}, got {shown(value)}")


def _finite_nonneg(tag: str, name: str, value, high: float = math.inf) -> None:
    number = _number(tag, name, value)
    if not (math.isfinite(number) and 0 <= number <= high):
        raise StateError(f"{tag}: {name} must be >= 0 and at most {high:g}, got {shown(value)}")


def _whole(value) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _read_only(values: np.ndarray) -> np.ndarray:
    """``values``, no longer writable (cached arrays are shared by every reader)."""
    values.setflags(write=False)
    return values


def _validate_scheduling(tag: str, link: Link) -> None:
    """The port's policy, queue sizes and weights (docs/state.md)."""
    if link.policy not in POLICIES:
        raise StateError(f"{tag}: policy {shown(link.policy)} is not one of {POLICIES}")
    sizes, weights = link.queue_sizes, link.queue_weights
    if link.policy == "fifo" and sizes is not None:
        raise StateError(f"{tag}: queue_sizes: a fifo port has one queue of `buffer` packets; "
                         "set policy to sp, wfq or drr for several")
    if sizes is not None:
        if not isinstance(sizes, tuple) or not 1 <= len(sizes) <= MAX_QUEUES:
            raise StateError(f"{tag}: queue_sizes must list 1 to {MAX_QUEUES} queues, got {shown(sizes)}")
        if not all(_whole(size) and 1 <= size <= MAX_BUFFER_PACKETS for size in sizes):
            raise StateError(f"{tag}: queue_sizes must be whole numbers of packets from 1 to {MAX_BUFFER_PACKETS}, "
                             f"got {shown(list(sizes))}")
    if weights is None:
        return
    if link.policy not in ("wfq", "drr"):
        raise StateError(f"{tag}: queue_weights apply to wfq and drr ports, this one is {link.policy}")
    if not isinstance(weights, tuple) or len(weights) != len(link.queues):
        raise StateError(f"{tag}: queue_weights needs one weight per queue ({len(link.queues)}), got {shown(weights)}")
    for weight in weights:
        _positive(tag, "queue_weights", weight, MAX_WEIGHT)


def _node_name(value, where: str) -> str:
    """A node name from JSON: a non-empty string, or an integer (GML ids), as a string."""
    if isinstance(value, bool) or not isinstance(value, (str, int)) or value == "":
        raise StateError(f"{where}: a node name must be a non-empty string, got {shown(value)}")
    return str(value)


def _list(data: dict, key: str, default=None) -> list:
    value = data.get(key, default)
    if not isinstance(value, list):
        raise StateError(f"{key!r} must be a list, got {type(value).__name__}")
    return value


@cache
def _required_fields(cls) -> tuple[str, ...]:
    """The fields of dataclass ``cls`` that have no default."""
    return tuple(name for name, spec in cls.__dataclass_fields__.items()
                 if spec.default is MISSING and spec.default_factory is MISSING)


def _build(cls, item, tag: str):
    if not isinstance(item, dict):
        raise StateError(f"{tag}: expected an object, got {type(item).__name__}")
    names = set(cls.__dataclass_fields__)
    unknown = set(item) - names
    if unknown:
        raise StateError(f"{tag}: unknown field {sorted(unknown)[0]!r} (known: {', '.join(sorted(names))})")
    kwargs = dict(item)
    for name in _required_fields(cls):
        if name not in kwargs:
            raise StateError(f"{tag}: missing field {name!r}")
    for end in ("src", "dst"):
        kwargs[end] = _node_name(kwargs[end], f"{tag}.{end}")
    for name in ("queue_sizes", "queue_weights"):
        if cls is Link and kwargs.get(name) is not None:
            if not isinstance(kwargs[name], list):
                raise StateError(f"{tag}: {name} must be a list with one value per queue, got {shown(kwargs[name])}")
            kwargs[name] = tuple(kwargs[name])
    if cls is Flow and kwargs.get("packet_sizes") is not None:
        if not isinstance(kwargs["packet_sizes"], list):
            raise StateError(f"{tag}: packet_sizes must be a list [small, large], got {shown(kwargs['packet_sizes'])}")
        kwargs["packet_sizes"] = tuple(kwargs["packet_sizes"])
    try:
        return cls(**kwargs)
    except TypeError as exc:
        raise StateError(f"{tag}: {exc}") from None


def _link_dict(link: Link) -> dict:
    out = {
        "src": link.src,
        "dst": link.dst,
        "capacity": link.capacity,
        "buffer": int(link.buffer),
        "prop_delay": link.prop_delay,
        "weight": link.weight,
    }
    if link.policy != "fifo":
        out["policy"] = link.policy
    if link.queue_sizes is not None:
        out["queue_sizes"] = [int(size) for size in link.queue_sizes]
    if link.queue_weights is not None:
        out["queue_weights"] = list(link.queue_weights)
    return out


def _flow_dict(flow: Flow) -> dict:
    out = {
        "src": flow.src,
        "dst": flow.dst,
        "rate": flow.rate,
        "time_dist": flow.time_dist,
        "packet_size": flow.packet_size,
        "size_dist": flow.size_dist,
    }
    if flow.packet_sizes is not None:
        out["packet_sizes"] = list(flow.packet_sizes)
    if flow.time_dist == "onoff":
        out["on_time"] = flow.on_time
        out["off_time"] = flow.off_time
    if flow.tos:
        out["tos"] = int(flow.tos)
    return out
