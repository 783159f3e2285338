"""Fine-tuning the learned twin to the network it runs beside: simulator-labelled states of that
network's topology and traffic, at the loads and routings the optimizer will ask about."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from tqdm import tqdm

from twin.data.dataset import label_state, write_samples
from twin.models.learned import load_twin
from twin.models.model_files import MODELS_DIR
from twin.models.registry import LEARNED
from twin.models.train import TrainConfig, Trainer
from twin.state.model import NetworkState


def tuning_states(base: NetworkState, samples: int, seed: int = 0, loads=(0.2, 1.0),
                  weight_bounds=(1, 20)) -> list[NetworkState]:
    """States of the emulated network the optimizer will ask the twin about: ``base``'s topology and
    traffic matrix scaled so the busiest link runs at a load drawn from ``loads`` under shortest
    paths, routed by unit weights (one in five) or random weights in ``weight_bounds``."""
    rng = np.random.default_rng(seed)
    unit = base.with_weights(np.ones(len(base.links)))
    peak = float(unit.utilization().max())
    states = []
    for _ in range(samples):
        scaled = unit.scaled(float(rng.uniform(*loads)) / peak)
        if rng.random() < 0.8:
            scaled = scaled.with_weights(rng.integers(weight_bounds[0], weight_bounds[1] + 1, len(base.links)))
        states.append(scaled)
    return states


def fine_tune(base: NetworkState, model: str, out_dir: Path, samples: int = 300, minutes: float = 8.0,
              seed: int = 0, log=print) -> Path:
    """Fine-tune the learned twin ``model`` on simulator-labelled :func:`tuning_states` of ``base``
    (the emulated links are FIFO servers, so the simulator is the emulation's queueing) with the
    ``waiting`` loss; returns the path stem of the tuned model (``out_dir``/best) for ``load_twin``."""
    stem = LEARNED[model]
    start = load_twin(stem)
    config = start.net.get_config()
    rng = np.random.default_rng(seed)
    states = tqdm(tuning_states(base, samples, seed), desc="simulating tuning states", unit="state",
                  file=sys.stderr, leave=False)
    labelled = [label_state(state, {"index": i, "sim_seed": int(rng.integers(2**31))}, 2500.0)
                for i, state in enumerate(states)]
    data = Path(out_dir) / "data"
    write_samples(data, labelled)
    train = TrainConfig(kind=stem, state_dim=config["state_dim"],
                        iterations=config.get("iterations", TrainConfig.iterations), epochs=200,
                        lr=5e-4, patience=6, max_minutes=minutes, target="waiting", seed=seed,
                        init_from=str(MODELS_DIR / stem))
    summary = Trainer(data, Path(out_dir) / "run", train, progress=False, log=log).run()
    log(f"fine-tuned {stem} on {samples} simulated states of {base.name}: validation MAPE (waiting) "
        f"{summary['best_val_mape']:.4f} after {summary['epochs']} epochs")
    return Path(out_dir) / "run" / "best"
