"""When a switch connection's bytes really leave and arrive, for the delay probes.

A probe's time measured in the controller's threads holds the controller's own lag: a packet-out
waits in os-ken's send queue for the connection's send thread, and a packet-in waits for its
receive thread to be scheduled. On a busy 2-core machine that lag spread every probe by about a
millisecond either way (docs/results/2026-12-07-wire-stamps.md), more than Open vSwitch's own
handling. :class:`StampedConnection` wraps the connection's socket so that

- a packet-out carrying a probe is stamped in the send thread just before the bytes go to the
  kernel (``on_probe_sent(probe_id, monotonic s)``), and
- every read carries the kernel's receive timestamp (``SO_TIMESTAMPNS``, Linux; on TCP the
  arrival of the last segment read), kept as :attr:`StampedConnection.received_at` in the
  ``time.monotonic()`` clock. The kernel turns stamping on shortly after the first socket asks
  for it, so a connection's first messages may come without one (then they are stamped as before).

os-ken reads one OpenFlow header, then the rest of that message, and hands the message to the apps
in the same thread, so the stamp of the last read is the message's arrival. A TLS connection keeps
its receive stamps in the controller (``recvmsg`` cannot read through TLS); its sends are stamped.
"""

from __future__ import annotations

import socket
import ssl
import struct
import time
from collections.abc import Callable

from controller.probes import probe_ids_in

SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)  # Linux; Python's socket module does not name it
_TIMESPEC = struct.Struct("@qq")  # struct timespec: seconds, nanoseconds


class StampedConnection:
    """A switch connection's socket with kernel receive stamps and probe send stamps; every other
    attribute is the socket's own."""

    def __init__(self, sock: socket.socket, on_probe_sent: Callable[[int, float], None]):
        self._socket = sock
        self._on_probe_sent = on_probe_sent
        self.kernel_stamps = not isinstance(sock, ssl.SSLSocket)
        self.received_at: float | None = None
        if self.kernel_stamps:
            sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)

    def recv(self, size: int) -> bytes:
        if not self.kernel_stamps:
            return self._socket.recv(size)
        data, ancillary, _flags, _address = self._socket.recvmsg(size, socket.CMSG_SPACE(_TIMESPEC.size))
        self.received_at = kernel_stamp(ancillary, time.time() - time.monotonic())
        return data

    def sendall(self, data: bytes) -> None:
        stamp = time.monotonic()
        for probe_id in probe_ids_in(data):
            self._on_probe_sent(probe_id, stamp)
        self._socket.sendall(data)

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
    return None
