"""``ndt controller``: run the OpenFlow controller (os-ken app) with telemetry and metrics."""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path

from ndt.options import ip_address, number, port
from twin.state.errors import NdtError


DEFAULT_Z = 7.0  # analysis.anomaly.DetectorSettings.z (not imported here: the CLI starts without numpy)


class OptionError(NdtError, ValueError):
    """An option of ndt controller does not fit with the others; the message names it."""


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "controller",
        help="run the OpenFlow 1.3 controller: routes from OSPF weights, statistics, metrics",
        description=(
            "Run ndt's os-ken OpenFlow 1.3 app. Switches and links come from the state file (nodes, links, "
            "capacities, OSPF weights) and the wiring file (datapath ids, by default the number ending each switch "
            "name; the output port of every link) or, with --discover, the ports from LLDP. Hosts are "
            "learned from ARP and IPv6 neighbour discovery and routed by MAC. Routes are installed make-before-break; port and flow statistics go to the "
            "SQLite telemetry store and the Prometheus endpoint; the gRPC API (controller/api/ndt_api.proto) "
            "serves topology, telemetry, twin predictions, what-if, optimization and weight changes. Send SIGHUP "
            "to re-read the state file and apply its weights."
        ),
    )
    p.add_argument("--state", type=Path, required=True, metavar="FILE", help="network state JSON (weights, capacities)")
    p.add_argument("--wiring", type=Path, metavar="FILE",
                   help='wiring JSON: {"dpids": {"s1": 1}, "ports": {"s1->s2": 2}} (ports optional with --discover)')
    p.add_argument("--discover", action="store_true",
                   help="discover link ports with LLDP instead of reading them from the wiring file")
    p.add_argument("--ofp-host", type=ip_address, default="127.0.0.1",
                   help="OpenFlow listen address (default: 127.0.0.1)")
    p.add_argument("--ofp-port", type=port(), default=6653, help="OpenFlow listen port (default: 6653)")
    p.add_argument("--ofp-tls-cert", type=Path, metavar="FILE",
                   help="PEM certificate: serve OpenFlow over TLS only (switches connect to ssl:HOST:PORT)")
    p.add_argument("--ofp-tls-key", type=Path, metavar="FILE", help="PEM private key of --ofp-tls-cert")
    p.add_argument("--ofp-tls-ca", type=Path, metavar="FILE",
                   help="PEM CA certificate: switches must present a certificate it signed")
    p.add_argument("--metrics-addr", type=ip_address, default="127.0.0.1",
                   help="Prometheus endpoint address (default: 127.0.0.1)")
    p.add_argument("--metrics-port", type=port(allow_zero=True), default=9108,
                   help="Prometheus endpoint port (default: 9108)")
    p.add_argument("--grpc", default="127.0.0.1:50051", metavar="ADDR",
                   help="gRPC API address host:port, or 'off' (default: 127.0.0.1:50051); with the environment "
                        "variable NDT_API_TOKEN set, clients must send 'authorization: Bearer <token>'. Beyond "
                        "loopback the API needs the token and TLS (docs/operations.md)")
    p.add_argument("--tls-cert", type=Path, metavar="FILE", help="PEM certificate: serve the gRPC API over TLS")
    p.add_argument("--tls-key", type=Path, metavar="FILE", help="PEM private key of --tls-cert")
    p.add_argument("--tls-client-ca", type=Path, metavar="FILE",
                   help="PEM CA certificate: clients must present a certificate it signed (mutual TLS)")
    p.add_argument("--insecure", action="store_true",
                   help="serve the API beyond loopback without a token or TLS (anyone who reaches it can change "
                        "the routing; logged as a warning)")
    p.add_argument("--max-predict-flows", type=number(1, 10**7, integer=True), default=20_000, metavar="N",
                   help="largest state (flows) a gRPC Predict accepts (default: 20000)")
    p.add_argument("--store", type=Path, default=Path("ndt-telemetry.db"), metavar="FILE",
                   help="SQLite telemetry store (default: ndt-telemetry.db)")
    p.add_argument("--retention-days", type=number(0.01, 3650, unit=" days"), default=7.0, metavar="D",
                   help="the store drops rows older than this, except the routing in place (default: 7)")
    p.add_argument("--raw-hours", type=number(0.02, 87600, unit=" h"), default=1.0, metavar="H",
                   help="rows older than this are merged into 1-minute means (counters: the minute's last value); "
                        "at most --retention-days (default: 1)")
    p.add_argument("--poll-interval", type=number(0.05, 3600, unit=" s"), default=1.0, metavar="S",
                   help="statistics interval, s (default: 1)")
    p.add_argument("--probe-rate", type=number(0, 1000, unit=" probes/s"), default=20.0, metavar="N",
                   help="in-band path-delay probes per second, network-wide, 64-byte frames (0: none; default: 20)")
    p.add_argument("--flood-rate", type=number(0, 100000, unit=" frames/s"), default=100.0, metavar="N",
                   help="hosts' frames to a broadcast, multicast or unknown MAC (ARP and neighbour discovery for "
                        "addresses not yet learned, DHCP, IPv6 router advertisements) the controller carries to every "
                        "other edge port, per second and edge port; beyond that they are dropped and counted (0: drop "
                        "them all, so hosts learn of each other only through ARP answers for announced addresses; "
                        "default: 100)")
    p.add_argument("--packet-in-rate", type=number(0, 1_000_000, unit=" frames/s"), default=1000.0, metavar="N",
                   help="each switch's OpenFlow meter on what its rules send to the controller (route misses, ARP and "
                        "neighbour discovery; not the delay probes), frames per second with a burst of one second's: "
                        "a host flooding the network is held back by its switch instead of the controller's CPU; the "
                        "frames dropped are ndt_packet_in_meter_dropped_total{switch}. Switches without meters get none "
                        "(logged). 0: no meter (default: 1000)")
    p.add_argument("--host-age", type=number(0, 86400 * 365, unit=" s"), default=300.0, metavar="S",
                   help="forget a learned MAC, its addresses and its rules when it has not been heard from (no ARP or "
                        "neighbour discovery, no frame counted at its port) for S seconds, as an Ethernet bridge ages its "
                        "table; a MAC whose port goes down is forgotten at once. Frames to a forgotten MAC are flooded, "
                        "within --flood-rate, until it announces itself again (0: never age; default: 300, IEEE 802.1D's)")
    loop = p.add_argument_group(
        "closed loop", "With --intent the controller runs the closed loop itself: from the traffic matrix and the probes' "
        "path delays it re-optimizes the OSPF weights for the intent (NES scored by the twin, whose correction is "
        "refitted from the probes as they arrive), validates, pushes the winner as a consistent update, verifies "
        "with the probes and rolls back if worse. gRPC GetLoopStatus / ControlLoop / StreamLoopDecisions report it "
        "and pause, resume or make it propose-only.")
    loop.add_argument("--intent", type=Path, metavar="FILE", help="intent YAML (optimizer/intent.py): run the loop for it")
    loop.add_argument("--validate", choices=["twin", "sandbox"], default="twin",
                      help="rank candidates by the calibrated twin, or measure them in a Mininet sandbox built from "
                           "the state (root, Mininet on this machine) (default: twin)")
    loop.add_argument("--dry-run", action="store_true", help="propose only: decide and report, push nothing")
    loop.add_argument("--loop-window", type=number(5, 3600, unit=" s"), default=20.0, metavar="S",
                      help="telemetry and probes each run reads, s (default: 20)")
    loop.add_argument("--verify-s", type=number(5, 3600, unit=" s"), default=20.0, metavar="S",
                      help="probes measured after a push before it is kept or rolled back, s (default: 20)")
    loop.add_argument("--period", type=number(10, 86400, unit=" s"), default=600.0, metavar="S",
                      help="run at least this often, s (default: 600)")
    loop.add_argument("--hold-down", type=number(0, 86400, unit=" s"), default=60.0, metavar="S",
                      help="after a push no run (except an operator's) for this long, s (default: 60)")
    loop.add_argument("--shift-threshold", type=number(0, 10, open_low=True), default=0.15, metavar="R",
                      help="relative change of the traffic matrix that triggers a run (default: 0.15)")
    loop.add_argument("--candidates", type=number(1, 20, integer=True), default=2,
                      help="routings validated besides the current one (default: 2)")
    loop.add_argument("--model", default=None, help="twin model (default: the newest in twin.models.registry)")
    loop.add_argument("--calibration", type=Path, default=None, metavar="FILE",
                      help="prior correction (default: data/calibration-<model>.json, else the shipped one); the loop "
                           "refits it from this network's probes")
    anomaly = p.add_argument_group(
        "anomaly detection", "Flag the paths whose probe-measured delay stays outside the calibrated twin's band for "
        "consecutive windows, the links whose port counters carry unlike the traffic matrix or lose packets their "
        "route rules sent them, and rank the links most likely at fault (gRPC ListAnomalies, ndt_anomaly_* metrics; "
        "docs/operations.md). On with --intent; --anomaly runs it without the loop (the twin and its online "
        "calibration only). Needs the probes.")
    anomaly.add_argument("--anomaly", action="store_true", help="detect anomalies (without --intent: only that)")
    anomaly.add_argument("--anomaly-window", type=number(2, 3600, unit=" s"), default=10.0, metavar="S",
                         help="probes judged per window, s (default: 10)")
    anomaly.add_argument("--anomaly-persistence", type=number(1, 100, integer=True), default=3, metavar="K",
                         help="consecutive windows outside the band before a path is anomalous (default: 3)")
    anomaly.add_argument("--anomaly-corroborated", type=number(1, 100, integer=True), default=2, metavar="J",
                         help="windows that suffice instead when another path sharing one of its links has been "
                              "outside on the same side as long, from within a window of the same start: a link's "
                              "fault moves every path across it (default: 2)")
    anomaly.add_argument("--anomaly-contradicted", type=number(0, 100, integer=True), default=1, metavar="N",
                         help="windows a path needs beyond K when each of its links is crossed by another path "
                              "measured inside its band in the same window: a cause on one of its links would have "
                              "moved that path too (default: 1; 0 turns it off)")
    anomaly.add_argument("--anomaly-z", type=number(1, 20), default=DEFAULT_Z, metavar="Z",
                         help=f"the band's half-width in combined standard errors (default: {DEFAULT_Z:g})")
    anomaly.add_argument("--anomaly-log", type=Path, metavar="FILE",
                         help="append every judged window's observations to FILE as JSON lines (audits, offline "
                              "tuning; about 1 MB per hour and 10 paths)")
    p.add_argument("--check", action="store_true",
                   help="check the state, wiring, intent, model and TLS files and that the ports are free, print what "
                        "would run, and exit (exit 0: it would start)")
    p.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from controller.api.server import ApiServer
    from controller.app import ControllerConfig
    from controller.launcher import run as run_controller
    from controller.topology import load_wiring
    from telemetry.exporter import Metrics
    from telemetry.store import TelemetryStore
    from twin.state.model import NetworkState

    logging.basicConfig(level=args.log_level, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    if (args.tls_cert is None) != (args.tls_key is None):
        raise OptionError("--tls-cert and --tls-key go together")
    for flag, path in (("--tls-cert", args.tls_cert), ("--tls-key", args.tls_key), ("--tls-client-ca", args.tls_client_ca)):
        if path is not None and not path.is_file():
            raise OptionError(f"{flag} {path}: no such file")
    ofp_tls = _openflow_tls(args)
    if args.raw_hours * 3600.0 > args.retention_days * 86400.0:
        raise OptionError(f"--raw-hours {args.raw_hours:g} is longer than --retention-days {args.retention_days:g}")
    if 0 < args.host_age < 3 * args.poll_interval:
        raise OptionError(f"--host-age {args.host_age:g} is shorter than three statistics polls (--poll-interval "
                          f"{args.poll_interval:g}): hosts sending all the while would be forgotten between readings")
    state = NetworkState.load(args.state)
    wiring = load_wiring(args.wiring, state, discover=args.discover)
    api = None if args.grpc == "off" else ApiServer(
        args.grpc, os.environ.get("NDT_API_TOKEN") or None, args.tls_cert, args.tls_key, args.tls_client_ca,
        args.insecure)
    loop_factory = _loop_factory(args, state) if args.intent or args.anomaly else None
    _warn_if_probes_are_too_few(args, len(state.nodes))
    if args.check:
        return _report_check(args, state, wiring, api, ofp_tls)
    store = TelemetryStore(args.store, args.retention_days * 86400.0, args.raw_hours * 3600.0)
    config = ControllerConfig(state=state, wiring=wiring, store=store, metrics=Metrics(),
                              poll_interval=args.poll_interval, state_path=args.state, discover=args.discover,
                              probe_rate=args.probe_rate, flood_rate=args.flood_rate,
                              packet_in_rate=args.packet_in_rate, host_age_s=args.host_age,
                              probe_history_s=max(120.0, 2 * args.loop_window, 2 * args.verify_s + 10.0,
                                                  2 * args.anomaly_window))
    run_controller(config, args.ofp_host, args.ofp_port, args.metrics_addr, args.metrics_port, api,
                   args.max_predict_flows, loop_factory, ofp_tls)
    return 0


def _warn_if_probes_are_too_few(args: argparse.Namespace, switches: int) -> None:
    """Say so when the probe rate leaves paths without a delay in the loop's or anomaly detection's window."""
    from controller.probes import MIN_PATH_PROBES, rate_needed

    windows = []
    if args.intent:
        windows.append((f"the loop's {args.loop_window:g}-s window", args.loop_window))
    if args.intent or args.anomaly:
        windows.append((f"anomaly detection's {args.anomaly_window:g}-s window", args.anomaly_window))
    if not windows or args.probe_rate == 0:
        return
    what, window = min(windows, key=lambda w: w[1])
    needed = rate_needed(switches, window)
    if args.probe_rate < needed:
        logging.getLogger("ndt.controller").warning(
            "--probe-rate %g is too low for %d switches: %s needs about %.2g probes/s to give each of the %d pairs "
            "%d probes (with hosts at every switch; docs/deployment.md, 'How many probes')",
            args.probe_rate, switches, what, needed, switches * (switches - 1), MIN_PATH_PROBES)


def _openflow_tls(args: argparse.Namespace):
    """The OpenFlow channel's TLS files, checked; None without --ofp-tls-cert."""
    from controller.launcher import OpenFlowTls

    if (args.ofp_tls_cert is None) != (args.ofp_tls_key is None):
        raise OptionError("--ofp-tls-cert and --ofp-tls-key go together")
    if args.ofp_tls_ca is not None and args.ofp_tls_cert is None:
        raise OptionError("--ofp-tls-ca needs --ofp-tls-cert and --ofp-tls-key (switch certificates are checked over TLS)")
    if args.ofp_tls_cert is None:
        return None
    return OpenFlowTls(args.ofp_tls_cert, args.ofp_tls_key, args.ofp_tls_ca).check()


def _report_check(args: argparse.Namespace, state, wiring, api, ofp_tls) -> int:
    """``--check``: the listening ports bound and released, then what the controller would run, on stdout."""
    from controller.launcher import listening_socket
    from telemetry.store import check_store_file

    with listening_socket(args.ofp_host, args.ofp_port), \
            listening_socket(args.metrics_addr, args.metrics_port, "Prometheus"):
        pass  # both at once: one port given twice is refused
    if api is not None:
        api.server.stop(None)
    if args.store.exists():
        check_store_file(args.store)  # read only: a damaged store is refused here as it would be at start
    elif not args.store.resolve().parent.is_dir():
        raise OptionError(f"--store {args.store}: no such directory {args.store.resolve().parent}")
    ports = "discovered by LLDP" if args.discover else f"{len(wiring.ports)} link ports from {args.wiring}"
    dpids = ", ".join(f"{name}={dpid:#x}" for name, dpid in sorted(wiring.dpids.items(), key=lambda kv: kv[1])[:8])
    more = f" and {len(wiring.dpids) - 8} more" if len(wiring.dpids) > 8 else ""
    what = ("the closed loop for " + str(args.intent) + (" (dry run)" if args.dry_run else "")) if args.intent else \
        ("anomaly detection" if args.anomaly else "no loop (routing, telemetry, API)")
    print(f"state {args.state}: {len(state.nodes)} switches, {len(state.links)} links, {len(state.flows)} flows")
    print(f"wiring: datapath ids {dpids}{more}; {ports}")
    openflow_tls = "" if ofp_tls is None else ofp_tls.describe()
    print(f"OpenFlow 1.3 on {args.ofp_host}:{args.ofp_port}{openflow_tls}; Prometheus on {args.metrics_addr}:"
          f"{args.metrics_port}; gRPC {'off' if api is None else args.grpc + ''.join(api.describe())}; store {args.store}")
    print(f"runs {what}; probes {args.probe_rate:g}/s; ready to start")
    return 0


def _loop_factory(args: argparse.Namespace, state):
    """What builds the closed loop (or, with --anomaly and no --intent, the service that only calibrates
    and detects anomalies) once the app exists; the intent, model and calibration are checked now."""
    from analysis.anomaly import DetectorSettings
    from controller.loop.service import LoopService, ServiceSettings
    from optimizer.intent import load_intent
    from twin.calibration.correction import calibrated_twin
    from twin.calibration.correction import load as load_calibration
    from twin.models.intervals import load_intervals
    from twin.models.registry import PREDICTORS
    from twin.state.model import Flow

    if args.probe_rate == 0:
        raise OptionError(f"{'--intent' if args.intent else '--anomaly'} needs the probes (--probe-rate above 0): "
                          "the loop verifies pushes with them and anomaly detection judges them")
    if args.anomaly_log is not None and not args.anomaly_log.parent.is_dir():
        raise OptionError(f"--anomaly-log {args.anomaly_log}: no such directory {args.anomaly_log.parent}")
    intent = None
    if args.intent:
        intent = load_intent(args.intent)
        intent.check_against(state if state.flows else state.with_flows(
            Flow(a, b, rate=1.0) for a in state.nodes for b in state.nodes if a != b))
    model = args.model or PREDICTORS[-1]
    if model not in PREDICTORS:
        raise OptionError(f"--model {model!r}: not one of {', '.join(PREDICTORS)}")
    if args.calibration is not None:
        load_calibration(args.calibration)
    if intent is not None and intent.heads:  # refused now, not at every run of the loop
        from optimizer.search import check_heads
        from twin.models.registry import get_predictor

        try:
            check_heads(get_predictor(model), intent)
        except NdtError as exc:
            raise OptionError(f"--intent {args.intent} with --model {model}: {exc}") from None

    def twin():
        calibrated = calibrated_twin(model, args.calibration, state.name, logging.getLogger("ndt.loop").warning)
        return calibrated.predictor, calibrated.correction

    sandbox = None
    if args.validate == "sandbox" and intent is not None:
        from controller.loop.emulated import EmulatedSandbox

        sandbox = EmulatedSandbox("v", "controller-sandbox")
    intervals = load_intervals(model)
    settings = ServiceSettings(window_s=args.loop_window, verify_s=args.verify_s, period_s=args.period,
                               hold_down_s=args.hold_down, shift_threshold=args.shift_threshold,
                               candidates=args.candidates, validate=args.validate, dry_run=args.dry_run,
                               optimize=intent is not None, anomaly=DetectorSettings(
                                   z=args.anomaly_z, persistence=args.anomaly_persistence,
                                   corroborated_persistence=args.anomaly_corroborated,
                                   contradicted_extra=args.anomaly_contradicted),
                               anomaly_window_s=args.anomaly_window, anomaly_log=args.anomaly_log, **({"intent": intent} if intent else {}))
    return lambda app: LoopService(app, app.store, app.metrics, twin, settings, sandbox, intervals=intervals)
