"""Classical OSPF weight settings: unit (hop count), inverse capacity, and Fortz–Thorup local search.

Fortz & Thorup ("Internet traffic engineering by optimizing OSPF weights",
INFOCOM 2000) minimise Φ = Σ_links Φ_l(load_l), where Φ_l is the integral of a
piecewise-linear marginal cost with slopes 1, 3, 10, 70, 500, 5000 changing at
utilization 1/3, 2/3, 0.9, 1 and 1.1. Only routing and offered loads are needed:
no delay model.
"""

from __future__ import annotations

import time

import numpy as np

from twin.state.model import NetworkState
from twin.state.routing import next_hop_links, paths_from_table

SLOPES = np.array([1.0, 3.0, 10.0, 70.0, 500.0, 5000.0])
BREAKPOINTS = np.array([0.0, 1 / 3, 2 / 3, 0.9, 1.0, 1.1, np.inf])


def unit_weights(state: NetworkState) -> np.ndarray:
    """Hop-count routing."""
    return np.ones(len(state.links), dtype=np.int64)


def inverse_capacity_weights(state: NetworkState, high: int = 65535) -> np.ndarray:
    """Cisco's default: reference bandwidth / capacity, the fastest link getting weight 1."""
    capacity = state.link_arrays["capacity"]
    return np.clip(np.rint(capacity.max() / capacity), 1, high).astype(np.int64)


def fortz_thorup_cost(load: np.ndarray, capacity: np.ndarray) -> float:
    """Φ: the sum over links of the integral of the piecewise-linear marginal cost, in bit/s units."""
    utilization = load / capacity
    segment = np.clip(utilization[:, None] - BREAKPOINTS[None, :-1], 0.0, np.diff(BREAKPOINTS)[None, :])
    return float(np.sum(capacity * (segment @ SLOPES)))


class LoadModel:
    """Offered load per link for any weight vector of one state: routing only, no NetworkState rebuilt."""

    def __init__(self, state: NetworkState):
        arrays = state.link_arrays
        self.n_nodes = len(state.nodes)
        self.src, self.dst, self.capacity = arrays["src"], arrays["dst"], arrays["capacity"]
        columns = state.flow_columns
        self.pair_src, self.pair_dst, self.rates = columns["src"], columns["dst"], columns["rate"]

    def loads(self, weights: np.ndarray) -> np.ndarray:
        table = next_hop_links(self.n_nodes, self.src, self.dst, weights.astype(float))
        hop_links, hop_counts = paths_from_table(table, self.dst, self.pair_src, self.pair_dst)
        return np.bincount(hop_links, weights=np.repeat(self.rates, hop_counts), minlength=len(self.src))

    def cost(self, weights: np.ndarray) -> float:
        return fortz_thorup_cost(self.loads(weights), self.capacity)


def fortz_thorup(state: NetworkState, low: int = 1, high: int = 20, max_changed: int | None = None,
                 max_evaluations: int = 3000, time_limit_s: float = 60.0, seed: int = 0) -> np.ndarray:
    """Local search over single-weight changes minimising Φ, from the state's weights.

    Each round tries, for every link in random order, a few new weights and keeps
    the best improvement; it stops when a round improves nothing or the budget is spent.
    """
    rng = np.random.default_rng(seed)
    model = LoadModel(state)
    start = np.clip(np.rint(state.link_arrays["weight"]), low, high).astype(np.int64)
    weights, cost = start.copy(), model.cost(start)
    evaluations, started = 1, time.perf_counter()
    improved = True
    while improved and evaluations < max_evaluations and time.perf_counter() - started < time_limit_s:
        improved = False
        for link in rng.permutation(len(weights)):
            if max_changed is not None and weights[link] == start[link] and np.sum(weights != start) >= max_changed:
                continue
            tries = {int(v) for v in rng.integers(low, high + 1, 4)} | {weights[link] - 1, weights[link] + 1, high}
            for value in sorted(t for t in tries if low <= t <= high and t != weights[link]):
                trial = weights.copy()
                trial[link] = value
                trial_cost = model.cost(trial)
                evaluations += 1
                if trial_cost < cost * (1 - 1e-9):
                    weights, cost, improved = trial, trial_cost, True
            if evaluations >= max_evaluations or time.perf_counter() - started >= time_limit_s:
                break
    return weights
