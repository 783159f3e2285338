"""How good an answer each search variant reaches, scored by the twin (docs/optimizer.md, screening).

    .venv/bin/python scripts/search_variants.py [alone|qt|screened|pop2 ...]

For synthetic-25 and SNDlib Abilene at busiest-link load 1.0 and optimizer seeds 0–2, prints one
JSON line per run: the twin's mean delay (ms) of the weights the variant returns, its wall time and
how many distinct routings it scored. ``alone``: NES + descent on the twin; ``qt``: the same on QT;
``screened``: QT screens, then the twin (the default of ``ndt optimize``); ``pop2``: the twin alone
with twice the default population.
"""

import json
import sys
import time

import numpy as np

from optimizer.bench import bench_intent, real_state, synthetic_state
from optimizer.nes import default_population
from optimizer.search import optimize
from twin.models.registry import get_predictor
from twin.state.metrics import mean_delay
from twin.state.traffic import scale_to_utilization


def main(variants: list[str]) -> None:
    qt, twin = get_predictor("qt"), get_predictor("routenet")
    intent = bench_intent()
    for topology in ("synthetic-25", "sndlib/abilene"):
        base = synthetic_state() if topology == "synthetic-25" else real_state(topology)
        state = scale_to_utilization(base.with_weights(np.ones(len(base.links))), 1.0)
        for variant in variants:
            for seed in (0, 1, 2):
                started = time.perf_counter()
                if variant == "qt":
                    result = optimize(state, intent, qt, seed=seed)
                elif variant == "screened":
                    result = optimize(state, intent, twin, seed=seed, screen=qt)
                elif variant == "pop2":
                    result = optimize(state, intent, twin, seed=seed, population=2 * default_population(len(state.links)))
                elif variant == "alone":
                    result = optimize(state, intent, twin, seed=seed)
                else:
                    raise SystemExit(f"unknown variant {variant!r}: choose alone, qt, screened or pop2")
                wall = time.perf_counter() - started
                delays = twin.predict_delays([state.with_weights(result.weights)])[0]
                print(json.dumps({"variant": variant, "topology": topology, "seed": seed,
                                  "twin_mean_delay_ms": round(1e3 * mean_delay(state, delays), 4),
                                  "wall_s": round(wall, 1), "distinct_routings": result.predicted}), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:] or ["alone", "qt", "screened", "pop2"])
