"""Optimizing OSPF weights for an intent with NES, any predictor scoring the candidates.

Optionally a cheap model screens first (multi-fidelity search): NES over the cheap model's scores
finds a region, and the twin's own search starts from there when the twin rates it better than the
current weights. docs/optimizer.md measures why: the analytical model's landscape leads NES to
better basins than the twin's, and the twin then refines what the analytical model cannot see.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from optimizer.intent import Intent, IntentError
from optimizer.local import descend
from optimizer.nes import better, snes
from optimizer.objective import Score, predicted, score
from twin.state.errors import NdtError
from twin.state.model import NetworkState


class InfeasibleIntent(NdtError):
    """No routing found satisfies the intent's constraints."""

    def __init__(self, message: str, result: "Optimization"):
        super().__init__(message)
        self.result = result


@dataclass
class Optimization:
    """The chosen weights and what the predictor expects of them."""

    state: NetworkState  # the initial state
    weights: np.ndarray  # one per link, in link order
    before: Score
    after: Score
    delays_before: np.ndarray  # predicted, s per flow
    delays_after: np.ndarray
    evaluations: int  # candidates scored (NES + refinement), repeats of a routing included
    predicted: int  # distinct routings the predictor was asked about
    refined: int  # of the evaluations, those of the steepest descent after NES
    generations: int
    stopped_by: str
    wall_s: float
    screened: int = 0  # distinct routings the screening model was asked about (0: no screening)
    started_from_screen: bool = False  # the twin's search started from the screening model's best

    @property
    def changed_links(self) -> list[dict]:
        current = self.state.link_arrays["weight"]
        return [{"src": link.src, "dst": link.dst, "old": float(current[i]), "new": int(self.weights[i])}
                for i, link in enumerate(self.state.links) if self.weights[i] != current[i]]


def limit_changes(start: np.ndarray, max_changed: int | None, rng: np.random.Generator):
    """A repair that keeps at most ``max_changed`` entries different from ``start`` (the largest moves)."""
    if max_changed is None:
        return None

    def repair(candidate: np.ndarray) -> np.ndarray:
        moved = np.flatnonzero(candidate != start)
        if len(moved) <= max_changed:
            return candidate
        size = np.abs(candidate[moved] - start[moved]) + rng.random(len(moved))  # random tie-break
        keep = moved[np.argsort(-size)[:max_changed]]
        out = start.copy()
        out[keep] = candidate[keep]
        return out

    return repair


def undo_idle_changes(state: NetworkState, current: np.ndarray, chosen: np.ndarray) -> np.ndarray:
    """``chosen`` with every changed weight that does not alter the routing set back to ``current``.

    Searches leave such changes behind (a link no path uses, a tie that breaks the same way); each
    would still be pushed to the switches for nothing. Tried one link at a time, in link order.
    """
    target = state.with_weights(chosen).routing_key
    out = chosen.astype(np.result_type(chosen, current))
    for link in np.flatnonzero(out != current):
        trial = out.copy()
        trial[link] = current[link]
        if state.with_weights(trial).routing_key == target:
            out = trial
    return out


def check_heads(predictor, intent: Intent) -> None:
    """Refuse a model that cannot predict what the intent bounds (jitter, loss; a p99 bound needs the jitter)."""
    missing = [head for head in intent.heads if head not in getattr(predictor, "heads", ("delay",))]
    if "jitter" in missing:
        bounds = intent.delay_bounds
        missing[missing.index("jitter"):missing.index("jitter") + 1] = (
            ["jitter"] * any(b.max_jitter is not None for b in bounds)
            + ["the 99th percentile (from the jitter)"] * any(b.max_p99 is not None for b in bounds))
    if missing:
        raise IntentError(f"the intent bounds {' and '.join(missing)}, which the model "
                          f"({getattr(predictor, 'name', 'given')}) does not predict; use one that does: routenet_f, "
                          "qt or sim")


