"""``ndt predict``: per-path mean delay of a network state from the twin (or a baseline)."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from ndt.output import print_json, print_table


def register(subparsers) -> None:
    from twin.models.registry import PREDICTORS

    p = subparsers.add_parser(
        "predict",
        help="predict per-path delays of a network state with the twin",
        description=(
            "Predict the mean delay of every path of a network state with RouteNet-E (the weights shipped in "
            "the package by default), the RNN baseline or the queueing-theory (M/M/1/b) baseline."
        ),
    )
    p.add_argument("--state", type=Path, required=True, metavar="FILE", help="network state JSON (see docs/state.md)")
    p.add_argument("--model", choices=PREDICTORS, default=PREDICTORS[-1],
                   help=f"which model (default: {PREDICTORS[-1]}; sim runs the packet simulator)")
    p.add_argument("--weights", type=Path, metavar="DIR",
                   help="directory holding MODEL.weights.h5 and MODEL.json (default: the shipped twin/models)")
    p.add_argument("--json", action="store_true", help="print JSON (the command contract) instead of a table")
    p.set_defaults(handler=run)


def load_model(name: str, weights: Path | None = None):
    """A model with ``predict_delays``: a baseline, or a learned twin from ``weights`` (default: shipped)."""
    from twin.models.registry import get_predictor

    return get_predictor(name, weights)


def run(args: argparse.Namespace) -> int:
    from twin.state.model import NetworkState

    state = NetworkState.load(args.state)
    model = load_model(args.model, args.weights)
    started = time.perf_counter()
    delays = model.predict_delays([state])[0]
    infer_s = time.perf_counter() - started
    paths = [{"src": f.src, "dst": f.dst, "delay": float(d)} for f, d in zip(state.flows, delays)]
    if args.json:
        print_json({"model": args.model, "paths": paths, "infer_s": round(infer_s, 6)})
        return 0
    print(f"{state.name or args.state}: {len(paths)} paths predicted by {args.model} in {1e3 * infer_s:.1f} ms")
    print_table([dict(p, delay_ms=1e3 * p["delay"]) for p in paths],
                [("src", "src", ""), ("dst", "dst", ""), ("delay_ms", "delay ms", ".3f")])
    return 0
