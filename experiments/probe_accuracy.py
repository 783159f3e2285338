"""In-band probe delay against the hosts' kernel-timestamped UDP delay, same paths, same time.

Brings ``TOPOLOGY`` up in Mininet under ``ndt controller --probe-rate RATE``, plays its traffic from
the hosts for ``DURATION`` s, and compares per path the mean one-way delay the hosts measured
(mininet_topos.udpgen) with the probes' over the same window (the store's 10-s probe means). Also
the probes' cost: probes per second sent and lost, and the controller's CPU share (of one core)
over the window, and the loopback probes' times (the control channel's share of every probe's
noise) as quantiles of the controller's ``ndt_probe_loopback_seconds`` histogram. The hosts'
means are samples too (a light flow sends a packet a second or so):
``share_within_target_if_exact`` is the share of paths an exact probe would have within target,
given each host mean's own standard error; ``by_hops`` splits the comparison by path length, with
the errors' spread beside both sides' standard errors and the tolerance. Prints JSON; root.

``REPORT_SHARE`` > 0: that share of the pairs (drawn with ``SEED``) report their hosts' delays to
the controller every 10 s, as an operator's TWAMP or ping mesh would (gRPC ReportMeasured), and the
controller fits the hosts' edge from them (``controller.probes.fit_host_edge``); the figures are
then those of the other pairs, which no report informed (``reporting_pairs`` scores the reporting
ones apart), from the first probe interval stored with the fitted edge on.

    python experiments/probe_accuracy.py [TOPOLOGY] [LOAD] [DURATION] [RATE] [SEED] [REPORT_SHARE]
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
import urllib.request

import numpy as np
from prometheus_client.parser import text_string_to_metric_families

from controller.api.client import ControllerClient
from controller.app import PROBE_REPORT_S
from controller.loop.deployment import LIVE_S, REPORT_LAG_S, HostReporter
from mininet_topos.network import EmulatedNetwork
from mininet_topos.topologies import emulation_state
from mininet_topos.traffic import DRAIN_S, START_LEAD_S, play, traffic_dir
from telemetry.store import TelemetryStore


def controller_cpu_s(pid: int) -> float:
    """User + system CPU time of process ``pid`` so far, s."""
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def scrape(metrics_url: str) -> str:
    """The controller's Prometheus exposition text now."""
    return urllib.request.urlopen(metrics_url, timeout=5).read().decode()


def probe_counts(text: str) -> tuple[float, float]:
    """(sent, lost) probes so far, from the exposition ``text``."""
    values = {line.split()[0]: float(line.split()[1]) for line in text.splitlines() if line.startswith("ndt_probes_")}
    return values.get("ndt_probes_sent_total", 0.0), values.get("ndt_probes_lost_total", 0.0)


def loopback_histogram(text: str) -> dict[float, float]:
    """The loopback probes so far, all switches together, from the exposition ``text``: upper bound
    (s) → cumulative count."""
    out: dict[float, float] = {}
    for family in text_string_to_metric_families(text):
        if family.name == "ndt_probe_loopback_seconds":
            for sample in family.samples:
                if sample.name.endswith("_bucket"):
                    bound = float(sample.labels["le"])
                    out[bound] = out.get(bound, 0.0) + sample.value
    return out


def histogram_quantile(quantile: float, cumulative: dict[float, float]) -> float | None:
    """The ``quantile`` of a cumulative histogram, linear within its bucket as Prometheus'
    ``histogram_quantile`` (the last finite bound when it falls in +Inf), s."""
    bounds = sorted(cumulative)
    total = cumulative[bounds[-1]] if bounds else 0.0
    if total <= 0:
        return None
    rank, lower, below = quantile * total, 0.0, 0.0
    for bound in bounds:
        if cumulative[bound] >= rank:
            if math.isinf(bound):
                return lower
            return lower + (bound - lower) * (rank - below) / max(cumulative[bound] - below, 1e-12)
        lower, below = bound, cumulative[bound]
    return lower


REPORT_EVERY_S = 10.0  # with REPORT_SHARE > 0: the reporting hosts' window, s


def host_edge_gauge(text: str) -> float | None:
    """``ndt_probe_host_edge_seconds`` in the exposition ``text``, or None before any fit."""
    for line in text.splitlines():
        if line.startswith("ndt_probe_host_edge_seconds "):
            return float(line.split()[1])
    return None


def scores(paths: list[dict]) -> dict:
    """The comparison over ``paths``: share within target (and an exact probe's), MAPE, mean and
    median absolute error (s), the hosts' mean delay (s)."""
    if not paths:
        return {"paths_compared": 0, **dict.fromkeys(("share_within_target", "share_within_target_if_exact", "mape",
                                                      "mean_error_s", "median_abs_error_s", "host_mean_s"))}
    errors = np.array([p["error_s"] for p in paths])
    truths = np.array([p["host_s"] for p in paths])
    return {"paths_compared": len(paths),
            "share_within_target": float(np.mean([p["within_target"] for p in paths])),
            "share_within_target_if_exact": float(np.mean([p["exact_within_chance"] for p in paths])),
            "mape": float(np.mean(np.abs(errors) / truths)), "mean_error_s": float(np.mean(errors)),
            "median_abs_error_s": float(np.median(np.abs(errors))), "host_mean_s": float(np.mean(truths))}


