"""``ndt plan``: capacity planning on the twin. When does growing traffic outgrow each link and break the
intent, under the current and under re-optimized weights, and which capacity upgrades keep it met."""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

from ndt.options import number, picture_path, seed
from ndt.output import print_json, print_table


def register(subparsers) -> None:
    from analysis.plan import DEFAULT_STEPS, DEFAULT_THRESHOLD, MAX_GROWTH, MAX_HORIZON
    from twin.models.registry import PREDICTORS

    rate = number(0, MAX_GROWTH, unit=" per month (0.02 = 2 %/month)")

    p = subparsers.add_parser(
        "plan", help="capacity planning: when links and the intent break under traffic growth, and the upgrades",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=(
            "Grow the state's traffic month by month (compound: rate x (1 + g)^month) and report, for months\n"
            "0..--horizon, the month each link first exceeds the utilization threshold and each constraint of the\n"
            "intent is first violated: under the current weights, and under OSPF weights re-optimized by NES for\n"
            "the traffic of the first month something breaks (the optimizer may postpone an upgrade).\n"
            "Utilization is exact; delay bounds are the twin's predictions. Then the cheapest capacity\n"
            "upgrades that keep every link under the threshold (and the intent met) through the horizon:\n"
            "each link (both directions) may go up a ladder of\n"
            "multiples of its capacity (--capacity-steps, default x2, x4, x10: 1, 2 or 3 steps), every step\n"
            "costing --cost-per-step. Utilization alone is met exactly at least cost; delay bounds greedily\n"
            "(the busiest link on a path that breaks one goes up a step, then predict again), not optimally.\n"
            "Growth: --growth for every flow, or fitted to the traffic history of a telemetry store; per node\n"
            "(flows from or to it) and per pair overrides; a flow between two overridden nodes takes the larger.\n\n"
            "examples:\n"
            "  ndt plan --state abilene.json --growth 0.02 --horizon 36\n"
            "  ndt plan --state abilene.json --growth 0.02 --growth-node NYCMng=0.05 --intent examples/delay-sla.yaml\n"
            "  ndt plan --state abilene.json --growth-from-store ndt.db --plot plan.png --json"),
    )
    p.add_argument("--state", type=Path, required=True, metavar="FILE", help="network state JSON (docs/state.md)")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--growth", type=rate, metavar="G",
                        help=f"traffic growth per month as a fraction, 0 to {MAX_GROWTH:g} (0.02 = 2 %%/month)")
    source.add_argument("--growth-from-store", type=Path, metavar="DB",
                        help="fit the monthly growth to the traffic history in this telemetry store "
                             "(log-linear least squares on the total of each traffic-matrix snapshot)")
    p.add_argument("--growth-node", type=_node_growth(rate), action="append", default=[], metavar="NODE=G",
                   help="growth per month of the flows from or to NODE, instead of the global one (repeatable)")
    p.add_argument("--growth-pair", type=_pair_growth(rate), action="append", default=[], metavar="A,B=G",
                   help="growth per month of the flow A->B, instead of any other (repeatable)")
    p.add_argument("--horizon", type=number(1, MAX_HORIZON, integer=True), default=36, metavar="MONTHS",
                   help=f"months ahead, 1 to {MAX_HORIZON} (default: 36)")
    p.add_argument("--threshold", type=number(0, 10, open_low=True), metavar="U",
                   help=f"per-link utilization threshold (default: the intent's max_utilization, else "
                        f"{DEFAULT_THRESHOLD:g})")
    p.add_argument("--intent", type=Path, metavar="FILE", help="intent YAML whose constraints are planned for")
    p.add_argument("--model", choices=[m for m in PREDICTORS if m != "sim"], default=PREDICTORS[-1],
                   help=f"twin model for the delays (default: {PREDICTORS[-1]})")
    p.add_argument("--weights-dir", type=Path, metavar="DIR", help="model weights and intervals (default: shipped)")
    p.add_argument("--budget", type=number(0, 100000, integer=True), default=200, metavar="N",
                   help="candidate routings for the re-optimization, 0 for none (default: 200; the intent's "
                        "time_limit_s also applies)")
    p.add_argument("--seed", type=seed, default=0, help="seed of the re-optimization (default: 0)")
    p.add_argument("--capacity-steps", type=_steps, default=DEFAULT_STEPS, metavar="M1,M2,...",
                   help="the upgrade ladder: increasing multiples of a link's current capacity, one step each "
                        f"(default: {','.join(f'{m:g}' for m in DEFAULT_STEPS)})")
    p.add_argument("--cost-per-step", type=number(0, 1e15, open_low=True), default=1.0, metavar="C",
                   help="cost of one step on one link, both directions (default: 1)")
    p.add_argument("--plot", type=picture_path, metavar="FILE.png", help="write the timeline picture here")
    p.add_argument("--top", type=number(1, 10**6, integer=True), default=10,
                   help="rows shown per table (default: 10; --json has all)")
    p.add_argument("--json", action="store_true", help="print JSON (the command contract)")
    p.set_defaults(handler=run)


