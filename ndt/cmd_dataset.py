"""``ndt dataset``: generate and inspect training data for the twin."""

from __future__ import annotations

import argparse
from pathlib import Path

from ndt.options import number, seed, workers
from ndt.output import print_json


def register(subparsers) -> None:
    p = subparsers.add_parser("dataset", help="generate or summarise simulator-labelled datasets",
                              description="Datasets of random network states labelled by the packet-level simulator.")
    sub = p.add_subparsers(dest="dataset_command", metavar="ACTION", required=True)
    gen = sub.add_parser(
        "generate",
        help="generate (or resume) a dataset",
        description=(
            "Draw random network states (power-law topologies and topohub's real ones, varied capacities and "
            "buffers, loads from light to congested, shortest-path and perturbed OSPF weights, some failed links) "
            "and label each with the simulator. Runs on all cores as Ray tasks (a local Ray instance starts and "
            "stops by itself; --address runs them on an existing Ray cluster), with a progress bar; shards already "
            "written are skipped, so an interrupted run resumes where it stopped. A run on any number of workers "
            "writes the same shard files, byte for byte."
        ),
    )
    gen.add_argument("--out", type=Path, default=Path("data/train"), help="output directory (default: data/train)")
    gen.add_argument("--samples", type=number(1, 10**8, integer=True), default=1000, help="number of samples (default: 1000)")
    gen.add_argument("--nodes", default="25-50", metavar="MIN-MAX", help="topology sizes (default: 25-50)")
    gen.add_argument("--load", default="0.2-1.0", metavar="MIN-MAX",
                     help="utilization of the busiest link, drawn uniformly (default: 0.2-1.0)")
    gen.add_argument("--traffic", choices=("mixed", "poisson"), default="mixed",
                     help="traffic models: mixed Poisson/CBR/ON-OFF with three size models, or Poisson only")
    gen.add_argument("--packets-per-flow", type=number(1, 10**8), default=2500.0,
                     help="simulated packets of the average flow (label accuracy vs time; default: 2500)")
    gen.add_argument("--scheduled", type=number(0, 1), default=0.0, metavar="FRACTION",
                     help="share of samples whose nodes each draw a scheduling policy (fifo, sp, wfq, drr; 3 queues, "
                          "random sizes and weights) and whose flows draw a QoS class 0-2 (default: 0, all FIFO)")
    gen.add_argument("--tos-mix", choices=("uniform", "random"), default="uniform",
                     help="with --scheduled: each flow's QoS class equally likely (default), or drawn at class shares "
                          "each sample draws, so one class may carry most of the traffic")
    gen.add_argument("--shard-size", type=number(1, 10**6, integer=True), default=10, help="samples per shard file (default: 10)")
    gen.add_argument("--seed", type=seed, default=0, help="dataset seed (default: 0)")
    gen.add_argument("--workers", type=workers,
                     help="samples simulated at once (default: all cores, or the cluster's CPUs; 1 without --address: in "
                          "this process, without Ray)")
    gen.add_argument("--address", metavar="ADDR",
                     help="run on the Ray cluster at ADDR (host:port of its head, or 'auto' on one of its nodes)")
    gen.add_argument("--json", action="store_true", help="print a JSON summary")
    gen.set_defaults(handler=run_generate)

    info = sub.add_parser("info", help="summarise a dataset directory")
    info.add_argument("directory", type=Path)
    info.add_argument("--json", action="store_true", help="print JSON")
    info.set_defaults(handler=run_info)


def run_generate(args: argparse.Namespace) -> int:
    from twin.data.dataset import DatasetConfig, generate

    min_nodes, max_nodes = _range(args.nodes, int, "--nodes")
    min_load, max_load = _range(args.load, float, "--load")
    config = DatasetConfig(samples=args.samples, min_nodes=min_nodes, max_nodes=max_nodes, min_load=min_load,
                           max_load=max_load, traffic=args.traffic, packets_per_flow=args.packets_per_flow,
                           shard_size=args.shard_size, seed=args.seed, scheduled_fraction=args.scheduled, tos_mix=args.tos_mix)
    report = generate(config, args.out, workers=args.workers, address=args.address)
    if args.json:
        print_json(report)
    else:
        rate = f", {report['samples_per_hour']} samples/hour" if report["samples_per_hour"] else ""
        print(f"{report['directory']}: {report['written']} samples written, {report['skipped']} already there, "
              f"{report['wall_s']} s{rate} ({report['engine']})")
    return 0


def run_info(args: argparse.Namespace) -> int:
    import numpy as np

    from twin.data.dataset import iter_samples

    nodes, paths, loads, delays, losses = [], 0, [], [], []
    for sample in iter_samples(args.directory):
        nodes.append(len(sample.state.nodes))
        paths += len(sample.state.flows)
        loads.append(sample.meta.get("load", float("nan")))
        delays.extend(sample.labels["delay"][np.isfinite(sample.labels["delay"])])
        losses.append(np.nanmax(sample.labels["loss"]))
    report = {"samples": len(nodes), "paths": paths, "nodes": [min(nodes), max(nodes)],
              "load": [float(np.min(loads)), float(np.max(loads))],
              "delay_s": {"p1": float(np.percentile(delays, 1)), "median": float(np.median(delays)),
                          "p99": float(np.percentile(delays, 99))},
              "max_path_loss": {"median": float(np.median(losses)), "max": float(np.max(losses))}}
    if args.json:
        print_json(report)
    else:
        print(f"{report['samples']} samples, {paths} paths, {min(nodes)}-{max(nodes)} nodes, "
              f"busiest-link load {report['load'][0]:.2f}-{report['load'][1]:.2f}")
        d = report["delay_s"]
        print(f"path delay: p1 {1e3 * d['p1']:.3f} ms, median {1e3 * d['median']:.3f} ms, p99 {1e3 * d['p99']:.3f} ms")
        print(f"worst path loss per sample: median {100 * report['max_path_loss']['median']:.2f} %, "
              f"max {100 * report['max_path_loss']['max']:.2f} %")
    return 0


def _range(text: str, kind, flag: str):
    from twin.state.errors import NdtError

    try:
        low, high = (kind(x) for x in text.split("-", 1))
    except ValueError:
        raise NdtError(f"{flag} takes MIN-MAX, e.g. 25-50; got {text!r}") from None
    return low, high
