"""Kernel receive stamps and send stamps on real TCP (and TLS) connections over loopback, and the
controller's use of them for probes and echo requests."""

from __future__ import annotations

import socket
import ssl
import threading
import time
from types import SimpleNamespace

import pytest
from os_ken.lib.packet import ethernet, ipv4, packet, udp
from os_ken.ofproto import ofproto_v1_3, ofproto_v1_3_parser

from controller.channel_stamps import ECHO, PROBE, SO_TIMESTAMPNS, StampedConnection, kernel_stamp
from controller.probes import PathDelays, ProbeSample, probe_payload
from controller.reported_delays import ReportedDelays
from telemetry.exporter import Metrics
from telemetry.store import TelemetryStore
from tests.unit.test_controller_api import self_signed


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
    switch_side = StampedConnection(accepted, lambda kind, number, at: None)
    stamping_on(client, switch_side)
    before = time.monotonic()
    client.sendall(b"12345678body")
    time.sleep(0.2)  # the bytes wait in the kernel, as a packet-in waits for a busy controller
    assert switch_side.recv(8) == b"12345678"
    read_at = time.monotonic()
    assert before <= switch_side.received_at < read_at - 0.15
    assert switch_side.recv(4) == b"body" and switch_side.fileno() == accepted.fileno()


def test_probes_and_echo_requests_are_stamped_as_they_go_to_the_kernel(connection):
    client, accepted = connection
    sent: list[tuple[str, int, float]] = []
    controller_side = StampedConnection(client, lambda kind, number, at: sent.append((kind, number, at)))
    receiver = StampedConnection(accepted, lambda kind, number, at: None)
    stamping_on(client, receiver)
    before = time.monotonic()
    controller_side.sendall(b"\x04\x0d\x00\x40\x00\x00\x00\x07" + probe_payload(42, 22))  # a packet-out
    controller_side.sendall(b"\x04\x0e\x00\x10\x00\x00\x00\x08 flow-mod")  # no probe, no echo
    echo = ofproto_v1_3_parser.OFPEchoRequest(SimpleNamespace(ofproto=ofproto_v1_3, ofproto_parser=ofproto_v1_3_parser),
                                              data=b"ndt")
    echo.set_xid(1234)
    echo.serialize()
    controller_side.sendall(echo.buf)
    assert receiver.recv(2) == b"\x04\x0d"
    assert [(kind, number) for kind, number, _ in sent] == [(PROBE, 42), (ECHO, 1234)]
    assert before <= sent[0][2] <= receiver.received_at


def test_a_failing_stamp_does_not_stop_the_bytes(connection, caplog):
    client, accepted = connection

    def broken(kind, number, at):
        raise RuntimeError("bookkeeping failed")

    StampedConnection(client, broken).sendall(probe_payload(1, 16))
    assert accepted.recv(16) == probe_payload(1, 16)
    assert "stamping a message to a switch failed" in caplog.text


def test_tls_connections_are_read_through_tls_and_stamped_by_the_controller(tmp_path):
    self_signed(tmp_path, "switch")
    server_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_context.load_cert_chain(tmp_path / "switch.pem", tmp_path / "switch-key.pem")
    client_context = ssl.create_default_context(cafile=str(tmp_path / "switch.pem"))
    with socket.create_server(("127.0.0.1", 0)) as server:
        accepted: dict = {}
        thread = threading.Thread(target=lambda: accepted.update(sock=server_context.wrap_socket(server.accept()[0],
                                                                                                  server_side=True)))
        thread.start()
        with client_context.wrap_socket(socket.create_connection(server.getsockname()), server_hostname="localhost") as tls:
            thread.join(10)
            wrapped = StampedConnection(accepted["sock"], lambda kind, number, at: None)
            tls.sendall(b"hello over tls")
            assert wrapped.recv(14) == b"hello over tls"
            assert not wrapped.kernel_stamps and wrapped.received_at is None
            accepted["sock"].close()


def test_no_timestamp_among_the_ancillary_data_is_none():
    assert kernel_stamp([], 0.0) is None
    assert kernel_stamp([(socket.SOL_SOCKET, 99, bytes(16))], 0.0) is None
    assert kernel_stamp([(socket.SOL_SOCKET, SO_TIMESTAMPNS, bytes(16))], 0.0) is None  # stamping not on yet


