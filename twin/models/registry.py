"""Delay predictors behind one interface: ``predict_delays(states) -> list of per-flow delays (s)``.

The optimizer, what-if analysis and verification ask a predictor by name; the
packet-level simulator is one too (slow, but the ground truth).
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from twin.sim.simulator import simulate
from twin.state.errors import NdtError
from twin.state.model import NetworkState


class SimulatorPredictor:
    """Mean path delays from the packet-level simulator (seconds per state, not milliseconds)."""

    name = "sim"

    def __init__(self, packets_per_flow: float = 2000.0, seed: int = 0):
        self.packets_per_flow = packets_per_flow
        self.seed = seed

    heads = ("delay", "jitter", "loss")

    def predict_delays(self, states: list[NetworkState]) -> list[np.ndarray]:
        return [simulate(s, seed=self.seed, packets_per_flow=self.packets_per_flow).delay for s in states]

    def predict_metrics(self, states: list[NetworkState]) -> list[dict[str, np.ndarray]]:
        """Per state, per flow: mean delay (s), jitter (delay variance, s²), loss (share of packets) and the
        simulated 99th percentile of delay (s)."""
        results = [simulate(s, seed=self.seed, packets_per_flow=self.packets_per_flow) for s in states]
        return [{"delay": r.delay, "jitter": r.jitter, "loss": r.loss, "p99": r.p99} for r in results]


PREDICTORS = ("sim", "qt", "rnn", "routenet_f", "routenet")  # the last is the default twin
# name → file stem of the weights in twin/models; routenet_f adds jitter and loss heads and SP/WFQ/DRR queues
LEARNED = {"routenet": "routenet_e", "rnn": "rnn", "routenet_f": "routenet_f"}


def get_predictor(name: str, weights_dir=None):
    """The predictor called ``name`` (one of PREDICTORS).

    Learned models come from ``weights_dir`` (default: the weights shipped in
    twin/models, loaded once per process).
    """
    if name == "sim":
        return SimulatorPredictor()
    if name == "qt":
        from twin.models.qt import QueueingModel

        return QueueingModel()
    if name in LEARNED:
        return _load_twin(LEARNED[name], None if weights_dir is None else str(weights_dir))
    raise NdtError(f"unknown model {name!r}; choose one of {', '.join(PREDICTORS)}")


@lru_cache(maxsize=None)
def _load_twin(stem: str, directory: str | None):
    from twin.models.inference import load_predictor

    return load_predictor(stem, directory)
