"""The closed loop in live emulation (DESIGN.md §1, issue 6):

live Mininet network under load with the ndt controller → telemetry (the controller's traffic
matrix) → NES + twin (calibrated to the emulation) proposes weights → the top candidates and the
current routing validated in a sandbox network → the winner pushed with gRPC Apply only if its
measured delay beats the current routing's → delays measured after, reported to the controller
(store, Prometheus) → rolled back if worse than before.

Decisions (traffic-matrix averaging, candidate choice, push and rollback rules) are pure functions;
``run_loop`` does the I/O. Delays in s, rates in bit/s.
"""

from __future__ import annotations

import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mininet_topos.calibration import (
    CalibratedPredictor,
    Correction,
    emulated_delays,
    mape,
)
from mininet_topos.network import REPO, EmulatedNetwork, EmulationError
from mininet_topos.topologies import EMU_PACKET
from mininet_topos.traffic import DRAIN_S, START_LEAD_S, Measurement, play
from mininet_topos.validate import Validation, validate
from optimizer.intent import Intent
from optimizer.objective import mean_delay
from optimizer.search import optimize
from twin.state import Flow, NetworkState

DEFAULT_OUT = REPO / "data" / "loop"


@dataclass
class LoopSettings:
    """duration/validate_s: traffic per live/sandbox measurement, s; margin: the validated relative
    improvement needed to push; rollback_tolerance: relative worsening after a push that rolls back."""

    duration: float = 10.0
    validate_s: float = 8.0
    warmup: float = 2.0
    candidates: int = 2
    margin: float = 0.05
    rollback_tolerance: float = 0.05
    intent: Intent = field(default_factory=lambda: Intent(max_evaluations=1500, time_limit_s=20.0))
    seed: int = 0


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


# ---------------------------------------------------------------------- decisions (pure)
def traffic_matrix(samples, start: float, end: float) -> dict[tuple[str, str], float]:
    """Mean of the positive rate samples (bit/s) per pair with ``start <= ts <= end``."""
    sums: dict[tuple[str, str], list[float]] = {}
    for s in samples:
        if start <= s.ts <= end and s.value > 0:
            sums.setdefault((s.src, s.dst), []).append(s.value)
    return {pair: float(np.mean(v)) for pair, v in sums.items()}


def estimated_state(state: NetworkState, rates: dict[tuple[str, str], float],
                    packet_size: float = EMU_PACKET) -> NetworkState:
    """``state``'s topology and routing with the measured traffic matrix (Poisson, ``packet_size`` bits)."""
    if not rates:
        raise EmulationError("the controller measured no traffic: the telemetry has no traffic matrix yet")
    return state.with_flows(Flow(s, d, rate=r, packet_size=packet_size) for (s, d), r in sorted(rates.items()))


class _Recorder:
    """A predictor that remembers every candidate's weights and mean predicted delay."""

    def __init__(self, predictor):
        self.predictor = predictor
        self.seen: dict[tuple, float] = {}

    def predict_delays(self, states):
        delays = self.predictor.predict_delays(states)
        for s, d in zip(states, delays):
            self.seen[tuple(s.link_arrays["weight"])] = mean_delay(s, d)
        return delays


def routing_key(state: NetworkState) -> tuple:
    """Identifies a routing by the paths it gives the flows (different weights may route alike)."""
    return tuple(tuple(links.tolist()) for links in state.flow_links)


def top_candidates(state: NetworkState, intent: Intent, predictor, k: int, seed: int = 0):
    """Up to ``k`` weight vectors from one NES run, best predicted first, each routing the flows
    differently from the current weights and from each other; plus the optimizer's result."""
    recorder = _Recorder(predictor)
    result = optimize(state, intent, recorder, seed=seed, allow_infeasible=True)
    keys = {routing_key(state)}
    out = []
    for weights, _ in sorted(recorder.seen.items(), key=lambda item: item[1]):
        routed = state.with_weights(np.array(weights))
        key = routing_key(routed)
        if key not in keys:
            keys.add(key)
            out.append(np.array(weights))
        if len(out) == k:
            break
    return out, result


