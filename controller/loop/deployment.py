"""The deployment as it runs in production, on an emulated network (``ndt demo``).

The Mininet network with traffic from its hosts is only "the network": ``ndt controller --intent``
runs as its own process attached to it, with its closed loop (:mod:`controller.loop.service`)
deciding on its own from its telemetry and probes. This driver plays traffic in three phases
(steady, a traffic shift, a link failure in the middle of the third), and afterwards reads what the
loop did (its status through gRPC, its decisions from the controller's store, what Prometheus
recorded), the hosts' kernel-timestamped delays
beside the controller's probe delays. Delays in s, times Unix s.
"""

from __future__ import annotations

import json
import threading
import time
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from controller.api import ndt_api_pb2 as pb
from controller.api.client import ControllerClient
from controller.loop.service import SETTLE_S
from mininet_topos.network import REPO, EmulatedNetwork, free_port
from mininet_topos.prometheus import PrometheusServer, browse_command
from mininet_topos.traffic import MIN_PACKETS, START_LEAD_S, live_rows, play, received_rows, traffic_dir, window_delays
from telemetry.store import DECISION_KIND, TelemetryStore
from twin.state.errors import NdtError
from twin.state.files import jsonable
from twin.state.metrics import mape
from twin.state.model import NetworkState

DEFAULT_OUT = REPO / "data" / "demo"
WARMUP_S = 2.0
MAX_UTILIZATION = 0.95  # the demo intent's bound on every link's utilization
REPORT_S = 5.0  # the hosts report their mean delays over windows this long, s (at most a quarter of the loop's)
REPORT_LAG_S = 2.0  # ... once this much later (the window's packets have arrived and been written out), s
LIVE_S = 1.0  # the receivers write out what they received this often, s
MIN_REPORT_PACKETS = 5  # a pair's mean needs this many packets in a report's window
DEMO_INTENT = """# the demo's intent: the lowest mean delay, no link above 95 %
objective:
  minimize: mean_delay
constraints:
  max_utilization: {max_utilization}
search:
  max_evaluations: 1500
  time_limit_s: 20
"""


@dataclass
class DemoPlan:
    """phase_s: traffic per phase, s; failure_after_s: into the third phase, when the link fails, s;
    the rest are the controller's loop options (``ndt controller --help``)."""

    phase_s: float = 110.0
    failure_after_s: float = 10.0
    window_s: float = 20.0
    verify_s: float = 20.0
    hold_down_s: float = 40.0
    probe_rate: float = 100.0
    validate: str = "twin"
    model: str | None = None
    calibration: Path | None = None
    seed: int = 0


class HostReporter:
    """The hosts as a measurement agent: while a phase plays, every ``report_s`` s their mean
    one-way delay per pair over the last window (packets sent in it, kernel timestamps; how many
    with each mean) goes to
    the controller through gRPC ReportMeasured, with the window, as an operator's TWAMP or ping
    mesh would report; what a perfect model would score against each report (its sampling noise)
    is kept beside it. ``pairs``: only these (src, dst) report (all, when None)."""

    def __init__(self, client: ControllerClient, traffic: NetworkState, workdir: Path, start: float, log=print,
                 report_s: float = REPORT_S, pairs: set | None = None):
        self.client, self.traffic, self.workdir = client, traffic, workdir
        self.report_s = report_s
        self.pairs = pairs
        self.window_start = start + WARMUP_S
        self.log = log
        self.reports: list[dict] = []
        self.reported_pairs: set = set()
        self._rows = np.zeros((0, 4))
        self._seen: set = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> "HostReporter":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(10)

    def _run(self) -> None:
        while not self._stop.wait(max(0.0, self.window_start + self.report_s + REPORT_LAG_S - time.time())):
            end = self.window_start + self.report_s
            try:
                self.report(self.window_start, end)
            except Exception as exc:  # a lost report must not end the demo; said once per report
                self.log(f"hosts' report for [{self.window_start:.1f}, {end:.1f}) not sent: {exc}")
            self.window_start = end

    def report(self, start: float, end: float) -> None:
        """The pairs' mean delays over packets sent in [start, end) (Unix s), and how many packets
        each is over, to the controller."""
        rows = live_rows(self.workdir, len(self.traffic.nodes), self._seen)
        self._rows = np.concatenate([self._rows[self._rows[:, 2] >= start], rows])
        inside = self._rows[(self._rows[:, 2] >= start) & (self._rows[:, 2] < end)]
        delays, samples, noise = {}, {}, []
        for i in np.unique(inside[:, 0]).astype(int):
            packets = inside[inside[:, 0] == i]
            delay = packets[:, 3] - packets[:, 2]
            if len(packets) >= MIN_REPORT_PACKETS and i < len(self.traffic.flows) and delay.mean() > 0:
                flow = self.traffic.flows[i]
                if self.pairs is not None and (flow.src, flow.dst) not in self.pairs:
                    continue
                delays[(flow.src, flow.dst)] = float(delay.mean())
                samples[(flow.src, flow.dst)] = len(packets)
                noise.append(sampling_error(packets[:, 2], delay) / delay.mean())
        if delays:
            self.client.report_measured(delays, "ndt demo hosts", (start, end), samples)
            self.reported_pairs |= set(delays)
            self.reports.append({"start": start, "end": end, "pairs": len(delays),
                                 "noise_mape": float(np.mean(noise))})


