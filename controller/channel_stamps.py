"""When a switch connection's bytes really leave and arrive, for the delay probes and echoes.

A probe's time measured in the controller's threads holds the controller's own lag: a packet-out
waits in os-ken's send queue for the connection's send thread, and a packet-in waits for its
receive thread to be scheduled. On a busy 2-core machine that lag spread every probe by about a
millisecond either way (docs/results/2026-12-07-wire-stamps.md), more than Open vSwitch's own
handling. :class:`StampedConnection` wraps the connection's socket so that

- a packet-out carrying a probe, and an echo request, are stamped in the send thread just before
  the bytes go to the kernel (``on_sent(kind, probe id or xid, monotonic s)``, kind
  :data:`PROBE` or :data:`ECHO`), and
- every read carries the kernel's receive timestamp (``SO_TIMESTAMPNS``, Linux), kept as
  :attr:`StampedConnection.received_at` in the ``time.monotonic()`` clock. The kernel turns
  stamping on shortly after the first socket asks for it, so a connection's first messages may
  come without one (then the controller stamps them as it reads them).

os-ken reads one OpenFlow header, then the rest of that message, and hands the message to the apps
in the same thread, so the stamp of the last read is the message's arrival, or a little later: a
segment that waited in the kernel may have taken in the next one, and with it its later stamp. A
TLS connection keeps its reads stamped by the controller (``recvmsg`` cannot read through TLS);
its sends are stamped.
"""

from __future__ import annotations

import logging
import socket
import ssl
import struct
import time
from collections.abc import Callable

from controller.probes import probe_ids_in

LOG = logging.getLogger("ndt.controller")

SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)  # Linux; Python's socket module does not name it
OFPT_ECHO_REQUEST = 2  # OpenFlow message type (every version)
PROBE, ECHO = "probe", "echo"
CLOCK_BRACKET_S = 50e-6  # a realtime − monotonic reading taken over a longer span (a thread switch) is not used
_TIMESPEC = struct.Struct("@qq")  # struct timespec: seconds, nanoseconds
_XID = struct.Struct("!I")


class StampedConnection:
    """A switch connection's socket with kernel receive stamps and send stamps of probes and echo
    requests; every other attribute is the socket's own."""

    def __init__(self, sock: socket.socket, on_sent: Callable[[str, int, float], None]):
        self._socket = sock
        self._on_sent = on_sent
        self._realtime_minus_monotonic: float | None = None
        self.received_at: float | None = None
        self.kernel_stamps = False
        if not isinstance(sock, ssl.SSLSocket):
            try:
                sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
                self.kernel_stamps = True
            except OSError as exc:  # not Linux: the controller stamps reads, as over TLS
                LOG.warning("no kernel receive stamps on the switch connection (%s): probes are stamped as read", exc)

    def recv(self, size: int) -> bytes:
        if not self.kernel_stamps:
            return self._socket.recv(size)
        data, ancillary, _flags, _address = self._socket.recvmsg(size, socket.CMSG_SPACE(_TIMESPEC.size))
        self.received_at = kernel_stamp(ancillary, self._clock_offset())
        return data

    def sendall(self, data: bytes) -> None:
        try:
            sent = [(PROBE, probe_id) for probe_id in probe_ids_in(data)]
            if len(data) >= 8 and data[1] == OFPT_ECHO_REQUEST:
                sent.append((ECHO, _XID.unpack_from(data, 4)[0]))
            stamp = time.monotonic()
            for kind, number in sent:
                self._on_sent(kind, number, stamp)
        except Exception:  # a failed stamp must not end os-ken's send loop, and with it the connection
            LOG.exception("stamping a message to a switch failed")
        self._socket.sendall(data)

    def _clock_offset(self) -> float:
        """realtime − monotonic (s), read between two monotonic readings; a reading interrupted for
        longer than :data:`CLOCK_BRACKET_S` keeps the last good one (it would add the interruption)."""
        before = time.monotonic()
        realtime = time.time()
        after = time.monotonic()
        if self._realtime_minus_monotonic is None or after - before <= CLOCK_BRACKET_S:
            self._realtime_minus_monotonic = realtime - 0.5 * (before + after)
        return self._realtime_minus_monotonic

    def __getattr__(self, name: str):
        return getattr(self._socket, name)


def kernel_stamp(ancillary: list[tuple[int, int, bytes]], realtime_minus_monotonic: float) -> float | None:
    """The ``SO_TIMESTAMPNS`` receive stamp among ``recvmsg``'s ancillary data, moved to the
    ``time.monotonic()`` clock (s), or None when there is none."""
    for level, kind, value in ancillary:
        if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS and len(value) >= _TIMESPEC.size:
            seconds, nanoseconds = _TIMESPEC.unpack_from(value)
            if seconds or nanoseconds:  # zero: the segment came before the kernel turned stamping on
                return seconds + nanoseconds * 1e-9 - realtime_minus_monotonic
    return None
