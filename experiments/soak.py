"""Does ``ndt controller`` hold steady over a long run? Memory, threads, files, store and metrics (root).

    python experiments/soak.py [--minutes M] [--phase-s P] [--sample-s S] [--raw-hours H] [--tag TAG] ...

Brings ``--topology`` up in Mininet under ``ndt controller --intent`` with the demo's settings (the
closed loop, probes, anomaly detection, online calibration from the hosts' reports) and keeps it busy
for ``--minutes``: phases of ``--phase-s`` s alternate the steady traffic and a shift (the busiest
destination's traffic × 1.3), and every third phase the demo's failure link goes down a third of the
way in and comes back up at two thirds, so the loop decides, pushes, verifies and rolls back again
and again. Every ``--sample-s`` s it records the controller process's resident memory, threads, open
files and CPU, the store's size on disk, and the number of Prometheus series (the store's raw
window is ``--raw-hours``, so that a short run sees its rows merged). Prints JSON (also in
data/logs/TAG/soak.json, the samples in soak-samples.json, a picture in soak.png): each figure at
the end of the first phase and at the end, the resident memory's growth after the first phase and
over the second half (least squares, MiB/h), the loop's decisions, and the controller log's errors.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from controller.api import ndt_api_pb2 as pb  # noqa: E402
from controller.api.client import ControllerClient  # noqa: E402
from controller.loop.deployment import (DEMO_INTENT, MAX_UTILIZATION, REPORT_S, WARMUP_S, DemoPlan,  # noqa: E402
                                        HostReporter, busiest_destination, busiest_link, controller_args)
from mininet_topos.network import EmulatedNetwork  # noqa: E402
from mininet_topos.topologies import emulation_state  # noqa: E402
from mininet_topos.traffic import START_LEAD_S, play, traffic_dir  # noqa: E402
from telemetry.store import DECISION_KIND, TelemetryStore  # noqa: E402
from twin.state.traffic import shift_traffic  # noqa: E402

PAGE_BYTES = os.sysconf("SC_PAGE_SIZE")
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def process_figures(pid: int) -> dict:
    """Resident memory (MiB), threads, open files and CPU time (s) of process ``pid``."""
    resident_pages = int(open(f"/proc/{pid}/statm").read().split()[1])
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return {"rss_mib": resident_pages * PAGE_BYTES / 2**20, "threads": int(fields[17]),
            "open_files": len(os.listdir(f"/proc/{pid}/fd")), "cpu_s": (int(fields[11]) + int(fields[12])) / CLOCK_TICKS}


def store_mib(path: Path) -> float:
    """The store's size on disk with its write-ahead log, MiB."""
    return sum(p.stat().st_size for p in path.parent.glob(path.name + "*") if p.is_file()) / 2**20


def metric_series(url: str) -> int:
    """How many series the controller's Prometheus endpoint exports."""
    text = urllib.request.urlopen(url, timeout=5).read().decode()
    return sum(1 for line in text.splitlines() if line and not line.startswith("#"))


class Sampler:
    """Every ``every_s`` s, the controller's figures (:func:`process_figures`, store, series) into ``rows``."""

    def __init__(self, net: EmulatedNetwork, every_s: float):
        self.net, self.every_s, self.rows = net, every_s, []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> "Sampler":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(30)

    def sample(self) -> dict:
        row = {"t": time.time(), **process_figures(self.net.controller.pid),
               "store_mib": store_mib(self.net.store_path), "series": metric_series(self.net.metrics_url)}
        self.rows.append(row)
        return row

    def _run(self) -> None:
        while not self._stop.wait(self.every_s):
            try:
                self.sample()
            except (OSError, ValueError) as exc:  # a missed sample is noted, the soak goes on
                print(f"sample missed: {exc}", file=sys.stderr)


def growth_per_hour(rows: list[dict], key: str, since: float) -> float | None:
    """Least-squares slope of ``key`` over the rows from ``since`` (Unix s), per hour; None with under 3 rows."""
    points = [(r["t"], r[key]) for r in rows if r["t"] >= since]
    if len(points) < 3:
        return None
    t, y = np.array(points).T
    return float(np.polyfit((t - t[0]) / 3600.0, y, 1)[0])


def log_errors(path: Path) -> dict:
    """Error lines and tracebacks in the controller's log, with the first few error lines."""
    lines = path.read_text(errors="replace").splitlines()
    errors = [line for line in lines if " ERROR " in line or line.startswith("ERROR")]
    return {"error_lines": len(errors), "tracebacks": sum("Traceback" in line for line in lines), "first": errors[:5]}


def toggle_link(net: EmulatedNetwork, link: tuple[str, str], down_at: float, up_at: float, events: list) -> None:
    """Take ``link`` down at ``down_at`` and up at ``up_at`` (Unix s), noting both in ``events``."""
    time.sleep(max(0.0, down_at - time.time()))
    net.fail_link(*link)
    events.append({"t": time.time(), "event": f"{link[0]}-{link[1]} down"})
    time.sleep(max(0.0, up_at - time.time()))
    net.restore_link(*link)
    events.append({"t": time.time(), "event": f"{link[0]}-{link[1]} up"})


