"""How far the twin's predictions are from what was measured (DESIGN.md §4: MAPE as a fraction)."""

from __future__ import annotations

import math

Pair = tuple[str, str]


def delay_mape(predicted: dict[Pair, float], measured: dict[Pair, float]) -> float | None:
    """Mean absolute percentage error (0.05 = 5 %) of predicted vs measured path delays (s), over the
    pairs present in both with a positive, finite measured delay; None when there is no such pair."""
    errors = [abs(predicted[pair] - value) / value for pair, value in measured.items()
              if pair in predicted and math.isfinite(value) and value > 0 and math.isfinite(predicted[pair])]
    return sum(errors) / len(errors) if errors else None
