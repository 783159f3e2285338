"""The twin's correction fitted online, from the network's own measurements as they arrive.

Each measurement window gives one (state, measured per-flow delays) pair; the last ``history``
windows are kept, and the correction (:func:`twin.calibration.correction.fit`, walk unknown) is
refitted from them when a new one came in. The ``prior`` (a shipped or ``ndt calibrate`` file, or
the structural default) is used until the windows number ``min_windows`` and hold ``min_flows``
measured flows, and whenever it explains the kept windows better than the fit does (lower MAPE
over them): a shipped calibration is at most a starting point. Delays in s.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np

from twin.calibration.correction import CalibratedPredictor, Correction, fit
from twin.state.metrics import mape
from twin.state.model import NetworkState

MIN_FLOWS = 30  # measured flows the windows must hold before the fit may replace the prior
MIN_WINDOWS = 3  # ... and windows: one window's traffic is one point of the load a fit needs to see


@dataclass(frozen=True)
class Fitted:
    """The correction in use, whether it was fitted here (else it is the prior), from how many
    windows and measured flows; ``mape``: its error over them (NaN before a fit was tried)."""

    correction: Correction
    fitted: bool
    windows: int
    flows: int
    mape: float = float("nan")


class OnlineCalibration:
    """Windows of live measurements and the correction fitted to them."""

    def __init__(self, prior: Correction | None = None, history: int = 20, min_flows: int = MIN_FLOWS,
                 min_windows: int = MIN_WINDOWS):
        self.set_prior(prior or Correction(), history, min_flows, min_windows)

    def set_prior(self, prior: Correction, history: int = 20, min_flows: int = MIN_FLOWS,
                  min_windows: int = MIN_WINDOWS) -> None:
        """Start again from ``prior`` (no windows kept)."""
        self.prior = prior
        self.min_flows, self.min_windows = min_flows, min_windows
        self._windows: deque[tuple[NetworkState, np.ndarray]] = deque(maxlen=history)
        self._current = Fitted(self.prior, False, 0, 0)
        self._stale = False

    def add(self, state: NetworkState, measured: np.ndarray) -> None:
        """One window: ``state`` as the twin should see it and its measured per-flow delays (s,
        NaN where a flow was not measured)."""
        measured = np.asarray(measured, dtype=float)
        if len(measured) != len(state.flows):
            raise ValueError(f"{len(measured)} measured delays for {len(state.flows)} flows")
        if np.any(np.isfinite(measured) & (measured > 0)):
            self._windows.append((state, measured))
            self._stale = True

    @property
    def flows(self) -> int:
        """Measured flows over the kept windows."""
        return int(sum(np.sum(np.isfinite(m) & (m > 0)) for _, m in self._windows))

    @property
    def last(self) -> Fitted:
        """The correction in use, without refitting."""
        return self._current

    def current(self, predictor) -> Fitted:
        """The correction to use now: refitted with ``predictor`` if a window came in since the last
        fit and the windows hold enough measured flows, else the last one."""
        if self._stale and self.flows >= self.min_flows and len(self._windows) >= self.min_windows:
            states, measured = (list(x) for x in zip(*self._windows))
            fitted = fit(states, measured, predictor)
            errors = {c: float(np.nanmean([mape(p, m) for p, m in zip(
                CalibratedPredictor(predictor, c).predict_delays(states), measured)])) for c in (fitted, self.prior)}
            best = fitted if errors[fitted] < errors[self.prior] else self.prior
            self._current = Fitted(best, best is fitted, len(states), self.flows, errors[best])
            self._stale = False
        return self._current
