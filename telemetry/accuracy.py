"""How far the twin's predictions are from what was measured (MAPE as a fraction)."""

from __future__ import annotations

import numpy as np

from twin.state.metrics import mape

Pair = tuple[str, str]


def delay_mape(predicted: dict[Pair, float], measured: dict[Pair, float]) -> float | None:
    """Mean absolute percentage error (0.05 = 5 %) of predicted vs measured path delays (s), over the
    pairs present in both with a positive, finite measured delay; None when there is no such pair."""
    pairs = [pair for pair in measured if pair in predicted]
    error = mape(np.array([predicted[p] for p in pairs]), np.array([measured[p] for p in pairs]))
    return None if np.isnan(error) else error
