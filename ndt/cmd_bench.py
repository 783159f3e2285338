"""``ndt bench``: the benchmarks whose figures the docs quote."""

from __future__ import annotations

import argparse
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

from ndt.options import number, seed, workers
from ndt.output import print_json
from twin.state.errors import NdtError


PYNTM_TOPOLOGIES = ("sndlib/abilene", "sndlib/germany50")


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
    sim.add_argument("--seed", type=seed, default=0, help="seed (default: 0)")
    sim.add_argument("--policy", choices=("fifo", "sp", "wfq", "drr"), default="fifo",
                     help="schedule every port by this policy over three queues, the flows' ToS 0, 1, 2 in turn; "
                          "fifo (the default) also runs the ns-3 comparison")
    sim.add_argument("--json", action="store_true", help="print JSON (the command contract)")
    sim.set_defaults(handler=run_sim)

    from twin.models.registry import PREDICTORS

    opt = sub.add_parser(
        "optimize",
        help="Figure 4: simulated mean delay of each routing method as traffic grows",
        description=(
            "On a synthetic 25-node topology and SNDlib Abilene, at busiest-link loads from 0.5 to 1.15 under "
            "shortest path, compute weights by shortest path, inverse capacity, Fortz-Thorup, NES scored by QT "
            "and NES scored by the twin; simulate each routing and report its mean delay. Writes JSON and a PNG."
        ),
    )
    opt.add_argument("--twin", choices=PREDICTORS, default=PREDICTORS[-1],
                     help=f"model driving 'NES + twin' (default: {PREDICTORS[-1]})")
    opt.add_argument("--topologies", default="synthetic-25,sndlib/abilene",
                     help="comma-separated: synthetic-25 and/or topohub keys (default: synthetic-25,sndlib/abilene)")
    opt.add_argument("--intensities", default="0.5,0.7,0.85,1.0,1.15", help="comma-separated busiest-link loads")
    opt.add_argument("--budget", type=number(1, 10**7, integer=True), default=1500, help="candidates per optimization (default: 1500)")
    opt.add_argument("--sim-runs", type=number(1, 1000, integer=True), default=3,
                     help="simulations per routing, averaged; every method sees the same seeds (default: 3)")
    opt.add_argument("--seed", type=seed, default=0, help="seed (default: 0)")
    opt.add_argument("--workers", type=workers, default=1,
                     help="cases (topology x load) run at once as Ray tasks (default: 1, one after another in this "
                          "process; each case's searches have a time limit, so they see less CPU when cases share "
                          "cores)")
    opt.add_argument("--address", metavar="ADDR", help="run the cases on the Ray cluster at ADDR ('auto' on one of its nodes)")
    opt.add_argument("--out", type=Path, default=Path("docs/figures/optimizer"),
                     help="prefix of the .json and .png written (default: docs/figures/optimizer)")
    opt.add_argument("--json", action="store_true", help="print JSON (the command contract)")
    opt.set_defaults(handler=run_optimize)

    pyntm = sub.add_parser(
        "pyntm",
        help="per-link utilization against pyNTM's, intact and under every single-link failure",
        description=(
            "Build a pyNTM model of each topology (same capacities, weights as IGP costs, same demands), fail "
            "every link in turn in pyNTM and in ndt (ECMP on), and report the largest per-link utilization "
            "difference, relative to max(pyNTM's utilization, 1 % of the busiest intact link's). Needs pyNTM "
            "(pip install --no-deps pyntm==5.0.0)."
        ),
    )
    pyntm.add_argument("--topology", dest="topologies", metavar="KEY", nargs="+", action="extend",
                       help=f"topohub keys or state files (default: {' '.join(PYNTM_TOPOLOGIES)})")
    pyntm.add_argument("--json", action="store_true", help="print JSON (the command contract)")
    pyntm.set_defaults(handler=run_pyntm)


