"""``ndt train``: train RouteNet-E (or the RNN baseline) on a dataset directory, resumably."""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

from ndt.options import number, seed
from ndt.output import print_json


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "train",
        help="train the twin (RouteNet-E) on a simulated dataset",
        description=(
            "Train RouteNet-E or the RNN baseline on the output of 'ndt dataset generate'. Every tenth "
            "sample (by index) is held out for validation; the loss is the relative error of per-path mean "
            "delay, by default of its part beyond the exactly known propagation delay. Each epoch checkpoints to --out, so rerunning the same command resumes; the best model "
            "is kept as OUT/best.weights.h5 + OUT/best.json, and --export copies it into the package as the "
            "default twin. Training runs under tf.distribute: MirroredStrategy over every local GPU (the CPU when "
            "there is none), each replica taking --batch-size samples of a step; with TF_CONFIG set, "
            "MultiWorkerMirroredStrategy across the machines it names (docs/twin.md)."
        ),
    )
    p.add_argument("--data", type=Path, action="append", metavar="DIR",
                   help="dataset directory, repeatable to train on several (default: data/train); shards added "
                        "while training join at the next epoch")
    p.add_argument("--out", type=Path, metavar="DIR", help="checkpoint directory (default: runs/MODEL)")
    p.add_argument("--model", choices=("routenet", "routenet_f", "rnn"), default="routenet",
                   help="which network (default: routenet, RouteNet-E: delay; routenet_f: a state per queue and "
                        "delay, jitter and loss heads, for SP/WFQ/DRR ports and QoS classes)")
    p.add_argument("--epochs", type=number(1, 10**5, integer=True), default=40, help="most epochs (default: 40)")
    p.add_argument("--batch-size", type=number(1, 10**5, integer=True), default=4, help="samples per gradient step (default: 4)")
    p.add_argument("--lr", type=number(0, 10, open_low=True), default=2e-3, help="Adam learning rate; halved after 2 epochs without progress")
    p.add_argument("--patience", type=number(1, 10**5, integer=True), default=6, help="epochs without validation progress before stopping (default: 6)")
    p.add_argument("--max-minutes", type=number(0, 10**6, open_low=True, unit=' min'), metavar="M", help="stop after this much training time")
    p.add_argument("--state-dim", type=number(1, 4096, integer=True), default=32, help="hidden state size (default: 32)")
    p.add_argument("--iterations", type=number(1, 100, integer=True), default=8, help="message-passing iterations (default: 8)")
    p.add_argument("--target", choices=("queueing", "delay", "waiting"), default="queueing",
                   help="loss: relative error of the delay minus propagation (default), of the whole delay, or "
                        "of the waiting time plus a tenth of the transmission time (what the emulation measures)")
    p.add_argument("--seed", type=seed, default=0, help="random seed (default: 0)")
    p.add_argument("--init-from", metavar="MODEL",
                   help="fine-tune a trained model instead of starting afresh: its path without suffix, e.g. "
                        "twin/models/weights/routenet_e (its normalisation is kept; --state-dim must match, --iterations may differ)")
    p.add_argument("--export", action="store_true", help="copy the best model into twin/models/weights/, where ndt finds it by name "
                        "(for routenet: the default twin)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--json", action="store_true", help="print a JSON summary")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from twin.models.model_files import MODELS_DIR
    from twin.models.registry import LEARNED
    from twin.models.train import TrainConfig, Trainer

    stem = LEARNED[args.model]
    config = TrainConfig(kind=stem, state_dim=args.state_dim, iterations=args.iterations, epochs=args.epochs,
                         batch_size=args.batch_size, lr=args.lr, patience=args.patience,
                         max_minutes=args.max_minutes, target=args.target, seed=args.seed,
                         init_from=args.init_from)
    out = args.out or Path("runs") / stem
    stream = sys.stderr if args.json else sys.stdout
    log = lambda msg: print(msg, file=stream, flush=True)  # noqa: E731
    trainer = Trainer(args.data or [Path("data/train")], out, config, progress=not args.no_progress, log=log)
    summary = trainer.run()
    out = Path(summary["out"])
    if args.export and trainer.worker == 0:  # on several machines, the one that keeps the model exports it
        for suffix in (".weights.h5", ".json"):
            shutil.copyfile(out / f"best{suffix}", MODELS_DIR / f"{stem}{suffix}")
        summary["exported"] = str(MODELS_DIR / stem)
    if args.json:
        print_json(summary)
    else:
        print(f"best validation MAPE ({summary['target']}) {summary['best_val_mape']:.4f} after {summary['epochs']} epochs "
              f"({summary['train_s']:.0f} s of training, stopped by {summary['stopped']}); model in {out}/best.*")
    return 0
