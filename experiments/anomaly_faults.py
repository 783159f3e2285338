"""Anomaly detection against faults the twin was not told of, and false alarms in a quiet run (root).

    python experiments/anomaly_faults.py faults [--topology T] [--load L] [--reps N] [--probe-rate R] ...
    python experiments/anomaly_faults.py quiet [--minutes M] ...
    python experiments/anomaly_faults.py replay DIR [--z Z] [--persistence K] [--corroborated J]
    python experiments/anomaly_faults.py blast SRC_IP DST_IP RATE_BPS SECONDS   (run inside a host)

Brings ``--topology`` up in Mininet at ``--load`` (its busiest link's utilization) under
``ndt controller --anomaly`` (probes on, no loop: the routing stays put), plays its traffic from the
hosts the whole time, and waits until detection has learned its reference. ``faults`` then injects,
one at a time and ``--reps`` times each on different directed links (the controller is told nothing):

- ``rate``: the link's shaped rate halved (its HTB class re-created at half the capacity), on links
  loaded 30-55 %, so that the halved link is loaded 60-110 %;
- ``flow``: an unannounced UDP flow of ``--flow-share`` × capacity over the link, between the hosts of
  its two ends, sent from a source address no host owns (an extra /32 on the sending host, with a
  static neighbour entry so it never ARPs): the edge counting rules match only known (source,
  destination) host pairs, so the traffic matrix the twin is fed never sees it, while the route
  rules (by destination) carry it; on links loaded under 20 %;
- ``buffer``: the link's FIFO shrunk to ``--small-buffer`` packets, on links loaded 50 % or more
  where the simulator says the short FIFO loses at least ``MIN_BUFFER_LOSS`` of the link's packets
  (a short queue only shortens delay, and loses packets, where a queue forms: on a link loaded
  16 % a 2-packet FIFO changed neither its paths' delay nor its carried load measurably, and on
  Abilene's IPLSng→ATLAng, 61 % loaded but fed mostly by one link of the same rate, it lost
  nothing in the emulation and 0.09 % in the simulator).

Each fault lasts ``--fault-s`` s; ListAnomalies is polled every 0.5 s. Recorded per fault: the time
from injection to the first anomalous path or link, the suspects ranked then and at the fault's
end, and whether the faulty link was ranked first at detection. Before each fault the network is
let recover until nothing has been listed for 10 s (what is listed meanwhile is kept: mostly the
last fault's tail, a window that ended after its removal); it is then injected at a random point
(seeded) of the next window, since a detection's time depends on where in its window the fault
begins (``phase_s``: how far into its window it began). The links are chosen before the
network starts (the simulator runs for the buffer faults). ``quiet`` runs ``--minutes`` of steady
traffic and counts alarms (the set of anomalous paths and links turning non-empty) and
``ndt_anomalies_total``. Prints JSON (also written to data/logs/TAG/result.json).

The controller logs every judged window's observations (``--anomaly-log``, DIR/anomaly.jsonl).
``replay`` re-judges them with other detector settings (no root, no emulation): the same figures
per fault (from DIR/faults.json; detected: a path or link newly anomalous in a window ending while the
fault was on) and the alarms outside the faults — a quiet run's, or the gaps between faults (an
alarm is the anomalous set turning non-empty more than ``RECOVERY_S`` after the last fault was
removed), and how exactly the counters gave each link's loss (``loss_noise``). Replayed with the
settings the run used, it gives the live figures again (up to the 0.5-s polling).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import threading
import time
import urllib.request
from dataclasses import replace
from pathlib import Path

import numpy as np

from controller.api.client import ControllerClient
from analysis.anomaly import MAD_TO_SIGMA, MIN_COMMON_LINKS, AnomalyDetector, DetectorSettings, LinkLoad, Observation
from mininet_topos.network import LOG_DIR, EmulatedNetwork, reshape_link
from mininet_topos.topologies import emulation_state
from mininet_topos.traffic import play
from twin.sim.simulator import simulate

REPO = Path(__file__).resolve().parents[1]
POLL_S = 0.5
RECOVERY_S = 30.0  # after a fault is removed, anomalies this long are its tail, not false alarms
MIN_BUFFER_LOSS = 0.01  # a shrunken buffer is a fault where the simulator says it loses this share or more
BLAST_FRAME_BYTES = 1000  # Ethernet frame, like the hosts' traffic (docs/emulation.md)


def blast(src_ip: str, dst_ip: str, rate_bps: float, seconds: float) -> None:
    """Poisson UDP packets of ``BLAST_FRAME_BYTES`` frames from ``src_ip`` to ``dst_ip`` at ``rate_bps``."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((src_ip, 0))
    payload = bytes(BLAST_FRAME_BYTES - 14 - 20 - 8)
    rng = np.random.default_rng(1)
    gap = 8.0 * BLAST_FRAME_BYTES / float(rate_bps)
    due = time.time()
    end = due + float(seconds)
    while due < end:
        due += rng.exponential(gap)
        wait = due - time.time()
        if wait > 0:
            time.sleep(wait)
        try:
            sock.sendto(payload, (dst_ip, 9999))
        except OSError:
            pass