def sampling_error(sent: np.ndarray, delay: np.ndarray, batches: int = 5) -> float:
    """The expected absolute error of ``delay``'s mean as an estimate of the window's true mean (s):
    from the spread of the means of ``batches`` consecutive batches by send time (delays in a queue
    are correlated, so the packets' own spread would understate it), √(2/π) × their standard error."""
    order = np.argsort(sent)
    means = [part.mean() for part in np.array_split(delay[order], batches) if len(part)]
    if len(means) < 2:
        return 0.0
    return float(np.sqrt(2.0 / np.pi) * np.std(means, ddof=1) / np.sqrt(len(means)))


@dataclass
class Phase:
    """One traffic phase as played: its traffic, when it started and ended, what the hosts received."""

    name: str
    traffic: NetworkState
    start: float
    end: float
    rows: np.ndarray


def busiest_destination(state: NetworkState) -> str:
    """The node most traffic goes to."""
    totals: dict[str, float] = {}
    for flow in state.flows:
        totals[flow.dst] = totals.get(flow.dst, 0.0) + flow.rate
    return max(totals, key=totals.get)


def busiest_link(state: NetworkState, max_utilization: float = MAX_UTILIZATION) -> tuple[str, str]:
    """The most utilized link whose failure (both directions) leaves every flow a route and the
    network able to meet the intent: under shortest paths on the links left, none loaded beyond
    ``max_utilization``. (A failure that saturates a cut, which no routing can relieve, would leave
    the loop nothing to do but watch queues overflow.)"""
    for i in np.argsort(-state.utilization()):
        link = state.links[int(i)]
        try:
            after = state.without_links({(link.src, link.dst), (link.dst, link.src)})
        except NdtError:  # the failure would disconnect a flow: not a demo failure
            continue
        if after.utilization().max() <= max_utilization:
            return link.src, link.dst
    raise NdtError(f"{state.name or 'the topology'}: no link can fail without disconnecting a flow or "
                   f"loading another beyond {100 * max_utilization:g} %; choose one with --fail")


def controller_args(plan: DemoPlan, intent: Path) -> tuple[str, ...]:
    args = ["--intent", str(intent), "--validate", plan.validate, "--loop-window", str(plan.window_s),
            "--verify-s", str(plan.verify_s), "--hold-down", str(plan.hold_down_s), "--probe-rate",
            str(plan.probe_rate), "--period", "3600"]
    if plan.model:
        args += ["--model", plan.model]
    if plan.calibration:
        args += ["--calibration", str(Path(plan.calibration).resolve())]
    return tuple(args)


