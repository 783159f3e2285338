"""Candidate validation: each weight set routed by the real controller in a sandbox Mininet network,
the state's traffic played, measured per-path delays reported beside the model's predictions.

The sandbox uses its own switch/host names (``vs``/``vh``) so it runs beside the live network.
Delays in s; ``predicted`` is the model's raw output, ``expected`` the same turned into emulated
delay by the calibration (:mod:`mininet_topos.calibration`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from mininet_topos.network import EmulatedNetwork
from mininet_topos.traffic import Measurement, play
from twin.calibration.correction import CalibratedPredictor, Correction
from twin.calibration.port_walk import Walk
from twin.state.metrics import mape, mean_delay
from twin.state.model import NetworkState


@dataclass
class Validation:
    """One candidate: its weights (link order), the model's and the emulation's view of it."""

    weights: np.ndarray
    predicted: np.ndarray  # raw model, s per flow
    expected: np.ndarray  # calibrated to the emulation, s per flow
    measured: Measurement
    route_version: int
    wall_s: float
    walk: Walk | None = None  # the sandbox's, when the candidate was measured

    def mean_measured(self, state: NetworkState) -> float:
        return self.measured.mean_delay(state)

    def mean_expected(self, state: NetworkState) -> float:
        return mean_delay(state, self.expected)

    def to_dict(self, state: NetworkState) -> dict:
        routed = state.with_weights(self.weights)
        paths = []
        for i, flow in enumerate(state.flows):
            measured = self.measured.delay[i]
            paths.append({"src": flow.src, "dst": flow.dst, "path": routed.flow_path(i),
                          "measured": float(measured) if np.isfinite(measured) else None,
                          "expected": float(self.expected[i]), "predicted": float(self.predicted[i]),
                          "loss": float(self.measured.loss[i]) if np.isfinite(self.measured.loss[i]) else None})
        return {"weights": [float(w) for w in self.weights], "mean_measured": self.mean_measured(state),
                "mean_expected": self.mean_expected(state), "mape": mape(self.expected, self.measured.reliable_delay()),
                "route_version": self.route_version, "wall_s": self.wall_s,
                "sender_late_p99": self.measured.sender_late_p99, "cpu_busy": self.measured.cpu_busy,
                "load_average": self.measured.load_average, "paths": paths,
                "walk": self.walk.to_dict() if self.walk else None}


def validate(state: NetworkState, candidates: list[np.ndarray], predictor, correction: Correction | None = None,
             duration: float = 10.0, warmup: float = 2.0, seed: int = 0, tag: str = "sandbox",
             prefix: str = "v", net: EmulatedNetwork | None = None, connect=None) -> list[Validation]:
    """Measure each candidate weight vector (one weight per link of ``state``) in a sandbox network
    (brought up here, its controller driven through ``connect``, unless ``net`` is given) with the
    same traffic; same order as ``candidates``."""
    correction = correction or Correction()
    routed = [state.with_weights(w) for w in candidates]
    predicted = predictor.predict_delays(routed)
    if net is None:
        with EmulatedNetwork(state, connect, prefix=prefix, tag=tag) as sandbox:
            return _measure(sandbox, candidates, routed, predicted, predictor, correction, duration, warmup, seed)
    return _measure(net, candidates, routed, predicted, predictor, correction, duration, warmup, seed)


def _measure(net, candidates, routed, predicted, predictor, correction, duration, warmup, seed) -> list[Validation]:
    walk = net.walk()
    expected = CalibratedPredictor(predictor, correction, walk).predict_delays(routed)
    out = []
    for weights, candidate, delays, emulated in zip(candidates, routed, predicted, expected):
        started = time.monotonic()
        version = net.apply_vector(weights, who=f"{net.tag}: candidate")
        measured = play(net, candidate, duration, warmup, seed)
        out.append(Validation(weights=np.asarray(weights, dtype=float), predicted=np.asarray(delays),
                              expected=emulated, measured=measured,
                              route_version=version, wall_s=time.monotonic() - started, walk=walk))
    return out
