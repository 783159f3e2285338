"""Path delays reported by the network's own measurement agents (hosts, TWAMP or ping meshes) through
gRPC ``ReportMeasured``: per report a window (Unix s) and each pair's mean one-way delay over it (s).

End to end, from many packets, they are what operators hold the network to, and far less noisy
than a window of in-band probes; the closed loop prefers them, where a window has them, to score
the twin and fit its correction. Thread-safe; the last ``keep_s`` s are kept in memory.
"""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass

import numpy as np

Pair = tuple[str, str]


@dataclass(frozen=True)
class Report:
    """One report: the window it covers (Unix s) and the pairs' mean delays over it (s)."""

    start: float
    end: float
    delays: dict


MAX_REPORTS = 10_000  # kept at most, however fast they come


class ReportedDelays:
    """The reports of the last ``keep_s`` s (at most :data:`MAX_REPORTS`), by the end of their window."""

    def __init__(self, keep_s: float = 900.0):
        self.keep_s = keep_s
        self._lock = threading.Lock()
        self._reports: deque[Report] = deque(maxlen=MAX_REPORTS)
        self._newest = -np.inf
        self._added = 0

    def add(self, start: float, end: float, delays: dict[Pair, float]) -> None:
        """A report of the mean delays (s) over [start, end) (Unix s); ``start < end``."""
        if not start < end:
            raise ValueError(f"a report's window must end after it starts, got [{start}, {end})")
        with self._lock:
            self._reports.append(Report(start, end, dict(delays)))
            self._added += 1
            self._newest = max(self._newest, end)
            while self._reports and self._reports[0].end < self._newest - self.keep_s:
                self._reports.popleft()

    def since(self, cursor: int) -> tuple[list[Report], int]:
        """The reports added after ``cursor`` (0 at first) that are still kept, in the order they
        came, and the cursor to pass next time."""
        with self._lock:
            first = self._added - len(self._reports)
            return list(self._reports)[max(0, cursor - first):], self._added

    def delays(self, start: float, end: float, slack_s: float = 1.0) -> dict[Pair, float]:
        """Per pair, the mean over the reports whose window lies inside [start, end + slack] (Unix s:
        none that began before ``start``, when the routing may have been another), each weighted by
        its window's length, s; empty when none does."""
        sums: dict[Pair, list[float]] = {}
        with self._lock:
            reports = [r for r in self._reports if r.start >= start and r.end <= end + slack_s]
        for report in reports:
            length = report.end - report.start
            for pair, delay in report.delays.items():
                if np.isfinite(delay) and delay > 0:
                    acc = sums.setdefault(pair, [0.0, 0.0])
                    acc[0] += length * delay
                    acc[1] += length
        return {pair: total / weight for pair, (total, weight) in sums.items()}
