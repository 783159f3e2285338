"""Batched steepest descent over single-weight moves: the refinement after NES.

NES finds the region; the last few percent often sit in one or two weight changes that a
Gaussian sample rarely hits exactly (most of its samples move many weights at once). Each step
scores every single-link move of the incumbent (one lower, one higher, the bounds) in one
batched call and keeps the best if it improves; it stops at a local optimum or on the budget.
"""

from __future__ import annotations

import time
from typing import Callable

import numpy as np

from optimizer.nes import better, feasible_first


def neighbours(weights: np.ndarray, low: int, high: int) -> np.ndarray:
    """Every vector that differs from ``weights`` in one entry, set to w−1, w+1, ``low`` or ``high``."""
    moves = []
    for link, w in enumerate(weights):
        for value in sorted({w - 1, w + 1, low, high}):
            if low <= value <= high and value != w:
                candidate = weights.copy()
                candidate[link] = value
                moves.append(candidate)
    return np.array(moves, dtype=np.int64).reshape(-1, len(weights))


def descend(score_batch: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]], start: np.ndarray,
            start_key: tuple, low: int, high: int, max_evaluations: int, deadline: float,
            repair: Callable[[np.ndarray], np.ndarray] | None = None, spent: Callable[[], int] | None = None,
            seed: int = 0) -> tuple[np.ndarray, tuple, int]:
    """(best weights, its (violation, objective), candidates scored) after steepest descent from ``start``.

    ``deadline``: a ``time.perf_counter()`` value; ``repair`` as in :func:`optimizer.nes.snes`;
    ``spent()``: how much of ``max_evaluations`` is used (default: the candidates scored here; a
    scorer that answers repeated routings from memory can count only what it had to predict).
    When the budget cannot take a whole neighbourhood, a random part of it is scored.
    """
    rng = np.random.default_rng(seed)
    best, best_key, evaluations = start.copy(), start_key, 0
    spent = spent or (lambda: evaluations)
    while spent() < max_evaluations and time.perf_counter() < deadline:
        moves = neighbours(best, low, high)
        if repair is not None:
            moves = np.unique(np.stack([repair(m) for m in moves]), axis=0)
            moves = moves[np.any(moves != best, axis=1)]
        if len(moves) > max_evaluations - spent():
            moves = moves[rng.permutation(len(moves))[: max_evaluations - spent()]]
        if len(moves) == 0:
            break
        violation, objective = score_batch(moves)
        evaluations += len(moves)
        order = feasible_first(violation, objective)
        key = (float(violation[order[0]]), float(objective[order[0]]))
        if not better(key, best_key, tolerance=1e-9):
            break
        best, best_key = moves[order[0]].copy(), key
    return best, best_key, evaluations