class ProbeApp(SimpleNamespace):
    """The part of NdtController its probe and echo bookkeeping uses."""

    def __init__(self):
        from controller.app import NdtController

        metrics = Metrics()
        super().__init__(wiring=SimpleNamespace(names={1: "s1", 2: "s2"}), path_delays=PathDelays(), metrics=metrics,
                         _probes_pending={}, _probes_left={}, _echo_sent={}, _echo_left={}, rtts=[],
                         reported_delays=ReportedDelays(), _reports_compared=0, _datapaths={}, store=TelemetryStore(),
                         _store=lambda write, *args: write(*args))
        metrics.set_control_rtt = lambda switch, seconds: self.rtts.append((switch, seconds))
        for name in ("_message_left", "_on_probe", "_on_echo_reply", "_report_probes"):
            setattr(self, name, (lambda method: lambda *a: method(self, *a))(getattr(NdtController, name)))


def returned_probe(number: int):
    frame = packet.Packet()
    frame.add_protocol(ethernet.ethernet())
    frame.add_protocol(ipv4.ipv4(proto=17))
    frame.add_protocol(udp.udp())
    frame.add_protocol(probe_payload(number, 22))
    frame.serialize()
    return packet.Packet(frame.data)


def test_a_probes_time_runs_from_when_it_left_not_from_when_it_was_queued():
    app = ProbeApp()
    app._probes_pending.update({7: ("s1", "s2", 10.0), 8: ("s1", "s2", 10.0)})
    app._message_left(1, PROBE, 7, 10.004)  # it waited 4 ms in os-ken's send queue
    assert app._on_probe(SimpleNamespace(id=2), returned_probe(7), 10.005)
    assert app._on_probe(SimpleNamespace(id=2), returned_probe(8), 10.006)  # never stamped: from its queuing
    assert [(s.sent, s.received) for s in app.path_delays.samples(0, 20)] == [(10.004, 10.005), (10.0, 10.006)]
    assert app._probes_left == {} and app._probes_pending == {}


def test_each_report_is_set_beside_the_probes_of_its_window_once_and_the_edge_reaches_the_store():
    app, now = ProbeApp(), time.monotonic()
    wall_ahead = time.time() - now
    for k in range(40):  # s1 → s2 reads 2 ms after the loopbacks, the three pairs alike
        t = now - 9.0 + 0.2 * k
        for pair in (("s1", "s1"), ("s2", "s2"), ("s3", "s3")):
            app.path_delays.add(ProbeSample(*pair, t, t + 0.001))
        for pair in (("s1", "s2"), ("s2", "s3"), ("s3", "s1")):
            app.path_delays.add(ProbeSample(*pair, t, t + 0.003))
    window = (now - 9.5 + wall_ahead, now + wall_ahead)
    app.reported_delays.add(*window, {("s1", "s2"): 0.0025, ("s2", "s3"): 0.0025, ("s3", "s1"): 0.0025})
    app._report_probes()
    assert app.path_delays.host_edge.pairs == 3 and app._reports_compared == 1
    assert app.metrics._gauges["probe_host_edge_seconds"] == pytest.approx(0.0005)
    stored = {(p.src, p.dst): p for p in app.store.path_delays("probe", 0.0, time.time() + 1.0)}
    assert stored[("s1", "s2")].value == pytest.approx(0.0025) and stored[("s1", "s2")].samples == 40  # its 40 probes
    app._report_probes()  # nothing new: the fit is not fed the same report twice
    assert len(app.path_delays._host_edge_rows) == 3


def test_an_echo_round_trip_runs_from_when_the_request_left():
    app = ProbeApp()
    app._echo_sent[(1, 55)] = 20.0
    app._message_left(1, ECHO, 55, 20.003)
    reply = SimpleNamespace(datapath=SimpleNamespace(id=1), xid=55, ndt_received=20.0035)
    app._on_echo_reply(SimpleNamespace(msg=reply))
    assert app.rtts == [("s1", pytest.approx(0.0005))] and app._echo_left == {}
