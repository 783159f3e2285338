"""Can any search beat NES + QT's routing where NES + twin ties it? (docs/optimizer.md, Figure 4 on Abilene)

    .venv/bin/python scripts/simulator_search_check.py [EVALUATIONS [LOAD ...]]

For SNDlib Abilene at each busiest-link load (default 0.5 1.0 1.15) as in ``ndt bench optimize``:
NES + QT's weights (seed 0), then the same optimizer (NES, then descent) driven by the packet-level
simulator itself — ground truth instead of a model, seed 1, 2,000 packets per average flow —
starting from those weights and, separately, from shortest path, on at most EVALUATIONS distinct
routings each (default 400). The answers are then simulated with fresh seeds (4–6), so that the
search's own noise-fitting does not count. Prints one JSON line per load (delays in ms).
"""

import json
import sys
import time

import numpy as np

from optimizer.bench import bench_intent, real_state
from optimizer.search import optimize
from twin.models.registry import SimulatorPredictor, get_predictor
from twin.state.metrics import mean_delay
from twin.state.traffic import scale_to_utilization


def main(evaluations: int, loads: list[float]) -> None:
    judges = [SimulatorPredictor(packets_per_flow=2000, seed=4 + run) for run in range(3)]
    base = real_state("sndlib/abilene")
    base = base.with_weights(np.ones(len(base.links)))
    intent = bench_intent()
    oracle_intent = bench_intent(evaluations, time_limit_s=3600)
    for load in loads:
        state = scale_to_utilization(base, load)
        by_qt = optimize(state, intent, get_predictor("qt"), seed=0).weights
        started = time.perf_counter()
        searches = [optimize(start, oracle_intent, SimulatorPredictor(2000, seed=1), seed=0)
                    for start in (state.with_weights(by_qt), state)]
        answers = [state.with_weights(w) for w in (by_qt, *(s.weights for s in searches))]
        judged = np.mean([[mean_delay(s, d) for s, d in zip(answers, judge.predict_delays(answers))]
                          for judge in judges], axis=0)
        print(json.dumps({"load": load, "nes_qt_ms": round(1e3 * judged[0], 4),
                          "simulator_search_from_nes_qt_ms": round(1e3 * judged[1], 4),
                          "simulator_search_from_shortest_path_ms": round(1e3 * judged[2], 4),
                          "same_routing_as_nes_qt": [a.routing_key == answers[0].routing_key for a in answers[1:]],
                          "routings_simulated": [s.predicted for s in searches],
                          "search_s": round(time.perf_counter() - started, 1)}), flush=True)


if __name__ == "__main__":
    args = sys.argv[1:]
    main(int(args[0]) if args else 400, [float(x) for x in args[1:]] or [0.5, 1.0, 1.15])
