"""The closed loop in live emulation (DESIGN.md §1, issue 6):

live Mininet network under load with the ndt controller → telemetry (the controller's traffic
matrix) → NES + twin (calibrated to the emulation) proposes weights → the top candidates and the
current routing validated in a sandbox network → the winner pushed with gRPC Apply only if its
measured delay beats the current routing's → delays measured after, reported to the controller
(store, Prometheus) → rolled back if worse than before. With traffic shifts the loop runs again on
the same live network, re-optimizing only when the measured traffic matrix moved.

Decisions (traffic-matrix averaging, candidate choice, push and rollback rules) are pure functions;
``run_loop`` does the I/O. Delays in s, rates in bit/s.
"""

from __future__ import annotations

import time
from contextlib import ExitStack
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from mininet_topos.calibration import (
    CalibratedPredictor,
    Correction,
    effective_state,
    emulated_delays,
    mape,
    measurement_noise,
)
from mininet_topos.network import REPO, EmulatedNetwork, EmulationError, free_port
from mininet_topos.topologies import EMU_PACKET
from mininet_topos.traffic import DRAIN_S, MIN_PACKETS, START_LEAD_S, Measurement, play
from mininet_topos.validate import validate
from optimizer.intent import Intent
from optimizer.objective import mean_delay
from optimizer.search import optimize, undo_idle_changes
from twin.predictors import get_predictor
from twin.state import Flow, NetworkState

DEFAULT_OUT = REPO / "data" / "loop"


@dataclass
class LoopSettings:
    """duration/validate_s/verify_s: traffic per live measurement before optimizing, per sandbox
    measurement, per live measurement after the decision (longer: the twin is judged on it), s;
    margin: the validated relative improvement needed to push; rollback_tolerance: relative
    worsening after a push that rolls back."""

    duration: float = 10.0
    validate_s: float = 8.0
    verify_s: float = 30.0
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


def top_candidates(state: NetworkState, intent: Intent, predictor, k: int, seed: int = 0):
    """Up to ``k`` weight vectors from one NES run, best predicted first, each routing the flows
    differently from the current weights and from each other; plus the optimizer's result."""
    recorder = _Recorder(predictor)
    result = optimize(state, intent, recorder, seed=seed, allow_infeasible=True, screen=get_predictor("qt"))
    keys = {state.routing_key}
    out = []
    for weights, _ in sorted(recorder.seen.items(), key=lambda item: item[1]):
        routed = state.with_weights(np.array(weights))
        key = routed.routing_key
        if key not in keys:
            keys.add(key)
            out.append(undo_idle_changes(state, state.link_arrays["weight"], np.array(weights)))
        if len(out) == k:
            break
    return out, result


def traffic_shifted(old: dict, new: dict, threshold: float = 0.15) -> bool:
    """True when the traffic matrix moved: Σ|new − old| over pairs > ``threshold`` × Σ old (bit/s)."""
    pairs = set(old) | set(new)
    moved = sum(abs(new.get(p, 0.0) - old.get(p, 0.0)) for p in pairs)
    return moved > threshold * max(sum(old.values()), 1e-12)


def shift_traffic(state: NetworkState, destination: str, factor: float) -> NetworkState:
    """The traffic shifted towards ``destination``: every flow to it multiplied by ``factor``."""
    if destination not in state.node_index:
        raise EmulationError(f"traffic shift: node {destination!r} is not in the topology")
    if not factor > 0:
        raise EmulationError(f"traffic shift towards {destination}: factor must be positive, got {factor}")
    return state.with_flows(replace(f, rate=f.rate * factor) if f.dst == destination else f for f in state.flows)


def choose(means: list[float], margin: float) -> int:
    """Index of the routing to run: the measured best of ``means`` (index 0 = the current routing)
    if it beats the current one by more than ``margin`` (relative), else 0."""
    best = int(np.nanargmin(means))
    return best if best != 0 and means[best] < (1.0 - margin) * means[0] else 0


