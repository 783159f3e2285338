"""In-band path delay from the switches: which probe goes next, what it carries, and what the
returned probes say about each path's one-way delay. Pure: the os-ken app sends and receives.

A probe to the pair (a, b) is a packet-out at switch a towards a host of switch b; the route rules
carry it like the hosts' packets and b's probe rule (``routing_rules.probe_rules``) returns it by
packet-in. Its raw time, packet-out to packet-in, adds to the path's delay the control channel
both ways and the two switches' own handling of packet-out and packet-in. A *loopback* probe
(a, a) — packet-out at a towards a's own host, back at once — measures exactly that overhead for
one switch, so the path's delay is the raw time minus half of each end's loopback time
(OpenNetMon, van Adrichem et al., NOMS 2014, subtracts the echo round trip instead; the echo
misses the packet-in and packet-out handling, which the loopback includes). Probes go out at
exponential gaps (Poisson sampling sees the time-average delay). Times in s.
"""

from __future__ import annotations

import struct
import threading
from collections import deque
from dataclasses import dataclass

import numpy as np

PROBE_MAGIC = b"NDTPROBE"
PROBE_HEADER = struct.Struct("!8sQ")  # magic, probe id
PROBE_FRAME_BYTES = 64  # Ethernet frame without FCS: the smallest, so probes add next to no load
PROBE_TIMEOUT_S = 2.0  # a probe not back by then is counted lost
LOOPBACK_SHARE = 0.25  # share of the probes spent on loopbacks (their median needs fewer samples)
MEDIAN_SE = 1.2533 * 1.4826  # a median's standard error ≈ this × MAD / √n (normal data: √(π/2) × σ / √n)

Pair = tuple[str, str]


def probe_payload(probe_id: int, udp_payload_bytes: int) -> bytes:
    """The UDP payload of probe ``probe_id``, padded with zeros to ``udp_payload_bytes``."""
    head = PROBE_HEADER.pack(PROBE_MAGIC, probe_id)
    return head + bytes(max(0, udp_payload_bytes - len(head)))


def probe_id(payload: bytes) -> int | None:
    """The probe id a UDP payload carries, or None when it is not an ndt probe."""
    if len(payload) < PROBE_HEADER.size:
        return None
    magic, number = PROBE_HEADER.unpack_from(payload)
    return number if magic == PROBE_MAGIC else None


class ProbeSchedule:
    """Which pair to probe next and when: loopbacks of every switch with a host and every ordered
    pair of such switches, taken round-robin, at exponential gaps of mean 1 / ``rate_pps``."""

    def __init__(self, rate_pps: float, seed: int = 0):
        self.rate_pps = rate_pps
        self._rng = np.random.default_rng(seed)
        self._pairs: list[Pair] = []
        self._loops: list[Pair] = []
        self._next_pair = 0
        self._next_loop = 0

    def set_switches(self, switches: list[str]) -> None:
        """The switches with hosts (probes need a host address at their destination)."""
        switches = sorted(set(switches))
        pairs = [(a, b) for a in switches for b in switches if a != b]
        if pairs != self._pairs:
            self._pairs, self._next_pair = pairs, 0
        self._loops = [(a, a) for a in switches]

    def gap(self) -> float:
        """Seconds until the next probe."""
        return float(self._rng.exponential(1.0 / self.rate_pps))

    def next(self) -> Pair | None:
        """The next pair to probe (a loopback with probability :data:`LOOPBACK_SHARE`), or None."""
        if not self._loops:
            return None
        if not self._pairs or self._rng.random() < LOOPBACK_SHARE:
            pair = self._loops[self._next_loop % len(self._loops)]
            self._next_loop += 1
            return pair
        pair = self._pairs[self._next_pair % len(self._pairs)]
        self._next_pair += 1
        return pair


@dataclass(frozen=True, slots=True)
class ProbeSample:
    """One returned probe: sent and received (s, one monotonic clock) over the pair ``src → dst``."""

    src: str
    dst: str
    sent: float
    received: float

    @property
    def raw(self) -> float:
        return self.received - self.sent


