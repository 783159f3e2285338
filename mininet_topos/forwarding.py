"""How long Open vSwitch's userspace datapath takes to forward a packet: its thread's walk over the ports.

ovs-vswitchd serves every veth port of every bridge from its one main thread: it reads the ports
one after another in a fixed order (the datapath's port hash table, so the order changes with
every bring-up and whenever ports come and go), then runs the rest of its main loop, and round
again. A packet leaves a switch while the thread serves the port it came in on, and waits at the
next switch until the walk reaches that switch's input port. So each hop costs

* when the packet went straight through the link (it did not queue): the ports the thread walks
  from the input port it left to the next one, plus one main-loop round if that port comes
  earlier in the walk (a *wrap*);
* when it queued on the link (HTB releases it at any moment) or comes from a host: a random phase,
  on average a constant plus the input port's position in the walk.

A packet queues on a link with probability ≈ the link's utilization ρ. Per flow this gives three
features, linear in the coefficients :class:`~mininet_topos.calibration.Correction` fits: random
hops, ports walked, wraps (expected values). Without a measured walk the expectation over a random
order of ``ports`` ports stands in. The walk itself is read with ``strace`` from the thread's
``recvmmsg`` calls (:func:`probe_walk`; root). Measured: docs/emulation.md.
"""

from __future__ import annotations

import os
import re
import subprocess
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from twin.state import NetworkState

OVS_PID_FILE = Path("/var/run/openvswitch/ovs-vswitchd.pid")
_SYSCALL = re.compile(r"^(?:\d+\s+)?(?:[\d:.]+\s+)?(\w+)\((\d+)?", re.M)


@dataclass(frozen=True)
class Walk:
    """Where a network's input ports sit in the thread's walk (0 = first served): ``host[node]``: the
    port of node's switch facing its host; ``link[(a, b)]``: the port of b's switch where link a→b
    arrives; ``ports``: ports walked per round, every bridge's included."""

    host: dict
    link: dict
    ports: int

    def to_dict(self) -> dict:
        return {"host": self.host, "link": {f"{a}->{b}": p for (a, b), p in self.link.items()}, "ports": self.ports}

    @classmethod
    def from_dict(cls, data: dict) -> Walk:
        link = {tuple(key.split("->", 1)): int(p) for key, p in data["link"].items()}
        return cls(host={k: int(v) for k, v in data["host"].items()}, link=link, ports=int(data["ports"]))


def parse_walk(trace: str, names: dict[int, str]) -> list[str]:
    """The walk (port names in serving order) from an strace of the thread: the most frequent of the
    longest unbroken runs of ``recvmmsg`` on packet sockets (``names``: fd → port name); any other
    system call ends a run (the rest of the main loop). Empty if the trace holds no complete round."""
    runs, run = [], []
    for call, fd in _SYSCALL.findall(trace):
        if call == "recvmmsg" and fd and int(fd) in names:
            run.append(names[int(fd)])
        elif run:
            runs.append(tuple(run))
            run = []
    complete = [r for r in runs[1:] if len(set(r)) == len(r)]  # the first may have started mid-walk
    if not complete:
        return []
    longest = max(len(r) for r in complete)
    return list(Counter(r for r in complete if len(r) == longest).most_common(1)[0][0])


def packet_socket_names(pid: int) -> dict[int, str]:
    """fd → interface name for every AF_PACKET socket the process holds (/proc/net/packet)."""
    ifindex_of_inode = {}
    for line in Path("/proc/net/packet").read_text().splitlines()[1:]:
        fields = line.split()
        ifindex_of_inode[fields[8]] = int(fields[4])
    ifname = {}
    for name in os.listdir("/sys/class/net"):
        try:
            ifname[int(Path(f"/sys/class/net/{name}/ifindex").read_text())] = name
        except OSError:
            continue
    out = {}
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        match = re.fullmatch(r"socket:\[(\d+)\]", target)
        if match and match.group(1) in ifindex_of_inode:
            out[int(fd)] = ifname.get(ifindex_of_inode[match.group(1)], "?")
    return out


def probe_walk(seconds: float = 0.5) -> list[str]:
    """ovs-vswitchd's walk now (port names, serving order), read by tracing its main thread for
    ``seconds``; empty if strace is missing or saw no complete round (root)."""
    pid = int(OVS_PID_FILE.read_text().strip())
    trace = Path(f"/tmp/ndt-walk-{os.getpid()}.strace")
    try:
        tracer = subprocess.Popen(["strace", "-p", str(pid), "-e", "trace=recvmmsg,recvmsg,read,poll", "-o", str(trace)],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    except FileNotFoundError:
        return []
    time.sleep(seconds)
    tracer.terminate()
    tracer.wait(10)
    text = trace.read_text() if trace.exists() else ""
    trace.unlink(missing_ok=True)
    return parse_walk(text, packet_socket_names(pid))


def walk_of(order: list[str], host_ports: dict, link_ports: dict) -> Walk | None:
    """The :class:`Walk` of a network whose input ports are named ``host_ports[node]`` and
    ``link_ports[(a, b)]``, from the serving ``order``; None if one of them is not in it."""
    position = {name: i for i, name in enumerate(order)}
    if not all(p in position for p in (*host_ports.values(), *link_ports.values())):
        return None
    return Walk(host={n: position[p] for n, p in host_ports.items()},
                link={k: position[p] for k, p in link_ports.items()}, ports=len(order))


def walk_features(state: NetworkState, walk: Walk | None, ports: int) -> np.ndarray:
    """Per flow: expected random-phase hops, ports walked, wraps (module docstring), the walk known
    (``walk``) or, if None, averaged over random orders of ``ports`` ports (0: all zero)."""
    rho = np.clip(state.utilization(), 0.0, 1.0)
    out = np.zeros((len(state.flows), 3))
    for k, (flow, links) in enumerate(zip(state.flows, state.flow_links)):
        queued = rho[links]
        if walk is None:
            if ports:  # a random port sits at (ports - 1) / 2 on average; the next one, ports / 2 ahead
                random_hops, straight = 1 + queued.sum(), (1 - queued).sum()
                out[k] = random_hops, (ports - 1) / 2 * random_hops + ports / 2 * straight, straight / 2
            continue
        arrival = [walk.host[flow.src]] + [walk.link[(state.links[i].src, state.links[i].dst)] for i in links]
        walked, wraps = float(arrival[0]), 0.0
        for q, here, there in zip(queued, arrival, arrival[1:]):
            wrap = there <= here
            walked += q * there + (1 - q) * (there - here + wrap * walk.ports)
            wraps += (1 - q) * wrap
        out[k] = 1 + queued.sum(), walked, wraps
    return out
