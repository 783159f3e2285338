"""The packets offered to each link from its switch's route-rule counters, and the loss on a link
over a window: offered less transmitted (telemetry/offered.py), kept in the telemetry store."""

from __future__ import annotations

import pytest

from telemetry.offered import OfferedPackets, RuleReading, window_losses
from telemetry.store import LinkSample, StoreError, TelemetryStore

LINKS = {1: ("a", "b"), 2: ("a", "c")}  # switch a's ports → the links they feed


def rule(dst, port, packets, age=100.0):
    return RuleReading(("v1", dst), (port,) if isinstance(port, int) else port, age, packets)


def test_a_rule_adds_its_packets_since_its_last_reading_to_its_ports_link():
    offered = OfferedPackets()
    assert offered.update(7, [rule("h2", 1, 500), rule("h3", 2, 40)], LINKS, 0.0) == {("a", "b"): 0, ("a", "c"): 0}
    assert offered.update(7, [rule("h2", 1, 800), rule("h3", 2, 50)], LINKS, 1.0) == {("a", "b"): 300, ("a", "c"): 10}
    assert offered.update(7, [rule("h2", 1, 900), rule("h3", 1, 70)], LINKS, 1.0) == {("a", "b"): 420, ("a", "c"): 10}


def test_a_rule_installed_since_the_last_reading_counts_whole_an_old_one_first_seen_does_not():
    offered = OfferedPackets()
    offered.update(7, [rule("h2", 1, 500)], LINKS, 0.0)
    new = RuleReading(("v2", "h2"), (1,), 0.4, 30)  # the next routing's rule, 0.4 s old
    old = RuleReading(("v1", "h9"), (1,), 3600.0, 10_000)  # a rule this counter had not read before
    assert offered.update(7, [rule("h2", 1, 520), new, old], LINKS, 1.0) == {("a", "b"): 50, ("a", "c"): 0}
    later = [RuleReading(("v2", "h2"), (1,), 1.4, 35), RuleReading(("v1", "h9"), (1,), 3601.0, 10_004)]
    assert offered.update(7, later, LINKS, 1.0)[("a", "b")] == 59  # both counted from their last reading


def test_a_counter_that_went_back_counts_from_zero_and_a_reconnected_switch_starts_again():
    offered = OfferedPackets()
    offered.update(7, [rule("h2", 1, 500)], LINKS, 0.0)
    assert offered.update(7, [rule("h2", 1, 20)], LINKS, 1.0)[("a", "b")] == 20  # re-added with the same key
    offered.forget(7)
    assert offered.update(7, [rule("h2", 1, 9_000, age=0.5)], LINKS, 1.0)[("a", "b")] == 20  # first reading again


def test_ports_fed_by_a_select_group_or_an_unknown_one_are_left_out():
    offered = OfferedPackets()
    offered.update(7, [rule("h2", 1, 0), rule("h3", (1, 2), 0)], LINKS, 0.0)
    assert offered.update(7, [rule("h2", 1, 10), rule("h3", (1, 2), 10)], LINKS, 1.0) == {}
    assert offered.update(7, [rule("h4", 2, 10), rule("h5", (), 10)], LINKS, 1.0) == {}  # a group not ours
    assert offered.update(7, [rule("h4", 2, 15)], LINKS, 1.0) == {("a", "b"): 10, ("a", "c"): 5}


def samples(ts, packets):
    return [LinkSample(t, "a", "b", 1000 * p, p, 0, None) for t, p in zip(ts, packets)]


def test_window_losses_pair_the_offered_and_transmitted_spans_of_each_link():
    store = TelemetryStore()
    for t, sent in ((0.0, 100), (1.0, 400), (2.0, 700)):
        store.add_offered_packets(t, {("a", "b"): sent, ("a", "c"): sent})
    store.add_link_samples(samples((0.0, 1.0, 2.0), (50, 330, 620)))
    assert window_losses(store.offered_packets(0, 3), store.link_samples(0, 3)) == {("a", "b"): (600, 570)}
    assert window_losses(store.offered_packets(0, 1), store.link_samples(0, 1)) == {}  # one sample each
    broken = samples((0.0, 1.0, 2.0), (50, 10, 620))  # the port's counter went back: the switch reconnected
    assert window_losses(store.offered_packets(0, 3), broken) == {}
    uncounted = [LinkSample(t, "a", "b", 0, None, None, None) for t in (0.0, 1.0, 2.0)]
    assert window_losses(store.offered_packets(0, 3), uncounted) == {}


