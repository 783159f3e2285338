"""The SQLite telemetry store: round trips, time ranges, WAL, retention and downsampling."""

from __future__ import annotations

import collections
import sqlite3
import subprocess
import sys
import time

import numpy as np
import pytest

from telemetry.rates import UNSUPPORTED_COUNTER, supported_counter
from telemetry.store import LINK_KIND, LinkSample, StoreError, TelemetryStore
from telemetry.traffic_matrix import carried_loads


def sample(ts, src="s1", dst="s2", tx=0, util=0.5):
    return LinkSample(ts, src, dst, tx, tx // 100, 0, util)


def test_link_samples_round_trip_and_ranges(tmp_path):
    store = TelemetryStore(tmp_path / "t.db")
    store.add_link_samples([sample(t, tx=1000 * t) for t in range(10)] + [sample(5, "s2", "s1", 7)])
    assert [s.ts for s in store.link_samples(2, 5)] == [2, 3, 4]
    assert [s.src for s in store.link_samples(5, 6)] == ["s1", "s2"]
    assert [s.tx_bytes for s in store.link_samples(0, 100, "s2", "s1")] == [7]
    latest = store.latest_link_samples()
    assert [(s.src, s.ts, s.tx_bytes) for s in latest] == [("s1", 9, 9000), ("s2", 5, 7)]
    with pytest.raises(StoreError, match="start 5 is after end 1"):
        store.link_samples(5, 1)
    store.close()


def test_carried_loads_span_each_links_first_and_last_sample_and_skip_a_reset_counter():
    def sample(ts, src, dst, tx_bytes):
        return LinkSample(ts, src, dst, tx_bytes, None, None, None)

    store = TelemetryStore()
    store.add_link_samples([sample(0.0, "a", "b", 0), sample(0.0, "b", "a", 5_000), sample(0.0, "c", "a", 9_000)])
    store.add_link_samples([sample(2.0, "a", "b", 250_000), sample(2.0, "b", "a", 1_000)])  # b->a reset (reconnect)
    store.add_link_samples([sample(4.0, "a", "b", 1_000_000), sample(4.0, "b", "a", 3_000)])
    carried = carried_loads(store.link_samples(0.0, 4.0 + 1e-6))
    assert carried == {("a", "b"): 8.0 * 1_000_000 / 4.0}  # b->a went back; c->a has one sample
    assert carried_loads(store.link_samples(2.0, 4.0 + 1e-6)) == {("a", "b"): 8.0 * 750_000 / 2.0,
                                                                 ("b", "a"): 8.0 * 2_000 / 2.0}


def test_wal_mode_and_indexes(tmp_path):
    TelemetryStore(tmp_path / "t.db").close()
    db = sqlite3.connect(tmp_path / "t.db")
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    plan = " ".join(r[-1] for r in db.execute(
        "EXPLAIN QUERY PLAN SELECT * FROM link_stats WHERE src='a' AND dst='b' AND ts >= 0 AND ts < 1"))
    assert "USING INDEX link_stats_pair" in plan


def test_traffic_delays_and_configs():
    store = TelemetryStore()
    store.add_traffic_matrix(10.0, {("s1", "s3"): 8e5, ("s3", "s1"): 1e5})
    store.add_path_delays(10.0, "predicted", {("s1", "s3"): 0.002})
    store.add_path_delays(11.0, "measured", {("s1", "s3"): 0.0025})
    cid = store.add_config(12.0, "ndt optimize", "weights", {"s1->s2": 3}, {"mean_delay_s": 0.001})
    assert [(p.src, p.value) for p in store.traffic_matrices(0, 20)] == [("s1", 8e5), ("s3", 1e5)]
    assert store.path_delays("measured", 0, 20)[0].value == 0.0025
    assert store.path_delays("predicted", 0, 20, "s1", "s3")[0].value == 0.002
    (config,) = store.configs(0, 20)
    assert (config.id, config.who, config.payload, config.predicted) == (cid, "ndt optimize", {"s1->s2": 3},
                                                                        {"mean_delay_s": 0.001})
    with pytest.raises(StoreError, match="kind 'guessed'"):
        store.add_path_delays(1.0, "guessed", {})
    with pytest.raises(StoreError, match="'who'"):
        store.add_config(1.0, "", "weights", {})
    with pytest.raises(StoreError, match="not JSON"):
        store.add_config(1.0, "me", "weights", {"x": object()})


def test_retention_and_downsampling():
    store = TelemetryStore(retention_s=1000, raw_s=100, bucket_s=10)
    now = 2000.0
    store.add_link_samples([sample(t, tx=10 * t, util=t % 2) for t in range(500, 2000)])
    store.add_path_delays(1950.0, "measured", {("s1", "s2"): 1.0})
    store.add_path_delays(1500.0, "measured", {("s1", "s2"): 1.0})
    store.add_path_delays(1505.0, "measured", {("s1", "s2"): 3.0})
    report = store.maintain(now)
    assert report["link_stats_expired"] == 500  # ts < 1000
    assert report["link_stats_merged"] == 900  # 1000 <= ts < 1900
    old = store.link_samples(1000, 1900)
    assert len(old) == 90 and old[0].ts == 1000 and old[0].tx_bytes == 10 * 1009 and old[0].utilization == 0.5
    assert len(store.link_samples(1900, 2000)) == 100  # recent rows stay raw
    assert [p.value for p in store.path_delays("measured", 1500, 1510)] == [2.0]
    assert store.maintain(now)["link_stats_merged"] == 0  # merged rows are not merged again


def test_delays_keep_their_sample_counts_and_merge_by_them():
    store = TelemetryStore(retention_s=1000, raw_s=100, bucket_s=10)
    store.add_path_delays(1500.0, "measured", {("s1", "s2"): 1.0, ("s1", "s3"): 1.0}, {("s1", "s2"): 30, ("s1", "s3"): 5})
    store.add_path_delays(1505.0, "measured", {("s1", "s2"): 3.0, ("s1", "s3"): 3.0}, {("s1", "s2"): 10})
    raw = store.path_delays("measured", 1500, 1510)
    assert [(p.src, p.dst, p.value, p.samples) for p in raw] == [
        ("s1", "s2", 1.0, 30), ("s1", "s3", 1.0, 5), ("s1", "s2", 3.0, 10), ("s1", "s3", 3.0, None)]
    store.maintain(2000.0)
    merged = {(p.src, p.dst): (p.value, p.samples) for p in store.path_delays("measured", 1500, 1510)}
    assert merged[("s1", "s2")] == (pytest.approx(1.5), 40)  # (30 x 1 + 10 x 3) / 40
    assert merged[("s1", "s3")] == (pytest.approx(2.0), None)  # one count not known: each row alike
    store.add_path_delays(1990.0, "probe", {("s1", "s2"): 0.001}, {("s1", "s2"): np.int64(12)})  # numpy's too
    assert store.path_delays("probe", 1990, 1991)[0].samples == 12
    for bad in (0, -3, 2.5, True, 2**32):
        with pytest.raises(StoreError, match=r"measured delay s1->s2: samples must be a whole number from 1"):
            store.add_path_delays(1.0, "measured", {("s1", "s2"): 0.001}, {("s1", "s2"): bad})


def test_a_store_from_before_delay_counts_gains_the_column_with_its_rows(tmp_path):
    path = tmp_path / "old.db"
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE path_delay (ts REAL NOT NULL, kind TEXT NOT NULL, src TEXT NOT NULL, "
                   "dst TEXT NOT NULL, delay_s REAL NOT NULL, bucket_s REAL NOT NULL DEFAULT 0)")
        db.execute("INSERT INTO path_delay VALUES (1.0, 'measured', 's1', 's2', 0.002, 0)")
    store = TelemetryStore(path)
    store.add_path_delays(2.0, "measured", {("s1", "s2"): 0.004}, {("s1", "s2"): 7})
    assert [(p.value, p.samples) for p in store.path_delays("measured", 0.0, 3.0)] == [(0.002, None), (0.004, 7)]
    store.close()
    again = TelemetryStore(path)  # opened again: no second column
    assert again.path_delays("measured", 1.5, 3.0)[0].samples == 7
    again.close()


def test_retention_keeps_the_latest_link_record():
    store = TelemetryStore(retention_s=1000, raw_s=100, bucket_s=10)
    first = store.add_config(10.0, "controller", LINK_KIND, {"down": ["a->b"]})
    last = store.add_config(20.0, "controller", LINK_KIND, {"down": []})
    store.add_config(30.0, "controller", "weights", {"a->b": 2})
    store.maintain(5000.0)
    assert [r.id for r in store.configs(0, 5000)] == [last] and first != last


def test_bad_parameters():
    with pytest.raises(StoreError, match="bucket_s"):
        TelemetryStore(retention_s=10, raw_s=100)
    with pytest.raises(StoreError, match="/nonexistent/dir/t.db"):
        TelemetryStore("/nonexistent/dir/t.db")


def test_delay_mape():
    from telemetry.accuracy import delay_mape

    predicted = {("a", "b"): 1.1, ("b", "a"): 0.5, ("a", "c"): 3.0}
    measured = {("a", "b"): 1.0, ("b", "a"): 1.0, ("c", "a"): 2.0, ("b", "c"): 0.0}
    assert delay_mape(predicted, measured) == pytest.approx((0.1 + 0.5) / 2)
    assert delay_mape(predicted, {("c", "a"): 1.0}) is None


def test_a_refused_batch_writes_nothing_and_the_store_stays_writable(tmp_path):
    """An OpenFlow counter the switch does not support reads all-ones (2**64 - 1), more than SQLite's
    INTEGER holds: that batch is refused whole, with an error naming the table, and the next one lands."""
    store = TelemetryStore(tmp_path / "t.db")
    unsupported = LinkSample(1.0, "s1", "s2", 2**64 - 1, 0, 0, None)
    with pytest.raises(StoreError, match="nothing written to link_stats"):
        store.add_link_samples([sample(1.0, tx=100), unsupported])
    assert store.link_samples(0.0, 10.0) == []
    store.add_link_samples([sample(2.0, tx=200)])
    store.add_traffic_matrix(2.0, {("s1", "s2"): 1e6})
    assert [s.tx_bytes for s in store.link_samples(0.0, 10.0)] == [200]
    assert len(store.traffic_matrices(0.0, 10.0)) == 1
    assert store.maintain(now=3.0)["link_stats_expired"] == 0


def test_counters_a_switch_does_not_support_are_stored_as_missing(tmp_path):
    store = TelemetryStore(tmp_path / "t.db")
    store.add_link_samples([LinkSample(1.0, "s1", "s2", 500, supported_counter(UNSUPPORTED_COUNTER),
                                       supported_counter(UNSUPPORTED_COUNTER), None)])
    (row,) = store.link_samples(0.0, 2.0)
    assert (row.tx_bytes, row.tx_packets, row.tx_dropped) == (500, None, None)


@pytest.mark.parametrize("bad, words", [
    (LinkSample(1.0, "s1", "s2", 10, 1, 0, float("nan")), "link s1->s2: utilization must be a finite number"),
    (LinkSample(float("inf"), "s1", "s2", 10, 1, 0, None), "ts must be a finite number"),
    (LinkSample(1.0, "s1", "s2", -1, 1, 0, None), "link s1->s2: tx_bytes must be a whole number"),
    (LinkSample(1.0, "s1", "s2", 2.5, 1, 0, None), "link s1->s2: tx_bytes must be a whole number"),
])
def test_non_finite_or_out_of_range_values_are_refused_by_name(bad, words):
    store = TelemetryStore()
    with pytest.raises(StoreError, match=words):
        store.add_link_samples([bad])
    with pytest.raises(StoreError, match=r"traffic s1->s2: rate_bps must be a finite number >= 0, got nan"):
        store.add_traffic_matrix(1.0, {("s1", "s2"): float("nan")})
    with pytest.raises(StoreError, match=r"measured delay s1->s2: delay_s .* got -1"):
        store.add_path_delays(1.0, "measured", {("s1", "s2"): -1})
    store.add_link_samples([sample(3.0)])
    assert len(store.link_samples(0.0, 10.0)) == 1


def test_a_store_with_corrupted_pages_is_refused_at_open_with_the_way_forward(tmp_path):
    path = tmp_path / "t.db"
    store = TelemetryStore(path)
    store.add_link_samples([sample(t, tx=t) for t in range(2000)])
    store.close()
    with sqlite3.connect(path) as db:
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    data = bytearray(path.read_bytes())
    page = 4096
    data[2 * page + 16: 3 * page] = b"\xff" * (page - 16)  # wreck a b-tree page, keep the header intact
    path.write_bytes(bytes(data))
    with pytest.raises(StoreError, match=rf"damaged, cannot be used: .*move it aside with its journal \(mv {path} {path}.damaged;"):
        TelemetryStore(path)
    path.write_bytes(b"not a database at all" * 100)
    with pytest.raises(StoreError, match="damaged, cannot be used"):
        TelemetryStore(path)
    with pytest.raises(StoreError, match="cannot be opened") as missing_directory:
        TelemetryStore(tmp_path / "no-such-directory" / "t.db")
    assert "damaged" not in str(missing_directory.value)


def test_a_store_from_before_missing_counters_is_rebuilt_with_its_rows(tmp_path):
    path = tmp_path / "old.db"
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE link_stats (ts REAL NOT NULL, src TEXT NOT NULL, dst TEXT NOT NULL, "
                   "tx_bytes INTEGER NOT NULL, tx_packets INTEGER NOT NULL, tx_dropped INTEGER NOT NULL, "
                   "utilization REAL, bucket_s REAL NOT NULL DEFAULT 0)")
        db.execute("INSERT INTO link_stats VALUES (1.0, 's1', 's2', 100, 1, 0, 0.5, 0)")
    store = TelemetryStore(path)
    store.add_link_samples([LinkSample(2.0, "s1", "s2", 200, None, None, None)])
    assert [(s.tx_bytes, s.tx_packets) for s in store.link_samples(0.0, 3.0)] == [(100, 1), (200, None)]


WRITER = """
import sys
from telemetry.store import LinkSample, TelemetryStore
store = TelemetryStore(sys.argv[1])
print("ready", flush=True)
batch = 0
while True:
    store.add_link_samples([LinkSample(float(batch), "s1", f"n{i}", batch, 0, 0, None) for i in range(50)])
    batch += 1
"""


def test_kill_9_under_load_loses_at_most_the_batch_in_flight(tmp_path):
    """A writer killed with SIGKILL mid-stream leaves only whole batches of 50 rows, numbered without gaps."""
    path = tmp_path / "t.db"
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(path)], stdout=subprocess.PIPE, text=True)
    assert writer.stdout.readline().strip() == "ready"
    time.sleep(1.0)
    writer.kill()
    writer.wait()
    rows = TelemetryStore(path).link_samples(-1.0, 1e9)
    per_batch = collections.Counter(int(s.ts) for s in rows)
    assert len(per_batch) > 10
    assert set(per_batch.values()) == {50}
    assert sorted(per_batch) == list(range(len(per_batch)))
