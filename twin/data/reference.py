"""Our simulator against the reference data: every usable sample of a datanet directory simulated
and its per-path mean delay, jitter and loss compared with the reference simulator's results."""

from __future__ import annotations

import itertools
import math
import sys
import time

import numpy as np
from tqdm import tqdm

from twin.data.datanet_reader import PACKETS_PER_FLOW, DatanetSample, read_datanet
from twin.sim.simulator import simulate
from twin.state.errors import StateError


def compare_with_reference(directory, limit: int | None = None, seed: int = 0, duration: float | None = None,
                           warmup: float | None = None, packets_per_flow: float = PACKETS_PER_FLOW,
                           progress: bool = False) -> dict:
    """Simulate every usable sample of a datanet directory and compare per-path mean delay with its results.

    Returns ``samples``, ``paths`` (labelled paths compared), ``mape_vs_reference``
    (mean over those paths of |ours − reference| / reference, a fraction),
    ``jitter_mape_vs_reference`` (the same for the delay variance, over the paths
    whose reference jitter is positive), ``by_policy`` (delay and jitter MAPE per
    sample kind: ``fifo``, or the set of policies of its ports such as ``sp+wfq``),
    ``p15``/``p85``/``median`` of the per-sample MAPE, ``bias`` (mean signed
    relative error), ``loss_abs_error`` (mean |loss difference|), ``undelivered``
    (labelled paths our run delivered nothing on, left out of the MAPE),
    ``wall_s``, ``s_per_sample`` (reading included), ``sim_s_per_sample`` (the
    event loop alone) and ``packet_hops_per_s``. Sample k runs with seed ``seed + k``;
    ``duration``/``warmup`` (s) default to ``packets_per_flow`` packets per flow.
    """
    if limit is not None and limit < 1:
        raise StateError(f"limit must be at least 1, got {limit}")
    started = time.perf_counter()
    signed, jitter_err, loss_err, per_sample, kinds = [], [], [], [], []
    undelivered = hops = 0
    sim_wall = 0.0
    samples = itertools.islice(read_datanet(directory), limit)
    with tqdm(total=limit, unit="sample", file=sys.stderr, disable=not progress, desc="simulating") as bar:
        for k, sample in enumerate(samples):
            result = simulate(sample.state, duration=duration, warmup=warmup, seed=seed + k,
                              packets_per_flow=packets_per_flow)
            hops += result.packet_hops
            sim_wall += result.wall_s
            rel, jitter_rel, loss_diff, missed = _path_errors(sample, result)
            signed.append(rel)
            jitter_err.append(np.abs(jitter_rel))
            kinds.append("+".join(sorted({link.policy for link in sample.state.links})))
            loss_err.append(loss_diff)
            undelivered += missed
            per_sample.append(float(np.mean(np.abs(rel))) if len(rel) else math.nan)
            bar.update(1)
            bar.set_postfix(mape=f"{np.mean(np.abs(np.concatenate(signed))):.4f}")
    if not per_sample:
        raise StateError(f"{directory}: no usable samples (every stability.txt line lacks ';OK;')")
    wall = time.perf_counter() - started
    all_errors = np.abs(np.concatenate(signed))
    by_policy = []
    for kind in sorted(set(kinds)):
        mine = [i for i, k in enumerate(kinds) if k == kind]
        by_policy.append({"policy": kind, "samples": len(mine),
                          "mape_vs_reference": float(np.mean(np.abs(np.concatenate([signed[i] for i in mine])))),
                          "jitter_mape_vs_reference": _mean([jitter_err[i] for i in mine])})
    return {
        "samples": len(per_sample),
        "paths": int(len(all_errors)),
        "mape_vs_reference": float(np.mean(all_errors)),
        "jitter_mape_vs_reference": _mean(jitter_err),
        "by_policy": by_policy,
        "p15": float(np.nanpercentile(per_sample, 15)),
        "median": float(np.nanpercentile(per_sample, 50)),
        "p85": float(np.nanpercentile(per_sample, 85)),
        "bias": float(np.mean(np.concatenate(signed))),
        "loss_abs_error": float(np.mean(np.concatenate(loss_err))),
        "undelivered": undelivered,
        "packets_per_flow": packets_per_flow if duration is None else None,
        "duration": duration,
        "seed": seed,
        "wall_s": round(wall, 3),
        "s_per_sample": round(wall / len(per_sample), 3),
        "sim_s_per_sample": round(sim_wall / len(per_sample), 3),
        "packet_hops_per_s": round(hops / max(sim_wall, 1e-9)),
    }


def _mean(errors: list[np.ndarray]) -> float | None:
    """The mean of the pooled errors, None without any."""
    pooled = np.concatenate(errors)
    return float(np.mean(pooled)) if len(pooled) else None


def _path_errors(sample: DatanetSample, result) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """On the labelled paths our run delivered packets on: signed relative delay error, signed relative
    jitter error (where the reference jitter is positive) and absolute loss difference; plus the number
    of labelled paths it delivered nothing on."""
    delivered = np.isfinite(result.delay)
    use = sample.valid & delivered
    rel = (result.delay[use] - sample.delay[use]) / sample.delay[use]
    jittered = use & (np.nan_to_num(sample.jitter) > 0)
    jitter_rel = (result.jitter[jittered] - sample.jitter[jittered]) / sample.jitter[jittered]
    return rel, jitter_rel, np.abs(result.loss[use] - sample.loss[use]), int(np.sum(sample.valid & ~delivered))
