"""``ndt whatif``: ask the twin what a failure, traffic growth or a reconfiguration would do, or sweep
every single failure (``--n-1``)."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from ndt.options import host_port, number, picture_path
from ndt.output import print_json, print_table

MAX_SCALE = 1e6
CONNECT_S = 5.0  # how long --controller waits for the API to answer


def register(subparsers) -> None:
    from twin.models.registry import PREDICTORS

    p = subparsers.add_parser(
        "whatif", help="what a failure, traffic growth or reconfiguration would do; N-1 failure analysis",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=(
            "Predict with the twin what a change would do to the network before it happens: per-path delay with\n"
            "its prediction interval, per-link utilization, and the intent's violations before and after.\n"
            "Failures fail both directions of a link; a failed node takes its links and its own traffic with it;\n"
            "a change that leaves a demand between working nodes without a path is refused, naming the demand.\n"
            "--n-1 instead sweeps every single link and node failure and ranks them by impact (demands cut off,\n"
            "intent violations, busiest link, mean delay increase). A link is named A,B, or A->B when a node's\n"
            "name holds a comma (\"Washington, DC->Atlanta\").\n\n"
            "examples:\n"
            "  ndt whatif --state abilene.json --fail-link ATLAng,HSTNng --scale 1.2\n"
            "  ndt whatif --state abilene.json --scale-node NYCMng=1.5 --weight KSCYng,DNVRng=5 --intent examples/x.yaml\n"
            "  ndt whatif --state abilene.json --n-1 --plot n1.png --json\n"
            "  ndt whatif --controller 127.0.0.1:50051 --fail-node CHINng"),
    )
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--state", type=Path, metavar="FILE", help="network state JSON (docs/state.md)")
    source.add_argument("--controller", type=host_port, metavar="HOST:PORT",
                        help="the running 'ndt controller' API: its topology, routing and measured traffic "
                             "(a bearer token is taken from NDT_API_TOKEN)")
    p.add_argument("--tls-ca", type=Path, metavar="FILE",
                   help="with --controller: speak TLS, trusting the PEM certificate(s) in FILE for the controller's")
    p.add_argument("--tls-cert", type=Path, metavar="FILE",
                   help="with --tls-ca: this client's PEM certificate, for a controller started with --tls-client-ca")
    p.add_argument("--tls-key", type=Path, metavar="FILE", help="the private key of --tls-cert (PEM)")
    p.add_argument("--fail-link", type=_pair, action="append", default=[], metavar="A,B",
                   help="fail the link between A and B, both directions (repeatable)")
    p.add_argument("--fail-node", action="append", default=[], metavar="NODE", help="fail a node (repeatable)")
    p.add_argument("--fail-group", action="append", default=[], metavar="NAME",
                   help="fail every link of a shared-risk group defined in --srlg (repeatable)")
    p.add_argument("--srlg", type=Path, metavar="FILE",
                   help='shared-risk link groups, JSON or YAML: {"conduit-1": [["A", "B"], ["C", "D"]], ...}')
    p.add_argument("--scale", type=number(0, MAX_SCALE), default=1.0, metavar="F",
                   help="multiply every demand by F (default: 1)")
    p.add_argument("--scale-node", type=_node_factor, action="append", default=[], metavar="NODE=F",
                   help="multiply the demands from or to NODE by F (repeatable)")
    p.add_argument("--scale-pair", type=_pair_value, action="append", default=[], metavar="A,B=F",
                   help="multiply the demand A->B by F (repeatable)")
    p.add_argument("--weight", type=_pair_value, action="append", default=[], metavar="A,B=W",
                   help="set the OSPF weight of the directed link A->B (repeatable)")
    p.add_argument("--capacity", type=_pair_value, action="append", default=[], metavar="A,B=BITS",
                   help="set the capacity of the directed link A->B, bit/s, e.g. 1e9 (repeatable)")
    p.add_argument("--ecmp", choices=("on", "off"), help="split over equal-cost paths or not (default: as the state)")
    p.add_argument("--n-1", dest="n_minus_1", action="store_true",
                   help="sweep every single link and node failure instead, ranked by impact")
    p.add_argument("--links-only", action="store_true", help="with --n-1: link failures only")
    p.add_argument("--intent", type=Path, metavar="FILE", help="intent YAML whose violations are reported")
    p.add_argument("--model", choices=[m for m in PREDICTORS if m != "sim"], default=PREDICTORS[-1],
                   help=f"twin model (default: {PREDICTORS[-1]})")
    p.add_argument("--weights-dir", type=Path, metavar="DIR", help="model weights and intervals (default: shipped)")
    p.add_argument("--plot", type=picture_path, metavar="FILE.png", help="draw the result on the topology")
    p.add_argument("--top", type=number(1, 10**6, integer=True), default=10,
                   help="rows shown per table (default: 10; --json has all)")
    p.add_argument("--json", action="store_true", help="print JSON (the command contract)")
    p.set_defaults(handler=run)


def _pair(text: str) -> tuple[str, str]:
    """``A,B``, or ``A->B`` (for node names that hold a comma)."""
    parts = text.split("->") if "->" in text else text.split(",")
    if len(parts) != 2 or not all(parts):
        raise argparse.ArgumentTypeError(f"{text!r}: expected NODE,NODE (or NODE->NODE when a name holds a comma)")
    return parts[0], parts[1]


def _factor(text: str, what: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{what}: {text!r} is not a number") from None
    if not 0 <= value <= MAX_SCALE:
        raise argparse.ArgumentTypeError(f"{what}: {text!r} must lie in [0, {MAX_SCALE:g}]")
    return value


def _node_factor(text: str) -> tuple[str, float]:
    node, sep, value = text.rpartition("=")
    if not sep or not node:
        raise argparse.ArgumentTypeError(f"{text!r}: expected NODE=FACTOR such as NYCMng=1.5")
    return node, _factor(value, text)


def _pair_value(text: str) -> tuple[str, str, float]:
    pair, sep, value = text.rpartition("=")
    if not sep:
        raise argparse.ArgumentTypeError(f"{text!r}: expected A,B=VALUE such as NYCMng,CHINng=2")
    a, b = _pair(pair)
    try:
        number_ = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: {value!r} is not a number") from None
    return a, b, number_


def _groups(path: Path | None) -> dict:
    from analysis.scenario import ScenarioError
    from twin.state.files import read_text

    if path is None:
        return {}
    text = read_text(path, "the shared-risk groups file", ScenarioError)
    import yaml

    try:
        data = yaml.safe_load(text) if path.suffix.lower() in (".yaml", ".yml") else json.loads(text)
    except (ValueError, yaml.YAMLError) as exc:
        raise ScenarioError(f"{path}: not valid {'YAML' if path.suffix.lower() in ('.yaml', '.yml') else 'JSON'} "
                            f"({str(exc).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise ScenarioError(f"{path}: expected a mapping of group name to a list of [A, B] links")
    groups = {}
    for name, links in data.items():
        if (not isinstance(links, list) or not links
                or not all(isinstance(x, list) and len(x) == 2 and all(isinstance(n, str) for n in x) for x in links)):
            raise ScenarioError(f"{path}: group {name!r}: expected a non-empty list of [A, B] links")
        groups[str(name)] = [tuple(x) for x in links]
    return groups


def _state(args):
    from controller.api.client import ControllerClient

    client = ControllerClient(args.controller, CONNECT_S, os.environ.get("NDT_API_TOKEN") or None, args.tls_ca,
                              args.tls_cert, args.tls_key)
    try:
        return client.state()
    finally:
        client.close()


def _ask_controller(args):
    """The running network from ``ndt controller``'s API; an unreachable or refusing API is one line."""
    import grpc

    from analysis.scenario import ScenarioError

    try:
        return _state(args)
    except grpc.FutureTimeoutError:
        trust = "" if args.tls_ca is None else (f" (or its certificate is not one --tls-ca trusts for the host "
                                                f"{args.controller.rsplit(':', 1)[0]}, or it serves no TLS)")
        raise ScenarioError(f"--controller {args.controller}: no ndt controller API answers there{trust}") from None
    except grpc.RpcError as exc:
        raise ScenarioError(f"--controller {args.controller}: {exc.code().name}: {exc.details()}") from None


