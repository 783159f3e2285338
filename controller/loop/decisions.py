"""The closed loop's decisions, pure functions of what was measured and predicted: whether the
traffic moved enough to re-optimize, which candidate routings to validate, which one wins, and
whether a push is rolled back. Delays in s, rates in bit/s."""

from __future__ import annotations

import numpy as np

from optimizer.intent import Intent
from optimizer.objective import predicted
from optimizer.search import Optimization, optimize, undo_idle_changes
from twin.models.registry import get_predictor
from twin.state.metrics import mean_delay
from twin.state.model import NetworkState


def traffic_shifted(old: dict, new: dict, threshold: float = 0.15) -> bool:
    """True when the traffic matrix moved: Σ|new − old| over pairs > ``threshold`` × Σ old (bit/s)."""
    pairs = set(old) | set(new)
    moved = sum(abs(new.get(p, 0.0) - old.get(p, 0.0)) for p in pairs)
    return moved > threshold * max(sum(old.values()), 1e-12)


def should_reoptimize(last_rates: dict | None, rates: dict) -> bool:
    """Re-optimize on the first iteration, after a topology change (``last_rates`` None) and when
    the traffic matrix moved (:func:`traffic_shifted`)."""
    return last_rates is None or traffic_shifted(last_rates, rates)


def choose(means: list[float], margin: float) -> int:
    """Index of the routing to run: the measured best of ``means`` (index 0 = the current routing)
    if it beats the current one by more than ``margin`` (relative), else 0."""
    best = int(np.nanargmin(means))
    return best if best != 0 and means[best] < (1.0 - margin) * means[0] else 0


def should_roll_back(before: float, after: float, tolerance: float) -> bool:
    """True when the mean delay measured after a push is worse than before by more than ``tolerance``."""
    return after > (1.0 + tolerance) * before


class _Recorder:
    """A predictor that remembers every candidate's weights and mean predicted delay."""

    def __init__(self, predictor):
        self.predictor = predictor
        self.seen: dict[tuple, float] = {}

    @property
    def heads(self) -> tuple[str, ...]:
        return getattr(self.predictor, "heads", ("delay",))

    def predict_delays(self, states):
        delays = self.predictor.predict_delays(states)
        for s, d in zip(states, delays):
            self.seen[tuple(s.link_arrays["weight"])] = mean_delay(s, d)
        return delays

    def predict_metrics(self, states):
        """Per state, per flow: delay and the further heads of the predictor (an intent that bounds jitter or
        loss asks for them)."""
        metrics = predicted(self.predictor, states)
        for s, m in zip(states, metrics):
            self.seen[tuple(s.link_arrays["weight"])] = mean_delay(s, m["delay"])
        return metrics


def top_candidates(state: NetworkState, intent: Intent, predictor, k: int,
                   seed: int = 0) -> tuple[list[np.ndarray], Optimization]:
    """Up to ``k`` weight vectors from one NES run, best predicted first, each routing the flows
    differently from the current weights and from each other; plus the optimizer's result."""
    recorder = _Recorder(predictor)
    result = optimize(state, intent, recorder, seed=seed, allow_infeasible=True, screen=get_predictor("qt"))
    keys = {state.routing_key}
    out = []
    for weights, _ in sorted(recorder.seen.items(), key=lambda item: item[1]):
        routed = state.with_weights(np.array(weights))
        key = routed.routing_key
        if key not in keys:
            keys.add(key)
            out.append(undo_idle_changes(state, state.link_arrays["weight"], np.array(weights)))
        if len(out) == k:
            break
    return out, result