def _node_growth(rate):
    """An argparse type: NODE=G, G parsed by ``rate``."""

    def parse(text: str) -> tuple[str, float]:
        node, sep, value = text.rpartition("=")
        if not sep or not node:
            raise argparse.ArgumentTypeError(f"{text[:60]!r}: expected NODE=GROWTH such as NYCMng=0.05")
        return node, rate(value)

    return parse


def _pair_growth(rate):
    """An argparse type: A,B=G, G parsed by ``rate``."""

    def parse(text: str) -> tuple[str, str, float]:
        pair, sep, value = text.rpartition("=")
        ends = pair.split(",")
        if not sep or len(ends) != 2 or not all(ends):
            raise argparse.ArgumentTypeError(f"{text[:60]!r}: expected A,B=GROWTH such as NYCMng,LOSAng=0.05")
        return ends[0], ends[1], rate(value)

    return parse


def _steps(text: str) -> tuple[float, ...]:
    parse = number(1, 1e6, open_low=True)
    return tuple(parse(part) for part in text.split(","))


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from analysis.plan import Growth, check_ladder, plan
    from optimizer.intent import load_intent
    from twin.models.intervals import load_intervals
    from twin.models.registry import get_predictor
    from twin.state.model import NetworkState

    started = time.perf_counter()
    state = NetworkState.load(args.state)
    intent = load_intent(args.intent) if args.intent else None
    ladder = check_ladder(args.capacity_steps)
    fitted = _fit_store(args.growth_from_store, state) if args.growth_from_store else None
    growth = Growth(rate=fitted.rate if fitted else args.growth, nodes=tuple(args.growth_node),
                    pairs=tuple(args.growth_pair))
    predictor = get_predictor(args.model, args.weights_dir)
    intervals = load_intervals(args.model, args.weights_dir)
    bars: dict = {}

    def progress(stage: str, done: int, total: int) -> None:
        """One bar per stage, each opened when its stage starts (none before the input is checked)."""
        if stage not in bars:
            for bar in bars.values():
                bar.close()
            bars[stage] = tqdm(total=total, desc=stage, file=sys.stderr, leave=False, disable=None)
        bars[stage].n = done
        bars[stage].refresh()

    try:
        result = plan(state, growth, args.horizon, predictor, intent=intent, threshold=args.threshold,
                      budget=args.budget, seed=args.seed, steps=ladder, cost_per_step=args.cost_per_step,
                      intervals=intervals, progress=progress)
    finally:
        for bar in bars.values():
            bar.close()
    report = result.to_dict()
    report["growth"]["fitted"] = fitted.to_dict() if fitted else None
    report["model"] = args.model
    report["plot"] = None
    if args.plot:
        from analysis.plan_picture import timeline_picture

        report["plot"] = str(timeline_picture(result, args.plot))
    report["elapsed_s"] = round(time.perf_counter() - started, 3)
    if args.json:
        print_json(report)
        return 0
    _print_summary(report, state, args)
    return 0