def run(args: argparse.Namespace) -> int:
    from analysis.scenario import Scenario, ScenarioError
    from optimizer.intent import load_intent
    from twin.models.intervals import load_intervals
    from twin.models.registry import get_predictor
    from twin.state.model import NetworkState

    if args.state and (args.tls_ca or args.tls_cert or args.tls_key):
        raise ScenarioError("--tls-ca, --tls-cert and --tls-key go with --controller, not --state")
    state = NetworkState.load(args.state) if args.state else _ask_controller(args)
    intent = load_intent(args.intent) if args.intent else None
    if intent:
        intent.check_against(state)
    scenario = Scenario(failed_links=tuple(args.fail_link), failed_nodes=tuple(args.fail_node),
                        failed_groups=tuple(args.fail_group), traffic_scale=args.scale,
                        node_scale=tuple(args.scale_node), pair_scale=tuple(args.scale_pair),
                        weights=tuple(args.weight), capacities=tuple(args.capacity),
                        ecmp=None if args.ecmp is None else args.ecmp == "on")
    if args.links_only and not args.n_minus_1:
        raise ScenarioError("--links-only belongs to --n-1 (it leaves node failures out of the sweep)")
    if args.srlg and not args.fail_group:
        raise ScenarioError("--srlg defines groups for --fail-group; name the group to fail")
    groups = _groups(args.srlg)
    if args.weight and state.routing_kind == "paths":
        print("note: the state is routed by explicit paths; --weight routes all of it by OSPF on the new weights",
              file=sys.stderr)
    if args.n_minus_1 and scenario != Scenario(ecmp=scenario.ecmp):
        raise ScenarioError("--n-1 sweeps single failures of the network as it is; give no other change "
                            "(only --ecmp) with it")
    predictor = get_predictor(args.model, args.weights_dir)
    intervals = load_intervals(args.model, args.weights_dir)
    if args.n_minus_1:
        return _run_n_minus_1(args, state, scenario, predictor, intervals, intent)
    return _run_what_if(args, state, scenario, groups, predictor, intervals, intent)


