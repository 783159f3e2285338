"""Training data for the twin: random network states labelled by the packet-level simulator.

A dataset is a directory of shards ``shard-NNNNN.jsonl.gz``; each line is one
sample ``{"state": ..., "labels": ..., "meta": ...}``. Sample ``i`` depends only
on ``(seed, i)``, and a shard only on its index, so samples run anywhere (in
process, or as Ray tasks on this machine or a cluster), a shard's bytes are the
same wherever its samples ran, and an interrupted run resumes by skipping the
shards already written. ``dataset.json`` records the configuration; resuming
with a different one is refused. How long the simulator took per sample is
measured, not seeded, so it lives beside the shards in ``timings.jsonl``.
"""

from __future__ import annotations

import gzip
import json
import os
import time
from dataclasses import asdict, dataclass, fields, replace
from functools import lru_cache
from pathlib import Path
from typing import Iterator

import networkx as nx
import numpy as np

from twin.sim.simulator import simulate
from twin.state.errors import StateError
from twin.state.model import POLICIES, NetworkState
from twin.state.topologies import from_graph, powerlaw_graph
from twin.state.traffic import random_flows, scale_to_utilization, set_onoff_cycles

CAPACITIES = (10e6, 25e6, 40e6, 100e6)  # bit/s
BUFFERS = (16, 32, 64, 128)  # packets
SCHEDULED_QUEUES = 3  # queues per scheduled port in generated samples (QoS classes 0, 1, 2)
TOS_MIXES = ("uniform", "random")  # how scheduled samples' flows draw their ToS (DatasetConfig.tos_mix)
LABELS = ("delay", "jitter", "loss", "p50", "p90", "p99", "sent", "delivered")
LINK_LABELS = ("utilization", "occupancy", "link_drops")
SHARD_COMPRESSION = 6  # gzip level: zlib's default; level 9 takes 2.7x the time for a 2.5 % smaller shard
MANIFEST = "dataset.json"
MAX_NODES = 1000  # all pairs of 1,000 nodes are a million flows per sample: larger is not a training set
TIMINGS = "timings.jsonl"


