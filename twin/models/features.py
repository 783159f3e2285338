"""Scale-free graph features of network states, batched as one disjoint union.

:func:`build_batch` turns a list of :class:`~twin.state.NetworkState` into a
:class:`GraphBatch`: per-link, per-queue and per-path feature matrices plus the
index tensors that say which link each path crosses at each hop.

Every feature is dimensionless (loads, packet counts, ratios, one-hots), so a
state in Mbit/s and the same state in bits per time unit give identical
features. The physical scales sit beside the features, in seconds, for the
delay decomposition every model uses:

    delay(path) = Σ_hops [ waiting(hop) + size(path) / C(link) ] + Σ_hops prop(link)

where a model predicts waiting(hop) = occupancy × mean_size(link) / C(link),
occupancy in packets (0..buffer).

Besides the raw descriptors, links, queues and paths carry the answer of the
queueing-theory baseline (:mod:`twin.models.queueing`: load after upstream losses, loss,
waiting time in units of the service time), which the learned models correct.

Paths are sorted by hop count, longest first, so a recurrent pass over hop
position ``k`` only touches the prefix of ``count[k]`` paths still active.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import SimpleNamespace

import numpy as np

from twin.models.queueing import load_before, priority_order, solve
from twin.state.errors import StateError
from twin.state.model import POLICIES, SIZE_DISTS, TIME_DISTS, NetworkState

BASE_LINK_FEATURES = ("load", "log_flows", "poisson_share", "cbr_share", "onoff_share", "size_scv")
BASE_QUEUE_FEATURES = ("log2_buffer", "load")
BASE_PATH_FEATURES = (
    "bottleneck_share", "log_bottleneck_share", "poisson", "cbr", "onoff", "on_fraction", "log_cycle_packets",
    "deterministic", "exponential", "binomial", "size_scv", "log_rel_size", "hops", "max_load",
)
# the M/M/1/b fixed point of twin.qt, as hints: load after upstream losses, loss, waiting time in service times
LINK_FEATURES = BASE_LINK_FEATURES + ("qt_rho", "qt_loss", "qt_log_wait")
QUEUE_FEATURES = BASE_QUEUE_FEATURES + ("qt_wait_per_buffer",)
PATH_FEATURES = BASE_PATH_FEATURES + ("qt_path_loss", "qt_log_wait_share")
# one row per (link, queue): a FIFO port is one class, a scheduled port one per queue (queue 0 first for SP)
BASE_CLASS_FEATURES = ("log2_buffer", "load", "link_load", *(f"policy_{p}" for p in POLICIES), "weight_share",
                       "serving_place", "load_before")
CLASS_FEATURES = BASE_CLASS_FEATURES + ("qt_speed", "qt_loss", "qt_log_wait", "qt_wait_per_buffer")


@dataclass
class GraphBatch:
    """Several states as one graph (disjoint union), paths sorted by length (longest first).

    Features (float32, dimensionless): ``link_x`` (L, len(LINK_FEATURES)),
    ``queue_x`` (L, len(QUEUE_FEATURES)), ``path_x`` (P, len(PATH_FEATURES)).
    Hops are listed by position, then sorted path: ``hop_link[i]`` is the link
    crossed at hop ``i``, ``hop_path[i]`` its (sorted) path; position ``k``
    occupies ``hop_link[offsets[k]:offsets[k] + counts[k]]`` and belongs to
    paths ``0..counts[k]-1``. Scales (float64, SI units): ``link_buffer``
    (packets), ``link_service`` (s, mean packet size of the link's traffic / C),
    ``hop_transmit`` (s, the path's own mean size / C), ``path_prop`` (s).
    ``link_capacity`` (bit/s), ``path_rate`` (bit/s), ``path_size`` (bits).
    ``order[j]`` is the index, in the concatenated flows of all states, of
    sorted path ``j``; ``flow_offsets``/``link_offsets`` delimit each state.

    Queues (classes): every port has one per queue, a FIFO port one, listed link
    by link in queue order. ``class_link`` is a class's link, ``hop_class`` the
    class a hop waits in (its flow's ToS selects it), ``class_policy`` an index
    into POLICIES, ``class_rank`` the queue's index at its port,
    ``class_weight`` its share of the port (WFQ/DRR weights; 1 otherwise),
    ``class_buffer`` (packets), ``class_service`` (s, mean packet size of the
    class's traffic / C), ``class_x`` (Q, len(CLASS_FEATURES); BASE_CLASS_FEATURES
    without the QT hints).
    """

    link_x: np.ndarray
    queue_x: np.ndarray
    path_x: np.ndarray
    hop_link: np.ndarray
    hop_path: np.ndarray
    counts: np.ndarray
    offsets: np.ndarray
    link_buffer: np.ndarray
    link_service: np.ndarray
    hop_transmit: np.ndarray
    path_prop: np.ndarray
    link_capacity: np.ndarray
    path_rate: np.ndarray
    path_size: np.ndarray
    order: np.ndarray
    flow_offsets: np.ndarray
    link_offsets: np.ndarray
    class_link: np.ndarray
    hop_class: np.ndarray
    class_policy: np.ndarray
    class_rank: np.ndarray
    class_weight: np.ndarray
    class_buffer: np.ndarray
    class_service: np.ndarray
    class_x: np.ndarray
    routes: list = None  # per state its Routes (twin.state.model), to fold ECMP paths back into flows
    class_speed: np.ndarray = None  # per class, QT's share of its link's capacity it is served at (with the QT hints)

    @property
    def n_paths(self) -> int:
        return len(self.order)

    @property
    def max_hops(self) -> int:
        return len(self.counts)

    @property
    def path_transmit(self) -> np.ndarray:
        """Per sorted path: the sum of its hops' transmission times, s."""
        return np.bincount(self.hop_path, weights=self.hop_transmit, minlength=self.n_paths)

    def unsort(self, per_path_sorted: np.ndarray) -> list[np.ndarray]:
        """Per-sorted-path values → one array per state, in each state's flow order."""
        out = np.empty(len(self.order), dtype=per_path_sorted.dtype)
        out[self.order] = per_path_sorted
        return [out[a:b] for a, b in zip(self.flow_offsets[:-1], self.flow_offsets[1:])]

    def per_flow_variance(self, delay_sorted: np.ndarray, variance_sorted: np.ndarray) -> list[np.ndarray]:
        """Per-sorted-path delay (s) and delay variance (s²) → per state, per flow, the variance of its delay:
        an ECMP flow's pools its paths (share-weighted second moment less the squared mean)."""
        variances, delays = self.unsort(variance_sorted), self.unsort(delay_sorted)
        if self.routes is None:
            return variances
        out = []
        for routes, variance, delay in zip(self.routes, variances, delays):
            n_flows = int(routes.owner.max()) + 1
            if len(routes.owner) == n_flows:  # one path per flow: nothing to pool
                out.append(variance)
                continue
            mean = routes.per_flow(delay, n_flows)
            out.append(np.maximum(routes.per_flow(variance + delay**2, n_flows) - mean**2, 0.0))
        return out

    def per_flow_metrics(self, out_sorted: np.ndarray, heads: tuple[str, ...]) -> list[dict[str, np.ndarray]]:
        """A model's (P, len(heads)) output per sorted path → per state, per flow, each head: an ECMP flow's
        delay and loss are the share-weighted means over its paths, its jitter their pooled variance."""
        columns = [self.per_flow_variance(out_sorted[:, 0], out_sorted[:, i]) if head == "jitter"
                   else self.per_flow(out_sorted[:, i]) for i, head in enumerate(heads)]
        return [dict(zip(heads, values)) for values in zip(*columns)]

    def per_flow(self, per_path_sorted: np.ndarray) -> list[np.ndarray]:
        """Per-sorted-path delays → one array per state, per flow: an ECMP flow's share-weighted mean delay."""
        per_route = self.unsort(per_path_sorted)
        if self.routes is None:
            return per_route
        return [r.per_flow(values, int(r.owner.max()) + 1) for r, values in zip(self.routes, per_route)]


@dataclass
class StateGraph:
    """One state's features in flow order, before batching (see :class:`GraphBatch` for fields)."""

    link_x: np.ndarray
    queue_x: np.ndarray
    path_x: np.ndarray
    hop_link: np.ndarray
    path_len: np.ndarray
    link_buffer: np.ndarray
    link_service: np.ndarray
    path_size: np.ndarray
    path_rate: np.ndarray
    link_capacity: np.ndarray
    path_prop: np.ndarray
    class_link: np.ndarray
    hop_class: np.ndarray
    class_policy: np.ndarray
    class_rank: np.ndarray
    class_weight: np.ndarray
    class_buffer: np.ndarray
    class_service: np.ndarray
    class_x: np.ndarray
    routes: object = None  # the state's Routes (twin.state.model)


def flow_arrays(state: NetworkState) -> dict[str, np.ndarray]:
    """Per-flow arrays: rate (bit/s), size (mean bits), size_scv (packet-size variance / mean²),
    time (index into TIME_DISTS), size_code (index into SIZE_DISTS), on_fraction, cycle (s, ON+OFF; 0 if not ON/OFF)."""
    columns = state.flow_columns
    rate, size, time, size_code = columns["rate"], columns["packet_size"], columns["time"], columns["size"]
    on, off, small, large = columns["on_time"], columns["off_time"], columns["small"], columns["large"]
    binomial = size_code == SIZE_DISTS.index("binomial")
    with np.errstate(invalid="ignore", divide="ignore"):
        p_small = np.where(binomial, (large - size) / (large - small), 1.0)
        second = p_small * small**2 + (1 - p_small) * large**2
    scv = np.where(binomial, second / size**2 - 1.0, (size_code == SIZE_DISTS.index("exponential")).astype(float))
    onoff = time == TIME_DISTS.index("onoff")
    cycle = np.where(onoff, on + off, 0.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        on_fraction = np.where(onoff, on / cycle, 1.0)
    return {"rate": rate, "size": size, "size_scv": scv, "time": time, "size_code": size_code,
            "on_fraction": on_fraction, "cycle": cycle}


def state_graph(state: NetworkState) -> StateGraph:
    """The features of one state, one path per route (per flow without ECMP), in the state's order."""
    if not state.flows:
        raise StateError(f"state {state.name or '(unnamed)'}: no traffic, so no paths to predict")
    la = state.link_arrays
    capacity = la["capacity"]
    n_links = len(capacity)
    routes = state.routes
    fa = {name: values[routes.owner] for name, values in flow_arrays(state).items()}
    fa["rate"] = fa["rate"] * routes.share
    lengths = routes.hop_counts
    hop_link = routes.hop_links
    hop_flow = routes.hop_route
    rate, size = fa["rate"], fa["size"]

    def per_link(values):
        return np.bincount(hop_link, weights=values[hop_flow], minlength=n_links)

    bits = per_link(rate)
    packets = per_link(rate / size)
    second = per_link(rate / size * size**2 * (1 + fa["size_scv"]))
    n_flows = np.bincount(hop_link, minlength=n_links)
    load = bits / capacity
    default_size = float(np.sum(rate) / np.sum(rate / size)) if np.sum(rate) > 0 else float(np.mean(size))
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_size = np.where(packets > 0, bits / packets, default_size)
        size_scv = np.where(packets > 0, second / packets / mean_size**2 - 1.0, 0.0)
        shares = [np.where(bits > 0, per_link(rate * (fa["time"] == k)) / bits, 0.0) for k in range(len(TIME_DISTS))]
    link_x = np.stack([load, np.log1p(n_flows), *shares, size_scv], axis=1)
    queue_x = np.stack([np.log2(la["buffer"].astype(np.float64)), load], axis=1)

    starts = routes.first_hop
    bottleneck = np.minimum.reduceat(capacity[hop_link], starts)
    max_load = np.maximum.reduceat(load[hop_link], starts)
    share = rate / bottleneck
    path_mean_size = np.add.reduceat(mean_size[hop_link], starts) / lengths
    with np.errstate(divide="ignore"):
        cycle_packets = np.where(fa["cycle"] > 0, fa["cycle"] * rate / size, 1.0)
    path_x = np.column_stack([
        share,
        np.log10(np.maximum(share, 1e-6)),
        np.eye(len(TIME_DISTS))[fa["time"]],
        fa["on_fraction"],
        np.log10(np.maximum(cycle_packets, 1e-3)),
        np.eye(len(SIZE_DISTS))[fa["size_code"]],
        fa["size_scv"],
        np.log(size / path_mean_size),
        lengths.astype(np.float64),
        max_load,
    ])
    link_service = mean_size / capacity
    classes = _classes(state, routes, hop_link, hop_flow, rate, size, load, link_service)
    return StateGraph(
        link_x=link_x, queue_x=queue_x, path_x=path_x, hop_link=hop_link, path_len=lengths,
        link_buffer=la["buffer"].astype(np.float64), link_service=link_service,
        path_size=size, path_rate=rate, link_capacity=capacity,
        path_prop=np.add.reduceat(la["prop_delay"][hop_link], starts), routes=routes, **classes,
    )


def _classes(state: NetworkState, routes, hop_link, hop_flow, rate, size, load, link_service) -> dict:
    """The per-(link, queue) arrays of one state (see :class:`GraphBatch`); hop_class in flow order."""
    capacity = state.link_arrays["capacity"]
    n_links = len(capacity)
    if not state.scheduled:  # one FIFO class per link: the classes are the links
        class_link = np.arange(n_links)
        return {"class_link": class_link, "hop_class": hop_link, "class_policy": np.zeros(n_links, dtype=np.int64),
                "class_rank": np.zeros(n_links, dtype=np.int64), "class_weight": np.ones(n_links),
                "class_buffer": state.link_arrays["buffer"].astype(np.float64), "class_service": link_service,
                "class_x": _class_base_features(state.link_arrays["buffer"].astype(np.float64), load, load, class_link,
                                                np.zeros(n_links, dtype=np.int64), np.zeros(n_links, dtype=np.int64),
                                                np.ones(n_links), np.ones(n_links, dtype=np.int64))}
    counts = np.array([len(link.queues) for link in state.links], dtype=np.int64)
    first = np.concatenate([[0], np.cumsum(counts)[:-1]])
    class_link = np.repeat(np.arange(n_links), counts)
    rank = np.arange(len(class_link)) - first[class_link]
    weight = np.concatenate([np.asarray(link.queue_weights or (1.0,) * n, dtype=np.float64)
                             / np.sum(link.queue_weights or (1.0,) * n) for link, n in zip(state.links, counts)])
    policy = np.array([POLICIES.index(link.policy) for link in state.links], dtype=np.int64)[class_link]
    weight = np.where(np.isin(policy, (POLICIES.index("wfq"), POLICIES.index("drr"))), weight, 1.0)
    buffer = np.array([q for link in state.links for q in link.queues], dtype=np.float64)
    tos = np.array([f.tos for f in state.flows], dtype=np.int64)[routes.owner]
    hop_class = first[hop_link] + np.minimum(tos[hop_flow], counts[hop_link] - 1)
    bits = np.bincount(hop_class, weights=rate[hop_flow], minlength=len(class_link))
    packets = np.bincount(hop_class, weights=(rate / size)[hop_flow], minlength=len(class_link))
    with np.errstate(invalid="ignore", divide="ignore"):
        service = np.where(packets > 0, bits / packets / capacity[class_link], link_service[class_link])
    class_load = bits / capacity[class_link]
    x = _class_base_features(buffer, class_load, load[class_link], class_link, policy, rank, weight, counts[class_link])
    return {"class_link": class_link, "hop_class": hop_class, "class_policy": policy, "class_rank": rank,
            "class_weight": weight, "class_buffer": buffer, "class_service": service, "class_x": x}


def _class_base_features(buffer, class_load, link_load, class_link, policy, rank, weight, queues) -> np.ndarray:
    """BASE_CLASS_FEATURES: log2 buffer, the class's and its link's load, the policy one-hot, the WFQ/DRR
    weight share, the queue's place in its port's serving order (0 first, 1 last: the queue index under SP,
    the load per weight under WFQ, :func:`twin.models.queueing.priority_order`) and the load of the queues
    served before it (SP, WFQ)."""
    classes = SimpleNamespace(class_link=class_link, class_policy=policy, class_rank=rank, class_weight=weight)
    key = priority_order(classes, class_load)
    ordered = np.isin(policy, (POLICIES.index("sp"), POLICIES.index("wfq")))
    place = load_before(classes, np.ones(len(class_load)), key)  # classes ahead of it at its port
    return np.column_stack([
        np.log2(buffer), class_load, link_load, np.eye(len(POLICIES))[policy], weight,
        np.where(ordered & (queues > 1), place / np.maximum(queues - 1, 1), 0.0),
        np.where(ordered, load_before(classes, class_load, key), 0.0),
    ])


def batch_graphs(graphs: list[StateGraph], qt_features: bool = True) -> GraphBatch:
    """Join per-state graphs into one disjoint union with paths sorted by length (and the QT hints, by default)."""
    if not graphs:
        raise StateError("no states to batch")
    link_offsets = np.concatenate([[0], np.cumsum([len(g.link_buffer) for g in graphs])])
    flow_offsets = np.concatenate([[0], np.cumsum([len(g.path_len) for g in graphs])])
    lengths = np.concatenate([g.path_len for g in graphs])
    flat_links = np.concatenate([g.hop_link + off for g, off in zip(graphs, link_offsets)])
    order = np.argsort(-lengths, kind="stable")
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])[order]  # first hop of each sorted path
    counts = np.ascontiguousarray(np.cumsum(np.bincount(lengths)[::-1])[::-1][1:])  # paths with more than k hops
    offsets = np.concatenate([[0], np.cumsum(counts)[:-1]])
    hop_path = np.concatenate([np.arange(n) for n in counts])  # by hop position, then sorted path
    hop_row = starts[hop_path] + np.repeat(np.arange(len(counts)), counts)  # each hop's place in the flat arrays
    hop_link = flat_links[hop_row]
    capacity = np.concatenate([g.link_capacity for g in graphs])
    size = np.concatenate([g.path_size for g in graphs])[order]
    if all(g.hop_class is g.hop_link for g in graphs):  # FIFO states: each link its one class
        hop_class = hop_link
    else:
        class_offsets = np.concatenate([[0], np.cumsum([len(g.class_link) for g in graphs])])
        flat_classes = np.concatenate([g.hop_class + off for g, off in zip(graphs, class_offsets)])
        hop_class = flat_classes[hop_row]
    batch = GraphBatch(
        link_x=np.concatenate([g.link_x for g in graphs]),
        queue_x=np.concatenate([g.queue_x for g in graphs]),
        path_x=np.concatenate([g.path_x for g in graphs])[order],
        hop_link=hop_link,
        hop_path=hop_path,
        counts=counts,
        offsets=offsets,
        link_buffer=np.concatenate([g.link_buffer for g in graphs]),
        link_service=np.concatenate([g.link_service for g in graphs]),
        hop_transmit=size[hop_path] / capacity[hop_link],
        path_prop=np.concatenate([g.path_prop for g in graphs])[order],
        link_capacity=capacity,
        path_rate=np.concatenate([g.path_rate for g in graphs])[order],
        path_size=size,
        order=order,
        flow_offsets=flow_offsets,
        link_offsets=link_offsets,
        class_link=np.concatenate([g.class_link + off for g, off in zip(graphs, link_offsets)]),
        hop_class=hop_class,
        class_policy=np.concatenate([g.class_policy for g in graphs]),
        class_rank=np.concatenate([g.class_rank for g in graphs]),
        class_weight=np.concatenate([g.class_weight for g in graphs]),
        class_buffer=np.concatenate([g.class_buffer for g in graphs]),
        class_service=np.concatenate([g.class_service for g in graphs]),
        class_x=np.concatenate([g.class_x for g in graphs]),
        routes=[g.routes for g in graphs] if all(g.routes is not None for g in graphs) else None,
    )
    if qt_features:
        _add_qt_features(batch)
    return batch


def _add_qt_features(batch: GraphBatch) -> None:
    """Append the QT fixed point's dimensionless answers to the feature matrices (float32)."""
    qt = solve(batch)
    batch.class_speed = qt["class_speed"]
    wait_units = np.maximum(qt["sojourn"] / batch.link_service - 1.0, 0.0)  # mean wait / mean service time
    class_wait = np.maximum(qt["class_sojourn"] / batch.class_service - 1.0, 0.0)
    transmit = batch.path_transmit
    wait = np.bincount(batch.hop_path, weights=(class_wait * batch.class_service)[batch.hop_class],
                       minlength=batch.n_paths)
    batch.link_x = np.column_stack([batch.link_x, qt["rho"], qt["link_loss"], np.log1p(wait_units)]).astype(np.float32)
    batch.queue_x = np.column_stack([batch.queue_x, wait_units / batch.link_buffer]).astype(np.float32)
    batch.path_x = np.column_stack([batch.path_x, qt["loss"], np.log1p(wait / transmit)]).astype(np.float32)
    batch.class_x = np.column_stack([batch.class_x, qt["class_speed"], qt["class_loss"], np.log1p(class_wait),
                                     class_wait / batch.class_buffer]).astype(np.float32)


def build_batch(states: list[NetworkState], qt_features: bool = True) -> GraphBatch:
    """Features of ``states`` as one batched graph."""
    return batch_graphs([state_graph(s) for s in states], qt_features)


TARGETS = ("delay", "queueing", "waiting")  # what a delay error can be relative to
TRANSMIT_SHARE = 0.1  # of the path's transmission time kept in the ``waiting`` scale
# jitter (delay variance) below (TRANSMIT_SHARE × the path's transmission time)² is noise, not a figure to be
# relative to: training adds it to both sides, jitter MAPE leaves out paths whose label is below it
JITTER_FLOOR = TRANSMIT_SHARE**2  # of the path's squared transmission time


def error_scales(label, prop, transmit, target: str, maximum=np.maximum):
    """What a prediction's error is relative to (s): the delay (``delay``), the delay minus propagation
    (``queueing``), or the waiting time plus TRANSMIT_SHARE of the transmission (``waiting``: what the
    emulation measures, docs/emulation.md), at least that share of the transmission (a flow of
    mixed sizes may deliver smaller packets than its mean). ``maximum``: np.maximum or tf.maximum."""
    if target == "delay":
        return label
    if target == "queueing":
        return label - prop
    return maximum(label - prop - (1.0 - TRANSMIT_SHARE) * transmit, TRANSMIT_SHARE * transmit)


def fixed_delays(state: NetworkState) -> tuple[np.ndarray, np.ndarray]:
    """Per flow (state order): propagation and transmission (mean packet / capacity) along its path, s."""
    arrays, routes = state.link_arrays, state.routes
    n_routes, hops, hop_route = len(routes.owner), routes.hop_links, routes.hop_route
    prop = np.bincount(hop_route, weights=arrays["prop_delay"][hops], minlength=n_routes)
    size = state.flow_columns["packet_size"][routes.owner]
    transmit = np.bincount(hop_route, weights=size[hop_route] / arrays["capacity"][hops], minlength=n_routes)
    n_flows = len(state.flows)
    return routes.per_flow(prop, n_flows), routes.per_flow(transmit, n_flows)
