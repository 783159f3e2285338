"""Where a probe's time and a host packet's time go on one path, segment by segment.

Brings ``TOPOLOGY`` up in Mininet under ``ndt controller --probe-rate RATE`` (as
``probe_accuracy.py``), plays its traffic for ``DURATION`` s and, meanwhile, captures with the
kernel's receive stamps (``AF_PACKET``, ``SO_TIMESTAMPNS``) every frame on all ports of the path
``SRC → DST``'s first and last switch, on the ports its links leave and enter by, and the OpenFlow
segments carrying probes on ``lo``. A capture on a shaped port sees a frame as it leaves the link's
queue, so a switch's segment (in at one port, out at the next) holds its forwarding and the queue
of the link it sends on.

Host packets (UDP to the generator's port; the payload carries flow, sequence number and the
sender's clock) give: the host's stack (its Python stamp to the first switch's port), each switch,
each link. Probes to ``DST``'s host sent at ``SRC`` (never seen coming into ``SRC``) give: the
packet-out to the first port out, the links and switches, the last port in to the packet-in; the
loopback probes of both ends, their time between packet-out and packet-in. ``gap_s`` is the hosts'
mean delay minus the probes' as the controller would figure it (raw time minus half of each end's
loopback), all from the same kernel clock, to the last switch's port towards the host (the host's
receiving stack is not in it); ``hosts_own_delay_s`` is what the hosts measured themselves, after
their warm-up, for comparison; ``frames_unread`` counts captured frames that could not be parsed.
Prints JSON (s); root.

    python experiments/probe_segments.py [TOPOLOGY] [LOAD] [DURATION] [RATE] [SRC] [DST] [SEED]
"""

from __future__ import annotations

import ipaddress
import json
import select
import socket
import struct
import sys
import threading
import time
from dataclasses import dataclass

import numpy as np

from controller.api.client import ControllerClient
from controller.probes import PROBE_HEADER, PROBE_MAGIC, probe_id
from mininet_topos.network import EmulatedNetwork
from mininet_topos.topologies import emulation_state
from mininet_topos.traffic import play
from mininet_topos.udpgen import HEADER, PORT

ETH_P_ALL = 3
SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)
PACKET_OUTGOING = 4
ETH_IP, IP_UDP = b"\x08\x00", 17
PROBE_FRAME_IP_DST = 30  # offset of the IPv4 destination in a probe's Ethernet frame
PROBE_FRAME_MAGIC = 42  # offset of the probe payload (Ethernet 14 + IPv4 20 + UDP 8)


@dataclass(frozen=True, slots=True)
class Sighting:
    """One frame seen: when (s, the kernel's wall clock), where, and what it carried: a host packet
    (``key`` = (flow, sequence number), ``sent`` its sender's stamp) or a probe (``key`` = its id,
    ``dst`` the IPv4 address it is sent to)."""

    at: float
    where: str
    outgoing: bool
    kind: str
    key: object
    sent: float = 0.0
    dst: str = ""


def port_sighting(at: float, where: str, outgoing: bool, frame: bytes) -> Sighting | None:
    """What an Ethernet ``frame`` seen on a switch port carries, or None (neither kind, or cut short)."""
    if len(frame) < 42 or frame[12:14] != ETH_IP or frame[23] != IP_UDP:
        return None
    udp = 14 + (frame[14] & 15) * 4
    if len(frame) < udp + 8:
        return None
    payload = frame[udp + 8:]
    number = probe_id(payload)
    if number is not None:
        dst = frame[PROBE_FRAME_IP_DST:PROBE_FRAME_IP_DST + 4]
        return Sighting(at, where, outgoing, "probe", number, dst=str(ipaddress.IPv4Address(dst)))
    if struct.unpack_from("!H", frame, udp + 2)[0] == PORT and len(payload) >= HEADER.size:
        flow, seq, sent = HEADER.unpack_from(payload)
        return Sighting(at, where, outgoing, "host", (flow, seq), sent=sent)
    return None


