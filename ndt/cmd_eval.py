"""``ndt eval``: Figure 3 of the paper (delay error by topology size) and zero-shot on a datanet."""

from __future__ import annotations

import argparse
from pathlib import Path

from ndt.options import directory, number, workers
from ndt.output import print_json, print_table


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "eval",
        help="evaluate RouteNet-E, RNN and QT against the simulator (Figure 3)",
        description=(
            "Compare the per-path mean delay predicted by RouteNet-E, the RNN baseline and the queueing-theory "
            "baseline with simulator labels, by topology size: 25-50 nodes (the training distribution) and "
            "larger topologies never trained on. The evaluation set is fixed and seeded, generated on first "
            "use into $NDT_CACHE/eval (default ~/.cache/ndt/eval). Writes JSON and a PNG plot. With --datanet, "
            "evaluate the three zero-shot on a BNN-UPC datanet directory instead. RouteNet-F joins them when its "
            "weights are there; models that predict jitter and loss (RouteNet-F, QT) add their jitter MAPE and "
            "loss MAE (and, against labels that have them, the MAPE of the 90th and 99th percentiles of delay "
            "that their mean, jitter and loss imply, 'ndt tails'), and every report repeats its figures by the "
            "scheduling policy of each path's busiest port (by_policy) and by that port's offered load, a share of "
            "its capacity (by_load)."
        ),
    )
    p.add_argument("--datanet", type=Path, metavar="DIR", help="a BNN-UPC datanet directory (zero-shot evaluation)")
    p.add_argument("--data", type=Path, action="append", metavar="DIR",
                   help="evaluate these dataset directories instead of the seeded set (repeatable)")
    p.add_argument("--speed", action="store_true",
                   help="time inference instead: one 300-node all-pairs state, candidate routings per second of a "
                        "25-node state in batches of 64, time and memory from 25 to 1,000 nodes, the speed-up over "
                        "the simulator at 100-300 nodes, and the first prediction from a cold process (a few minutes)")
    p.add_argument("--limit", type=number(1, 10**8, integer=True), metavar="N", help="with --datanet: only the first N samples")
    p.add_argument("--weights", type=directory, metavar="DIR", help="directory with the models (default: the shipped ones)")
    p.add_argument("--tails", metavar="FILE",
                   help="the tail correction the percentiles are scored with ('ndt tails fit'; default: the shipped "
                        "one), or 'none' for the plain gamma form")
    p.add_argument("--out", type=Path, default=Path("eval"), metavar="DIR",
                   help="where figure3.json/.png or datanet.json go (default: ./eval)")
    p.add_argument("--workers", type=workers, help="processes for generating the evaluation set (default: all cores)")
    p.add_argument("--json", action="store_true", help="print JSON (the command contract) instead of tables")
    p.set_defaults(handler=run)


def _tail_correction(text: str | None):
    """The tail correction ``--tails`` names: None for the shipped one, the plain form for 'none'."""
    from twin.models.tails import PLAIN, read_tail_correction

    if text is None:
        return None
    return PLAIN if text == "none" else read_tail_correction(text)


def _models(names, weights):
    """The models ``names``, and RouteNet-F (delay, jitter and loss heads) where its weights are there."""
    from ndt.cmd_predict import load_model
    from twin.models.model_files import MODELS_DIR

    if ((weights or MODELS_DIR) / "routenet_f.json").exists():
        names = (*names, "routenet_f")
    return {name: load_model(name, weights) for name in names}


