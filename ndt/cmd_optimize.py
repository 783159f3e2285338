"""``ndt optimize``: search OSPF weights for a declared intent, scored by the twin."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ndt.options import output_file, seed
from ndt.output import print_json, print_table


def register(subparsers) -> None:
    from twin.models.registry import PREDICTORS

    p = subparsers.add_parser(
        "optimize",
        help="find OSPF weights that meet an intent",
        description=(
            "Search OSPF link weights with separable Natural Evolution Strategies, starting from the state's "
            "current weights; every generation of candidate routings is scored by the model in one batched "
            "call. By default the queueing-theory model screens first: its own NES (fast) finds a region, and the "
            "twin's search starts there when the twin rates it better than the current weights (--screen none: "
            "the twin alone). The intent (YAML, see examples/) declares the objective and the constraints. With "
            "--verify the packet-level simulator measures the initial and the chosen routing."
        ),
    )
    p.add_argument("--state", type=Path, required=True, metavar="FILE", help="network state JSON")
    p.add_argument("--intent", type=Path, required=True, metavar="FILE", help="intent YAML (examples/*.yaml)")
    p.add_argument("--model", choices=PREDICTORS, default=PREDICTORS[-1],
                   help=f"delay model scoring the candidates (default: {PREDICTORS[-1]})")
    p.add_argument("--screen", choices=("qt", "none"), default="qt",
                   help="cheap model whose NES runs first to find a starting region (default: qt; "
                        "ignored when --model is qt)")
    p.add_argument("--seed", type=seed, default=0, help="search seed (default: 0)")
    p.add_argument("--verify", action="store_true", help="also simulate the initial and the chosen routing")
    p.add_argument("--allow-infeasible", action="store_true",
                   help="when no routing meets the constraints, return the least violating one")
    p.add_argument("--out", type=output_file, metavar="FILE", help="write the state with the chosen weights here")
    p.add_argument("--json", action="store_true", help="print JSON (the command contract)")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    import numpy as np
    from tqdm import tqdm

    from optimizer.intent import load_intent
    from optimizer.search import InfeasibleIntent, optimize
    from twin.models.registry import SimulatorPredictor, get_predictor
    from twin.state.metrics import mean_delay
    from twin.state.model import NetworkState

    state = NetworkState.load(args.state)
    intent = load_intent(args.intent)
    predictor = get_predictor(args.model)
    screen = get_predictor(args.screen) if args.screen != "none" and args.screen != args.model else None
    bar = tqdm(total=intent.max_evaluations, unit="candidate", desc="optimize", file=sys.stderr, leave=False)

    def on_generation(generation, evaluations, best):
        bar.n = evaluations
        bar.set_postfix(best=f"{best[1]:.4g}" + (" (infeasible)" if best[0] > 0 else ""))
        bar.refresh()

    try:
        result = optimize(state, intent, predictor, seed=args.seed, on_generation=on_generation,
                          allow_infeasible=args.allow_infeasible, screen=screen)
    except InfeasibleIntent:
        bar.close()
        raise
    bar.close()
    final = state.with_weights(result.weights)
    report = {
        "weights": [{"src": l.src, "dst": l.dst, "weight": int(w)} for l, w in zip(state.links, result.weights)],
        "changed_links": result.changed_links,
        "feasible": result.after.feasible,
        "objective": intent.objective,
        "predicted": {
            "before": {"objective": result.before.objective, "violation": result.before.violation,
                       "mean_delay": mean_delay(state, result.delays_before),
                       "paths": _paths(state, result.delays_before)},
            "after": {"objective": result.after.objective, "violation": result.after.violation,
                      "mean_delay": mean_delay(final, result.delays_after),
                      "paths": _paths(state, result.delays_after)},
        },
        "max_utilization": {"before": float(state.with_weights(np.rint(state.link_arrays["weight"])).utilization().max()),
                            "after": float(final.utilization().max())},
        "model": args.model,
        "screen": {"model": args.screen if screen is not None else None, "distinct_routings": result.screened,
                   "started_from_screen": result.started_from_screen},
        "evaluations": result.evaluations,
        "distinct_routings": result.predicted,
        "refinement_evaluations": result.refined,
        "generations": result.generations,
        "stopped_by": result.stopped_by,
        "wall_s": round(result.wall_s, 3),
    }
    if args.verify:
        sim = SimulatorPredictor(packets_per_flow=3000, seed=args.seed)
        measured_before, measured_after = sim.predict_delays([state, final])
        report["simulated"] = {
            "before": {"mean_delay": mean_delay(state, measured_before), "paths": _paths(state, measured_before)},
            "after": {"mean_delay": mean_delay(final, measured_after), "paths": _paths(state, measured_after)},
        }
    if args.out:
        final.save(args.out)
    if args.json:
        print_json(report)
        return 0
    _print_summary(report, args)
    return 0


def _paths(state, delays) -> list[dict]:
    return [{"src": f.src, "dst": f.dst, "delay": float(d)} for f, d in zip(state.flows, delays)]


def _print_summary(report: dict, args) -> None:
    before, after = report["predicted"]["before"], report["predicted"]["after"]
    status = "meets the intent" if report["feasible"] else "does NOT meet the intent (least violating shown)"
    screen = report["screen"]
    screened = (f"{screen['model'].upper()} screened {screen['distinct_routings']} routings"
                f"{', the search started from its best' if screen['started_from_screen'] else ''}; "
                if screen["model"] else "")
    print(f"{screened}{report['evaluations']} candidates ({report['distinct_routings']} distinct routings) in "
          f"{report['wall_s']} s (NES: {report['stopped_by']}, then {report['refinement_evaluations']} in refinement); "
          f"the chosen routing {status}")
    rows = [{"what": f"predicted ({args.model})", "before": 1e3 * before["mean_delay"], "after": 1e3 * after["mean_delay"]}]
    if "simulated" in report:
        rows.append({"what": "simulated", "before": 1e3 * report["simulated"]["before"]["mean_delay"],
                     "after": 1e3 * report["simulated"]["after"]["mean_delay"]})
    rows.append({"what": "max link utilization %", "before": 100 * report["max_utilization"]["before"],
                 "after": 100 * report["max_utilization"]["after"]})
    print_table(rows, [("what", "mean delay ms", ""), ("before", "before", ".3f"), ("after", "after", ".3f")])
    if report["changed_links"]:
        count = len(report["changed_links"])
        print(f"\n{count} weight{'s' if count != 1 else ''} changed:")
        print_table(report["changed_links"], [("src", "src", ""), ("dst", "dst", ""), ("old", "old", ".0f"),
                                              ("new", "new", "d")])
    else:
        print("\nno weight changed: the current routing is the best found")
    if args.out:
        print(f"state with the new weights written to {args.out}")