def openflow_sightings(at: float, segment: bytes) -> list[Sighting]:
    """The probes inside an OpenFlow TCP segment seen on ``lo`` (packet-outs and packet-ins carry the
    probe's whole frame); a probe whose frame is not whole in the segment is left out."""
    out, start = [], segment.find(PROBE_MAGIC)
    while start != -1:
        frame_start = start - PROBE_FRAME_MAGIC
        if frame_start >= 0 and start + PROBE_HEADER.size <= len(segment):
            dst = segment[frame_start + PROBE_FRAME_IP_DST:frame_start + PROBE_FRAME_IP_DST + 4]
            out.append(Sighting(at, "lo", True, "probe", PROBE_HEADER.unpack_from(segment, start)[1],
                                dst=str(ipaddress.IPv4Address(dst))))
        start = segment.find(PROBE_MAGIC, start + 1)
    return out


class Capture:
    """Kernel-stamped sightings on ``interfaces`` and ``lo``, gathered by a thread while the ``with``
    block runs; :attr:`sightings` and :attr:`unread` (frames that could not be parsed) after it."""

    def __init__(self, interfaces: list[str]):
        self.interfaces = [*interfaces, "lo"]
        self.sightings: list[Sighting] = []
        self.unread = 0
        self._sockets: dict = {}
        self._running = False
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> "Capture":
        try:
            for name in self.interfaces:
                sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
                self._sockets[sock.fileno()] = (sock, name)
                sock.bind((name, 0))
                sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 << 20)
                sock.setblocking(False)
        except OSError:
            self._close()
            raise
        self._running = True
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._running = False
        if self._thread.is_alive():
            self._thread.join()
        self._close()

    def _close(self) -> None:
        for sock, _ in self._sockets.values():
            sock.close()
        self._sockets.clear()

    def _run(self) -> None:
        poller = select.poll()
        for fd in self._sockets:
            poller.register(fd, select.POLLIN)
        while self._running:
            for fd, _ in poller.poll(200):
                sock, name = self._sockets[fd]
                while True:
                    try:
                        data, ancillary, _, address = sock.recvmsg(65536, 256)
                    except BlockingIOError:
                        break
                    try:
                        self._read(name, data, ancillary, address[2] == PACKET_OUTGOING)
                    except (ValueError, struct.error):
                        self.unread += 1

    def _read(self, name: str, data: bytes, ancillary, outgoing: bool) -> None:
        stamp = next((v for level, kind, v in ancillary if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS), None)
        if stamp is None:
            seconds, nanoseconds = time.time(), 0
        else:
            seconds, nanoseconds = struct.unpack("qq", stamp[:16])
        at = seconds + nanoseconds * 1e-9
        if name == "lo":
            if outgoing:  # lo shows each segment twice, out and in
                self.sightings.extend(openflow_sightings(at, data))
        else:
            sighting = port_sighting(at, name, outgoing, data)
            if sighting:
                self.sightings.append(sighting)


def _summary(values) -> dict:
    v = np.asarray(values, dtype=float)
    if not len(v):
        return {"n": 0}
    return {"n": int(len(v)), "mean_s": float(v.mean()), "median_s": float(np.median(v)),
            "p90_s": float(np.quantile(v, 0.9))}