def _fit_store(path: Path, state):
    """The monthly growth fitted to the traffic totals in the telemetry store at ``path`` (opened read-only),
    after checking that its last traffic matrix is between ``state``'s nodes."""
    from analysis.plan import PlanError, fit_growth
    from analysis.replay import open_store

    store = open_store(path)
    try:
        rows = store.traffic_totals(0.0, math.inf)
        last = store.traffic_matrices(rows[-1][0], math.inf) if rows else []
    finally:
        store.close()
    strangers = sorted({node for row in last for node in (row.src, row.dst)} - set(state.nodes))
    if strangers:
        raise PlanError(f"--growth-from-store {path}: its traffic is between nodes the state does not have "
                        f"({', '.join(map(repr, strangers[:3]))}{', …' if len(strangers) > 3 else ''}); "
                        "is it the store of another network?")
    if len(rows) < 2:
        raise PlanError(f"--growth-from-store {path}: {len(rows)} traffic-matrix snapshot(s), a growth rate needs "
                        "at least 2 at different times")
    fitted = fit_growth([ts for ts, _ in rows], [total for _, total in rows])
    if fitted.rate <= 1e-6:  # flat within rounding: nothing to plan for
        raise PlanError(f"--growth-from-store {path}: the traffic does not grow ({100 * fitted.rate:.2g} %/month over "
                        f"{fitted.points} snapshots in {fitted.span_days:.1f} days); give --growth to plan for growth")
    return fitted


def _print_summary(report: dict, state, args) -> None:
    growth, horizon = report["growth"], report["horizon"]
    fitted = growth["fitted"]
    source = (f", fitted to {fitted['points']} snapshots over {fitted['span_days']:.1f} days" if fitted else "")
    print(f"{state.name or args.state}: growth {100 * growth['rate']:.3g} %/month{source} over {horizon} months, "
          f"threshold {report['threshold']:g} (model {args.model}, {report['elapsed_s']:.1f} s)")
    print(f"first problem under the current weights: {_month(report['first_month'])}")
    again = report["reoptimized"]
    if again is not None:
        met = "meets" if again["feasible_then"] else "does not meet"
        print(f"weights re-optimized for the traffic of month {again['optimized_for_month']} "
              f"({len(again['changed_links'])} changed, {again['evaluations']} candidates; {met} the "
              f"{'intent' if args.intent else 'threshold'} then): first problem {_month(again['first_month'])}")
    if report["beyond_safe_range"]:
        beyond = report["beyond_safe_range"]
        print(f"from month {beyond['month']} the twin's delays are extrapolated: {beyond['reason']}")
    crossing = [r for r in report["links"]
                if r["month_over_threshold"] is not None or r["month_over_threshold_reoptimized"] is not None]
    print(f"\nlinks over the threshold within the horizon, under either weights: {len(crossing)} of "
          f"{len(report['links'])}")
    if crossing:
        print_table(crossing[:args.top], [("src", "src", ""), ("dst", "dst", ""), ("utilization", "now", ".2f"),
                                          ("utilization_at_horizon", f"month {horizon}", ".2f"),
                                          ("month_over_threshold", "over in month", "d"),
                                          ("month_over_threshold_reoptimized", "re-optimized", "d"),
                                          ("utilization_at_horizon_reoptimized", f"re-opt. month {horizon}", ".2f")])
    if report["constraints"]:
        print(f"\nintent constraints violated within the horizon: {len(report['constraints'])}")
        print_table(report["constraints"][:args.top],
                    [("constraint", "constraint", ""), ("what", "what", ""), ("month_violated", "month", "d"),
                     ("month_violated_reoptimized", "re-optimized", "d")])
    upgrades = report["upgrades"]
    print(f"\nupgrades under the current weights: {len(upgrades)} links, cost {report['cost']:g}")
    if upgrades:
        print_table([dict(u, old=u["old_capacity"] / 1e6, new=u["capacity"] / 1e6) for u in upgrades[:args.top]],
                    [("src", "src", ""), ("dst", "dst", ""), ("old", "Mbit/s now", ".6g"), ("new", "then", ".6g"),
                     ("steps", "steps", "d"), ("month_needed", "by month", "d")])
    if report["feasible_with_upgrades"]:
        print(f"with them every link stays under {report['upgrade_target']:g}"
              + (" and the intent holds" if args.intent else "") + f" through month {horizon}")
    else:
        print("still broken with them:")
        print_table(report["unmet"][:args.top], [("constraint", "constraint", ""), ("what", "what", ""),
                                                 ("month", "month", "d"), ("reason", "why", "")])
    if report["cost_reoptimized"] is not None:
        print(f"under the re-optimized weights the upgrades would cost {report['cost_reoptimized']:g}")
    if args.plot:
        print(f"picture: {report['plot']}")


def _month(month: int | None) -> str:
    return "none within the horizon" if month is None else f"month {month}"
