"""``ndt state``: import topologies into network-state files and check them."""

from __future__ import annotations

import argparse
from pathlib import Path

from ndt.options import number, output_file, seed


def register(subparsers) -> None:
    p = subparsers.add_parser("state", help="import, scale and check network-state files",
                              description="Network-state files: the one input of every ndt command (docs/state.md).")
    sub = p.add_subparsers(dest="state_command", metavar="ACTION", required=True)
    imp = sub.add_parser(
        "import",
        help="build a state from a topology file or a topohub key",
        description=(
            "Build a network state from a GML/GraphML file (Topology Zoo) or a topohub key such as "
            "topozoo/Abilene or sndlib/abilene (with its demand matrix). Without a demand matrix, or with "
            "--random-traffic, every node pair gets a random Poisson flow. The traffic is scaled so the "
            "busiest link carries --load of its capacity."
        ),
    )
    imp.add_argument("source", help="a .gml/.graphml/.json file or a topohub key")
    imp.add_argument("-o", "--out", type=output_file, required=True, help="where to write the state JSON")
    imp.add_argument("--capacity", type=number(1, 1e15, unit=' bit/s'), default=10e6, help="link capacity when the source has none, bit/s (default: 10e6)")
    imp.add_argument("--buffer", type=number(1, 10**6, integer=True), default=32, help="output buffer per link, packets (default: 32)")
    imp.add_argument("--load", type=number(0, 100, open_low=True), default=0.7, help="utilization of the busiest link (default: 0.7)")
    imp.add_argument("--packet-size", type=number(1, 1e9, unit=' bits'), default=8000.0, help="mean packet size, bits (default: 8000)")
    imp.add_argument("--random-traffic", action="store_true", help="ignore the source's demands; random all-pairs traffic")
    imp.add_argument("--seed", type=seed, default=0, help="seed for random traffic (default: 0)")
    imp.set_defaults(handler=run_import)

    check = sub.add_parser("check", help="validate a state file and summarise it")
    check.add_argument("file", type=Path)
    check.set_defaults(handler=run_check)


def run_import(args: argparse.Namespace) -> int:
    from dataclasses import replace

    import numpy as np

    from twin.state.errors import NdtError
    from twin.state.topologies import load_topology
    from twin.state.traffic import random_flows, scale_to_utilization

    if Path(args.source).exists() and Path(args.source).resolve() == args.out.resolve():
        raise NdtError(f"-o {args.out} is the source itself; write the state to another file")
    state = load_topology(args.source, capacity=args.capacity, buffer=args.buffer)
    if args.random_traffic or not state.flows:
        state = state.with_flows(random_flows(state.nodes, np.random.default_rng(args.seed), mixed=False,
                                              packet_size=args.packet_size))
    else:
        state = state.with_flows(replace(f, packet_size=args.packet_size) for f in state.flows)
    state = scale_to_utilization(state, args.load)
    state.save(args.out)
    print(f"{args.out}: {len(state.nodes)} nodes, {len(state.links)} links, {len(state.flows)} flows, "
          f"busiest link at {100 * state.utilization().max():.0f} %")
    return 0


def run_check(args: argparse.Namespace) -> int:
    from twin.state.model import NetworkState

    state = NetworkState.load(args.file)
    util = state.utilization()
    hops = [len(p) for p in state.flow_links]
    print(f"{args.file}: valid. {len(state.nodes)} nodes, {len(state.links)} links, {len(state.flows)} flows "
          f"({state.routing_kind} routing, {sum(hops) / max(len(hops), 1):.2f} hops on average); "
          f"busiest link at {100 * util.max():.0f} % of capacity" if len(util) else "")
    return 0