def picture(rows: list[dict], events: list[dict], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    t0 = rows[0]["t"]
    minutes = [(r["t"] - t0) / 60 for r in rows]
    fig, axes = plt.subplots(3, 1, figsize=(8, 7), sharex=True)
    for ax, key, label in zip(axes, ("rss_mib", "store_mib", "open_files"),
                              ("controller resident memory, MiB", "store on disk, MiB", "open files")):
        ax.plot(minutes, [r[key] for r in rows], lw=1.2)
        ax.set_ylabel(label)
        for event in events:
            if event["event"].endswith((" down", " up")):
                ax.axvline((event["t"] - t0) / 60, color="red" if event["event"].endswith(" down") else "green",
                           lw=0.6, alpha=0.6)
    axes[-1].set_xlabel("minutes (red: link down, green: link up)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--minutes", type=float, default=30.0, help="how long the network is kept busy (default: 30)")
    p.add_argument("--phase-s", type=float, default=120.0, help="traffic per phase, s (default: 120)")
    p.add_argument("--sample-s", type=float, default=15.0, help="the controller is sampled this often, s (default: 15)")
    p.add_argument("--topology", default="sndlib/abilene")
    p.add_argument("--load", type=float, default=0.9, help="busiest-link load under shortest paths (default: 0.9)")
    p.add_argument("--raw-hours", type=float, default=0.25,
                   help="the controller's --raw-hours: its store merges older rows into 1-minute means (default: 0.25, "
                        "so that a 30-minute run shows it)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tag", default="soak")
    args = p.parse_args(argv)
    state = emulation_state(args.topology, args.load, seed=args.seed)
    shifted = shift_traffic(state, busiest_destination(state), 1.3)
    failure = busiest_link(shifted)
    plan = DemoPlan(seed=args.seed)
    phases = max(1, round(args.minutes * 60 / args.phase_s))
    out = Path("data/logs").resolve() / args.tag
    out.mkdir(parents=True, exist_ok=True)
    intent = out / "intent.yaml"
    intent.write_text(DEMO_INTENT.format(max_utilization=MAX_UTILIZATION))
    events: list[dict] = []
    with EmulatedNetwork(state, ControllerClient, "k", tag=args.tag,
                         controller_args=controller_args(plan, intent) + ("--raw-hours", str(args.raw_hours))) as net, Sampler(net, args.sample_s) as sampler:
        sampler.sample()
        first_phase_end = None
        for k in range(phases):
            traffic = shifted if k % 2 else state
            toggler = None
            if k % 3 == 2:
                start = time.time() + START_LEAD_S
                toggler = threading.Thread(target=toggle_link, args=(net, failure, start + args.phase_s / 3,
                                                                     start + 2 * args.phase_s / 3, events), daemon=True)
                toggler.start()
            phase_start = time.time()
            workdir = net.workdir / f"phase-{k + 1}"
            with HostReporter(net.client, traffic, traffic_dir(workdir, args.seed + k), phase_start + START_LEAD_S,
                              lambda line: print(line, file=sys.stderr), REPORT_S):
                play(net, traffic, args.phase_s, WARMUP_S, args.seed + k, workdir, 1.0)
            if toggler is not None:
                toggler.join(60)
            events.append({"t": time.time(), "event": f"phase {k + 1} ended"})
            print(f"phase {k + 1}/{phases} done: {sampler.sample()}", file=sys.stderr)
            if first_phase_end is None:
                first_phase_end = time.time()
            for old in workdir.glob("traffic-*/*.npy*"):  # the hosts' packets: not needed, and 30 min of them is large
                old.unlink()
        status = net.client.stub.GetLoopStatus(pb.Empty(), timeout=10)
        store = TelemetryStore(net.store_path)
        decisions = [c.payload for c in store.configs(0, time.time() + 1, kind=DECISION_KIND)]
        store.close()
        errors = log_errors(net.log_path)
    rows = sampler.rows
    at_first = min(rows, key=lambda r: abs(r["t"] - first_phase_end))
    figures = ("rss_mib", "threads", "open_files", "store_mib", "series")
    result = {
        "topology": args.topology, "load": args.load, "minutes": (rows[-1]["t"] - rows[0]["t"]) / 60, "phases": phases,
        "samples": len(rows), "link_events": [e["event"] for e in events if "phase" not in e["event"]],
        "after_first_phase": {key: at_first[key] for key in figures},
        "at_end": {key: rows[-1][key] for key in figures},
        "rss_max_mib": max(r["rss_mib"] for r in rows),
        "rss_growth_mib_per_h": growth_per_hour(rows, "rss_mib", first_phase_end),
        "rss_growth_second_half_mib_per_h": growth_per_hour(rows, "rss_mib", (rows[0]["t"] + rows[-1]["t"]) / 2),
        "store_growth_mib_per_h": growth_per_hour(rows, "store_mib", first_phase_end),
        "controller_cpu_share": (rows[-1]["cpu_s"] - rows[0]["cpu_s"]) / (rows[-1]["t"] - rows[0]["t"]),
        "loop": {"runs": status.runs, "pushes": status.pushes, "rollbacks": status.rollbacks,
                 "twin_mape": status.twin_mape, "error": status.error},
        "decisions": {f"{trigger}: {action}": sum(1 for d in decisions if (d.get("trigger"), d.get("action")) == (trigger, action))
                      for trigger, action in sorted({(d.get("trigger"), d.get("action")) for d in decisions})},
        "controller_log": errors,
    }
    (out / "soak.json").write_text(json.dumps(result, indent=1))
    (out / "soak-samples.json").write_text(json.dumps({"rows": rows, "events": events}))
    picture(rows, events, out / "soak.png")
    return result


if __name__ == "__main__":
    print(json.dumps(main(), indent=1))