def run_deployment(state: NetworkState, plan: DemoPlan, shifted: NetworkState, failure: tuple[str, str],
                   out_dir: Path = DEFAULT_OUT, metrics_port: int = 0, prometheus: bool = True, log=print) -> dict:
    """Bring ``state`` up under a controller running the loop; play ``state``'s traffic, then
    ``shifted``'s, then fail ``failure`` in the middle of a third phase; report what happened."""
    out_dir = Path(out_dir).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    intent = out_dir / "intent.yaml"
    intent.write_text(DEMO_INTENT.format(max_utilization=MAX_UTILIZATION))
    started = time.time()
    with ExitStack() as stack:
        net = stack.enter_context(EmulatedNetwork(state, ControllerClient, "l", tag="demo", metrics_port=metrics_port,
                                                  controller_args=controller_args(plan, intent)))
        log(f"network: {len(state.nodes)} switches, {len(state.flows)} flows, hosts playing the traffic; "
            f"ndt controller --intent runs the loop (metrics {net.metrics_url})")
        prom = None
        if prometheus:
            prom = stack.enter_context(PrometheusServer(out_dir / "prometheus", free_port(),
                                                        f"127.0.0.1:{net.metrics_port}"))
        phases, reroute_s, host_reports, reported_pairs = [], None, [], set()
        for k, (name, traffic) in enumerate((("steady", state), ("traffic shift", shifted),
                                             ("link failure", shifted))):
            log(f"phase {k + 1}: {name}, {plan.phase_s:.0f} s of traffic")
            failed = {}
            if name == "link failure":
                thread = threading.Thread(target=lambda: failed.update(reroute_s=_fail_after(
                    net, failure, START_LEAD_S + plan.failure_after_s)), daemon=True)
                thread.start()
            phase_start = time.time()
            with HostReporter(net.client, traffic, traffic_dir(net.workdir / f"phase-{k + 1}", plan.seed + k),
                              phase_start + START_LEAD_S, log, min(REPORT_S, plan.window_s / 4)) as reporter:
                play(net, traffic, plan.phase_s, WARMUP_S, plan.seed + k, net.workdir / f"phase-{k + 1}", LIVE_S)
            host_reports += reporter.reports
            reported_pairs |= reporter.reported_pairs
            if name == "link failure":
                thread.join(30)
                reroute_s = failed.get("reroute_s")
                log(f"link {failure[0]}-{failure[1]} failed; " + ("no new routes within 10 s" if reroute_s is None
                    else f"rerouted on the current weights in {reroute_s:.3f} s"))
            phases.append(Phase(name, traffic, phase_start + START_LEAD_S, phase_start + START_LEAD_S + plan.phase_s,
                                received_rows(net.workdir / f"phase-{k + 1}" / f"traffic-{plan.seed + k}",
                                              len(state.nodes))))
        status = net.client.stub.GetLoopStatus(pb.Empty(), timeout=10)
        store = TelemetryStore(net.store_path)
        probes = store.path_delays("probe", started, time.time() + 1)
        predicted = store.path_delays("predicted", started, time.time() + 1)
        decisions = [c.payload for c in store.configs(started, time.time() + 1, kind=DECISION_KIND)]
        store.close()
        report = build_report(state, phases, decisions, probes, reroute_s, failure, status, host_reports, predicted,
                              reported_pairs)
        report.update(metrics_url=net.metrics_url, store=str(net.store_path), controller_log=str(net.log_path))
        if prom is not None:
            report["prometheus"] = prometheus_summary(prom, out_dir / "prometheus")
    write_report(report, phases, decisions, probes, out_dir, started)
    return report


def _fail_after(net: EmulatedNetwork, failure: tuple[str, str], delay: float) -> float | None:
    """Fail the link ``delay`` s from now; the time until the controller installed new routes, s."""
    time.sleep(delay)
    version = net.status().route_version
    t0 = time.monotonic()
    net.fail_link(*failure)
    while time.monotonic() - t0 < 10.0:
        if net.status().route_version > version:
            return time.monotonic() - t0
        time.sleep(0.02)
    return None


def _probe_means(probes, start: float, end: float) -> dict:
    """Per pair, the mean of the store's probe delays (10-s means) with ``start <= ts < end``."""
    by_pair: dict = {}
    for row in probes:
        if start <= row.ts < end:
            by_pair.setdefault((row.src, row.dst), []).append(row.value)
    return {pair: float(np.mean(v)) for pair, v in by_pair.items()}


def twin_vs_hosts(scores: list[dict], predicted, phases: list[Phase], min_packets: int = MIN_PACKETS) -> dict:
    """The loop's calibrated predictions (the store's ``predicted`` rows, one set per scored window)
    against the hosts' own packets over the same span, for the windows the loop scored on the hosts'
    reports with a correction fitted online: per pair with at least ``min_packets`` packets in the
    span, |predicted − measured| / measured, and what a perfect model would score there (the
    measured mean's sampling error). Means over all such pair-windows, and by phase."""
    by_ts: dict = {}
    for row in predicted:
        by_ts.setdefault(row.ts, {})[(row.src, row.dst)] = row.value
    errors, noise, phase_of, windows = [], [], [], 0
    for score in scores:
        window = by_ts.get(score["ts"])
        if not (score["measured_by"] == "hosts" and score["calibrated_online"] and window):
            continue
        phase = next((p for p in phases if p.start <= score["start"] and score["ts"] <= p.end + REPORT_LAG_S), None)
        if phase is None or not len(phase.rows):
            continue
        rows = phase.rows[(phase.rows[:, 2] >= score["start"]) & (phase.rows[:, 2] < score["ts"])]
        counted = 0
        for i, flow in enumerate(phase.traffic.flows):
            packets = rows[rows[:, 0] == i]
            pair = (flow.src, flow.dst)
            if len(packets) >= min_packets and pair in window:
                delay = packets[:, 3] - packets[:, 2]
                errors.append(abs(window[pair] - delay.mean()) / delay.mean())
                noise.append(sampling_error(packets[:, 2], delay) / delay.mean())
                phase_of.append(phase.name)
                counted += 1
        windows += counted > 0
    errors, noise, phase_of = np.array(errors), np.array(noise), np.array(phase_of)
    by_phase = {p.name: {"mape": float(errors[phase_of == p.name].mean()),
                         "noise_mape": float(noise[phase_of == p.name].mean()),
                         "pair_windows": int(np.sum(phase_of == p.name))} for p in phases if np.any(phase_of == p.name)}
    return {"mape": float(errors.mean()) if len(errors) else None,
            "noise_mape": float(noise.mean()) if len(noise) else None,
            "windows": windows, "pair_windows": len(errors), "min_packets": min_packets, "by_phase": by_phase}


