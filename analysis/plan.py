"""Capacity planning on the twin: in which month growing traffic outgrows the network, and the cheapest
capacity upgrades that keep it within its limits over a horizon.

Growth is compound: a flow's rate in month ``m`` is ``rate × (1 + g)^m``, ``g`` a fraction per month
(0.02 = 2 %/month). One global ``g``; a per-node ``g`` overrides it for the flows from or to the node
(a flow between two such nodes grows at the larger of their rates); a per-pair ``g`` overrides both.
:func:`fit_growth` fits a global ``g`` to a traffic-total time series by log-linear least squares.

For every month 0..horizon the plan has each link's utilization (offered load / capacity, exact from
the routing, no twin needed) and the intent's violations (:func:`optimizer.objective.violations`;
the delay bounds take the twin's delays, every month predicted in one batch). It reads off the month
each link first exceeds the utilization threshold and the month each constraint is first violated,
twice: under the current weights, and under weights re-optimized by NES for the traffic of the month
the current weights first break (the optimizer may postpone an upgrade). No rate ever shrinks, so
weights that meet the intent in that month meet it in every month before: whenever the optimizer
finds such weights, the first problem moves later.

Upgrades follow a ladder of multiples of a link's current capacity (default ×2, ×4, ×10: one, two or
three steps); both directions of a link move together and every step costs the same. Under a fixed
routing a link's utilization depends on its own capacity only, so the utilization target (every link
at most the threshold, and at most the intent's max_utilization, through the horizon) is met exactly
at least cost by giving each link the lowest rung that suffices. The intent's delay bounds are then
met greedily, not optimally: in the horizon month, the heaviest, the busiest link on a path that
breaks a bound goes up one step; predict again; repeat until no bound is broken or no link on those
paths can grow (at most one round per step of the ladder per link); then every month is checked and
what still breaks is listed. Upgrades are planned under each routing held fixed. ``avoid_links`` asks something of the routing that no capacity can give.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np
from scipy.sparse import csr_matrix

from optimizer.intent import Intent
from optimizer.objective import violations
from optimizer.search import Optimization, optimize
from twin.state.errors import NdtError, shown
from twin.state.metrics import finite_or_none
from twin.state.model import MAX_RATE_BPS, MAX_WEIGHT, NetworkState

SECONDS_PER_MONTH = 365.25 * 86400 / 12  # a mean month
MAX_HORIZON = 240  # months: twenty years
MAX_GROWTH = 1.0  # per month: traffic doubling every month is the most a plan takes
MAX_FACTOR = 1e6  # the most traffic may grow over the horizon; beyond, the plan is a typo, not a forecast
DEFAULT_THRESHOLD = 0.8
DEFAULT_STEPS = (2.0, 4.0, 10.0)  # multiples of the current capacity, one rung per step
MAX_STEPS = 10  # rungs of a ladder


class PlanError(NdtError, ValueError):
    """A plan's input is out of range or names what the state does not have; the message says which."""


@dataclass(frozen=True)
class Growth:
    """Monthly growth as fractions (0.02 = 2 %/month): global, per node (flows from or to it), per pair."""

    rate: float = 0.0
    nodes: tuple[tuple[str, float], ...] = ()
    pairs: tuple[tuple[str, str, float], ...] = ()

    def per_flow(self, state: NetworkState) -> np.ndarray:
        """Each flow's growth per month, in flow order; refuses unknown names and rates out of range."""
        out = np.full(len(state.flows), _growth(self.rate, "growth"))
        by_node: dict[str, float] = {}
        for node, g in self.nodes:
            if node not in state.node_index:
                raise PlanError(f"growth of node {node!r}: not a node of the network")
            if node in by_node:
                raise PlanError(f"growth of node {node!r}: given twice")
            by_node[node] = _growth(g, f"growth of node {node}")
        for i, flow in enumerate(state.flows):
            touching = [by_node[n] for n in (flow.src, flow.dst) if n in by_node]
            if touching:
                out[i] = max(touching)
        position = {(f.src, f.dst): i for i, f in enumerate(state.flows)}
        seen = set()
        for src, dst, g in self.pairs:
            if (src, dst) not in position:
                missing = [n for n in (src, dst) if n not in state.node_index]
                why = (f"{missing[0]!r} is not a node of the network" if missing
                       else "the traffic matrix has no such demand")
                raise PlanError(f"growth of pair {src}->{dst}: {why}")
            if (src, dst) in seen:
                raise PlanError(f"growth of pair {src}->{dst}: given twice")
            seen.add((src, dst))
            out[position[(src, dst)]] = _growth(g, f"growth of pair {src}->{dst}")
        return out

    def to_dict(self) -> dict:
        return {"rate": self.rate, "nodes": [{"node": n, "rate": g} for n, g in self.nodes],
                "pairs": [{"src": a, "dst": b, "rate": g} for a, b, g in self.pairs]}


