"""The twin's correction fitted online, from the network's own measurements as they arrive.

Each measurement window gives one (state, measured per-flow delays) pair; the last ``history``
windows are held, and the correction (walk unknown: queueing scale, per-switch and per-path costs,
effective capacity) is refitted from them when a new one came in. Online measurements are few per
path (a path's probe mean over one window holds a handful of probes), so the fit is least squares
on the delays themselves (:func:`fit_least_squares`), which such noise does not bias, rather than
``ndt calibrate``'s least relative deviation, which noise on short paths pulls towards predicting
nothing. Each window's errors are taken relative to its own scale of delay, divided by the mean
delay the prior predicts for it (:func:`window_weight`), so the few windows of the highest load,
whose delays are the largest and the noisiest, do not make the fit on their own (a window still
counts by its measured flows); the prior's prediction, not the measurement, sets the weight, so the
measurements' noise does not bias the fit through it. Where the measurements say how many packets
or probes each flow's mean is over (the hosts' reports do), a flow's squared error within its
window weighs in proportion, within bounds (:func:`sample_weights`): the variance of a mean falls
with its samples, so a light flow's mean of a few packets pulls the fit less than a heavy flow's of
thousands. A window that both the fit and the prior explain far worse than the others
(:func:`disturbed_windows`: the host or switch stalled, a burst of other work on the machine) is
left out and the fit made again without it, so one disturbed stretch does not bend the correction
for every later window; a window only the fit misses (a load it has not seen) stays. The
``prior`` (a shipped or ``ndt calibrate`` file, or the structural default) is used until the windows
number ``min_windows`` and hold ``min_flows`` measured flows, and whenever it explains the windows
the fit kept better than the fit does (smaller squared error): a shipped calibration is at most a
starting point. Delays in s.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np
from scipy.optimize import nnls

from twin.calibration.correction import CAPACITY_SCALES, CalibratedPredictor, Correction, design_matrices
from twin.state.metrics import mape, median_and_spread
from twin.state.model import NetworkState

MIN_FLOWS = 30  # measured flows the windows must hold before the fit may replace the prior
MIN_WINDOWS = 3  # ... and windows: one window's traffic is one point of the load a fit needs to see
SAMPLE_WEIGHT_RANGE = (0.1, 10.0)  # a flow's squared-error weight for its samples, relative to the window's median
# flow: delays in a queue are correlated, so a mean of many packets is not surer without end, and
# one report's absurd count weighs no more than ten typical flows
DISTURBED_SPREADS = 3.0  # a window is disturbed when its error exceeds the windows' median by this
# many robust standard deviations (:func:`median_and_spread`) ...
DISTURBED_MIN_EXCESS = 0.05  # ... and by at least this mean |ln(predicted / measured)|: when the
# windows agree closely their spread is near zero, and a few per cent is not a disturbance


@dataclass(frozen=True)
class Fitted:
    """The correction in use, whether it was fitted here (else it is the prior); ``windows`` and
    ``flows``: the windows held and their measured flows, of which ``left_out`` windows were left
    out as disturbed (the fit used the others); ``mape``: its error over the windows it used (NaN
    before a fit was tried)."""

    correction: Correction
    fitted: bool
    windows: int
    flows: int
    mape: float = float("nan")
    left_out: int = 0


class OnlineCalibration:
    """Windows of live measurements and the correction fitted to them."""

    def __init__(self, prior: Correction | None = None, history: int = 20, min_flows: int = MIN_FLOWS,
                 min_windows: int = MIN_WINDOWS, weigh_windows: bool = True, weigh_samples: bool = True,
                 leave_out_disturbed: bool = True):
        self.weigh_windows = weigh_windows  # False: every flow's error in s, the windows of highest load weigh most
        self.weigh_samples = weigh_samples  # False: every measured flow of a window weighs the same
        self.leave_out_disturbed = leave_out_disturbed  # False: every window held is fitted, however far off
        self.set_prior(prior or Correction(), history, min_flows, min_windows)

    def set_prior(self, prior: Correction, history: int = 20, min_flows: int = MIN_FLOWS,
                  min_windows: int = MIN_WINDOWS) -> None:
        """Start again from ``prior`` (no windows held)."""
        self.prior = prior
        self.min_flows, self.min_windows = min_flows, min_windows
        self._windows: deque[tuple[NetworkState, np.ndarray, np.ndarray | None]] = deque(maxlen=history)
        self._current = Fitted(self.prior, False, 0, 0)
        self._stale = False

    def restart(self) -> None:
        """Drop the windows held and go back to the prior (the measurements changed kind)."""
        self._windows.clear()
        self._current = Fitted(self.prior, False, 0, 0)
        self._stale = False

    def add(self, state: NetworkState, measured: np.ndarray, samples: np.ndarray | None = None) -> None:
        """One window: ``state`` as the twin should see it, its measured per-flow delays (s, NaN
        where a flow was not measured) and, optionally, how many measurements each delay is a mean
        of (0 or NaN where not known)."""
        measured = np.asarray(measured, dtype=float)
        if len(measured) != len(state.flows):
            raise ValueError(f"{len(measured)} measured delays for {len(state.flows)} flows")
        if samples is not None:
            samples = np.asarray(samples, dtype=float)
            if samples.shape != measured.shape:
                raise ValueError(f"{len(samples)} sample counts for {len(state.flows)} flows")
        if measured_flows(measured).any():
            self._windows.append((state, measured, samples))
            self._stale = True

    @property
    def flows(self) -> int:
        """Measured flows over the windows held."""
        return int(sum(measured_flows(m).sum() for _, m, _ in self._windows))

    @property
    def last(self) -> Fitted:
        """The correction in use, without refitting."""
        return self._current

    def current(self, predictor) -> Fitted:
        """The correction to use now: refitted with ``predictor`` if a window came in since the last
        fit and the windows hold enough measured flows, else the last one."""
        if self._stale and self.flows >= self.min_flows and len(self._windows) >= self.min_windows:
            states, measured, samples = (list(x) for x in zip(*self._windows))
            by_prior = CalibratedPredictor(predictor, self.prior).predict_delays(states)
            weights = [(window_weight(p, m) if self.weigh_windows else 1.0)
                       * (sample_weights(m, n) if self.weigh_samples else 1.0)
                       for p, m, n in zip(by_prior, measured, samples)]
            fitted = fit_least_squares(states, measured, predictor, weights)
            by_fit = CalibratedPredictor(predictor, fitted).predict_delays(states)
            windows = len(states)
            if self.leave_out_disturbed:
                disturbed = (disturbed_windows(window_errors(by_fit, measured))
                             & disturbed_windows(window_errors(by_prior, measured)))
                kept = np.flatnonzero(~disturbed)
                if disturbed.any() and len(kept) >= self.min_windows and \
                        sum(measured_flows(measured[k]).sum() for k in kept) >= self.min_flows:
                    states, measured, weights, by_prior = _picked(kept, states, measured, weights, by_prior)
                    fitted = fit_least_squares(states, measured, predictor, weights)
                    by_fit = CalibratedPredictor(predictor, fitted).predict_delays(states)
            predicted = {fitted: by_fit, self.prior: by_prior}
            squared = {c: _weighted_squared_error(p, measured, weights) for c, p in predicted.items()}
            best = fitted if squared[fitted] < squared[self.prior] else self.prior
            error = float(np.nanmean([mape(p, m) for p, m in zip(predicted[best], measured)]))
            self._current = Fitted(best, best is fitted, windows, self.flows, error, windows - len(states))
            self._stale = False
        return self._current


def _picked(indices: np.ndarray, *lists: list) -> tuple[list, ...]:
    """Each of ``lists`` restricted to the windows at ``indices``."""
    return tuple([values[i] for i in indices] for values in lists)


def window_errors(predicted: list[np.ndarray], measured: list[np.ndarray]) -> np.ndarray:
    """Per window, the mean over its measured flows of |ln(predicted / measured)| (unitless; NaN
    where no flow has both)."""
    errors = []
    for p, m in zip(predicted, measured):
        ok = measured_flows(m) & np.isfinite(p) & (p > 0)
        errors.append(float(np.mean(np.abs(np.log(p[ok] / m[ok])))) if ok.any() else np.nan)
    return np.array(errors)


def disturbed_windows(errors: np.ndarray, spreads: float = DISTURBED_SPREADS,
                      min_excess: float = DISTURBED_MIN_EXCESS) -> np.ndarray:
    """Per window, whether its error (:func:`window_errors`, unitless) exceeds the median of the
    windows' by more than ``spreads`` robust standard deviations and by more than ``min_excess``; a
    window with no error is not disturbed."""
    finite = np.isfinite(errors)
    if not finite.any():
        return np.zeros(len(errors), dtype=bool)
    median, spread = median_and_spread(errors[finite])
    excess = np.where(finite, errors - median, -np.inf)
    return (excess > spreads * spread) & (excess > min_excess)


def measured_flows(measured: np.ndarray) -> np.ndarray:
    """Per flow, whether it was measured: a finite, positive delay."""
    return np.isfinite(measured) & (measured > 0)


def window_weight(expected: np.ndarray, measured: np.ndarray) -> float:
    """What a window's errors are multiplied by in the fit: 1 / the mean of ``expected`` (the prior's
    predictions, which the measurements' noise does not move) over the window's measured flows, 1/s;
    where that mean is not a positive delay, 1 / the measured mean."""
    ok = measured_flows(measured)
    scale = float(np.mean(expected[ok])) if np.all(np.isfinite(expected[ok])) else float("nan")
    return 1.0 / (scale if scale > 0 else float(np.mean(measured[ok])))


def sample_weights(measured: np.ndarray, samples: np.ndarray | None) -> np.ndarray | float:
    """Per flow, what its error in a window is multiplied by for the measurements behind its mean:
    √(samples / the median samples of the window's measured flows, within
    :data:`SAMPLE_WEIGHT_RANGE`), so its squared error weighs in proportion to its samples; 1 for a
    flow whose count is not known, and 1 for all when none is."""
    if samples is None:
        return 1.0
    ok = measured_flows(measured)
    known = ok & np.isfinite(samples) & (samples > 0)
    if not known.any():
        return 1.0
    relative = np.ones(len(measured))
    relative[known] = np.clip(samples[known] / np.median(samples[known]), *SAMPLE_WEIGHT_RANGE)
    return np.sqrt(relative)


def fit_least_squares(states: list[NetworkState], measured: list[np.ndarray], predictor,
                      weights: list[float | np.ndarray] | None = None, capacity_scales=CAPACITY_SCALES) -> Correction:
    """The correction (queue_scale, per_hop_s, base_s ≥ 0; capacity_scale from the grid) of least
    squared error over the measured flows (NaN where unmeasured), each window's errors multiplied by
    its weight (a number for all its flows, or one per flow: :func:`window_weight`,
    :func:`sample_weights`; None: all 1)."""
    best, best_error = Correction(), np.inf
    oks = [measured_flows(m) for m in measured]
    weights = [1.0] * len(measured) if weights is None else weights
    rows = np.concatenate([np.broadcast_to(w, m.shape)[ok] for w, m, ok in zip(weights, measured, oks)])
    target = rows * np.concatenate([m[ok] for m, ok in zip(measured, oks)])
    for scale in capacity_scales:
        design = np.concatenate([x[ok, :3] for x, ok in zip(design_matrices(states, predictor, float(scale)), oks)])
        coef, residual = nnls(rows[:, None] * design, target)
        if residual < best_error:
            best = Correction(queue_scale=float(coef[0]), per_hop_s=float(coef[1]), base_s=float(coef[2]),
                              capacity_scale=float(scale))
            best_error = residual
    return best


def _weighted_squared_error(predicted: list[np.ndarray], measured: list[np.ndarray], weights: list[float]) -> float:
    """Sum over the measured flows of squared errors, each multiplied by its window's weight (a number,
    or one per flow; unitless)."""
    total = 0.0
    for p, m, w in zip(predicted, measured, weights):
        ok = measured_flows(m) & np.isfinite(p)
        total += float(np.sum((np.broadcast_to(w, m.shape)[ok] * (p[ok] - m[ok])) ** 2))
    return total
