"""Start the os-ken app without an os-ken CLI (os-ken 4.x ships none): AppManager by hand.

Signals: SIGHUP re-reads the state file and applies its weights; SIGTERM/SIGINT close the
store and the exporter and exit (os-ken's native-hub threads cannot be joined cleanly).
Python runs signal handlers in the main thread only, and only while it executes bytecode: a
main thread blocked in a join would miss a signal that the kernel delivered to another
thread, so it wakes every ``SIGNAL_POLL_S`` s instead.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from controller.api.server import ApiServer, NdtService
from controller.app import ControllerConfig, NdtController
from controller.hub_errors import log_refused_connections, surface_hub_errors
from controller.tls_files import TlsOptions, check_tls_files
from telemetry.exporter import Exporter
from twin.state.errors import NdtError

LOG = logging.getLogger("ndt.controller")
SIGNAL_POLL_S = 0.2


def run(config: ControllerConfig, ofp_host: str = "127.0.0.1", ofp_port: int = 6653,
        metrics_addr: str = "127.0.0.1", metrics_port: int = 9108, api: ApiServer | None = None,
        max_predict_flows: int = 20_000, loop_factory=None, ofp_tls: OpenFlowTls | None = None) -> None:
    """Serve OpenFlow on ofp_host:ofp_port (over TLS with ``ofp_tls``), metrics on metrics_addr:metrics_port
    and the gRPC API on ``api`` (bound beforehand, so a bad address or certificate stops the controller
    before it starts; None: no API) until a signal. ``loop_factory(app)``: the closed loop to run beside
    the app (:class:`controller.loop.service.LoopService`), or None."""
    import os_ken.controller.controller  # noqa: F401  registers the --ofp-* options parsed below
    import os_ken.topology.switches  # noqa: F401  registers --observe-links (LLDP discovery)
    from os_ken import cfg
    from os_ken.base.app_manager import AppManager

    check_can_listen(ofp_host, ofp_port)
    surface_hub_errors()
    if ofp_tls is not None:
        log_refused_connections()
    args = ["--ofp-listen-host", ofp_host, "--ofp-tcp-listen-port", str(ofp_port)]
    if ofp_tls is not None:  # os-ken then serves TLS only, on its SSL port
        args += ["--ofp-ssl-listen-port", str(ofp_port), "--ctl-cert", str(ofp_tls.cert), "--ctl-privkey",
                 str(ofp_tls.key)] + (["--ca-certs", str(ofp_tls.switch_ca)] if ofp_tls.switch_ca else [])
    if config.discover:
        args.append("--observe-links")
    cfg.CONF(args=args, project="os_ken")
    exporter = Exporter(config.metrics)
    bound = exporter.serve(metrics_port, metrics_addr)
    manager = AppManager.get_instance()
    manager.load_apps([NdtController.__module__] + (["os_ken.topology.switches"] if config.discover else []))
    contexts = manager.create_contexts()
    manager.instantiate_apps(ndt_config=config, **contexts)
    app = next(a for a in manager.applications.values() if isinstance(a, NdtController))
    LOG.info("OpenFlow 1.3 on %s:%d%s, metrics on http://%s:%d/metrics, %d switches in the state",
             ofp_host, ofp_port, "" if ofp_tls is None else ofp_tls.describe(), metrics_addr, bound,
             len(config.state.nodes))
    loop = None
    if loop_factory is not None:
        loop = loop_factory(app)
        threading.Thread(target=loop.serve, name="ndt-loop", daemon=True).start()
        LOG.info("closed loop running: validation by %s%s", loop.settings.validate,
                 ", dry run (proposes only)" if loop.settings.dry_run else "")
    if api is not None:
        api.start(NdtService(app, config.store, config.metrics, max_flows=max_predict_flows, loop=loop))
        LOG.info("gRPC API on %s (port %d)%s", api.address, api.port, "".join(api.describe()))

    def stop(signum, _frame):
        LOG.info("signal %d: stopping", signum)
        exporter.stop()
        config.store.close()
        logging.shutdown()
        sys.stdout.flush()
        os._exit(0)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGHUP, lambda _signum, _frame: app.reload_state())
    while True:
        time.sleep(SIGNAL_POLL_S)


@dataclass(frozen=True)
class OpenFlowTls:
    """The OpenFlow channel over TLS: the controller's PEM certificate and key, and the CA whose
    certificates switches must present (None: any switch may connect, encrypted)."""

    cert: Path
    key: Path
    switch_ca: Path | None = None

    def check(self) -> "OpenFlowTls":
        """Refuse files that are missing, not PEM, or a key that does not match the certificate."""
        check_tls_files(self.cert, self.key, self.switch_ca, TlsOptions("--ofp-tls-cert", "--ofp-tls-key", "--ofp-tls-ca"))
        return self

    def describe(self) -> str:
        return " over TLS" + (", switch certificates required" if self.switch_ca else "")


def listening_socket(host: str, port: int, what: str = "OpenFlow") -> socket.socket:
    """A socket listening on host:port, for the caller to close: proof that the address is free
    (``what`` names the service in the refusal)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    probe = socket.socket(family, socket.SOCK_STREAM)
    try:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        probe.bind((host, port))
        probe.listen()
    except (OSError, OverflowError) as exc:
        probe.close()
        raise NdtError(f"{what} {host}:{port}: cannot listen ({getattr(exc, 'strerror', None) or exc})") from None
    return probe


def check_can_listen(host: str, port: int, what: str = "OpenFlow") -> None:
    """Refuse an address this host cannot listen on, before anything starts."""
    listening_socket(host, port, what).close()