def path_segments(sightings: list[Sighting], hops: list[tuple[str, str]], source_port: str, target_port: str,
                  flows: set[int], source_ports: set[str], source_ip: str, target_ip: str) -> dict:
    """Segment times of the host packets of ``flows`` and of the probes from the path's first switch
    to ``target_ip`` (the destination's host), s.

    ``hops``: per link of the path, the interface it leaves by and the one it enters by;
    ``source_port`` / ``target_port``: the hosts' ports on the first and last switch;
    ``source_ports``: every port of the first switch (a probe seen entering it came from further
    back). A probe to either end's host seen on no captured port is that end's loopback (the
    capture covers every port of both ends, so a probe from elsewhere shows where it came in)."""
    seen: dict = {}
    lo: dict = {}
    for s in sorted(sightings, key=lambda s: s.at):
        if s.where == "lo":
            lo.setdefault(s.key, []).append(s)
        else:
            seen.setdefault((s.kind, s.key), {}).setdefault((s.where, s.outgoing), s)
    chain = [(source_port, False)] + [step for out, into in hops for step in ((out, True), (into, False))] + [(target_port, True)]
    names = ["host stack: send to the first switch's port"]
    for i in range(len(hops)):
        names += [f"switch {i}: in to out (forwarding and the link's queue)", f"link {i}: out to in"]
    names.append(f"switch {len(hops)}: in to the host's port out")
    host_segments = [[] for _ in names]
    host_total = []
    for (kind, key), at in seen.items():
        if kind != "host" or key[0] not in flows or not all(step in at for step in chain):
            continue
        first = at[chain[0]]
        times = [first.sent] + [at[step].at for step in chain]
        for i in range(len(names)):
            host_segments[i].append(times[i + 1] - times[i])
        host_total.append(times[-1] - times[0])
    probe_chain = chain[1:-1]
    probe_names = ["first switch: packet-out to out"]
    for i in range(len(hops)):
        probe_names.append(f"link {i}: out to in")
        if i < len(hops) - 1:
            probe_names.append(f"switch {i + 1}: in to out")
    probe_names.append("last switch: in to packet-in")
    probe_segments = [[] for _ in probe_names]
    probe_raw = []
    loops = {source_ip: [], target_ip: []}
    for key, sights in lo.items():
        at = seen.get(("probe", key), {})
        if len(sights) < 2:
            continue
        if not at:  # on no port of either end's switch: a loopback (or a probe elsewhere in the network)
            if sights[0].dst in loops:
                loops[sights[0].dst].append(sights[-1].at - sights[0].at)
            continue
        elsewhere_at_source = {step for step in at if step[0] in source_ports} - {(hops[0][0], True)}
        if sights[0].dst != target_ip or elsewhere_at_source or not all(step in at for step in probe_chain):
            continue
        times = [sights[0].at] + [at[step].at for step in probe_chain] + [sights[-1].at]
        for i in range(len(probe_names)):
            probe_segments[i].append(times[i + 1] - times[i])
        probe_raw.append(times[-1] - times[0])
    loop_means = {ip: float(np.mean(v)) if v else float("nan") for ip, v in loops.items()}
    probe_delay = float(np.mean(probe_raw)) - 0.5 * (loop_means[source_ip] + loop_means[target_ip]) if probe_raw else float("nan")
    host_delay = float(np.mean(host_total)) if host_total else float("nan")
    return {
        "host_delay_s": host_delay, "probe_delay_s": probe_delay, "gap_s": host_delay - probe_delay,
        "host_segments": {name: _summary(v) for name, v in zip(names, host_segments)},
        "probe_segments": {name: _summary(v) for name, v in zip(probe_names, probe_segments)},
        "probe_raw": _summary(probe_raw),
        "loopbacks": {"source": _summary(loops[source_ip]), "destination": _summary(loops[target_ip])},
    }


def main(topology="line:2", load=0.5, duration=60.0, rate=100.0, src=None, dst=None, seed=0) -> dict:
    state = emulation_state(topology, float(load), seed=int(seed))
    src = src or state.nodes[0]
    dst = dst or state.nodes[1]
    flow_index = [i for i, f in enumerate(state.flows) if (f.src, f.dst) == (src, dst)]
    if not flow_index:
        raise SystemExit(f"no flow from {src} to {dst} in {topology}")
    nodes = state.flow_path(flow_index[0])
    with EmulatedNetwork(state, ControllerClient, "g", tag="probe-segments",
                         controller_args=("--probe-rate", str(rate))) as net:
        ports = net.link_ports()
        names = net.names
        hops = [(ports[(a, b)][1], ports[(b, a)][1]) for a, b in zip(nodes[:-1], nodes[1:])]
        source_ports = {intf.name for intf in net.net.get(names.switch_of(src)).intfList() if intf.name != "lo"}
        target_ports = {intf.name for intf in net.net.get(names.switch_of(dst)).intfList() if intf.name != "lo"}
        source_port, target_port = f"{names.switch_of(src)}-eth1", f"{names.switch_of(dst)}-eth1"
        with Capture(sorted(source_ports | target_ports | {i for hop in hops for i in hop})) as capture:
            time.sleep(5.0)  # loopbacks and probes of both ends before the traffic starts
            measured = play(net, state, float(duration), 2.0, int(seed), net.workdir / "traffic")
    result = path_segments(capture.sightings, hops, source_port, target_port, set(flow_index), source_ports,
                           names.ip_of(src), names.ip_of(dst))
    return {"topology": topology, "load": float(load), "duration_s": float(duration), "probe_rate": float(rate),
            "path": nodes, "hosts_own_delay_s": measured.by_pair(state).get((src, dst)),
            "frames_unread": capture.unread, **result}


if __name__ == "__main__":
    print(json.dumps(main(*sys.argv[1:]), indent=1))
