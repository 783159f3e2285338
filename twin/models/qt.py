"""Queueing-theory baseline: every link an M/M/1/b queue, losses propagated to a fixed point
(:mod:`twin.models.queueing`)."""

from __future__ import annotations

import numpy as np

from twin.models.features import build_batch
from twin.models.queueing import solve
from twin.state.model import NetworkState


class QueueingModel:
    """The QT baseline behind the same interface as the learned models."""

    name = "qt"

    def predict_batch(self, batch) -> list[np.ndarray]:
        """Per-flow mean delay (s) of every state in the batch."""
        return batch.per_flow(solve(batch)["delay"])

    def predict_delays(self, states: list[NetworkState]) -> list[np.ndarray]:
        """Per-flow mean delay (s), one array per state in flow order."""
        return self.predict_batch(build_batch(states, qt_features=False))