def metric(url: str, name: str) -> float:
    """One unlabelled sample from the controller's Prometheus endpoint (0 when absent)."""
    text = urllib.request.urlopen(url, timeout=5).read().decode()
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return 0.0


class NetworkGone(RuntimeError):
    """The emulation lost its switches (another job's Mininet cleanup deletes every bridge)."""


def check_alive(net: EmulatedNetwork) -> None:
    connected = net.status().switches_connected
    if connected < len(net.state.nodes):
        raise NetworkGone(f"only {connected} of {len(net.state.nodes)} switches connected: the emulation was torn "
                          "down from outside")


def wait_learned(net: EmulatedNetwork, timeout: float) -> float:
    """Seconds until detection has its reference (ListAnomalies no longer learning)."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        reply = net.client.anomalies()
        if reply.enabled and not reply.learning:
            return time.monotonic() - started
        time.sleep(1.0)
    raise RuntimeError(f"anomaly detection still learning after {timeout:.0f} s; see {net.log_path}")


class Fault:
    """One fault on the directed link ``link``: ``kind`` rate, flow or buffer; ``on()`` and ``off()``."""

    def __init__(self, net: EmulatedNetwork, kind: str, link: tuple[str, str], args, number: int):
        self.net, self.kind, self.link, self.args, self.number = net, kind, link, args, number
        self.capacity = net.state.links[net.state.link_index[link]].capacity
        self.buffer = net.state.links[net.state.link_index[link]].buffer
        self.intf = net.link_ports()[link][1]
        self.sender = None

    def on(self) -> None:
        if self.kind == "rate":
            reshape_link(self.intf, 0.5 * self.capacity, self.buffer)
        elif self.kind == "buffer":
            reshape_link(self.intf, self.capacity, self.args.small_buffer)
        else:
            src, dst = (self.net.host(n) for n in self.link)
            alias = f"10.0.1.{self.number}"
            src.cmd(f"ip addr add {alias}/32 dev {src.defaultIntf()}")
            src.cmd(f"ip neigh replace {dst.IP()} lladdr {dst.MAC()} dev {src.defaultIntf()} nud permanent")
            self.sender = src.popen([sys.executable, str(Path(__file__).resolve()), "blast", alias, dst.IP(),
                                     str(self.args.flow_share * self.capacity), str(self.args.fault_s + 5)],
                                    env={**os.environ, "PYTHONPATH": str(REPO)})

    def off(self) -> None:
        if self.kind in ("rate", "buffer"):
            reshape_link(self.intf, self.capacity, self.buffer)
        elif self.sender is not None:
            self.sender.terminate()
            self.sender.wait(10)
            src = self.net.host(self.link[0])
            src.cmd(f"ip addr del 10.0.1.{self.number}/32 dev {src.defaultIntf()}")


def small_buffer_loss(state, link: int, buffer: int) -> float:
    """The share of ``link``'s packets its FIFO of ``buffer`` packets loses, by the simulator."""
    links = tuple(replace(lk, buffer=buffer) if i == link else lk for i, lk in enumerate(state.links))
    result = simulate(replace(state, links=links), seed=1)
    return float(result.link_drops[link] / max(1, result.link_arrivals[link]))


