"""``ndt sim``: run the packet-level simulator on a state file or on a datanet directory."""

from __future__ import annotations

import argparse
from pathlib import Path

from ndt.options import number, seed
from ndt.output import print_json, print_table


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "sim",
        help="simulate a network state packet by packet",
        description=(
            "Simulate a network state with the packet-level simulator (output ports with FIFO, SP, WFQ or "
            "DRR queues, finite buffers, tail drop) and report per-path delay, jitter, loss and percentiles "
            "and per-link and per-queue utilization. With --datanet, simulate every sample of a BNN-UPC "
            "datanet directory (2020 or 2021 variant) and compare with the delays and jitter it records."
        ),
    )
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--state", type=Path, metavar="FILE", help="network state JSON (see docs/state.md)")
    source.add_argument("--datanet", type=Path, metavar="DIR", help="a BNN-UPC datanet directory (graphs/, routings/, results_*.tar.gz)")
    p.add_argument("--duration", type=number(0, 86400, open_low=True, unit=' s'), metavar="S",
                   help="traffic generation time in seconds (default: long enough for ~2000 packets per flow)")
    p.add_argument("--warmup", type=number(0, 86400, unit=' s'), metavar="S", help="seconds discarded at the start (default: 10%% of the duration)")
    p.add_argument("--seed", type=seed, default=0, help="random seed (default: 0)")
    p.add_argument("--limit", type=number(1, 10**8, integer=True), metavar="N", help="with --datanet: simulate only the first N samples")
    p.add_argument("--json", action="store_true", help="print JSON (the command contract) instead of tables")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    if args.datanet is not None:
        return _run_datanet(args)
    if args.limit is not None:
        from twin.state.errors import NdtError

        raise NdtError("--limit counts datanet samples: it goes with --datanet, not --state")
    from twin.sim.simulator import simulate
    from twin.state.model import NetworkState

    state = NetworkState.load(args.state)
    result = simulate(state, duration=args.duration, warmup=args.warmup, seed=args.seed)
    report = result.to_dict()
    if args.json:
        print_json(report)
        return 0
    print(f"{state.name or args.state}: {len(state.nodes)} nodes, {len(state.links)} links, {len(state.flows)} flows; "
          f"{report['packet_hops']:,} packet-hops in {report['wall_s']:.2f} s")
    rows = [dict(p, delay_ms=_ms(p["delay"]), p99_ms=_ms(p["p99"]), loss_pct=_pct(p["loss"])) for p in report["paths"]]
    print_table(rows, [("src", "src", ""), ("dst", "dst", ""), ("delay_ms", "delay ms", ".3f"),
                       ("p99_ms", "p99 ms", ".3f"), ("loss_pct", "loss %", ".2f"), ("delivered", "delivered", "d")])
    busiest = sorted(report["links"], key=lambda l: -(l["utilization"] or 0))[:10]
    print("\nbusiest links:")
    print_table([dict(l, util_pct=_pct(l["utilization"])) for l in busiest],
                [("src", "src", ""), ("dst", "dst", ""), ("util_pct", "util %", ".1f"),
                 ("occupancy", "queue pkts", ".2f"), ("drops", "drops", "d")])
    return 0


def _run_datanet(args: argparse.Namespace) -> int:
    from twin.data import reference

    report = reference.compare_with_reference(args.datanet, limit=args.limit, seed=args.seed, duration=args.duration,
                                            warmup=args.warmup, progress=True)
    if args.json:
        print_json(report)
    else:
        print(f"{report['samples']} samples ({report['paths']} paths) from {args.datanet}: per-path mean delay MAPE "
              f"of ndt's simulator vs the recorded results = {100 * report['mape_vs_reference']:.2f} % "
              f"(per sample p15 {100 * report['p15']:.2f} %, p85 {100 * report['p85']:.2f} %), jitter MAPE "
              f"{_percent_text(report['jitter_mape_vs_reference'])}, {report['s_per_sample']:.2f} s per sample")
    return 0


def _percent_text(ratio) -> str:
    return "n/a" if ratio is None else f"{100 * ratio:.2f} %"


def _ms(seconds):
    return None if seconds is None else 1e3 * seconds


def _pct(ratio):
    return None if ratio is None else 100 * ratio