def choose(means: list[float], margin: float) -> int:
    """Index of the routing to run: the measured best of ``means`` (index 0 = the current routing)
    if it beats the current one by more than ``margin`` (relative), else 0."""
    best = int(np.nanargmin(means))
    return best if best != 0 and means[best] < (1.0 - margin) * means[0] else 0


def should_roll_back(before: float, after: float, tolerance: float) -> bool:
    """True when the mean delay measured after a push is worse than before by more than ``tolerance``."""
    return after > (1.0 + tolerance) * before


# ---------------------------------------------------------------------- I/O
def measure(net: EmulatedNetwork, state: NetworkState, settings: LoopSettings, seed: int, label: str) -> Measurement:
    """Play the live traffic, report the measured path delays to the controller (store, Prometheus)."""
    measured = play(net, state, settings.duration, settings.warmup, seed, net.workdir / label)
    net.report_measured(measured.by_pair(state), source=f"emulation: {label}")
    return measured


def push_and_verify(net: EmulatedNetwork, state: NetworkState, old: np.ndarray, new: np.ndarray,
                    before: Measurement, settings: LoopSettings, timeline: Timeline, seed: int) -> dict:
    """Push ``new`` weights, measure; roll back to ``old`` if delay got worse. Returns what happened."""
    with timeline.phase("push"):
        net.apply_vector(new, who="ndt loop: validated winner")
    with timeline.phase("measure after"):
        after = measure(net, state.with_weights(new), settings, seed, "after")
    out = {"after": after, "rolled_back": False, "final_weights": new}
    if should_roll_back(before.mean_delay(state), after.mean_delay(state), settings.rollback_tolerance):
        with timeline.phase("rollback"):
            net.apply_vector(old, who="ndt loop: rollback")
        with timeline.phase("measure after rollback"):
            out["after_rollback"] = measure(net, state.with_weights(old), settings, seed + 1, "after-rollback")
        out.update(rolled_back=True, final_weights=old)
    return out


def run_loop(state: NetworkState, predictor, correction: Correction, settings: LoopSettings,
             out_dir: Path = DEFAULT_OUT, metrics_port: int = 0, log=print, prefixes: tuple[str, str] = ("l", "v"),
             tag: str = "live") -> dict:
    """One iteration of the loop on ``state`` (topology, its traffic, initial weights). Returns the
    report (also written as JSON + PNG in ``out_dir``). ``prefixes``: Mininet name prefixes of the live
    and the sandbox network; ``tag``: the live network's directory under data/logs."""
    timeline = Timeline()
    calibrated = CalibratedPredictor(predictor, correction)
    current = state.link_arrays["weight"].copy()
    with ExitStack() as stack:
        with timeline.phase("live network up"):
            live = stack.enter_context(EmulatedNetwork(state, prefixes[0], tag=tag, metrics_port=metrics_port))
        log(f"live network: {len(state.nodes)} switches, {len(state.flows)} flows; metrics {live.metrics_url}")
        with timeline.phase("measure before"):
            started = time.time()
            before = measure(live, state, settings, settings.seed, "before")
            ended = time.time()
        log(f"measured before: mean delay {1e3 * before.mean_delay(state):.3f} ms")
        loop_started = time.monotonic()
        with timeline.phase("telemetry"):
            from telemetry.store import TelemetryStore

            store = TelemetryStore(live.store_path)
            window = (started + START_LEAD_S + settings.warmup + 1.0, ended - DRAIN_S)
            rates = traffic_matrix(store.traffic_matrices(started, ended), *window)
            store.close()
            estimated = estimated_state(state, rates)
        with timeline.phase("optimize"):
            candidates, optimization = top_candidates(estimated, settings.intent, calibrated, settings.candidates,
                                                      settings.seed)
        log(f"optimizer: {optimization.evaluations} candidates in {optimization.wall_s:.1f} s, "
            f"{len(candidates)} distinct routings to validate")
        with timeline.phase("validate"):
            validations = validate(estimated, [current] + candidates, predictor, correction, settings.validate_s,
                                   settings.warmup, settings.seed, tag=f"{tag}-sandbox", prefix=prefixes[1])
        means = [v.mean_measured(estimated) for v in validations]
        winner = choose(means, settings.margin)
        log("validated (mean ms, current first): " + ", ".join(f"{1e3 * m:.3f}" for m in means) + f"; winner {winner}")
        outcome = {"after": None, "rolled_back": False, "final_weights": current}
        if winner:
            outcome = push_and_verify(live, state, current, validations[winner].weights, before, settings, timeline,
                                      settings.seed + 1)
            loop_s = timeline.phases[[p[0] for p in timeline.phases].index("push")][2] - (loop_started - timeline.t0)
        else:
            loop_s = time.monotonic() - loop_started
            with timeline.phase("measure after"):
                outcome["after"] = measure(live, state, settings, settings.seed + 1, "after")
        final_state = state.with_weights(outcome["final_weights"])
        final = outcome.get("after_rollback") or outcome["after"]
        expected = emulated_delays(final_state, predictor.predict_delays([final_state])[0], correction)
        report = _report(state, before, final, outcome, validations, estimated, winner, expected, loop_s, timeline,
                         live, optimization)
    write_report(report, state, before, final, timeline, out_dir)
    return report