def pick_links(state, reps: int, small_buffer: int, kinds: list[str]) -> dict[str, list[tuple[str, str]]]:
    """Per fault kind of ``kinds``, ``reps`` directed links (see the module's docstring), spread over the topology."""
    utilization = state.utilization()
    links = [(lk.src, lk.dst) for lk in state.links]
    order = np.argsort(-utilization)

    def spread(candidates):
        chosen, ends = [], set()
        for i in candidates:  # prefer links whose ends no chosen link touches
            if not ends & set(links[i]):
                chosen.append(links[i])
                ends |= set(links[i])
        chosen += [links[i] for i in candidates if links[i] not in chosen]
        return chosen[:reps]

    candidates = {"rate": lambda: [i for i in order if 0.3 <= utilization[i] <= 0.55],
                  "flow": lambda: [i for i in order[::-1] if utilization[i] < 0.2][::2],
                  "buffer": lambda: [i for i in order if utilization[i] >= 0.5
                                     and small_buffer_loss(state, int(i), small_buffer) >= MIN_BUFFER_LOSS]}
    return {kind: spread(candidates[kind]()) for kind in kinds}


def anomaly_view(reply) -> dict:
    return {"paths": [f"{p.src}->{p.dst}" for p in reply.paths],
            "links": [f"{lk.src}->{lk.dst} ({lk.direction})" for lk in reply.links],
            "suspects": [[f"{s.src}->{s.dst}", round(s.score, 3), round(s.load_deviation, 4), round(s.loss_ratio, 4)]
                         for s in reply.suspects[:3]]}


def listed(reply) -> bool:
    """Anything anomalous in a ListAnomalies reply: a path or a link."""
    return bool(reply.paths or reply.links)


def run_fault(net: EmulatedNetwork, fault: Fault, args) -> dict:
    """Inject, poll until the fault's end, remove; the figures of one fault."""
    target = f"{fault.link[0]}->{fault.link[1]}"
    injected, injected_at = time.monotonic(), time.time()
    fault.on()
    detected, first, last = None, None, None
    try:
        while time.monotonic() - injected < args.fault_s:
            check_alive(net)
            reply = net.client.anomalies()
            if listed(reply):
                last = anomaly_view(reply)
                if detected is None:
                    detected, first = time.monotonic() - injected, last
            time.sleep(POLL_S)
    finally:
        fault.off()
    removed_at = time.time()
    ranked_first = bool(first and first["suspects"] and first["suspects"][0][0] == target)
    return {"kind": fault.kind, "link": target, "utilization": float(net.state.utilization()[
        net.state.link_index[fault.link]]), "detected": detected is not None, "detect_s": detected,
        "within_30s": detected is not None and detected <= 30.0, "ranked_first": ranked_first,
        "ranked_first_at_end": bool(last and last["suspects"] and last["suspects"][0][0] == target),
        "at_detection": first, "at_end": last, "injected_at": injected_at, "removed_at": removed_at}


def next_window(net: EmulatedNetwork, timeout: float) -> float:
    """The end of the next window detection judges (Unix s), once it has been judged."""
    last = net.client.anomalies().window_ts
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        time.sleep(0.1)
        judged = net.client.anomalies().window_ts
        if judged != last:
            return judged
    raise RuntimeError(f"no window judged for {timeout:.0f} s; see {net.log_path}")


