"""Queueing-theory baseline: every link an M/M/1/b queue, losses propagated to a fixed point
(:mod:`twin.models.queueing`)."""

from __future__ import annotations

import numpy as np

from twin.models.features import build_batch
from twin.models.queueing import path_jitter, solve
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

    heads = ("delay", "jitter", "loss")

    def predict_metrics(self, states: list[NetworkState]) -> list[dict[str, np.ndarray]]:
        """Per state, per flow: mean delay (s), jitter (delay variance, s²) and loss (share of packets)."""
        batch = build_batch(states, qt_features=False)
        answer = solve(batch)
        jitter = batch.per_flow_variance(answer["delay"], path_jitter(batch, answer["class_sojourn"]))
        return [{"delay": d, "jitter": j, "loss": loss}
                for d, j, loss in zip(batch.per_flow(answer["delay"]), jitter, batch.per_flow(answer["loss"]))]