class PathDelays:
    """The returned probes of the last ``keep_s`` s and the per-path delays they give; thread-safe."""

    def __init__(self, keep_s: float = 900.0):
        self.keep_s = keep_s
        self._lock = threading.Lock()
        self._samples: deque[ProbeSample] = deque()
        self.sent = 0
        self.lost = 0

    def add(self, sample: ProbeSample) -> None:
        with self._lock:
            self._samples.append(sample)
            while self._samples and self._samples[0].received < sample.received - self.keep_s:
                self._samples.popleft()

    def samples(self, start: float, end: float) -> list[ProbeSample]:
        """The probes received in [start, end) (monotonic s), read from the newest back."""
        out = []
        with self._lock:
            for s in reversed(self._samples):
                if s.received < start:
                    break
                if s.received < end:
                    out.append(s)
        return out[::-1]

    def delays(self, start: float, end: float, min_samples: int = 3) -> dict[Pair, float]:
        """Per path (src ≠ dst) the mean one-way delay of the probes received in [start, end), s:
        :func:`path_delays` over them."""
        return path_delays(self.samples(start, end), min_samples)

    def stats(self, start: float, end: float, min_samples: int = 3, robust: bool = False) -> dict[Pair, PathStat]:
        """:func:`path_stats` of the probes received in [start, end)."""
        return path_stats(self.samples(start, end), min_samples, robust)

    def noise(self, start: float, end: float, min_samples: int = 3) -> float:
        """:func:`sampling_mape` of the probes received in [start, end)."""
        return sampling_mape(self.samples(start, end), min_samples)


def loopback_times(samples: list[ProbeSample], robust: bool = False) -> dict[str, float]:
    """Per switch, the mean (``robust``: median) raw time of its loopback probes: control channel
    both ways plus its packet-out and packet-in handling, s (the same statistic as the paths': what
    delays both alike cancels in the difference)."""
    centre = np.median if robust else np.mean
    by_switch: dict[str, list[float]] = {}
    for s in samples:
        if s.src == s.dst:
            by_switch.setdefault(s.src, []).append(s.raw)
    return {switch: float(centre(times)) for switch, times in by_switch.items()}


@dataclass(frozen=True, slots=True)
class PathStat:
    """A path's probes over a window: their mean (or median) one-way delay (s), how many, and its
    standard error (s)."""

    mean: float
    samples: int
    stderr: float


def path_stats(samples: list[ProbeSample], min_samples: int = 3, robust: bool = False) -> dict[Pair, PathStat]:
    """Per path (src ≠ dst) with at least ``min_samples`` probes and a loopback time at both ends:
    the mean raw time minus half of each end's loopback time (never below zero), s, and its
    standard error: the raw times' (one probe: 0) and half of each end's loopback mean's, in
    quadrature, s. ``robust``: medians instead of means, each with the median's standard error
    from the MAD (:data:`MEDIAN_SE` · MAD / √n), so a probe or two stalled in the controller
    (whose packet-in and packet-out add to every raw time) move it little."""
    loops = loopback_times(samples, robust)
    raw: dict[Pair, list[float]] = {}
    for s in samples:
        raw.setdefault((s.src, s.dst), []).append(s.raw)

    def variance_of_centre(pair: Pair) -> float:
        values = np.asarray(raw[pair])
        if len(values) < 2:
            return 0.0
        if robust:
            return (MEDIAN_SE * float(np.median(np.abs(values - np.median(values))))) ** 2 / len(values)
        return float(np.var(values, ddof=1)) / len(values)

    centre = np.median if robust else np.mean
    out = {}
    for (src, dst), raws in raw.items():
        if src != dst and len(raws) >= min_samples and src in loops and dst in loops:
            variance = variance_of_centre((src, dst)) + 0.25 * (variance_of_centre((src, src))
                                                                + variance_of_centre((dst, dst)))
            out[(src, dst)] = PathStat(max(0.0, float(centre(raws)) - 0.5 * (loops[src] + loops[dst])), len(raws),
                                       float(np.sqrt(variance)))
    return out


def path_delays(samples: list[ProbeSample], min_samples: int = 3) -> dict[Pair, float]:
    """Per path, the mean delay of :func:`path_stats`, s."""
    return {pair: stat.mean for pair, stat in path_stats(samples, min_samples).items()}


def sampling_mape(samples: list[ProbeSample], min_samples: int = 3) -> float:
    """The MAPE a perfect model would score against these probes' path means, from their own
    spread: per path sqrt(2/π) · (standard error of the mean) / mean, averaged over the paths of
    :func:`path_delays` (NaN when there is none). Probes sample a path a few times per window, so
    this floor is far above a host's, whose mean covers every packet."""
    delays = path_delays(samples, min_samples)
    by_pair: dict[Pair, list[float]] = {}
    for s in samples:
        if (s.src, s.dst) in delays:
            by_pair.setdefault((s.src, s.dst), []).append(s.raw)
    ratios = [np.std(raws, ddof=1) / np.sqrt(len(raws)) / delays[pair]
              for pair, raws in by_pair.items() if delays[pair] > 0]
    return float(np.sqrt(2 / np.pi) * np.mean(ratios)) if ratios else float("nan")
