"""``ndt demo``: the README's main job.

Until the closed loop (controller + twin + optimizer + emulation) lands, the demo
simulates a real topology (SNDlib Abilene with its measured demand matrix) at
increasing load and shows what the twin will have to predict.
"""

from __future__ import annotations

import argparse

import numpy as np

from ndt.output import print_json, print_table


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "demo",
        help="the main job: simulate Abilene under load and summarise",
        description=(
            "Load SNDlib's Abilene topology with its real demand matrix, scale the traffic so the busiest "
            "link runs at 50 %%, 80 %% and 95 %% of capacity, simulate each packet by packet and print "
            "mean and tail delay, loss and the busiest links."
        ),
    )
    p.add_argument("--topology", default="sndlib/abilene", help="topohub key or topology file (default: sndlib/abilene)")
    p.add_argument("--seed", type=int, default=0, help="seed (default: 0)")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from twin.sim import simulate
    from twin.topologies import load_topology
    from twin.traffic import scale_to_utilization

    base = load_topology(args.topology, capacity=100e6, buffer=64)
    rows = []
    for load in (0.5, 0.8, 0.95):
        state = scale_to_utilization(base, load)
        result = simulate(state, seed=args.seed, packets_per_flow=3000)
        weights = np.array([f.rate for f in state.flows])
        ok = np.isfinite(result.delay)
        busiest = int(np.argmax(result.utilization))
        link = state.links[busiest]
        rows.append({
            "load": load,
            "mean_delay_ms": 1e3 * float(np.average(result.delay[ok], weights=weights[ok])),
            "worst_p99_ms": 1e3 * float(np.nanmax(result.p99)),
            "loss_pct": 100 * float(np.sum(result.dropped) / np.sum(result.sent)),
            "busiest_link": f"{link.src}->{link.dst}",
            "busiest_util_pct": 100 * float(result.utilization[busiest]),
            "sim_s": result.wall_s,
            "packet_hops": result.packet_hops,
        })
    summary = {"topology": args.topology, "nodes": len(base.nodes), "links": len(base.links),
               "flows": len(base.flows), "runs": rows}
    if args.json:
        print_json(summary)
        return 0
    print(f"{args.topology}: {len(base.nodes)} nodes, {len(base.links)} links (100 Mbit/s, 64-packet buffers), "
          f"{len(base.flows)} flows from its demand matrix")
    print_table(rows, [("load", "busiest-link load", ".2f"), ("mean_delay_ms", "mean delay ms", ".3f"),
                       ("worst_p99_ms", "worst p99 ms", ".3f"), ("loss_pct", "loss %", ".3f"),
                       ("busiest_link", "busiest link", ""), ("busiest_util_pct", "its util %", ".1f"),
                       ("sim_s", "sim s", ".2f")])
    print("The closed loop (twin, optimizer, controller, emulation) is being built: see the open issues.")
    return 0
