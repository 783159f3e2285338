"""Separable Natural Evolution Strategies over integer vectors (Wierstra et al., JMLR 2014, §5.2).

A Gaussian search distribution N(μ, diag σ²) over real vectors; each sample is
rounded and clipped to an integer candidate, optionally repaired (e.g. to change
at most k entries), and the whole generation is scored in one batched call. The
update follows the natural gradient with rank-based fitness shaping; a repaired
candidate updates the distribution through the sample it became.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np


@dataclass
class NESResult:
    best: np.ndarray
    best_rank_key: tuple
    evaluations: int
    generations: int
    stopped_by: str  # "budget", "time", "stagnation" or "converged"
    history: list = field(default_factory=list)  # best (violation, objective) after each generation


def default_population(dimension: int) -> int:
    return 4 + int(3 * math.log(dimension))


def snes(
    score_batch: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]],
    start: np.ndarray,
    low: int,
    high: int,
    max_evaluations: int = 3000,
    time_limit_s: float = 60.0,
    seed: int = 0,
    population: int | None = None,
    sigma0: float | None = None,
    patience: int = 25,
    repair: Callable[[np.ndarray], np.ndarray] | None = None,
    on_generation: Callable[[int, int, tuple], None] | None = None,
) -> NESResult:
    """Minimise over integer vectors in [low, high]^d, starting around ``start``.

    ``score_batch(candidates)`` takes an (n, d) int array and returns
    (violation, objective) arrays; lower is better, and any feasible candidate
    (violation 0) beats every infeasible one. ``start`` is scored first, so the
    result is never worse than it.
    """
    rng = np.random.default_rng(seed)
    started = time.perf_counter()
    dimension = len(start)
    size = population or default_population(dimension)
    utilities = _utilities(size)
    eta_mu, eta_sigma = 1.0, (3 + math.log(dimension)) / (5 * math.sqrt(dimension))
    mu = start.astype(float)
    sigma = np.full(dimension, sigma0 if sigma0 is not None else max(1.0, 0.25 * (high - low)))

    violation, objective = score_batch(start[None, :].astype(np.int64))
    best, best_key = start.astype(np.int64), (float(violation[0]), float(objective[0]))
    evaluations, generation, stale = 1, 0, 0
    history = [best_key]
    stopped_by = "budget"
    while True:
        if evaluations + size > max_evaluations:
            stopped_by = "budget"
            break
        if time.perf_counter() - started > time_limit_s:
            stopped_by = "time"
            break
        z = rng.standard_normal((size, dimension))
        candidates = np.clip(np.rint(mu + sigma * z), low, high).astype(np.int64)
        if repair is not None:
            candidates = np.stack([repair(c) for c in candidates])
        z = np.clip((candidates - mu) / sigma, -4.0, 4.0)  # the samples the candidates really are (bounded)
        violation, objective = score_batch(candidates)
        evaluations += size
        generation += 1
        order = feasible_first(violation, objective)
        top = order[0]
        key = (float(violation[top]), float(objective[top]))
        if better(key, best_key):
            best, best_key, stale = candidates[top].copy(), key, 0
        else:
            stale += 1
        history.append(best_key)
        if on_generation is not None:
            on_generation(generation, evaluations, best_key)
        shaped = np.empty(size)
        shaped[order] = utilities
        mu = mu + eta_mu * sigma * (shaped @ z)
        sigma = sigma * np.exp(0.5 * eta_sigma * (shaped @ (z**2 - 1)))
        sigma = np.clip(sigma, 0.05, float(high - low))
        if stale >= patience:
            stopped_by = "stagnation"
            break
        if np.all(sigma < 0.15):
            stopped_by = "converged"
            break
    return NESResult(best=best, best_rank_key=best_key, evaluations=evaluations, generations=generation,
                     stopped_by=stopped_by, history=history)


def _utilities(size: int) -> np.ndarray:
    """Rank-based fitness shaping: positive weights for the better half, summing to zero."""
    ranks = np.arange(1, size + 1)
    raw = np.maximum(0.0, math.log(size / 2 + 1) - np.log(ranks))
    return raw / raw.sum() - 1.0 / size


def feasible_first(violation: np.ndarray, objective: np.ndarray) -> np.ndarray:
    """Indices from best to worst: feasible candidates (violation 0) by objective, then the
    infeasible ones by violation."""
    return np.lexsort((np.where(violation > 0, violation, objective), violation > 0))


def better(a: tuple, b: tuple, tolerance: float = 0.0) -> bool:
    """Whether (violation, objective) ``a`` ranks above ``b``: feasible first, then the lower violation
    or objective, by more than ``tolerance`` (relative) when both sit on the same side."""
    if (a[0] > 0) != (b[0] > 0):
        return b[0] > 0
    key_a, key_b = (a[0], b[0]) if a[0] > 0 else (a[1], b[1])
    return key_a < key_b * (1 - tolerance)
