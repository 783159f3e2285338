"""Prometheus exporter: the controller's current view as ``ndt_*`` metrics.

Conventions: the ``ndt_`` prefix, base units (bytes, seconds), ``_total`` for counters,
ratios in 0–1. Link labels ``src``/``dst`` are the state's node names of the directed link;
path labels the source and destination switch. The exporter only mirrors values it is
given (a custom collector over an in-memory snapshot); it decides nothing.
"""

from __future__ import annotations

import threading
from itertools import accumulate

from prometheus_client.core import CollectorRegistry, CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.exposition import start_http_server

from telemetry.store import DELAY_KINDS, LinkSample
from twin.state.errors import NdtError

Pair = tuple[str, str]

LOOPBACK_BUCKETS_S = (0.0002, 0.0003, 0.0005, 0.00075, 0.001, 0.0015, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.02,
                      0.05, 0.1)  # upper bounds of the loopback histogram's buckets, s (+Inf added)


class Metrics:
    """The snapshot the collector serves; every update method is thread-safe."""

    def __init__(self):
        self._lock = threading.Lock()
        self._links: dict[Pair, LinkSample] = {}
        self._link_up: dict[Pair, bool] = {}
        self._traffic_bytes: dict[Pair, int] = {}
        self._delays: dict[str, dict[Pair, float]] = {kind: {} for kind in DELAY_KINDS}
        self._counters = {"routing_changes": 0, "optimizer_runs": 0, "stats_polls": 0, "probes_sent": 0,
                          "probes_lost": 0, "anomalies": 0, "link_anomalies": 0, "host_moves": 0, "hosts_forgotten": 0,
                          "frames_flooded": 0, "frames_not_flooded": 0}
        self._gauges: dict[str, float] = {}
        self._control_rtt: dict[str, float] = {}
        self._meter_drops: dict[str, int] = {}  # per switch: frames its packet-in meter dropped so far
        self._loopbacks: dict[str, tuple[list[int], float]] = {}  # per switch: counts per bucket (+Inf last), sum s
        self._loop_counts: dict[tuple[str, str], int] = {}
        self._suspects: dict[Pair, float] = {}
        self._load_deviations: dict[Pair, float] = {}
        self._offered: dict[Pair, int] = {}
        self._losses: dict[Pair, float] = {}

    def update_links(self, samples: list[LinkSample]) -> None:
        with self._lock:
            for s in samples:
                self._links[(s.src, s.dst)] = s

    def set_offered_packets(self, totals: dict[Pair, int]) -> None:
        """Packets the route rules sent to each link's port so far (:mod:`telemetry.offered`); merged."""
        with self._lock:
            self._offered.update(totals)

    def set_link_up(self, src: str, dst: str, up: bool) -> None:
        with self._lock:
            self._link_up[(src, dst)] = up

    def set_traffic_bytes(self, totals: dict[Pair, int]) -> None:
        """Bytes sent so far per (src switch, dst switch) pair, from the edge counting rules."""
        with self._lock:
            self._traffic_bytes = dict(totals)

    def set_path_delays(self, kind: str, delays_s: dict[Pair, float]) -> None:
        if kind not in DELAY_KINDS:
            raise ValueError(f"path delay kind {kind!r} is not one of {DELAY_KINDS}")
        with self._lock:
            self._delays[kind] = dict(delays_s)

    def set_probe_counts(self, sent: int, lost: int) -> None:
        """Delay probes sent and lost (not back within the timeout) so far."""
        with self._lock:
            self._counters["probes_sent"], self._counters["probes_lost"] = sent, lost

    def set_control_rtt(self, switch: str, seconds: float) -> None:
        """The last echo round trip between the controller and ``switch``, s."""
        with self._lock:
            self._control_rtt[switch] = seconds

    def set_packet_in_meter_drops(self, switch: str, dropped: int) -> None:
        """Frames ``switch``'s packet-in meter has dropped so far (its band's count; the switch's own)."""
        with self._lock:
            self._meter_drops[switch] = dropped

    def observe_loopback(self, switch: str, seconds: float) -> None:
        """One loopback probe's time at ``switch`` (packet-out to packet-in: the control channel both ways
        and the switch's handling), s: every delay probe through that switch carries it."""
        with self._lock:
            counts, total = self._loopbacks.get(switch) or ([0] * (len(LOOPBACK_BUCKETS_S) + 1), 0.0)
            counts[next((i for i, bound in enumerate(LOOPBACK_BUCKETS_S) if seconds <= bound),
                        len(LOOPBACK_BUCKETS_S))] += 1
            self._loopbacks[switch] = (counts, total + seconds)

    def set_anomalies(self, paths: int, suspects: dict[Pair, float], new: int,
                      load_deviations: dict[Pair, float] | None = None, new_links: int = 0,
                      losses: dict[Pair, float] | None = None) -> None:
        """Anomaly detection's last window: the paths anomalous now, the suspect links' scores
        (replacing the last window's), ``new`` paths that became anomalous in it; the links anomalous
        now with their load's deviation (share of capacity), ``new_links`` of them new; ``losses``: the
        share of its offered packets each link lost in the window (links whose counters allow it)."""
        with self._lock:
            self._gauges["anomaly_paths"] = float(paths)
            self._gauges["anomaly_links"] = float(len(load_deviations or {}))
            self._suspects = dict(suspects)
            self._load_deviations = dict(load_deviations or {})
            self._losses = dict(losses or {})
            self._counters["anomalies"] += new
            self._counters["link_anomalies"] += new_links

    def count_loop(self, what: str, label: str) -> None:
        """One more closed-loop ``trigger`` (label: its kind) or ``decision`` (label: its action)."""
        if what not in _LOOP_COUNTERS:
            raise ValueError(f"unknown loop counter {what!r} (known: {', '.join(_LOOP_COUNTERS)})")
        with self._lock:
            self._loop_counts[(what, label)] = self._loop_counts.get((what, label), 0) + 1

    def inc(self, counter: str, amount: int = 1) -> None:
        """Increment one of the counters (``routing_changes``, ``stats_polls``, ``host_moves``, …)."""
        with self._lock:
            if counter not in self._counters:
                raise ValueError(f"unknown counter {counter!r} (known: {', '.join(self._counters)})")
            self._counters[counter] += amount

    def set_gauge(self, name: str, value: float) -> None:
        """Set one of the gauges (``switches_connected``, ``hosts``, ``route_version``, …)."""
        if name not in _GAUGE_HELP:
            raise ValueError(f"unknown gauge {name!r} (known: {', '.join(_GAUGE_HELP)})")
        with self._lock:
            self._gauges[name] = float(value)

    def collect(self):
        with self._lock:
            links = dict(self._links)
            link_up = dict(self._link_up)
            traffic = dict(self._traffic_bytes)
            delays = {k: dict(v) for k, v in self._delays.items()}
            counters = dict(self._counters)
            gauges = dict(self._gauges)
            control_rtt = dict(self._control_rtt)
            meter_drops = dict(self._meter_drops)
            loopbacks = {switch: (list(counts), total) for switch, (counts, total) in self._loopbacks.items()}
            loop_counts = dict(self._loop_counts)
            suspects = dict(self._suspects)
            load_deviations = dict(self._load_deviations)
            offered = dict(self._offered)
            losses = dict(self._losses)
        pair = ["src", "dst"]
        tx_bytes = CounterMetricFamily("ndt_link_transmit_bytes", "Bytes sent on the directed link (switch port counter)", labels=pair)
        tx_packets = CounterMetricFamily("ndt_link_transmit_packets", "Packets sent on the directed link", labels=pair)
        tx_dropped = CounterMetricFamily("ndt_link_transmit_dropped_packets", "Packets dropped on transmit at the link's port", labels=pair)
        util = GaugeMetricFamily("ndt_link_utilization_ratio", "Sent bits / capacity over the last polling interval (0-1)", labels=pair)
        for (src, dst), s in sorted(links.items()):
            tx_bytes.add_metric([src, dst], s.tx_bytes)
            if s.tx_packets is not None:
                tx_packets.add_metric([src, dst], s.tx_packets)
            if s.tx_dropped is not None:
                tx_dropped.add_metric([src, dst], s.tx_dropped)
            if s.utilization is not None:
                util.add_metric([src, dst], s.utilization)
        yield from (tx_bytes, tx_packets, tx_dropped, util)
        sent_to = CounterMetricFamily("ndt_link_offered_packets", "Packets the switch's route rules sent to the "
                                      "directed link's port (1 - rate(transmit) / rate(offered): the link's loss)",
                                      labels=pair)
        for (src, dst), value in sorted(offered.items()):
            sent_to.add_metric([src, dst], value)
        yield sent_to
        up = GaugeMetricFamily("ndt_link_up", "1 if the directed link is in service, else 0", labels=pair)
        for (src, dst), value in sorted(link_up.items()):
            up.add_metric([src, dst], 1.0 if value else 0.0)
        yield up
        tm = CounterMetricFamily("ndt_traffic_bytes", "Bytes entering at src's hosts towards dst's hosts (traffic matrix)", labels=pair)
        for (src, dst), value in sorted(traffic.items()):
            tm.add_metric([src, dst], value)
        yield tm
        family = GaugeMetricFamily("ndt_path_delay_seconds", "Mean one-way path delay by kind: predicted (the twin), "
                                   "measured (reported by hosts), probe (in-band probes)", labels=["kind"] + pair)
        for kind in DELAY_KINDS:
            for (src, dst), value in sorted(delays[kind].items()):
                family.add_metric([kind, src, dst], value)
        yield family
        rtt = GaugeMetricFamily("ndt_control_channel_rtt_seconds", "Last OpenFlow echo round trip to the switch",
                                labels=["switch"])
        for switch, value in sorted(control_rtt.items()):
            rtt.add_metric([switch], value)
        yield rtt
        dropped = CounterMetricFamily("ndt_packet_in_meter_dropped", "Frames on their way to the controller (ARP, "
                                      "neighbour discovery, route misses: frames to no learned MAC) that the "
                                      "switch's packet-in meter dropped (--packet-in-rate)", labels=["switch"])
        for switch, value in sorted(meter_drops.items()):
            dropped.add_metric([switch], value)
        yield dropped
        loop = HistogramMetricFamily("ndt_probe_loopback_seconds", "Loopback probes' time at the switch: packet-out "
                                     "to packet-in, the control channel both ways and the switch's handling (every "
                                     "delay probe carries it)", labels=["switch"])
        bounds = [repr(bound) for bound in LOOPBACK_BUCKETS_S] + ["+Inf"]
        for switch, (counts, total) in sorted(loopbacks.items()):
            loop.add_metric([switch], list(zip(bounds, accumulate(counts))), total)
        yield loop
        yield _link_gauge("ndt_anomaly_suspect_score", "Anomaly detection: how likely the directed link causes the "
                          "anomalous path delays (1: crossed by every anomalous path and no normal one)", suspects)
        yield _link_gauge("ndt_anomaly_link_load_deviation_ratio", "Anomaly detection: (carried - expected load) / "
                          "capacity of the directed links whose port counters keep carrying more or less than the "
                          "measured traffic matrix puts on them", load_deviations)
        yield _link_gauge("ndt_link_loss_ratio", "Share of the packets offered to the directed link's port that it "
                          "did not transmit, over anomaly detection's last window", losses)
        for what, (label, help_text) in _LOOP_COUNTERS.items():
            family = CounterMetricFamily(f"ndt_loop_{what}s", help_text, labels=[label])
            for (name, value), count in sorted(loop_counts.items()):
                if name == what:
                    family.add_metric([value], count)
            yield family
        for name, help_text in _COUNTER_HELP.items():
            yield CounterMetricFamily(f"ndt_{name}", help_text, value=counters[name])
        for name, help_text in _GAUGE_HELP.items():
            if name in gauges:
                yield GaugeMetricFamily(f"ndt_{name}", help_text, value=gauges[name])


