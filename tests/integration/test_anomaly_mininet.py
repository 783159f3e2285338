"""Anomaly detection in ``ndt controller --anomaly`` against the real stack: a ring of 4 switches
in Mininet (userspace OVS, HTB-shaped 2 Mbit/s links) with traffic between every pair of hosts, its
busiest link at 50 %. Once detection has learned (and lists nothing: the real port counters carry
what the traffic matrix puts on each link), that link's shaped rate is halved behind the
controller's back (tc only); ListAnomalies must list the paths across it and rank it first (a
single path elsewhere may be a false alarm: every switch is in one OVS process).
Needs root; names prefixed ``n``."""

from __future__ import annotations

import re
import threading
import time
import urllib.request

import numpy as np
import pytest

from controller.api.client import ControllerClient
from mininet_topos.network import EmulatedNetwork, reshape_link
from mininet_topos.topologies import emulation_state
from mininet_topos.traffic import play

pytestmark = [pytest.mark.root, pytest.mark.usefixtures("open_vswitch_running")]

ARGS = ("--probe-rate", "60", "--anomaly", "--model", "qt", "--loop-window", "5", "--anomaly-window", "3",
        "--anomaly-persistence", "3")
TRAFFIC_S = 115.0


def until(condition, timeout: float, poll: float = 0.5):
    """The first truthy ``condition()`` within ``timeout`` s, else the last value."""
    deadline = time.monotonic() + timeout
    value = condition()
    while not value and time.monotonic() < deadline:
        time.sleep(poll)
        value = condition()
    return value


def learn_with_traffic(net, state, traffic_s: float, learn_s: float):
    """Play ``state``'s traffic for ``traffic_s`` s, wait until detection has learned (at most ``learn_s``
    s) and then for the next window judged; (the traffic's thread, that window's ListAnomalies reply)."""
    traffic = threading.Thread(target=lambda: play(net, state, traffic_s, 2.0, 0, net.workdir / "traffic"),
                               daemon=True)
    traffic.start()
    learned = until(lambda: not net.client.anomalies().learning, learn_s, 1.0)
    assert learned, f"detection still learning after {learn_s:.0f} s; see {net.log_path}"
    next_window = net.client.anomalies().window_ts + 9.0
    before = until(lambda: (lambda r: r if r.window_ts >= next_window else None)(net.client.anomalies()), 20.0)
    assert before, f"no window judged for 20 s after learning; see {net.log_path}"  # a load anomaly could be listed
    return traffic, before


def test_a_halved_link_is_listed_with_itself_as_first_suspect():
    state = emulation_state("ring:4", 0.5, seed=0)
    busiest = state.links[int(np.argmax(state.utilization()))]
    faulty = (busiest.src, busiest.dst)
    with EmulatedNetwork(state, ControllerClient, "n", tag="test-anomaly", controller_args=ARGS) as net:
        traffic, before = learn_with_traffic(net, state, TRAFFIC_S, 70.0)
        reshape_link(net.link_ports()[faulty][1], 0.5 * busiest.capacity, busiest.buffer)
        halved = time.monotonic()

        def named() -> object:
            """The reply once the faulty link is the first suspect with every path across it anomalous
            (the paths cross their persistence threshold a window or two apart)."""
            reply = net.client.anomalies()
            first = reply.suspects[0] if reply.suspects else None
            return reply if (first and (first.src, first.dst) == faulty and first.anomalous_paths
                             and first.normal_paths == 0) else None

        reply = until(named, 30.0)
        detect_s = time.monotonic() - halved
        metrics = urllib.request.urlopen(net.metrics_url, timeout=5).read().decode()
        traffic.join(TRAFFIC_S + 30)
    print(f"learned; before the fault {len(before.paths)} anomalous paths; after it, in {detect_s:.1f} s: "
          f"{[(p.src, p.dst) for p in reply.paths] if reply else None}, "
          f"suspects {[(s.src, s.dst, round(s.score, 2)) for s in reply.suspects] if reply else None}")
    assert reply, (f"{faulty[0]}->{faulty[1]} was not ranked first, with every path across it anomalous, within 30 s of "
                   "its rate being halved")
    assert not before.links, f"links listed as carrying unlike the traffic matrix before any fault: {before.links}"
    across = [path for path in reply.paths if faulty in [(lk.src, lk.dst) for lk in path.links]]
    elsewhere = [(path.src, path.dst) for path in reply.paths if path not in across]
    assert len(elsewhere) <= 1, (f"paths anomalous without crossing {faulty[0]}->{faulty[1]}: {elsewhere}; one is a "
                                 "false alarm (all switches share one OVS process), more would be a fault misplaced")
    for path in across:
        assert path.direction == "slower" and path.measured_s > path.hi_s
    first, *rest = reply.suspects
    assert first.score == pytest.approx(len(across) / len(reply.paths)) and first.normal_paths == 0
    assert all(other.score < first.score for other in rest), [(s.src, s.dst, s.score) for s in reply.suspects]
    gauge = re.search(rf'^ndt_anomaly_suspect_score{{dst="{faulty[1]}",src="{faulty[0]}"}} (\S+)$', metrics, re.M)
    assert gauge and float(gauge.group(1)) > 0, "the faulty link's suspect score is not exported"
    assert "ndt_anomalies_total" in metrics


