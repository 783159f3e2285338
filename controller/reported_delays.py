"""Path delays reported by the network's own measurement agents (hosts, TWAMP or ping meshes) through
gRPC ``ReportMeasured``: per report a window (Unix s) and each pair's mean one-way delay over it (s).

End to end, from many packets, they are what operators hold the network to, and far less noisy
than a window of in-band probes; the closed loop prefers them, where a window has them, to score
the twin and fit its correction. Thread-safe; the last ``keep_s`` s are kept in memory.
"""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass, field

import numpy as np

Pair = tuple[str, str]


@dataclass(frozen=True)
class Report:
    """One report: the window it covers (Unix s), the pairs' mean delays over it (s) and, for the
    pairs whose agent said, how many measurements (packets, probes) each mean is over."""

    start: float
    end: float
    delays: dict
    samples: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Mean:
    """A pair's mean delay over a span (s) and the measurements it is over (0: a report did not say)."""

    delay: float
    samples: int


MAX_REPORTS = 10_000  # kept at most, however fast they come


class ReportedDelays:
    """The reports of the last ``keep_s`` s (at most :data:`MAX_REPORTS`), by the end of their window."""

    def __init__(self, keep_s: float = 900.0):
        self.keep_s = keep_s
        self._lock = threading.Lock()
        self._reports: deque[Report] = deque(maxlen=MAX_REPORTS)
        self._newest = -np.inf
        self._added = 0

    def add(self, start: float, end: float, delays: dict[Pair, float], samples: dict[Pair, int] | None = None) -> None:
        """A report of the mean delays (s) over [start, end) (Unix s), ``start < end``; ``samples``:
        per pair, how many measurements its mean is over, where the agent said."""
        if not start < end:
            raise ValueError(f"a report's window must end after it starts, got [{start}, {end})")
        with self._lock:
            self._reports.append(Report(start, end, dict(delays), dict(samples or {})))
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

    def means(self, start: float, end: float, slack_s: float = 1.0) -> dict[Pair, Mean]:
        """Per pair, the mean over the reports whose window lies inside [start, end + slack] (Unix s:
        none that began before ``start``, when the routing may have been another), and the
        measurements it is over. Where every such report of the pair said how many measurements its
        mean is over, the reports weigh by them (the mean of all their packets); else by their
        window's length, s, and the count is 0 (not known)."""
        parts: dict[Pair, list[tuple[float, float, int]]] = {}
        with self._lock:
            reports = [r for r in self._reports if r.start >= start and r.end <= end + slack_s]
        for report in reports:
            for pair, delay in report.delays.items():
                if np.isfinite(delay) and delay > 0:
                    parts.setdefault(pair, []).append((delay, report.end - report.start, report.samples.get(pair, 0)))
        out = {}
        for pair, means in parts.items():
            delay, length, samples = (np.array(column, dtype=float) for column in zip(*means))
            counted = bool(np.all(samples > 0))
            weights = samples if counted else length
            out[pair] = Mean(float(np.sum(weights * delay) / np.sum(weights)), int(samples.sum()) if counted else 0)
        return out
