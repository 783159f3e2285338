"""Rates from monotonic counters (switch byte counters → bit/s, utilization, traffic matrix)."""

from __future__ import annotations

from collections.abc import Hashable

from telemetry.store import MAX_COUNTER

UNSUPPORTED_COUNTER = 2**64 - 1  # OpenFlow 1.3: a counter the switch does not support reads all-ones


def supported_counter(value: int) -> int | None:
    """An OpenFlow counter's value, or None when the switch marks it unsupported (all-ones) or it has
    passed ``MAX_COUNTER``, the most the telemetry store holds (9.2 EB: in practice, only all-ones)."""
    return None if value > MAX_COUNTER else value


class CounterRates:
    """Remembers the last (time, value) of each counter and turns the next reading into a rate.

    Times in s, values in counter units; the rate is per second. A counter that went
    backwards (a switch restarted) restarts its history and yields no rate.
    """

    def __init__(self):
        self._last: dict[Hashable, tuple[float, float]] = {}

    def update(self, key: Hashable, t: float, value: float) -> float | None:
        """Record ``value`` at time ``t``; returns the rate since the previous reading, or None."""
        previous = self._last.get(key)
        self._last[key] = (t, value)
        if previous is None:
            return None
        t0, v0 = previous
        if value < v0 or t <= t0:
            return None
        return (value - v0) / (t - t0)

    def forget(self, predicate) -> None:
        """Drop the history of every key for which ``predicate(key)`` is true."""
        for key in [k for k in self._last if predicate(k)]:
            del self._last[key]


def counted_since(last: dict[Hashable, int], counts: dict[Hashable, int]) -> dict[Hashable, int]:
    """What each counter in ``counts`` (key → its value now) counted since its value in ``last``,
    which is updated in place. A counter new to ``last``, or below its last value (its rule was put
    back, its switch restarted), counted all of its value since it started from zero."""
    out = {}
    for key, value in counts.items():
        previous = last.get(key, 0)
        out[key] = value - previous if value >= previous else value
        last[key] = value
    return out


def pair_rates(readings, rates: CounterRates) -> dict[Hashable, float]:
    """Bit/s per pair from one reading of its counter rules: ``readings`` holds (rule key, pair,
    switch time s, byte count) per rule; ``rates`` remembers each rule's last reading.

    Each rule is timed by the switch's own clock (an OpenFlow rule's duration), not by when the
    reply reached the controller: a busy controller reads replies late and in bursts, and timed by
    arrival one interval's bytes would be divided by milliseconds. A pair is left out of this
    reading when one of its rules has no rate yet (new, or reinstalled)."""
    out: dict[Hashable, float] = {}
    unmeasured = set()
    for key, pair, switch_time, count in readings:
        rate = rates.update(key, switch_time, count)
        if rate is None:
            unmeasured.add(pair)
        else:
            out[pair] = out.get(pair, 0.0) + 8.0 * rate
    return {pair: rate for pair, rate in out.items() if pair not in unmeasured}