def run_sim(args: argparse.Namespace) -> int:
    from twin.data.sim_bench import bench_sim

    report = bench_sim(seed=args.seed, policy=args.policy)
    if args.policy == "fifo" and importlib.util.find_spec("ns3") is not None:
        comparison = _ns3_comparison(args.seed)
        report["ns3"] = comparison
        for key in ("ns3_packet_hops_per_s", "speedup_vs_ns3", "speedup_vs_ns3_cpu", "delay_mape_vs_ns3"):
            report[key] = comparison[key]
    if args.json:
        print_json(report)
        return 0
    print(f"scenario: {report['scenario']}, {report['policy']} ports")
    print(f"simulator: {report['packet_hops_per_s']:,} packet-hops/s "
          f"({report['packet_hops']:,} in {report['wall_s']} s, one core)")
    print(f"M/M/1 at load 0.8: mean delay off by {100 * report['mm1_rel_error']:+.2f} % from 1/(mu-lambda)")
    if "speedup_vs_ns3" in report:
        print(f"ns-3 scenario ({report['ns3']['scenario']}): ns-3 {report['ns3_packet_hops_per_s']:,.0f} packet-hops/s, "
              f"ndt {report['ns3']['packet_hops_per_s']:,.0f}; ndt is {report['speedup_vs_ns3']:.0f}x faster "
              f"({report['speedup_vs_ns3_cpu']:.0f}x in CPU time); mean delay MAPE vs ns-3 "
              f"{100 * report['delay_mape_vs_ns3']:.2f} %")
    return 0


def _ns3_comparison(seed: int) -> dict:
    """The ns-3 comparison of the source checkout's benchmarks/ns3_compare.py, run in the same session
    as the simulator's own figures."""
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "ns3_compare.py"
    done = subprocess.run([sys.executable, str(script), "--seed", str(seed)], capture_output=True, text=True)
    if done.returncode != 0:
        raise NdtError(f"{script} failed: {done.stderr.strip().splitlines()[-1] if done.stderr.strip() else done.returncode}")
    return json.loads(done.stdout)


def run_optimize(args: argparse.Namespace) -> int:
    from optimizer.bench import bench_optimize, plot

    try:
        intensities = [float(x) for x in args.intensities.split(",")]
    except ValueError:
        raise NdtError(f"--intensities takes comma-separated numbers, got {args.intensities!r}") from None
    if args.sim_runs < 1 or args.budget < 1:
        raise NdtError(f"--sim-runs and --budget must be >= 1, got {args.sim_runs} and {args.budget}")

    def progress(row):
        print(f"{row['topology']} load {row['load']:.2f}: sp {1e3 * row['sp_delay']:.3f} ms, "
              f"nes_twin {1e3 * row['nes_twin_delay']:.3f} ms ({100 * row['nes_twin_gain']:+.1f} %), "
              f"best: {row['best_method']}", file=sys.stderr)

    report = bench_optimize(topologies=args.topologies.split(","), intensities=intensities, twin_name=args.twin,
                            budget=args.budget, seed=args.seed, sim_runs=args.sim_runs,
                            progress=progress, workers=args.workers, address=args.address)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(report, indent=1))
    plot(report, args.out.with_suffix(".png"))
    if args.json:
        print_json(report)
        return 0
    from ndt.output import print_table
    from optimizer.bench import METHODS

    rows = [dict(r, **{f"{m}_ms": 1e3 * r[f"{m}_delay"] for m in METHODS}) for r in report["intensities"]]
    print_table(rows, [("topology", "topology", ""), ("load", "load", ".2f"), ("sp_ms", "SP ms", ".3f"),
                       ("invcap_ms", "invcap ms", ".3f"), ("fortz_thorup_ms", "FT ms", ".3f"),
                       ("nes_qt_ms", "NES+QT ms", ".3f"),
                       ("nes_twin_unscreened_ms", f"NES+{args.twin} alone ms", ".3f"),
                       ("nes_twin_ms", f"NES+{args.twin} ms", ".3f"),
                       ("best_method", "best", "")])
    print(f"written: {args.out.with_suffix('.json')}, {args.out.with_suffix('.png')}")
    return 0


def run_pyntm(args: argparse.Namespace) -> int:
    from analysis.pyntm_check import bench_pyntm
    from ndt.output import print_table

    report = bench_pyntm(args.topologies or list(PYNTM_TOPOLOGIES))
    status = 0 if report["within_tolerance"] else 1  # scripts can gate on the agreement
    if args.json:
        print_json(report)
        return status
    print(f"pyNTM {report['pyntm_version']}: largest per-link utilization difference, relative to max(pyNTM's, "
          f"{100 * report['floor_fraction']:g} % of the busiest intact link's)")
    print_table(report["topologies"], [("topology", "topology", ""), ("nodes", "nodes", "d"), ("links", "links", "d"),
                                       ("demands", "demands", "d"), ("failures", "failures", "d"),
                                       ("intact_max_relative_difference", "intact", ".2e"),
                                       ("max_relative_difference", "worst", ".2e"), ("worst_case", "worst case", "")])
    verdict = "within" if report["within_tolerance"] else "NOT within"
    print(f"{verdict} {100 * report['tolerance']:g} % on every link in every case")
    return status
