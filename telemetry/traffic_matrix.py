"""Telemetry → network state: the traffic matrix from the controller's edge counters, and the
state the twin is asked about (the known topology and routing carrying the measured traffic).
Rates in bit/s, packet sizes in bits, times in s (Unix)."""

from __future__ import annotations

import numpy as np

from twin.state.errors import NdtError
from twin.state.model import Flow, NetworkState


class TrafficMatrixError(NdtError, ValueError):
    """The telemetry holds no traffic matrix to build a state from."""


def traffic_matrix(samples, start: float, end: float) -> dict[tuple[str, str], float]:
    """Mean rate (bit/s) per pair over its samples with ``start <= ts <= end`` (``samples``:
    :class:`telemetry.store.PairValue` rows); pairs whose mean is zero are left out.

    Zero samples count: a counter that did not move in a poll interval measured no traffic there.
    Averaging only the positive samples would lift every pair that sends less than about a packet
    per interval, by up to 40 times for the smallest ones of the demo; and so every link by 3-4 %."""
    sums: dict[tuple[str, str], list[float]] = {}
    for s in samples:
        if start <= s.ts <= end:
            sums.setdefault((s.src, s.dst), []).append(s.value)
    means = {pair: float(np.mean(v)) for pair, v in sums.items()}
    return {pair: rate for pair, rate in means.items() if rate > 0}


def estimated_state(state: NetworkState, rates: dict[tuple[str, str], float],
                    packet_size: float | None = None) -> NetworkState:
    """``state``'s topology and routing with the measured traffic matrix (Poisson, ``packet_size`` bits;
    None: :class:`~twin.state.model.Flow`'s default)."""
    if not rates:
        raise TrafficMatrixError("the controller measured no traffic: the telemetry has no traffic matrix yet")
    size = {} if packet_size is None else {"packet_size": packet_size}
    return state.with_flows(Flow(s, d, rate=r, **size) for (s, d), r in sorted(rates.items()))


def carried_loads(samples) -> dict[tuple[str, str], float]:
    """Mean rate (bit/s) each link's port counters carried between its first and last sample in
    ``samples`` (:class:`telemetry.store.LinkSample` rows in time order). A link with fewer than two
    samples, or whose counter went back (the switch reconnected and reset it), is left out."""
    spans: dict[tuple[str, str], list] = {}
    for s in samples:
        first_last = spans.setdefault((s.src, s.dst), [s, s])
        if s.tx_bytes < first_last[1].tx_bytes:
            first_last[0] = None  # reset: no span over this window
        first_last[1] = s
    return {pair: 8.0 * (last.tx_bytes - first.tx_bytes) / (last.ts - first.ts)
            for pair, (first, last) in spans.items() if first is not None and last.ts > first.ts}