def run(args: argparse.Namespace) -> int:
    import json

    from twin.models import evaluate

    args.out.mkdir(parents=True, exist_ok=True)
    correction = _tail_correction(args.tails)
    if args.speed:
        report = _speed(args)
        (args.out / "speed.json").write_text(json.dumps(report, indent=1))
        if args.json:
            print_json(report)
        else:
            _print_speed(report)
        return 0
    if args.datanet is not None:
        models = _models(("routenet", "rnn", "qt"), args.weights)
        report = evaluate.zero_shot(models, args.datanet, limit=args.limit, correction=correction)
        report["tails"] = args.tails or "shipped"
        (args.out / "datanet.json").write_text(json.dumps(report, indent=1))
        if args.json:
            print_json(report)
        else:
            print(f"{report['samples']} samples of {args.datanet}, nothing trained on them: delay MAPE "
                  f"RouteNet-E {100 * report['routenet_mape']:.2f} %, RNN {100 * report['rnn_mape']:.2f} %, "
                  f"QT {100 * report['qt_mape']:.2f} %")
            if report["delay_limit"] is not None:
                print(f"the reference counts each packet's delay as at most {report['delay_limit']:g} s: the "
                      "predictions were put through that limit first")
            _print_heads(report, models)
            _print_groups(report["by_policy"], models, "policy", "bottleneck")
            _print_groups(report["by_load"], models, "load", "bottleneck load")
        return 0
    models = _models(("routenet", "rnn", "qt"), args.weights)
    if args.data:
        sets = {path.name: path for path in args.data}
    else:
        sets = evaluate.ensure_eval_sets(workers=args.workers, progress=not args.json)
    report = evaluate.figure3(models, sets, warm=evaluate.warm_states(), correction=correction)
    report["tails"] = args.tails or "shipped"
    report["png"] = str(evaluate.plot_figure3(report, list(models), args.out / "figure3.png"))
    (args.out / "figure3.json").write_text(json.dumps(report, indent=1))
    if args.json:
        print_json(report)
        return 0
    rows = [{k: (100 * v if k.endswith(("mape", "p15", "p85")) and v is not None else v) for k, v in b.items()}
            for b in report["buckets"]]
    columns = [("nodes", "nodes", ""), ("samples", "samples", "d"), ("routenet_mape", "RouteNet-E %", ".2f"),
               ("routenet_p15", "p15", ".2f"), ("routenet_p85", "p85", ".2f"), ("rnn_mape", "RNN %", ".2f"),
               ("qt_mape", "QT %", ".2f")]
    if "routenet_f" in models:
        columns.append(("routenet_f_mape", "RouteNet-F %", ".2f"))
    columns += [("routenet_waiting_mape", "RouteNet-E waiting %", ".1f"), ("rnn_waiting_mape", "RNN waiting %", ".1f"),
                ("qt_waiting_mape", "QT waiting %", ".1f")]
    print_table(rows, columns)
    print("waiting %: the error relative to the waiting time plus a tenth of the transmission (docs/twin.md)")
    for bucket in report["buckets"]:
        if len(bucket["by_policy"]) > 1 or any(b["policy"] != "fifo" for b in bucket["by_policy"]):
            print(f"{bucket['nodes']} nodes:")
            _print_heads(bucket, models)
            _print_groups(bucket["by_policy"], models, "policy", "bottleneck")
            _print_groups(bucket["by_load"], models, "load", "bottleneck load")
    print("seconds per sample: " + ", ".join(f"{k} {v:.3g}" for k, v in report["infer_s"].items()))
    print(f"plot: {report['png']}")
    return 0


def _print_heads(report: dict, models) -> None:
    """One line per model with jitter and loss heads: its jitter MAPE, loss MAE and, against labels that have
    them, the MAPE of the 90th and 99th percentiles it implies (twin.models.tails)."""
    for name in models:
        if f"{name}_jitter_mape" in report and report[f"{name}_jitter_mape"] is not None:
            tails = "".join(f", {tail} MAPE {100 * report[f'{name}_{tail}_mape']:.2f} %" for tail in ("p90", "p99")
                            if report.get(f"{name}_{tail}_mape") is not None)
            print(f"  {name}: jitter MAPE {100 * report[f'{name}_jitter_mape']:.2f} %, "
                  f"loss MAE {report[f'{name}_loss_mae']:.4f}{tails}")


def _print_groups(rows: list[dict], models, key: str, title: str) -> None:
    """Delay MAPE (and jitter MAPE, loss MAE where predicted) per group of paths (``key``: "policy" or "load"
    of their bottleneck)."""
    columns = [(key, title, ""), ("paths", "paths", "d")]
    for name in models:
        columns.append((f"{name}_mape", f"{name} delay %", ".2f"))
        if any(f"{name}_jitter_mape" in row for row in rows):
            columns += [(f"{name}_jitter_mape", f"{name} jitter %", ".1f"), (f"{name}_loss_mae", "loss MAE", ".4f")]
    print_table([{k: (100 * v if k.endswith("mape") and v is not None else v) for k, v in row.items()} for row in rows],
                columns)


