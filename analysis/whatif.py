"""What-if and N-1 failure analysis: the twin's answer to "what happens to my network if …".

:func:`what_if` compares a state before and after one scenario: per-path delay with its
prediction interval, per-link utilization, and the intent's violations on each side.
:func:`n_minus_1` sweeps every single link failure (both directions at once) and every node
failure, predicts all of them in batches and ranks them by impact: demands cut off, intent
violations, the busiest link's utilization, the mean delay's increase.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from analysis.scenario import Scenario, apply, apply_failure
from optimizer.intent import Intent
from optimizer.objective import predicted, violations
from optimizer.search import check_heads
from twin.models.intervals import Intervals, JudgedPrediction, judge
from twin.models.tails import with_p99
from twin.state.metrics import finite_or_none, mean_delay
from twin.state.model import NetworkState

BATCH_STATES = 16  # failure cases predicted per twin call


@dataclass
class Outcome:
    """One side of a what-if: the state, its predicted delays (s) with intervals, and what breaks."""

    state: NetworkState
    judged: JudgedPrediction
    violations: list[dict]
    metrics: dict  # per flow: delay (s) and, where the model predicts them, jitter (s²) and loss

    @property
    def utilization(self) -> np.ndarray:
        return self.state.utilization()

    @property
    def mean_delay(self) -> float:
        return mean_delay(self.state, self.judged.delay) if self.state.flows else float("nan")

    def summary(self) -> dict:
        utilization = self.utilization
        return {"mean_delay": finite_or_none(self.mean_delay),
                "max_utilization": float(utilization.max()) if len(utilization) else 0.0,
                "violations": self.violations, "in_safe_range": self.judged.in_safe_range,
                "out_of_range_reasons": self.judged.reasons if self.judged.in_safe_range is False else []}


def outcome(state: NetworkState, metrics: dict, intervals: Intervals | None, intent: Intent | None) -> Outcome:
    """``metrics`` (per flow delay s, and jitter s², loss where predicted) judged and checked against ``intent``."""
    delays = metrics["delay"]
    return Outcome(state, judge(state, delays, intervals),
                   violations(state, intent, delays, metrics) if intent else [], metrics)


def what_if(state: NetworkState, scenario: Scenario, predictor, intervals: Intervals | None = None,
            intent: Intent | None = None, groups: dict | None = None) -> dict:
    """The report of one scenario: ``before``/``after`` summaries, ``paths`` and ``links`` rows, ``lost``
    demands (with a failed node). Delays in s, utilization as load / capacity."""
    if intent is not None:
        check_heads(predictor, intent)
    after_state, lost = apply(state, scenario, groups)
    if after_state.flows:
        metrics_before, metrics_after = predicted(predictor, [state, after_state])
    else:  # every demand left with the failed nodes: nothing to predict after
        metrics_before = predicted(predictor, [state])[0]
        metrics_after = {head: np.zeros(0) for head in metrics_before}
    before = outcome(state, metrics_before, intervals, intent)
    after = outcome(after_state, metrics_after, intervals, intent)
    return {"scenario": scenario.describe(), "before": before.summary(), "after": after.summary(),
            "lost": [{"src": a, "dst": b} for a, b in lost],
            "paths": path_rows(before, after), "links": link_rows(before, after)}


def path_rows(before: Outcome, after: Outcome) -> list[dict]:
    """Per demand still carried after: delay before and after (s), the interval after (None outside the
    safe range), and where the model predicts them jitter (s²), loss (share) and the 99th percentile of
    delay they imply (s, :mod:`twin.models.tails`)."""
    old = {(f.src, f.dst): float(d) for f, d in zip(before.state.flows, before.judged.delay)}
    metrics = with_p99(after.state, after.metrics)
    rows = []
    for i, row in enumerate(after.judged.path_rows(after.state)):
        extra = {head: float(metrics[head][i]) for head in ("jitter", "loss", "p99") if head in metrics}
        rows.append(dict(row, delay_before=old.get((row["src"], row["dst"])), **extra))
    return rows


def link_rows(before: Outcome, after: Outcome) -> list[dict]:
    """Per link of the state before: utilization before and after (None once failed)."""
    now = dict(zip(((lk.src, lk.dst) for lk in after.state.links), after.utilization))
    return [{"src": lk.src, "dst": lk.dst, "utilization_before": float(u),
             "utilization_after": None if (lk.src, lk.dst) not in now else float(now[(lk.src, lk.dst)])}
            for lk, u in zip(before.state.links, before.utilization)]


@dataclass
class FailureCase:
    """One single failure of the sweep and what it does (delays in s)."""

    failed: str  # "a-b" for a link (both directions), "node a"
    kind: str  # link | node
    elements: tuple  # (a, b) or (a,)
    cut: list = field(default_factory=list)  # demands between working nodes left with no path
    lost: list = field(default_factory=list)  # demands of a failed node
    max_utilization: float = 0.0
    mean_delay: float = float("nan")
    mean_delay_increase: float = float("nan")
    violations: list = field(default_factory=list)
    in_safe_range: bool | None = None
    link_utilization: dict = field(default_factory=dict)  # (src, dst) -> utilization after the failure

    def to_dict(self) -> dict:
        return {"failed": self.failed, "kind": self.kind, "cut": [{"src": a, "dst": b} for a, b in self.cut],
                "lost": len(self.lost), "max_utilization": self.max_utilization,
                "mean_delay": finite_or_none(self.mean_delay),
                "mean_delay_increase": finite_or_none(self.mean_delay_increase),
                "violations": self.violations, "in_safe_range": self.in_safe_range}

    def impact(self) -> tuple:
        """Sort key, worst first: demands cut off, violations, busiest link, mean delay increase."""
        increase = self.mean_delay_increase if np.isfinite(self.mean_delay_increase) else 0.0
        return (-len(self.cut), -len(self.violations), -self.max_utilization, -increase)


def single_failures(state: NetworkState, nodes: bool = True) -> list[Scenario]:
    """Every link failure (one per pair of directions) and, with ``nodes``, every node failure."""
    seen, out = set(), []
    for link in state.links:
        pair = tuple(sorted((link.src, link.dst)))
        if pair not in seen:
            seen.add(pair)
            out.append(Scenario(failed_links=(pair,)))
    if nodes:
        out += [Scenario(failed_nodes=(n,)) for n in state.nodes]
    return out


def n_minus_1(state: NetworkState, predictor, intervals: Intervals | None = None, intent: Intent | None = None,
              nodes: bool = True, progress=None) -> dict:
    """Every single failure of ``state`` ranked by impact, worst first; ``progress(n)`` is called as cases
    are done. Returns ``base`` (the intact network's summary), ``cases`` and ``elapsed_s``."""
    started = time.perf_counter()
    if intent is not None:
        check_heads(predictor, intent)
    heads = bool(intent and intent.heads)
    base = outcome(state, predicted(predictor, [state], heads)[0], intervals, intent)
    scenarios = single_failures(state, nodes)
    cases = []
    for start in range(0, len(scenarios), BATCH_STATES):
        chunk = scenarios[start:start + BATCH_STATES]
        applied = [apply_failure(state, s) for s in chunk]
        carried = [i for i, (after, _, _) in enumerate(applied) if after.flows]
        answers = dict(zip(carried, predicted(predictor, [applied[i][0] for i in carried], heads)))
        for i, (scenario, (after, lost, cut)) in enumerate(zip(chunk, applied)):
            cases.append(_case(scenario, after, lost, cut, answers.get(i), base, intervals, intent))
        if progress:
            progress(len(chunk))
    cases.sort(key=FailureCase.impact)
    return {"base": base.summary(), "cases": cases, "elapsed_s": time.perf_counter() - started}


def _case(scenario, after, lost, cut, metrics, base: Outcome, intervals, intent) -> FailureCase:
    if scenario.failed_links:
        a, b = scenario.failed_links[0]
        case = FailureCase(failed=f"{a}-{b}", kind="link", elements=(a, b), lost=lost, cut=cut)
    else:
        node = scenario.failed_nodes[0]
        case = FailureCase(failed=f"node {node}", kind="node", elements=(node,), lost=lost, cut=cut)
    utilization = after.utilization()
    case.max_utilization = float(utilization.max()) if len(utilization) else 0.0
    case.link_utilization = dict(zip(((lk.src, lk.dst) for lk in after.links), utilization.tolist()))
    if metrics is None:
        return case
    result = outcome(after, metrics, intervals, intent)
    case.mean_delay = result.mean_delay
    case.violations = result.violations
    case.in_safe_range = result.judged.in_safe_range
    # the increase over the same demands: those a failure takes away do not count on either side
    rates = base.state.flow_columns["rate"]
    if len(after.flows) < len(base.state.flows):  # the same nodes: a pair's key is the same on both sides
        before_pairs, after_pairs = base.state.flow_columns, after.flow_columns
        key = len(after.nodes) * before_pairs["src"] + before_pairs["dst"]
        rates = rates * np.isin(key, len(after.nodes) * after_pairs["src"] + after_pairs["dst"])
    ok = np.isfinite(base.judged.delay) & (rates > 0)
    if ok.any():
        case.mean_delay_increase = case.mean_delay - float(np.sum(rates[ok] * base.judged.delay[ok]) / rates[ok].sum())
    return case
