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

A path sees a few probes per window and each one samples the queues at one instant, so a path's
own mean is noisy. Paths share links, and a path's mean delay is the sum of its links' (the
time-average delay of a FIFO port is the same for every path through it), so
:func:`pooled_path_stats` fits one delay per link to all paths' means at once (weighted least
squares; network tomography) and gives each path the sum over its links: every probe through a
link informs every path through it.

No in-band probe crosses the hosts' own edge: the sender's and receiver's stacks and the first and
last switch taking a host's packet from or to its port (a packet-out enters from the controller,
a packet-in leaves towards it). Where the network's own agents report delays (gRPC
``ReportMeasured``: hosts, a TWAMP or ping mesh), :meth:`PathDelays.compare_reports` sets each report
beside the probes over the same window and :func:`fit_host_edge` fits what the reports add: a common
term and, per switch, a sending and a receiving term. Every path's probe delay then carries it,
the paths no agent reports included. The closed loop's own comparisons (a push's before and after,
anomaly detection's reference) take the probes without it, so a refit never moves them.
"""

from __future__ import annotations

import struct
import threading
from collections import deque
from dataclasses import dataclass

import numpy as np
from scipy import sparse

from twin.state.metrics import MAD_TO_SIGMA

PROBE_MAGIC = b"NDTPROBE"
PROBE_HEADER = struct.Struct("!8sQ")  # magic, probe id
PROBE_FRAME_BYTES = 64  # Ethernet frame without FCS: the smallest, so probes add next to no load
PROBE_TIMEOUT_S = 2.0  # a probe not back by then is counted lost
LOOPBACK_SHARE = 0.25  # share of the probes spent on loopbacks (their median needs fewer samples)
MIN_PATH_PROBES = 3  # a path's mean over a window needs this many of its probes
MAX_POOLED_LINKS = 500  # a larger fit (cubic in the links: 0.1 s at 500) would hold up the controller's thread
MEDIAN_SE = 1.2533 * MAD_TO_SIGMA  # a median's standard error ≈ this × MAD / √n (normal data: √(π/2) × σ / √n)
HOST_EDGE_KEEP_S = 600.0  # reports ending this long before the newest still inform the edge, s
HOST_EDGE_MIN_PAIRS = 3  # the edge is fitted once the reports and the probes share this many pairs
HOST_EDGE_PRIOR_PAIRS = 3.0  # a switch's own edge term is pulled to the common one as hard as this many typical pairs
HOST_EDGE_MAX_ROWS = 50_000  # (report, pair) differences kept at most, however many agents report

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


def probe_ids_in(data: bytes) -> list[int]:
    """The ids of the probes anywhere in ``data`` (an OpenFlow message or several, as sent)."""
    ids, start = [], data.find(PROBE_MAGIC)
    while 0 <= start <= len(data) - PROBE_HEADER.size:
        ids.append(PROBE_HEADER.unpack_from(data, start)[1])
        start = data.find(PROBE_MAGIC, start + PROBE_HEADER.size)
    return ids


def rate_needed(switches: int, window_s: float) -> float:
    """Probes per second, network-wide, that give every ordered pair of ``switches`` (those with hosts)
    :data:`MIN_PATH_PROBES` probes in a window of ``window_s`` s, a share :data:`LOOPBACK_SHARE` going
    to loopbacks (the schedule takes the pairs round robin)."""
    return MIN_PATH_PROBES * switches * (switches - 1) / ((1.0 - LOOPBACK_SHARE) * window_s)


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
    """The returned probes of the last ``keep_s`` s and the per-path delays they give; thread-safe.

    With the probes' routes set (:meth:`set_routes`), a window that began under them gives each
    path the pooled estimate (:func:`pooled_path_stats`); a window reaching back before the last
    routing change, each path's own."""

    def __init__(self, keep_s: float = 900.0):
        self.keep_s = keep_s
        self._lock = threading.Lock()
        self._samples: deque[ProbeSample] = deque()
        self._routes: dict[Pair, tuple] = {}
        self._routes_since = float("inf")
        self._host_edge_rows: deque[tuple[float, Pair, float, int]] = deque(maxlen=HOST_EDGE_MAX_ROWS)  # window end, pair, reported − probe (s), probes
        self.host_edge: HostEdge | None = None
        self.sent = 0
        self.lost = 0

    def add(self, sample: ProbeSample) -> None:
        with self._lock:
            self._samples.append(sample)
            while self._samples and self._samples[0].received < sample.received - self.keep_s:
                self._samples.popleft()

    def set_routes(self, routes: dict[Pair, tuple], since: float) -> None:
        """The links each probed path crosses (:func:`controller.routing_rules.probe_routes`) from ``since`` (monotonic s) on;
        the same routes again (new rules, a host learned) keep the earlier time."""
        with self._lock:
            if routes != self._routes:
                self._routes, self._routes_since = dict(routes), since

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

    def stats(self, start: float, end: float, min_samples: int = MIN_PATH_PROBES, robust: bool = False,
              pooled: bool = True, host_edge: bool = True) -> dict[Pair, PathStat]:
        """:func:`path_stats` of the probes received in [start, end); ``pooled``: then
        :func:`pooled_path_stats` when the window began under the current routes; ``host_edge``: each
        path's mean plus the hosts' edge fitted from the reports (:attr:`host_edge`), where there is one."""
        own = path_stats(self.samples(start, end), min_samples, robust)
        with self._lock:
            routes, since, fit = self._routes, self._routes_since, self.host_edge
        out = pooled_path_stats(own, routes) if pooled and routes and start >= since else own
        if host_edge and fit is not None:
            out = {pair: PathStat(max(0.0, stat.mean + fit.offset(pair)), stat.samples, stat.stderr)
                   for pair, stat in out.items()}
        return out

    def compare_reports(self, reports: list[tuple[float, float, dict[Pair, float]]]) -> int:
        """Set reports of the network's own measurements — each a window [start, end) (monotonic s)
        and per pair its mean delay (s) over it — beside the probes' delays over the same windows,
        without the edge, and refit :attr:`host_edge` (:func:`fit_host_edge`) once, to the
        differences of the reports ending within :data:`HOST_EDGE_KEEP_S` of the newest (at most
        :data:`HOST_EDGE_MAX_ROWS`). With no report for a while, the last fit stays: the edge is the
        hosts' and their ports', not the moment's. Returns how many (report, pair) differences came in."""
        rows, by_window = [], {}
        for start, end, reported in reports:
            if (start, end) not in by_window:
                by_window[(start, end)] = self.stats(start, end, min_samples=1, host_edge=False)
            stats = by_window[(start, end)]
            rows += [(end, pair, delay - stats[pair].mean, stats[pair].samples) for pair, delay in reported.items()
                     if pair in stats and np.isfinite(delay) and delay > 0]
        if not rows:
            return 0
        with self._lock:
            self._host_edge_rows.extend(rows)
            newest = max(row[0] for row in self._host_edge_rows)
            while self._host_edge_rows[0][0] < newest - HOST_EDGE_KEEP_S:
                self._host_edge_rows.popleft()
            sums: dict[Pair, list[float]] = {}
            for _, pair, difference, probes in self._host_edge_rows:
                acc = sums.setdefault(pair, [0.0, 0.0])
                acc[0] += probes * difference
                acc[1] += probes
        fit = fit_host_edge({pair: (total / weight, weight) for pair, (total, weight) in sums.items()})
        if fit is not None:  # too few pairs after a long silence: the last fit stays
            with self._lock:
                self.host_edge = fit
        return len(rows)

    def delays(self, start: float, end: float, min_samples: int = MIN_PATH_PROBES,
               host_edge: bool = True) -> dict[Pair, float]:
        """Per path (src ≠ dst) the mean one-way delay of the probes received in [start, end), s
        (pooled, and with the hosts' edge, as :meth:`stats`)."""
        return {pair: stat.mean for pair, stat in self.stats(start, end, min_samples, host_edge=host_edge).items()}

    def noise(self, start: float, end: float, min_samples: int = MIN_PATH_PROBES) -> float:
        """:func:`sampling_mape` of :meth:`stats` over [start, end)."""
        return sampling_mape(self.stats(start, end, min_samples))