def test_the_store_keeps_merges_and_refuses_offered_packets():
    store = TelemetryStore(retention_s=1000, raw_s=100, bucket_s=10)
    store.add_offered_packets(500.0, {("a", "b"): 1})
    store.add_offered_packets(1500.0, {("a", "b"): 10})
    store.add_offered_packets(1505.0, {("a", "b"): 30})
    report = store.maintain(2000.0)
    assert report["link_offered_expired"] == 1 and report["link_offered_merged"] == 2
    assert [(v.ts, v.value) for v in store.offered_packets(0, 2000)] == [(1500.0, 30)]
    with pytest.raises(StoreError, match=r"link a->b: offered packets must be a whole number"):
        store.add_offered_packets(1600.0, {("a", "b"): -1})
    assert len(store.offered_packets(0, 2000)) == 1  # nothing written


def test_the_controller_reads_its_route_rules_output_ports_and_groups():
    """NdtController._on_route_stats on os-ken's own flow-stats objects: a rule that outputs to a link's
    port counts there; a rule that outputs to a select group leaves its buckets' ports out."""
    from types import SimpleNamespace

    from os_ken.ofproto import ofproto_v1_3 as ofp
    from os_ken.ofproto import ofproto_v1_3_parser as parser

    from controller.app import NdtController
    from controller.routing_rules import Wiring
    from telemetry.exporter import Metrics

    def stats(dst, actions, packets, age=5):
        return parser.OFPFlowStats(table_id=1, duration_sec=age, duration_nsec=0, priority=1000, idle_timeout=0,
                                   hard_timeout=0, flags=0, cookie=1, packet_count=packets, byte_count=1000 * packets,
                                   match=parser.OFPMatch(eth_dst=dst),
                                   instructions=[parser.OFPInstructionActions(ofp.OFPIT_APPLY_ACTIONS, actions)])

    wiring = Wiring({"a": 1, "b": 2, "c": 3}, {("a", "b"): 1, ("a", "c"): 2, ("b", "a"): 1, ("c", "a"): 1})
    app = SimpleNamespace(wiring=wiring, _group_ports={(1, 7): (1, 2)}, _offered=OfferedPackets(),
                          _route_stats_read={}, store=TelemetryStore(), metrics=Metrics(), _store=NdtController._store)
    msg = SimpleNamespace(datapath=SimpleNamespace(id=1, ofproto=ofp))
    NdtController._on_route_stats(app, msg, [stats("00:00:00:00:00:02", [parser.OFPActionOutput(1)], 100),
                                             stats("00:00:00:00:00:03", [parser.OFPActionOutput(2)], 50)], 10.0)
    NdtController._on_route_stats(app, msg, [stats("00:00:00:00:00:02", [parser.OFPActionOutput(1)], 180),
                                             stats("00:00:00:00:00:03", [parser.OFPActionOutput(2)], 90)], 11.0)
    assert [(v.ts, v.src, v.dst, v.value) for v in app.store.offered_packets(11.0, 12.0)] == [
        (11.0, "a", "b", 80), (11.0, "a", "c", 40)]
    NdtController._on_route_stats(app, msg, [stats("00:00:00:00:00:02", [parser.OFPActionOutput(1)], 200),
                                             stats("00:00:00:00:00:04", [parser.OFPActionGroup(7)], 9)], 12.0)
    assert app.store.offered_packets(12.0, 13.0) == []  # both ports feed the group: neither is counted
    assert app.metrics._offered == {("a", "b"): 80, ("a", "c"): 40}
