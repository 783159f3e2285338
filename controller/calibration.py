"""Calibrating the twin to the network it runs beside: measure a handful of states (loads ×
routings), each in a freshly brought-up emulated network, and fit the twin's correction
(:mod:`twin.calibration.correction`) to the measured per-path delays."""

from __future__ import annotations

import shutil
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np

from controller.api.client import ControllerClient
from mininet_topos.network import EmulationError
from mininet_topos.sandbox import validate
from mininet_topos.topologies import emulation_state
from mininet_topos.traffic import MIN_PACKETS
from optimizer.intent import Intent
from optimizer.search import optimize
from twin.calibration import correction as cal
from twin.calibration.finetune import fine_tune
from twin.models.inference import load_predictor
from twin.models.registry import LEARNED, get_predictor
from twin.state.metrics import mape
from twin.state.model import NetworkState


def calibration_weights(state: NetworkState, routings: int, seed: int = 0) -> list[tuple[str, np.ndarray]]:
    """(label, weights) of the routings ``ndt calibrate`` measures ``state`` under: shortest path; the
    routing the optimizer picks with the queueing-theory model (the kind of routing the loop
    validates and pushes: load spread, long detours); then random weights 1–5, ``routings`` in all."""
    unit = np.ones(len(state.links))
    out = [("shortest path", unit)]
    if routings > 1:
        found = optimize(state.with_weights(unit), Intent(max_evaluations=1500, time_limit_s=10.0),
                         get_predictor("qt"), seed=seed, allow_infeasible=True)
        out.append(("optimized (QT)", np.asarray(found.weights, dtype=float)))
    rng = np.random.default_rng(seed)
    out += [("random weights", rng.integers(1, 6, len(state.links)).astype(float)) for _ in range(routings - 2)]
    return out


def calibrate(topology: str, loads: list[float], routings: int, duration: float, model: str, out: Path,
              tune_samples: int, tune_minutes: float, seed: int = 0, log=print) -> dict:
    """Fine-tune the learned twin ``model`` on ``tune_samples`` simulated states of ``topology`` (0: no
    tuning), then measure ``topology`` at each of ``loads`` under ``routings`` routings for
    ``duration`` s each, every state in a freshly brought-up emulated network, fit the correction,
    write it to ``out`` and return the report (MAPEs in-sample and leave-one-load-out, with and
    without the port walk, and per measured state)."""
    general = get_predictor(model)
    base = emulation_state(topology, 1.0, seed=seed)
    started = time.monotonic()
    tuned = tune_samples > 0 and model in LEARNED
    predictor = general
    if tuned:
        with tempfile.TemporaryDirectory(prefix="ndt-tune-") as work:
            best = fine_tune(base, model, Path(work), tune_samples, tune_minutes, seed,
                                 log=log)
            stem = cal.tuned_model_stem(out)
            stem.parent.mkdir(parents=True, exist_ok=True)
            for suffix in (".weights.h5", ".json"):
                shutil.copyfile(f"{best}{suffix}", f"{stem}{suffix}")
        predictor = load_predictor(stem.name, stem.parent)
    samples = []  # (load, state, raw prediction, measured, walk)
    total = len(loads) * routings
    for load in loads:
        state = base.scaled(load)
        for label, weights in calibration_weights(state, routings, seed):
            log(f"calibrate: state {len(samples) + 1}/{total}: load {load:g}, {label}, {duration:g} s "
                f"in a fresh network")
            for attempt in (1, 2):
                try:
                    v = validate(state, [weights], predictor, duration=duration, seed=seed, prefix="c", connect=ControllerClient,
                                 tag=f"calibrate-{len(samples) + 1}-{attempt}")[0]
                    break
                except EmulationError as exc:
                    if attempt == 2:
                        raise
                    log(f"calibrate: state {len(samples) + 1}: {exc}; measuring it again in a fresh network")
            samples.append((load, state.with_weights(v.weights), v.predicted, v.measured, v.walk))
    states = [s for _, s, *_ in samples]
    measured = [m.reliable_delay() for _, _, _, m, _ in samples]
    walks = [w for *_, w in samples]
    if any(w is None for w in walks):
        log("calibrate: ovs-vswitchd's port walk could not be read for every state (is strace installed?): "
            "fitting without it")

    def errors(correction, indices, known=True):
        """MAPE per state of ``indices`` under ``correction``, with each state's walk or without."""
        return [mape(cal.CalibratedPredictor(predictor, correction, walks[i] if known else None)
                         .predict_delays([states[i]])[0], measured[i]) for i in indices]

    everything = list(range(len(samples)))
    correction = cal.fit(states, measured, predictor, walks)
    structural = [mape(cal.emulated_delays(s, p, cal.Correction()), m) for s, (_, _, p, _, _), m in
                  zip(states, samples, measured)]
    general_structural = ([mape(cal.emulated_delays(s, p, cal.Correction()), m) for s, p, m in
                           zip(states, general.predict_delays(states), measured)] if tuned else structural)
    raw = [mape(p, m) for (_, _, p, _, _), m in zip(samples, measured)]
    after, after_unknown = errors(correction, everything), errors(correction, everything, known=False)
    held_out, held_out_unknown = [], []
    for load in loads:
        train = [i for i, (l, *_) in enumerate(samples) if l != load] or everything
        test = [i for i, (l, *_) in enumerate(samples) if l == load]
        corr = cal.fit([states[i] for i in train], [measured[i] for i in train], predictor, [walks[i] for i in train])
        held_out += errors(corr, test)
        held_out_unknown += errors(corr, test, known=False)
    noise = [cal.measurement_noise(s, correction, m.duration, m.warmup, MIN_PACKETS) for _, s, _, m, _ in samples]
    rows = [{"load": l, "mean_measured_ms": 1e3 * m.mean_delay(s), "flows": int(np.isfinite(m.reliable_delay()).sum()),
             "raw_mape": r, "structural_mape": st, "after_mape": a, "after_walk_unknown_mape": u, "noise_mape": n,
             "sender_late_p99_ms": 1e3 * m.sender_late_p99, "cpu_busy": m.cpu_busy, "load_average": m.load_average,
             "weights": s.link_arrays["weight"].tolist(), "measured_s": m.delay.tolist(), "received": m.received.tolist(),
             "walk": w.to_dict() if w else None}
            for (l, s, p, m, w), r, st, a, u, n in zip(samples, raw, structural, after, after_unknown, noise)]
    report = {"topology": topology, "model": model, "states": len(samples), "loads": loads,
              "correction": asdict(correction),
              "tuned": tuned, "tune_samples": tune_samples if tuned else 0,
              "mape_general_structural": float(np.mean(general_structural)),
              "mape_before": float(np.mean(raw)), "mape_structural": float(np.mean(structural)),
              "mape_after": float(np.mean(after)), "mape_after_held_out": float(np.mean(held_out)),
              "mape_after_walk_unknown": float(np.mean(after_unknown)),
              "mape_after_held_out_walk_unknown": float(np.mean(held_out_unknown)),
              "mape_perfect_model": float(np.mean(noise)),
              "wall_s": time.monotonic() - started, "measurements": rows, "out": str(out)}
    cal.save(out, correction, {k: report[k] for k in ("topology", "model", "tuned", "states", "loads",
                                                           "mape_general_structural", "mape_before",
                                                           "mape_structural", "mape_after", "mape_after_held_out",
                                                           "mape_after_walk_unknown",
                                                           "mape_after_held_out_walk_unknown",
                                                           "mape_perfect_model")})
    return report