def should_roll_back(before: float, after: float, tolerance: float) -> bool:
    """True when the mean delay measured after a push is worse than before by more than ``tolerance``."""
    return after > (1.0 + tolerance) * before


# ---------------------------------------------------------------------- I/O
def measure(net: EmulatedNetwork, state: NetworkState, settings: LoopSettings, seed: int, label: str,
            duration: float | None = None) -> Measurement:
    """Play the live traffic for ``duration`` s (default ``settings.duration``), report the measured
    path delays to the controller (store, Prometheus)."""
    measured = play(net, state, duration or settings.duration, settings.warmup, seed, net.workdir / label)
    net.report_measured(measured.by_pair(state), source=f"emulation: {label}")
    return measured


def push_and_verify(net: EmulatedNetwork, state: NetworkState, old: np.ndarray, new: np.ndarray,
                    before: Measurement, settings: LoopSettings, timeline: Timeline, seed: int,
                    name=lambda phase: phase) -> dict:
    """Push ``new`` weights, measure; roll back to ``old`` if delay got worse. Returns what happened
    (``pushed_at``: monotonic time the new flow rules were installed)."""
    with timeline.phase(name("push")):
        net.apply_vector(new, who="ndt loop: validated winner", links=state.links)
    out = {"pushed_at": time.monotonic(), "rolled_back": False, "final_weights": new}
    with timeline.phase(name("measure after")):
        out["after"] = after = measure(net, state.with_weights(new), settings, seed, "after", settings.verify_s)
    if should_roll_back(before.mean_delay(state), after.mean_delay(state), settings.rollback_tolerance):
        with timeline.phase(name("rollback")):
            net.apply_vector(old, who="ndt loop: rollback", links=state.links)
        with timeline.phase(name("measure after rollback")):
            out["after_rollback"] = measure(net, state.with_weights(old), settings, seed + 1, "after-rollback",
                                            settings.verify_s)
        out.update(rolled_back=True, final_weights=old)
    return out


def run_loop(state: NetworkState, predictor, correction: Correction, settings: LoopSettings,
             out_dir: Path = DEFAULT_OUT, metrics_port: int = 0, log=print, prefixes: tuple[str, str] = ("l", "v"),
             tag: str = "live", shifts: tuple[NetworkState, ...] = (), failures: tuple[tuple[str, str], ...] = (),
             prometheus: bool = False) -> dict:
    """The loop on ``state`` (topology, its traffic, initial weights), then once more for each state
    in ``shifts`` (the same topology with shifted traffic), re-optimizing only when the measured
    traffic matrix moved. Returns the report of the first iteration with every iteration's summary
    (also written as JSON + PNG in ``out_dir``). ``prefixes``: Mininet name prefixes of the live and
    the sandbox network; ``tag``: the live network's directory under data/logs; ``failures``: after
    the shifts, links (a, b) taken down one by one in the live network, each followed by an
    iteration on the remaining topology (the sandbox lacks the link too); ``prometheus``: a
    Prometheus server scrapes the live controller, its database kept in ``out_dir``/prometheus."""
    timeline = Timeline()
    out_dir = Path(out_dir).resolve()
    current = state.link_arrays["weight"].copy()
    iterations = []
    with ExitStack() as stack:
        with timeline.phase("live network up"):
            live = stack.enter_context(EmulatedNetwork(state, prefixes[0], tag=tag, metrics_port=metrics_port))
        log(f"live network: {len(state.nodes)} switches, {len(state.flows)} flows; metrics {live.metrics_url}")
        prom = None
        if prometheus:
            from mininet_topos.prometheus import PrometheusServer

            prom = stack.enter_context(PrometheusServer(out_dir / "prometheus", free_port(),
                                                        f"127.0.0.1:{live.metrics_port}"))
            log(f"Prometheus scraping it: {prom.url}")
        last_rates, traffic, down = None, state, []
        events = [("start", None)] + [("shift", s) for s in shifts] + [("fail", pair) for pair in failures]
        for k, (event, detail) in enumerate(events):
            if event == "shift":
                traffic = detail
            elif event == "fail":
                live.fail_link(*detail)
                down += [detail, detail[::-1]]
                last_rates = None  # a new topology: always re-optimize
                log(f"link {detail[0]}-{detail[1]} failed")
            routed = traffic.with_weights(current)
            routed = routed.without_links(down) if down else routed
            result = _iteration(live, routed, predictor, correction, settings, timeline, log, prefixes[1], tag, k,
                                last_rates)
            result["event"] = f"{event} {detail[0]}-{detail[1]}" if event == "fail" else event
            iterations.append(result)
            final = dict(zip(routed.link_index, result["final_weights"]))
            current = np.array([final.get((lk.src, lk.dst), w) for lk, w in zip(state.links, current)])
            last_rates = result["rates"]
        report = _report(iterations[0], timeline, live)
        if prom is not None:
            report["prometheus"] = _prometheus_check(prom, out_dir / "prometheus")
    report["iterations"] = [_summary(it) for it in iterations]
    first = iterations[0]
    write_report(report, first["state"], first["before"], first["final"], timeline, out_dir)
    return report