def build_report(state: NetworkState, phases: list[Phase], decisions: list[dict], probes, reroute_s, failure,
                 status, host_reports: list[dict], predicted, reported_pairs: set = frozenset()) -> dict:
    """The demo's figures from what was played, what the hosts received and reported, and what the
    loop decided and predicted (:func:`twin_vs_hosts` for ``twin_vs_emulation_mape``). The probes
    carry the hosts' edge fitted from the reports (:func:`controller.probes.fit_host_edge`), so
    ``probe_vs_host_unreported_mape`` scores them apart on the pairs outside ``reported_pairs``."""
    steady = phases[0]
    first = next((d for d in decisions if d["action"] in ("push", "rollback", "keep", "propose")
                  and d["ts"] < steady.end), None)
    decided = first["ts"] if first else steady.end
    settled = (first.get("pushed_at") or first["finished"]) + SETTLE_S if first else steady.end
    if first and first["action"] == "rollback":
        settled = first["finished"] + SETTLE_S
    n = len(state.flows)
    before = window_delays(steady.rows, n, steady.start + WARMUP_S, decided)
    after = window_delays(steady.rows, n, settled, steady.end)
    weights = np.array([f.rate for f in state.flows])

    def mean(delays):
        ok = np.isfinite(delays)
        return float(np.sum(delays[ok] * weights[ok]) / np.sum(weights[ok])) if ok.any() else float("nan")

    host_after = {(f.src, f.dst): d for f, d in zip(state.flows, after) if np.isfinite(d)}
    probe_after = _probe_means(probes, settled + 10.0, steady.end)
    pairs = sorted(set(host_after) & set(probe_after))
    unreported = [p for p in pairs if p not in reported_pairs]

    def probe_vs_host(among: list) -> float:
        return mape(np.array([probe_after[p] for p in among]), np.array([host_after[p] for p in among])) \
            if among else float("nan")
    scores = [{"ts": w.ts, "start": w.start, "mape": w.mape, "measured_by": w.measured_by, "pairs": w.pairs,
               "calibrated_online": w.calibrated_online} for w in status.scores]
    against_hosts = twin_vs_hosts(scores, predicted, phases)
    by_probes = [d for d in decisions if d.get("twin_mape") is not None and d.get("measured_by", "probes") == "probes"]
    pushed = [d for d in decisions if d["action"] in ("push", "rollback")]
    return {
        "topology": state.name, "nodes": len(state.nodes), "links": len(state.links), "flows": n,
        "measured": {"before": mean(before), "after": mean(after)},
        "improvement": 1.0 - mean(after) / mean(before),
        "pushed": bool(first and first["action"] in ("push", "rollback")),
        "rolled_back": bool(first and first["action"] == "rollback"),
        "twin_vs_emulation_mape": against_hosts["mape"],
        "twin_vs_emulation": against_hosts,
        "host_reports": len(host_reports),
        "host_report_noise_mape": float(np.mean([r["noise_mape"] for r in host_reports])) if host_reports else None,
        "twin_vs_probes_mape": by_probes[-1]["twin_mape"] if by_probes else None,
        "probe_noise_mape": by_probes[-1].get("probe_noise_mape") if by_probes else None,
        "twin_calibrated_online": bool(against_hosts["windows"]) or status.calibrated_online,
        "twin_scores": scores,
        "probe_vs_host_mape": probe_vs_host(pairs), "probe_vs_host_paths": len(pairs),
        "probe_vs_host_unreported_mape": probe_vs_host(unreported) if unreported else None,
        "probe_vs_host_unreported_paths": len(unreported),
        "loop_s": pushed[0]["loop_s"] if pushed else (first["loop_s"] if first else None),
        "reroute_s": reroute_s, "failed_link": list(failure),
        "iterations": [{k: d.get(k) for k in ("trigger", "action", "reason", "measured_s", "predicted_current_s",
                                              "predicted_chosen_s", "after_s", "twin_mape", "measured_by",
                                              "probe_noise_mape",
                                              "loop_s", "ts",
                                              "pushed_at", "route_version")} for d in decisions],
        "loop": {"runs": status.runs, "pushes": status.pushes, "rollbacks": status.rollbacks,
                 "calibrated_online": status.calibrated_online, "calibration_windows": status.calibration_windows},
        "phases": [{"name": p.name, "start": p.start, "end": p.end, "mean_delay": mean(window_delays(
            p.rows, n, p.start + WARMUP_S, p.end))} for p in phases],
    }


