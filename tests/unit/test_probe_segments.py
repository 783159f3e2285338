"""The probe-segments experiment's parsing and bookkeeping, on frames and sightings built here."""

import ipaddress
import struct

import numpy as np
import pytest

from controller.probes import PROBE_FRAME_BYTES, probe_payload
from experiments.probe_segments import Sighting, openflow_sightings, path_segments, port_sighting
from mininet_topos.udpgen import HEADER, PORT


def udp_frame(dst_ip: str, dst_port: int, payload: bytes) -> bytes:
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + 8 + len(payload), 0, 0, 64, 17, 0,
                     ipaddress.IPv4Address("10.0.0.9").packed, ipaddress.IPv4Address(dst_ip).packed)
    return bytes(6) + bytes(6) + b"\x08\x00" + ip + struct.pack("!HHHH", 5000, dst_port, 8 + len(payload), 0) + payload


def probe_frame(number: int, dst_ip: str) -> bytes:
    return udp_frame(dst_ip, 40000, probe_payload(number, PROBE_FRAME_BYTES - 42))


def test_port_sighting_reads_host_packets_and_probes():
    host = port_sighting(1.0, "s1-eth1", False, udp_frame("10.0.0.2", PORT, HEADER.pack(7, 42, 123.5) + bytes(100)))
    assert (host.kind, host.key, host.sent, host.outgoing) == ("host", (7, 42), 123.5, False)
    probe = port_sighting(2.0, "s1-eth2", True, probe_frame(99, "10.0.0.2"))
    assert (probe.kind, probe.key, probe.dst) == ("probe", 99, "10.0.0.2")
    assert port_sighting(3.0, "s1-eth1", False, udp_frame("10.0.0.2", 53, bytes(40))) is None
    assert port_sighting(3.0, "s1-eth1", False, b"\x00" * 60) is None
    with_options = bytearray(udp_frame("10.0.0.2", PORT, b""))[:42]
    with_options[14] = 0x4F  # a 60-byte IPv4 header: the UDP header is not in these 42 bytes
    assert port_sighting(3.0, "s1-eth1", False, bytes(with_options)) is None


def test_openflow_sightings_find_every_probe_in_a_segment():
    segment = b"tcp+openflow headers" + probe_frame(5, "10.0.0.1") + b"next message" + probe_frame(6, "10.0.0.3")
    found = openflow_sightings(4.0, segment)
    assert [(s.key, s.dst, s.where) for s in found] == [(5, "10.0.0.1", "lo"), (6, "10.0.0.3", "lo")]
    early = b"NDTPROBE" + probe_frame(7, "10.0.0.4")  # the magic too early to be a probe's, then a probe
    assert [s.key for s in openflow_sightings(4.0, early)] == [7]
    assert openflow_sightings(4.0, probe_frame(8, "10.0.0.4")[:48]) == []  # cut inside its id


