"""The os-ken OpenFlow 1.3 app: a thin shell over routing_rules, the telemetry store and exporter.

Events in: switch connect/disconnect, port status, packet-in (ARP, IPv6 neighbour discovery, a frame to a host before its route is in,
a host's frame to a broadcast, multicast or unlearned MAC, carried to every other edge port), statistics replies. Decisions: ``controller.routing_rules`` (pure). Out: flow-mods in
barrier-separated batches, packet-outs, samples to the store and the metrics snapshot.

Threads (os-ken's native hub): the os-ken event loop runs the handlers; a route worker
computes and installs route sets (it waits for barrier replies, which the event loop
delivers, so it must not run there); a poller sends statistics requests every
``poll_interval`` s.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from os_ken.base import app_manager
from os_ken.controller import ofp_event
from os_ken.controller.handler import CONFIG_DISPATCHER, DEAD_DISPATCHER, MAIN_DISPATCHER, set_ev_cls
from os_ken.lib import hub
from os_ken.lib.packet import arp, ethernet, icmpv6, ipv4, ipv6, packet, udp
from os_ken.ofproto import ofproto_v1_3
from os_ken.topology import event as topo_event

from controller.channel_stamps import PROBE, StampedConnection
from controller.flooding import FloodLimiter, is_group_mac, may_flood, packet_in_meter
from controller.hosts import HostTable
from controller.probes import (
    PROBE_FRAME_BYTES,
    PROBE_TIMEOUT_S,
    PathDelays,
    ProbeSample,
    ProbeSchedule,
    probe_id,
    probe_payload,
)
from controller.reported_delays import ReportedDelays
from controller.routing_rules import (
    BASE_COOKIE,
    CLASSIFIER_TABLE,
    COOKIE_KIND_MASK,
    COUNTER_COOKIE,
    NDT_COOKIE_MASK,
    PACKET_IN_METER,
    PROBE_UDP_PORT,
    ROUTE_COOKIE,
    ROUTE_TABLE,
    FlowOp,
    FlowRule,
    Host,
    RouteSet,
    RuleError,
    Wiring,
    base_rules,
    counter_rules,
    edge_rules_left_behind,
    edge_rules_of_departed,
    leftover_group_ids,
    plan_update,
    probe_routes,
    probe_rules,
    route_rules,
)
from telemetry.exporter import Metrics
from telemetry.offered import OfferedPackets, RuleReading
from telemetry.rates import CounterRates, counted_since, pair_rates, supported_counter
from telemetry.store import LINK_KIND, ROUTING_KIND, LinkSample, StoreError, TelemetryStore
from twin.state.errors import NdtError
from twin.state.model import NetworkState

LOG = logging.getLogger("ndt.controller")
BARRIER_TIMEOUT_S = 5.0
STORE_MAINTENANCE_S = 300.0  # retention and downsampling of the telemetry store this often
DISCOVERY_SETTLE_S = 5.0  # with LLDP: handle ARP once every expected link is seen, or this long after the last change
LLDP_NUDGE_S = 1.0  # with LLDP: wake os-ken's probe loop this often (see _nudge_lldp)
PROBE_REPORT_S = 10.0  # probe delays to the store (the mean of this interval) and Prometheus this often
PROBE_METRIC_WINDOW_S = 30.0  # Prometheus shows each path's probe delay over this window
PROBE_SOURCE_MAC = "02:4e:44:54:00:01"  # locally administered: the controller as the probes' sender
PROBE_SOURCE_IP = "169.254.78.68"  # link-local: no host owns it


@dataclass
class ControllerConfig:
    """Everything the app needs: the state (topology, capacities, weights) and where it came from,
    the wiring, the telemetry sinks and the statistics interval (s). With ``discover`` the wiring's
    ports come from LLDP (os-ken's topology app) and links not yet discovered carry no route.
    ``probe_rate``: in-band delay probes per second, network-wide (0: none; :mod:`controller.probes`);
    ``probe_history_s``: how long returned probes (and reported delays) are kept in memory, s;
    ``flood_rate``: frames per second and edge port the controller carries to every other edge port
    when they are for a broadcast, multicast or unlearned MAC (0: none; :mod:`controller.flooding`);
    ``packet_in_rate``: frames per second each switch's packet-in meter lets through to the controller
    (route misses, neighbour discovery; not the probes), where the switch has meters (0: no meter);
    ``host_age_s``: a learned MAC not heard from for this long (no ARP or neighbour discovery, no frame
    counted by its counting rules) is forgotten with its rules, as a bridge ages its table, s (0: never)."""

    state: NetworkState
    wiring: Wiring
    store: TelemetryStore
    metrics: Metrics
    poll_interval: float = 1.0
    state_path: Path | None = None
    discover: bool = False
    probe_rate: float = 20.0
    probe_history_s: float = 900.0
    flood_rate: float = 100.0
    packet_in_rate: float = 1000.0
    host_age_s: float = 300.0


@dataclass(frozen=True)
class NetworkView:
    """The controller's knowledge at one instant: the state (current weights), link output ports,
    learned hosts (one per address, and one per MAC), links out of service, the installed route
    version and connected switches."""

    state: NetworkState
    ports: dict[tuple[str, str], int]
    hosts: tuple[Host, ...]
    macs: tuple[Host, ...]
    down: frozenset[tuple[str, str]]
    route_version: int
    switches_connected: int
    last_switch_over_s: float


def resumed_state(state: NetworkState, routing, state_path: Path | None) -> NetworkState:
    """``state`` with the weights in place when the controller last ran: those of the store's last
    ``routing`` record, unless the state file was changed after it (the operator's file then wins)
    or it names other links (another topology)."""
    if routing is None:
        return state
    if state_path is not None and Path(state_path).exists() and Path(state_path).stat().st_mtime > routing.ts:
        LOG.info("the state file is newer than the routing in the store: routing by the state file's weights")
        return state
    stored = routing.payload.get("weights", {})
    names = [f"{lk.src}->{lk.dst}" for lk in state.links]
    if set(stored) != set(names):
        LOG.warning("the store's routing (config %d) is for other links: routing by the state file's weights",
                    routing.id)
        return state
    LOG.info("resuming the routing in place before the restart (config %d from %s)", routing.id, routing.who)
    return state.with_weights([stored[name] for name in names])


class NdtController(app_manager.OSKenApp):
    """ndt's OpenFlow 1.3 app; started by :mod:`controller.launcher` with ``ndt_config``."""

    OFP_VERSIONS = [ofproto_v1_3.OFP_VERSION]

    def __init__(self, *args, ndt_config: ControllerConfig, **kwargs):
        super().__init__(*args, **kwargs)
        self.config = ndt_config
        self.state = resumed_state(ndt_config.state, ndt_config.store.latest_config(ROUTING_KIND),
                                   ndt_config.state_path)
        self.wiring = ndt_config.wiring
        self.store = ndt_config.store
        self.metrics = ndt_config.metrics
        self.metrics.set_gauge("hosts", 0)
        self._lock = threading.RLock()
        self._datapaths: dict[int, object] = {}
        self._hosts = HostTable()
        self._ports_down: set[tuple[str, str]] = set()
        self._installed: RouteSet | None = None
        self._recorded_down: frozenset | None = None  # the links out of service in the store's last link record
        self._routes_installed = threading.Condition()
        self._last_switch_over_s = 0.0
        self._barriers: dict[tuple[int, int], threading.Event] = {}
        self._reroute = threading.Event()
        self._reroute_reasons: list[str] = []
        self._link_rates = CounterRates()
        self._unsupported_tx_bytes: set[tuple[str, str]] = set()  # links whose switch reports tx_bytes all-ones
        self._traffic_rates = CounterRates()  # per edge counter rule (dpid, in port, source MAC, destination MAC)
        self._traffic_totals: dict[tuple[str, str], int] = {}  # bytes each pair of switches has sent, as counted
        self._counter_bytes: dict[tuple, int] = {}  # per edge counting rule, its bytes at the last reading
        self._flow_parts: dict[tuple[int, int], list] = {}  # flow-stats reply parts per (switch, xid) until the last one
        self._route_stats_xids: set[tuple[int, int]] = set()  # (switch, xid) of the route-rule stats requests
        self._route_stats_read: dict[int, float] = {}  # per switch, when its route rules were last read (monotonic s)
        self._offered = OfferedPackets()
        self._group_ports: dict[tuple[int, int], tuple[int, ...]] = {}  # (switch, select group) → its buckets' ports
        self._discovered: set[tuple[str, str]] = set()
        self._topology_changed = time.monotonic()
        self._poll_outstanding = 0
        self._poll_started = 0.0
        self.capacity = {(lk.src, lk.dst): lk.capacity for lk in self.state.links}
        self.path_delays = PathDelays(ndt_config.probe_history_s)
        self.reported_delays = ReportedDelays(ndt_config.probe_history_s)
        self._reports_compared = 0  # cursor into reported_delays: the reports already set beside the probes
        self._flood_limiter = FloodLimiter(ndt_config.flood_rate)  # used by the packet-in handler only
        self._metered_switches: set[int] = set()  # the switches whose base rules pass the packet-in meter
        self._probes_pending: dict[int, tuple[str, str, float]] = {}  # id → source, destination, queued (monotonic s)
        self._probes_left: dict[int, float] = {}  # id → when its bytes went to the kernel (monotonic s)
        self._probe_count = 0
        self._echo_sent: dict[tuple[int, int], float] = {}  # (dpid, xid) → queued (monotonic s)
        self._echo_left: dict[tuple[int, int], float] = {}  # (dpid, xid) → when its bytes went to the kernel
        self._listeners: list = []
        self._edge_version = 0  # counts changes of the hosts and connected switches (the probes' targets)
        for link in self.state.links:
            self.metrics.set_link_up(link.src, link.dst, False)

    def start(self):
        thread = super().start()
        hub.spawn(self._route_worker)
        hub.spawn(self._poller)
        if self.config.discover:
            hub.spawn(self._nudge_lldp)
        if self.config.probe_rate > 0:
            hub.spawn(self._prober)
            hub.spawn(self._probe_reporter)
        return thread

    def _send_event(self, ev, state):
        """Stamp packet-ins and echo replies with their arrival: the kernel's stamp where the
        connection has one (:mod:`controller.channel_stamps`), else now, in the switch's receive
        thread, before they wait in this app's event queue behind statistics replies."""
        if isinstance(ev, (ofp_event.EventOFPPacketIn, ofp_event.EventOFPEchoReply)):
            ev.msg.ndt_received = getattr(ev.msg.datapath.socket, "received_at", None) or time.monotonic()
        super()._send_event(ev, state)

    # ------------------------------------------------------------------ public API
    def apply_weights(self, weights: dict[tuple[str, str], float], who: str, predicted: dict | None = None) -> int:
        """Route by new OSPF weights ((src, dst) → weight; unnamed links keep theirs); returns the config id
        (0 when the store could not record it)."""
        with self._lock:
            current = {(lk.src, lk.dst): lk.weight for lk in self.state.links}
            for (src, dst) in weights:
                if (src, dst) not in current:
                    raise RuleError(f"weights: link {src}->{dst} is not in the topology")
            current.update(weights)
            self.state = self.state.with_weights([current[(lk.src, lk.dst)] for lk in self.state.links])
            routing = {"weights": {f"{lk.src}->{lk.dst}": lk.weight for lk in self.state.links}}
        self.request_reroute(f"weights from {who}")  # the routes follow the state whatever the store does
        payload = {f"{s}->{d}": w for (s, d), w in weights.items()}
        now = time.time()
        try:
            config_id = self.store.add_config(now, who, "weights", payload, predicted)
            self.store.add_config(now, who, ROUTING_KIND, routing)
        except StoreError as exc:  # applied all the same: only its record is missing
            LOG.error("weights from %s applied but not recorded: %s", who, exc)
            return 0
        return config_id

    def reload_state(self) -> None:
        """Re-read the state file and apply its weights (the launcher calls this on SIGHUP)."""
        path = self.config.state_path
        if path is None:
            LOG.warning("reload requested but the controller was not started from a state file")
            return
        try:
            new = NetworkState.load(path)
            if {(lk.src, lk.dst) for lk in new.links} != set(self.capacity):
                raise RuleError(f"{path}: the links differ from the running topology; only weights can change")
            resized = [f"{lk.src}->{lk.dst}" for lk in new.links if lk.capacity != self.capacity[(lk.src, lk.dst)]]
            if resized:
                LOG.warning("state reload: capacities of %s changed in %s; only weights are applied on reload, "
                            "restart the controller to change capacities", ", ".join(resized[:5])
                            + (f" and {len(resized) - 5} more" if len(resized) > 5 else ""), path)
            self.apply_weights({(lk.src, lk.dst): lk.weight for lk in new.links}, who=f"state file {path}")
        except NdtError as exc:
            LOG.error("state reload rejected, keeping the current routes: %s", exc)

    def request_reroute(self, reason: str) -> None:
        with self._lock:
            self._reroute_reasons.append(reason)
        self._reroute.set()

    def add_listener(self, listener) -> None:
        """Call ``listener(reason)`` after every route set installed, with its reasons joined by
        "; " (link, switch and host events, "weights from WHO"); the closed loop follows them."""
        self._listeners.append(listener)

    @property
    def route_version(self) -> int:
        return 0 if self._installed is None else self._installed.version

    def wait_for_routes(self, after_version: int, timeout: float) -> int:
        """Block until a route set newer than ``after_version`` is installed (or ``timeout`` s pass);
        returns the installed version."""
        with self._routes_installed:
            self._routes_installed.wait_for(lambda: self.route_version > after_version, timeout)
            return self.route_version

    def snapshot(self) -> "NetworkView":
        """A consistent copy of what the controller knows, for the API."""
        with self._lock:
            return NetworkView(
                state=self.state, ports=dict(self.wiring.ports), hosts=tuple(self._hosts.addresses()),
                macs=tuple(self._hosts.macs()), down=self._down_links(), route_version=self.route_version,
                switches_connected=len(self._datapaths), last_switch_over_s=self._last_switch_over_s)

    # ------------------------------------------------------------------ switch lifecycle
    @set_ev_cls(ofp_event.EventOFPSwitchFeatures, CONFIG_DISPATCHER)
    def _on_features(self, ev):
        dp, dpid = ev.msg.datapath, ev.msg.datapath_id
        if not isinstance(dp.socket, StampedConnection):
            dp.socket = StampedConnection(dp.socket, lambda kind, number, at: self._message_left(dpid, kind, number, at))
        ofp, parser = dp.ofproto, dp.ofproto_parser
        dp.send_msg(parser.OFPFlowMod(dp, cookie=BASE_COOKIE, cookie_mask=NDT_COOKIE_MASK, table_id=ofp.OFPTT_ALL,
                                      command=ofp.OFPFC_DELETE, out_port=ofp.OFPP_ANY, out_group=ofp.OFPG_ANY,
                                      match=parser.OFPMatch()))
        for group in leftover_group_ids():  # deleting a group that is not there is no error (OpenFlow 1.3)
            dp.send_msg(self._flow_mod(dp, FlowOp("delete_group", dpid, group=group)))
        self._send_base_rules(dp)
        self._metered_switches.discard(dpid)
        if self.config.packet_in_rate > 0:
            dp.send_msg(parser.OFPMeterFeaturesStatsRequest(dp, 0))

    @set_ev_cls(ofp_event.EventOFPMeterFeaturesStatsReply, [CONFIG_DISPATCHER, MAIN_DISPATCHER])
    def _on_meter_features(self, ev):
        """Where the switch can, a packet-in meter (replacing an earlier process's) and the base rules
        again, through it (an add with the same match and priority replaces the rule)."""
        dp = ev.msg.datapath
        features = ev.msg.body[0] if ev.msg.body else None
        max_meter, band_types, capabilities = \
            (features.max_meter, features.band_types, features.capabilities) if features else (0, 0, 0)
        plan = packet_in_meter(self.config.packet_in_rate, max_meter, band_types, capabilities, PACKET_IN_METER)
        name = self.wiring.names.get(dp.id, f"{dp.id:016x}")
        if isinstance(plan, str):
            LOG.info("switch %s gets no packet-in meter: %s (the flood budget per edge port still applies)", name, plan)
            return
        ofp, parser = dp.ofproto, dp.ofproto_parser
        dp.send_msg(parser.OFPMeterMod(dp, command=ofp.OFPMC_DELETE, meter_id=PACKET_IN_METER))
        dp.send_msg(parser.OFPMeterMod(dp, command=ofp.OFPMC_ADD, flags=plan.flags, meter_id=PACKET_IN_METER,
                                       bands=[parser.OFPMeterBandDrop(rate=plan.rate, burst_size=plan.burst)]))
        dp.send_msg(parser.OFPBarrierRequest(dp))  # the meter is in place before a rule names it
        self._send_base_rules(dp, metered=True)
        self._metered_switches.add(dp.id)
        LOG.info("switch %s: packet-in meter at %d frames/s", name, plan.rate)

    def _send_base_rules(self, dp, metered: bool = False) -> None:
        """The base rules to ``dp`` (an add replaces a rule of the same match and priority)."""
        for rule in base_rules(dp.id, metered):
            dp.send_msg(self._flow_mod(dp, FlowOp("add", dp.id, rule)))

    @set_ev_cls(ofp_event.EventOFPMeterStatsReply, MAIN_DISPATCHER)
    def _on_meter_stats(self, ev):
        name = self.wiring.names.get(ev.msg.datapath.id)
        for stat in ev.msg.body:
            if stat.meter_id == PACKET_IN_METER and stat.band_stats and name is not None:
                self.metrics.set_packet_in_meter_drops(name, stat.band_stats[0].packet_band_count)

    @set_ev_cls(ofp_event.EventOFPStateChange, [MAIN_DISPATCHER, DEAD_DISPATCHER])
    def _on_state_change(self, ev):
        dp = ev.datapath
        if dp.id is None:
            return
        name = self.wiring.names.get(dp.id)
        if ev.state == MAIN_DISPATCHER:
            if name is None:
                LOG.warning("switch with dpid %016x is not in the wiring: it gets no routes, and packets its own "
                            "rules do not match are dropped", dp.id)
                return
            with self._lock:
                self._datapaths[dp.id] = dp
                self._edge_version += 1
                self._hosts.refresh(name)
                for port_no, port in dp.ports.items():
                    self._set_port(dp.id, port_no, self._port_is_up(dp, port))
                macs, addresses = self._hosts.macs(), self._hosts.addresses()
            self._install_edge_rules(macs, addresses)
            LOG.info("switch %s (dpid %016x) connected", name, dp.id)
            self.request_reroute(f"switch {name} connected")
        elif self._datapaths.get(dp.id) is dp:
            with self._lock:
                del self._datapaths[dp.id]
                self._edge_version += 1
            self._link_rates.forget(lambda key: key[0] == name)
            with self._lock:
                self._traffic_rates.forget(lambda key: key[0] == dp.id)
            self._offered.forget(dp.id)
            self._route_stats_read.pop(dp.id, None)
            self._metered_switches.discard(dp.id)
            self._route_stats_xids = {key for key in self._route_stats_xids if key[0] != dp.id}
            LOG.warning("switch %s (dpid %016x) disconnected", name, dp.id)
            self.request_reroute(f"switch {name} disconnected")
        self.metrics.set_gauge("switches_connected", len(self._datapaths))

    @set_ev_cls(ofp_event.EventOFPPortStateChange, MAIN_DISPATCHER)
    def _on_port_change(self, ev):
        dp = ev.datapath
        port = dp.ports.get(ev.port_no)
        up = port is not None and self._port_is_up(dp, port)
        link = self.wiring.link_at(dp.id, ev.port_no)
        switch = self.wiring.names.get(dp.id)
        if link is None and not up and switch is not None:
            self._forget_hosts(lambda table: table.at(switch, ev.port_no), f"its port ({switch} port {ev.port_no}) went down")
        if link is not None and self._set_port(dp.id, ev.port_no, up):
            LOG.warning("link %s->%s %s", link[0], link[1], "up" if up else "down")
            self.request_reroute(f"link {link[0]}->{link[1]} {'up' if up else 'down'}")

    @set_ev_cls(topo_event.EventLinkAdd)
    def _on_link_add(self, ev):
        link = self._named_link(ev.link)
        if link is None:
            return
        with self._lock:
            known = link in self._discovered and self.wiring.ports.get(link) == ev.link.src.port_no
            if not known:
                self._discovered.add(link)
                self.wiring = Wiring(self.wiring.dpids, {**self.wiring.ports, link: ev.link.src.port_no})
                self._topology_changed = time.monotonic()
        if not known:
            LOG.info("discovered link %s->%s on port %d", link[0], link[1], ev.link.src.port_no)
            self.request_reroute(f"link {link[0]}->{link[1]} discovered")

    @set_ev_cls(topo_event.EventLinkDelete)
    def _on_link_delete(self, ev):
        link = self._named_link(ev.link)
        with self._lock:
            if link is None or link not in self._discovered:
                return
            self._discovered.discard(link)
            self._topology_changed = time.monotonic()
        LOG.warning("link %s->%s lost (LLDP)", link[0], link[1])
        self.request_reroute(f"link {link[0]}->{link[1]} lost")

    def _nudge_lldp(self):
        """Keep os-ken's LLDP probes periodic.

        Its topology app sleeps between probe rounds with ``Event.wait(timeout)``, a timeout os-ken's
        native hub cannot enforce, so the app probed only when a port or link changed: one probe lost
        while the neighbour switch was still connecting hid that link for good (1 run in ~6 of
        tests/test_controller_mininet.py). Setting its event every ``LLDP_NUDGE_S`` lets it probe every
        port whose period is up, as designed."""
        while True:
            time.sleep(LLDP_NUDGE_S)
            topology = app_manager.lookup_service_brick("switches")
            if topology is not None:
                topology.lldp_event.set()

    def _named_link(self, link) -> tuple[str, str] | None:
        """The state's (src, dst) for an LLDP-discovered link, or None (logged) if the state lacks it."""
        pair = (self.wiring.names.get(link.src.dpid), self.wiring.names.get(link.dst.dpid))
        if pair not in self.capacity:
            LOG.warning("discovered a link %016x:%d -> %016x that is not in the state; ignored",
                        link.src.dpid, link.src.port_no, link.dst.dpid)
            return None
        return pair

    def _arp_ready(self) -> bool:
        """False while LLDP may still turn an apparently edge (host) port into a link port."""
        if not self.config.discover:
            return True
        with self._lock:
            connected = {self.wiring.names[d] for d in self._datapaths}
            missing = [lk for lk in self.capacity if {lk[0], lk[1]} <= connected and lk not in self._discovered]
            return not missing or time.monotonic() - self._topology_changed >= DISCOVERY_SETTLE_S

    @staticmethod
    def _port_is_up(dp, port) -> bool:
        ofp = dp.ofproto
        return not (port.state & ofp.OFPPS_LINK_DOWN or port.config & ofp.OFPPC_PORT_DOWN)

    def _set_port(self, dpid: int, port_no: int, up: bool) -> bool:
        """Record a link port's state; True if it changed."""
        link = self.wiring.link_at(dpid, port_no)
        if link is None:
            return False
        with self._lock:
            was_down = link in self._ports_down
            (self._ports_down.discard if up else self._ports_down.add)(link)
        return was_down == up

    def _down_links(self) -> frozenset[tuple[str, str]]:
        """Links out of service: a port down at either end, or either switch not connected."""
        with self._lock:
            connected = {self.wiring.names[d] for d in self._datapaths}
            down = set()
            for link in self.state.links:
                pair, back = (link.src, link.dst), (link.dst, link.src)
                if pair in self._ports_down or back in self._ports_down or not {link.src, link.dst} <= connected:
                    down.add(pair)
                elif self.config.discover and pair not in self._discovered:
                    down.add(pair)
        for link in self.state.links:
            self.metrics.set_link_up(link.src, link.dst, (link.src, link.dst) not in down)
        return frozenset(down)

    # ------------------------------------------------------------------ routes
    def _route_worker(self):
        while True:
            self._reroute.wait()
            time.sleep(0.05)  # let a burst of events (several ports, several hosts) coalesce
            self._reroute.clear()
            with self._lock:
                reasons, self._reroute_reasons = self._reroute_reasons, []
            try:
                self._reroute_now("; ".join(reasons))
            except Exception:  # the worker must survive any single failed update
                LOG.exception("route update failed (%s)", "; ".join(reasons))

    def _reroute_now(self, reason: str) -> None:
        with self._lock:
            hosts = self._hosts.macs()
            state = self.state
        version = self.route_version + 1
        down = self._down_links()
        new = route_rules(state, self.wiring, hosts, version, down)
        started = time.monotonic()
        for batch in plan_update(self._installed, new):
            self._send_batch(batch)
        elapsed = time.monotonic() - started
        with self._routes_installed:
            self._installed = new
            self._last_switch_over_s = elapsed
            self._routes_installed.notify_all()
        self.path_delays.set_routes(probe_routes(state, down, sorted({h.switch for h in hosts})), time.monotonic())
        if down != self._recorded_down:  # link events for the store's history (ndt replay)
            self._store(self.store.add_config, time.time(), "controller", LINK_KIND,
                        {"down": sorted(f"{a}->{b}" for a, b in down)})
            self._recorded_down = down
        self.metrics.inc("routing_changes")
        self.metrics.set_gauge("route_version", version)
        self.metrics.set_gauge("routing_switch_over_seconds", elapsed)
        LOG.info("routes v%d installed (%d rules) in %.3f s: %s", version, len(new.rules), elapsed, reason)
        for listener in self._listeners:
            listener(reason)

    def _send_batch(self, batch: list[FlowOp]) -> None:
        """Send one batch of flow-mods, then a barrier to every switch touched; wait for all replies."""
        touched = {}
        for op in batch:
            dp = self._datapaths.get(op.dpid)
            if dp is None:
                continue
            dp.send_msg(self._flow_mod(dp, op))
            if op.kind == "add_group":
                self._group_ports[(op.dpid, op.group)] = tuple(op.ports)
            touched[op.dpid] = dp
        waits = []
        for dpid, dp in touched.items():
            barrier = dp.ofproto_parser.OFPBarrierRequest(dp)
            dp.set_xid(barrier)
            event = threading.Event()
            self._barriers[(dpid, barrier.xid)] = event
            dp.send_msg(barrier)
            waits.append((dpid, barrier.xid, event))
        deadline = time.monotonic() + BARRIER_TIMEOUT_S
        for dpid, xid, event in waits:
            if not event.wait(max(0.0, deadline - time.monotonic())):
                LOG.warning("switch %s: no barrier reply within %.1f s", self.wiring.names[dpid], BARRIER_TIMEOUT_S)
            self._barriers.pop((dpid, xid), None)

    @set_ev_cls(ofp_event.EventOFPBarrierReply, MAIN_DISPATCHER)
    def _on_barrier(self, ev):
        event = self._barriers.get((ev.msg.datapath.id, ev.msg.xid))
        if event is not None:
            event.set()

    @set_ev_cls(ofp_event.EventOFPErrorMsg, MAIN_DISPATCHER)
    def _on_error(self, ev):
        msg = ev.msg
        LOG.error("switch %s rejected a message: type %d code %d", self.wiring.names.get(msg.datapath.id),
                  msg.type, msg.code)
        ofp = msg.datapath.ofproto
        if (msg.type == ofp.OFPET_METER_MOD_FAILED and msg.code != ofp.OFPMMFC_UNKNOWN_METER  # that is the delete's
                and msg.datapath.id in self._metered_switches):
            self._metered_switches.discard(msg.datapath.id)  # its rules name a meter it refused: back to none
            self._send_base_rules(msg.datapath)
            LOG.warning("switch %s refused its packet-in meter: its rules go to the controller unmetered",
                        self.wiring.names.get(msg.datapath.id))

    def _install_edge_rules(self, macs: list[Host], addresses: list[Host]) -> None:
        """The traffic-matrix counting rules between ``macs`` (one host per MAC) and the probe rules
        for ``addresses``."""
        self._send_rules("add", counter_rules(macs, self.wiring) + probe_rules(addresses, self.wiring))

    def _send_rules(self, kind: str, rules: list[FlowRule]) -> None:
        """``kind`` (``add`` or ``delete_strict``) each rule at its switch, if connected."""
        for rule in rules:
            dp = self._datapaths.get(rule.dpid)
            if dp is not None:
                dp.send_msg(self._flow_mod(dp, FlowOp(kind, rule.dpid, rule)))

    @staticmethod
    def _flow_mod(dp, op: FlowOp):
        ofp, parser = dp.ofproto, dp.ofproto_parser
        if op.kind == "delete_cookie":
            return parser.OFPFlowMod(dp, cookie=op.cookie, cookie_mask=0xFFFF_FFFF_FFFF_FFFF, table_id=op.table,
                                     command=ofp.OFPFC_DELETE, out_port=ofp.OFPP_ANY, out_group=ofp.OFPG_ANY,
                                     match=parser.OFPMatch())
        if op.kind == "add_group":
            buckets = [parser.OFPBucket(weight=1, watch_port=ofp.OFPP_ANY, watch_group=ofp.OFPG_ANY,
                                        actions=[parser.OFPActionOutput(port)]) for port in op.ports]
            return parser.OFPGroupMod(dp, command=ofp.OFPGC_ADD, type_=ofp.OFPGT_SELECT, group_id=op.group,
                                      buckets=buckets)
        if op.kind == "delete_group":
            return parser.OFPGroupMod(dp, command=ofp.OFPGC_DELETE, type_=ofp.OFPGT_SELECT, group_id=op.group)
        rule: FlowRule = op.rule
        match = parser.OFPMatch(**dict(rule.match))
        if op.kind == "delete_strict":
            return parser.OFPFlowMod(dp, cookie=rule.cookie, table_id=rule.table, command=ofp.OFPFC_DELETE_STRICT,
                                     priority=rule.priority, out_port=ofp.OFPP_ANY, out_group=ofp.OFPG_ANY, match=match)
        meters, actions, gotos = [], [], []
        for action in rule.actions:
            if action[0] == "meter":
                meters.append(parser.OFPInstructionMeter(action[1], ofp.OFPIT_METER))
            elif action[0] == "output":
                actions.append(parser.OFPActionOutput(action[1]))
            elif action[0] == "controller":
                actions.append(parser.OFPActionOutput(ofp.OFPP_CONTROLLER, ofp.OFPCML_NO_BUFFER))
            elif action[0] == "group":
                actions.append(parser.OFPActionGroup(action[1]))
            else:
                gotos.append(parser.OFPInstructionGotoTable(action[1]))
        applied = [parser.OFPInstructionActions(ofp.OFPIT_APPLY_ACTIONS, actions)] if actions else []
        instructions = meters + applied + gotos  # the order OpenFlow executes them in
        return parser.OFPFlowMod(dp, cookie=rule.cookie, table_id=rule.table, command=ofp.OFPFC_ADD,
                                 priority=rule.priority, buffer_id=ofp.OFP_NO_BUFFER, match=match,
                                 instructions=instructions)

    # ------------------------------------------------------------------ hosts and ARP
    @set_ev_cls(ofp_event.EventOFPPacketIn, MAIN_DISPATCHER)
    def _on_packet_in(self, ev):
        msg = ev.msg
        dp = msg.datapath
        in_port = msg.match["in_port"]
        pkt = packet.Packet(msg.data)
        eth = pkt.get_protocol(ethernet.ethernet)
        if eth is None or dp.id not in self.wiring.names or is_group_mac(eth.src):
            return  # IEEE 802 sends from no group address: such a frame is forged, neither learned nor carried
        request = pkt.get_protocol(arp.arp)
        if request is not None:
            self._on_arp(dp, in_port, eth, request, msg.data)
            return
        neighbour = pkt.get_protocol(icmpv6.icmpv6)
        if neighbour is not None and neighbour.type_ in (icmpv6.ND_NEIGHBOR_SOLICIT, icmpv6.ND_NEIGHBOR_ADVERT):
            self._on_neighbour_discovery(dp, in_port, eth, pkt.get_protocol(ipv6.ipv6), neighbour, msg.data)
            return
        datagram = pkt.get_protocol(udp.udp)
        if datagram is not None and datagram.dst_port == PROBE_UDP_PORT and self._on_probe(
                dp, pkt, getattr(msg, "ndt_received", None) or time.monotonic()):
            return
        host = self._hosts.by_mac(eth.dst)
        if host is not None:
            self._packet_out(host.switch, host.port, msg.data)  # no route yet (the worker is catching up)
        elif self.wiring.is_edge_port(dp.id, in_port) and self._arp_ready() and may_flood(eth.dst):
            self._flood_from_edge(dp, in_port, msg.data)

    def _on_arp(self, dp, in_port: int, eth, message, data: bytes) -> None:
        """ARP, carried by the controller: a frame whose source is not the MAC it announces is dropped;
        the sender is learned (not from an address probe, sent from 0.0.0.0); a gratuitous one goes to
        every edge port, a request for a known address is answered, anything else goes to the host it
        is for, else to every edge port; never back out of the port it came in by."""
        if not self.wiring.is_edge_port(dp.id, in_port) or not self._arp_ready():
            return  # ARP only enters from hosts; the controller itself carries it between switches
        if eth.src != message.src_mac:
            return
        switch = self.wiring.names[dp.id]
        if message.src_ip != "0.0.0.0":
            self._learn(Host(message.src_ip, message.src_mac, switch, in_port))
        target = self._hosts.by_address(message.dst_ip)
        if message.src_ip == message.dst_ip:  # gratuitous: an announcement for every host's cache
            self._flood_from_edge(dp, in_port, data)
        elif message.opcode == arp.ARP_REQUEST and target is not None and (target.switch, target.port) != (switch, in_port):
            reply = packet.Packet()
            reply.add_protocol(ethernet.ethernet(dst=message.src_mac, src=target.mac, ethertype=ethernet.ether.ETH_TYPE_ARP))
            reply.add_protocol(arp.arp(opcode=arp.ARP_REPLY, src_mac=target.mac, src_ip=target.ip,
                                       dst_mac=message.src_mac, dst_ip=message.src_ip))
            reply.serialize()
            self._packet_out(switch, in_port, reply.data)
        else:
            self._carry(target, data, dp, in_port)

    def _on_neighbour_discovery(self, dp, in_port: int, eth, header, message, data: bytes) -> None:
        """IPv6's ARP, carried by the controller: the sender is learned (not while it tests its own
        address for duplicates, from ``::``), and the message goes to the host of its destination MAC,
        else to the host of the address it solicits, else to every edge port; the host answers itself.
        Never back out of the port it came in by."""
        if not self.wiring.is_edge_port(dp.id, in_port) or not self._arp_ready():
            return
        switch = self.wiring.names[dp.id]
        if header.src != "::":
            self._learn(Host(header.src, eth.src, switch, in_port))
        target = self._hosts.by_mac(eth.dst)
        if target is None and message.type_ == icmpv6.ND_NEIGHBOR_SOLICIT:
            target = self._hosts.by_address(message.data.dst)
        self._carry(target, data, dp, in_port)

    def _carry(self, target: Host | None, data: bytes, dp, in_port: int) -> None:
        """An ARP or neighbour-discovery frame to ``target``'s port, or without a target to every other
        edge port; never back out of the port it came in by."""
        if target is None:
            self._flood_from_edge(dp, in_port, data)
        elif (target.switch, target.port) != (self.wiring.names[dp.id], in_port):
            self._packet_out(target.switch, target.port, data)

    def _learn(self, host: Host) -> None:
        """Record ``host`` (an IPv4 or IPv6 address with its MAC and port, :class:`HostTable`): the
        counting rules and routes follow when a MAC is new or moved, the probe rules when an address is."""
        with self._lock:
            learned = self._hosts.learn(host)
            if not (learned.place or learned.address):
                return
            self._edge_version += 1
            if learned.moved_from is not None:
                old_place = (self.wiring.dpids.get(learned.moved_from[0]), learned.moved_from[1])
                self._forget_counters(lambda key: key[:2] == old_place and key[2] == host.mac)
            macs, addresses = self._hosts.macs(), self._hosts.addresses()
        self.metrics.set_gauge("hosts", len(macs))
        if learned.moved_from is not None:
            self.metrics.inc("host_moves")
            LOG.warning("host %s (%s) moved from %s port %d to %s port %d", host.ip, host.mac, *learned.moved_from,
                        host.switch, host.port)
            self._send_rules("delete_strict", edge_rules_left_behind(host, learned.moved_from, macs, addresses, self.wiring))
        else:
            LOG.info("host %s (%s) at %s port %d", host.ip, host.mac, host.switch, host.port)
        replaced = learned.replaced
        if replaced is not None and replaced.ipv4 and replaced.switch != host.switch:
            self._send_rules("delete_strict", probe_rules([replaced], self.wiring))  # the address's probe rule at its old switch
        self._install_edge_rules(macs if learned.place else [], addresses)
        if learned.place:
            self.request_reroute(f"host {host.ip} {'moved' if learned.moved_from else 'learned'}")

    def _forget_counters(self, deleted) -> None:
        """Drop the last readings of the edge counting rules ``deleted`` picks (a function of the key:
        switch dpid, in port, source MAC, destination MAC), whose rules are deleted: a rule put back
        counts from zero. Under the lock. A switch that disconnects keeps its byte counts (its rules,
        and their counts, live on in it), only its rates start again."""
        self._traffic_rates.forget(deleted)
        self._counter_bytes = {key: n for key, n in self._counter_bytes.items() if not deleted(key)}

    def _forget_hosts(self, choose, why: str) -> None:
        """Forget the MACs ``choose`` picks from the host table (a function of it, called under the lock)
        and their addresses (:meth:`HostTable.forget`): their counting and probe rules are deleted
        (under the lock, so a host learned again after it gets its rules back after the deletes), their
        routes go with the next route version; frames to them are then flooded, as to any unlearned
        MAC, until they announce themselves again."""
        with self._lock:
            gone = self._hosts.forget([host.mac for host in choose(self._hosts)])
            if not gone.macs:
                return
            self._edge_version += 1
            macs = self._hosts.macs()
            names = {host.mac for host in gone.macs}
            self._forget_counters(lambda key: key[2] in names or key[3] in names)
            self._send_rules("delete_strict", edge_rules_of_departed(gone.macs, gone.addresses, macs, self.wiring))
        self.metrics.set_gauge("hosts", len(macs))
        self.metrics.inc("hosts_forgotten", len(gone.macs))
        for host in gone.macs:
            addresses = ", ".join(a.ip for a in gone.addresses if a.mac == host.mac) or "no address left"
            LOG.warning("host %s (%s) at %s port %d forgotten: %s", host.mac, addresses, host.switch, host.port, why)
        self.request_reroute(f"host {gone.macs[0].mac} forgotten" if len(gone.macs) == 1
                             else f"{len(gone.macs)} hosts forgotten")

    def _connected_names(self) -> set[str]:
        """The names of the switches connected now."""
        return {self.wiring.names[dpid] for dpid in list(self._datapaths)}

    def _packet_out(self, switch: str, port: int, data: bytes) -> None:
        dp = self._datapaths.get(self.wiring.dpids[switch])
        if dp is None:
            return
        ofp, parser = dp.ofproto, dp.ofproto_parser
        dp.send_msg(parser.OFPPacketOut(dp, buffer_id=ofp.OFP_NO_BUFFER, in_port=ofp.OFPP_CONTROLLER,
                                        actions=[parser.OFPActionOutput(port)], data=data))

    def _flood_from_edge(self, dp, in_port: int, data: bytes) -> None:
        """A host's frame to a broadcast, multicast or unlearned MAC (ARP, DHCP, router advertisements):
        to every other edge port, within the ingress port's budget (:mod:`controller.flooding`)."""
        carried = self._flood_limiter.allow((dp.id, in_port))
        self.metrics.inc("frames_flooded" if carried else "frames_not_flooded")
        if carried:
            self._flood_edges(data, exclude=(dp.id, in_port))

    def _flood_edges(self, data: bytes, exclude: tuple[int, int]) -> None:
        for dpid, dp in list(self._datapaths.items()):
            for port_no in dp.ports:
                if port_no <= dp.ofproto.OFPP_MAX and (dpid, port_no) != exclude and self.wiring.is_edge_port(dpid, port_no):
                    self._packet_out(self.wiring.names[dpid], port_no, data)

    # ------------------------------------------------------------------ path delay probes
    def _prober(self):
        """Send one probe at a time at the schedule's exponential gaps (bounded rate: ``probe_rate``/s)."""
        schedule = ProbeSchedule(self.config.probe_rate)
        seen, targets = -1, {}
        while True:
            time.sleep(schedule.gap())
            try:
                with self._lock:
                    if self._edge_version != seen:
                        seen, targets = self._edge_version, {}
                        for host in self._hosts.addresses():
                            if host.ipv4:  # the probes are IPv4
                                targets.setdefault(host.switch, host)
                        connected = {self.wiring.names[d] for d in self._datapaths}
                        schedule.set_switches([s for s in targets if s in connected])
                pair = schedule.next()
                if pair is not None:
                    self._send_probe(pair[0], targets[pair[1]])
            except Exception:  # the prober must survive any single failed probe
                LOG.exception("sending a delay probe failed")

    def _send_probe(self, switch: str, target: Host) -> None:
        """A probe into ``switch``'s pipeline (its table 0, as if it had arrived) towards ``target``."""
        dp = self._datapaths.get(self.wiring.dpids[switch])
        if dp is None:
            return
        self._probe_count += 1
        number = self._probe_count
        frame = packet.Packet()
        frame.add_protocol(ethernet.ethernet(dst=target.mac, src=PROBE_SOURCE_MAC, ethertype=ethernet.ether.ETH_TYPE_IP))
        frame.add_protocol(ipv4.ipv4(src=PROBE_SOURCE_IP, dst=target.ip, proto=ipv4.inet.IPPROTO_UDP, ttl=64))
        frame.add_protocol(udp.udp(src_port=PROBE_UDP_PORT, dst_port=PROBE_UDP_PORT))
        frame.add_protocol(probe_payload(number, PROBE_FRAME_BYTES - 14 - 20 - 8))
        frame.serialize()
        ofp, parser = dp.ofproto, dp.ofproto_parser
        out = parser.OFPPacketOut(dp, buffer_id=ofp.OFP_NO_BUFFER, in_port=ofp.OFPP_CONTROLLER,
                                  actions=[parser.OFPActionOutput(ofp.OFPP_TABLE)], data=frame.data)
        self._probes_pending[number] = (switch, target.switch, time.monotonic())
        dp.send_msg(out)
        self.path_delays.sent += 1

    def _message_left(self, dpid: int, kind: str, number: int, at: float) -> None:
        """Probe ``number``, or echo request ``number`` (its xid) to switch ``dpid``, went to the kernel
        at ``at`` (monotonic s, in the connection's send thread)."""
        if kind == PROBE:
            self._probes_left[number] = at
        else:
            self._echo_left[(dpid, number)] = at

    def _on_probe(self, dp, pkt, received: float) -> bool:
        """Record a probe returned at ``received`` (monotonic s); False when it is not an ndt probe."""
        payload = pkt.protocols[-1]
        number = probe_id(payload) if isinstance(payload, (bytes, bytearray)) else None
        if number is None:
            return False
        sent = self._probes_pending.pop(number, None)
        left = self._probes_left.pop(number, None)
        if sent is None:
            return True
        start = sent[2] if left is None else left
        if received - start > PROBE_TIMEOUT_S:
            self.path_delays.lost += 1
        elif self.wiring.names.get(dp.id) == sent[1]:
            self.path_delays.add(ProbeSample(sent[0], sent[1], start, received))
            if sent[0] == sent[1]:
                self.metrics.observe_loopback(sent[0], received - start)
        return True

    def _probe_reporter(self):
        """Every ``PROBE_REPORT_S``: the reports that came in set beside the probes (the hosts' edge
        refitted), the interval's probe delays to the store, the recent window's to Prometheus, lost
        probes counted, echo requests (control-channel round trip) sent."""
        while True:
            time.sleep(PROBE_REPORT_S)
            try:
                self._report_probes()
            except Exception:  # the reporter must survive any single failed round
                LOG.exception("reporting the probe delays failed")

    def _report_probes(self) -> None:
        now = time.monotonic()
        reports, self._reports_compared = self.reported_delays.since(self._reports_compared)
        wall_ahead = time.time() - now  # the reports' Unix windows on the probes' monotonic clock
        self.path_delays.compare_reports([(r.start - wall_ahead, r.end - wall_ahead, r.delays) for r in reports])
        if self.path_delays.host_edge is not None:
            self.metrics.set_gauge("probe_host_edge_seconds", self.path_delays.host_edge.mean)
        for number, (_, _, sent) in list(self._probes_pending.items()):
            if now - sent > PROBE_TIMEOUT_S:
                self._probes_pending.pop(number, None)
                self.path_delays.lost += 1
        for key, sent in list(self._echo_sent.items()):
            if now - sent > PROBE_REPORT_S:  # no reply: the switch has gone or is lost
                self._echo_sent.pop(key, None)
        # send stamps of what is back or lost (or was stamped after it was counted lost), and of os-ken's own echoes
        for left, pending in ((self._probes_left, self._probes_pending), (self._echo_left, self._echo_sent)):
            for key in [k for k in list(left) if k not in pending]:
                left.pop(key, None)
        probed = self.path_delays.stats(now - PROBE_REPORT_S, now, min_samples=1)
        self._store(self.store.add_path_delays, time.time(), "probe", {pair: s.mean for pair, s in probed.items()},
                    {pair: int(s.samples) for pair, s in probed.items()})
        self.metrics.set_path_delays("probe", self.path_delays.delays(now - PROBE_METRIC_WINDOW_S, now))
        self.metrics.set_probe_counts(self.path_delays.sent, self.path_delays.lost)
        for dpid, dp in list(self._datapaths.items()):
            echo = dp.ofproto_parser.OFPEchoRequest(dp, data=b"ndt")
            dp.set_xid(echo)
            self._echo_sent[(dpid, echo.xid)] = time.monotonic()
            dp.send_msg(echo)

    @set_ev_cls(ofp_event.EventOFPEchoReply, MAIN_DISPATCHER)
    def _on_echo_reply(self, ev):
        key = (ev.msg.datapath.id, ev.msg.xid)
        sent, left = self._echo_sent.pop(key, None), self._echo_left.pop(key, None)
        name = self.wiring.names.get(ev.msg.datapath.id)
        if sent is not None and name is not None:
            received = getattr(ev.msg, "ndt_received", None) or time.monotonic()
            self.metrics.set_control_rtt(name, received - (sent if left is None else left))

    # ------------------------------------------------------------------ statistics
    def _poller(self):
        maintained = time.monotonic()
        while True:
            time.sleep(self.config.poll_interval)
            if self.config.host_age_s > 0:
                try:
                    self._forget_hosts(lambda table: table.silent(self.config.host_age_s, self._connected_names()),
                                       f"not heard from for {self.config.host_age_s:g} s")
                except Exception:  # the poller must outlive any one failure
                    LOG.exception("ageing the learned hosts failed")
            if time.monotonic() - maintained >= STORE_MAINTENANCE_S:
                maintained = time.monotonic()
                LOG.info("telemetry store maintenance: %s", self.store.maintain())
            datapaths = list(self._datapaths.values())
            self._poll_started = time.monotonic()
            self._poll_outstanding = 3 * len(datapaths)
            for dp in datapaths:
                ofp, parser = dp.ofproto, dp.ofproto_parser
                dp.send_msg(parser.OFPPortStatsRequest(dp, 0, ofp.OFPP_ANY))
                dp.send_msg(parser.OFPFlowStatsRequest(dp, 0, CLASSIFIER_TABLE, ofp.OFPP_ANY, ofp.OFPG_ANY,
                                                       COUNTER_COOKIE, COOKIE_KIND_MASK, parser.OFPMatch()))
                routes = parser.OFPFlowStatsRequest(dp, 0, ROUTE_TABLE, ofp.OFPP_ANY, ofp.OFPG_ANY, ROUTE_COOKIE,
                                                    COOKIE_KIND_MASK, parser.OFPMatch())
                dp.set_xid(routes)
                self._route_stats_xids.add((dp.id, routes.xid))
                dp.send_msg(routes)
                if dp.id in self._metered_switches:
                    dp.send_msg(parser.OFPMeterStatsRequest(dp, 0, PACKET_IN_METER))

    def _poll_reply_done(self, msg) -> None:
        if msg.flags & msg.datapath.ofproto.OFPMPF_REPLY_MORE:
            return
        self._poll_outstanding -= 1
        if self._poll_outstanding == 0:
            self.metrics.inc("stats_polls")
            self.metrics.set_gauge("stats_poll_duration_seconds", time.monotonic() - self._poll_started)

    @set_ev_cls(ofp_event.EventOFPPortStatsReply, MAIN_DISPATCHER)
    def _on_port_stats(self, ev):
        msg = ev.msg
        now = time.time()
        samples = []
        for stat in msg.body:
            link = self.wiring.link_at(msg.datapath.id, stat.port_no)
            if link is None:
                continue
            tx_bytes = supported_counter(stat.tx_bytes)
            if tx_bytes is None:
                if link not in self._unsupported_tx_bytes:
                    self._unsupported_tx_bytes.add(link)
                    LOG.warning("link %s->%s: the switch reports transmitted bytes as unsupported (all-ones) or "
                                "beyond 2**63-1: no utilization for this link", *link)
                continue
            t = stat.duration_sec + stat.duration_nsec * 1e-9
            rate = self._link_rates.update(link, t, tx_bytes)
            util = None if rate is None else 8.0 * rate / self.capacity[link]
            samples.append(LinkSample(now, link[0], link[1], tx_bytes, supported_counter(stat.tx_packets),
                                      supported_counter(stat.tx_dropped), util))
        self._store(self.store.add_link_samples, samples)
        self.metrics.update_links(samples)
        self._poll_reply_done(msg)

    @staticmethod
    def _store(write, *args) -> None:
        """One write to the telemetry store; a refused batch is logged and the polling goes on."""
        try:
            write(*args)
        except StoreError as exc:
            LOG.error("%s", exc)

    @set_ev_cls(ofp_event.EventOFPFlowStatsReply, MAIN_DISPATCHER)
    def _on_flow_stats(self, ev):
        msg = ev.msg
        now = time.time()
        key = (msg.datapath.id, msg.xid)
        parts = self._flow_parts.setdefault(key, [])
        parts.extend(msg.body)
        if msg.flags & msg.datapath.ofproto.OFPMPF_REPLY_MORE:
            return
        del self._flow_parts[key]
        if key in self._route_stats_xids:
            self._route_stats_xids.discard(key)
            self._on_route_stats(msg, parts, now)
        else:
            self._on_counter_stats(msg, parts, now)
        self._poll_reply_done(msg)

    def _on_route_stats(self, msg, parts, now: float) -> None:
        """The route rules' packet counts → the packets offered to each link's port (:mod:`telemetry.offered`)."""
        dpid = msg.datapath.id
        readings = []
        for stat in parts:
            ports: list[int] = []
            for instruction in stat.instructions:
                for action in getattr(instruction, "actions", ()):
                    if action.cls_action_type == msg.datapath.ofproto.OFPAT_OUTPUT:
                        ports.append(action.port)
                    elif action.cls_action_type == msg.datapath.ofproto.OFPAT_GROUP:
                        ports.extend(self._group_ports.get((dpid, action.group_id), ()))  # unknown: ()
            readings.append(RuleReading((stat.cookie, stat.priority, str(stat.match.get("eth_dst"))), tuple(ports),
                                        stat.duration_sec + stat.duration_nsec * 1e-9, stat.packet_count))
        read_at = time.monotonic()
        since = read_at - self._route_stats_read.get(dpid, read_at)
        self._route_stats_read[dpid] = read_at
        totals = self._offered.update(dpid, readings, self.wiring.links_at(dpid), since)
        self._store(self.store.add_offered_packets, now, totals)
        self.metrics.set_offered_packets(totals)

    def _on_counter_stats(self, msg, parts, now: float) -> None:
        """The edge counting rules' byte counts → the traffic matrix (a rule left at a port its source
        MAC has moved from counts no more), the bytes each pair of switches has sent (what each rule
        counted since its last reading, added up: a rule deleted or put back does not take the total
        down), and which MACs sent frames (a rule that counted bytes since its last reading, a rule put
        back since then included: :meth:`HostTable.heard`)."""
        counts: dict[tuple, int] = {}
        readings = []
        for stat in parts:
            src_mac, dst_mac = stat.match.get("eth_src"), stat.match.get("eth_dst")
            src, dst = self._hosts.by_mac(src_mac), self._hosts.by_mac(dst_mac)
            in_port = stat.match.get("in_port")
            if src is None or (self.wiring.dpids.get(src.switch), src.port) != (msg.datapath.id, in_port):
                continue
            key = (msg.datapath.id, in_port, src_mac, dst_mac)
            counts[key] = stat.byte_count
            if dst is None or src.switch == dst.switch:
                continue
            readings.append((key, (src.switch, dst.switch), stat.duration_sec + stat.duration_nsec * 1e-9,
                             stat.byte_count))
        with self._lock:
            added = counted_since(self._counter_bytes, counts)
            self._hosts.heard({key[2] for key, n in added.items() if n > 0})
            rates = pair_rates(readings, self._traffic_rates)
            for key, pair, _, _ in readings:
                self._traffic_totals[pair] = self._traffic_totals.get(pair, 0) + added[key]
            self.metrics.set_traffic_bytes(self._traffic_totals)
        self._store(self.store.add_traffic_matrix, now, rates)
