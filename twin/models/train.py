"""Training a learned twin (RouteNet-E or the RNN baseline) on a dataset directory.

Samples whose index is a multiple of ``val_every`` form the validation set, so
the split is stable while a dataset directory is still growing; shards that
appear during training join the training set at the next epoch. The loss is
the mean relative error of the per-flow mean delay (MAPE, a fraction) over
flows with a positive delay label; a model with jitter and loss heads
(RouteNet-F) adds the mean absolute log ratio of its jitter (each side plus
JITTER_FLOOR of the path's squared transmission time, so idle paths do not
dominate) and LOSS_WEIGHT times the mean absolute error of its loss. Each epoch writes a checkpoint (weights,
optimizer state, history) to the output directory and, when validation MAPE
improves, the best model as ``best.weights.h5`` + ``best.json``; rerunning the
same command resumes from the checkpoint.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from twin.data.dataset import read_shard
from twin.models.features import JITTER_FLOOR, TARGETS, StateGraph, batch_graphs, error_scales, state_graph
from twin.models.learned import LearnedTwin, batch_tensors, build, load_twin, make_network, padded_hops
from twin.models.model_files import CLASS_KINDS, ModelFileError, Normalizer
from twin.state.errors import NdtError, StateError


@dataclass(frozen=True)
class TrainConfig:
    """Hyper-parameters of one training run (batch_size in samples, lr for Adam, times in minutes)."""

    kind: str = "routenet_e"
    state_dim: int = 32
    iterations: int = 8
    epochs: int = 40
    batch_size: int = 4
    lr: float = 2e-3
    lr_decay_patience: int = 2
    patience: int = 6
    max_minutes: float | None = None
    val_every: int = 10
    target: str = "queueing"
    seed: int = 0
    init_from: str | None = None  # a trained model (path without suffix) to fine-tune instead of starting afresh


@dataclass
class Item:
    """One training sample: its graph, per-flow labels (delay s, jitter s², loss share), node count and
    dataset index."""

    graph: StateGraph
    delay: np.ndarray
    nodes: int
    index: int
    jitter: np.ndarray | None = None
    loss: np.ndarray | None = None

    def labels(self, heads: tuple[str, ...]) -> np.ndarray:
        """Per flow, one column per head (NaN where a label is missing)."""
        columns = [getattr(self, head) for head in heads]
        return np.column_stack([c if c is not None else np.full(len(self.delay), np.nan) for c in columns])


LOSS_WEIGHT = 5.0  # loss MAE against delay and jitter relative errors in the training objective


class DatasetCache:
    """The samples of one or more dataset directories, read shard by shard; ``refresh`` picks up new shards."""

    def __init__(self, directories):
        self.directories = [Path(d) for d in ([directories] if isinstance(directories, (str, Path)) else directories)]
        self.seen: set[Path] = set()
        self.items: list[Item] = []
        for directory in self.directories:
            if not directory.is_dir():
                raise StateError(f"{directory}: no such dataset directory")

    def refresh(self) -> int:
        """Read shards not read yet; returns how many samples were added."""
        added = 0
        for directory in self.directories:
            for path in sorted(directory.glob("shard-*.jsonl.gz")):
                if path in self.seen:
                    continue
                for sample in read_shard(path):
                    labels = sample.labels
                    self.items.append(Item(state_graph(sample.state), labels["delay"], len(sample.state.nodes),
                                           int(sample.meta["index"]), labels.get("jitter"), labels.get("loss")))
                    added += 1
                self.seen.add(path)
        if not self.items:
            names = ", ".join(str(d) for d in self.directories)
            raise StateError(f"{names}: no dataset shards (shard-*.jsonl.gz); run 'ndt dataset generate' first")
        return added

    def split(self, val_every: int) -> tuple[list[Item], list[Item]]:
        train = [it for it in self.items if it.index % val_every]
        val = [it for it in self.items if not it.index % val_every]
        return train, val


CLIP_NORM = 1.0  # each variable's gradient norm, at most


def batch_inputs(items: list[Item], norm: Normalizer, replicas: int = 1, heads: tuple[str, ...] = ("delay",)):
    """Per replica, the model inputs and sorted labels (float32; delay s, and a column per further head) of
    its share of ``items`` (one disjoint-union graph each), and the hop positions they all span. A missing
    delay label is 0, a missing jitter or loss label -1 (the step skips them)."""
    import tensorflow as tf

    shares = [items[r::replicas] for r in range(replicas)]
    batches = [batch_graphs([it.graph for it in share]) for share in shares]
    hops = max(padded_hops(b) for b in batches)
    inputs, labels = [], []
    for share, batch in zip(shares, batches):
        sorted_labels = np.concatenate([it.labels(heads) for it in share])[batch.order]
        sorted_labels = np.where(np.isfinite(sorted_labels) & (sorted_labels >= 0), sorted_labels, -1.0)
        sorted_labels[:, 0] = np.where(sorted_labels[:, 0] > 0, sorted_labels[:, 0], 0.0)
        if len(heads) == 1:
            sorted_labels = sorted_labels[:, 0]
        inputs.append(batch_tensors(batch, norm, hops))
        labels.append(tf.constant(sorted_labels, tf.float32))
    return inputs, labels, hops


def training_strategy(devices: list[str] | None = None):
    """How ``ndt train`` spreads a step: MultiWorkerMirroredStrategy when ``TF_CONFIG`` describes a cluster of
    machines, else MirroredStrategy over ``devices`` (default: every local GPU, or the CPU when there is
    none). Each replica takes its share of the batch; gradients are averaged across them."""
    import tensorflow as tf

    if os.environ.get("TF_CONFIG"):
        return tf.distribute.MultiWorkerMirroredStrategy()
    return tf.distribute.MirroredStrategy(devices=devices)


def validation_errors(twin: LearnedTwin, items: list[Item], batch_size: int = 8) -> dict[str, np.ndarray]:
    """Relative errors of every flow with a positive label, for each of TARGETS; with jitter and loss heads
    also ``jitter`` (relative, labels of at least JITTER_FLOOR), ``jitter_log`` (the training term) and
    ``loss`` (absolute)."""
    heads = twin.heads
    errors = {target: [] for target in TARGETS + heads[1:] + (("jitter_log",) if "jitter" in heads else ())}
    for start in range(0, len(items), batch_size):
        group = items[start:start + batch_size]
        batch = batch_graphs([it.graph for it in group])
        predicted = twin.predict_metrics_batch(batch) if len(heads) > 1 else [
            {"delay": d} for d in twin.predict_batch(batch)]
        for pred, prop, tx, it in zip(predicted, batch.unsort(batch.path_prop),
                                      batch.unsort(batch.path_transmit), group):
            ok = np.isfinite(it.delay) & (it.delay > prop)
            for target in TARGETS:
                scale = error_scales(it.delay[ok], prop[ok], tx[ok], target)
                errors[target].append(np.abs(pred["delay"][ok] - it.delay[ok]) / np.maximum(scale, 1e-12))
            if "jitter" in pred and it.jitter is not None:
                floor = JITTER_FLOOR * tx**2
                jitter_ok = np.isfinite(it.jitter) & (it.jitter >= floor)
                errors["jitter"].append(np.abs(pred["jitter"] - it.jitter)[jitter_ok] / it.jitter[jitter_ok])
                ratio = (pred["jitter"] + floor) / (np.where(np.isfinite(it.jitter), it.jitter, 0.0) + floor)
                errors["jitter_log"].append(np.abs(np.log(ratio))[np.isfinite(it.jitter)])
            if "loss" in pred and it.loss is not None:
                loss_ok = np.isfinite(it.loss)
                errors["loss"].append(np.abs(pred["loss"] - it.loss)[loss_ok])
    return {k: np.concatenate(v) if v else np.zeros(0) for k, v in errors.items()}


def objective(mean_errors: dict[str, float], target: str) -> float:
    """What training minimises, from mean validation errors: the delay error relative to ``target``, plus the
    jitter log ratio and LOSS_WEIGHT × the loss MAE where the model predicts them."""
    extra = [mean_errors.get("jitter_log", 0.0), LOSS_WEIGHT * mean_errors.get("loss", 0.0)]
    return mean_errors[target] + sum(value for value in extra if np.isfinite(value))  # no labels: no term


class Trainer:
    """Runs (or resumes) training into ``out`` and keeps the best model there."""

    def __init__(self, dataset, out, config: TrainConfig, progress: bool = True, log=print, strategy=None):
        import keras

        self.strategy = strategy or training_strategy()
        self.replicas = self.strategy.num_replicas_in_sync
        self.config = config
        self.worker = _worker_index(self.strategy)
        self.out = Path(out) if self.worker == 0 else Path(out) / f"worker-{self.worker}"  # worker 0 keeps the model
        self.out.mkdir(parents=True, exist_ok=True)
        self.progress = progress
        self.log = log
        self.data = DatasetCache(dataset)
        self.data.refresh()
        keras.utils.set_random_seed(config.seed)
        self.state = {"epoch": 0, "best": None, "bad_epochs": 0, "lr": config.lr, "history": [], "train_s": 0.0}
        checkpoint = self.out / "checkpoint.json"
        start = self._start_model(config) if config.init_from and not checkpoint.exists() else None
        if checkpoint.exists():
            saved = json.loads(checkpoint.read_text())
            if saved["config"] != _comparable(config):
                raise ModelFileError(f"{checkpoint}: a checkpoint of another configuration is there; "
                                     "use another --out directory or the same settings to resume")
            self.norm = Normalizer(saved["norm"])
            self.state = saved["state"]
        elif start is not None:
            self.norm = start.norm
        else:
            train, _ = self.data.split(config.val_every)
            if not train:
                raise StateError(f"{dataset}: no training samples (all {len(self.data.items)} are validation)")
            self.norm = Normalizer.fit(batch_graphs([it.graph for it in train]), classes=config.kind in CLASS_KINDS)
        with self.strategy.scope():
            self.net = make_network(config.kind, {"state_dim": config.state_dim, "iterations": config.iterations})
            build(self.net, self.norm, batch_graphs([self.data.items[0].graph]))
            if start is not None:
                self.net.set_weights(start.net.get_weights())
            self.optimizer = keras.optimizers.Adam(learning_rate=self.state["lr"])  # clipped in the step
            self.optimizer.build(self.net.trainable_variables)
        if checkpoint.exists():
            self.net.load_weights(self.out / "checkpoint.weights.h5")
            with np.load(self.out / "checkpoint.optimizer.npz") as saved_opt:
                for var, key in zip(self.optimizer.variables, sorted(saved_opt.files, key=lambda k: int(k[1:]))):
                    var.assign(saved_opt[key])
            self.optimizer.learning_rate.assign(self.state["lr"])
        self.twin = LearnedTwin(self.net, self.norm, config.kind)
        self.heads = self.twin.heads
        self._step = self._make_step()

    @staticmethod
    def _start_model(config: TrainConfig) -> LearnedTwin:
        """The model ``config.init_from`` names, checked to be of the configured kind and width. Its
        iterations may differ: every iteration runs the same layers, so a model trained with 8 can start a
        run with 4."""
        path = Path(config.init_from)
        twin = load_twin(path.name, path.parent, fine_tune=True)
        wanted = {"kind": config.kind, "state_dim": config.state_dim}
        have = {"kind": twin.kind, "state_dim": twin.net.get_config().get("state_dim", config.state_dim)}
        if have != wanted:
            raise ModelFileError(f"{config.init_from}: a {have} model cannot start a {wanted} training run")
        return twin

    def _make_step(self):
        """One optimizer step: each replica's loss is the mean relative error over its valid paths, divided by
        the number of replicas, so the summed gradients are those of the mean over replicas. Each variable's
        summed gradient is clipped to norm 1 (Keras's ``clipnorm``, which would clip every replica's share
        apart), and every replica hands its 1/replicas of it to the optimizer, which sums them."""
        import tensorflow as tf

        net, optimizer, strategy = self.net, self.optimizer, self.strategy
        target, replicas = self.config.target, self.replicas

        def mean(values, valid):
            return tf.reduce_sum(values * valid) / tf.maximum(tf.reduce_sum(valid), 1.0)

        def replica_step(x, labels, max_hops):
            with tf.GradientTape() as tape:
                out = net(x, max_hops=max_hops, training=True)
                several = len(out.shape) == 2
                pred, delay = (out[:, 0], labels[:, 0]) if several else (out, labels)
                transmit = tf.math.unsorted_segment_sum(x["hop_transmit"], x["hop_path"], tf.shape(delay)[0])
                scale = error_scales(delay, x["path_prop"], transmit, target, tf.maximum)
                valid = tf.cast((delay > 0) & (scale > 0), tf.float32)
                loss = mean(tf.abs(pred - delay) / tf.where(scale > 0, scale, 1.0), valid)
                if several:
                    floor = JITTER_FLOOR * tf.square(transmit)
                    jitter_valid = tf.cast((delay > 0) & (labels[:, 1] >= 0), tf.float32)
                    jitter_label = tf.maximum(labels[:, 1], 0.0)
                    loss += mean(tf.abs(tf.math.log((out[:, 1] + floor) / (jitter_label + floor))), jitter_valid)
                    loss += LOSS_WEIGHT * mean(tf.abs(out[:, 2] - labels[:, 2]), tf.cast(labels[:, 2] >= 0, tf.float32))
                share_of_step = loss / replicas
            grads = tape.gradient(share_of_step, net.trainable_variables)
            summed = tf.distribute.get_replica_context().all_reduce(tf.distribute.ReduceOp.SUM, grads)
            clipped = [tf.clip_by_norm(g, CLIP_NORM) / replicas for g in summed]
            optimizer.apply_gradients(zip(clipped, net.trainable_variables))
            return loss

        @tf.function(reduce_retracing=True)
        def distributed_step(inputs, labels, max_hops):
            losses = strategy.run(replica_step, args=(inputs, labels, max_hops))
            return strategy.reduce(tf.distribute.ReduceOp.MEAN, losses, axis=None)

        def step(inputs, labels, max_hops):
            def share(values):
                return strategy.experimental_distribute_values_from_function(
                    lambda context: values[context.replica_id_in_sync_group])

            return distributed_step(share(inputs), share(labels), max_hops)

        return step

    def run(self) -> dict:
        """Train until the epoch limit, early stopping or the time budget; returns a summary."""
        from tqdm import tqdm

        cfg = self.config
        started = time.perf_counter()
        budget = None if cfg.max_minutes is None else 60 * cfg.max_minutes
        stop_reason = "epochs"
        while self.state["epoch"] < cfg.epochs:
            if self.state["bad_epochs"] >= cfg.patience:
                stop_reason = "early stopping"
                break
            added = self.data.refresh()
            train, val = self.data.split(cfg.val_every)
            epoch = self.state["epoch"]
            rng = np.random.default_rng([cfg.seed, epoch])
            order = rng.permutation(len(train))
            size = cfg.batch_size * self.replicas  # every replica takes batch_size samples of a step
            groups = [[train[i] for i in order[s:s + size]] for s in range(0, len(order), size)]
            groups = [g for g in groups if len(g) >= self.replicas]  # a replica never goes without a sample
            bar = tqdm(groups, desc=f"epoch {epoch + 1}/{cfg.epochs}", unit="batch", disable=not self.progress)
            losses = []
            epoch_start = time.perf_counter()
            out_of_time = False
            for group in bar:
                inputs, labels, max_hops = batch_inputs(group, self.norm, self.replicas, self.heads)
                losses.append(float(self._step(inputs, labels, max_hops)))
                bar.set_postfix(mape=f"{np.mean(losses[-50:]):.4f}")
                if budget is not None and time.perf_counter() - started > budget:
                    out_of_time = True
                    break
            bar.close()
            if val:
                errors = validation_errors(self.twin, val)
                val_mape = {k: float(np.mean(v)) if len(v) else float("nan") for k, v in errors.items()}
                val_mape["objective"] = objective(val_mape, cfg.target)
            else:
                val_mape = {"delay": float("nan"), cfg.target: float(np.mean(losses)), "objective": float(np.mean(losses))}
            self.state["train_s"] += time.perf_counter() - epoch_start
            self._end_epoch(epoch, float(np.mean(losses)), val_mape, len(train), len(val), added)
            if out_of_time:
                stop_reason = "time budget"
                break
        return {"out": str(self.out), "epochs": self.state["epoch"], "target": cfg.target,
                "best_val_mape": self.state["best"],
                "stopped": stop_reason, "train_s": round(self.state["train_s"], 1),
                "train_samples": len(self.data.split(cfg.val_every)[0]),
                "val_samples": len(self.data.split(cfg.val_every)[1]), "history": self.state["history"]}

    def _end_epoch(self, epoch: int, train_loss: float, val_mape: dict, n_train: int, n_val: int, added: int):
        cfg = self.config
        score = val_mape["objective"]
        improved = self.state["best"] is None or score < self.state["best"]
        if improved:
            self.state["best"] = score
            self.state["bad_epochs"] = 0
            self.twin.info = {"val_mape": val_mape, "epoch": epoch + 1, "train_samples": n_train,
                              "val_samples": n_val, "config": asdict(cfg), "train_s": round(self.state["train_s"], 1)}
            self.twin.save(self.out, "best")
        else:
            self.state["bad_epochs"] += 1
            if self.state["bad_epochs"] % cfg.lr_decay_patience == 0:
                self.state["lr"] *= 0.5
                self.optimizer.learning_rate.assign(self.state["lr"])
        self.state["epoch"] = epoch + 1
        self.state["history"].append({"epoch": epoch + 1, "train_loss": round(train_loss, 5),
                                      "val_mape": round(val_mape["delay"], 5),
                                      "val_mape_queueing": round(val_mape.get("queueing", float("nan")), 5),
                                      "val_mape_waiting": round(val_mape.get("waiting", float("nan")), 5),
                                      **{f"val_{key}": round(val_mape[key], 5) for key in ("jitter", "jitter_log", "loss")
                                         if key in val_mape},
                                      "train_samples": n_train,
                                      "val_samples": n_val, "lr": self.state["lr"],
                                      "train_s": round(self.state["train_s"], 1)})
        self.log(f"epoch {epoch + 1}: train loss ({cfg.target}) {train_loss:.4f}, validation MAPE delay "
                 f"{val_mape['delay']:.4f}, without propagation {val_mape.get('queueing', float('nan')):.4f}, "
                 f"waiting {val_mape.get('waiting', float('nan')):.4f}"
                 + (f", jitter {val_mape['jitter']:.4f}, loss MAE {val_mape['loss']:.4f}" if "jitter" in val_mape else "")
                 + " "
                 f"({n_train} train / {n_val} validation samples, {added} new){' *' if improved else ''}")
        self._checkpoint()

    def _checkpoint(self) -> None:
        self.net.save_weights(self.out / "checkpoint.weights.h5")
        np.savez(self.out / "checkpoint.optimizer.npz",
                 **{f"v{i}": v.numpy() for i, v in enumerate(self.optimizer.variables)})
        saved = {"config": _comparable(self.config), "norm": self.norm.to_dict(), "state": self.state}
        tmp = self.out / "checkpoint.json.tmp"
        tmp.write_text(json.dumps(saved, indent=1))
        tmp.replace(self.out / "checkpoint.json")


def _comparable(config: TrainConfig) -> dict:
    """The settings a resumed run must share with the checkpoint (budgets may change)."""
    return {k: v for k, v in asdict(config).items() if k not in ("epochs", "max_minutes", "patience")}


def _worker_index(strategy) -> int:
    """This machine's index among the workers of a multi-worker strategy (0 on one machine; a cluster
    must name its machines ``worker`` only, no ``chief``)."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None:
        return 0
    if resolver.task_type != "worker":
        raise NdtError(f"TF_CONFIG: task type {resolver.task_type!r}; ndt train runs every machine as a 'worker'")
    return int(resolver.task_id or 0)