def _report(state, before, final, outcome, validations: list[Validation], estimated, winner, expected, loop_s,
            timeline, live, optimization) -> dict:
    return {
        "topology": state.name, "nodes": len(state.nodes), "links": len(state.links), "flows": len(state.flows),
        "measured": {"before": before.mean_delay(state), "after": final.mean_delay(state)},
        "improvement": 1.0 - final.mean_delay(state) / before.mean_delay(state),
        "twin_vs_emulation_mape": mape(expected, final.reliable_delay()),
        "loop_s": loop_s,
        "pushed": bool(winner), "rolled_back": outcome["rolled_back"],
        "pushed_weights": [float(w) for w in validations[winner].weights] if winner else None,
        "final_weights": [float(w) for w in outcome["final_weights"]],
        "validated": [v.to_dict(estimated) for v in validations],
        "optimizer": {"evaluations": optimization.evaluations, "wall_s": optimization.wall_s},
        "before": before.to_dict(state), "after": final.to_dict(state),
        "timeline": [{"phase": n, "start_s": a, "end_s": b} for n, a, b in timeline.phases],
        "metrics_url": live.metrics_url, "store": str(live.store_path),
    }


def write_report(report: dict, state: NetworkState, before: Measurement, after: Measurement, timeline: Timeline,
                 out_dir: Path) -> None:
    """report.json and report.png (per-path delay before/after; the loop's timeline) in ``out_dir``."""
    import json

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ndt.output import _clean

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    report["report_json"], report["report_png"] = str(out_dir / "report.json"), str(out_dir / "report.png")
    (out_dir / "report.json").write_text(json.dumps(_clean(report), indent=1))
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(11, 7), gridspec_kw={"height_ratios": [3, 1]})
    order = np.argsort(-np.nan_to_num(before.delay))
    x = np.arange(len(order))
    ax1.bar(x - 0.2, 1e3 * before.delay[order], 0.4, label=f"before (mean {1e3 * before.mean_delay(state):.2f} ms)")
    ax1.bar(x + 0.2, 1e3 * after.delay[order], 0.4, label=f"after (mean {1e3 * after.mean_delay(state):.2f} ms)")
    ax1.set_xlabel("path (sorted by delay before)")
    ax1.set_ylabel("measured one-way delay, ms")
    ax1.set_title(f"{state.name}: measured per-path delay before/after the loop")
    ax1.legend()
    for i, (name, start, end) in enumerate(timeline.phases):
        ax2.barh(0, end - start, left=start, color=f"C{i % 10}", edgecolor="k")
        ax2.text((start + end) / 2, 0.45 + 0.3 * (i % 2), name, ha="center", fontsize=7)
    ax2.set_yticks([])
    ax2.set_ylim(-0.6, 1.0)
    ax2.set_xlabel(f"s since start (loop: telemetry → flow rules {report['loop_s']:.1f} s)")
    fig.tight_layout()
    fig.savefig(out_dir / "report.png", dpi=110)
    plt.close(fig)