@dataclass(frozen=True)
class HostEdge:
    """What the network's own measurements add to the probes' delay of a pair (a, b), s: ``common``
    plus ``sending[a]`` plus ``receiving[b]`` (0 for a switch no report informed); ``mean``: that
    sum's mean over the ``pairs`` it was fitted on."""

    common: float
    sending: dict
    receiving: dict
    pairs: int
    mean: float

    def offset(self, pair: Pair) -> float:
        return self.common + self.sending.get(pair[0], 0.0) + self.receiving.get(pair[1], 0.0)


def fit_host_edge(differences: dict[Pair, tuple[float, float]], prior_pairs: float = HOST_EDGE_PRIOR_PAIRS) -> HostEdge | None:
    """The edge the reports add to the probes, from per pair (reported − probe delay (s), weight):
    ``difference(a, b) ≈ common + sending[a] + receiving[b]``. ``common`` is the differences'
    weighted median (one far-off pair does not move it, and a switch no report informs gets it);
    the per-switch terms are the weighted least-squares fit to what is left, each pulled to zero
    as hard as ``prior_pairs`` pairs of the median weight (a switch that few pairs inform keeps
    near the common term). None under :data:`HOST_EDGE_MIN_PAIRS` pairs."""
    pairs = sorted(pair for pair, (difference, weight) in differences.items() if np.isfinite(difference) and weight > 0)
    if len(pairs) < HOST_EDGE_MIN_PAIRS:
        return None
    values = np.array([differences[pair][0] for pair in pairs])
    weights = np.array([differences[pair][1] for pair in pairs], dtype=float)
    order = np.argsort(values)
    cumulative = np.cumsum(weights[order])
    common = float(values[order][np.searchsorted(cumulative, 0.5 * cumulative[-1])])
    senders = sorted({a for a, _ in pairs})
    receivers = sorted({b for _, b in pairs})
    column = {("s", a): j for j, a in enumerate(senders)}
    column.update({("r", b): len(senders) + j for j, b in enumerate(receivers)})
    design = np.zeros((len(pairs), len(senders) + len(receivers)))
    for i, (a, b) in enumerate(pairs):
        design[i, column[("s", a)]] = design[i, column[("r", b)]] = 1.0
    normal = design.T @ (weights[:, None] * design) + prior_pairs * float(np.median(weights)) * np.eye(design.shape[1])
    terms = np.linalg.solve(normal, design.T @ (weights * (values - common)))
    return HostEdge(common, {a: float(terms[column[("s", a)]]) for a in senders},
                    {b: float(terms[column[("r", b)]]) for b in receivers}, len(pairs),
                    float(common + np.mean(design @ terms)))


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