def _iteration(live, state, predictor, correction, settings, timeline, log, sandbox_prefix, tag, k, last_rates) -> dict:
    """Measure, read the traffic matrix, and unless it barely moved since ``last_rates``: optimize,
    validate, push the validated winner, verify (rollback)."""
    name = (lambda phase: phase) if k == 0 else (lambda phase: f"{phase} #{k + 1}")
    current = state.link_arrays["weight"].copy()
    seed = settings.seed + 10 * k
    with timeline.phase(name("measure before")):
        started = time.time()
        before = measure(live, state, settings, seed, f"before-{k + 1}")
        ended = time.time()
    log(f"iteration {k + 1}: measured mean delay {1e3 * before.mean_delay(state):.3f} ms")
    loop_started = time.monotonic()
    with timeline.phase(name("telemetry")):
        from telemetry.store import TelemetryStore

        store = TelemetryStore(live.store_path)
        window = (started + START_LEAD_S + settings.warmup + 1.0, ended - DRAIN_S)
        rates = traffic_matrix(store.traffic_matrices(started, ended), *window)
        store.close()
        estimated = estimated_state(state, rates)
    out = {"k": k, "state": state, "before": before, "final": before, "rates": rates, "estimated": estimated,
           "validations": [], "winner": 0, "rolled_back": False, "final_weights": current, "optimization": None,
           "loop_s": None, "reoptimized": last_rates is None or traffic_shifted(last_rates, rates)}
    if not out["reoptimized"]:
        log(f"iteration {k + 1}: the traffic matrix did not move; routing kept")
        return _finish(out, live, predictor, correction)
    with timeline.phase(name("optimize")):
        candidates, out["optimization"] = top_candidates(estimated, settings.intent,
                                                         CalibratedPredictor(predictor, correction),
                                                         settings.candidates, seed)
    log(f"optimizer: {out['optimization'].evaluations} candidates in {out['optimization'].wall_s:.1f} s, "
        f"{len(candidates)} distinct routings to validate")
    winner = 0
    if candidates:
        with timeline.phase(name("validate")):
            out["validations"] = validate(estimated, [current] + candidates, predictor, correction,
                                          settings.validate_s, settings.warmup, seed, tag=f"{tag}-sandbox",
                                          prefix=sandbox_prefix)
        means = [v.mean_measured(estimated) for v in out["validations"]]
        out["winner"] = winner = choose(means, settings.margin)
        log("validated (mean ms, current first): " + ", ".join(f"{1e3 * m:.3f}" for m in means) + f"; winner {winner}")
    if winner:
        pushed = push_and_verify(live, state, current, out["validations"][winner].weights, before, settings, timeline,
                                 seed + 1, name)
        out["loop_s"] = pushed["pushed_at"] - loop_started
        out.update(rolled_back=pushed["rolled_back"], final_weights=pushed["final_weights"],
                   final=pushed.get("after_rollback") or pushed["after"])
    else:
        out["loop_s"] = time.monotonic() - loop_started
        with timeline.phase(name("measure after")):
            out["final"] = measure(live, state, settings, seed + 1, f"after-{k + 1}", settings.verify_s)
    return _finish(out, live, predictor, correction)


