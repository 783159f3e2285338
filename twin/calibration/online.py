"""The twin's correction fitted online, from the network's own measurements as they arrive.

Each measurement window gives one (state, measured per-flow delays) pair; the last ``history``
windows are kept, and the correction (:func:`twin.calibration.correction.fit`, walk unknown) is
refitted from them when a new one came in. Until the windows hold ``min_flows`` measured flows the
``prior`` (a shipped or ``ndt calibrate`` file, or the structural default) is used: a shipped
calibration is at most a starting point. Delays in s.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np

from twin.calibration.correction import Correction, fit
from twin.state.model import NetworkState

MIN_FLOWS = 30  # measured flows the windows must hold before the fit replaces the prior


@dataclass(frozen=True)
class Fitted:
    """The correction in use, whether it was fitted here (else it is the prior), from how many
    windows and measured flows."""

    correction: Correction
    fitted: bool
    windows: int
    flows: int


class OnlineCalibration:
    """Windows of live measurements and the correction fitted to them."""

    def __init__(self, prior: Correction | None = None, history: int = 20, min_flows: int = MIN_FLOWS):
        self.set_prior(prior or Correction(), history, min_flows)

    def set_prior(self, prior: Correction, history: int = 20, min_flows: int = MIN_FLOWS) -> None:
        """Start again from ``prior`` (no windows kept)."""
        self.prior = prior
        self.min_flows = min_flows
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
        if self._stale and self.flows >= self.min_flows:
            states, measured = zip(*self._windows)
            self._current = Fitted(fit(list(states), list(measured), predictor), True, len(states), self.flows)
            self._stale = False
        return self._current
