"""Playing a state's traffic matrix from the hosts and measuring per-flow one-way delay, jitter, loss.

``plan_packets`` and ``flow_stats`` are pure; ``play`` runs :mod:`mininet_topos.udpgen` in every
host (one sender, one receiver each) for ``duration`` s and summarises what arrived after
``warmup`` s. A flow's ``packet_size`` (bits) is the Ethernet frame on the wire, what HTB counts:
UDP payload = size/8 − 42 bytes. Results have the shape of every delay source (docs/state.md): delay (mean, s), jitter (variance,
s²), loss (ratio), p50/p90/p99 (s).
"""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mininet_topos.udpgen import PORT
from twin.state.metrics import finite_or_none, mean_delay
from twin.state.model import NetworkState

FRAME_OVERHEAD_BYTES = 42  # Ethernet 14 + IPv4 20 + UDP 8
MIN_FRAME_BYTES, MAX_FRAME_BYTES = 64, 1514
START_LEAD_S = 3.0  # senders start this long after launch (Python + numpy import on a busy machine)
DRAIN_S = 1.0  # receivers keep listening this long after the last send
MIN_PACKETS = 200  # flows with fewer measured packets are left out of model-vs-emulation errors (docs/emulation.md)


@dataclass
class Measurement:
    """Per flow (state order): delay, jitter, loss, p50/p90/p99, received; plus how faithful the run was."""

    delay: np.ndarray
    jitter: np.ndarray
    loss: np.ndarray
    p50: np.ndarray
    p90: np.ndarray
    p99: np.ndarray
    received: np.ndarray
    duration: float
    warmup: float
    sender_late_p99: float  # s, worst host's 99th percentile lateness of sends against the plan
    cpu_busy: float  # fraction of both cores busy during the run (all processes, not only ours)
    load_average: float  # 1-min load average at the end of the run
    extra: dict = field(default_factory=dict)

    def mean_delay(self, state: NetworkState) -> float:
        """Traffic-weighted mean delay over flows that delivered packets, s."""
        return mean_delay(state, self.delay)

    def reliable_delay(self, min_packets: int = MIN_PACKETS) -> np.ndarray:
        """Per-flow mean delay, NaN where fewer than ``min_packets`` arrived: a queue's mean over fewer
        packets is too uncertain to judge a model by; for comparing models with the emulation."""
        return np.where(self.received >= min_packets, self.delay, np.nan)

    def by_pair(self, state: NetworkState) -> dict[tuple[str, str], float]:
        return {(f.src, f.dst): float(d) for f, d in zip(state.flows, self.delay) if np.isfinite(d)}

    def to_dict(self, state: NetworkState) -> dict:
        paths = [{"src": f.src, "dst": f.dst, "delay": finite_or_none(self.delay[i]), "jitter": finite_or_none(self.jitter[i]),
                  "loss": finite_or_none(self.loss[i]), "p50": finite_or_none(self.p50[i]), "p90": finite_or_none(self.p90[i]),
                  "p99": finite_or_none(self.p99[i]), "received": int(self.received[i])} for i, f in enumerate(state.flows)]
        return {"paths": paths, "mean_delay": self.mean_delay(state), "duration": self.duration, "warmup": self.warmup,
                "sender_late_p99": self.sender_late_p99, "cpu_busy": self.cpu_busy, "load_average": self.load_average,
                **self.extra}


def reliable_from_report(paths: list[dict]) -> np.ndarray:
    """Per-flow mean delay (s) from a report's ``paths`` (:meth:`Measurement.to_dict`), NaN where fewer
    than ``MIN_PACKETS`` arrived, as :meth:`Measurement.reliable_delay`."""
    return np.array([p["delay"] if p["delay"] is not None and p["received"] >= MIN_PACKETS else np.nan
                     for p in paths], dtype=float)


def plan_packets(state: NetworkState, duration: float, seed: int = 0) -> dict[int, dict[str, np.ndarray]]:
    """Departure plans per source host index (1-based, as in 10.0.0.i): arrays ``t`` (s from the start,
    sorted), ``flow`` (index in state.flows), ``seq``, ``dst`` (host index), ``size`` (UDP payload bytes).

    Poisson: exponential gaps; CBR: constant gaps, random phase; ON/OFF: exponential ON and OFF periods
    with Poisson departures while ON. Sizes: deterministic, exponential or binomial frames, clipped to
    64–1514 bytes.
    """
    rng = np.random.default_rng(seed)
    index = {n: i + 1 for i, n in enumerate(state.nodes)}
    per_host: dict[int, list] = {}
    for k, flow in enumerate(state.flows):
        if flow.rate <= 0:
            continue
        mean_bytes = flow.packet_size / 8.0
        gap = flow.packet_size / flow.rate
        t = _departures(flow, gap, duration, rng)
        frames = _frame_sizes(flow, mean_bytes, len(t), rng)
        per_host.setdefault(index[flow.src], []).append(
            (t, np.full(len(t), k), np.arange(len(t)), np.full(len(t), index[flow.dst]), frames - FRAME_OVERHEAD_BYTES))
    plans = {}
    for host, parts in per_host.items():
        t, flow, seq, dst, size = (np.concatenate(a) for a in zip(*parts))
        order = np.argsort(t, kind="stable")
        plans[host] = {"t": t[order], "flow": flow[order].astype(np.int32), "seq": seq[order].astype(np.int32),
                       "dst": dst[order].astype(np.int32), "size": size[order].astype(np.int32)}
    return plans