def _run_what_if(args, state, scenario, groups, predictor, intervals, intent) -> int:
    from analysis.whatif import what_if

    if scenario.empty:
        from analysis.scenario import ScenarioError

        raise ScenarioError("nothing to change: give a failure, a traffic scaling, a weight or a capacity, or --n-1")
    started = time.perf_counter()
    report = what_if(state, scenario, predictor, intervals, intent, groups)
    report["elapsed_s"] = time.perf_counter() - started
    if args.plot:
        from analysis.pictures import what_if_picture

        report["plot"] = str(what_if_picture(state, report, args.plot))
    if args.json:
        print_json(report)
        return 0
    before, after = report["before"], report["after"]
    print(f"{state.name or 'network'}: {report['scenario']} ({1e3 * report['elapsed_s']:.0f} ms, model {args.model})")
    print(f"  mean delay {_ms_text(before['mean_delay'])} -> {_ms_text(after['mean_delay'])} ms; busiest link "
          f"{before['max_utilization']:.2f} -> {after['max_utilization']:.2f}")
    if report["lost"]:
        print(f"  {len(report['lost'])} demands lost with the failed nodes")
    for side in ("before", "after"):
        if report[side]["in_safe_range"] is False:
            print(f"  {side}: outside the twin's safe operating range, so no intervals: "
                  + "; ".join(report[side]["out_of_range_reasons"]))
    for side in ("before", "after"):
        if intent is not None:
            found = report[side]["violations"]
            print(f"  intent {side}: " + ("met" if not found else f"{len(found)} violations: " +
                                          "; ".join(_violation(v) for v in found[:args.top])))
    paths = sorted(report["paths"], key=lambda r: -(r["delay"] - (r["delay_before"] or r["delay"])))
    print(f"paths whose delay grows most (of {len(paths)}):")
    tails = [("p99_ms", "p99 ms", ".3f")] if paths and "p99" in paths[0] else []
    print_table([dict(r, before_ms=_ms(r["delay_before"]), after_ms=_ms(r["delay"]), lo_ms=_ms(r["delay_lo"]),
                      hi_ms=_ms(r["delay_hi"]), p99_ms=_ms(r.get("p99"))) for r in paths[:args.top]],
                [("src", "src", ""), ("dst", "dst", ""), ("before_ms", "before ms", ".3f"),
                 ("after_ms", "after ms", ".3f"), ("lo_ms", "low ms", ".3f"), ("hi_ms", "high ms", ".3f")] + tails)
    links = sorted(report["links"], key=lambda r: -(r["utilization_after"] or 0.0))
    print("busiest links after:")
    print_table(links[:args.top], [("src", "src", ""), ("dst", "dst", ""), ("utilization_before", "before", ".3f"),
                                   ("utilization_after", "after", ".3f")])
    if args.plot:
        print(f"picture: {report['plot']}")
    return 0


