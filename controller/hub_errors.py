"""Failures that os-ken 4.x's native hub hides, made visible. Called once, before the apps start.

The native hub (os-ken's default since it dropped eventlet) defines ``hub.TaskExit`` as
``Exception``, its word for "a task ended normally". So every exception is taken for a normal end:

- an exception in any event handler ends that app's event loop without a word (the app loop
  re-raises ``hub.TaskExit`` to leave), and the controller keeps running but stops handling
  packet-ins, statistics and port changes;
- an exception that ends a connection's thread is dropped, so a switch refused in its TLS
  handshake (a certificate from another CA, a plain-TCP switch at the TLS port) leaves no trace.

With a ``TaskExit`` that nothing raises, os-ken logs a handler's exception and goes on, and logs a
thread's; a connection that fails before it becomes a datapath is logged as one warning.
"""

from __future__ import annotations

import logging
import ssl
import threading

LOG = logging.getLogger("ndt.controller")
TLS_HANDSHAKE_TIMEOUT_S = 10.0  # a peer that connects and says nothing holds a thread no longer (os-ken then sets its own)


class HubTaskExit(Exception):
    """The hub's "task ended normally": nothing in os-ken's native hub raises it."""


def surface_hub_errors() -> None:
    """Give os-ken's native hub a ``TaskExit`` of its own (a no-op where it already has one)."""
    from os_ken.lib import hub

    if hub.TaskExit is Exception:
        hub.TaskExit = HubTaskExit


def log_refused_connections() -> None:
    """Have os-ken's OpenFlow server log a connection that fails before OpenFlow (its TLS handshake)."""
    from os_ken.controller import controller
    from os_ken.lib import hub

    if controller.StreamServer is hub.StreamServer:
        controller.StreamServer = _OpenFlowServer


_connection = threading.local()  # each connection runs in a thread of its own (native hub)


class _OpenFlowServer:
    """os-ken's ``StreamServer``; a connection whose TLS handshake fails is logged and closed."""

    def __init__(self, listen_info, handle=None, backlog=None, spawn="default", **ssl_args):
        from os_ken.lib import hub

        def datapath(sock, address):
            _connection.opened = True
            handle(sock, address)

        self._server = hub.StreamServer(listen_info, datapath, backlog, spawn, **ssl_args)
        session = self._server.handle

        def logged(sock, address):
            _connection.opened = False
            sock.settimeout(TLS_HANDSHAKE_TIMEOUT_S)
            try:
                session(sock, address)
            except (ssl.SSLError, OSError) as exc:
                if _connection.opened:
                    raise
                LOG.warning("OpenFlow connection from %s:%d refused in its TLS handshake (%s): a switch needs a "
                            "certificate from --ofp-tls-ca and a controller target ssl:HOST:PORT",
                            address[0], address[1], getattr(exc, "reason", None) or exc)

        self._server.handle = logged

    def serve_forever(self):
        self._server.serve_forever()
