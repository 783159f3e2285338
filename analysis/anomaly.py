"""Anomaly detection on measured path delay against the twin: which paths stay outside what the
twin expects, and which links most likely cause it. Pure: the controller feeds it one window at a
time (:class:`Observation` per path) and reports what it returns. Delays in s; times Unix s.

**The band a measurement is compared with.** The twin's prediction interval (split-conformal on
simulator samples, :mod:`twin.models.intervals`; the point prediction when none was fitted) says
how wrong the twin is *on the simulator*. On a live network three more errors add to it:

1. the calibrated twin's residual error *on this network* (its per-switch walk, shaper timing,
   anything the calibration's three coefficients do not capture). It is systematic per path and
   changes little from window to window, so it is measured, not assumed: over the reference
   windows (the first ``reference_windows`` after start, then each later window in which the path
   was inside its band, the last ``history`` of them) each path's relative residual
   ``q = (m - p) / p`` is kept. The path's **bias** ``b`` is the median of its own residuals
   (the pooled median until it has 3); the **model spread** ``σ`` is the robust spread (1.4826 × MAD) of the de-biased
   residuals of all paths, with the part the probes' own noise explains (the median of
   ``(s / p)²``) taken out in quadrature, and never below ``min_spread``;
2. the probes' sampling noise: a path's window statistic holds a handful of probes, so its
   standard error ``s`` (:func:`controller.probes.path_stats`) is large and itself noisy. Once the
   path has 3 reference windows, ``s`` is its typical one there (its median probe variance / n:
   the median, because one stalled probe in a reference window would make the mean variance, and
   the band, many times too wide), not the window's own: a window whose few probes happen to agree
   must not narrow the band, and a fault that makes delay erratic (a queue that fills and drains)
   must not widen it — that spread is part of the evidence. Before, the window's own is used;
3. what varies from window to window on a path even when nothing is wrong: the traffic of 10 s is
   a random draw (its queues with it), which a twin fed the window's mean rates cannot predict. The
   path's own residual spread over the reference, ``σ_p`` (1.4826 × MAD of its relative residuals,
   once it has 3), measures it (with the probe noise of a usual window in it); on the emulated
   Abilene it was several times the pooled ``σ``, largest on the paths through loaded links.

With ``c = p · (1 + b)`` (the prediction corrected by the path's bias), the twin's ratio bounds
``ρ_lo, ρ_hi`` (1 without intervals) and the half-width ``h = z · sqrt((max(σ, σ_p) · p)² + s²)``,
the band is ``[c · ρ_lo - h, c · ρ_hi + h]``: the twin's own interval, widened on each side by
this network's residual spreads and the probes' noise combined (independent errors add in
quadrature).

**Persistence.** A path is *outside* in a window when its measurement lies outside the band, and
*anomalous* once it has been outside on the same side for ``persistence`` consecutive windows in
which it was measured (a window without enough probes of it neither extends nor breaks the
streak). One window inside ends the anomaly, and so do ``persistence`` windows in a row without
a measurement of the path (its traffic stopped). Delay is heavy-tailed (bursts of queueing, a
stalled software switch): on the emulated Abilene, with the band at ``z`` = 4.5, a quiet path was
outside in about 2 % of its windows; requiring ``persistence`` (3) windows in a row
makes a false alarm need that many such accidents in a row, and the default ``z`` = 7 makes them
rarer still (the small faults the narrower band was for are the links' loads' to find, below).
A fault on a link moves every path across it at once, and keeps moving them; the accidents strike
paths one at a time, or many at once for a single window (a stalled switch). So
``corroborated_persistence`` (2) windows suffice for a path when ``corroborating_paths`` (2) paths
sharing one of its links (itself included) have been outside on the same side as long, their
streaks begun within a window of each other. On the emulated Abilene, over 2.5 hours of quiet
(905 windows), two paths sharing a link were never outside together for 2 windows; a halved link
had 2-22 such paths in its second window. A path anomalous stays so while its streak goes on.
The converse is evidence too: when every link of a path outside is crossed by another path
measured inside its band in the same window, no cause on its links explains it (it would have
moved that path too), and the path needs ``contradicted_extra`` (1) window more than
``persistence`` (unless corroborated). Replayed on the six quiet runs on record (about 2.6 hours
of the emulated Abilene), this removed every false alarm of a single path (3: short paths whose
probes, mostly control-channel time, read a few ms high for 30 s) and changed no detection time of
the 45 injected faults on record.

**Suspect links.** Over the paths with a verdict — the anomalous ones (``A``) and the *normal*
ones, measured inside the band this window (``N``; paths outside but not yet anomalous count as
neither) — each link crossed by an anomalous path scores
``(A_l - penalty · N_l) / |A|``: the share of the anomalous paths that cross it, less ``penalty``
(default 0.5) per normal path that crosses it. A link shared by every anomalous path and crossed
by no normal one scores 1. The penalty is below 1 because a path that crosses the faulty link can
still look normal (the fault's share of its delay within its band, a long path's noise), so one
normal path must not outweigh an anomalous one; it separates two links that the same anomalous
paths share when normal paths cross only one of them. Ties: more anomalous paths first, then fewer
normal ones, then by name. Links are directed; a path's links are those of its route in place,
and a path whose route changed starts its reference and streak anew.

**Link loads.** Delay misses what moves little of it: traffic the controller's traffic matrix
does not see (its edge rules count known host pairs only), or packets lost where a buffer is too
small. The links' port counters see both, exactly. Each window the controller also hands over,
per link (:class:`LinkLoad`), the load its port counters carried and the load the twin expects —
the measured traffic matrix routed on the routing in place. Their difference as a share of the
capacity, ``d = (measured - expected) / capacity``, is near 0 and steady in a quiet network
(probes, LLDP and the loss a full queue causes make a small per-link bias; on the emulated
Abilene its robust spread was 0.1-0.9 % of capacity from window to window), so it is judged like a
path: against the link's own reference (its bias, the median of ``d`` over the windows in which
it was inside; its spread, 1.4826 × MAD, never below ``min_load_spread``), the band
``bias ± load_z · spread``, anomalous after ``load_persistence`` windows outside on one side
("more": traffic the twin does not know of; "less": traffic lost on or before the link). A link
needs 3 reference windows before it is judged. A link anomalous by load is the most direct
evidence there is: it ranks first among the suspects (by ``|d|``, the largest first: a link that
drops packets falls short by more than any link after it on the same flows), ahead of the links
inferred from the paths.

**Link loss.** The loads' "less" needs the traffic matrix to be right to within a few percent of
the capacity, so a link that loses a few percent of its packets hides in its band. Where the
controller also counts the packets its route rules sent to the link's port (``offered``,
:mod:`telemetry.offered`) beside those the port transmitted (``carried``), their difference is the
loss at that port, exactly and on that link alone (the links after it carry what reached them). The
share lost, ``(offered - carried) / offered`` (judged on windows with at least ``min_loss_packets``
offered), is judged against the link's own reference like the load (its median, its spread at
least ``min_loss_spread``), on one side only: a link is *lost* after ``load_persistence`` windows
above ``loss_z`` spreads. Lost links rank first of all the suspects, the largest loss first.
The two counters are read in separate replies, and a software switch refreshes its rules' counts
in rounds (Open vSwitch: the offered count trails the port's by up to half a second of traffic
at its default ``max-revalidator`` of 500 ms; ndt's emulations set 100 ms while they run). When
the phase of those rounds against the polling moves, every link's offered count jumps by the
same time's worth of its traffic, the same share of every link's window (on the emulated Abilene
at 500 ms, about 5 % of a 10-s window on every link at once). So each window's loss is taken less the
median loss of all counted links (with at least ``MIN_COMMON_LINKS`` of them): what one link loses
stands out, and a loss every link shows at once is not attributed to any.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field

import numpy as np

from twin.state.metrics import median_and_spread

Pair = tuple[str, str]
MIN_OWN_REFERENCE = 3  # reference windows a path needs before its own bias replaces the pooled one
MIN_COMMON_LINKS = 5  # links whose loss is counted before a window's common loss is taken out


class AnomalyError(ValueError):
    """Detector settings or an observation that cannot be judged; the message names the value."""


@dataclass(frozen=True)
class DetectorSettings:
    """z: the band's half-width in combined standard errors; persistence: consecutive windows
    outside before a path is anomalous; corroborated_persistence: fewer windows that suffice when
    ``corroborating_paths`` paths sharing one of its links (itself included) are outside on the same
    side as long (no effect at ``persistence`` or more); reference_windows: windows taken as quiet at the start
    (no verdicts before); history: quiet windows kept as the reference; penalty: a normal path's
    weight against a link; min_spread: floor of the relative model spread (0.05 = 5 %); load_z,
    load_persistence, min_load_spread: the same for the links' loads (the spread a share of the
    capacity: 0.005 = 0.5 %); loss_z, min_loss_spread: the same for the links' loss (a share of the
    offered packets), judged where a window offered at least ``min_loss_packets``."""

    z: float = 7.0
    persistence: int = 3
    corroborated_persistence: int = 2
    corroborating_paths: int = 2
    contradicted_extra: int = 1
    reference_windows: int = 6
    history: int = 30
    penalty: float = 0.5
    min_spread: float = 0.03
    load_z: float = 5.0
    load_persistence: int = 2
    min_load_spread: float = 0.005
    loss_z: float = 5.0
    min_loss_spread: float = 0.006
    min_loss_packets: int = 200

    def __post_init__(self):
        checks = ((self.z > 0, "z must be > 0"), (self.persistence >= 1, "persistence must be >= 1"),
                  (self.corroborated_persistence >= 1, "corroborated_persistence must be >= 1"),
                  (self.corroborating_paths >= 2, "corroborating_paths must be >= 2"),
                  (self.contradicted_extra >= 0, "contradicted_extra must be >= 0"),
                  (self.reference_windows >= 1, "reference_windows must be >= 1"),
                  (self.history >= self.reference_windows, "history must be >= reference_windows"),
                  (0 <= self.penalty <= 1, "penalty must lie in [0, 1]"),
                  (0 <= self.min_spread < 10, "min_spread must lie in [0, 10)"),
                  (self.load_z > 0, "load_z must be > 0"),
                  (self.load_persistence >= 1, "load_persistence must be >= 1"),
                  (0 < self.min_load_spread < 1, "min_load_spread must lie in (0, 1)"),
                  (self.loss_z > 0, "loss_z must be > 0"),
                  (0 < self.min_loss_spread < 1, "min_loss_spread must lie in (0, 1)"),
                  (self.min_loss_packets >= 1, "min_loss_packets must be >= 1"))
        for ok, message in checks:
            if not ok:
                raise AnomalyError(f"{message}, got {self}")


@dataclass(frozen=True)
class Observation:
    """One path over one window: the probes' mean delay (s), how many probes, their standard error
    (s), the calibrated twin's prediction (s) with its interval (s; None: no interval), and the
    directed links of its route in place."""

    src: str
    dst: str
    measured_s: float
    samples: int
    stderr_s: float
    predicted_s: float
    links: tuple[Pair, ...]
    twin_lo_s: float | None = None
    twin_hi_s: float | None = None

    @property
    def pair(self) -> Pair:
        return (self.src, self.dst)


@dataclass(frozen=True)
class LinkLoad:
    """One directed link over one window: the load its port counters measured (bit/s), the load the
    twin expects on it (the measured traffic matrix on the routing in place, bit/s), its capacity
    (bit/s); the packets its switch's route rules sent to its port and the packets the port
    transmitted (None: not counted)."""

    src: str
    dst: str
    measured_bps: float
    expected_bps: float
    capacity_bps: float
    offered_packets: int | None = None
    carried_packets: int | None = None

    @property
    def pair(self) -> Pair:
        return (self.src, self.dst)

    @property
    def deviation(self) -> float:
        """(measured - expected) / capacity."""
        return (self.measured_bps - self.expected_bps) / self.capacity_bps

    def loss(self, min_packets: int) -> float | None:
        """(offered - carried) / offered packets; None when not counted or fewer than ``min_packets`` were offered."""
        if self.offered_packets is None or self.carried_packets is None or self.offered_packets < min_packets:
            return None
        return (self.offered_packets - self.carried_packets) / self.offered_packets


@dataclass(frozen=True)
class LinkVerdict:
    """A link's load judged in one window: its band (bit/s), ``side`` +1 more than expected, -1 less,
    0 inside; ``streak``, ``since`` as for a path; ``deviation``: (measured - expected) / capacity,
    less the link's usual bias; ``loss``: the share of its offered packets lost, less its usual (NaN:
    not judged), ``lost``: that loss anomalous (``anomalous``: the load's or the loss's) after
    ``loss_streak`` windows in a row above its band."""

    src: str
    dst: str
    measured_bps: float
    expected_bps: float
    lo_bps: float
    hi_bps: float
    deviation: float
    side: int
    streak: int
    anomalous: bool
    since: float
    loss: float = math.nan
    lost: bool = False
    loss_streak: int = 0


@dataclass(frozen=True)
class PathVerdict:
    """A path's judgement in one window: its band (s), ``side`` +1 above, -1 below, 0 inside;
    ``streak`` consecutive windows outside on that side; ``since``: the end of the first window of
    the streak (Unix s; NaN when inside)."""

    src: str
    dst: str
    measured_s: float
    predicted_s: float
    lo_s: float
    hi_s: float
    stderr_s: float
    samples: int
    side: int
    streak: int
    anomalous: bool
    since: float
    links: tuple[Pair, ...]


@dataclass(frozen=True)
class Suspect:
    """A link crossed by anomalous paths, or whose load or loss is anomalous: its score (1 = every
    anomalous path and no normal one; 0 when no anomalous path crosses it), ``load_deviation`` (its
    anomalous load's deviation from the expected, a share of the capacity; 0: its load is as expected)
    and ``loss_ratio`` (its anomalous loss beyond its usual, a share of its offered packets; 0: none)."""

    src: str
    dst: str
    score: float
    anomalous_paths: int
    normal_paths: int
    load_deviation: float = 0.0
    loss_ratio: float = 0.0


@dataclass
class Verdict:
    """One window judged: every path measured in it, the anomalous paths (also those not measured
    this window), the suspects ranked, the paths newly anomalous, and the same for the links'
    loads; ``learning``: the reference is still being gathered, so nothing was judged."""

    ts: float
    learning: bool
    paths: list[PathVerdict] = field(default_factory=list)
    anomalies: list[PathVerdict] = field(default_factory=list)
    suspects: list[Suspect] = field(default_factory=list)
    new: list[Pair] = field(default_factory=list)
    model_spread: float = float("nan")
    links: list[LinkVerdict] = field(default_factory=list)
    link_anomalies: list[LinkVerdict] = field(default_factory=list)
    new_links: list[Pair] = field(default_factory=list)

    @property
    def anomalous(self) -> bool:
        """Any path or link anomalous now."""
        return bool(self.anomalies or self.link_anomalies)


@dataclass
class _Reference:
    """One path's reference windows: relative residuals, probe variances (s²) and relative standard errors."""

    residuals: deque
    variances: deque
    relative_errors: deque


class AnomalyDetector:
    """Judges windows of path delays one after another (see the module's docstring)."""

    def __init__(self, settings: DetectorSettings | None = None):
        self.settings = settings or DetectorSettings()
        self.windows = 0  # reference windows gathered
        self._reference: dict[Pair, _Reference] = {}
        self._links: dict[Pair, tuple[Pair, ...]] = {}
        self._streaks: dict[Pair, tuple[int, int, float]] = {}  # pair → (side, windows, since)
        self._anomalous: dict[Pair, PathVerdict] = {}
        self._unmeasured: dict[Pair, int] = {}  # anomalous pair → windows in a row without a measurement
        self._load_reference: dict[Pair, deque] = {}  # link → its deviations in the windows it was inside
        self._load_streaks: dict[Pair, tuple[int, int, float]] = {}
        self._load_anomalous: dict[Pair, LinkVerdict] = {}
        self._loss_reference: dict[Pair, deque] = {}  # link → its loss in the windows it was inside
        self._loss_streaks: dict[Pair, tuple[int, int, float]] = {}

    @property
    def learning(self) -> bool:
        return self.windows < self.settings.reference_windows

    def judge(self, ts: float, observations: list[Observation], loads: list[LinkLoad] = ()) -> Verdict:
        """The window ending at ``ts`` (Unix s): each path's and link's verdict, the anomalies, the suspects."""
        observations = [_checked(o) for o in observations]
        loads = [_checked_load(lk) for lk in loads]
        for o in observations:
            if self._links.get(o.pair, o.links) != o.links:  # rerouted: what was learned of it no longer holds
                self._reference.pop(o.pair, None)
                self._streaks.pop(o.pair, None)
                self._anomalous.pop(o.pair, None)
            self._links[o.pair] = o.links
        if self.learning:
            self._remember(observations)
            self._remember_loads(loads)
            self.windows += bool(observations)
            return Verdict(ts, True)
        links, new_links = self._judge_loads(ts, loads)
        spread, pooled_bias = self.model_spread(), self._pooled_bias()
        judged = []
        for o in observations:
            lo, hi, stderr = self.band(o, spread, pooled_bias)
            side = 1 if o.measured_s > hi else -1 if o.measured_s < lo else 0
            streak = self._streaks[o.pair] = _streak(self._streaks.get(o.pair), side, ts)
            judged.append((o, lo, hi, stderr, *streak))
        corroborated, contradicted = self._corroborated(judged), _contradicted(judged)
        paths, new = [], []
        for o, lo, hi, stderr, side, count, since in judged:
            going_on = o.pair in self._anomalous and count > 1  # the streak that made it anomalous goes on
            needed = self.settings.persistence + (self.settings.contradicted_extra if o.pair in contradicted else 0)
            anomalous = side != 0 and (count >= needed or o.pair in corroborated or going_on)
            verdict = PathVerdict(o.src, o.dst, o.measured_s, o.predicted_s, lo, hi, stderr, o.samples, side, count,
                                  anomalous, since, o.links)
            paths.append(verdict)
            if anomalous:
                if o.pair not in self._anomalous:
                    new.append(o.pair)
                self._anomalous[o.pair] = verdict
            else:
                self._anomalous.pop(o.pair, None)
        measured = {o.pair for o in observations}
        for pair in [p for p in self._anomalous if p not in measured]:
            self._unmeasured[pair] = self._unmeasured.get(pair, 0) + 1
            if self._unmeasured[pair] >= self.settings.persistence:
                self._anomalous.pop(pair)
        for pair in measured:
            self._unmeasured.pop(pair, None)
        self._remember([o for o, p in zip(observations, paths) if p.side == 0])
        anomalies = sorted(self._anomalous.values(), key=lambda p: (p.src, p.dst))
        normal = [p for p in paths if p.side == 0]
        link_anomalies = sorted(self._load_anomalous.values(), key=lambda lk: (lk.src, lk.dst))
        ranked = suspects(anomalies, normal, self.settings.penalty, link_anomalies)
        return Verdict(ts, False, paths, anomalies, ranked, new, spread, links, link_anomalies, new_links)

    def _corroborated(self, judged: list[tuple]) -> set[Pair]:
        """The paths outside for at least ``corroborated_persistence`` windows that share a link with
        enough others (``corroborating_paths``, themselves included) outside on the same side as long,
        their streaks begun within a window of each other."""
        settings = self.settings
        streaking = [(o, side, count) for o, _, _, _, side, count, _ in judged
                     if side != 0 and count >= settings.corroborated_persistence]
        crossing: dict[tuple[Pair, int], list[int]] = {}
        for o, side, count in streaking:
            for link in set(o.links):
                crossing.setdefault((link, side), []).append(count)
        return {o.pair for o, side, count in streaking
                if any(sum(abs(other - count) <= 1 for other in crossing[(link, side)]) >= settings.corroborating_paths
                       for link in set(o.links))}

    def _judge_loads(self, ts: float, loads: list[LinkLoad]) -> tuple[list[LinkVerdict], list[Pair]]:
        """Each link's load and loss against its references (see the module's docstring); (verdicts,
        links newly anomalous)."""
        settings = self.settings
        verdicts, new = [], []
        common = _common_loss(loads, settings.min_loss_packets)
        for lk in loads:
            load = self._judge_load(lk, ts)
            loss = self._judge_loss(lk, ts, common)
            if load is None and loss is None:
                continue
            side, count, since, deviation, lo, hi = load or (0, 0, math.nan, math.nan, math.nan, math.nan)
            load_anomalous = side != 0 and count >= settings.load_persistence
            excess, lost, lost_since, lost_count = loss or (math.nan, False, math.nan, 0)
            anomalous = load_anomalous or lost
            first = min((t for t, on in ((since, load_anomalous), (lost_since, lost)) if on), default=math.nan)
            verdict = LinkVerdict(lk.src, lk.dst, lk.measured_bps, lk.expected_bps, lo, hi, deviation, side, count,
                                  anomalous, first if anomalous else since, excess, lost, lost_count)
            verdicts.append(verdict)
            if anomalous:
                if lk.pair not in self._load_anomalous:
                    new.append(lk.pair)
                self._load_anomalous[lk.pair] = verdict
            else:
                self._load_anomalous.pop(lk.pair, None)
        measured = {lk.pair for lk in loads}
        for pair in [p for p in self._load_anomalous if p not in measured]:  # its counters are gone: the link is down
            self._load_anomalous.pop(pair)
        return verdicts, new

    def _judge_load(self, lk: LinkLoad, ts: float) -> tuple | None:
        """(side, streak, since, deviation less the bias, band lo, band hi in bit/s) of ``lk``'s load, or
        None while the link has too few reference windows (this one then joins them)."""
        settings = self.settings
        reference = self._load_reference.get(lk.pair)
        if reference is None or len(reference) < MIN_OWN_REFERENCE:
            self._load_reference.setdefault(lk.pair, deque(maxlen=settings.history)).append(lk.deviation)
            return None
        bias, spread = median_and_spread(reference, settings.min_load_spread)
        deviation = lk.deviation - bias
        side = 1 if deviation > settings.load_z * spread else -1 if deviation < -settings.load_z * spread else 0
        side, count, since = self._load_streaks[lk.pair] = _streak(self._load_streaks.get(lk.pair), side, ts)
        if side == 0:
            reference.append(lk.deviation)
        half = settings.load_z * spread * lk.capacity_bps
        centre = lk.expected_bps + bias * lk.capacity_bps
        return side, count, since, deviation, centre - half, centre + half

    def _judge_loss(self, lk: LinkLoad, ts: float, common: float) -> tuple | None:
        """(loss less the usual, lost, since, windows in a row above the band) of ``lk``, its loss taken
        less the window's ``common`` loss, or None when its loss is not counted this window or the link
        has too few reference windows (this one then joins them)."""
        settings = self.settings
        loss = lk.loss(settings.min_loss_packets)
        if loss is None:
            return None
        loss -= common
        reference = self._loss_reference.get(lk.pair)
        if reference is None or len(reference) < MIN_OWN_REFERENCE:
            self._loss_reference.setdefault(lk.pair, deque(maxlen=settings.history)).append(loss)
            return None
        usual, spread = median_and_spread(reference, settings.min_loss_spread)
        side = 1 if loss - usual > settings.loss_z * spread else 0
        side, count, since = self._loss_streaks[lk.pair] = _streak(self._loss_streaks.get(lk.pair), side, ts)
        if side == 0:
            reference.append(loss)
        return loss - usual, side != 0 and count >= settings.load_persistence, since, count

    def band(self, o: Observation, spread: float, pooled_bias: float) -> tuple[float, float, float]:
        """The band (lo, hi, s) ``o`` is judged against, and the standard error used, s; ``spread``:
        the pooled relative model spread σ, ``pooled_bias``: the bias of paths without their own."""
        ref = self._reference.get(o.pair)
        own = ref is not None and len(ref.residuals) >= MIN_OWN_REFERENCE
        bias = pooled_bias
        if own:
            bias, spread = median_and_spread(ref.residuals, spread)
        stderr = o.stderr_s
        if ref is not None and len(ref.variances) >= MIN_OWN_REFERENCE:
            stderr = math.sqrt(float(np.median(ref.variances)) / o.samples)
        center = o.predicted_s * (1.0 + bias)
        ratio_lo = 1.0 if o.twin_lo_s is None else o.twin_lo_s / o.predicted_s
        ratio_hi = 1.0 if o.twin_hi_s is None else o.twin_hi_s / o.predicted_s
        half = self.settings.z * math.hypot(spread * o.predicted_s, stderr)
        return center * ratio_lo - half, center * ratio_hi + half, stderr

    def model_spread(self) -> float:
        """σ: the relative spread of the twin's de-biased residuals on this network beyond the probes'
        noise (see the module's docstring), at least ``min_spread``."""
        deviations, noise = [], []
        for ref in self._reference.values():
            if ref.residuals:
                residuals = np.asarray(ref.residuals)
                deviations.append(residuals - np.median(residuals))
                noise.extend(ref.relative_errors)
        if not deviations:
            return self.settings.min_spread
        deviations = np.concatenate(deviations)
        total = median_and_spread(deviations)[1] ** 2
        probes = float(np.median(np.square(noise))) if noise else 0.0
        return max(self.settings.min_spread, math.sqrt(max(0.0, total - probes)))

    def _pooled_bias(self) -> float:
        residuals = [r for ref in self._reference.values() for r in ref.residuals]
        return float(np.median(residuals)) if residuals else 0.0

    def _remember(self, observations: list[Observation]) -> None:
        """Quiet observations join their paths' references."""
        keep = self.settings.history
        for o in observations:
            ref = self._reference.setdefault(o.pair, _Reference(deque(maxlen=keep), deque(maxlen=keep),
                                                                 deque(maxlen=keep)))
            ref.residuals.append((o.measured_s - o.predicted_s) / o.predicted_s)
            if o.samples >= 2:
                ref.variances.append(o.stderr_s ** 2 * o.samples)
            ref.relative_errors.append(o.stderr_s / o.predicted_s)

    def _remember_loads(self, loads: list[LinkLoad]) -> None:
        """Learning windows' deviations and losses join the links' references."""
        keep, minimum = self.settings.history, self.settings.min_loss_packets
        common = _common_loss(loads, minimum)
        for lk in loads:
            self._load_reference.setdefault(lk.pair, deque(maxlen=keep)).append(lk.deviation)
            loss = lk.loss(minimum)
            if loss is not None:
                self._loss_reference.setdefault(lk.pair, deque(maxlen=keep)).append(loss - common)


def _common_loss(loads: list[LinkLoad], min_packets: int) -> float:
    """The loss every link shows in a window (the median over the links whose loss is counted; 0 with
    fewer than ``MIN_COMMON_LINKS``): not one link's, but the two counters read out of step (see the
    module's docstring)."""
    losses = [loss for loss in (lk.loss(min_packets) for lk in loads) if loss is not None]
    return float(np.median(losses)) if len(losses) >= MIN_COMMON_LINKS else 0.0


def _contradicted(judged: list[tuple]) -> set[Pair]:
    """The paths outside whose every link another path crosses measured inside its band in the same
    window: a cause on one of its links would have moved that path too."""
    inside: dict[Pair, set[Pair]] = {}
    for o, _, _, _, side, _, _ in judged:
        if side == 0:
            for link in set(o.links):
                inside.setdefault(link, set()).add(o.pair)
    return {o.pair for o, _, _, _, side, _, _ in judged
            if side != 0 and o.links and all(inside.get(link, set()) - {o.pair} for link in o.links)}


def suspects(anomalous: list[PathVerdict], normal: list[PathVerdict], penalty: float,
             link_anomalies: list[LinkVerdict] = ()) -> list[Suspect]:
    """The links losing packets (the largest loss first), then those whose load is anomalous, then
    those crossed by ``anomalous`` paths, scored and ranked (see the module's docstring)."""
    by_paths = _path_suspects(anomalous, normal, penalty)
    if not link_anomalies:
        return by_paths
    inferred = {(s.src, s.dst): s for s in by_paths}
    direct = []

    def rank(v: LinkVerdict):
        return (0, -v.loss, v.src, v.dst) if v.lost else (1, -abs(v.deviation), v.src, v.dst)

    for lk in sorted(link_anomalies, key=rank):
        known = inferred.pop((lk.src, lk.dst), None)
        direct.append(Suspect(lk.src, lk.dst, known.score if known else 0.0, known.anomalous_paths if known else 0,
                              known.normal_paths if known else 0, lk.deviation if lk.side != 0 else 0.0,
                              lk.loss if lk.lost else 0.0))
    return direct + [s for s in by_paths if (s.src, s.dst) in inferred]


def _path_suspects(anomalous: list[PathVerdict], normal: list[PathVerdict], penalty: float) -> list[Suspect]:
    """The links crossed by ``anomalous`` paths, scored and ranked (see the module's docstring)."""
    if not anomalous:
        return []
    hits: dict[Pair, int] = {}
    for path in anomalous:
        for link in set(path.links):
            hits[link] = hits.get(link, 0) + 1
    clear: dict[Pair, int] = {}
    for path in normal:
        for link in set(path.links):
            if link in hits:
                clear[link] = clear.get(link, 0) + 1
    ranked = [Suspect(a, b, (n - penalty * clear.get((a, b), 0)) / len(anomalous), n, clear.get((a, b), 0))
              for (a, b), n in hits.items()]
    return sorted(ranked, key=lambda s: (-s.score, -s.anomalous_paths, s.normal_paths, s.src, s.dst))


def _streak(previous: tuple[int, int, float] | None, side: int, ts: float) -> tuple[int, int, float]:
    """(side, windows in a row outside on that side, end of the streak's first window) after a window
    ending at ``ts`` judged on ``side``, from the ``previous`` streak (None: none yet)."""
    was_side, count, since = previous or (0, 0, math.nan)
    if side == 0:
        return 0, 0, math.nan
    if side == was_side:
        return side, count + 1, since
    return side, 1, ts


def _checked(o: Observation) -> Observation:
    """``o`` if it can be judged; else :class:`AnomalyError` naming the path and the value."""
    name = f"path {o.src}->{o.dst}"
    if not (math.isfinite(o.predicted_s) and o.predicted_s > 0):
        raise AnomalyError(f"{name}: predicted delay must be finite and > 0 s, got {o.predicted_s}")
    if not (math.isfinite(o.measured_s) and o.measured_s >= 0):
        raise AnomalyError(f"{name}: measured delay must be finite and >= 0 s, got {o.measured_s}")
    if not (math.isfinite(o.stderr_s) and o.stderr_s >= 0) or o.samples < 1:
        raise AnomalyError(f"{name}: needs >= 1 probe and a finite standard error >= 0 s, got {o.samples} "
                           f"probes, {o.stderr_s} s")
    for bound in (o.twin_lo_s, o.twin_hi_s):
        if bound is not None and not (math.isfinite(bound) and bound >= 0):
            raise AnomalyError(f"{name}: the twin's interval bounds must be finite and >= 0 s, got {bound}")
    return o


def _checked_load(lk: LinkLoad) -> LinkLoad:
    """``lk`` if it can be judged; else :class:`AnomalyError` naming the link and the value."""
    name = f"link {lk.src}->{lk.dst}"
    if not (math.isfinite(lk.capacity_bps) and lk.capacity_bps > 0):
        raise AnomalyError(f"{name}: capacity must be finite and > 0 bit/s, got {lk.capacity_bps}")
    for what, value in (("measured", lk.measured_bps), ("expected", lk.expected_bps)):
        if not (math.isfinite(value) and value >= 0):
            raise AnomalyError(f"{name}: {what} load must be finite and >= 0 bit/s, got {value}")
    for what, count in (("offered", lk.offered_packets), ("carried", lk.carried_packets)):
        if count is not None and not (isinstance(count, (int, np.integer)) and count >= 0):
            raise AnomalyError(f"{name}: {what} packets must be a whole number >= 0 (or None: not counted), "
                               f"got {count!r}")
    return lk
