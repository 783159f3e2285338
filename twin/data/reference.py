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

LOSS_BUCKETS = ((0.0, 0.01), (0.01, 0.1), (0.1, math.inf))  # reference loss ranges of by_reference_loss


def compare_with_reference(directory, limit: int | None = None, seed: int = 0, duration: float | None = None,
                           warmup: float | None = None, packets_per_flow: float = PACKETS_PER_FLOW,
                           progress: bool = False) -> dict:
    """Simulate every usable sample of a datanet directory and compare per-path mean delay with its results.

    Returns ``samples``, ``paths`` (labelled paths compared), ``mape_vs_reference``
    (mean over those paths of |ours − reference| / reference, a fraction),
    ``jitter_mape_vs_reference`` (the same for the delay variance, over the paths
    whose reference jitter is positive), ``by_policy`` (delay and jitter MAPE per
    sample kind: ``fifo``, or the set of policies of its ports such as ``sp+wfq``),
    ``by_reference_loss`` (the same for paths whose reference loss is below 1 %,
    1–10 % and from 10 %),
    ``p15``/``p85``/``median`` of the per-sample MAPE, ``bias`` (mean signed
    relative error), ``loss_abs_error`` (mean |loss difference|), ``undelivered``
    (labelled paths our run delivered nothing on, left out of the MAPE),
    ``wall_s``, ``s_per_sample`` (reading included), ``sim_s_per_sample`` (the
    event loop alone) and ``packet_hops_per_s``. Sample k runs with seed ``seed + k`` and counts each
    packet's delay as at most the reference's limit (``DatanetSample.delay_limit``: 20 time units in gnnet2020);
    ``duration``/``warmup`` (s) default to ``packets_per_flow`` packets per flow.
    """
    if limit is not None and limit < 1:
        raise StateError(f"limit must be at least 1, got {limit}")
    started = time.perf_counter()
    signed, jitter_err, ref_loss, loss_err, per_sample, kinds = [], [], [], [], [], []
    undelivered = hops = 0
    sim_wall = 0.0
    samples = itertools.islice(read_datanet(directory), limit)
    with tqdm(total=limit, unit="sample", file=sys.stderr, disable=not progress, desc="simulating") as bar:
        for k, sample in enumerate(samples):
            result = simulate(sample.state, duration=duration, warmup=warmup, seed=seed + k,
                              packets_per_flow=packets_per_flow, max_delay=sample.delay_limit)
            hops += result.packet_hops
            sim_wall += result.wall_s
            rel, jitter_rel, loss, loss_diff, missed = _path_errors(sample, result)
            signed.append(rel)
            jitter_err.append(np.abs(jitter_rel))
            ref_loss.append(loss)
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
    all_jitter, all_loss = np.concatenate(jitter_err), np.concatenate(ref_loss)
    by_policy = []
    for kind in sorted(set(kinds)):
        mine = [i for i, k in enumerate(kinds) if k == kind]
        by_policy.append({"policy": kind, "samples": len(mine),
                          **_mapes(np.abs(np.concatenate([signed[i] for i in mine])),
                                   np.concatenate([jitter_err[i] for i in mine]))})
    by_loss = []
    for low, high in LOSS_BUCKETS:
        mine = (all_loss >= low) & (all_loss < high)
        by_loss.append({"reference_loss_from": low, "reference_loss_below": high, "paths": int(mine.sum()),
                        **_mapes(all_errors[mine], all_jitter[mine])})
    return {
        "samples": len(per_sample),
        "paths": int(len(all_errors)),
        "mape_vs_reference": float(np.mean(all_errors)),
        "jitter_mape_vs_reference": _mapes(all_errors, all_jitter)["jitter_mape_vs_reference"],
        "by_policy": by_policy,
        "by_reference_loss": by_loss,
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


def _mapes(delay_errors: np.ndarray, jitter_errors: np.ndarray) -> dict:
    """Delay and jitter MAPE (fractions) of absolute relative errors; jitter errors are NaN where the
    reference jitter is 0; None without errors."""
    jitter = jitter_errors[np.isfinite(jitter_errors)]
    return {"mape_vs_reference": float(np.mean(delay_errors)) if len(delay_errors) else None,
            "jitter_mape_vs_reference": float(np.mean(jitter)) if len(jitter) else None}


def _path_errors(sample: DatanetSample, result) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, int]:
    """On the labelled paths our run delivered packets on: signed relative delay error, signed relative
    jitter error (NaN where the reference jitter is 0), the reference loss and the absolute loss
    difference; plus the number of labelled paths it delivered nothing on."""
    delivered = np.isfinite(result.delay)
    use = sample.valid & delivered
    rel = (result.delay[use] - sample.delay[use]) / sample.delay[use]
    with np.errstate(invalid="ignore", divide="ignore"):
        jitter_rel = np.where(sample.jitter[use] > 0, (result.jitter[use] - sample.jitter[use]) / sample.jitter[use],
                              np.nan)
    return (rel, jitter_rel, sample.loss[use], np.abs(result.loss[use] - sample.loss[use]),
            int(np.sum(sample.valid & ~delivered)))