def one_hop_run():
    """A one-hop path a → b: a host packet, a probe, a probe from further back, loopbacks at both ends (ms)."""
    ms = 1e-3
    s = [
        # host packet of flow 0: sent at 0, in at a's host port at 0.05, out on the link at 2.05, in at b 2.06, out to b's host 2.16
        Sighting(0.05 * ms, "a-eth1", False, "host", (0, 1), sent=0.0),
        Sighting(2.05 * ms, "a-eth2", True, "host", (0, 1), sent=0.0),
        Sighting(2.06 * ms, "b-eth2", False, "host", (0, 1), sent=0.0),
        Sighting(2.16 * ms, "b-eth1", True, "host", (0, 1), sent=0.0),
        # a host packet of another flow is left out
        Sighting(1.0, "a-eth1", False, "host", (3, 1), sent=0.9),
        # probe 10 from a to b's host: packet-out 10.0, out 11.9, in 11.91, packet-in 12.05
        Sighting(10.0 * ms, "lo", True, "probe", 10, dst="10.0.0.2"),
        Sighting(11.9 * ms, "a-eth2", True, "probe", 10, dst="10.0.0.2"),
        Sighting(11.91 * ms, "b-eth2", False, "probe", 10, dst="10.0.0.2"),
        Sighting(12.05 * ms, "lo", True, "probe", 10, dst="10.0.0.2"),
        # probe 11 came into a from elsewhere: not this path's
        Sighting(20.0 * ms, "lo", True, "probe", 11, dst="10.0.0.2"),
        Sighting(20.5 * ms, "a-eth3", False, "probe", 11, dst="10.0.0.2"),
        Sighting(20.6 * ms, "a-eth2", True, "probe", 11, dst="10.0.0.2"),
        Sighting(20.7 * ms, "b-eth2", False, "probe", 11, dst="10.0.0.2"),
        Sighting(20.9 * ms, "lo", True, "probe", 11, dst="10.0.0.2"),
        # loopbacks: 0.2 ms at a, 0.4 ms at b
        Sighting(30.0 * ms, "lo", True, "probe", 12, dst="10.0.0.1"),
        Sighting(30.2 * ms, "lo", True, "probe", 12, dst="10.0.0.1"),
        Sighting(40.0 * ms, "lo", True, "probe", 13, dst="10.0.0.2"),
        Sighting(40.4 * ms, "lo", True, "probe", 13, dst="10.0.0.2"),
    ]
    return path_segments(s, [("a-eth2", "b-eth2")], "a-eth1", "b-eth1", {0}, {"a-eth1", "a-eth2", "a-eth3"},
                         "10.0.0.1", "10.0.0.2")


def test_path_segments_split_the_host_packets_and_the_probes_times():
    out = one_hop_run()
    host = [v["mean_s"] * 1e3 for v in out["host_segments"].values()]
    assert host == pytest.approx([0.05, 2.0, 0.01, 0.10])
    probe = [v["mean_s"] * 1e3 for v in out["probe_segments"].values()]
    assert probe == pytest.approx([1.9, 0.01, 0.14])
    assert out["probe_raw"]["n"] == 1  # probe 11, which came in from elsewhere, is not counted
    assert out["loopbacks"]["source"]["mean_s"] * 1e3 == pytest.approx(0.2)
    assert out["loopbacks"]["destination"]["mean_s"] * 1e3 == pytest.approx(0.4)
    assert out["host_delay_s"] * 1e3 == pytest.approx(2.16)
    assert out["probe_delay_s"] * 1e3 == pytest.approx(2.05 - 0.3)
    assert out["gap_s"] * 1e3 == pytest.approx(2.16 - 1.75)


def test_probe_accuracy_by_hops_groups_the_paths():
    from experiments.probe_accuracy import by_hops

    def path(hops, error, within, stderr, tolerance):
        return {"hops": hops, "error_s": error, "within_target": within, "probe_stderr_s": stderr,
                "host_stderr_s": stderr / 2, "tolerance_s": tolerance}

    rows = by_hops([path(1, -0.2e-3, True, 0.1e-3, 0.2e-3), path(1, -0.4e-3, False, 0.3e-3, 0.4e-3),
                    path(3, 1e-3, False, 0.8e-3, 0.7e-3)])
    assert [(r["hops"], r["paths"]) for r in rows] == [(1, 2), (3, 1)]
    assert rows[0]["share_within_target"] == 0.5
    assert rows[0]["mean_error_s"] == pytest.approx(-0.3e-3) and rows[0]["error_spread_s"] == pytest.approx(0.1e-3)
    assert rows[0]["probe_stderr_s"] == pytest.approx(np.sqrt(0.05e-6))
    assert rows[0]["host_stderr_s"] == pytest.approx(np.sqrt(0.05e-6) / 2)
    assert rows[0]["tolerance_s"] == pytest.approx(0.3e-3)  # the median
    assert rows[1]["tolerance_s"] == pytest.approx(0.7e-3) and rows[1]["error_spread_s"] == 0.0