def settle(net: EmulatedNetwork, timeout: float) -> tuple[float, list]:
    """Wait until nothing has been listed for 10 s in a row (the last fault's tail: a window that
    ended after its removal still held it); (seconds waited, the listings seen while waiting)."""
    started = time.monotonic()
    seen = []
    clear_since = time.monotonic()
    while time.monotonic() - clear_since < 10.0 and time.monotonic() - started < timeout:
        reply = net.client.anomalies()
        if listed(reply):
            seen.append(anomaly_view(reply))
            clear_since = time.monotonic()
        time.sleep(POLL_S)
    return time.monotonic() - started, seen


def bring_up(args, tag: str, minutes: float):
    state = emulation_state(args.topology, args.load, seed=args.seed)
    controller_args = ("--probe-rate", str(args.probe_rate), "--anomaly", "--model", args.model,
                       "--loop-window", str(args.window), "--anomaly-window", str(args.window),
                       "--anomaly-persistence", str(args.persistence), "--anomaly-z", str(args.z),
                       "--anomaly-corroborated", str(args.corroborated), "--anomaly-contradicted", str(args.contradicted),
                       "--anomaly-log", str(LOG_DIR / tag / "anomaly.jsonl"))
    (LOG_DIR / tag).mkdir(parents=True, exist_ok=True)
    (LOG_DIR / tag / "anomaly.jsonl").unlink(missing_ok=True)
    net = EmulatedNetwork(state, ControllerClient, "a", tag=tag, controller_args=controller_args)
    return state, net, 60.0 * minutes


def stop_traffic(workdir: Path) -> None:
    """End this run's traffic generators and receivers (the network stops before their planned end)."""
    marker = str(workdir / "traffic")
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if marker in (entry / "cmdline").read_bytes().decode(errors="replace"):
                    os.kill(int(entry.name), 15)
            except OSError:
                continue


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("mode", choices=["faults", "quiet", "replay"])
    parser.add_argument("directory", nargs="?", type=Path, help="replay: a run's data/logs/TAG directory")
    parser.add_argument("--z", type=float, default=DetectorSettings.z, help="the band's half-width (the controller's --anomaly-z)")
    parser.add_argument("--topology", default="sndlib/abilene")
    parser.add_argument("--load", type=float, default=0.8, help="busiest link's utilization")
    parser.add_argument("--probe-rate", type=float, default=120.0)
    parser.add_argument("--model", default="routenet")
    parser.add_argument("--window", type=float, default=10.0, help="anomaly (and calibration) window, s")
    parser.add_argument("--persistence", type=int, default=DetectorSettings.persistence)
    parser.add_argument("--corroborated", type=int, default=DetectorSettings.corroborated_persistence,
                        help="the controller's --anomaly-corroborated")
    parser.add_argument("--contradicted", type=int, default=DetectorSettings.contradicted_extra,
                        help="the controller's --anomaly-contradicted")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--kinds", default="rate,flow,buffer")
    parser.add_argument("--fault-s", type=float, default=45.0)
    parser.add_argument("--flow-share", type=float, default=0.6, help="unannounced flow's rate / capacity")
    parser.add_argument("--small-buffer", type=int, default=2, help="packets")
    parser.add_argument("--minutes", type=float, default=30.0, help="quiet run's length")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tag", default=None)
    args = parser.parse_args(argv)
    if args.mode == "replay":
        return replay(args.directory, DetectorSettings(z=args.z, persistence=args.persistence,
                                                       corroborated_persistence=args.corroborated,
                                                       contradicted_extra=args.contradicted))
    kinds = args.kinds.split(",")
    tag = args.tag or f"anomaly-{args.mode}"
    budget_min = (4 + len(kinds) * args.reps * (args.fault_s + 90) / 60) if args.mode == "faults" else 5 + args.minutes
    state, net, traffic_s = bring_up(args, tag, budget_min)
    chosen = pick_links(state, args.reps, args.small_buffer, kinds) if args.mode == "faults" else {}
    result = {"command": " ".join(["python", "experiments/anomaly_faults.py", *(argv or sys.argv[1:])]),
              "mode": args.mode, "topology": args.topology, "load": args.load, "probe_rate": args.probe_rate,
              "model": args.model, "window_s": args.window, "z": args.z, "persistence": args.persistence,
              "corroborated": args.corroborated, "contradicted": args.contradicted,
              "nodes": len(state.nodes), "links": len(state.links), "flows": len(state.flows)}
    try:
        run(net, state, args, kinds, chosen, traffic_s, result)
    finally:
        stop_traffic(net.workdir)
    out = net.workdir / "result.json"
    out.write_text(json.dumps(result, indent=1))
    return result


