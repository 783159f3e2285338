"""One iteration of the closed loop, step by step (docs/architecture.md):

measure the live network → read the traffic matrix from telemetry → estimate the state → decide
whether to re-optimize → NES + the calibrated twin propose candidates → the sandbox validates them
beside the current routing → push the validated winner only if it measured better → measure after
→ roll back if worse → compare the twin's prediction with what was measured.

The decisions are the pure functions of :mod:`controller.loop.decisions`; the network and the
sandbox are the interfaces of :mod:`controller.loop.network`. Delays in s, rates in bit/s.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from controller.loop.decisions import choose, should_reoptimize, should_roll_back, top_candidates
from mininet_topos.sandbox import Validation
from mininet_topos.traffic import DRAIN_S, MIN_PACKETS, START_LEAD_S, Measurement
from optimizer.intent import Intent
from optimizer.search import Optimization
from telemetry.traffic_matrix import estimated_state
from twin.calibration.correction import (
    CalibratedPredictor,
    Correction,
    effective_state,
    emulated_delays,
    measurement_noise,
)
from twin.calibration.port_walk import Walk
from twin.state.metrics import mape
from twin.state.model import NetworkState


@dataclass
class LoopSettings:
    """duration/validate_s/verify_s: traffic per live measurement before optimizing, per sandbox
    measurement, per live measurement after the decision (longer: the twin is judged on it), s;
    margin: the validated relative improvement needed to push; rollback_tolerance: relative
    worsening after a push that rolls back; packet_size: bits per packet of the estimated traffic."""

    duration: float = 10.0
    validate_s: float = 8.0
    verify_s: float = 30.0
    warmup: float = 2.0
    candidates: int = 2
    margin: float = 0.05
    rollback_tolerance: float = 0.05
    intent: Intent = field(default_factory=lambda: Intent(max_evaluations=1500, time_limit_s=20.0))
    seed: int = 0
    packet_size: float = 8000.0


@dataclass
class Timeline:
    """Phases of the loop as (name, start, end), s since the loop started."""

    t0: float = field(default_factory=time.monotonic)
    phases: list = field(default_factory=list)

    def phase(self, name: str):
        timeline = self

        class _Phase:
            def __enter__(self):
                self.start = time.monotonic() - timeline.t0
                return self

            def __exit__(self, *exc):
                timeline.phases.append((name, self.start, time.monotonic() - timeline.t0))

        return _Phase()


@dataclass
class PushOutcome:
    """A push and its verification: ``after`` measured under the new weights, ``after_rollback``
    under the old ones if it rolled back; ``pushed_at``: monotonic time the flow rules went in, s."""

    pushed_at: float
    after: Measurement
    final_weights: np.ndarray
    rolled_back: bool = False
    after_rollback: Measurement | None = None


@dataclass
class IterationResult:
    """What one iteration saw, decided and measured (delays s, rates bit/s).

    ``before``/``final``: measured before and at the end (after the push, its rollback, or with the
    routing kept); ``winner``: index into ``validations`` (0 = the current routing, not pushed);
    ``loop_s``: telemetry read → flow rules installed (or the decision to keep them), s;
    ``expected``: the calibrated twin's per-flow delay for the final routing; ``twin_mape`` against
    ``final`` knowing the switches' walk, ``twin_mape_walk_unknown`` not knowing it; ``noise_mape``:
    what a perfect model would score against a measurement this long."""

    k: int
    event: str
    state: NetworkState
    before: Measurement
    final: Measurement
    rates: dict
    estimated: NetworkState
    reoptimized: bool
    final_weights: np.ndarray
    loop_s: float | None = None
    validations: list[Validation] = field(default_factory=list)
    winner: int = 0
    rolled_back: bool = False
    optimization: Optimization | None = None
    walk: Walk | None = None
    expected: np.ndarray | None = None
    twin_mape: float = float("nan")
    twin_mape_walk_unknown: float = float("nan")
    noise_mape: float = float("nan")

    @property
    def pushed(self) -> bool:
        return bool(self.winner)


class ClosedLoop:
    """The loop over ``network`` with candidates tried in ``sandbox``; the twin is ``predictor``
    corrected by ``correction`` to what the network measures."""

    def __init__(self, network, sandbox, predictor, correction: Correction, settings: LoopSettings,
                 timeline: Timeline | None = None, log=print):
        self.network = network
        self.sandbox = sandbox
        self.predictor = predictor
        self.correction = correction
        self.settings = settings
        self.timeline = timeline or Timeline()
        self.log = log

    def measure(self, state: NetworkState, seed: int, label: str, duration: float | None = None) -> Measurement:
        """The network measured for ``duration`` s (default ``settings.duration``)."""
        return self.network.measure(state, duration or self.settings.duration, self.settings.warmup, seed, label)

    def push_and_verify(self, state: NetworkState, old: np.ndarray, new: np.ndarray, before: Measurement,
                        seed: int, name=lambda phase: phase) -> PushOutcome:
        """Push ``new`` weights, measure; roll back to ``old`` if delay got worse than ``before``."""
        settings, timeline = self.settings, self.timeline
        with timeline.phase(name("push")):
            self.network.push(new, state.links, "ndt loop: validated winner")
        pushed_at = time.monotonic()
        with timeline.phase(name("measure after")):
            after = self.measure(state.with_weights(new), seed, "after", settings.verify_s)
        outcome = PushOutcome(pushed_at=pushed_at, after=after, final_weights=new)
        if should_roll_back(before.mean_delay(state), after.mean_delay(state), settings.rollback_tolerance):
            with timeline.phase(name("rollback")):
                self.network.push(old, state.links, "ndt loop: rollback")
            with timeline.phase(name("measure after rollback")):
                outcome.after_rollback = self.measure(state.with_weights(old), seed + 1, "after-rollback",
                                                      settings.verify_s)
            outcome.rolled_back, outcome.final_weights = True, old
        return outcome

    def iterate(self, state: NetworkState, k: int, event: str, last_rates: dict | None) -> IterationResult:
        """Measure, read the traffic matrix, and unless it barely moved since ``last_rates``: optimize,
        validate, push the validated winner, verify (rollback)."""
        settings, timeline, log = self.settings, self.timeline, self.log
        name = (lambda phase: phase) if k == 0 else (lambda phase: f"{phase} #{k + 1}")
        current = state.link_arrays["weight"].copy()
        seed = settings.seed + 10 * k
        with timeline.phase(name("measure before")):
            started = time.time()
            before = self.measure(state, seed, f"before-{k + 1}")
            ended = time.time()
        log(f"iteration {k + 1}: measured mean delay {1e3 * before.mean_delay(state):.3f} ms")
        loop_started = time.monotonic()
        with timeline.phase(name("telemetry")):
            rates = self.network.traffic_matrix(started + START_LEAD_S + settings.warmup + 1.0, ended - DRAIN_S)
            estimated = estimated_state(state, rates, settings.packet_size)
        result = IterationResult(k=k, event=event, state=state, before=before, final=before, rates=rates,
                                 estimated=estimated, reoptimized=should_reoptimize(last_rates, rates),
                                 final_weights=current)
        if not result.reoptimized:
            log(f"iteration {k + 1}: the traffic matrix did not move; routing kept")
            return self._judge_twin(result)
        with timeline.phase(name("optimize")):
            candidates, result.optimization = top_candidates(estimated, settings.intent,
                                                             CalibratedPredictor(self.predictor, self.correction),
                                                             settings.candidates, seed)
        log(f"optimizer: {result.optimization.evaluations} candidates in {result.optimization.wall_s:.1f} s, "
            f"{len(candidates)} distinct routings to validate")
        if candidates:
            with timeline.phase(name("validate")):
                result.validations = self.sandbox.validate(estimated, [current] + candidates, self.predictor,
                                                           self.correction, settings.validate_s, settings.warmup, seed)
            means = [v.mean_measured(estimated) for v in result.validations]
            result.winner = choose(means, settings.margin)
            log("validated (mean ms, current first): " + ", ".join(f"{1e3 * m:.3f}" for m in means)
                + f"; winner {result.winner}")
        if result.winner:
            pushed = self.push_and_verify(state, current, result.validations[result.winner].weights, before,
                                          seed + 1, name)
            result.loop_s = pushed.pushed_at - loop_started
            result.rolled_back, result.final_weights = pushed.rolled_back, pushed.final_weights
            result.final = pushed.after_rollback or pushed.after
        else:
            result.loop_s = time.monotonic() - loop_started
            with timeline.phase(name("measure after")):
                result.final = self.measure(state, seed + 1, f"after-{k + 1}", settings.verify_s)
        return self._judge_twin(result)

    def _judge_twin(self, result: IterationResult) -> IterationResult:
        """The calibrated twin's delays for the routing the iteration ended with, knowing the network's
        walk (read now: no port has come or gone since the final measurement) and not knowing it, and
        the error a perfect model would show against a measurement as long as the final one."""
        final_state = result.state.with_weights(result.final_weights)
        result.walk = self.network.walk(final_state)
        raw = self.predictor.predict_delays([effective_state(final_state, self.correction)])[0]
        result.expected = emulated_delays(final_state, raw, self.correction, result.walk)
        measured = result.final.reliable_delay()
        result.twin_mape = mape(result.expected, measured)
        result.twin_mape_walk_unknown = mape(emulated_delays(final_state, raw, self.correction), measured)
        result.noise_mape = measurement_noise(final_state, self.correction, result.final.duration,
                                              result.final.warmup, MIN_PACKETS, seed=result.k)
        return result

    def run(self, state: NetworkState, shifts: tuple[NetworkState, ...] = (),
            failures: tuple[tuple[str, str], ...] = ()) -> list[IterationResult]:
        """The loop on ``state`` (topology, traffic, initial weights), then once more for each state in
        ``shifts`` (the same topology with shifted traffic), then once per link (a, b) of ``failures``
        taken down one by one, each iteration on the remaining topology."""
        current = state.link_arrays["weight"].copy()
        iterations = []
        last_rates, traffic, down = None, state, []
        events = [("start", None)] + [("shift", s) for s in shifts] + [("fail", pair) for pair in failures]
        for k, (event, detail) in enumerate(events):
            label = event
            if event == "shift":
                traffic = detail
            elif event == "fail":
                self.network.fail_link(*detail)
                down += [detail, detail[::-1]]
                last_rates = None
                label = f"fail {detail[0]}-{detail[1]}"
                self.log(f"link {detail[0]}-{detail[1]} failed")
            routed = traffic.with_weights(current)
            routed = routed.without_links(down) if down else routed
            result = self.iterate(routed, k, label, last_rates)
            iterations.append(result)
            final = dict(zip(routed.link_index, result.final_weights))
            current = np.array([final.get((lk.src, lk.dst), w) for lk, w in zip(state.links, current)])
            last_rates = result.rates
        return iterations
