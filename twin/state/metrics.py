"""The few numbers every part of ndt reports about per-flow delays: the traffic-weighted mean,
the error of a prediction against a measurement, a robust centre and spread, and JSON-safe floats.
Delays in s, rates bit/s."""

from __future__ import annotations

import math

import numpy as np

from twin.state.model import NetworkState

MAD_TO_SIGMA = 1.4826  # MAD × this = the standard deviation of a normal distribution


def mean_delay(state: NetworkState, delays: np.ndarray) -> float:
    """Traffic-weighted mean of the per-flow ``delays`` of ``state``, s (flows without a finite delay
    or without traffic are left out)."""
    rates = state.flow_columns["rate"]
    delays = np.asarray(delays, dtype=float)
    ok = np.isfinite(delays) & (rates > 0)
    if not ok.any():
        return float("nan")
    return float(np.sum(rates[ok] * delays[ok]) / np.sum(rates[ok]))


def mape(predicted: np.ndarray, measured: np.ndarray) -> float:
    """Mean absolute percentage error (fraction) over flows with a positive measured delay and a
    finite prediction; NaN if there is none."""
    predicted, measured = np.asarray(predicted, dtype=float), np.asarray(measured, dtype=float)
    ok = np.isfinite(measured) & (measured > 0) & np.isfinite(predicted)
    if not ok.any():
        return float("nan")
    return float(np.mean(np.abs(predicted[ok] - measured[ok]) / measured[ok]))


def median_and_spread(values, floor: float = 0.0) -> tuple[float, float]:
    """The median of ``values`` and their robust spread (MAD_TO_SIGMA × the median absolute
    deviation), at least ``floor``; in the values' unit."""
    values = np.asarray(values, dtype=float)
    centre = float(np.median(values))
    return centre, max(floor, MAD_TO_SIGMA * float(np.median(np.abs(values - centre))))


def finite_float(value) -> float | None:
    """``value`` as a float when it is, or reads as, a finite number; None for anything else (text that is
    no number, NaN, infinities, integers too large for a float)."""
    try:
        number = float(value)
    except (TypeError, ValueError, OverflowError):
        return None
    return number if math.isfinite(number) else None


def finite_or_none(x) -> float | None:
    """``x`` as a float, or None when it is NaN or infinite (JSON has neither)."""
    return float(x) if math.isfinite(x) else None