@dataclass(frozen=True)
class DatasetConfig:
    """What a dataset holds. Loads are the utilization of the busiest link (offered/capacity)."""

    samples: int = 1000
    min_nodes: int = 25
    max_nodes: int = 50
    min_load: float = 0.2
    max_load: float = 1.0
    real_fraction: float = 0.25  # share of samples drawn from topohub's real topologies of that size
    failure_fraction: float = 0.1  # share of samples with one or two failed links
    perturbed_fraction: float = 0.6  # share of samples whose OSPF weights are randomly perturbed
    traffic: str = "mixed"  # "mixed" (Poisson, CBR, ON/OFF; three size models) or "poisson"
    scheduled_fraction: float = 0.0  # share of samples whose nodes draw a policy (fifo/sp/wfq/drr) and flows a ToS
    tos_mix: str = "uniform"  # scheduled samples' ToS: "uniform" (each class equally likely) or "random" (per sample
    # class shares drawn from a flat Dirichlet, so one class may carry most of the traffic)
    packets_per_flow: float = 2500.0
    shard_size: int = 10
    seed: int = 0

    def check(self) -> None:
        if self.samples < 1:
            raise StateError(f"samples must be >= 1, got {self.samples}")
        if not 3 <= self.min_nodes <= self.max_nodes <= MAX_NODES:
            raise StateError(f"node range {self.min_nodes}-{self.max_nodes} must satisfy 3 <= min <= max <= {MAX_NODES}")
        if not 0 < self.min_load <= self.max_load:
            raise StateError(f"load range {self.min_load}-{self.max_load} must satisfy 0 < min <= max")
        if self.traffic not in ("mixed", "poisson"):
            raise StateError(f"traffic must be 'mixed' or 'poisson', got {self.traffic!r}")
        if self.tos_mix not in TOS_MIXES:
            raise StateError(f"tos_mix must be one of {', '.join(TOS_MIXES)}, got {self.tos_mix!r}")
        if self.shard_size < 1:
            raise StateError(f"shard_size must be >= 1, got {self.shard_size}")
        for name in ("real_fraction", "failure_fraction", "perturbed_fraction", "scheduled_fraction"):
            if not 0 <= getattr(self, name) <= 1:
                raise StateError(f"{name} must lie in [0, 1], got {getattr(self, name)}")

    @property
    def shards(self) -> int:
        return -(-self.samples // self.shard_size)


@dataclass
class Sample:
    """A state with its simulator labels (per flow: LABELS, per link: LINK_LABELS) and how it was made."""

    state: NetworkState
    labels: dict[str, np.ndarray]
    meta: dict


def make_state(config: DatasetConfig, index: int) -> tuple[NetworkState, dict]:
    """The ``index``-th random state of a dataset, and a description of how it was drawn."""
    rng = np.random.default_rng([config.seed, index])
    n_nodes = int(rng.integers(config.min_nodes, config.max_nodes + 1))
    real = _real_topologies(config.min_nodes, config.max_nodes)
    if real and rng.random() < config.real_fraction:
        key = real[int(rng.integers(len(real)))]
        graph = _topohub_graph(key)
    else:
        key = f"powerlaw/{n_nodes}"
        graph = powerlaw_graph(n_nodes, rng)
    graph = nx.convert_node_labels_to_integers(graph)
    failed = []
    if rng.random() < config.failure_fraction:
        failed = _fail_links(graph, int(rng.integers(1, 3)), rng)
    for u, v in graph.edges:
        graph.edges[u, v]["capacity"] = float(CAPACITIES[rng.integers(len(CAPACITIES))])
        if "dist" not in graph.edges[u, v]:
            graph.edges[u, v]["dist"] = float(rng.uniform(0, 400))  # km: 0–2 ms of fibre
    base = from_graph(graph, name=key)
    buffers = {node: int(BUFFERS[rng.integers(len(BUFFERS))]) for node in base.nodes}
    capacity = base.link_arrays["capacity"]
    weighting = "unit" if rng.random() < 0.5 else "inverse_capacity"
    weights = np.ones(len(base.links)) if weighting == "unit" else np.round(100e6 / capacity)
    perturbed = rng.random() < config.perturbed_fraction
    if perturbed:
        change = rng.random(len(weights)) < rng.uniform(0.1, 0.5)
        weights = np.where(change, rng.integers(1, 2 * int(weights.max()) + 2, len(weights)), weights)
    links = tuple(
        type(link)(link.src, link.dst, link.capacity, buffers[link.src], link.prop_delay, float(w))
        for link, w in zip(base.links, weights)
    )
    flows = random_flows(base.nodes, rng, mixed=config.traffic == "mixed")
    load = float(rng.uniform(config.min_load, config.max_load))
    state = NetworkState(nodes=base.nodes, links=links, flows=tuple(flows), name=key)
    state = set_onoff_cycles(scale_to_utilization(state, load))
    meta = {"index": index, "topology": key, "nodes": len(state.nodes), "load": load,
            "weighting": weighting, "perturbed": bool(perturbed), "failed_links": failed,
            "sim_seed": int(rng.integers(2**31))}
    if config.scheduled_fraction > 0:  # its own stream, so FIFO datasets keep their bytes
        state, meta["policies"] = _draw_scheduling(state, np.random.default_rng([config.seed, index, 1]),
                                                   config.scheduled_fraction, config.tos_mix)
    return state, meta


def _draw_scheduling(state: NetworkState, rng: np.random.Generator, fraction: float,
                     tos_mix: str = "uniform") -> tuple[NetworkState, dict]:
    """With probability ``fraction``: every node a policy of POLICIES (all its ports alike), SCHEDULED_QUEUES
    queues of BUFFERS packets each, WFQ/DRR weights in percent, and every flow a ToS of 0..SCHEDULED_QUEUES-1
    (the datanet gnnet2020 layout), each equally likely or, with ``tos_mix`` "random", at class shares the
    sample draws. Returns the state and how many ports got each policy."""
    if rng.random() >= fraction:
        return state, {"fifo": len(state.links)}
    node_policy = {node: POLICIES[rng.integers(len(POLICIES))] for node in state.nodes}
    links = []
    for link in state.links:
        policy = node_policy[link.src]
        if policy == "fifo":
            links.append(link)
            continue
        sizes = tuple(int(BUFFERS[i]) for i in rng.integers(len(BUFFERS), size=SCHEDULED_QUEUES))
        weights = None
        if policy in ("wfq", "drr"):
            raw = rng.integers(1, 11, size=SCHEDULED_QUEUES).astype(float)
            weights = tuple(float(w) for w in np.round(100 * raw / raw.sum(), 1))
        links.append(replace(link, policy=policy, queue_sizes=sizes, queue_weights=weights))
    if tos_mix == "uniform":
        tos = rng.integers(SCHEDULED_QUEUES, size=len(state.flows))
    else:
        tos = rng.choice(SCHEDULED_QUEUES, size=len(state.flows), p=rng.dirichlet(np.ones(SCHEDULED_QUEUES)))
    flows = tuple(replace(flow, tos=int(t)) for flow, t in zip(state.flows, tos))
    counts = {p: sum(lk.policy == p for lk in links) for p in POLICIES}
    return replace(state, links=tuple(links), flows=flows), counts


def make_sample(config: DatasetConfig, index: int) -> Sample:
    """Draw state ``index`` and label it with the simulator."""
    state, meta = make_state(config, index)
    return label_state(state, meta, config.packets_per_flow)


def label_state(state: NetworkState, meta: dict, packets_per_flow: float) -> Sample:
    """``state`` labelled by the simulator (seed ``meta["sim_seed"]``); ``meta`` gains its timing."""
    result = simulate(state, seed=meta["sim_seed"], packets_per_flow=packets_per_flow)
    labels = {name: getattr(result, name) for name in LABELS}
    labels.update({"utilization": result.utilization, "occupancy": result.occupancy, "link_drops": result.link_drops})
    meta["sim_wall_s"] = round(result.wall_s, 3)
    meta["packet_hops"] = result.packet_hops
    return Sample(state, labels, meta)


def write_samples(directory, samples: list[Sample], shard_size: int = 10) -> None:
    """Write ``samples`` as a dataset directory (shards only, no manifest) that training can read;
    each sample's ``meta["index"]`` decides whether it is held out for validation."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    for shard, first in enumerate(range(0, len(samples), shard_size)):
        _write_shard(shard_path(directory, shard), [_member(sample) for sample in samples[first:first + shard_size]])


def shard_path(directory: Path, shard: int) -> Path:
    return Path(directory) / f"shard-{shard:05d}.jsonl.gz"


def generate_shard(config: DatasetConfig, shard: int, directory: Path) -> int:
    """Write shard ``shard`` of the dataset (and its timings); returns the number of samples in it.
    It depends only on its arguments."""
    done = [(index, sample_member(config, index)) for index in shard_indices(config, shard)]
    _store_shard(directory, shard, done)
    return len(done)


def shard_indices(config: DatasetConfig, shard: int) -> range:
    first = shard * config.shard_size
    return range(first, min(first + config.shard_size, config.samples))


def sample_member(config: DatasetConfig, index: int) -> tuple[bytes, float]:
    """Sample ``index`` as its part of a shard, and the simulator's wall time for it (s). The part is
    compressed where the sample was made, so a Ray worker, not the process writing the shards, pays
    for it."""
    sample = make_sample(config, index)
    wall = sample.meta.pop("sim_wall_s")
    return _member(sample), wall


def _member(sample: Sample) -> bytes:
    """One sample as a JSON line in a gzip member of its own. A shard is its samples' members in index
    order, which gzip readers see as one stream of lines. No time or file name goes into the header,
    so the bytes depend on the sample alone."""
    return gzip.compress((json.dumps(_sample_record(sample)) + "\n").encode(), SHARD_COMPRESSION, mtime=0)


def _store_shard(directory: Path, shard: int, done: list[tuple[int, tuple[bytes, float]]]) -> None:
    """Write shard ``shard`` from its samples' ``(index, (member, wall))`` in index order, and their timings."""
    _write_shard(shard_path(directory, shard), [member for _, (member, _) in done])
    _append_timings(directory, [index for index, _ in done], [wall for _, (_, wall) in done])


def _write_shard(target: Path, members: list[bytes]) -> None:
    """Write a shard atomically: readers and resumed runs never see half a file."""
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    tmp.write_bytes(b"".join(members))
    tmp.replace(target)


def _append_timings(directory: Path, indices, walls) -> None:
    with open(Path(directory) / TIMINGS, "a") as out:
        out.writelines(json.dumps({"index": i, "sim_wall_s": w}) + "\n" for i, w in zip(indices, walls))


def read_timings(directory) -> dict[int, float]:
    """The simulator's wall time per sample index (s) of a dataset directory; empty when none was kept."""
    path = Path(directory) / TIMINGS
    if not path.exists():
        return {}
    timings = {}
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
            timings[int(record["index"])] = float(record["sim_wall_s"])
        except (json.JSONDecodeError, KeyError, TypeError, ValueError):
            continue  # a line cut short by an interrupted run
    return timings


def generate(config: DatasetConfig, directory, workers: int | None = None, progress: bool = True,
             address: str | None = None) -> dict:
    """Generate (or resume) a dataset in ``directory``: in this process with one worker, else as Ray tasks on
    ``workers`` local processes (default: all cores) or, given ``address``, on that Ray cluster.

    Samples are farmed out one by one (so the progress bar moves per sample) and each shard is
    written, its samples in index order, as soon as all of them are in.
    """
    config.check()
    directory = Path(directory)
    if directory.exists() and not directory.is_dir():
        raise StateError(f"{directory}: exists and is not a directory")
    created = not directory.exists()
    directory.mkdir(parents=True, exist_ok=True)
    new_manifest = _check_manifest(directory, config)
    try:
        return _generate_into(config, directory, workers, progress, address)
    except BaseException:
        if new_manifest and not any(directory.glob("shard-*.jsonl.gz")):  # nothing made: leave no trace
            (directory / MANIFEST).unlink(missing_ok=True)
            (directory / TIMINGS).unlink(missing_ok=True)
            if created and not any(directory.iterdir()):
                directory.rmdir()
        raise


def _generate_into(config: DatasetConfig, directory: Path, workers: int | None, progress: bool,
                   address: str | None) -> dict:
    for s in range(config.shards):
        if shard_path(directory, s).exists():
            _check_shard(shard_path(directory, s))
    todo = [s for s in range(config.shards) if not shard_path(directory, s).exists()]
    indices = [i for s in todo for i in shard_indices(config, s)]
    parallel = (workers or os.cpu_count() or 1) > 1 and len(indices) > 1
    engine = "ray" if address is not None or parallel else "local"
    started = time.perf_counter()
    from tqdm import tqdm

    bar = tqdm(total=config.samples, initial=config.samples - len(indices), unit="sample",
               disable=not progress, desc=f"dataset {directory.name}")
    if engine == "ray":
        from twin.data.ray_engine import ray_map

        results = ((indices[i], r) for i, r in ray_map(sample_member, [(config, i) for i in indices], workers, address))
    else:
        results = ((index, sample_member(config, index)) for index in indices)
    pending: dict[int, dict[int, tuple[bytes, float]]] = {}
    for index, result in results:
        shard = index // config.shard_size
        pending.setdefault(shard, {})[index] = result
        if len(pending[shard]) == len(shard_indices(config, shard)):
            _store_shard(directory, shard, sorted(pending.pop(shard).items()))
        bar.update(1)
    bar.close()
    wall = time.perf_counter() - started
    return {"directory": str(directory), "samples": config.samples, "written": len(indices),
            "skipped": config.samples - len(indices), "engine": engine, "wall_s": round(wall, 2),
            "samples_per_hour": round(3600 * len(indices) / wall) if indices else None}


def iter_samples(directory) -> Iterator[Sample]:
    """Every sample of a dataset directory, shard by shard; ``meta["sim_wall_s"]`` from its timings
    where they were kept."""
    directory = Path(directory)
    if not directory.is_dir():
        raise StateError(f"{directory}: {'not a directory' if directory.exists() else 'no such directory'} "
                         "(a dataset is a directory of shards made by 'ndt dataset generate')")
    shards = sorted(directory.glob("shard-*.jsonl.gz"))
    if not shards:
        raise StateError(f"{directory}: no dataset shards (shard-*.jsonl.gz); run 'ndt dataset generate' first")
    timings = read_timings(directory)
    for path in shards:
        for sample in read_shard(path):
            if sample.meta.get("index") in timings:
                sample.meta["sim_wall_s"] = timings[sample.meta["index"]]
            yield sample


def read_shard(path) -> list[Sample]:
    """The samples of one shard file; a damaged file raises StateError naming it."""
    try:
        with gzip.open(path, "rt") as lines:
            return [_sample_from_record(json.loads(line)) for line in lines]
    except KeyError as exc:
        raise StateError(f"{path}: unreadable shard (a sample without its field {exc})") from None
    except (OSError, EOFError, UnicodeDecodeError, json.JSONDecodeError, TypeError, AttributeError) as exc:
        raise StateError(f"{path}: unreadable shard ({exc})") from None


def _sample_record(sample: Sample) -> dict:
    labels = {k: [None if not np.isfinite(x) else float(x) for x in v] for k, v in sample.labels.items()}
    return {"state": sample.state.to_dict(), "labels": labels, "meta": sample.meta}


def _sample_from_record(record: dict) -> Sample:
    labels = {k: np.array([np.nan if x is None else x for x in v], dtype=float) for k, v in record["labels"].items()}
    return Sample(NetworkState.from_dict(record["state"]), labels, record["meta"])


def _check_shard(path: Path) -> None:
    """Refuse to resume over a shard whose first sample cannot be read (StateError naming it). Shards are
    written whole, so this catches files put there by other means at the cost of one sample each."""
    try:
        with gzip.open(path, "rt") as lines:
            record = json.loads(next(lines))
        if not isinstance(record, dict) or not {"state", "labels", "meta"} <= record.keys():
            raise ValueError("its first line is not a sample")
    except (OSError, EOFError, StopIteration, UnicodeDecodeError, ValueError) as exc:
        raise StateError(f"{path}: damaged shard ({exc or 'empty'}); delete it to have it made again") from None


def _check_manifest(directory: Path, config: DatasetConfig) -> bool:
    """Check the directory's settings against ``config``, or write them; True when written now."""
    manifest = directory / MANIFEST
    wanted = asdict(config)
    if manifest.exists():
        try:
            existing = json.loads(manifest.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise StateError(f"{manifest}: not a readable dataset manifest ({exc}); use another directory") from None
        if not isinstance(existing, dict):
            raise StateError(f"{manifest}: not a dataset manifest (a JSON object); use another directory")
        diff = [f.name for f in fields(config) if existing.get(f.name, f.default) != wanted[f.name]]
        if diff:
            raise StateError(
                f"{directory} holds a dataset made with other settings ({', '.join(diff)} differ); "
                "use another directory or the same settings to resume"
            )
        return False
    manifest.write_text(json.dumps(wanted, indent=1))
    return True


@lru_cache(maxsize=4)
def _real_topologies(min_nodes: int, max_nodes: int) -> tuple[str, ...]:
    """topohub keys (Topology Zoo, SNDlib) of connected topologies with a node count in range."""
    import importlib.resources

    import topohub.data

    keys = []
    root = importlib.resources.files(topohub.data)
    for group in ("sndlib", "topozoo"):
        for entry in sorted(root.joinpath(group).iterdir(), key=lambda e: e.name):
            if not entry.name.endswith(".json"):
                continue
            key = f"{group}/{entry.name[:-5]}"
            graph = _topohub_graph(key)
            if min_nodes <= graph.number_of_nodes() <= max_nodes and nx.is_connected(graph):
                keys.append(key)
    return tuple(keys)


@lru_cache(maxsize=256)
def _topohub_graph(key: str) -> nx.Graph:
    import topohub

    graph = nx.Graph(nx.node_link_graph(topohub.get(key), edges="edges"))
    graph.remove_edges_from(nx.selfloop_edges(graph))
    return graph


def _fail_links(graph: nx.Graph, count: int, rng: np.random.Generator) -> list[list[int]]:
    """Remove up to ``count`` edges that are not bridges (the graph stays connected)."""
    failed = []
    for _ in range(count):
        candidates = sorted(set(graph.edges) - {tuple(sorted(e)) for e in nx.bridges(graph)}
                            - {tuple(reversed(sorted(e))) for e in nx.bridges(graph)})
        if not candidates:
            break
        u, v = candidates[int(rng.integers(len(candidates)))]
        graph.remove_edge(u, v)
        failed.append([int(u), int(v)])
    return failed
