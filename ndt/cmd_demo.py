"""``ndt demo``: the README's main job, the deployment as it would run in production, on Abilene
in live emulation (about 7 minutes, root).

SNDlib Abilene with its demand matrix, scaled so the busiest link runs at 90 % under shortest
paths, in Mininet; ``ndt controller --intent`` runs as its own process with its closed loop; the
hosts play steady traffic, then a traffic shift, then a link fails. Prints what the loop did in a
few lines; ``--json`` gives ``measured: {before, after}``, ``twin_vs_emulation_mape``, ``loop_s``,
``probe_vs_host_mape``, ``reroute_s``, ``iterations`` and the rest of the report.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ndt.options import number, port, seed
from ndt.output import print_json
from twin.state.errors import NdtError


class DemoOptionError(NdtError, ValueError):
    """An option of ndt demo names something the topology does not have; the message says which."""


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "demo",
        help="the main job: ndt controller running the closed loop on its own beside an emulated Abilene; needs root",
        description=(
            "Bring SNDlib Abilene up in Mininet under heavy load with 'ndt controller --intent' attached as its own "
            "process. The hosts play steady traffic, then a traffic shift, then a link fails; the controller's loop "
            "decides on its own from its telemetry and in-band probes (twin + NES, validation, consistent update, "
            "verification, rollback). Afterwards its status is read through gRPC, its decisions from the "
            "controller's store, what Prometheus recorded, and all "
            "compared with the hosts' kernel-timestamped delays. Writes data/demo/report.json and report.png."
        ),
    )
    p.add_argument("--topology", default="sndlib/abilene",
                   help="topohub key, state file, or line:N / ring:N / grid:N / powerlaw:N (default: sndlib/abilene)")
    p.add_argument("--load", type=number(0, 2, open_low=True, open_high=True), default=0.9,
                   help="busiest-link load under shortest paths (default: 0.9)")
    p.add_argument("--phase-s", type=number(60, 3600, unit=" s"), default=110.0, metavar="S",
                   help="traffic per phase (steady, shift, failure), s (default: 110)")
    p.add_argument("--window-s", type=number(5, 600, unit=" s"), default=20.0, metavar="S",
                   help="the loop's telemetry and probe window, s (default: 20)")
    p.add_argument("--verify-s", type=number(5, 600, unit=" s"), default=20.0, metavar="S",
                   help="probes after a push before the loop keeps it or rolls back, s (default: 20)")
    p.add_argument("--hold-down", type=number(0, 3600, unit=" s"), default=40.0, metavar="S",
                   help="after a push the loop waits this long before another run, s (default: 40)")
    p.add_argument("--probe-rate", type=number(1, 1000, unit=" probes/s"), default=100.0, metavar="N",
                   help="the controller's in-band probes per second (default: 100)")
    p.add_argument("--shift", default=None, metavar="NODE:FACTOR",
                   help="the traffic shift: traffic towards NODE times FACTOR (default: the busiest destination, x1.3)")
    p.add_argument("--fail", default=None, metavar="NODE,NODE",
                   help="the link that fails in the third phase (default: the busiest one whose failure "
                        "leaves every flow a route and no link above the intent's 95 %% under shortest paths)")
    p.add_argument("--validate", choices=["twin", "sandbox"], default="twin",
                   help="how the controller's loop validates candidates (default: twin)")
    p.add_argument("--model", default=None, help="twin model (default: the newest in twin.models.registry)")
    p.add_argument("--calibration", type=Path, default=None, metavar="FILE",
                   help="prior correction for the loop (default: the model's calibration file); refitted online")
    p.add_argument("--metrics-port", type=port(), default=9108, help="the controller's Prometheus port (default: 9108)")
    p.add_argument("--out", type=Path, default=None, metavar="DIR", help="report directory (default: data/demo)")
    p.add_argument("--no-prometheus", action="store_true",
                   help="do not run a Prometheus server (Debian prometheus) scraping the controller")
    p.add_argument("--seed", type=seed, default=0)
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(handler=run)


def execute(args: argparse.Namespace, log) -> dict:
    from controller.loop.deployment import DEFAULT_OUT, DemoPlan, busiest_destination, busiest_link, run_deployment
    from mininet_topos.topologies import emulation_state
    from twin.state.traffic import shift_traffic

    state = emulation_state(args.topology, args.load, seed=args.seed)
    if args.shift:
        node, _, factor = args.shift.rpartition(":")
        try:
            value = float(factor)
        except ValueError:
            raise DemoOptionError(f"--shift {args.shift!r}: expected NODE:FACTOR such as KSCYng:1.3") from None
        if node not in state.nodes:
            raise DemoOptionError(f"--shift {args.shift!r}: {node!r} is not a node of {args.topology}")
    else:
        node, value = busiest_destination(state), 1.3
    shifted = shift_traffic(state, node, value)
    if args.fail:
        failure = tuple(args.fail.split(","))
        if len(failure) != 2 or failure not in state.link_index:
            raise DemoOptionError(f"--fail {args.fail!r}: expected NODE,NODE naming a link of {args.topology}")
    else:
        failure = busiest_link(shifted)
    plan = DemoPlan(phase_s=args.phase_s, window_s=args.window_s, verify_s=args.verify_s, hold_down_s=args.hold_down,
                    probe_rate=args.probe_rate, validate=args.validate, model=args.model,
                    calibration=args.calibration, seed=args.seed)
    log(f"traffic shift: towards {node} x{value:g}; link failure: {failure[0]}-{failure[1]}")
    report = run_deployment(state, plan, shifted, failure, args.out or DEFAULT_OUT, args.metrics_port,
                            not args.no_prometheus, log)
    report.update(load=args.load, shift={"node": node, "factor": value})
    return report


def run(args: argparse.Namespace) -> int:
    report = execute(args, (lambda msg: print(msg, file=sys.stderr)) if args.json else print)
    if args.json:
        print_json(report)
    else:
        print_summary(report)
    return 0


def _ratio(value) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def _ms(value) -> str:
    return "n/a" if value is None else f"{1e3 * value:.3f} ms"


def print_summary(report: dict) -> None:
    m = report["measured"]
    action = "no push (nothing validated better)"
    if report["pushed"]:
        action = "pushed, then ROLLED BACK (measured worse)" if report["rolled_back"] else "pushed"
    print(f"{report['topology']} at load {report['load']}: hosts measured {_ms(m['before'])} -> {_ms(m['after'])} "
          f"({100 * report['improvement']:.1f} % lower) around the loop's first decision: {action}")
    loop_s = report["loop_s"]
    twin = report["twin_vs_emulation"]
    print(f"loop (telemetry -> flow rules): {'n/a' if loop_s is None else f'{loop_s:.1f} s'}; twin vs the hosts "
          f"MAPE {_ratio(twin['mape'])} over {twin['pair_windows']} pair-windows of >= {twin['min_packets']} packets "
          f"in {twin['windows']} windows after its online fit on the hosts' reports (a perfect model: "
          f"{_ratio(twin['noise_mape'])}); probes vs hosts MAPE {report['probe_vs_host_mape']:.3f} over "
          f"{report['probe_vs_host_paths']} paths ({_ratio(report['probe_vs_host_unreported_mape'])} over the "
          f"{report['probe_vs_host_unreported_paths']} the hosts never reported)")
    reroute = report["reroute_s"]
    print(f"link {'-'.join(report['failed_link'])} failed: rerouted on the current weights in "
          f"{'n/a' if reroute is None else f'{reroute:.2f} s'}")
    for it in report["iterations"]:
        print(f"  loop {it['action']:8s} ({it['trigger']}): measured {_ms(it['measured_s'])}, twin "
              f"{_ms(it['predicted_current_s'])} -> {_ms(it['predicted_chosen_s'])}"
              + (f", after {_ms(it['after_s'])}" if it.get("after_s") else "") + (f"; {it['reason']}" if it["reason"] else ""))
    print(f"report: {report['report_json']} and {report['report_png']}; telemetry store: {report['store']}")
    prom = report.get("prometheus")
    if prom:
        print(f"Prometheus recorded {prom['loop_decisions']} loop decisions ({prom['loop_pushes']} pushes) and "
              f"{prom['probe_delay_series']} probe-delay series; browse them: {prom['browse']} -> {prom['browse_url']}")
