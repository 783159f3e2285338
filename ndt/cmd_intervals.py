"""``ndt intervals``: fit the twin's prediction intervals on held-out samples, and check their coverage."""

from __future__ import annotations

import argparse
from pathlib import Path

from ndt.options import directory, number, output_file
from ndt.output import print_json, print_table


def register(subparsers) -> None:
    from twin.models.registry import PREDICTORS

    p = subparsers.add_parser(
        "intervals", help="fit or check the twin's prediction intervals and safe operating range",
        description=(
            "Prediction intervals are split-conformal: on held-out simulator samples (a dataset the model never "
            "trained on), the quantiles of simulated/predicted delay per load bucket. 'fit' writes them beside the "
            "model's weights with the safe operating range those samples span; 'check' measures on other held-out "
            "samples the share of simulated delays inside the intervals, by load bucket and topology size."),
    )
    sub = p.add_subparsers(dest="intervals_command", metavar="ACTION", required=True)
    models = [m for m in PREDICTORS if m != "sim"]
    for name, text in (("fit", "fit intervals on a held-out dataset"), ("check", "measure their coverage")):
        action = sub.add_parser(name, help=text, description=text[0].upper() + text[1:] + ".")
        action.add_argument("--data", type=Path, required=True, metavar="DIR", action="append",
                            help="held-out dataset ('ndt dataset generate' with a seed not used for training); "
                                 "repeat to pool several")
        action.add_argument("--model", choices=models, default="routenet", help="which model (default: routenet)")
        action.add_argument("--weights", type=directory, metavar="DIR",
                            help="directory of the model's weights and of its intervals (default: the shipped ones)")
        action.add_argument("--json", action="store_true", help="print JSON")
        action.set_defaults(handler=run_fit if name == "fit" else run_check)
    fit = sub.choices["fit"]
    fit.add_argument("--nominal", type=number(0.5, 0.999), default=0.9,
                     help="nominal coverage of the intervals (default: 0.9)")
    fit.add_argument("--out", type=output_file, metavar="FILE",
                     help="where to write them (default: MODEL.intervals.json beside the weights)")


def _samples(directories: list[Path]) -> list:
    from tqdm import tqdm

    from twin.data.dataset import iter_samples

    return [sample for directory in directories
            for sample in tqdm(iter_samples(directory), unit="sample", desc=f"reading {directory}", leave=False)]


def run_fit(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from twin.models.intervals import bucket_labels, fit_intervals, intervals_path
    from twin.models.registry import get_predictor

    samples = _samples(args.data)
    predictor = get_predictor(args.model, args.weights)
    intervals = fit_intervals(tqdm(samples, unit="sample", desc="predicting"), predictor, args.model,
                              nominal=args.nominal, fitted_on={"data": [str(d) for d in args.data]})
    path = intervals.save(args.out or intervals_path(args.model, args.weights))
    if args.json:
        print_json(dict(intervals.to_dict(), path=str(path)))
        return 0
    print(f"{path}: {args.model} intervals at {intervals.nominal:.0%} nominal from {sum(intervals.paths)} paths "
          f"of {len(samples)} samples")
    rows = [{"load": label, "paths": n, "lo": lo, "hi": hi}
            for label, n, lo, hi in zip(bucket_labels(), intervals.paths, intervals.ratio_lo, intervals.ratio_hi)]
    print_table(rows, [("load", "path load", ""), ("paths", "paths", "d"), ("lo", "lower x", ".4f"),
                       ("hi", "upper x", ".4f")])
    safe = intervals.safe
    print(f"safe operating range: {safe.nodes[0]}-{safe.nodes[1]} nodes, busiest link <= {safe.max_utilization:.2f}, "
          f"buffers {safe.buffer[0]}-{safe.buffer[1]} packets, paths <= {safe.hops} hops, "
          f"traffic {'/'.join(safe.time_dists)}, sizes {'/'.join(safe.size_dists)}")
    return 0


def run_check(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from twin.models.intervals import IntervalError, coverage, intervals_path, load_intervals
    from twin.models.registry import get_predictor

    intervals = load_intervals(args.model, args.weights)
    if intervals is None:
        raise IntervalError(f"no intervals at {intervals_path(args.model, args.weights)}: run 'ndt intervals fit' first")
    samples = _samples(args.data)
    report = coverage(tqdm(samples, unit="sample", desc="predicting"), get_predictor(args.model, args.weights),
                      intervals)
    report["data"] = [str(d) for d in args.data]
    if args.json:
        print_json(report)
        return 0
    print(f"{args.model}: {report['coverage']:.1%} of {report['paths']} simulated delays inside the "
          f"{report['nominal']:.0%} intervals ({report['samples']} samples; {report['outside_safe_range']} outside "
          "the safe range, not counted)")
    for key, title in (("by_load", "path load"), ("by_size", "nodes")):
        print_table(report[key], [("bucket", title, ""), ("paths", "paths", "d"), ("coverage", "inside", ".3f"),
                                  ("median_relative_width", "median width x", ".4f")])
    return 0
