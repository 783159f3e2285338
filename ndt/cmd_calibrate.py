"""``ndt calibrate``: measure a handful of states in the emulation and fit the twin's correction to them."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ndt.cmd_loop import OptionError
from ndt.options import number, output_file, seed
from ndt.output import print_json, print_table


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "calibrate",
        help="fit the twin to the Mininet emulation (per-hop forwarding cost, queueing scale); needs root",
        description=(
            "First fine-tune the learned twin on simulated states of the topology (--tune-samples; written beside "
            "the correction as <out>-twin.*). Then bring the topology up in Mininet (userspace OVS, HTB-shaped "
            "links, the ndt controller), play its "
            "traffic at several loads under shortest-path, optimized and random OSPF weights, each state in a "
            "freshly brought-up network (ovs-vswitchd's thread serves the ports in an order that changes with every "
            "bring-up, and forwarding time depends on it; the order is read with strace), measure every path's "
            "one-way delay and fit emulated = queue_scale x (twin queueing wait at capacity_scale x capacity) + "
            "per_hop_s x switches + base_s + random_hop_s x random-phase hops + port_s x ports walked + "
            "wrap_s x main-loop rounds "
            "(errors over flows with at least 200 measured packets). "
            "Prints the twin-vs-emulation MAPE before (the general twin, no correction) and after (in-sample and "
            "leave-one-load-out, with and without the walk) and writes "
            "the correction as JSON for 'ndt loop' and 'ndt demo'."
        ),
    )
    p.add_argument("--topology", default="sndlib/abilene",
                   help="topohub key, state file, or line:N / ring:N / grid:N / powerlaw:N (default: sndlib/abilene)")
    p.add_argument("--loads", default="0.2,0.5,0.7,0.9",
                   help="busiest-link loads under shortest paths, comma-separated; a light one separates the per-switch "
                        "from the per-path cost (default: 0.2,0.5,0.7,0.9)")
    p.add_argument("--routings", type=number(1, 1000, integer=True), default=3,
                   help="routings per load: shortest path, the routing the optimizer picks with QT, then random weights "
                        "(default: 3)")
    p.add_argument("--duration", type=number(0, 86400, open_low=True, unit=' s'), default=30.0, metavar="S",
                   help="traffic per measurement, s; shorter windows leave fewer flows with enough packets and "
                        "noisier means (default: 30)")
    p.add_argument("--model", default=None, help="twin model (default: the newest in twin.models.registry)")
    p.add_argument("--out", type=output_file, default=None, metavar="FILE",
                   help="correction JSON (default: data/calibration-<model>.json in the repository)")
    p.add_argument("--tune-samples", type=number(0, 10**7, integer=True), default=300, metavar="N",
                   help="before measuring, fine-tune a learned twin on N simulated states of this topology "
                        "(random weights and loads; the emulated links are FIFO servers, so the simulator is "
                        "their queueing); 0: no fine-tuning (default: 300)")
    p.add_argument("--tune-minutes", type=number(0, 10080, open_low=True, unit=' min'), default=8.0, metavar="M",
                   help="training time of the fine-tuning (default: 8)")
    p.add_argument("--seed", type=seed, default=0)
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(handler=run)


def parse_loads(text: str) -> list[float]:
    try:
        loads = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise OptionError(f"--loads {text!r}: expected comma-separated numbers such as 0.5,0.8") from None
    if not loads or not all(0 < x < 2 for x in loads):
        raise OptionError(f"--loads {text!r}: every load must lie in (0, 2)")
    return loads


def run(args: argparse.Namespace) -> int:
    from controller.calibration import calibrate
    from twin.calibration.correction import Correction, default_path
    from twin.models.registry import PREDICTORS

    loads = parse_loads(args.loads)
    model = args.model or PREDICTORS[-1]
    out = args.out or default_path(model)
    report = calibrate(args.topology, loads, args.routings, args.duration, model, out, args.tune_samples,
                       args.tune_minutes, args.seed, log=lambda msg: print(msg, file=sys.stderr, flush=True))
    rows = report["measurements"]
    if args.json:
        print_json(report)
        return 0
    print_table(rows, [("load", "load", ".2f"), ("mean_measured_ms", "measured ms", ".3f"), ("flows", "flows", "d"),
                       ("raw_mape", "twin MAPE", ".3f"),
                       ("structural_mape", "queueing-only MAPE", ".3f"), ("after_mape", "calibrated MAPE", ".3f"),
                       ("after_walk_unknown_mape", "walk unknown", ".3f"),
                       ("noise_mape", "perfect-model MAPE", ".3f"),
                       ("sender_late_p99_ms", "send late p99 ms", ".2f"), ("load_average", "load avg", ".1f")])
    c = Correction(**report["correction"])
    print(f"{model} vs emulation, {report['states']} states: general twin, queueing only: "
          f"{report['mape_general_structural']:.3f}; {'tuned' if report['tuned'] else 'general'} twin MAPE "
          f"{report['mape_before']:.3f} raw -> "
          f"{report['mape_after']:.3f} calibrated ({report['mape_after_held_out']:.3f} leave-one-load-out; "
          f"OVS's port walk unknown: {report['mape_after_walk_unknown']:.3f} and "
          f"{report['mape_after_held_out_walk_unknown']:.3f}; a perfect "
          f"model {report['mape_perfect_model']:.3f} against measurements this long); "
          f"capacity_scale {c.capacity_scale:.4f}, queue_scale {c.queue_scale:.3f}, per_hop {1e6 * c.per_hop_s:.1f} us, "
          f"base {1e6 * c.base_s:.1f} us, random hop {1e6 * c.random_hop_s:.1f} us, port walked {1e6 * c.port_s:.2f} us, "
          f"wrap {1e6 * c.wrap_s:.1f} us ({c.walk_ports} ports) -> {out}")
    return 0