class RoutingScores:
    """Scores candidate weight vectors in one batched predictor call, each distinct routing once.

    Weight vectors that give every flow the same path share a score: NES samples many of them."""

    def __init__(self, state: NetworkState, intent: Intent, predictor):
        self.state, self.intent, self.predictor = state, intent, predictor
        self.known: dict[tuple, Score] = {}

    def __call__(self, candidates: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        states = [self.state.with_weights(w) for w in candidates]
        new = {}
        for s in states:
            if s.routing_key not in self.known:
                new.setdefault(s.routing_key, s)
        if new:
            for (key, s), metrics in zip(new.items(), predicted(self.predictor, list(new.values()), bool(self.intent.heads))):
                self.known[key] = score(s, self.intent, metrics["delay"], metrics)
        scores = [self.known[s.routing_key] for s in states]
        return np.array([s.violation for s in scores]), np.array([s.objective for s in scores])


NES_SHARE = 0.7  # of the budget; steepest descent from NES's best gets the rest (at least 30 % of the routings)
SCREEN_SHARE = 0.3  # of the time limit, at most, for the screening model's search


def _nes_then_descent(score_batch: RoutingScores, start: np.ndarray, intent: Intent, time_limit_s: float, seed: int,
                      population: int | None, repair, on_generation=None):
    """(best weights, the NES result, routings the descent scored): NES from ``start`` on ``NES_SHARE``
    of the budget and of ``time_limit_s`` (s), then steepest descent from its best on the rest."""
    started = time.perf_counter()
    low, high = intent.weight_bounds
    result = snes(score_batch, start, low, high, max_evaluations=max(1, int(NES_SHARE * intent.max_evaluations)),
                  time_limit_s=NES_SHARE * time_limit_s, seed=seed, population=population,
                  repair=repair, on_generation=on_generation)
    best, _, refined = descend(score_batch, result.best, result.best_rank_key, low, high,
                               max_evaluations=intent.max_evaluations, deadline=started + time_limit_s,
                               repair=repair, spent=lambda: len(score_batch.known), seed=seed)
    return best, result, refined


def _better_of(score_batch: RoutingScores, incumbent: np.ndarray, challenger: np.ndarray) -> np.ndarray:
    """``challenger`` if ``score_batch`` ranks it strictly better than ``incumbent``, else ``incumbent``."""
    violation, objective = score_batch(np.stack([incumbent, challenger]))
    return challenger if better((violation[1], objective[1]), (violation[0], objective[0])) else incumbent


def optimize(state: NetworkState, intent: Intent, predictor, seed: int = 0, population: int | None = None,
             on_generation=None, allow_infeasible: bool = False, screen=None) -> Optimization:
    """Search OSPF weights with separable NES, then refine its best by steepest descent over
    single-weight moves; every generation or step is scored in one batched predictor call.

    ``screen``: a cheap predictor (e.g. QT) whose own search (NES, then descent) runs first, on as
    many candidates as the intent allows the predictor and at most ``SCREEN_SHARE`` of the time. The
    predictor's search starts from the better, by the predictor, of the current weights and the
    screen's NES answer (a descended local optimum leaves NES less room), and the screen's final
    answer stays in the running: the predictor never returns a routing it rates below it.
    Constraints (at most k changed weights) always count from the current weights. Raises
    :class:`InfeasibleIntent` when no feasible routing was found, unless ``allow_infeasible`` (then
    the least-violating one is returned).
    """
    intent.check_against(state)
    check_heads(predictor, intent)
    if screen is not None:
        check_heads(screen, intent)
    low, high = intent.weight_bounds
    current = np.clip(np.rint(state.link_arrays["weight"]), low, high).astype(np.int64)
    started = time.perf_counter()
    score_batch = RoutingScores(state, intent, predictor)
    repair = limit_changes(current, intent.max_changed_weights, np.random.default_rng(seed))
    start, screened, from_screen, screen_answer = current, 0, False, None
    if screen is not None:
        screen_scores = RoutingScores(state, intent, screen)
        screen_answer, screen_nes, _ = _nes_then_descent(screen_scores, current, intent,
                                                         SCREEN_SHARE * intent.time_limit_s, seed, population, repair)
        screened = len(screen_scores.known)
        start = _better_of(score_batch, current, screen_nes.best)
        from_screen = start is screen_nes.best
    remaining_s = intent.time_limit_s - (time.perf_counter() - started)
    best, result, refined = _nes_then_descent(score_batch, start, intent, remaining_s, seed, population, repair,
                                              on_generation)
    if screen_answer is not None:
        best = _better_of(score_batch, best, screen_answer)
    best = undo_idle_changes(state, current, best)
    initial, final = state.with_weights(current), state.with_weights(best)
    metrics_before, metrics_after = predicted(predictor, [initial, final], bool(intent.heads))
    delays_before, delays_after = metrics_before["delay"], metrics_after["delay"]
    outcome = Optimization(
        state=state, weights=best, before=score(initial, intent, delays_before, metrics_before),
        after=score(final, intent, delays_after, metrics_after), delays_before=delays_before, delays_after=delays_after,
        evaluations=result.evaluations + refined, predicted=len(score_batch.known), refined=refined,
        generations=result.generations, stopped_by=result.stopped_by,
        wall_s=time.perf_counter() - started, screened=screened, started_from_screen=from_screen,
    )
    if not outcome.after.feasible and not allow_infeasible:
        raise InfeasibleIntent(
            f"no routing found that meets the intent after {outcome.evaluations} candidates "
            f"(least violation {outcome.after.violation:.3g}); rerun with --allow-infeasible to see it", outcome)
    return outcome