def _departures(flow, gap: float, duration: float, rng) -> np.ndarray:
    if flow.time_dist == "cbr":
        return np.arange(rng.uniform(0, gap), duration, gap)
    if flow.time_dist == "poisson":
        t = np.cumsum(rng.exponential(gap, int(duration / gap * 1.2) + 20))
        while t[-1] < duration:
            t = np.concatenate([t, t[-1] + np.cumsum(rng.exponential(gap, len(t)))])
        return t[t < duration]
    on_fraction = flow.on_time / (flow.on_time + flow.off_time)
    times, clock, on_gap = [], 0.0, gap * on_fraction
    while clock < duration:
        on_end = clock + rng.exponential(flow.on_time)
        t = clock + np.cumsum(rng.exponential(on_gap, int((on_end - clock) / on_gap * 1.5) + 10))
        times.append(t[t < min(on_end, duration)])
        clock = on_end + rng.exponential(flow.off_time)
    return np.concatenate(times)


def _frame_sizes(flow, mean_bytes: float, n: int, rng) -> np.ndarray:
    if flow.size_dist == "exponential":
        sizes = rng.exponential(mean_bytes, n)
    elif flow.size_dist == "binomial":
        small, large = (s / 8.0 for s in flow.packet_sizes)
        p_large = (mean_bytes - small) / (large - small)
        sizes = np.where(rng.random(n) < p_large, large, small)
    else:
        sizes = np.full(n, mean_bytes)
    return np.clip(np.rint(sizes), MIN_FRAME_BYTES, MAX_FRAME_BYTES).astype(np.int64)


def flow_stats(rows: np.ndarray, planned: np.ndarray, start: float, warmup: float, n_flows: int) -> dict[str, np.ndarray]:
    """Per-flow statistics of received rows (flow, seq, send epoch, receive epoch) for packets sent
    at least ``warmup`` s after ``start``; ``planned[k]``: packets flow k was due to send in that window."""
    out = {k: np.full(n_flows, np.nan) for k in ("delay", "jitter", "p50", "p90", "p99")}
    out["received"] = np.zeros(n_flows, dtype=np.int64)
    rows = rows[rows[:, 2] >= start + warmup] if len(rows) else rows
    flows = rows[:, 0].astype(np.int64) if len(rows) else np.zeros(0, dtype=np.int64)
    delays = rows[:, 3] - rows[:, 2] if len(rows) else np.zeros(0)
    for k in np.unique(flows):
        d = delays[flows == k]
        out["received"][k] = len(d)
        out["delay"][k], out["jitter"][k] = d.mean(), d.var()
        out["p50"][k], out["p90"][k], out["p99"][k] = np.quantile(d, [0.5, 0.9, 0.99])
    with np.errstate(invalid="ignore", divide="ignore"):
        out["loss"] = np.where(planned > 0, np.clip(1.0 - out["received"] / planned, 0.0, 1.0), np.nan)
    return out


def window_delays(rows: np.ndarray, n_flows: int, start: float, end: float, min_packets: int = 1) -> np.ndarray:
    """Per-flow mean delay of the received ``rows`` (:func:`received_rows`) sent in [start, end)
    (Unix s), NaN for flows with fewer than ``min_packets`` of them, s."""
    if len(rows):
        rows = rows[(rows[:, 2] >= start) & (rows[:, 2] < end)]
    stats = flow_stats(rows, np.zeros(n_flows), start, 0.0, n_flows)
    return np.where(stats["received"] >= min_packets, stats["delay"], np.nan)


def received_rows(workdir: Path, hosts: int) -> np.ndarray:
    """What the receivers of a :func:`play` in ``workdir`` recorded: rows (flow, seq, send epoch,
    receive epoch), s."""
    rows = [np.load(Path(workdir) / f"recv-{i}.npy") for i in range(1, hosts + 1)]
    return np.concatenate([r for r in rows if len(r)]) if any(len(r) for r in rows) else np.zeros((0, 4))


