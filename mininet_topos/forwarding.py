"""Reading Open vSwitch's port walk from the running ovs-vswitchd (root).

ovs-vswitchd's main thread reads the ports one after another in a fixed order that changes with
every bring-up and whenever ports come and go (:mod:`twin.calibration.port_walk` models what that
costs a packet). The order is read with ``strace`` from the thread's ``recvmmsg`` calls
(:func:`probe_walk`) and mapped onto a network's input ports (:func:`walk_of`).
"""

from __future__ import annotations

import os
import re
import subprocess
import time
from collections import Counter
from pathlib import Path

from twin.calibration.port_walk import Walk

OVS_PID_FILE = Path("/var/run/openvswitch/ovs-vswitchd.pid")
_SYSCALL = re.compile(r"^(?:\d+\s+)?(?:[\d:.]+\s+)?(\w+)\((\d+)?", re.M)


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
