"""A NetworkState brought up in Mininet, with ``ndt controller`` routing it.

One host per switch (host ``i`` is 10.0.0.i on port 1 of switch ``i``); Open vSwitch with the
userspace datapath (the kernel has no openvswitch module); every directed link shaped on its
egress interface with HTB at the link's capacity and a ``pfifo`` child of ``buffer`` packets (no
netem on this kernel: no propagation delay, no random loss). Switch and host names carry a
prefix (live ``ls1``/``lh1``, sandbox ``vs1``/``vh1``) so a sandbox network can run beside the live
one and neither collides with the controller tests' ``s1``/``h1``. The controller is the real one
(``ndt controller`` in a subprocess) with a wiring file written here; it is driven through the
client ``connect(address)`` returns for its gRPC address (``controller.api.client.ControllerClient``:
``status``, ``apply``, ``weights``, ``report_measured``, ``close``).
Never calls Mininet's global cleanup (it kills other people's processes); only its own
bridges and links are removed.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from mininet_topos.forwarding import probe_walk, walk_of
from twin.calibration.port_walk import Walk
from twin.state.errors import NdtError
from twin.state.model import NetworkState

REPO = Path(__file__).resolve().parents[1]
LOG_DIR = REPO / "data" / "logs"
LOG = logging.getLogger("ndt.emulation")
OVS_CTL = "/usr/share/openvswitch/scripts/ovs-ctl"
SHAPER_SLACK_S = 100e-6  # HTB token bucket depth, s of link time: absorbs timer lateness, no more
OVS_RT_PRIORITY = 5  # below the traffic generator's (10)
OVS_REVALIDATE_MS = 100  # while an emulation runs, rules' counters are refreshed this often, ms (Open vSwitch: 500)
CONTROLLER_START_ATTEMPTS = 3  # a port chosen free can be taken before the controller binds it


class EmulationError(NdtError, RuntimeError):
    """The emulated network could not be built or driven; the message says which step failed."""


@dataclass(frozen=True)
class Names:
    """Mininet names of a state's nodes: switch ``{switch}{i}``, host ``{host}{i}`` at 10.0.0.i (i from 1)."""

    nodes: tuple[str, ...]
    switch: str = "ls"
    host: str = "lh"

    def index(self, node: str) -> int:
        return self.nodes.index(node) + 1

    def switch_of(self, node: str) -> str:
        return f"{self.switch}{self.index(node)}"

    def host_of(self, node: str) -> str:
        return f"{self.host}{self.index(node)}"

    def ip_of(self, node: str) -> str:
        return f"10.0.0.{self.index(node)}"


def shaping_commands(intf: str, capacity_bps: float, buffer_pkts: int) -> list[str]:
    """``tc -batch`` lines shaping ``intf`` to ``capacity_bps`` with a FIFO of ``buffer_pkts`` packets.

    HTB sends while its bucket holds tokens and then charges the packet, so with a bucket of
    ``SHAPER_SLACK_S`` a packet leaves one frame time after the previous one: a FIFO server of the
    link's capacity (docs/emulation.md). A deeper bucket (e.g. one frame) lets packets skip part
    of their wait after every idle spell.
    """
    rate = int(round(capacity_bps))
    burst = max(1, int(round(capacity_bps * SHAPER_SLACK_S / 8)))
    return [
        f"qdisc replace dev {intf} root handle 1: htb default 1",
        f"class add dev {intf} parent 1: classid 1:1 htb rate {rate}bit ceil {rate}bit "
        f"burst {burst}b cburst {burst}b",
        f"qdisc add dev {intf} parent 1:1 handle 10: pfifo limit {int(buffer_pkts)}",
    ]


def reshape_link(intf: str, capacity_bps: float, buffer_pkts: int) -> None:
    """Shape ``intf`` anew behind the controller's back (tc cannot change an HTB root in place, so it
    is deleted first); :class:`EmulationError` when tc fails."""
    lines = [f"qdisc del dev {intf} root", *shaping_commands(intf, capacity_bps, buffer_pkts)]
    run = subprocess.run(["tc", "-batch", "-"], input="\n".join(lines) + "\n", capture_output=True, text=True)
    if run.returncode != 0:
        raise EmulationError(f"tc on {intf}: {run.stderr.strip()}")