def _link_gauge(name: str, help_text: str, values: dict[Pair, float]) -> GaugeMetricFamily:
    """A gauge labelled by directed link (``src``, ``dst``), one sample per entry of ``values``."""
    family = GaugeMetricFamily(name, help_text, labels=["src", "dst"])
    for (src, dst), value in sorted(values.items()):
        family.add_metric([src, dst], value)
    return family


_COUNTER_HELP = {
    "routing_changes": "Route sets installed network-wide (weight pushes and link events)",
    "optimizer_runs": "Optimizer runs whose result was applied or evaluated",
    "stats_polls": "Statistics polling rounds completed",
    "probes_sent": "In-band delay probes sent",
    "probes_lost": "In-band delay probes not returned within the timeout",
    "anomalies": "Paths that became anomalous (probe delay outside the twin's band for consecutive windows)",
    "link_anomalies": "Links that became anomalous (carried load unlike the expected, or packets lost, for "
                      "consecutive windows)",
    "host_moves": "Learned MACs that showed up at another switch port (a host that moved, or one announcing "
                  "another's MAC)",
    "hosts_forgotten": "Learned MACs forgotten with their rules: their port went down, or they were not heard "
                       "from for the ageing time (--host-age)",
    "frames_flooded": "Hosts' frames to a broadcast, multicast or unlearned MAC carried to every other edge port",
    "frames_not_flooded": "Such frames dropped because their edge port had used its budget (--flood-rate)",
}
_LOOP_COUNTERS = {
    "trigger": ("trigger", "Closed-loop runs by trigger (start, traffic, topology, periodic, operator)"),
    "decision": ("action", "Closed-loop decisions by action (keep, push, propose, rollback, defer, error)"),
}
_GAUGE_HELP = {
    "switches_connected": "OpenFlow switches currently connected",
    "hosts": "Hosts learned from ARP and IPv6 neighbour discovery (distinct MACs)",
    "route_version": "Version of the installed route set",
    "routing_switch_over_seconds": "Duration of the last make-before-break route switch-over",
    "stats_poll_duration_seconds": "Time from sending the last stats requests to the last reply",
    "twin_error_ratio": "Mean absolute percentage error of predicted vs measured path delay (0-1)",
    "loop_twin_error_ratio": "Calibrated twin vs probe-measured path delay over the last loop window, MAPE (0-1)",
    "loop_paused": "1 while an operator has paused the closed loop",
    "loop_dry_run": "1 while the closed loop only proposes (pushes nothing)",
    "loop_duration_seconds": "Telemetry read to flow rules installed (or the decision to keep), last run",
    "loop_measured_delay_seconds": "Mean probe-measured path delay the last closed-loop run started from",
    "loop_predicted_delay_seconds": "Mean delay the calibrated twin predicted for the routing the last run chose",
    "loop_last_run_timestamp_seconds": "Unix time of the last closed-loop run",
    "anomaly_paths": "Paths whose probe delay stays outside the twin's band (anomaly detection's last window)",
    "anomaly_links": "Links whose carried load stays unlike the expected (anomaly detection's last window)",
    "anomaly_learning": "1 while anomaly detection gathers its reference windows (nothing judged yet)",
    "probe_host_edge_seconds": ("Mean delay the network's own reports (gRPC ReportMeasured) add to the probes' on the same "
                                "paths: the hosts' stacks and host ports, which in-band probes never cross"),
}


class Exporter:
    """Serves a :class:`Metrics` snapshot on ``http://addr:port/metrics`` from its own registry."""

    def __init__(self, metrics: Metrics):
        self.metrics = metrics
        self.registry = CollectorRegistry(auto_describe=True)
        self.registry.register(metrics)
        self._server = None

    def serve(self, port: int = 9108, addr: str = "127.0.0.1") -> int:
        """Start the HTTP server in a daemon thread; returns the bound port (``port=0`` picks one).
        An address or port that cannot be bound raises :class:`NdtError` naming it."""
        try:
            self._server, _ = start_http_server(port, addr=addr, registry=self.registry)
        except (OSError, OverflowError, ValueError) as exc:
            reason = getattr(exc, "strerror", None) or str(exc)
            raise NdtError(f"metrics endpoint {addr}:{port}: cannot listen ({reason})") from None
        return self._server.server_port

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
