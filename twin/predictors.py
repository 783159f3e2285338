"""Delay predictors behind one interface: ``predict_delays(states) -> list of per-flow delays (s)``.

The optimizer, what-if analysis and verification ask a predictor by name; the
packet-level simulator is one too (slow, but the ground truth).
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from ndt.errors import NdtError
from twin.sim import simulate
from twin.state import NetworkState


class SimulatorPredictor:
    """Mean path delays from the packet-level simulator (seconds per state, not milliseconds)."""

    name = "sim"

    def __init__(self, packets_per_flow: float = 2000.0, seed: int = 0):
        self.packets_per_flow = packets_per_flow
        self.seed = seed

    def predict_delays(self, states: list[NetworkState]) -> list[np.ndarray]:
        return [simulate(s, seed=self.seed, packets_per_flow=self.packets_per_flow).delay for s in states]


PREDICTORS = ("sim", "qt", "routenet")  # the last is the default twin


def get_predictor(name: str):
    """The predictor called ``name`` (one of PREDICTORS); the learned twin is loaded once per process."""
    if name == "sim":
        return SimulatorPredictor()
    if name == "qt":
        from twin.qt import QueueingModel

        return QueueingModel()
    if name == "routenet":
        return _shipped_twin("routenet_e")
    raise NdtError(f"unknown model {name!r}; choose one of {', '.join(PREDICTORS)}")


@lru_cache(maxsize=None)
def _shipped_twin(stem: str):
    from twin.routenet import load_twin

    return load_twin(stem)