def _finish(out: dict, live: EmulatedNetwork, predictor, correction: Correction) -> dict:
    """Add the calibrated twin's delays for the routing the iteration ended with, knowing the live
    network's walk (read now: no port has come or gone since the final measurement) and not knowing
    it, and the error a perfect model would show against a measurement as long as the final one."""
    final_state = out["state"].with_weights(out["final_weights"])
    out["walk"] = live.walk(final_state)
    raw = predictor.predict_delays([effective_state(final_state, correction)])[0]
    out["expected"] = emulated_delays(final_state, raw, correction, out["walk"])
    final = out["final"]
    out["twin_mape"] = mape(out["expected"], final.reliable_delay())
    out["twin_mape_walk_unknown"] = mape(emulated_delays(final_state, raw, correction), final.reliable_delay())
    out["noise_mape"] = measurement_noise(final_state, correction, final.duration, final.warmup, MIN_PACKETS,
                                          seed=out["k"])
    return out


def _report(it: dict, timeline: Timeline, live) -> dict:
    state, before, final, winner = it["state"], it["before"], it["final"], it["winner"]
    optimization = it["optimization"]
    return {
        "topology": state.name, "nodes": len(state.nodes), "links": len(state.links), "flows": len(state.flows),
        "measured": {"before": before.mean_delay(state), "after": final.mean_delay(state)},
        "improvement": 1.0 - final.mean_delay(state) / before.mean_delay(state),
        "twin_vs_emulation_mape": it["twin_mape"],
        "twin_vs_emulation_mape_walk_unknown": it["twin_mape_walk_unknown"],
        "walk": it["walk"].to_dict() if it["walk"] else None,
        "measurement_noise_mape": it["noise_mape"],
        "loop_s": it["loop_s"],
        "pushed": bool(winner), "rolled_back": it["rolled_back"],
        "pushed_weights": [float(w) for w in it["validations"][winner].weights] if winner else None,
        "final_weights": [float(w) for w in it["final_weights"]],
        "validated": [v.to_dict(it["estimated"]) for v in it["validations"]],
        "optimizer": {"evaluations": optimization.evaluations, "wall_s": optimization.wall_s},
        "before": before.to_dict(state), "after": final.to_dict(state),
        "timeline": [{"phase": n, "start_s": a, "end_s": b} for n, a, b in timeline.phases],
        "metrics_url": live.metrics_url, "store": str(live.store_path),
    }


def _prometheus_check(prom, directory: Path) -> dict:
    """What the Prometheus server recorded of the run (after one more scrape), and how to browse it."""
    from mininet_topos.prometheus import browse_command

    time.sleep(2.0)
    measured = prom.query("count(ndt_path_delay_measured_seconds)")
    changes = prom.query("max_over_time(ndt_routing_changes_total[1h])")
    return {"measured_delay_series": int(float(measured[0]["value"][1])) if measured else 0,
            "routing_changes": int(float(changes[0]["value"][1])) if changes else 0,
            "browse": browse_command(directory, 9090), "browse_url": "http://127.0.0.1:9090"}


def _summary(it: dict) -> dict:
    """One iteration in a few numbers (delays s)."""
    state = it["state"]
    return {"iteration": it["k"] + 1, "event": it["event"], "reoptimized": it["reoptimized"], "pushed": bool(it["winner"]),
            "rolled_back": it["rolled_back"], "before": it["before"].mean_delay(state),
            "after": it["final"].mean_delay(state), "loop_s": it["loop_s"],
            "twin_vs_emulation_mape": it["twin_mape"], "twin_vs_emulation_mape_walk_unknown": it["twin_mape_walk_unknown"],
            "measurement_noise_mape": it["noise_mape"], "final_weights": [float(w) for w in it["final_weights"]]}


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
