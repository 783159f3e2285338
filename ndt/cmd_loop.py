"""``ndt loop``: the closed loop in live emulation (telemetry → twin + NES → sandbox validation → push)."""

from __future__ import annotations

import argparse
from pathlib import Path

from ndt.options import number, port, seed
from ndt.output import print_json
from twin.state.errors import NdtError


class OptionError(NdtError, ValueError):
    """An option of ndt loop, demo or calibrate is out of range; the message names the option."""


def add_loop_arguments(p, load: float, duration: float, validate_s: float, verify_s: float) -> None:
    """The options of ``ndt loop``; ``load``, ``duration``, ``validate_s`` and ``verify_s`` are their defaults."""
    window = number(3, 86400, open_low=True, unit=" s (2 s of warm-up are not counted)")
    p.add_argument("--topology", default="sndlib/abilene",
                   help="topohub key, state file, or line:N / ring:N / grid:N / powerlaw:N (default: sndlib/abilene)")
    p.add_argument("--load", type=number(0, 2, open_low=True, open_high=True), default=load,
                   help=f"busiest-link load under shortest paths (default: {load})")
    p.add_argument("--duration", type=window, default=duration, metavar="S",
                   help=f"live traffic per measurement, s (default: {duration:g})")
    p.add_argument("--validate-s", type=window, default=validate_s, metavar="S",
                   help=f"sandbox traffic per candidate, s (default: {validate_s:g})")
    p.add_argument("--verify-s", type=window, default=verify_s, metavar="S",
                   help=f"live traffic measured after the decision (push, rollback or keep); the twin-vs-emulation "
                        f"MAPE is taken on it, and the longer it is the less noise is in that figure "
                        f"(default: {verify_s:g})")
    p.add_argument("--candidates", type=number(1, 100, integer=True), default=2, help="routings validated besides the current one (default: 2)")
    p.add_argument("--model", default=None, help="twin model (default: the newest in twin.models.registry)")
    p.add_argument("--calibration", type=Path, default=None, metavar="FILE",
                   help="correction from 'ndt calibrate' (default: the model's data/calibration-<model>.json, else "
                        "the one shipped as twin/calibration/shipped/calibration-<model>.json)")
    p.add_argument("--metrics-port", type=port(), default=9108, help="the live controller's Prometheus port (default: 9108)")
    p.add_argument("--out", type=Path, default=None, metavar="DIR", help="report directory (default: data/loop)")
    p.add_argument("--no-prometheus", action="store_true",
                   help="do not run a Prometheus server (Debian prometheus) scraping the live controller")
    p.add_argument("--shift", action="append", default=[], metavar="NODE:FACTOR",
                   help="after the first iteration, multiply the traffic towards NODE by FACTOR and run the loop "
                        "again (repeatable, cumulative; e.g. --shift KSCYng:2)")
    p.add_argument("--fail", action="append", default=[], metavar="NODE,NODE",
                   help="after the shifts, take this link down in the live network and run the loop again "
                        "(repeatable; e.g. --fail KSCYng,IPLSng)")
    p.add_argument("--seed", type=seed, default=0)
    p.add_argument("--json", action="store_true", help="print the report as JSON")


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "loop",
        help="the closed loop on a live Mininet network: measure, optimize, validate, push, verify; needs root",
        description=(
            "Bring the topology up in Mininet with the ndt controller and play its traffic; read the traffic matrix "
            "from the controller's telemetry; search OSPF weights with NES scored by the twin (calibrated to the "
            "emulation); validate the best routings and the current one in a sandbox network; push the winner "
            "with gRPC Apply only if it measured better; measure again and roll back if delay got worse. Writes "
            "report.json and report.png."
        ),
    )
    add_loop_arguments(p, load=0.9, duration=10.0, validate_s=8.0, verify_s=30.0)
    p.set_defaults(handler=run)


def execute(args: argparse.Namespace, log) -> dict:
    """Run the loop from parsed options; returns the report."""
    from controller.loop.closed_loop import LoopSettings
    from controller.loop.emulated import DEFAULT_OUT, run_loop
    from mininet_topos.topologies import EMU_PACKET, emulation_state
    from twin.calibration.correction import calibrated_twin
    from twin.models.registry import PREDICTORS
    from twin.state.traffic import shift_traffic

    twin = calibrated_twin(args.model or PREDICTORS[-1], args.calibration, args.topology, log)
    state = emulation_state(args.topology, args.load, seed=args.seed)
    shifts, traffic = [], state
    for spec in args.shift:
        node, _, factor = spec.rpartition(":")
        try:
            value = float(factor)
        except ValueError:
            raise OptionError(f"--shift {spec!r}: expected NODE:FACTOR such as KSCYng:2") from None
        traffic = shift_traffic(traffic, node, value)
        shifts.append(traffic)
    failures = []
    for spec in args.fail:
        pair = tuple(spec.split(","))
        if len(pair) != 2 or (pair[0], pair[1]) not in state.link_index:
            raise OptionError(f"--fail {spec!r}: expected NODE,NODE naming a link of {args.topology}")
        failures.append(pair)
    settings = LoopSettings(duration=args.duration, validate_s=args.validate_s, verify_s=args.verify_s,
                            candidates=args.candidates, seed=args.seed, packet_size=EMU_PACKET)
    report = run_loop(state, twin.predictor, twin.correction, settings, args.out or DEFAULT_OUT,
                      args.metrics_port, log, shifts=tuple(shifts), failures=tuple(failures),
                      prometheus=not args.no_prometheus)
    report.update(model=twin.model, twin_tuned_for_topology=twin.tuned,
                  calibration={"file": str(twin.path) if twin.path else None, **twin.info}, load=args.load)
    return report


def run(args: argparse.Namespace) -> int:
    import sys

    report = execute(args, (lambda msg: print(msg, file=sys.stderr)) if args.json else print)
    if args.json:
        print_json(report)
    else:
        print_summary(report)
    return 0


def print_summary(report: dict) -> None:
    m = report["measured"]
    action = "no push (validation showed no gain)"
    if report["pushed"]:
        action = "winner pushed, then ROLLED BACK (measured worse)" if report["rolled_back"] else "winner pushed"
    print(f"{report['topology']} at load {report['load']}: measured mean delay {1e3 * m['before']:.3f} ms -> "
          f"{1e3 * m['after']:.3f} ms ({100 * report['improvement']:.1f} % lower); {action}")
    print(f"loop (telemetry -> flow rules): {report['loop_s']:.1f} s; twin ({report['model']}, calibrated) vs "
          f"emulation MAPE {report['twin_vs_emulation_mape']:.3f} knowing OVS's port walk, "
          f"{report['twin_vs_emulation_mape_walk_unknown']:.3f} not knowing it (a perfect model: "
          f"{report['measurement_noise_mape']:.3f} against a measurement this long)")
    for it in report["iterations"][1:]:
        what = "pushed" if it["pushed"] else ("kept the routing" if it["reoptimized"] else "traffic unchanged")
        print(f"iteration {it['iteration']} ({it['event']}): {1e3 * it['before']:.3f} ms -> "
              f"{1e3 * it['after']:.3f} ms, {what}{', rolled back' if it['rolled_back'] else ''}")
    print(f"report: {report['report_json']} and {report['report_png']}; telemetry store: {report['store']}")
    prom = report.get("prometheus")
    if prom:
        print(f"Prometheus recorded {prom['measured_delay_series']} measured path-delay series and "
              f"{prom['routing_changes']} routing changes; browse them: {prom['browse']} -> {prom['browse_url']}")
    else:
        print(f"controller metrics (while it ran): {report['metrics_url']}")
