"""Scoring a candidate routing against an intent: an objective value and a constraint violation.

Pure functions of a state and per-path delays (from any model with the twin's
interface), so the same scoring serves NES, the baselines and verification.
Jitter and loss bounds are scored from ``metrics`` (per flow ``jitter``, the
delay variance in s², and ``loss``) where a model predicted them; scoring
without them (measured delays only) leaves those bounds out.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from optimizer.intent import Intent
from twin.models.tails import tail_delays
from twin.state.metrics import mean_delay
from twin.state.model import NetworkState


@dataclass(frozen=True)
class Score:
    """objective: lower is better (s for delays, ratio for utilization); violation: 0 when feasible."""

    objective: float
    violation: float

    @property
    def feasible(self) -> bool:
        return self.violation == 0.0


def predicted(predictor, states: list[NetworkState], heads: bool = True) -> list[dict[str, np.ndarray]]:
    """Per state, per flow: ``delay`` (s) and, with ``heads`` and a model that predicts them (``predict_metrics``),
    ``jitter`` (delay variance, s²) and ``loss`` (share of packets)."""
    if heads and hasattr(predictor, "predict_metrics"):
        return predictor.predict_metrics(states)
    return [{"delay": delays} for delays in predictor.predict_delays(states)]


def bound_values(bound, index: int, delays: np.ndarray, metrics: dict | None):
    """(head, value, limit) of each limit of ``bound`` for flow ``index`` that can be judged: delay (s),
    jitter (standard deviation, s, from the variance in ``metrics``), loss (share of packets), p99 (s, where
    ``metrics`` has it: :func:`with_tail`)."""
    for head, limit in bound.limits():
        if head == "delay":
            yield head, float(delays[index]), limit
        elif metrics is not None and head in metrics:
            value = float(metrics[head][index])
            yield head, (float(np.sqrt(max(value, 0.0))) if head == "jitter" else value), limit


def with_tail(state: NetworkState, intent: Intent, delays: np.ndarray, metrics: dict | None) -> dict | None:
    """``metrics`` with ``p99`` (s, per flow) added when ``intent`` bounds it, the metrics have the jitter and
    no p99 of their own (the simulator's): the 99th percentile of delay that ``delays``, that jitter and the
    loss (where predicted) imply (:mod:`twin.models.tails`)."""
    if metrics is None or "jitter" not in metrics or "p99" in metrics \
            or not any(b.max_p99 is not None for b in intent.delay_bounds):
        return metrics
    return {**metrics, "p99": tail_delays(state, delays, metrics["jitter"], metrics.get("loss"))}


def score(state: NetworkState, intent: Intent, delays: np.ndarray, metrics: dict | None = None) -> Score:
    """The intent's objective and the summed relative violation of its constraints."""
    metrics = with_tail(state, intent, delays, metrics)
    utilization = state.utilization()
    if intent.objective == "mean_delay":
        objective = mean_delay(state, delays)
    elif intent.objective == "delay_percentile":
        objective = float(np.nanpercentile(delays, intent.percentile))
    else:
        objective = float(utilization.max())
    violation = 0.0
    if intent.max_utilization is not None:
        violation += float(np.sum(np.maximum(utilization - intent.max_utilization, 0.0))) / intent.max_utilization
    if intent.delay_bounds:
        position = {(f.src, f.dst): i for i, f in enumerate(state.flows)}
        for bound in intent.delay_bounds:
            for pair in bound.pairs:
                for _, value, limit in bound_values(bound, position[pair], delays, metrics):
                    violation += max(value / limit - 1.0, 0.0) if np.isfinite(value) else 1.0
    if intent.avoid_links:
        loads = state.link_loads()
        total = sum(f.rate for f in state.flows) or 1.0
        violation += sum(loads[state.link_index[link]] for link in intent.avoid_links) / total
    return Score(objective=objective, violation=violation)


def violations(state: NetworkState, intent: Intent, delays: np.ndarray, metrics: dict | None = None) -> list[dict]:
    """Each constraint of ``intent`` the state breaks: ``{constraint, what, value, limit}`` (utilization
    as a ratio, delays in s, jitter as the delay's standard deviation in s (``metrics`` carry its square),
    loss a share of packets, the 99th percentile of delay in s, traffic on an avoided link in bit/s)."""
    metrics = with_tail(state, intent, delays, metrics)
    found = []
    if intent.max_utilization is not None:
        utilization = state.utilization()
        for i in np.flatnonzero(utilization > intent.max_utilization):
            link = state.links[i]
            found.append({"constraint": "max_utilization", "what": f"{link.src}->{link.dst}",
                          "value": float(utilization[i]), "limit": intent.max_utilization})
    position = {(f.src, f.dst): i for i, f in enumerate(state.flows)}
    for bound in intent.delay_bounds:
        for pair in bound.pairs:
            if pair not in position:  # the pair's traffic is gone (a failed node): nothing to bound
                continue
            for head, value, limit in bound_values(bound, position[pair], delays, metrics):
                if not np.isfinite(value) or value > limit:
                    suffix = "" if head == "delay" else f".max_{head}"
                    found.append({"constraint": f"delay_bounds[{bound.name}]{suffix}", "what": f"{pair[0]}->{pair[1]}",
                                  "value": value, "limit": limit})
    if intent.avoid_links:
        loads = state.link_loads()
        for link in intent.avoid_links:
            i = state.link_index.get(link)
            if i is not None and loads[i] > 0:
                found.append({"constraint": "avoid_links", "what": f"{link[0]}->{link[1]}",
                              "value": float(loads[i]), "limit": 0.0})
    return found
