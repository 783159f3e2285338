"""``ndt bench``: the benchmarks whose figures the docs quote."""

from __future__ import annotations

import argparse

from ndt.output import print_json


def register(subparsers) -> None:
    p = subparsers.add_parser("bench", help="measure speed and accuracy",
                              description="Benchmarks. Speed and accuracy targets are measured here, not in tests.")
    sub = p.add_subparsers(dest="bench_command", metavar="WHAT", required=True)
    sim = sub.add_parser(
        "sim",
        help="simulator speed (packet-hops/s) and M/M/1 accuracy; vs ns-3 when installed",
        description=(
            "Time the packet-level simulator on a 50-node all-pairs state (one core, compilation excluded), "
            "check its M/M/1 mean delay at load 0.8 against 1/(mu-lambda), and, when the optional ns3 package "
            "is installed (pip install 'ndt[ns3]'), run the same multi-hop scenario in ns-3 and ndt."
        ),
    )
    sim.add_argument("--seed", type=int, default=0, help="seed (default: 0)")
    sim.add_argument("--json", action="store_true", help="print JSON (the command contract)")
    sim.set_defaults(handler=run_sim)


def run_sim(args: argparse.Namespace) -> int:
    from twin.bench import bench_sim

    report = bench_sim(seed=args.seed)
    if args.json:
        print_json(report)
        return 0
    print(f"scenario: {report['scenario']}")
    print(f"simulator: {report['packet_hops_per_s']:,} packet-hops/s "
          f"({report['packet_hops']:,} in {report['wall_s']} s, one core)")
    print(f"M/M/1 at load 0.8: mean delay off by {100 * report['mm1_rel_error']:+.2f} % from 1/(mu-lambda)")
    if "speedup_vs_ns3" in report:
        print(f"ns-3: {report['ns3_packet_hops_per_s']:,} packet-hops/s; ndt is {report['speedup_vs_ns3']:.0f}x faster; "
              f"mean delay MAPE vs ns-3 {100 * report['delay_mape_vs_ns3']:.2f} %")
    return 0