def run(net: EmulatedNetwork, state, args, kinds, chosen: dict, traffic_s: float, result: dict) -> None:
    with net:
        traffic = threading.Thread(target=lambda: play(net, state, traffic_s, 2.0, args.seed, net.workdir / "traffic"),
                                   daemon=True)
        traffic.start()
        result["learn_s"] = wait_learned(net, 300.0)
        if args.mode == "quiet":
            result.update(quiet(net, args))
        else:
            result.update(faults(net, args, kinds, chosen))
        result["anomalies_total"] = metric(net.metrics_url, "ndt_anomalies_total")


def faults(net: EmulatedNetwork, args, kinds, chosen: dict) -> dict:
    rng = np.random.default_rng(args.seed)
    runs, settling, number = [], [], 0
    for rep in range(args.reps):
        for kind in kinds:
            if rep >= len(chosen[kind]):
                continue
            waited, seen = settle(net, 90.0)
            settling += seen
            window_end = next_window(net, args.window + 5.0)
            time.sleep(max(0.0, window_end + rng.uniform(0.0, args.window) - time.time()))
            number += 1
            record = run_fault(net, Fault(net, kind, chosen[kind][rep], args, number), args)
            record["settled_s"], record["phase_s"] = waited, record["injected_at"] - window_end
            runs.append(record)
            print(json.dumps(record), file=sys.stderr, flush=True)
            (net.workdir / "faults.json").write_text(json.dumps(runs, indent=1))
    _, seen = settle(net, 90.0)
    settling += seen
    detected = [r for r in runs if r["detected"]]
    by_kind = {kind: {"faults": sum(r["kind"] == kind for r in runs),
                      "detected_30s": sum(r["kind"] == kind and r["within_30s"] for r in runs),
                      "ranked_first": sum(r["kind"] == kind and r["ranked_first"] for r in runs)} for kind in kinds}
    return {"faults": runs, "by_kind": by_kind, "injected": len(runs),
            "detected_within_30s": sum(r["within_30s"] for r in runs),
            "ranked_first": sum(r["ranked_first"] for r in runs),
            "median_detect_s": float(np.median([r["detect_s"] for r in detected])) if detected else None,
            "polls_listing_while_settling": len(settling), "listed_while_settling": settling}


def quiet(net: EmulatedNetwork, args) -> dict:
    started = time.monotonic()
    total0 = metric(net.metrics_url, "ndt_anomalies_total")
    alarms, active, polls = [], False, 0
    gone = ""
    while time.monotonic() - started < 60.0 * args.minutes:
        try:
            check_alive(net)
        except NetworkGone as exc:
            gone = str(exc)
            break
        reply = net.client.anomalies()
        polls += 1
        if listed(reply) and not active:
            alarms.append({"at_s": time.monotonic() - started, **anomaly_view(reply)})
            print(json.dumps(alarms[-1]), file=sys.stderr, flush=True)
        active = listed(reply)
        time.sleep(2.0)
    return {"quiet_s": time.monotonic() - started, "ended_early": gone, "polls": polls, "alarms": len(alarms), "alarm_list": alarms,
            "new_anomalous_paths": metric(net.metrics_url, "ndt_anomalies_total") - total0}