def fifo_waits(state: NetworkState, plans: dict[int, dict[str, np.ndarray]], capacity_scale: float = 1.0) -> dict:
    """The queueing wait (s) each planned packet would meet in an ideal network of ``state``'s links:
    FIFO servers of ``capacity_scale`` × capacity with a frame's service time, store-and-forward,
    no buffer limit and no forwarding cost. Keyed by (flow, seq); ``plans`` as :func:`plan_packets`."""
    import heapq

    capacity = np.array([lk.capacity for lk in state.links]) * capacity_scale
    paths = state.flow_links
    packets = [(float(t), int(f), int(q), (int(size) + FRAME_OVERHEAD_BYTES) * 8.0)
               for plan in plans.values() for t, f, q, size in zip(plan["t"], plan["flow"], plan["seq"], plan["size"])]
    events = [(t, i, 0) for i, (t, *_) in enumerate(packets)]
    heapq.heapify(events)
    free_at = np.zeros(len(capacity))
    waits = np.zeros(len(packets))
    while events:
        arrival, i, hop = heapq.heappop(events)
        links = paths[packets[i][1]]
        if hop == len(links):
            continue
        link = links[hop]
        start = max(arrival, free_at[link])
        free_at[link] = start + packets[i][3] / capacity[link]
        waits[i] += start - arrival
        heapq.heappush(events, (free_at[link], i, hop + 1))
    return {(f, q): w for (_, f, q, _), w in zip(packets, waits)}


def _cpu_times() -> tuple[float, float]:
    fields = [float(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]
    return sum(fields) - idle, sum(fields)


def live_rows(workdir: Path, hosts: int, seen: set) -> np.ndarray:
    """The rows (as :func:`received_rows`) the receivers of a :func:`play` with ``live_s`` wrote out
    since the files named in ``seen`` (which is updated), while the traffic still plays."""
    rows = []
    for i in range(1, hosts + 1):
        for path in sorted(Path(workdir).glob(f"recv-{i}.npy.live-?????.npy")):
            if path.name not in seen:
                seen.add(path.name)
                rows.append(np.load(path))
    rows = [r for r in rows if len(r)]
    return np.concatenate(rows) if rows else np.zeros((0, 4))


def traffic_dir(workdir: Path, seed: int) -> Path:
    """Where :func:`play` with ``seed`` in ``workdir`` keeps its plans and what the hosts received."""
    return Path(workdir) / f"traffic-{seed}"


def play(net, state: NetworkState, duration: float = 10.0, warmup: float = 2.0, seed: int = 0,
         workdir: Path | None = None, live_s: float = 0.0) -> Measurement:
    """Play ``state``'s traffic in the running :class:`~mininet_topos.network.EmulatedNetwork` ``net`` for
    ``duration`` s and measure every flow (packets sent in the first ``warmup`` s are not counted).
    With ``live_s`` > 0 the receivers also write out what they received every ``live_s`` s
    (:func:`live_rows`)."""
    workdir = traffic_dir(workdir or net.workdir, seed)
    workdir.mkdir(parents=True, exist_ok=True)
    for stale in workdir.glob("recv-*.npy.live-*"):  # an earlier play's: :func:`live_rows` would read them as new
        stale.unlink()
    plans = plan_packets(state, duration, seed)
    start = time.time() + START_LEAD_S
    until = start + duration + DRAIN_S
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    procs = []
    for i, node in enumerate(state.nodes, start=1):
        procs.append(net.host(node).popen([sys.executable, "-m", "mininet_topos.udpgen", "recv", str(PORT), repr(until),
                                           str(workdir / f"recv-{i}.npy"), repr(live_s)], env=env))
    for i, plan in plans.items():
        np.savez(workdir / f"plan-{i}.npz", **plan)
        procs.append(net.host(state.nodes[i - 1]).popen(
            [sys.executable, "-m", "mininet_topos.udpgen", "send", str(workdir / f"plan-{i}.npz"), repr(start),
             str(workdir / f"send-{i}.json")], env=env))
    busy0, total0 = _cpu_times()
    for proc in procs:
        proc.wait(timeout=START_LEAD_S + duration + DRAIN_S + 60)
    busy1, total1 = _cpu_times()
    rows = received_rows(workdir, len(state.nodes))
    planned = np.zeros(len(state.flows))
    for plan in plans.values():
        np.add.at(planned, plan["flow"][plan["t"] >= warmup], 1)
    sends = [json.loads((workdir / f"send-{i}.json").read_text()) for i in plans]
    stats = flow_stats(rows, planned, start, warmup, len(state.flows))
    sent = sum(s["packets"] for s in sends)
    if sent and not len(rows):
        from mininet_topos.network import EmulationError

        raise EmulationError(f"no packet arrived: the hosts sent {sent} ({sum(s['failed'] for s in sends)} send "
                             f"failures) and the network forwarded none; see {workdir} and "
                             f"{Path(net.workdir) / 'controller.log'}")
    return Measurement(
        delay=stats["delay"], jitter=stats["jitter"], loss=stats["loss"], p50=stats["p50"], p90=stats["p90"],
        p99=stats["p99"], received=stats["received"], duration=duration, warmup=warmup,
        sender_late_p99=max((s["late_p99"] for s in sends), default=0.0),
        cpu_busy=(busy1 - busy0) / max(total1 - total0, 1e-9), load_average=os.getloadavg()[0],
        extra={"send_failures": sum(s["failed"] for s in sends), "packets_sent": sent})