def _growth(value, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= MAX_GROWTH:
        raise PlanError(f"{where}: a fraction per month from 0 to {MAX_GROWTH:g} (0.02 = 2 %/month), "
                        f"got {shown(value)}")
    return float(value)


@dataclass(frozen=True)
class GrowthFit:
    """A monthly growth rate fitted to a traffic history: ``rate`` per month, over ``points`` snapshots
    spanning ``span_days``; ``r2`` of the fit of log(total) against time."""

    rate: float
    points: int
    span_days: float
    r2: float

    def to_dict(self) -> dict:
        return {"rate": self.rate, "points": self.points, "span_days": self.span_days, "r2": finite_or_none(self.r2)}


def fit_growth(timestamps, totals) -> GrowthFit:
    """The compound monthly growth of ``totals`` (bit/s) over ``timestamps`` (s): the least-squares
    line through (time, log total), its slope turned into a rate per month."""
    t = np.asarray(timestamps, dtype=float).ravel()
    y = np.asarray(totals, dtype=float).ravel()
    if t.shape != y.shape:
        raise PlanError(f"traffic history: {len(t)} timestamps but {len(y)} totals")
    if not (np.isfinite(t).all() and np.isfinite(y).all()) or (y <= 0).any():
        raise PlanError("traffic history: every timestamp must be finite and every total a positive rate (bit/s)")
    if len(np.unique(t)) < 2:
        raise PlanError(f"traffic history: {len(np.unique(t))} distinct snapshot time(s), "
                        "a growth rate needs at least 2")
    months = (t - t.min()) / SECONDS_PER_MONTH
    logs = np.log(y)
    slope, intercept = np.polyfit(months, logs, 1)
    residual = logs - (slope * months + intercept)
    spread = float(np.sum((logs - logs.mean()) ** 2))
    r2 = 1.0 - float(np.sum(residual**2)) / spread if spread > 0 else float("nan")
    return GrowthFit(rate=float(math.expm1(slope)), points=len(t), span_days=float((t.max() - t.min()) / 86400), r2=r2)


def grown(state: NetworkState, per_flow: np.ndarray, month: int) -> NetworkState:
    """``state`` with every flow's rate grown for ``month`` months at its rate in ``per_flow``."""
    return state.with_flows(replace(f, rate=f.rate * (1.0 + float(g)) ** month) for f, g in zip(state.flows, per_flow))


def utilization_by_month(state: NetworkState, per_flow: np.ndarray, horizon: int) -> np.ndarray:
    """(horizon + 1, links): offered load / capacity of each link in months 0..horizon, exact, by the
    routing of ``state``."""
    routes = state.routes
    if not len(routes.owner):
        return np.zeros((horizon + 1, len(state.links)))
    hops = routes.hop_counts
    rows = routes.hop_links
    columns = np.repeat(routes.owner, hops)
    shares = np.repeat(routes.share, hops)
    incidence = csr_matrix((shares, (rows, columns)), shape=(len(state.links), len(state.flows)))
    rates = np.array([f.rate for f in state.flows])
    factors = (1.0 + per_flow)[:, None] ** np.arange(horizon + 1)[None, :]
    loads = incidence @ (rates[:, None] * factors)
    return (loads / state.link_arrays["capacity"][:, None]).T


@dataclass
class Timeline:
    """One routing over months 0..horizon: link utilization and the intent's violations."""

    state: NetworkState  # month 0, with the routing and capacities of this timeline
    utilization: np.ndarray  # (months, links), offered load / capacity
    violations: list[list[dict]]  # per month, rows of optimizer.objective.violations

    def month_over(self, threshold: float) -> list[int | None]:
        """Per link, the first month its utilization exceeds ``threshold`` (None: never in the horizon)."""
        over = self.utilization > threshold
        return [int(np.argmax(over[:, i])) if over[:, i].any() else None for i in range(over.shape[1])]

    def first_violated(self) -> dict[tuple[str, str], int]:
        """(constraint, what) → the first month it is violated, in the order they break."""
        out: dict[tuple[str, str], int] = {}
        for month, found in enumerate(self.violations):
            for row in found:
                out.setdefault((row["constraint"], row["what"]), month)
        return out

    def first_month(self, threshold: float) -> int | None:
        """The first month any link exceeds ``threshold`` or any constraint is violated (None: never)."""
        months = [m for m in self.month_over(threshold) if m is not None] + list(self.first_violated().values())
        return min(months, default=None)


class _NoDelays:
    """Stands in for the twin when nothing asked needs a delay (utilization is exact)."""

    def predict_delays(self, states: list[NetworkState]) -> list[np.ndarray]:
        return [np.zeros(len(s.flows)) for s in states]


def timeline(state: NetworkState, per_flow: np.ndarray, horizon: int, intent: Intent | None, predictor) -> Timeline:
    """Months 0..horizon of ``state`` under growth ``per_flow``; the twin is asked only when the intent
    bounds delays, all months in one batch."""
    utilization = utilization_by_month(state, per_flow, horizon)
    if intent is None:
        return Timeline(state, utilization, [[] for _ in range(horizon + 1)])
    states = [grown(state, per_flow, m) for m in range(horizon + 1)]
    delays = (predictor if intent.delay_bounds else _NoDelays()).predict_delays(states)
    return Timeline(state, utilization, [violations(s, intent, d) for s, d in zip(states, delays)])


@dataclass(frozen=True)
class Upgrade:
    """Link src–dst (both directions) moved up ``steps`` rungs of the ladder, to ``multiple`` × its
    capacity (bit/s); ``month``: the first month it is needed."""

    src: str
    dst: str
    steps: int
    multiple: float
    old_capacity: float
    capacity: float
    reverse_capacity: float | None  # dst->src after the upgrade (None: a one-way link)
    month: int | None

    def to_dict(self) -> dict:
        return {"src": self.src, "dst": self.dst, "capacity": self.capacity, "old_capacity": self.old_capacity,
                "reverse_capacity": self.reverse_capacity, "multiple": self.multiple, "steps": self.steps,
                "month_needed": self.month}


@dataclass
class UpgradePlan:
    """The upgrades, their cost, and the routing's timeline with them."""

    upgrades: list[Upgrade]
    cost: float
    feasible: bool  # every link under the target and the intent met in every month
    upgraded: Timeline
    unmet: list[dict]  # what still breaks with the upgrades: {constraint, what, month}


def _pairs(state: NetworkState) -> dict[tuple[str, str], list[int]]:
    """Each link as the sorted pair of its ends → the indices of its directions."""
    out: dict[tuple[str, str], list[int]] = {}
    for i, link in enumerate(state.links):
        out.setdefault(tuple(sorted((link.src, link.dst))), []).append(i)
    return out


def with_upgrades(state: NetworkState, rungs: dict[tuple[str, str], int], ladder: tuple[float, ...]) -> NetworkState:
    """``state`` with both directions of every link in ``rungs`` at ``ladder[rung - 1]`` × their capacity."""
    if not any(rungs.values()):
        return state
    pairs = _pairs(state)
    links = list(state.links)
    for pair, rung in rungs.items():
        for i in pairs[pair] if rung else ():
            links[i] = replace(links[i], capacity=links[i].capacity * ladder[rung - 1])
    return replace(state, links=tuple(links))


def plan_upgrades(current: Timeline, per_flow: np.ndarray, horizon: int, target: float, intent: Intent | None,
                  predictor, ladder: tuple[float, ...], cost_per_step: float, progress=None) -> UpgradePlan:
    """The upgrades that keep ``current``'s routing within ``target`` utilization and ``intent`` through
    the horizon: exact and least-cost for utilization, greedy for delay bounds (see the module's text).
    ``progress(stage, done, total)`` is called after each greedy round."""
    state = current.state
    pairs = _pairs(state)
    peak = current.utilization.max(axis=0)
    crossing = current.month_over(target)
    rungs: dict[tuple[str, str], int] = {}
    needed: dict[tuple[str, str], int] = {}
    for pair, directions in pairs.items():
        need = max(peak[i] for i in directions) / target
        if need > 1:
            rungs[pair] = next((k + 1 for k, multiple in enumerate(ladder) if multiple >= need), len(ladder))
            needed[pair] = min(crossing[i] for i in directions if crossing[i] is not None)
    if intent is not None and intent.delay_bounds:
        _meet_delay_bounds(current, per_flow, horizon, intent, predictor, ladder, pairs, rungs, needed, progress)
    upgraded = timeline(with_upgrades(state, rungs, ladder), per_flow, horizon, intent, predictor) if rungs else current
    upgrades = []
    for pair, rung in sorted(rungs.items(), key=lambda item: (needed[item[0]], item[0])):
        forward = state.links[pairs[pair][0]]
        reverse = [state.links[i] for i in pairs[pair][1:]]
        upgrades.append(Upgrade(src=forward.src, dst=forward.dst, steps=rung, multiple=ladder[rung - 1],
                                old_capacity=forward.capacity, capacity=forward.capacity * ladder[rung - 1],
                                reverse_capacity=reverse[0].capacity * ladder[rung - 1] if reverse else None,
                                month=needed[pair]))
    unmet = _unmet(upgraded, target, intent)
    return UpgradePlan(upgrades=upgrades, cost=cost_per_step * sum(rungs.values()), feasible=not unmet,
                       upgraded=upgraded, unmet=unmet)


def _meet_delay_bounds(current: Timeline, per_flow, horizon, intent, predictor, ladder, pairs, rungs, needed,
                       progress) -> None:
    """Greedy rounds on the horizon month, the heaviest: while a delay bound that capacity can meet is
    broken, the busiest link not yet at the ladder's top on a path that breaks one goes up a step
    (``rungs`` and ``needed``, the month it is first needed, are updated in place)."""
    state = current.state
    limit = _delay_limits(state, intent)
    floor = _propagation(state)
    label = {f"{f.src}->{f.dst}": i for i, f in enumerate(state.flows)}
    first = {}  # flow → the first month its bound breaks without upgrades
    for (constraint, what), month in current.first_violated().items():
        if constraint.startswith("delay_bounds") and what in label:
            first.setdefault(label[what], month)
    most = len(pairs) * len(ladder)
    routes = state.routes
    for done in range(1, most + 1):
        heaviest = grown(with_upgrades(state, rungs, ladder), per_flow, horizon)
        delays = predictor.predict_delays([heaviest])[0]
        broken = set(np.flatnonzero(~(delays <= limit) & np.isfinite(limit) & (floor < limit)).tolist())
        crossed = {int(l) for owner, hops in zip(routes.owner, routes.links) if owner in broken for l in hops}
        growable = [l for l in crossed if rungs.get(_pair_of(state, l), 0) < len(ladder)]
        if not growable:
            return
        utilization = heaviest.utilization()
        busiest = max(growable, key=lambda l: utilization[l])
        pair = _pair_of(state, busiest)
        rungs[pair] = rungs.get(pair, 0) + 1
        on_it = [int(owner) for owner, hops in zip(routes.owner, routes.links) if owner in broken and busiest in hops]
        needed.setdefault(pair, min(first.get(i, horizon) for i in on_it))
        if progress:
            progress("upgrades for delay bounds", done, most)


def _pair_of(state: NetworkState, link: int) -> tuple[str, str]:
    return tuple(sorted((state.links[link].src, state.links[link].dst)))


def _delay_limits(state: NetworkState, intent: Intent) -> np.ndarray:
    """Per flow, the tightest delay bound of the intent on it (s; inf: none)."""
    position = {(f.src, f.dst): i for i, f in enumerate(state.flows)}
    limit = np.full(len(state.flows), math.inf)
    for bound in intent.delay_bounds:
        for pair in bound.pairs:
            if bound.max_delay is not None:
                limit[position[pair]] = min(limit[position[pair]], bound.max_delay)
    return limit


def _propagation(state: NetworkState) -> np.ndarray:
    """Per flow, the propagation delay of its path (s): what no capacity takes away."""
    routes = state.routes
    prop = state.link_arrays["prop_delay"]
    return routes.per_flow(np.array([prop[hops].sum() for hops in routes.links]), len(state.flows))


def _unmet(upgraded: Timeline, target: float, intent: Intent | None) -> list[dict]:
    """What still breaks with the upgrades, earliest first: {constraint, what, month, reason}."""
    state = upgraded.state
    rows = [{"constraint": "utilization", "what": f"{lk.src}->{lk.dst}", "month": m,
             "reason": "the ladder's top step is not enough"}
            for lk, m in zip(state.links, upgraded.month_over(target)) if m is not None]
    floor = {f"{f.src}->{f.dst}": p for f, p in zip(state.flows, _propagation(state))}
    limit = dict(zip(floor, _delay_limits(state, intent))) if intent is not None else {}
    for (constraint, what), month in upgraded.first_violated().items():
        if constraint == "max_utilization":  # the utilization rows above already name these links
            continue
        if constraint == "avoid_links":
            reason = "a routing constraint: no capacity meets it"
        elif constraint.startswith("delay_bounds") and floor.get(what, 0.0) >= limit.get(what, math.inf):
            reason = f"the path's propagation delay alone is {1e3 * floor[what]:.3g} ms"
        elif constraint.startswith("delay_bounds"):
            reason = "no upgrade on the path was enough (greedy)"
        else:
            reason = "the ladder's top step is not enough"
        rows.append({"constraint": constraint, "what": what, "month": month, "reason": reason})
    return sorted(rows, key=lambda row: row["month"])


def _month_key(month: int | None) -> float:
    return math.inf if month is None else month


@dataclass
class Plan:
    """A capacity plan over months 0..horizon (utilization as load / capacity, costs in the user's unit)."""

    horizon: int
    threshold: float  # per-link utilization threshold of the link table
    target: float  # the utilization the upgrades keep every link under (the threshold or the intent's, if lower)
    growth: Growth
    current: Timeline
    upgrades: UpgradePlan
    reoptimized: Timeline | None = None  # None: nothing to postpone, or no budget
    reoptimized_for: int | None = None  # the month whose traffic the weights were optimized for
    optimization: Optimization | None = None
    upgrades_reoptimized: UpgradePlan | None = None
    beyond_safe_range: dict | None = None  # {month, reason}: from then on the twin extrapolates

    def link_rows(self) -> list[dict]:
        """Per directed link: capacity (bit/s), utilization now and at the horizon, the month over the
        threshold; under the current and the re-optimized weights. The earliest first."""
        state, horizon = self.current.state, self.horizon
        over = self.current.month_over(self.threshold)
        again = self.reoptimized.month_over(self.threshold) if self.reoptimized else [None] * len(state.links)
        rows = []
        for i, link in enumerate(state.links):
            rows.append({"src": link.src, "dst": link.dst, "capacity": link.capacity,
                         "utilization": float(self.current.utilization[0, i]),
                         "utilization_at_horizon": float(self.current.utilization[horizon, i]),
                         "month_over_threshold": over[i],
                         "utilization_at_horizon_reoptimized": (float(self.reoptimized.utilization[horizon, i])
                                                                if self.reoptimized else None),
                         "month_over_threshold_reoptimized": again[i]})
        rows.sort(key=lambda r: (_month_key(r["month_over_threshold"]), -r["utilization_at_horizon"]))
        return rows

    def constraint_rows(self) -> list[dict]:
        """Per intent constraint broken within the horizon: the first month under each routing."""
        now = self.current.first_violated()
        later = self.reoptimized.first_violated() if self.reoptimized else {}
        keys = list(now) + [k for k in later if k not in now]
        rows = [{"constraint": c, "what": w, "month_violated": now.get((c, w)),
                 "month_violated_reoptimized": later.get((c, w))} for c, w in keys]
        return sorted(rows, key=lambda r: (_month_key(r["month_violated"]),
                                           _month_key(r["month_violated_reoptimized"])))

    def to_dict(self) -> dict:
        """The command contract of ``ndt plan --json``."""
        result = self.optimization
        reoptimized = None
        if result is not None:
            reoptimized = {"optimized_for_month": self.reoptimized_for, "changed_links": result.changed_links,
                           "feasible_then": result.after.feasible,
                           "evaluations": result.evaluations, "wall_s": round(result.wall_s, 3),
                           "first_month": self.reoptimized.first_month(self.threshold)}
        out = {"horizon": self.horizon, "threshold": self.threshold, "upgrade_target": self.target,
               "growth": self.growth.to_dict(), "first_month": self.current.first_month(self.threshold),
               "links": self.link_rows(), "constraints": self.constraint_rows(), "reoptimized": reoptimized,
               "upgrades": [u.to_dict() for u in self.upgrades.upgrades], "cost": self.upgrades.cost,
               "feasible_with_upgrades": self.upgrades.feasible, "unmet": self.upgrades.unmet,
               "beyond_safe_range": self.beyond_safe_range}
        again = self.upgrades_reoptimized
        out["upgrades_reoptimized"] = None if again is None else [u.to_dict() for u in again.upgrades]
        out["cost_reoptimized"] = None if again is None else again.cost
        return out


def check_ladder(steps) -> tuple[float, ...]:
    """The ladder of capacity multiples: 1 to ``MAX_STEPS`` increasing numbers, each above 1."""
    steps = tuple(steps)
    if not 1 <= len(steps) <= MAX_STEPS or not all(isinstance(s, (int, float)) and not isinstance(s, bool)
                                                   and math.isfinite(s) for s in steps):
        raise PlanError(f"capacity steps: 1 to {MAX_STEPS} multiples of the current capacity, got {shown(steps)}")
    if steps[0] <= 1 or any(b <= a for a, b in zip(steps, steps[1:])):
        raise PlanError(f"capacity steps: increasing multiples above 1 (such as 2,4,10), got {shown(steps)}")
    return tuple(float(s) for s in steps)


def plan(state: NetworkState, growth: Growth, horizon: int, predictor, intent: Intent | None = None,
         threshold: float | None = None, budget: int = 200, seed: int = 0, steps=DEFAULT_STEPS,
         cost_per_step: float = 1.0, intervals=None, progress=None) -> Plan:
    """The capacity plan of ``state`` under ``growth`` over months 0..``horizon``.

    ``threshold``: per-link utilization (default: the intent's max_utilization, else 0.8). ``budget``:
    candidate routings for the re-optimization (0: none). ``steps``: the ladder of capacity multiples,
    ``cost_per_step`` the price of one rung on one link. ``intervals``: the twin's
    :class:`~twin.models.intervals.Intervals`, to say from which month it extrapolates.
    ``progress(stage, done, total)`` is called as the work goes on."""
    if isinstance(horizon, bool) or not isinstance(horizon, int) or not 1 <= horizon <= MAX_HORIZON:
        raise PlanError(f"horizon: a whole number of months from 1 to {MAX_HORIZON}, got {shown(horizon)}")
    if threshold is None:
        threshold = intent.max_utilization if intent and intent.max_utilization is not None else DEFAULT_THRESHOLD
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not 0 < threshold <= 10:
        raise PlanError(f"threshold: a utilization above 0 and at most 10, got {shown(threshold)}")
    if isinstance(budget, bool) or not isinstance(budget, int) or budget < 0:
        raise PlanError(f"budget: a whole number of candidate routings >= 0, got {shown(budget)}")
    if isinstance(cost_per_step, bool) or not isinstance(cost_per_step, (int, float)) or not cost_per_step > 0:
        raise PlanError(f"cost per step: a positive number, got {shown(cost_per_step)}")
    ladder = check_ladder(steps)
    if intent is not None and intent.heads:
        raise PlanError(f"the intent bounds {' and '.join(intent.heads)}; ndt plan upgrades capacity for utilization "
                        "and delay bounds only (check the others month by month with ndt whatif)")
    if not state.flows:
        raise PlanError("the state carries no traffic: there is nothing to grow")
    if intent is not None:
        intent.check_against(state)
    per_flow = growth.per_flow(state)
    _check_scale(state, per_flow, horizon)
    target = min(threshold, intent.max_utilization) if intent and intent.max_utilization is not None else threshold

    def report(stage: str, done: int, total: int) -> None:
        if progress:
            progress(stage, done, total)

    report("current weights", 0, 1)
    current = timeline(state, per_flow, horizon, intent, predictor)
    report("current weights", 1, 1)
    upgrades = plan_upgrades(current, per_flow, horizon, target, intent, predictor, ladder, cost_per_step, progress)
    out = Plan(horizon=horizon, threshold=float(threshold), target=float(target), growth=growth, current=current,
               upgrades=upgrades,
               beyond_safe_range=_beyond_safe_range(current, intervals) if _asks_delays(intent) else None)
    out.reoptimized_for = current.first_month(threshold)
    if budget and out.reoptimized_for is not None:
        out.optimization = _reoptimize(grown(state, per_flow, out.reoptimized_for), intent, threshold, predictor,
                                       budget, seed, report)
        again = state.with_weights(out.optimization.weights)
        out.reoptimized = timeline(again, per_flow, horizon, intent, predictor)
        out.upgrades_reoptimized = plan_upgrades(out.reoptimized, per_flow, horizon, target, intent, predictor, ladder,
                                                 cost_per_step, progress)
    return out


def _check_scale(state: NetworkState, per_flow: np.ndarray, horizon: int) -> None:
    factor = float((1.0 + per_flow.max()) ** horizon)
    if factor > MAX_FACTOR:
        raise PlanError(f"growth of {per_flow.max():g}/month over {horizon} months multiplies traffic by {factor:.3g}, "
                        f"more than {MAX_FACTOR:g}; shorten the horizon or lower the growth")
    peak = max(f.rate * (1.0 + g) ** horizon for f, g in zip(state.flows, per_flow))
    if peak > MAX_RATE_BPS:
        raise PlanError(f"growth over {horizon} months takes a flow to {peak:.3g} bit/s, more than a state may carry "
                        f"({MAX_RATE_BPS:g}); shorten the horizon or lower the growth")


def _reoptimize(month_state, intent, threshold, predictor, budget, seed, report) -> Optimization:
    """NES over OSPF weights for the traffic of ``month_state``, on ``budget`` candidates; the least
    violating routing when none meets the intent. Without an intent: every link under ``threshold``, the
    busiest as low as can be."""
    heaviest = int(math.ceil(month_state.link_arrays["weight"].max()))
    goal = intent or Intent(objective="max_utilization", max_utilization=threshold,
                            weight_bounds=(1, min(max(20, heaviest), int(MAX_WEIGHT))))
    goal = replace(goal, max_evaluations=budget)
    scorer = predictor if _asks_delays(goal) else _NoDelays()

    def on_generation(_generation, evaluations, _best) -> None:
        report("re-optimizing", evaluations, budget)

    report("re-optimizing", 0, budget)
    result = optimize(month_state, goal, scorer, seed=seed, allow_infeasible=True, on_generation=on_generation)
    report("re-optimizing", budget, budget)
    return result


def _asks_delays(intent: Intent | None) -> bool:
    """Whether meeting or scoring ``intent`` takes the twin's delays (utilization is exact without it)."""
    return intent is not None and (bool(intent.delay_bounds) or intent.objective != "max_utilization")


def _beyond_safe_range(current: Timeline, intervals) -> dict | None:
    """The first month the grown state lies outside the twin's safe operating range and why; None
    when it never does or the twin has no intervals. Growth moves only the utilization."""
    if intervals is None:
        return None
    reasons = intervals.safe.reasons(current.state)
    if reasons:
        return {"month": 0, "reason": reasons[0]}
    busiest = current.utilization.max(axis=1)
    beyond = np.flatnonzero(busiest > intervals.safe.max_utilization)
    if not len(beyond):
        return None
    month = int(beyond[0])
    return {"month": month, "reason": f"the busiest link reaches {busiest[month]:.3f} of its capacity, beyond the "
                                      f"{intervals.safe.max_utilization:.3f} the twin's intervals were checked on"}