def test_a_link_that_drops_packets_is_listed_as_lost_and_first_suspect():
    """The busiest link's FIFO cut to 1 packet behind the controller's back: its port transmits fewer
    packets than its switch's route rules sent to it; ListAnomalies must list it "lost" (and no other
    link), first among the suspects, with its loss beside the port counters' own in Prometheus. Windows
    of 10 s, the default: the two counters are read a few packets apart in time (Open vSwitch updates
    its rules' counts in rounds), 1-3 % of 6 s of this link's traffic but under 0.5 % of 10 s."""
    state = emulation_state("ring:4", 0.5, seed=0)
    busiest = state.links[int(np.argmax(state.utilization()))]
    faulty = (busiest.src, busiest.dst)
    args = ARGS[:ARGS.index("--anomaly-window")] + ("--anomaly-window", "10", "--anomaly-persistence", "3")
    traffic_s = 180.0
    with EmulatedNetwork(state, ControllerClient, "n", tag="test-anomaly-loss", controller_args=args) as net:
        traffic, before = learn_with_traffic(net, state, traffic_s, 120.0)
        reshape_link(net.link_ports()[faulty][1], busiest.capacity, 1)
        cut = time.monotonic()

        def lost() -> object:
            reply = net.client.anomalies()
            return reply if any((lk.src, lk.dst) == faulty and lk.direction == "lost" for lk in reply.links) else None

        reply = until(lost, 40.0)
        detect_s = time.monotonic() - cut
        metrics = urllib.request.urlopen(net.metrics_url, timeout=5).read().decode()
        traffic.join(traffic_s + 30)
    print(f"before the fault: links {[(lk.src, lk.dst, lk.direction) for lk in before.links]}; after it, in "
          f"{detect_s:.1f} s: {[(lk.src, lk.dst, lk.direction, round(lk.loss_ratio, 3)) for lk in reply.links] if reply else None}")
    assert not before.links, f"links listed before any fault: {[(lk.src, lk.dst, lk.direction) for lk in before.links]}"
    assert reply, f"{faulty[0]}->{faulty[1]} was not listed as losing packets within 40 s of its FIFO cut to 1 packet"
    assert [(lk.src, lk.dst) for lk in reply.links if lk.direction == "lost"] == [faulty]
    link = next(lk for lk in reply.links if (lk.src, lk.dst) == faulty)
    assert link.loss_ratio > 0.01 and link.windows >= 2
    first = reply.suspects[0]
    assert (first.src, first.dst) == faulty and first.loss_ratio == pytest.approx(link.loss_ratio)
    labels = f'{{dst="{faulty[1]}",src="{faulty[0]}"}}'
    offered = re.search(rf"^ndt_link_offered_packets_total{labels} (\S+)$", metrics, re.M)
    sent = re.search(rf"^ndt_link_transmit_packets_total{labels} (\S+)$", metrics, re.M)
    loss = re.search(rf"^ndt_link_loss_ratio{labels} (\S+)$", metrics, re.M)
    assert offered and sent and float(offered.group(1)) > float(sent.group(1)) > 0
    assert loss and float(loss.group(1)) > 0.01