def main(topology="sndlib/abilene", load=0.9, duration=60.0, rate=100.0, seed=0, report_share=0.0) -> dict:
    state = emulation_state(topology, float(load), seed=int(seed))
    duration, warmup, report_share, seed = float(duration), 2.0, float(report_share), int(seed)
    if not 0.0 <= report_share < 1.0:
        raise SystemExit(f"REPORT_SHARE must be in [0, 1): the other pairs are the ones scored, got {report_share}")
    pairs = sorted({(f.src, f.dst) for f in state.flows})
    drawn = np.random.default_rng(seed).permutation(len(pairs))[:round(report_share * len(pairs))]
    reporting = {pairs[i] for i in drawn}
    with EmulatedNetwork(state, ControllerClient, "p", tag="probe-accuracy",
                         controller_args=("--probe-rate", str(rate))) as net:
        time.sleep(12.0)  # the first probe means reach the store
        text0 = scrape(net.metrics_url)
        cpu0, sent0, t0 = controller_cpu_s(net.controller.pid), probe_counts(text0), time.monotonic()
        loops0 = loopback_histogram(text0)
        started = time.time()
        traffic = net.workdir / "traffic"
        scored_from = started + START_LEAD_S + warmup + 10.0
        if reporting:
            with HostReporter(net.client, state, traffic_dir(traffic, seed), started + START_LEAD_S,
                              lambda line: print(line, file=sys.stderr), REPORT_EVERY_S, reporting) as reporter:
                measured = play(net, state, duration, warmup, seed, traffic, LIVE_S)
            if reporter.reports:  # taken in within a 10-s round, stored with the edge from then on; one more as margin
                scored_from = max(scored_from, reporter.reports[0]["end"] + REPORT_LAG_S + 2 * PROBE_REPORT_S)
        else:
            measured = play(net, state, duration, warmup, seed, traffic)
        ended = time.time()
        text1 = scrape(net.metrics_url)
        cpu1, sent1, t1 = controller_cpu_s(net.controller.pid), probe_counts(text1), time.monotonic()
        loops1 = loopback_histogram(text1)
        time.sleep(11.0)  # the last interval's probe means reach the store
        store = TelemetryStore(net.store_path)
        rows = store.path_delays("probe", scored_from, ended - DRAIN_S + 10.0)
        store.close()
    by_pair: dict = {}
    for row in rows:
        by_pair.setdefault((row.src, row.dst), []).append(row.value)
    host = measured.by_pair(state)
    host_stderr = {(f.src, f.dst): float(np.sqrt(v / n)) if n > 1 else float("inf")
                   for f, v, n in zip(state.flows, measured.jitter, measured.received)}
    hops = {(f.src, f.dst): len(state.flow_path(i)) - 1 for i, f in enumerate(state.flows)}
    paths = []
    for (src, dst), values in sorted(by_pair.items()):
        if (src, dst) in host:
            probe, truth = float(np.mean(values)), host[(src, dst)]
            tolerance, stderr = max(0.10 * truth, 2e-4), host_stderr[(src, dst)]
            probe_stderr = float(np.std(values, ddof=1) / np.sqrt(len(values))) if len(values) > 1 else float("inf")
            paths.append({"src": src, "dst": dst, "hops": hops[(src, dst)], "host_s": truth, "host_stderr_s": stderr,
                          "drawn_to_report": (src, dst) in reporting,
                          "probe_s": probe, "probe_stderr_s": probe_stderr, "tolerance_s": tolerance,
                          "error_s": probe - truth, "within_target": abs(probe - truth) <= tolerance,
                          "exact_within_chance": math.erf(tolerance / (math.sqrt(2) * stderr)) if stderr > 0 else 1.0})
    loops = {bound: count - loops0.get(bound, 0.0) for bound, count in loops1.items()}
    scored = [p for p in paths if not p["drawn_to_report"]]
    return {
        "topology": topology, "load": float(load), "duration_s": duration, "probe_rate": float(rate),
        "paths_measured_by_hosts": len(host), "report_share": report_share,
        **scores(scored),
        "reporting_pairs": scores([p for p in paths if p["drawn_to_report"]]) if reporting else None,
        "scored_from_s": scored_from - started,
        "host_edge_s": host_edge_gauge(text1),
        "probes_per_s": (sent1[0] - sent0[0]) / (t1 - t0), "probes_lost": sent1[1] - sent0[1],
        "controller_cpu_share": (cpu1 - cpu0) / (t1 - t0),
        "loopbacks": int(loops.get(math.inf, 0.0)),
        "loopback_quantiles_s": {f"p{round(100 * q)}": histogram_quantile(q, loops) for q in (0.1, 0.5, 0.9, 0.99)},
        "by_hops": by_hops(scored),
        "paths": paths,
    }


def by_hops(paths: list[dict]) -> list[dict]:
    """The comparison by the paths' number of links: how many, the share within target, the mean
    error and the errors' spread (standard deviation), and beside them, root mean square over the
    paths, the probes' own standard error (a path's window means' spread over √windows) and the
    hosts', and the median tolerance, s. Where the spread is the two standard errors together, what misses is
    sampling; where it is more, the paths differ."""
    out = []
    for count in sorted({p["hops"] for p in paths}):
        group = [p for p in paths if p["hops"] == count]

        def rms(key: str) -> float:
            return float(np.sqrt(np.mean([p[key] ** 2 for p in group])))

        out.append({"hops": count, "paths": len(group),
                    "share_within_target": float(np.mean([p["within_target"] for p in group])),
                    "mean_error_s": float(np.mean([p["error_s"] for p in group])),
                    "error_spread_s": float(np.std([p["error_s"] for p in group])),
                    "probe_stderr_s": rms("probe_stderr_s"), "host_stderr_s": rms("host_stderr_s"),
                    "tolerance_s": float(np.median([p["tolerance_s"] for p in group]))})
    return out


if __name__ == "__main__":
    print(json.dumps(main(*sys.argv[1:]), indent=1))
