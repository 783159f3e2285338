"""``ndt predict``: per-path mean delay of a network state from the twin (or a baseline)."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from ndt.options import directory
from ndt.output import print_json, print_table


def register(subparsers) -> None:
    from twin.models.registry import PREDICTORS

    p = subparsers.add_parser(
        "predict",
        help="predict per-path delays of a network state with the twin",
        description=(
            "Predict the mean delay of every path of a network state with RouteNet-E (the weights shipped in "
            "the package by default), the RNN baseline or the queueing-theory (M/M/1/b) baseline, each with its "
            "prediction interval when the state lies in the model's safe operating range ('ndt intervals'). "
            "RouteNet-F (routenet_f: a state per port queue, for SP/WFQ/DRR ports and QoS classes) and qt also "
            "give each path's jitter (delay variance, s²; the table shows its square root), loss, and the 99th "
            "percentile of delay they imply ('ndt tails')."
        ),
    )
    p.add_argument("--state", type=Path, required=True, metavar="FILE", help="network state JSON (see docs/state.md)")
    p.add_argument("--model", choices=PREDICTORS, default=PREDICTORS[-1],
                   help=f"which model (default: {PREDICTORS[-1]}; sim runs the packet simulator)")
    p.add_argument("--weights", type=directory, metavar="DIR",
                   help="directory holding MODEL.weights.h5 and MODEL.json (default: the shipped twin/models)")
    p.add_argument("--json", action="store_true", help="print JSON (the command contract) instead of a table")
    p.set_defaults(handler=run)


def load_model(name: str, weights: Path | None = None):
    """A model with ``predict_delays``: a baseline, or a learned twin from ``weights`` (default: shipped)."""
    from twin.models.registry import get_predictor

    return get_predictor(name, weights)


def run(args: argparse.Namespace) -> int:
    from twin.models.intervals import judge, load_intervals
    from twin.models.tails import with_p99
    from twin.state.model import NetworkState

    state = NetworkState.load(args.state)
    model = load_model(args.model, args.weights)
    intervals = None if args.model == "sim" else load_intervals(args.model, args.weights)
    started = time.perf_counter()
    metrics = model.predict_metrics([state])[0] if hasattr(model, "predict_metrics") else {
        "delay": model.predict_delays([state])[0]}
    infer_s = time.perf_counter() - started
    judged = judge(state, metrics["delay"], intervals)
    paths = judged.path_rows(state)
    metrics = with_p99(state, metrics)
    for head in ("jitter", "loss", "p99"):  # models with those heads (qt, routenet_f): per path, s², share, s
        if head in metrics:
            for row, value in zip(paths, metrics[head]):
                row[head] = float(value)
    if args.json:
        print_json({"model": args.model, "paths": paths, "in_safe_range": judged.in_safe_range,
                    "out_of_range_reasons": judged.reasons if judged.in_safe_range is False else [],
                    "nominal_coverage": None if intervals is None else intervals.nominal,
                    "infer_s": round(infer_s, 6)})
        return 0
    print(f"{state.name or args.state}: {len(paths)} paths predicted by {args.model} in {1e3 * infer_s:.1f} ms")
    if judged.in_safe_range is False:
        print("outside the twin's safe operating range, so no intervals: " + "; ".join(judged.reasons))
    elif judged.in_safe_range:
        print(f"intervals: {intervals.nominal:.0%} nominal (split-conformal, docs/analysis.md)")
    columns = [("src", "src", ""), ("dst", "dst", ""), ("delay_ms", "delay ms", ".3f"), ("lo_ms", "low ms", ".3f"),
               ("hi_ms", "high ms", ".3f")]
    if "jitter" in metrics:
        columns += [("jitter_ms", "jitter (sd) ms", ".3f"), ("p99_ms", "p99 ms", ".3f"), ("loss_pct", "loss %", ".2f")]
    print_table([dict(p, delay_ms=1e3 * p["delay"], lo_ms=_ms(p["delay_lo"]), hi_ms=_ms(p["delay_hi"]),
                      jitter_ms=_ms(p["jitter"] ** 0.5) if "jitter" in p else None, p99_ms=_ms(p.get("p99")),
                      loss_pct=100 * p["loss"] if "loss" in p else None) for p in paths], columns)
    return 0


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else 1e3 * seconds