def _speed(args: argparse.Namespace) -> dict:
    from tqdm import tqdm

    from twin.models import speed

    runs = cold_starts(args.weights)  # first: it fails fast if the model or the CLI cannot predict
    models = _models(("routenet", "rnn", "qt"), args.weights)
    report = speed.speed(models)
    report["routenet_vs_qt"] = report["routenet_infer_s"] / report["qt_infer_s"]
    with tqdm(total=len(speed.SCALING_NODES) + len(speed.SIMULATOR_NODES), desc="speed", unit="state",
              disable=args.json) as bar:
        def step(label):
            return lambda nodes: (bar.update(), bar.set_postfix_str(f"{label}, {nodes} nodes done"))

        report["scaling"] = speed.scaling(models["routenet"], {"qt": models["qt"]}, progress=step("scaling"))
        report["simulator"] = speed.versus_simulator(models["routenet"], progress=step("versus the simulator"))
    report["speedup_vs_simulator"] = min(row["speedup"] for row in report["simulator"])
    report["cold_start_runs_s"] = runs
    report["cold_start_s"] = sorted(runs)[len(runs) // 2]
    return report


def cold_starts(weights: Path | None, runs: int = 3) -> list[float]:
    """Wall time (s) of ``ndt predict --state abilene.json`` (SNDlib Abilene) in ``runs`` fresh processes."""
    import sys
    import tempfile
    import time

    ndt = [sys.executable, "-c", "import sys; from ndt.cli import main; sys.exit(main())"]
    with tempfile.TemporaryDirectory(prefix="ndt-cold-") as work:
        state_file = Path(work) / "abilene.json"
        command = ndt + ["predict", "--state", str(state_file), "--json"]
        if weights is not None:
            command += ["--weights", str(weights)]
        _run_or_explain(ndt + ["state", "import", "sndlib/abilene", "-o", str(state_file)])
        times = []
        for _ in range(runs):
            started = time.perf_counter()
            _run_or_explain(command)
            times.append(time.perf_counter() - started)
    return times


def _run_or_explain(command: list[str]) -> None:
    """Run an ndt command for timing; its failure becomes one line naming the command and its error."""
    import subprocess

    from twin.state.errors import NdtError

    done = subprocess.run(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if done.returncode != 0:
        last = done.stderr.strip().splitlines()[-1] if done.stderr.strip() else f"exit {done.returncode}"
        raise NdtError(f"cold-start run of 'ndt {' '.join(command[3:5])}' failed: {last}")


def _print_speed(report: dict) -> None:
    print(f"one {report['nodes']}-node state, {report['paths']:,} paths: RouteNet-E {report['routenet_infer_s']:.3f} s, "
          f"RNN {report['rnn_infer_s']:.3f} s, QT {report['qt_infer_s']:.3f} s "
          f"(RouteNet-E / QT = {report['routenet_vs_qt']:.1f})")
    print(f"candidate routings/s of a {report['candidate_nodes']}-node state: RouteNet-E "
          f"{report['routenet_candidates_per_s']:.0f}, RNN {report['rnn_candidates_per_s']:.0f}, "
          f"QT {report['qt_candidates_per_s']:.0f}")
    print_table(report["scaling"], [("nodes", "nodes", "d"), ("paths", "paths", ",d"), ("hops", "hops", ",d"),
                                    ("infer_s", "RouteNet-E s", ".3f"), ("peak_mib", "peak MiB", ".0f"),
                                    ("qt_infer_s", "QT s", ".3f")])
    print_table(report["simulator"], [("nodes", "nodes", "d"), ("packets_per_flow", "packets/flow", ".0f"),
                                      ("sim_s", "simulator s", ".1f"), ("twin_s", "RouteNet-E s", ".3f"),
                                      ("speedup", "speed-up", ",.0f")])
    print(f"first prediction from a cold process (ndt predict, Abilene): {report['cold_start_s']:.2f} s wall "
          f"(runs: {', '.join(f'{t:.2f}' for t in report['cold_start_runs_s'])})")
