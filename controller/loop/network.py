"""What the closed loop needs of the network it runs beside, and of a sandbox to try routings in.

:class:`~controller.loop.closed_loop.ClosedLoop` only talks to these two interfaces, so a fake
network tests the loop without Mininet and another network (a real one, whose telemetry comes
from the controller beside it) can stand behind the same calls. The emulated network is in
:mod:`controller.loop.emulated`. Delays in s, rates in bit/s, times in s.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np

from mininet_topos.sandbox import Validation
from mininet_topos.traffic import Measurement
from twin.calibration.correction import Correction
from twin.calibration.port_walk import Walk
from twin.state.model import Link, NetworkState


class Network(Protocol):
    """The live network."""

    def measure(self, state: NetworkState, duration: float, warmup: float, seed: int, label: str) -> Measurement:
        """Per-path delays of ``state``'s flows over ``duration`` s (the first ``warmup`` s not counted),
        also reported to the controller (store, Prometheus)."""

    def traffic_matrix(self, start: float, end: float) -> dict[tuple[str, str], float]:
        """The telemetry's mean rate per (src, dst) pair between Unix times ``start`` and ``end``, bit/s."""

    def push(self, weights: np.ndarray, links: tuple[Link, ...], who: str) -> int:
        """Install ``weights`` (one per link of ``links``) as flow rules; returns the route version."""

    def fail_link(self, a: str, b: str) -> None:
        """Take the link between ``a`` and ``b`` down in both directions."""

    def walk(self, state: NetworkState) -> Walk | None:
        """The switches' port walk now, if the network has one to read (:mod:`twin.calibration.port_walk`)."""


class Sandbox(Protocol):
    """Where candidate routings are tried on the estimated traffic before any is pushed."""

    def validate(self, state: NetworkState, candidates: list[np.ndarray], predictor, correction: Correction,
                 duration: float, warmup: float, seed: int) -> list[Validation]:
        """Each candidate weight vector measured under ``state``'s traffic, in ``candidates``' order."""