def _run_n_minus_1(args, state, scenario, predictor, intervals, intent) -> int:
    from tqdm import tqdm

    from analysis.scenario import apply
    from analysis.whatif import n_minus_1, single_failures

    if scenario.ecmp is not None:
        state, _ = apply(state, scenario)
    total = len(single_failures(state, nodes=not args.links_only))
    with tqdm(total=total, unit="failure", desc="N-1", leave=False, disable=args.json) as bar:
        report = n_minus_1(state, predictor, intervals, intent, nodes=not args.links_only, progress=bar.update)
    if args.plot:
        from analysis.pictures import n_minus_1_picture

        n_minus_1_picture(state, report, args.plot)
    cases = [c.to_dict() for c in report["cases"]]
    if args.json:
        print_json({"base": report["base"], "cases": cases, "elapsed_s": report["elapsed_s"],
                    "plot": str(args.plot) if args.plot else None})
        return 0
    base = report["base"]
    print(f"{state.name or 'network'}: {len(cases)} single failures in {report['elapsed_s']:.1f} s (model {args.model}); "
          f"intact: mean delay {_ms_text(base['mean_delay'])} ms, busiest link {base['max_utilization']:.2f}")
    cutting = [c for c in cases if c["cut"]]
    if cutting:
        print(f"{len(cutting)} failures cut demands off: " + ", ".join(c["failed"] for c in cutting[:args.top]))
    outside = [c for c in cases if c["in_safe_range"] is False]
    if base["in_safe_range"] is False:
        print("the intact network is outside the twin's safe operating range: " + "; ".join(base["out_of_range_reasons"]))
    elif outside:
        print(f"{len(outside)} failures leave the twin's safe operating range (safe = no, their delays are unvouched)")
    print("worst first:")
    print_table([dict(c, cut_n=len(c["cut"]), violations_n=len(c["violations"]), safe=_yes_no(c["in_safe_range"]),
                      increase_ms=_ms(c["mean_delay_increase"])) for c in cases[:args.top]],
                [("failed", "failure", ""), ("cut_n", "cut", "d"), ("lost", "lost", "d"),
                 ("violations_n", "violations", "d"), ("max_utilization", "busiest", ".3f"),
                 ("increase_ms", "delay +ms", ".3f"), ("safe", "safe", "")])
    if args.plot:
        print(f"picture: {args.plot}")
    return 0


def _ms(seconds) -> float | None:
    return None if seconds is None else 1e3 * seconds


def _yes_no(flag) -> str | None:
    return None if flag is None else ("yes" if flag else "no")


def _ms_text(seconds) -> str:
    return "-" if seconds is None else f"{1e3 * seconds:.3f}"


def _violation(v: dict) -> str:
    return f"{v['constraint']} {v['what']} {v['value']:.4g} > {v['limit']:.4g}"
