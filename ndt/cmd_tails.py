"""``ndt tails``: fit the correction of the tail-delay form on simulated samples, and check it."""

from __future__ import annotations

import argparse
import itertools
from pathlib import Path

from ndt.options import number, output_file, picture_path
from ndt.output import print_json, print_table


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "tails", help="fit or check the correction that turns a predicted mean and jitter into p90 / p99",
        description=(
            "A path's 90th and 99th delay percentiles are read from its predicted mean and jitter (variance) as "
            "the propagation plus a gamma distribution. 'fit' learns, from simulated samples, a factor on the "
            "gamma's part above the propagation as a function of its shape (mean² / variance), per percentile, "
            "and writes it where every model's tail predictions read it (default: the shipped file). 'check' "
            "scores the plain and the corrected form against the simulated percentiles of other samples, given "
            "their simulated mean and variance: the form's own error, whatever model predicts the moments."),
    )
    sub = p.add_subparsers(dest="tails_command", metavar="ACTION", required=True)
    fit = sub.add_parser("fit", help="fit the correction on simulated samples",
                         description="Fit the correction on simulated samples ('ndt dataset generate').")
    fit.add_argument("--data", type=Path, required=True, metavar="DIR", action="append",
                     help="dataset directory; repeat to pool several")
    fit.add_argument("--out", type=output_file, metavar="FILE",
                     help="where to write it (default: the shipped twin/models/weights/tails.json)")
    fit.add_argument("--plot", type=picture_path, metavar="PNG", help="also draw the factor against the shape")
    fit.add_argument("--json", action="store_true", help="print JSON")
    fit.set_defaults(handler=run_fit)
    check = sub.add_parser("check", help="score the form on other samples",
                           description="Score the plain and the corrected form on samples not used to fit it.")
    source = check.add_mutually_exclusive_group(required=True)
    source.add_argument("--data", type=Path, metavar="DIR", action="append", help="dataset directory; repeatable")
    source.add_argument("--datanet", type=Path, metavar="DIR",
                        help="a BNN-UPC datanet directory (another simulator; it records the 90th percentile)")
    check.add_argument("--limit", type=number(1, integer=True), metavar="N", help="at most N samples per directory")
    check.add_argument("--correction", type=Path, metavar="FILE",
                       help="the correction to check (default: the shipped one)")
    check.add_argument("--json", action="store_true", help="print JSON")
    check.set_defaults(handler=run_check)


def _labelled(args: argparse.Namespace):
    """(state, labels) of every sample the arguments name, with a progress bar."""
    from tqdm import tqdm

    if getattr(args, "datanet", None):
        from twin.data.datanet_reader import read_datanet

        samples = itertools.islice(read_datanet(args.datanet), args.limit)
        yield from ((s.state, {"delay": s.delay, "jitter": s.jitter, "loss": s.loss, "p90": s.p90})
                    for s in tqdm(samples, unit="sample", desc=f"reading {args.datanet}", leave=False))
        return
    from twin.data.dataset import iter_samples

    for directory in args.data:
        samples = itertools.islice(iter_samples(directory), getattr(args, "limit", None))
        yield from ((s.state, s.labels)
                    for s in tqdm(samples, unit="sample", desc=f"reading {directory}", leave=False))


def run_fit(args: argparse.Namespace) -> int:
    from twin.models.tails import TAILS_PATH, fit_tail_correction, tail_errors

    samples = list(_labelled(args))
    correction = fit_tail_correction(samples, fitted_on={"data": [str(d) for d in args.data],
                                                         "samples": len(samples)})
    path = correction.save(args.out or TAILS_PATH)
    errors = tail_errors(samples, correction)
    if args.plot:
        _plot(correction, args.plot)
    if args.json:
        print_json({**correction.to_dict(), "path": str(path), "in_sample": errors,
                    "plot": str(args.plot) if args.plot else None})
        return 0
    fitted = ", ".join(f"{c} paths ({t.paths:,})" for c, t in correction.tables.items())
    print(f"{path}: tail correction from {len(samples)} samples: {fitted}")
    if "lossy" not in correction.tables:
        print(f"lossy paths (losing at least {correction.lossy_from:.1%} of packets): too few to fit, left uncorrected")
    _print_errors(errors, "on the samples it was fitted on")
    return 0


def run_check(args: argparse.Namespace) -> int:
    from twin.models.tails import TailError, read_tail_correction, shipped_correction, tail_errors

    correction = read_tail_correction(args.correction) if args.correction else shipped_correction()
    if correction is None:
        raise TailError("no shipped tail correction: run 'ndt tails fit' first, or give --correction FILE")
    samples = list(_labelled(args))
    errors = tail_errors(samples, correction)
    if not errors:
        raise TailError(f"no usable paths to check the correction on ({len(samples)} samples: none has a finite "
                        "delay percentile above its propagation)")
    report = {"data": [str(d) for d in args.data] if args.data else str(args.datanet), "samples": len(samples),
              **errors}
    if args.json:
        print_json(report)
        return 0
    _print_errors(errors, f"on {len(samples)} samples")
    return 0


def _print_errors(errors: dict, where: str) -> None:
    for name, row in errors.items():
        print(f"{name}, {where}, from the simulated mean and variance: gamma form {100 * row['gamma_mape']:.2f} % "
              f"off, corrected {100 * row['corrected_mape']:.2f} % ({row['paths']} paths)")
        print_table([dict(b, gamma_bias=100 * b["gamma_bias"], corrected_bias=100 * b["corrected_bias"])
                     for b in row["by_shape"]],
                    [("class", "paths", ""), ("shape", "shape k", ""), ("paths", "count", "d"),
                     ("gamma_bias", "gamma mean error %", "+.2f"), ("corrected_bias", "corrected %", "+.2f")])


def _plot(correction, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    for path_class, table in correction.tables.items():
        for name, values in table.log_factor.items():
            style = "-" if path_class == "lossless" else "--"
            ax.plot(np.exp(table.log_shape), np.exp(values), marker=".", linestyle=style,
                    label=f"{name}, {path_class} paths ({table.paths:,})")
    ax.axhline(1.0, color="grey", linewidth=0.8)
    ax.set_xscale("log")
    ax.set_xlabel("gamma shape k = mean² / variance above the propagation")
    ax.set_ylabel("factor on the gamma's quantile\nabove the propagation")
    ax.legend(fontsize="small", loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=2)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
