"""Figure 4 of the paper: simulator-measured mean delay of each routing method across traffic intensities."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from optimizer.baselines import fortz_thorup, inverse_capacity_weights, unit_weights
from optimizer.intent import Intent
from optimizer.search import optimize
from twin.models.registry import SimulatorPredictor, get_predictor
from twin.state.metrics import mean_delay
from twin.state.model import NetworkState
from twin.state.traffic import scale_to_utilization

INTENSITIES = (0.5, 0.7, 0.85, 1.0, 1.15)  # busiest-link utilization under shortest-path routing
METHODS = ("sp", "invcap", "fortz_thorup", "nes_qt", "nes_twin_unscreened", "nes_twin")


def synthetic_state(nodes: int = 25, seed: int = 0) -> NetworkState:
    """A power-law topology with mixed capacities, Poisson all-pairs traffic and unit OSPF weights."""
    from twin.data.dataset import DatasetConfig, make_state

    config = DatasetConfig(min_nodes=nodes, max_nodes=nodes, real_fraction=0.0, failure_fraction=0.0,
                           perturbed_fraction=0.0, traffic="poisson", seed=seed)
    state, _ = make_state(config, 0)
    return state.with_weights(np.ones(len(state.links)))


def real_state(key: str = "sndlib/abilene") -> NetworkState:
    """A topohub topology with its demand matrix (random traffic when it has none), 100 Mbit/s links."""
    from twin.state.topologies import load_topology
    from twin.state.traffic import random_flows

    state = load_topology(key, capacity=100e6, buffer=64)
    if not state.flows:
        state = state.with_flows(random_flows(state.nodes, np.random.default_rng(0), mixed=False))
    return state


def bench_intent(budget: int = 1500, time_limit_s: float = 60.0) -> Intent:
    """What every NES method of Figure 4 is asked: least mean delay, weights 1–20, ``budget``
    distinct routings and ``time_limit_s`` s at most."""
    return Intent(objective="mean_delay", weight_bounds=(1, 20), max_evaluations=budget, time_limit_s=time_limit_s)


def routings(state: NetworkState, twin_name: str, budget: int, time_limit_s: float, seed: int) -> dict:
    """Weights of every method for one state (NES minimises the predicted mean delay). ``nes_twin`` is
    the optimizer as ``ndt optimize`` runs it (QT screens first); ``nes_twin_unscreened`` the twin alone."""
    intent = bench_intent(budget, time_limit_s)
    out = {"sp": unit_weights(state), "invcap": inverse_capacity_weights(state, high=20),
           "fortz_thorup": fortz_thorup(state, 1, 20, max_evaluations=budget, time_limit_s=time_limit_s, seed=seed)}
    timing = {}
    qt = get_predictor("qt")
    for method, name, screen in (("nes_qt", "qt", None), ("nes_twin_unscreened", twin_name, None),
                                 ("nes_twin", twin_name, qt)):
        started = time.perf_counter()
        out[method] = optimize(state, intent, get_predictor(name), seed=seed, screen=screen).weights
        timing[method] = round(time.perf_counter() - started, 2)
    return out, timing


def bench_optimize(topologies=("synthetic-25", "sndlib/abilene"), intensities=INTENSITIES, twin_name: str = "qt",
                   budget: int = 1500, time_limit_s: float = 60.0, seed: int = 0, sim_runs: int = 3,
                   progress=None, workers: int = 1, address: str | None = None) -> dict:
    """For each topology and intensity: the simulated mean delay (s) of every method's routing,
    averaged over ``sim_runs`` simulations (every method sees the same seeds). The cases run one
    after another here with one worker, else as Ray tasks on ``workers`` local cores or, given
    ``address``, on that Ray cluster; ``progress(row)`` as each case ends."""
    calls = [(topology, load, twin_name, budget, time_limit_s, seed, sim_runs)
             for topology in topologies for load in intensities]
    if workers == 1 and address is None:
        results = ((i, intensity_row(*call)) for i, call in enumerate(calls))
    else:
        from twin.data.ray_engine import ray_map

        results = ray_map(intensity_row, calls, workers, address)
    rows = {}
    for i, row in results:
        rows[i] = row
        if progress is not None:
            progress(row)
    return {"intensities": [rows[i] for i in range(len(calls))]}


def intensity_row(topology: str, load: float, twin_name: str, budget: int, time_limit_s: float, seed: int,
                  sim_runs: int) -> dict:
    """One case of the benchmark: ``topology`` at busiest-link ``load`` under shortest path."""
    base = synthetic_state(seed=seed) if topology == "synthetic-25" else real_state(topology)
    state = scale_to_utilization(base.with_weights(np.ones(len(base.links))), load)
    simulators = [SimulatorPredictor(packets_per_flow=2000, seed=seed + 1 + run) for run in range(sim_runs)]
    weights, timing = routings(state, twin_name, budget, time_limit_s, seed)
    candidates = [state.with_weights(weights[m]) for m in METHODS]
    runs = [simulator.predict_delays(candidates) for simulator in simulators]
    row = {"topology": topology, "load": load, "twin": twin_name, "optimize_s": timing, "sim_runs": sim_runs}
    for i, (method, candidate) in enumerate(zip(METHODS, candidates)):
        per_run = [mean_delay(candidate, delays[i]) for delays in runs]
        row[f"{method}_delay"] = float(np.mean(per_run))
        row[f"{method}_delay_runs"] = per_run
        row[f"{method}_max_util"] = float(candidate.utilization().max())
    row["nes_twin_gain"] = 1.0 - row["nes_twin_delay"] / row["sp_delay"]
    row["best_method"] = min(METHODS, key=lambda m: row[f"{m}_delay"])
    return row


def plot(report: dict, path: Path) -> None:
    """Mean delay against intensity, one panel per topology, one line per method (Figure 4's style)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = report["intensities"]
    topologies = list(dict.fromkeys(r["topology"] for r in rows))
    fig, axes = plt.subplots(1, len(topologies), figsize=(5.5 * len(topologies), 4), squeeze=False)
    labels = {"sp": "shortest path", "invcap": "inverse capacity", "fortz_thorup": "Fortz–Thorup",
              "nes_qt": "NES + QT", "nes_twin_unscreened": f"NES + twin ({rows[0]['twin']}), no screening",
              "nes_twin": f"NES + twin ({rows[0]['twin']}), QT screening"}
    styles = {"sp": "k--o", "invcap": "c-.s", "fortz_thorup": "g-^", "nes_qt": "b-v", "nes_twin_unscreened": "m:x",
              "nes_twin": "r-D"}
    for ax, topology in zip(axes[0], topologies):
        mine = [r for r in rows if r["topology"] == topology]
        loads = [r["load"] for r in mine]
        for method in (m for m in METHODS if f"{m}_delay" in mine[0]):
            ax.plot(loads, [1e3 * r[f"{method}_delay"] for r in mine], styles[method], label=labels[method])
        ax.set_title(topology)
        ax.set_xlabel("traffic intensity (busiest-link load under shortest path)")
        ax.set_ylabel("simulated mean delay (ms)")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