def ensure_open_vswitch() -> None:
    """Start Open vSwitch if it is not running; raise EmulationError if the tools are missing."""
    for tool in ("ovs-vsctl", "mnexec", "tc"):
        if subprocess.run(["which", tool], capture_output=True).returncode != 0:
            raise EmulationError(f"{tool} not found: run scripts/install-system-deps.sh")
    if os.geteuid() != 0:
        raise EmulationError("the emulation needs root (network namespaces, Open vSwitch)")
    if subprocess.run([OVS_CTL, "status"], capture_output=True).returncode != 0:
        subprocess.run([OVS_CTL, "start", "--system-id=random"], check=True, capture_output=True)


def ovs_threads() -> list[int]:
    """Thread ids of the running ovs-vswitchd."""
    pid = Path("/var/run/openvswitch/ovs-vswitchd.pid").read_text().strip()
    return [int(t) for t in os.listdir(f"/proc/{pid}/task")]


def make_ovs_realtime() -> bool:
    """Run ovs-vswitchd's threads SCHED_FIFO (priority OVS_RT_PRIORITY) unless they already are; True
    if this call changed them (its caller then restores them with :func:`restore_ovs`)."""
    threads = ovs_threads()
    if all(os.sched_getscheduler(t) == os.SCHED_FIFO for t in threads):
        return False
    for t in threads:
        os.sched_setscheduler(t, os.SCHED_FIFO, os.sched_param(OVS_RT_PRIORITY))
    return True


def restore_ovs() -> None:
    """ovs-vswitchd's threads back to the normal time-sharing policy (their nice value is kept)."""
    for t in ovs_threads():
        try:
            os.sched_setscheduler(t, os.SCHED_OTHER, os.sched_param(0))
        except ProcessLookupError:
            continue


def set_ovs_revalidate(milliseconds: int | None) -> int | None:
    """Set Open vSwitch's ``other_config:max-revalidator`` (ms; None: unset, its default), the longest
    its revalidators wait before refreshing the rules' packet counters from the datapath; the value
    before (None: unset). Raises :class:`EmulationError` when ovs-vsctl fails."""
    def vsctl(*args: str) -> str:
        run = subprocess.run(["ovs-vsctl", "--timeout=5", *args], capture_output=True, text=True)
        if run.returncode != 0:
            raise EmulationError(f"ovs-vsctl {' '.join(args)}: {run.stderr.strip()}")
        return run.stdout.strip().strip('"')

    before = vsctl("--if-exists", "get", "Open_vSwitch", ".", "other_config:max-revalidator")
    if milliseconds is None:
        vsctl("remove", "Open_vSwitch", ".", "other_config", "max-revalidator")
    else:
        vsctl("set", "Open_vSwitch", ".", f"other_config:max-revalidator={int(milliseconds)}")
    return int(before) if before else None


def free_ports(count: int) -> list[int]:
    """``count`` distinct TCP ports free on 127.0.0.1 now (held open together while they are chosen)."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def free_port() -> int:
    return free_ports(1)[0]


def last_line(path: Path) -> str:
    """The last non-blank line of a text file, '' if none (or no file)."""
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return ""
    return next((line.strip() for line in reversed(lines) if line.strip()), "")


def require_free_port(port: int, what: str) -> None:
    """Raise :class:`EmulationError` naming ``what`` when something already listens on ``port``
    (a readiness check on it would otherwise be answered by that other process)."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the exporter binds: only a listener is in the way
        try:
            s.bind(("", port))
        except OSError:
            raise EmulationError(f"port {port} ({what}) is already in use, perhaps by an ndt controller left "
                                 "running; stop it or choose another port") from None


