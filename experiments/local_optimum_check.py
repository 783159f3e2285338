"""Is a routing a local optimum of the simulator itself? (docs/optimizer.md, Figure 4 on Abilene)

    .venv/bin/python scripts/local_optimum_check.py [LOAD ...]

For SNDlib Abilene at each busiest-link load (default 0.5 1.0 1.15) as in ``ndt bench optimize``:
NES + QT's weights and NES + twin's (QT screening) with seed 0, then every single-weight move of
NES + QT's weights (one lower, one higher, the bounds 1 and 20), each distinct routing simulated
with the bench's three seeds. Prints one JSON line per load: the simulated mean delay (ms) of both
answers, of the best move, and how many moves simulate lower than NES + QT's routing.
"""

import json
import sys
import time

import numpy as np

from optimizer.bench import bench_intent, real_state
from optimizer.local import neighbours
from optimizer.search import optimize
from twin.models.registry import SimulatorPredictor, get_predictor
from twin.state.metrics import mean_delay
from twin.state.traffic import scale_to_utilization


def main(loads: list[float]) -> None:
    simulators = [SimulatorPredictor(packets_per_flow=2000, seed=1 + run) for run in range(3)]
    qt, twin = get_predictor("qt"), get_predictor("routenet")
    base = real_state("sndlib/abilene")
    base = base.with_weights(np.ones(len(base.links)))
    intent = bench_intent()
    for load in loads:
        state = scale_to_utilization(base, load)
        by_qt = optimize(state, intent, qt, seed=0).weights
        by_twin = optimize(state, intent, twin, seed=0, screen=qt).weights
        candidates = [state.with_weights(w) for w in [by_qt, by_twin, *neighbours(by_qt, 1, 20)]]
        distinct = list({c.routing_key: c for c in candidates}.values())
        started = time.perf_counter()
        simulated = np.mean([[mean_delay(c, d) for c, d in zip(distinct, sim.predict_delays(distinct))]
                             for sim in simulators], axis=0)
        of = dict(zip((c.routing_key for c in distinct), simulated))
        delays = np.array([of[c.routing_key] for c in candidates])
        print(json.dumps({"load": load, "nes_qt_ms": round(1e3 * delays[0], 4), "nes_twin_ms": round(1e3 * delays[1], 4),
                          "best_move_ms": round(1e3 * delays[2:].min(), 4), "distinct_routings": len(distinct),
                          "moves_lower": int((delays[2:] < delays[0]).sum()),
                          "simulate_s": round(time.perf_counter() - started, 1)}), flush=True)


if __name__ == "__main__":
    main([float(x) for x in sys.argv[1:]] or [0.5, 1.0, 1.15])