def prometheus_summary(prom: PrometheusServer, directory: Path) -> dict:
    """What Prometheus recorded of the loop and the probes (after one more scrape), and how to browse it."""
    time.sleep(2.0)

    def value(expr: str) -> float:
        result = prom.query(expr)
        return float(result[0]["value"][1]) if result else 0.0

    return {"loop_decisions": int(value("sum(ndt_loop_decisions_total)")),
            "loop_pushes": int(value('sum(ndt_loop_decisions_total{action="push"})')),
            "probe_delay_series": int(value('count(ndt_path_delay_seconds{kind="probe"})')),
            "routing_changes": int(value("max_over_time(ndt_routing_changes_total[1h])")),
            "loop_twin_error_ratio": value("ndt_loop_twin_error_ratio"),
            "browse": browse_command(directory, 9090), "browse_url": "http://127.0.0.1:9090"}


def write_report(report: dict, phases: list[Phase], decisions: list[dict], probes, out_dir: Path,
                 started: float) -> None:
    """report.json, and report.png: the hosts' and the probes' mean delay over time, with the loop's
    decisions, the traffic shift and the link failure marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    report["report_json"], report["report_png"] = str(out_dir / "report.json"), str(out_dir / "report.png")
    (out_dir / "report.json").write_text(json.dumps(jsonable(report), indent=1))
    fig, ax = plt.subplots(figsize=(11, 5.2))
    for phase in phases:
        if len(phase.rows):
            sent = phase.rows[:, 2]
            edges = np.arange(phase.start, phase.end + 5.0, 5.0)
            which = np.digitize(sent, edges)
            delay = phase.rows[:, 3] - sent
            centers = [(edges[i - 1] + 2.5 - started) for i in range(1, len(edges)) if np.any(which == i)]
            means = [1e3 * delay[which == i].mean() for i in range(1, len(edges)) if np.any(which == i)]
            ax.plot(centers, means, color="C0", label="hosts: mean over packets (kernel timestamps)" if phase is phases[0] else None)
    times = sorted({row.ts for row in probes})
    if times:
        ax.plot([t - started for t in times], [1e3 * np.mean([r.value for r in probes if r.ts == t]) for t in times],
                color="C1", marker=".", label="controller's probes: mean over pairs (10-s means)")
    ax.set_ylim(bottom=0)
    colours = {"push": "C2", "rollback": "C3", "keep": "C7", "propose": "C4", "defer": "C8", "error": "C3"}
    for d in decisions:
        at = (d.get("pushed_at") or d["finished"]) - started
        ax.axvline(at, color=colours.get(d["action"], "k"), linestyle="--", linewidth=1)
        ax.text(at, ax.get_ylim()[1] * 0.95, f" {d['action']} ({d['trigger']})", rotation=90, va="top", fontsize=7)
    for phase in phases[1:]:
        ax.axvspan(phase.start - started, phase.end - started, color="0.9" if phase.name == "traffic shift" else "0.8",
                   zorder=0, label=phase.name)
    ax.set_xlabel("s since the network came up")
    ax.set_ylabel("mean one-way delay, ms")
    outcome = (f"{100 * report['improvement']:.0f} % lower after its first push" if report["pushed"]
               else "no push in the steady phase")
    ax.set_title(f"{report['topology']}: the controller's closed loop on its own ({outcome})")
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.13), ncol=4, fontsize=8)
    fig.tight_layout()
    fig.savefig(out_dir / "report.png", dpi=110)
    plt.close(fig)
