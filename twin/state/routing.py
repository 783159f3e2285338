"""OSPF routing: link weights → destination-based shortest paths.

Pure functions over arrays, so the optimizer can route thousands of candidate
weight vectors cheaply. Ties between equal-cost next hops go to the neighbour
with the lowest node index, the same rule the controller installs as flow rules.
"""

from __future__ import annotations

import numba
import numpy as np
from scipy.sparse import csr_matrix
from scipy.sparse.csgraph import dijkstra


def next_hop_links(n_nodes: int, src: np.ndarray, dst: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """Next-hop table for destination-based shortest-path routing.

    Returns an ``(n_nodes, n_nodes)`` int array: entry ``[v, d]`` is the index of
    the link ``v`` forwards on towards ``d``, or -1 where ``v == d`` or ``d`` is
    unreachable from ``v``. Weights must be positive.
    """
    reverse = csr_matrix((weight, (dst, src)), shape=(n_nodes, n_nodes))
    # dist_to[d, v]: cost from v to d (Dijkstra from d over reversed links).
    dist_to = dijkstra(reverse, directed=True)
    table = np.full((n_nodes, n_nodes), -1, dtype=np.int64)
    if len(src) == 0:
        return table
    order = np.lexsort((np.arange(len(src)), dst, src))  # by node, then neighbour index, then link index
    starts = np.searchsorted(src[order], np.arange(n_nodes + 1))
    degree = np.diff(starts)
    nodes = np.flatnonzero(degree)
    first_out = starts[:-1][nodes]
    cost = weight[order, None] + dist_to[:, dst[order]].T  # (links in order, destinations)
    best = np.minimum.reduceat(cost, first_out, axis=0)  # per node with links, per destination
    tolerance = 1e-9 * np.maximum(best, 1.0)
    tied = cost <= np.repeat(best + tolerance, degree[nodes], axis=0)
    position = np.where(tied, np.arange(len(order))[:, None], len(order))
    first = np.minimum.reduceat(position, first_out, axis=0)  # the first tied link of each node, in order
    table[nodes] = np.where(np.isfinite(best), order[np.minimum(first, len(order) - 1)], -1)
    table[np.arange(n_nodes), np.arange(n_nodes)] = -1
    return table


def paths_from_table(table: np.ndarray, link_dst: np.ndarray, pairs_src: np.ndarray, pairs_dst: np.ndarray):
    """Follow a next-hop table from each source to its destination.

    Returns ``(hop_links, hop_counts)``: every pair's link indices in hop order, pair after pair, and
    the number of links of each pair's path; raises ``LookupError(i)`` for the first pair ``i`` whose
    destination cannot be reached.
    """
    table = np.ascontiguousarray(table, dtype=np.int64)
    link_dst = np.ascontiguousarray(link_dst, dtype=np.int64)
    pairs_src = np.ascontiguousarray(pairs_src, dtype=np.int64)
    pairs_dst = np.ascontiguousarray(pairs_dst, dtype=np.int64)
    hop_counts = np.empty(len(pairs_src), dtype=np.int64)
    unreachable = _count_hops(table, link_dst, pairs_src, pairs_dst, hop_counts)
    if unreachable >= 0:
        raise LookupError(unreachable)
    hop_links = np.empty(int(hop_counts.sum()), dtype=np.int64)
    _fill_hops(table, link_dst, pairs_src, pairs_dst, hop_links)
    return hop_links, hop_counts


@numba.njit(cache=True)
def _count_hops(table, link_dst, pairs_src, pairs_dst, hop_counts):
    """Links on each pair's path into ``hop_counts``; the first pair whose destination cannot be reached
    (no next hop, or a loop longer than the nodes), else -1."""
    n_nodes = table.shape[0]
    for i in range(len(pairs_src)):
        node, count = pairs_src[i], 0
        while node != pairs_dst[i]:
            link = table[node, pairs_dst[i]]
            if link < 0 or count == n_nodes:
                return i
            node = link_dst[link]
            count += 1
        hop_counts[i] = count
    return -1


@numba.njit(cache=True)
def _fill_hops(table, link_dst, pairs_src, pairs_dst, hop_links):
    """Every pair's links, pair after pair, into ``hop_links`` (all destinations known reachable)."""
    at = 0
    for i in range(len(pairs_src)):
        node = pairs_src[i]
        while node != pairs_dst[i]:
            link = table[node, pairs_dst[i]]
            hop_links[at] = link
            at += 1
            node = link_dst[link]


def ospf_flow_hops(n_nodes: int, link_src: np.ndarray, link_dst: np.ndarray, weight: np.ndarray,
                   flow_src: np.ndarray, flow_dst: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each flow's path under OSPF ``weight`` per link, flows given by node indices, as
    :func:`paths_from_table` gives it (flat link indices, links per flow). Raises ``LookupError(i)``
    when flow ``i``'s destination cannot be reached."""
    table = next_hop_links(n_nodes, link_src, link_dst, weight)
    return paths_from_table(table, link_dst, flow_src, flow_dst)


MAX_ECMP_PATHS = 64  # equal-cost paths one flow may split over (routers allow 8-128)


def equal_cost_links(n_nodes: int, link_src: np.ndarray, link_dst: np.ndarray, weight: np.ndarray):
    """``(dist_to, on_shortest)``: ``dist_to[d, v]`` the cost from node v to node d (inf if unreachable)
    and ``on_shortest[d, link]`` whether the link lies on a shortest path towards d (its source's
    equal-cost next hops towards d are the links where it is True)."""
    reverse = csr_matrix((weight, (link_dst, link_src)), shape=(n_nodes, n_nodes))
    dist_to = dijkstra(reverse, directed=True)
    cost_via = weight[None, :] + dist_to[:, link_dst]  # [d, link]: cost to d leaving on the link
    best = dist_to[:, link_src]
    return dist_to, np.isfinite(cost_via) & (cost_via <= best + 1e-9 * np.maximum(best, 1.0))


def ecmp_routes(n_nodes: int, link_src: np.ndarray, link_dst: np.ndarray, weight: np.ndarray,
                flow_src: np.ndarray, flow_dst: np.ndarray, max_paths: int = MAX_ECMP_PATHS):
    """Every flow split over all its equal-cost shortest paths, evenly at each hop (as OSPF routers hash).

    Returns ``(hop_links, hop_counts, owner, share)``: every route's link indices in hop order, route
    after route, the number of links of each route, the flow index each route belongs to, and the
    fraction of that flow's traffic it carries (a flow's shares sum to 1).
    Routes of one flow are consecutive, in the order of their first differing link index.
    Raises ``LookupError(i)`` when flow ``i``'s destination cannot be reached and
    ``OverflowError(i)`` when it has more than ``max_paths`` equal-cost paths.
    """
    dist_to, on_shortest = equal_cost_links(n_nodes, link_src, link_dst, weight)
    order = np.argsort(link_src, kind="stable")
    starts = np.searchsorted(link_src[order], np.arange(n_nodes + 1))
    fanout = np.zeros((n_nodes, n_nodes), dtype=np.int64)  # [d, v]: equal-cost next hops of v towards d
    np.add.at(fanout, (slice(None), link_src), on_shortest.astype(np.int64))

    unreachable = np.flatnonzero(~np.isfinite(dist_to[flow_dst, flow_src]))
    if len(unreachable):
        raise LookupError(int(unreachable[0]))
    owner = np.arange(len(flow_src))
    node = flow_src.copy()
    share = np.ones(len(flow_src))
    hops = np.zeros((len(flow_src), 0), dtype=np.int64)
    for _ in range(n_nodes):
        active = node != flow_dst[owner]
        if not active.any():
            break
        degree = np.where(active, starts[node + 1] - starts[node], 1)
        parent = np.repeat(np.arange(len(owner)), degree)
        offset = np.arange(len(parent)) - np.repeat(np.cumsum(degree) - degree, degree)
        link = np.where(active[parent], order[np.minimum(starts[node[parent]] + offset, len(order) - 1)], -1)
        dest = flow_dst[owner[parent]]
        keep = ~active[parent] | on_shortest[dest, np.maximum(link, 0)]
        parent, link, dest = parent[keep], link[keep], dest[keep]
        moving = link >= 0
        share = share[parent] / np.where(moving, fanout[dest, node[parent]], 1)
        node = np.where(moving, link_dst[np.maximum(link, 0)], node[parent])
        owner = owner[parent]
        hops = np.column_stack([hops[parent], link])
        counts = np.bincount(owner, minlength=len(flow_src))
        if counts.max() > max_paths:
            raise OverflowError(int(np.argmax(counts > max_paths)))
    return (*_flattened(hops), owner, share)


def _flattened(padded: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The non-negative entries of ``padded`` row after row (each row's entries first, then padding), and
    how many each row has."""
    valid = padded >= 0
    return padded[valid], valid.sum(axis=1)


def split_hops(hop_links: np.ndarray, hop_counts: np.ndarray) -> list[np.ndarray]:
    """One link-index array per path from the flat form (views of ``hop_links``)."""
    ends = np.cumsum(hop_counts)
    return [hop_links[a:b] for a, b in zip((ends - hop_counts).tolist(), ends.tolist())]