def replay(directory: Path, settings: DetectorSettings) -> dict:
    """The run in ``directory`` judged again with ``settings`` (see the module's docstring)."""
    detector = AnomalyDetector(settings)
    faults = json.loads((directory / "faults.json").read_text()) if (directory / "faults.json").exists() else []
    windows, excess = [], []
    for line in (directory / "anomaly.jsonl").read_text().splitlines():
        record = json.loads(line)
        observations = [Observation(**{**o, "links": tuple(map(tuple, o["links"]))}) for o in record["observations"]]
        loads = [LinkLoad(**lk) for lk in record.get("loads", [])]
        verdict = detector.judge(record["ts"], observations, loads)
        if not verdict.learning:
            windows.append(verdict)
        losses = [loss for lk in loads if (loss := lk.loss(settings.min_loss_packets)) is not None]
        if len(losses) >= MIN_COMMON_LINKS:
            excess += [loss - float(np.median(losses)) for loss in losses]
    runs = []
    for fault in faults:
        target = fault["link"]
        hits = [v for v in windows if fault["injected_at"] <= v.ts <= fault["removed_at"] and (v.new or v.new_links)]
        first = hits[0] if hits else None
        detect_s = first.ts - fault["injected_at"] if first else None
        runs.append({"kind": fault["kind"], "link": target, "detect_s": detect_s,
                     "within_30s": detect_s is not None and detect_s <= 30.0,
                     "ranked_first": bool(first and first.suspects
                                          and f"{first.suspects[0].src}->{first.suspects[0].dst}" == target),
                     "suspects": [[f"{s.src}->{s.dst}", round(s.score, 3)] for s in first.suspects[:3]] if first else []})
    alarms, active = [], False
    for v in windows:
        near_fault = any(f["injected_at"] <= v.ts <= f["removed_at"] + RECOVERY_S for f in faults)
        if v.anomalous and not active and not near_fault:
            alarms.append({"ts": v.ts, "paths": [f"{p.src}->{p.dst}" for p in v.anomalies],
                           "links": [f"{lk.src}->{lk.dst}" for lk in v.link_anomalies]})
        active = v.anomalous
    outside = sum(1 for v in windows
                  if not any(f["injected_at"] <= v.ts <= f["removed_at"] + RECOVERY_S for f in faults))
    return {"settings": {"z": settings.z, "persistence": settings.persistence,
                         "corroborated": settings.corroborated_persistence,
                         "contradicted": settings.contradicted_extra}, "windows_judged": len(windows),
            "quiet_windows": outside, "quiet_s": outside * (windows[1].ts - windows[0].ts if len(windows) > 1 else 0.0),
            "faults": len(runs), "detected_within_30s": sum(r["within_30s"] for r in runs),
            "ranked_first": sum(r["ranked_first"] for r in runs), "false_alarms": len(alarms),
            "alarms": alarms, "per_fault": runs, "loss_noise": loss_noise(np.asarray(excess))}


def loss_noise(excess: np.ndarray) -> dict:
    """How exactly the counters gave each link-window's loss: over the link-windows (``excess``: each
    one's loss less its window's median), their robust spread, the 99th percentile and the largest
    of their absolute values (shares of the offered packets)."""
    if not excess.size:
        return {"link_windows": 0}
    spread = MAD_TO_SIGMA * float(np.median(np.abs(excess - np.median(excess))))
    return {"link_windows": int(excess.size), "spread": spread, "p99": float(np.percentile(np.abs(excess), 99)),
            "largest": float(np.abs(excess).max())}


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "blast":
        blast(*sys.argv[2:6])
    else:
        print(json.dumps(main(), indent=1))
