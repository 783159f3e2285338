"""The demo's hosts as a measurement agent: the receiver writes out what it received while the
traffic plays, and the reporter sends each window's per-pair means, with the window, through a real
gRPC channel to the controller's API."""

from __future__ import annotations

import socket
import threading
import time

import numpy as np
import pytest

from controller.api.client import ControllerClient
from controller.api.server import NdtService, serve
from controller.loop.deployment import HostReporter, sampling_error
from mininet_topos import udpgen
from mininet_topos.traffic import live_rows
from telemetry.exporter import Metrics
from telemetry.store import TelemetryStore
from tests.api_stand_in import StandIn
from twin.models.registry import get_predictor


def test_the_receiver_writes_out_what_it_received_while_it_listens(tmp_path):
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    out = str(tmp_path / "recv-1.npy")
    until = time.time() + 1.6
    receiver = threading.Thread(target=udpgen.receive, args=(port, until, out, 0.3))
    receiver.start()
    time.sleep(0.2)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender:
        for seq in range(20):
            sender.sendto(udpgen.HEADER.pack(3, seq, time.time()), ("127.0.0.1", port))
            time.sleep(0.02)
    time.sleep(0.5)
    seen: set = set()
    early = live_rows(tmp_path, 1, seen)
    assert len(early) == 20 and set(early[:, 0]) == {3.0}  # out before the receiver stopped
    receiver.join(5)
    assert len(live_rows(tmp_path, 1, seen)) == 0  # nothing new came; nothing is read twice
    assert len(np.load(out)) == 20


def test_a_step_of_the_wall_clock_neither_bursts_nor_stops_the_traffic(tmp_path, monkeypatch):
    """The wall clock jumps 5 s ahead while a plan plays: the sender keeps its pace and the receiver
    keeps listening until its end (both are paced by the monotonic clock)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    packets = 20
    np.savez(tmp_path / "plan.npz", t=np.linspace(0.0, 1.0, packets), flow=np.zeros(packets), seq=np.arange(packets),
             dst=np.ones(packets), size=np.full(packets, 64))
    start = time.time() + 0.3
    receiver = threading.Thread(target=udpgen.receive, args=(port, start + 1.6, str(tmp_path / "recv-1.npy")))
    receiver.start()
    time.sleep(0.1)
    wall = time.time
    stepped_at = time.monotonic() + 0.6  # about 0.4 s into the plan
    monkeypatch.setattr(udpgen.time, "time", lambda: wall() + (5.0 if time.monotonic() > stepped_at else 0.0))
    sent_at = []
    real_sendto = socket.socket.sendto
    monkeypatch.setattr(socket.socket, "sendto", lambda sock, data, address: (
        sent_at.append(time.monotonic()), real_sendto(sock, data, address))[1])
    udpgen.send(str(tmp_path / "plan.npz"), start, str(tmp_path / "send.json"), lambda index: "127.0.0.1", port)
    receiver.join(5)
    assert len(sent_at) == packets
    assert sum(np.diff(sent_at) < 0.005) <= 1  # 53 ms apart as planned; a burst sends them microseconds apart
    assert sent_at[-1] - sent_at[0] == pytest.approx(1.0, abs=0.1)
    assert len(np.load(tmp_path / "recv-1.npy")) == packets  # the receiver did not stop 5 s early


@pytest.fixture()
def controller_api():
    controller = StandIn()
    server, port = serve(NdtService(controller, TelemetryStore(), Metrics(), get_predictor, "qt"), "127.0.0.1:0")
    client = ControllerClient(f"127.0.0.1:{port}")
    yield client, controller
    client.close()
    server.stop(None)


def test_the_reporter_sends_each_pairs_mean_over_the_window(tmp_path, controller_api):
    client, controller = controller_api
    traffic = controller.state  # flows 0: s1->s3, 1: s2->s4
    start = time.time() - 30.0
    sent = start + np.arange(40) * 0.25  # 10 s of packets per flow
    rows = np.concatenate([np.column_stack([np.zeros(40), np.arange(40), sent, sent + 0.004]),
                           np.column_stack([np.ones(40), np.arange(40), sent, sent + 0.002 + 0.001 * (np.arange(40) % 2)]),
                           np.array([[1, 99, start + 10.5, start + 20.0]])])  # sent after the window
    udpgen._flush_live(rows.tolist(), 0, str(tmp_path / "recv-1.npy"), 0)
    reporter = HostReporter(client, traffic, tmp_path, start - 2.0, log=lambda *_: None)
    reporter.report(start, start + 10.0)
    got = controller.reported_delays.means(start, start + 10.0)
    assert got[("s1", "s3")].delay == pytest.approx(0.004, rel=1e-4) and got[("s2", "s4")].delay == pytest.approx(0.0025, rel=1e-4)
    assert {pair: m.samples for pair, m in got.items()} == {("s1", "s3"): 40, ("s2", "s4"): 40}  # not the one sent after
    assert reporter.reports[0]["pairs"] == 2 and reporter.reports[0]["noise_mape"] < 0.05
    assert reporter.reported_pairs == {("s1", "s3"), ("s2", "s4")}
    only = HostReporter(client, traffic, tmp_path, start - 2.0, log=lambda *_: None, pairs={("s2", "s4")})
    only.report(start, start + 10.0)  # a share of the pairs reports, the rest is held out
    assert only.reported_pairs == {("s2", "s4")} and only.reports[0]["pairs"] == 1


def test_sampling_error_follows_the_batches_spread():
    sent = np.arange(100.0)
    steady = np.full(100, 0.01)
    drifting = np.linspace(0.005, 0.015, 100)
    assert sampling_error(sent, steady) == 0.0
    assert sampling_error(sent, drifting) > 0.001

