"""Compare ways of fitting the emulation correction on stored measurements (docs/emulation.md).

    .venv/bin/python scripts/calibration_fits.py CALIBRATE_JSON [DEMO_JSON ...]

CALIBRATE_JSON is what ``ndt calibrate --json`` printed (it keeps every state's weights and per-flow
measured delays); DEMO_JSON files are ``ndt demo --json`` reports of the same topology. For each
fit of the walk-free correction (queueing, per switch, per path; the walk's columns are left out)
— least relative squares or least MAPE, with or without the per-path constant — prints the
in-sample and leave-one-load-out MAPE on the calibration states and the MAPE on each demo's final
measurement, using the twin ``ndt calibrate`` tuned (its files beside the shipped or written
correction). With two demos or more, also the correction fitted to each demo alone (the best this
correction can do on that measurement) and to the other demos (fitted on other bring-ups of the
live network).
"""

import json
import sys

import numpy as np
from scipy.optimize import nnls

from mininet_topos.topologies import emulation_state
from mininet_topos.traffic import MIN_PACKETS, reliable_from_report
from twin.calibration import correction as cal
from twin.models.inference import load_predictor
from twin.state.metrics import mape


def fit(twin, states, measured, method, columns):
    best = (np.inf, None)
    for scale in cal.CAPACITY_SCALES:
        matrices = [x[:, :3] for x in cal.design_matrices(states, twin, float(scale))]
        relative = np.concatenate([x[np.isfinite(m)] / m[np.isfinite(m), None] for x, m in zip(matrices, measured)])
        coef = np.zeros(3)
        if method == "least squares":
            coef[columns] = nnls(relative[:, columns], np.ones(len(relative)))[0]
        else:
            coef[columns] = cal.least_relative_deviation(relative[:, columns])
        error = np.mean([mape(x @ coef, m) for x, m in zip(matrices, measured)])
        if error < best[0]:
            best = (error, (scale, coef))
    return best[1]


def errors(twin, states, measured, params):
    scale, coef = params
    return [mape(x[:, :3] @ coef, m) for x, m in zip(cal.design_matrices(states, twin, float(scale)), measured)]


def main(calibration_json: str, demo_jsons: list[str]) -> None:
    report = json.load(open(calibration_json))
    stem = cal.tuned_model_stem(cal.find(report["model"]))
    twin = load_predictor(stem.name, stem.parent)
    base = emulation_state(report["topology"], 1.0, seed=0)
    rows = report["measurements"]
    states = [base.scaled(r["load"]).with_weights(np.array(r["weights"])) for r in rows]
    measured = [np.where(np.array(r["received"]) >= MIN_PACKETS, np.array(r["measured_s"], dtype=float), np.nan)
                for r in rows]
    loads = [r["load"] for r in rows]
    demos = []
    for path in demo_jsons:
        demo = json.load(open(path))
        state = emulation_state(demo["topology"], demo["load"], seed=0).with_weights(np.array(demo["final_weights"]))
        demos.append((state, reliable_from_report(demo["after"]["paths"])))
    for method in ("least squares", "least MAPE"):
        for columns, label in (([0, 1, 2], "per switch + per path"), ([0, 1], "per switch only")):
            params = fit(twin, states, measured, method, columns)
            held_out = []
            for load in sorted(set(loads)):
                train = [i for i, x in enumerate(loads) if x != load]
                test = [i for i, x in enumerate(loads) if x == load]
                trained = fit(twin, [states[i] for i in train], [measured[i] for i in train], method, columns)
                held_out += errors(twin, [states[i] for i in test], [measured[i] for i in test], trained)
            demo_errors = [errors(twin, [s], [m], params)[0] for s, m in demos]
            scale, coef = params
            print(json.dumps({"fit": method, "terms": label, "capacity_scale": float(scale),
                              "queue_scale": round(float(coef[0]), 3), "per_hop_us": round(1e6 * coef[1]),
                              "base_us": round(1e6 * coef[2]),
                              "mape_in_sample": round(float(np.mean(errors(twin, states, measured, params))), 3),
                              "mape_leave_one_load_out": round(float(np.mean(held_out)), 3),
                              "mape_demos": [round(float(e), 3) for e in demo_errors]}), flush=True)
    if len(demos) > 1:
        states_d, measured_d = [s for s, _ in demos], [m for _, m in demos]
        own = [errors(twin, [s], [m], fit(twin, [s], [m], "least MAPE", [0, 1, 2]))[0] for s, m in demos]
        others = []
        for i in range(len(demos)):
            rest = [j for j in range(len(demos)) if j != i]
            params = fit(twin, [states_d[j] for j in rest], [measured_d[j] for j in rest], "least MAPE", [0, 1, 2])
            others.append(errors(twin, [states_d[i]], [measured_d[i]], params)[0])
        print(json.dumps({"fit": "least MAPE on the demos themselves", "terms": "per switch + per path",
                          "mape_demos_each_fitted_to_itself": [round(float(e), 3) for e in own],
                          "mape_demos_fitted_to_the_other_demos": [round(float(e), 3) for e in others]}), flush=True)


if __name__ == "__main__":
    if len(sys.argv) < 2:
        raise SystemExit(__doc__)
    main(sys.argv[1], sys.argv[2:])
