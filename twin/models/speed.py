"""How fast the twins answer (``ndt eval --speed``): one 300-node all-pairs state, candidate routings per
second, the time and memory of a prediction from 25 to 1,000 nodes, and the speed-up over the
packet simulator on the same states.

Timings are wall clock (s) after one untimed run, the best of ``repeats``; a machine shared with
other jobs makes them upper bounds. Peak memory is the most the prediction's NumPy arrays held at
once (MiB, traced by :mod:`tracemalloc`; the kernels' per-thread scratch is not traced and is a
few KiB).
"""

from __future__ import annotations

import time
import tracemalloc

import numpy as np

from twin.data.dataset import DatasetConfig, make_state
from twin.models.evaluate import BUCKETS, EVAL_SEED
from twin.sim.simulator import simulate

SCALING_NODES = (25, 50, 100, 200, 300, 500, 1000)
SIMULATOR_NODES = (100, 200, 300)
REPEATED_PATHS = 100_000  # states up to this many paths are timed best of 3 (a run under 0.3 s); larger ones once


def all_pairs_state(nodes: int):
    """The seeded evaluation state of ``nodes`` nodes: a random topology, one flow per ordered node pair."""
    config = DatasetConfig(samples=1, min_nodes=nodes, max_nodes=nodes, real_fraction=0.0, seed=EVAL_SEED)
    return make_state(config, 0)[0]


def best_time(run, repeats: int) -> float:
    """The shortest of ``repeats`` timed calls of ``run`` after one untimed call, s."""
    run()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        run()
        times.append(time.perf_counter() - started)
    return min(times)


def peak_mib(run, release=None) -> float:
    """The most memory ``run``'s Python and NumPy allocations held at once, MiB; ``release``, when given,
    is called first to drop buffers a model keeps between calls, so they count."""
    if release is not None:
        release()
    tracemalloc.start()
    try:
        run()
        return tracemalloc.get_traced_memory()[1] / 2**20
    finally:
        tracemalloc.stop()


def speed(models: dict, nodes: int = 300, candidate_nodes: int = 25, candidates: int = 64, repeats: int = 3) -> dict:
    """Inference speed (s): one all-pairs state of ``nodes`` nodes, and candidate routings per second of a
    ``candidate_nodes`` state (random OSPF weight vectors predicted as one batch, features and routing
    included)."""
    big = all_pairs_state(nodes)
    small = all_pairs_state(candidate_nodes)
    rng = np.random.default_rng(EVAL_SEED)
    variants = [small.with_weights(rng.integers(1, 10, len(small.links))) for _ in range(candidates)]
    report = {"nodes": nodes, "paths": len(big.flows), "candidate_nodes": candidate_nodes,
              "candidates_per_batch": candidates}
    for name, model in models.items():
        report[f"{name}_infer_s"] = best_time(lambda: model.predict_delays([big]), repeats)
        batch_s = best_time(lambda: model.predict_delays(variants), repeats)
        report[f"{name}_candidates_per_s"] = candidates / batch_s
    return report


def scaling(twin, others: dict, sizes=SCALING_NODES, progress=None) -> list[dict]:
    """Per size: paths, hops, the ``twin``'s inference time (``infer_s``, after a warm run: the best of 3 up
    to REPEATED_PATHS paths, one run beyond) and peak memory (``peak_mib``) on the all-pairs state, and
    ``{name}_infer_s`` of the ``others`` beside it, timed alike. ``progress(nodes)`` is called after each size."""
    rows = []
    for nodes in sizes:
        state = all_pairs_state(nodes)
        state.flow_links  # routing belongs to the state, not to the prediction
        repeats = 3 if len(state.flows) <= REPEATED_PATHS else 1
        row = {"nodes": nodes, "paths": len(state.flows), "hops": int(sum(map(len, state.flow_links))),
               "infer_s": best_time(lambda: twin.predict_delays([state]), repeats),
               "peak_mib": peak_mib(lambda: twin.predict_delays([state]), getattr(twin, "release_buffers", None))}
        for name, model in others.items():
            row[f"{name}_infer_s"] = best_time(lambda: model.predict_delays([state]), repeats)
        rows.append(row)
        if progress:
            progress(nodes)
    return rows


def labels_packets_per_flow(nodes: int) -> float:
    """Packets per flow the evaluation set simulates a state of ``nodes`` nodes with (its label accuracy)."""
    return next(b.packets_per_flow for b in BUCKETS if b.min_nodes <= nodes <= b.max_nodes)


def versus_simulator(model, sizes=SIMULATOR_NODES, progress=None) -> list[dict]:
    """Per size: the simulator's time to label the all-pairs state (s, one run, at the evaluation set's
    packets per flow), the model's (s, best of 3), and their ratio. ``progress(nodes)`` after each size."""
    rows = []
    for nodes in sizes:
        state = all_pairs_state(nodes)
        packets = labels_packets_per_flow(nodes)
        started = time.perf_counter()
        simulate(state, seed=EVAL_SEED, packets_per_flow=packets)
        sim_s = time.perf_counter() - started
        twin_s = best_time(lambda: model.predict_delays([state]), 3)
        rows.append({"nodes": nodes, "paths": len(state.flows), "packets_per_flow": packets, "sim_s": sim_s,
                     "twin_s": twin_s, "speedup": sim_s / twin_s})
        if progress:
            progress(nodes)
    return rows