def path_stats(samples: list[ProbeSample], min_samples: int = MIN_PATH_PROBES, robust: bool = False) -> dict[Pair, PathStat]:
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


def pooled_path_stats(stats: dict[Pair, PathStat], routes: dict[Pair, tuple]) -> dict[Pair, PathStat]:
    """Each path's delay as the sum of per-link delays fitted to every path's mean at once, s.

    ``stats``: per path, its own probes' estimate (:func:`path_stats`); ``routes``: per path, the
    links it crosses, any hashable names (one route; a path missing here, such as one split over
    equal-cost routes, keeps its own estimate). The links' delays minimise the squared errors of
    the paths' means, each weighted by its probes over its hops (a probe's spread grows with the
    queues it crosses); a path's delay is the sum over its links (never below zero). Its standard
    error comes from the fit's covariance, with the spread of the weighted residuals; with no
    residual degree of freedom (as many links as paths), or more than :data:`MAX_POOLED_LINKS`
    links, every path keeps its own estimate.
    """
    fitted = [pair for pair in stats if routes.get(pair)]
    links = sorted({link for pair in fitted for link in routes[pair]})
    if not fitted or len(links) > MAX_POOLED_LINKS:
        return dict(stats)
    column = {link: j for j, link in enumerate(links)}
    rows = np.repeat(np.arange(len(fitted)), [len(routes[pair]) for pair in fitted])
    cols = np.array([column[link] for pair in fitted for link in routes[pair]])
    incidence = sparse.csr_matrix((np.ones(len(cols)), (rows, cols)), shape=(len(fitted), len(links)))
    means = np.array([stats[pair].mean for pair in fitted])
    weights = np.array([stats[pair].samples / len(routes[pair]) for pair in fitted], dtype=float)
    normal = (incidence.T @ sparse.diags(weights) @ incidence).toarray()
    eigenvalues, eigenvectors = np.linalg.eigh(normal)
    kept = eigenvalues > eigenvalues.max() * len(links) * np.finfo(float).eps
    rank = int(kept.sum())
    if len(fitted) <= rank:
        return dict(stats)
    covariance_unit = (eigenvectors[:, kept] / eigenvalues[kept]) @ eigenvectors[:, kept].T  # the pseudo-inverse
    estimate = incidence @ (covariance_unit @ (incidence.T @ (weights * means)))
    spread = float(weights @ (means - estimate) ** 2) / (len(fitted) - rank)
    variance = spread * np.asarray(incidence.multiply(incidence @ covariance_unit).sum(axis=1)).ravel()
    out = dict(stats)
    for pair, value, var in zip(fitted, estimate, variance):
        out[pair] = PathStat(max(0.0, float(value)), stats[pair].samples, float(np.sqrt(max(var, 0.0))))
    return out


def sampling_mape(stats: dict[Pair, PathStat]) -> float:
    """The MAPE a perfect model would score against these path estimates, from their standard
    errors: sqrt(2/π) · stderr / mean averaged over the paths (NaN when there is none). Probes
    sample a path a few times per window, so this floor is far above a host's, whose mean covers
    every packet."""
    ratios = [stat.stderr / stat.mean for stat in stats.values() if stat.mean > 0]
    return float(np.sqrt(2 / np.pi) * np.mean(ratios)) if ratios else float("nan")