class EmulatedNetwork:
    """``state`` running in Mininet under ``ndt controller``; use as a context manager.

    ``prefix``: names switches ``{prefix}s1``… and hosts ``{prefix}h1``…; ``tag``: its directory under
    data/logs; ``store``: the controller's telemetry store file; ``metrics_port``: its Prometheus endpoint
    (0 = any free port); ``controller_args``: more ``ndt controller`` options (no in-band probes unless
    they ask for them: in userspace OVS the thread that answers packet-outs also forwards, docs/operations.md).
    Routes start from the
    state's weights. ``realtime_ovs``: while the network runs, ovs-vswitchd is SCHED_FIFO (restored
    after), because on a machine busy with other jobs its forwarding otherwise stalls for tens of ms
    now and then (docs/emulation.md). While it runs, Open vSwitch also refreshes its rules' counters
    every ``OVS_REVALIDATE_MS`` (restored after): the route rules' packet counts then trail the ports'
    by less, and each link's loss (:mod:`telemetry.offered`) is read more exactly.
    """

    def __init__(self, state: NetworkState, connect, prefix: str = "l", store: Path | None = None,
                 metrics_port: int = 0, tag: str = "emu", poll_interval: float = 1.0, realtime_ovs: bool = True,
                 controller_args: tuple[str, ...] = ()):
        self.state = state
        self.names = Names(state.nodes, f"{prefix}s", f"{prefix}h")
        self.tag = tag
        LOG_DIR.mkdir(parents=True, exist_ok=True)
        self.workdir = LOG_DIR / tag
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.store_path = Path(store) if store else self.workdir / "telemetry.db"
        self._choose_metrics_port = not metrics_port
        self.metrics_port = metrics_port
        self._choose_ports()
        self.poll_interval = poll_interval
        self.controller_args = tuple(controller_args)
        self.realtime_ovs = realtime_ovs
        self._restore_ovs = False
        self._revalidate_set = False  # start() changed Open vSwitch's max-revalidator; stop() restores it
        self._revalidate_before: int | None = None
        self.net = None
        self.controller = None
        self.connect = connect
        self.client = None

    def _choose_ports(self) -> None:
        """Fresh OpenFlow and gRPC ports (and metrics, unless the caller gave one)."""
        ports = free_ports(3)
        self.ofp_port, self.grpc_port = ports[:2]
        if self._choose_metrics_port:
            self.metrics_port = ports[2]

    # ------------------------------------------------------------------ lifecycle
    def __enter__(self) -> EmulatedNetwork:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self) -> None:
        from mininet.log import setLogLevel
        from mininet.net import Mininet
        from mininet.node import OVSSwitch, RemoteController

        ensure_open_vswitch()
        if self.realtime_ovs:
            self._restore_ovs = make_ovs_realtime()
        self._revalidate_before = set_ovs_revalidate(OVS_REVALIDATE_MS)
        self._revalidate_set = True
        setLogLevel("error")
        self._remove_leftovers()
        topo = self._topo()
        self.net = Mininet(
            topo=topo, autoSetMacs=False, waitConnected=False, build=True,
            switch=lambda name, **kw: OVSSwitch(name, datapath="user", protocols="OpenFlow13", failMode="secure", **kw),
            controller=lambda name: RemoteController(f"{self.tag}-c0", ip="127.0.0.1", port=self.ofp_port))
        ports = self.link_ports()
        self._start_controller(ports)
        self.net.start()
        for host in self.net.hosts:
            host.cmd(f"ethtool -K {host.defaultIntf()} tx off")
        self._shape(ports)
        self.client = self.connect(f"127.0.0.1:{self.grpc_port}")
        self._wait(lambda: self.status().switches_connected == len(self.state.nodes), 30, "all switches to connect")
        self._learn_hosts()

    def stop(self) -> None:
        if self.client is not None:
            self.client.close()
            self.client = None
        try:
            if self.net is not None:
                self.net.stop()
                self.net = None
        finally:
            if self.controller is not None:
                self.controller.send_signal(signal.SIGTERM)
                try:
                    self.controller.wait(10)
                except subprocess.TimeoutExpired:
                    self.controller.kill()
                self.controller = None
            try:
                self._remove_leftovers()
                if self._restore_ovs:
                    restore_ovs()
                    self._restore_ovs = False
            finally:
                if self._revalidate_set:
                    self._revalidate_set = False
                    try:
                        set_ovs_revalidate(self._revalidate_before)
                    except EmulationError as exc:  # said, not raised: stop() may be unwinding another error
                        LOG.warning("Open vSwitch's max-revalidator not restored to %s: %s", self._revalidate_before, exc)

    def _topo(self):
        from mininet.topo import Topo

        names, state = self.names, self.state

        class StateTopo(Topo):
            def build(self):
                for node in state.nodes:
                    i = names.index(node)
                    self.addSwitch(names.switch_of(node), dpid=f"{i:016x}")
                    self.addHost(names.host_of(node), ip=f"{names.ip_of(node)}/24", mac=f"00:00:00:00:{i >> 8:02x}:{i & 255:02x}")
                    self.addLink(names.host_of(node), names.switch_of(node), port2=1)
                done = set()
                for link in state.links:
                    pair = frozenset((link.src, link.dst))
                    if pair not in done:
                        done.add(pair)
                        self.addLink(names.switch_of(link.src), names.switch_of(link.dst))

        return StateTopo()

    def link_ports(self) -> dict[tuple[str, str], tuple[int, str]]:
        """(src node, dst node) → (output port on src's switch, its interface name)."""
        by_switch = {self.names.switch_of(n): n for n in self.state.nodes}
        ports = {}
        for link in self.net.links:
            a, b = link.intf1, link.intf2
            if a.node.name in by_switch and b.node.name in by_switch:
                for x, y in ((a, b), (b, a)):
                    ports[(by_switch[x.node.name], by_switch[y.node.name])] = (x.node.ports[x], x.name)
        return ports

    def _start_controller(self, ports) -> None:
        state_path, wiring_path = self.workdir / "state.json", self.workdir / "wiring.json"
        self.state.save(state_path)
        wiring = {"dpids": {n: self.names.index(n) for n in self.state.nodes},
                  "ports": {f"{s}->{d}": p for (s, d), (p, _) in ports.items()}}
        wiring_path.write_text(json.dumps(wiring))
        if self.store_path.exists():
            self.store_path.unlink()
        for attempt in range(CONTROLLER_START_ATTEMPTS):
            require_free_port(self.metrics_port, "the controller's metrics, --metrics-port")
            self.log_path = self.workdir / "controller.log"
            log = open(self.log_path, "w")
            self.controller = subprocess.Popen(
                [sys.executable, "-m", "ndt.cli", "controller", "--state", str(state_path), "--wiring", str(wiring_path),
                 "--ofp-port", str(self.ofp_port), "--metrics-port", str(self.metrics_port),
                 "--store", str(self.store_path), "--poll-interval", str(self.poll_interval),
                 "--grpc", f"127.0.0.1:{self.grpc_port}",
                 *(() if "--probe-rate" in self.controller_args else ("--probe-rate", "0")), *self.controller_args],
                cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, stdout=log, stderr=subprocess.STDOUT)
            log.close()
            try:
                self._wait(self._metrics_up, 30, "the controller's metrics endpoint")
                return
            except EmulationError as exc:
                port_taken = "cannot listen" in str(exc)
                if not port_taken or attempt == CONTROLLER_START_ATTEMPTS - 1:
                    raise
            self._choose_ports()
            for controller in self.net.controllers:
                controller.port = self.ofp_port

    def _metrics_up(self) -> bool:
        if self.controller.poll() is not None:
            raise EmulationError(f"ndt controller exited with code {self.controller.returncode} "
                                 f"({last_line(self.log_path)}); see {self.log_path}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=2):
                return True
        except OSError:
            return False

    def _shape(self, ports) -> None:
        lines = []
        for link in self.state.links:
            lines += shaping_commands(ports[(link.src, link.dst)][1], link.capacity, link.buffer)
        result = subprocess.run(["tc", "-batch", "-"], input="\n".join(lines) + "\n", capture_output=True, text=True)
        if result.returncode != 0:
            raise EmulationError(f"tc could not shape the links: {result.stderr.strip()}")

    def _learn_hosts(self) -> None:
        """Every host ARPs once (a ping to the next host) so the controller learns them all; then routes."""
        hosts = [self.net.get(self.names.host_of(n)) for n in self.state.nodes]
        ips = [self.names.ip_of(n) for n in self.state.nodes]
        for attempt in range(3):
            pings = [h.popen(["ping", "-n", "-q", "-c", "1", "-W", "1", ips[(i + 1) % len(ips)]],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for i, h in enumerate(hosts)]
            for p in pings:
                p.wait()
            if self.status().hosts == len(hosts):
                break
        self._wait(lambda: self.status().hosts == len(hosts), 10, f"the controller to learn {len(hosts)} hosts")
        self.apply({(lk.src, lk.dst): lk.weight for lk in self.state.links}, who=f"{self.tag}: initial routes")

    def _remove_leftovers(self) -> None:
        """Delete this network's bridges if a previous run left them (and only those)."""
        bridges = subprocess.run(["ovs-vsctl", "--timeout=5", "list-br"], capture_output=True, text=True).stdout.split()
        mine = {self.names.switch_of(n) for n in self.state.nodes}
        stale = [b for b in bridges if b in mine]
        if stale:
            subprocess.run(["ovs-vsctl", "--timeout=10"] + [a for b in stale for a in ("--", "--if-exists", "del-br", b)],
                           capture_output=True)
        links = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True).stdout
        for line in links.splitlines():
            name = line.split(":")[1].strip().split("@")[0]
            if name.split("-eth")[0] in mine | {self.names.host_of(n) for n in self.state.nodes} and "-eth" in name:
                subprocess.run(["ip", "link", "del", name], capture_output=True)

    @staticmethod
    def _wait(condition, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if condition():
                return
            time.sleep(0.2)
        raise EmulationError(f"timed out after {timeout:.0f} s waiting for {what}")

    # ------------------------------------------------------------------ the controller's API
    def status(self):
        return self.client.status()

    def apply_vector(self, weights, who: str, links=None) -> int:
        """Push one weight per link of ``links`` (default: the state's), in order; returns the route
        version installed. Links not named keep their weight."""
        links = self.state.links if links is None else links
        return self.apply({(lk.src, lk.dst): float(w) for lk, w in zip(links, weights)}, who)

    def fail_link(self, a: str, b: str) -> None:
        """Take the link between nodes ``a`` and ``b`` down (both directions) and wait until the
        controller has seen it."""
        down = self.status().links_down
        self.net.configLinkStatus(self.names.switch_of(a), self.names.switch_of(b), "down")
        self._wait(lambda: self.status().links_down >= down + 2, 15, f"the controller to see {a}-{b} down")

    def restore_link(self, a: str, b: str) -> None:
        """Bring the link between nodes ``a`` and ``b`` back up and wait until the controller has seen it."""
        down = self.status().links_down
        self.net.configLinkStatus(self.names.switch_of(a), self.names.switch_of(b), "up")
        self._wait(lambda: self.status().links_down <= down - 2, 15, f"the controller to see {a}-{b} up")

    def apply(self, weights: dict[tuple[str, str], float], who: str) -> int:
        """Push OSPF weights to the controller; returns the route version installed."""
        return self.client.apply(weights, who)

    def weights(self) -> dict[tuple[str, str], float]:
        """The weights the controller routes by now."""
        return self.client.weights()

    def report_measured(self, delays: dict[tuple[str, str], float], source: str):
        """Measured mean path delays (s) to the controller's store and exporter."""
        return self.client.report_measured(delays, source)

    def host(self, node: str):
        return self.net.get(self.names.host_of(node))

    def walk(self, state: NetworkState | None = None, attempts: int = 6) -> Walk | None:
        """Where the input ports of ``state``'s links (default: this network's) and of the hosts sit
        in ovs-vswitchd's walk now (:mod:`mininet_topos.forwarding`); None if it could not be read."""
        state = state or self.state
        by_switch = {self.names.switch_of(n): n for n in self.state.nodes}
        hosts = {by_switch[b.node.name]: b.name for link in self.net.links
                 for a, b in ((link.intf1, link.intf2), (link.intf2, link.intf1))
                 if b.node.name in by_switch and a.node.name not in by_switch}
        ports = self.link_ports()
        links = {(lk.src, lk.dst): ports[(lk.dst, lk.src)][1] for lk in state.links}
        for _ in range(attempts):
            walk = walk_of(probe_walk(), hosts, links)
            if walk is not None:
                return walk
        return None

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.metrics_port}/metrics"
