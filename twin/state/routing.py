"""OSPF routing: link weights → destination-based shortest paths.

Pure functions over arrays, so the optimizer can route thousands of candidate
weight vectors cheaply. Ties between equal-cost next hops go to the neighbour
with the lowest node index, the same rule the controller installs as flow rules.
"""

from __future__ import annotations

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
    order = np.lexsort((np.arange(len(src)), dst, src))  # by node, then neighbour index, then link index
    sorted_src = src[order]
    starts = np.searchsorted(sorted_src, np.arange(n_nodes + 1))
    for v in range(n_nodes):
        out = order[starts[v]:starts[v + 1]]
        if len(out) == 0:
            continue
        cost = weight[out, None] + dist_to[:, dst[out]].T  # (out-degree, destinations)
        best = cost.min(axis=0)
        tolerance = 1e-9 * np.maximum(best, 1.0)
        first = np.argmax(cost <= best + tolerance, axis=0)
        reachable = np.isfinite(best)
        table[v, reachable] = out[first[reachable]]
        table[v, v] = -1
    return table


def paths_from_table(table: np.ndarray, link_dst: np.ndarray, pairs_src: np.ndarray, pairs_dst: np.ndarray):
    """Follow a next-hop table from each source to its destination.

    Returns a list of link-index arrays, or raises ``LookupError(i)`` for the
    first pair ``i`` whose destination cannot be reached.
    """
    n_pairs = len(pairs_src)
    current = pairs_src.copy()
    hops: list[np.ndarray] = []
    active = current != pairs_dst
    for _ in range(table.shape[0]):
        if not active.any():
            break
        link = np.where(active, table[current, pairs_dst], -2)
        dead = np.flatnonzero(link == -1)
        if len(dead):
            raise LookupError(int(dead[0]))
        hops.append(link)
        current = np.where(active, link_dst[np.maximum(link, 0)], current)
        active = current != pairs_dst
    if active.any():
        raise LookupError(int(np.flatnonzero(active)[0]))
    if not hops:
        return [np.zeros(0, dtype=np.int64) for _ in range(n_pairs)]
    stacked = np.stack(hops, axis=1)
    return [row[row >= 0] for row in stacked]


def ospf_flow_links(n_nodes: int, link_src: np.ndarray, link_dst: np.ndarray, weight: np.ndarray,
                    flow_src: np.ndarray, flow_dst: np.ndarray) -> list[np.ndarray]:
    """Each flow's path (link indices) under OSPF ``weight`` per link; flows given by node indices.
    Raises ``LookupError(i)`` when flow ``i``'s destination cannot be reached."""
    table = next_hop_links(n_nodes, link_src, link_dst, weight)
    return paths_from_table(table, link_dst, flow_src, flow_dst)
