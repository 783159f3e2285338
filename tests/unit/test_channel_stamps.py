"""Kernel receive stamps and probe send stamps on a real TCP connection over loopback."""

from __future__ import annotations

import socket
import ssl
import time

import pytest

from controller.channel_stamps import SO_TIMESTAMPNS, StampedConnection, kernel_stamp
from controller.probes import probe_payload


@pytest.fixture
def connection():
    server = socket.create_server(("127.0.0.1", 0))
    client = socket.create_connection(server.getsockname())
    accepted, _ = server.accept()
    yield client, accepted
    for sock in (client, accepted, server):
        sock.close()


def stamping_on(sender: socket.socket, receiver: StampedConnection) -> None:
    """Wait until the kernel stamps what ``receiver`` reads (it turns stamping on a little after the first ask)."""
    deadline = time.monotonic() + 5.0
    while time.monotonic() < deadline:
        sender.sendall(b"w")
        receiver.recv(1)
        if receiver.received_at is not None:
            return
        time.sleep(0.01)
    pytest.fail("the kernel never stamped a read (SO_TIMESTAMPNS)")


def test_a_read_carries_the_kernels_arrival_not_the_time_it_was_read(connection):
    client, accepted = connection
    sent: list[tuple[int, float]] = []
    switch_side = StampedConnection(accepted, lambda probe, at: sent.append((probe, at)))
    stamping_on(client, switch_side)
    before = time.monotonic()
    client.sendall(b"12345678body")
    time.sleep(0.2)  # the bytes wait in the kernel, as a packet-in waits for a busy controller
    assert switch_side.recv(8) == b"12345678"
    read_at = time.monotonic()
    assert before <= switch_side.received_at < read_at - 0.15
    assert switch_side.recv(4) == b"body" and switch_side.fileno() == accepted.fileno()


def test_a_probe_is_stamped_as_it_goes_to_the_kernel(connection):
    client, accepted = connection
    sent: list[tuple[int, float]] = []
    controller_side = StampedConnection(client, lambda probe, at: sent.append((probe, at)))
    receiver = StampedConnection(accepted, lambda probe, at: None)
    stamping_on(client, receiver)
    before = time.monotonic()
    controller_side.sendall(b"\x04\x0d" + probe_payload(42, 22))
    controller_side.sendall(b"a flow-mod, no probe")
    assert receiver.recv(2) == b"\x04\x0d"
    assert [probe for probe, _ in sent] == [42]
    assert before <= sent[0][1] <= receiver.received_at


def test_tls_connections_keep_their_reads_unstamped():
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    with socket.socket() as raw, context.wrap_socket(raw, server_hostname="switch", do_handshake_on_connect=False) as tls:
        wrapped = StampedConnection(tls, lambda probe, at: None)
        assert not wrapped.kernel_stamps and wrapped.received_at is None


def test_no_timestamp_among_the_ancillary_data_is_none():
    assert kernel_stamp([], 0.0) is None
    assert kernel_stamp([(socket.SOL_SOCKET, 99, bytes(16))], 0.0) is None
    assert kernel_stamp([(socket.SOL_SOCKET, SO_TIMESTAMPNS, bytes(16))], 0.0) is None  # stamping not on yet
