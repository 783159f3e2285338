"""ndt replay: past states rebuilt from a telemetry store written with the real store API, on a ring of
five and the QT model (fast, deterministic). The "network" measures the QT delays of the state truly in
place, so a replay that rebuilt the wrong routing, links or traffic would not match it."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys

import numpy as np
import pytest

from analysis.replay import ReplayError, Step, _pair_means, counterfactual, open_store, replay, suspects
from telemetry.store import DECISION_KIND, LINK_KIND, ROUTING_KIND, LinkSample, PairValue, TelemetryStore
from twin.models.intervals import Intervals, SafeRange
from twin.models.qt import QueueingModel
from twin.state.model import Flow, Link, NetworkState

T0 = 1_796_407_200.0  # 2026-12-04T18:00:00Z
RING = [("a", "b"), ("b", "c"), ("c", "d"), ("d", "e"), ("e", "a")]
RATES = {("a", "c"): 3e6, ("b", "d"): 2e6, ("c", "e"): 1.5e6, ("e", "b"): 1e6, ("d", "a"): 2.5e6, ("c", "a"): 1e6}
PUSH_AT, DOWN_AT, ROLLBACK_AT, END = T0 + 65, T0 + 150, T0 + 200, T0 + 300
PUSHED = {("a", "b"): 5.0}  # a->c leaves a-b-c for a-e-d-c, e->b leaves e-a-b for e-d-c-b
SLOW_LINK = ("d", "c")  # the network delays every path crossing it threefold
PACKET_BYTES = 500


def base_state() -> NetworkState:
    links = tuple(Link(x, y, 1e7, buffer=64) for p, q in RING for x, y in ((p, q), (q, p)))
    return NetworkState(nodes=("a", "b", "c", "d", "e"), links=links, flows=(Flow("a", "b", 1e6),), name="ring5")


def weights_at(t: float) -> dict:
    weights = {(lk.src, lk.dst): lk.weight for lk in base_state().links}
    if PUSH_AT <= t < ROLLBACK_AT:
        weights.update(PUSHED)
    return weights


def true_state(t: float) -> NetworkState:
    """The state truly in place at ``t``, built without the code under test."""
    state = base_state()
    w = weights_at(t)
    state = state.with_weights([w[(lk.src, lk.dst)] for lk in state.links])
    if t >= DOWN_AT:
        state = state.without_links([("b", "c"), ("c", "b")])
    return state.with_flows(Flow(s, d, rate=r, packet_size=8.0 * PACKET_BYTES) for (s, d), r in sorted(RATES.items()))


def network_delays(state: NetworkState, slow: bool = True) -> dict:
    """What the network measured: the QT delays, three times larger on paths crossing SLOW_LINK."""
    delays = QueueingModel().predict_delays([state])[0]
    out = {}
    for i, flow in enumerate(state.flows):
        path = state.flow_path(i)
        crosses = any((a, b) == SLOW_LINK for a, b in zip(path, path[1:]))
        out[(flow.src, flow.dst)] = float(delays[i]) * (3.0 if slow and crosses else 1.0)
    return out


def record_routing(store: TelemetryStore, ts: float, who: str) -> None:
    w = weights_at(ts)
    store.add_config(ts, who, "weights", {f"{a}->{b}": v for (a, b), v in w.items()})
    store.add_config(ts, who, ROUTING_KIND, {"weights": {f"{a}->{b}": v for (a, b), v in w.items()}})


def write_store(path, slow: bool = True) -> None:
    """Five minutes of telemetry: the traffic matrix every 2 s, port counters every 2 s, probe delays every
    10 s (the mean of the 10 s before), a push, a link failure, a rollback and the loop's decisions."""
    store = TelemetryStore(path)
    sent = {}
    for k in range(150):
        ts = T0 + 2 * k + 1
        store.add_traffic_matrix(ts, RATES)
        samples = []
        for lk, load in zip(true_state(ts).links, true_state(ts).link_loads()):
            bytes_, packets = sent.get((lk.src, lk.dst), (0, 0))
            sent[(lk.src, lk.dst)] = (bytes_ + int(2 * load / 8), packets + int(2 * load / 8 / PACKET_BYTES))
            samples.append(LinkSample(ts, lk.src, lk.dst, *sent[(lk.src, lk.dst)], 0, load / lk.capacity))
        store.add_link_samples(samples)
    for k in range(1, 31):
        ts = T0 + 10 * k - 0.5
        store.add_path_delays(ts, "probe", network_delays(true_state(ts), slow))
    record_routing(store, PUSH_AT, "ndt loop (start)")
    store.add_config(DOWN_AT, "ndt controller", LINK_KIND, {"down": ["b->c", "c->b"]})
    record_routing(store, ROLLBACK_AT, "ndt loop: rollback")
    for ts, down in ((T0 + 30, []), (T0 + 180, ["b->c", "c->b"]), (T0 + 250, ["b->c", "c->b"])):
        store.add_config(ts, "ndt loop", DECISION_KIND, {"ts": ts, "action": "keep", "down": down})
    store.close()


@pytest.fixture(scope="module")
def store_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("replay") / "telemetry.db"
    write_store(path)
    return path


@pytest.fixture(scope="module")
def report(store_path):
    store = open_store(store_path)
    try:
        return replay(store, base_state(), T0, END, QueueingModel(), step_s=10.0)
    finally:
        store.close()


def step_at(report: dict, t: float) -> dict:
    return next(s for s in report["steps"] if s["ts"] == t)


def test_steps_follow_the_routing_records_and_the_link_events(report):
    assert len(report["steps"]) == 30 and report["measured_kind"] == "probe"
    assert step_at(report, T0)["routing"] is None and step_at(report, T0)["down"] == []
    changed = [s["ts"] - T0 for s in report["steps"] if s["changed"]]
    assert changed == [60, 70, 150, 200]  # a probe row averages the 10 s before it: the next step mixes too
    pushed = step_at(report, T0 + 70)
    assert pushed["routing"] is not None and step_at(report, T0 + 60)["routing"] is None
    assert step_at(report, T0 + 140)["down"] == []
    assert step_at(report, T0 + 150)["down"] == step_at(report, T0 + 290)["down"] == ["b->c", "c->b"]
    assert step_at(report, T0 + 200)["routing"] > pushed["routing"]
    kinds = [(e["kind"], e["ts"]) for e in report["events"]]
    assert kinds == [("push", PUSH_AT), ("link", DOWN_AT), ("rollback", ROLLBACK_AT)]
    assert report["events"][0]["links_changed"] == 1 and report["events"][1]["label"] == "link b-c down"


def test_paths_predicted_on_the_state_in_place(report):
    """Where the measurement is the truth's QT delay, the replay predicts it exactly (same state)."""
    before = step_at(report, T0 + 20)
    during = step_at(report, T0 + 100)
    after = step_at(report, T0 + 250)
    for step, t in ((before, T0 + 20), (during, T0 + 100), (after, T0 + 250)):
        truth = true_state(t)
        qt = dict(zip([(f.src, f.dst) for f in truth.flows], QueueingModel().predict_delays([truth])[0]))
        for row in step["paths"]:
            assert row["predicted"] == pytest.approx(qt[(row["src"], row["dst"])], rel=1e-6)
    rows = {(r["src"], r["dst"]): r for r in during["paths"]}
    assert rows[("a", "c")]["residual"] == pytest.approx(2.0)  # a-e-d-c crosses d->c after the push
    assert before["packet_bits"] == pytest.approx(8.0 * PACKET_BYTES, rel=0.01)


def test_means_are_traffic_weighted_over_the_pairs_with_both(report):
    step = step_at(report, T0 + 100)
    rows = [r for r in step["paths"] if r["measured"] is not None]
    rates = np.array([r["rate"] for r in rows])
    assert step["pairs"] == len(RATES)
    assert step["predicted_mean"] == pytest.approx(np.sum(rates * [r["predicted"] for r in rows]) / rates.sum())
    assert step["measured_mean"] == pytest.approx(np.sum(rates * [r["measured"] for r in rows]) / rates.sum())
    assert step["measured_mean"] > step["predicted_mean"]
    assert step["predicted_mean_all"] == pytest.approx(step["predicted_mean"])  # every demand was measured


def test_a_pairs_measured_rows_average_by_their_samples_where_every_row_has_them():
    means = _pair_means([PairValue(1.0, "a", "b", 0.001, 90), PairValue(2.0, "a", "b", 0.005, 10),
                         PairValue(1.0, "a", "c", 0.001, 90), PairValue(2.0, "a", "c", 0.005, None)])
    assert means == {("a", "b"): pytest.approx(0.0014), ("a", "c"): pytest.approx(0.003)}


def test_the_slow_link_is_the_first_suspect(report):
    first = report["suspects"][0]
    assert first["link"] == "d->c" and first["score"] == pytest.approx(1.0) and first["agreeing"] == 0
    assert first["mean_residual"] == pytest.approx(2.0)
    assert report["judged_by"] == {"interval": 0, "tolerance": 30 * len(RATES)}  # no intervals given
    assert all(s["score"] < 1.0 for s in report["suspects"][1:])


@pytest.mark.parametrize("ratio_hi, first", [(1.2, "d->c"), (3.5, None)])
def test_prediction_intervals_decide_where_they_apply(store_path, ratio_hi, first):
    """Measured 3x the prediction disagrees with an interval up to 1.2x, not with one up to 3.5x."""
    safe = SafeRange(nodes=(2, 100), max_utilization=1.0, buffer=(1, 1000), hops=16, time_dists=("poisson",),
                     size_dists=("deterministic",))
    intervals = Intervals(model="qt", nominal=0.9, ratio_lo=[0.8] * 4, ratio_hi=[ratio_hi] * 4, paths=[100] * 4,
                          safe=safe)
    store = open_store(store_path)
    try:
        result = replay(store, base_state(), T0, END, QueueingModel(), step_s=10.0, intervals=intervals,
                        tolerance=0.01)
    finally:
        store.close()
    assert result["judged_by"] == {"interval": 180, "tolerance": 0}
    assert (result["suspects"][0]["link"] if result["suspects"] else None) == first


def test_with_ecmp_a_path_marks_every_equal_cost_route():
    square = [("a", "b"), ("b", "c"), ("c", "d"), ("d", "a")]
    links = tuple(Link(x, y, 1e7) for p, q in square for x, y in ((p, q), (q, p)))
    state = NetworkState(nodes=("a", "b", "c", "d"), links=links, flows=(Flow("a", "c", 1e6), Flow("a", "b", 1e6)),
                         ecmp=True)
    step = Step(T0, T0 + 10, None, [], False, paths=[{"disagree": True, "residual": 1.0},
                                                     {"disagree": False, "residual": 0.0}])
    ranked = suspects([(step, state)])
    assert {r["link"]: r["score"] for r in ranked} == {"a->b": 0.5, "b->c": 1.0, "a->d": 1.0, "d->c": 1.0}


def test_no_suspect_when_twin_and_network_agree(tmp_path):
    path = tmp_path / "agree.db"
    write_store(path, slow=False)
    store = open_store(path)
    try:
        result = replay(store, base_state(), T0, END, QueueingModel(), step_s=30.0)
    finally:
        store.close()
    assert result["suspects"] == []
    assert [s["ts"] - T0 for s in result["steps"] if s["changed"]] == [60, 150, 180]  # push, link down, rollback
    assert all(s["disagreeing"] == 0 for s in result["steps"] if not s["changed"])


def test_the_counterfactual_undoes_the_push(store_path):
    store = open_store(store_path)
    try:
        result = counterfactual(store, base_state(), T0 + 100, QueueingModel(), step_s=10.0)
    finally:
        store.close()
    assert result["push"]["ts"] == PUSH_AT and result["push"]["replaced"] is None
    moved = {(p["src"], p["dst"]): (p["routes_with"], p["routes_without"])
             for p in result["paths"] if p["path_changed"]}
    assert result["paths_changed"] == 2 and moved == {("a", "c"): ([["a", "e", "d", "c"]], [["a", "b", "c"]]),
                                                      ("e", "b"): ([["e", "d", "c", "b"]], [["e", "a", "b"]])}
    assert result["with_push"]["predicted_mean"] != pytest.approx(result["without_push"]["predicted_mean"])
    assert result["difference"] == pytest.approx(result["without_push"]["predicted_mean"]
                                                 - result["with_push"]["predicted_mean"])


def test_after_a_rollback_the_counterfactual_names_the_push_not_the_rollback(store_path):
    store = open_store(store_path)
    try:
        result = counterfactual(store, base_state(), ROLLBACK_AT + 40, QueueingModel(), step_s=10.0)
    finally:
        store.close()
    assert result["push"]["ts"] == PUSH_AT and "rollback" not in result["push"]["who"]
    assert result["paths_changed"] == 0  # the rollback already undid it: without it, nothing would differ
    assert result["difference"] == pytest.approx(0.0)


def test_bad_windows_are_one_clear_line(store_path):
    store = open_store(store_path)
    try:
        with pytest.raises(ReplayError, match="no telemetry between .* the store's traffic runs from 2026-12-04T18:00"):
            replay(store, base_state(), T0 + 3600, T0 + 7200, QueueingModel())
        with pytest.raises(ReplayError, match="the window is empty: from .* is not before to"):
            replay(store, base_state(), END, T0, QueueingModel())
        with pytest.raises(ReplayError, match="at most 5000"):
            replay(store, base_state(), T0, T0 + 86400, QueueingModel(), step_s=1.0)
        with pytest.raises(ReplayError, match="no push at or before"):
            counterfactual(store, base_state(), T0 + 20, QueueingModel())
        other = NetworkState(nodes=("a", "b"), links=(Link("a", "b", 1e7), Link("b", "a", 1e7)))
        with pytest.raises(ReplayError, match="other links than the state"):
            replay(store, other, T0, END, QueueingModel())
    finally:
        store.close()


def test_the_store_is_opened_read_only(store_path, tmp_path):
    before, beside = store_path.read_bytes(), sorted(store_path.parent.iterdir())
    store = open_store(store_path)
    with pytest.raises(Exception, match="readonly"):
        store.add_traffic_matrix(T0, {("a", "b"): 1.0})
    store.close()
    assert store_path.read_bytes() == before and sorted(store_path.parent.iterdir()) == beside
    with pytest.raises(ReplayError, match="no such file"):
        open_store(tmp_path / "missing.db")
    assert not (tmp_path / "missing.db").exists()
    junk = tmp_path / "junk.db"
    junk.write_text("not a database\n" * 100)
    with pytest.raises(ReplayError, match="not an SQLite database"):
        open_store(junk)
    assert junk.read_text() == "not a database\n" * 100


def test_a_store_from_before_delay_counts_is_read_as_it_is(tmp_path):
    path = tmp_path / "old.db"
    with sqlite3.connect(path) as db:
        db.executescript("""
            CREATE TABLE traffic (ts REAL, src TEXT, dst TEXT, rate_bps REAL, bucket_s REAL);
            CREATE TABLE link_stats (ts REAL, src TEXT, dst TEXT, tx_bytes INTEGER);
            CREATE TABLE config (id INTEGER, ts REAL, who TEXT, kind TEXT, payload TEXT, predicted TEXT);
            CREATE TABLE path_delay (ts REAL, kind TEXT, src TEXT, dst TEXT, delay_s REAL, bucket_s REAL);
            INSERT INTO path_delay VALUES (1.0, 'measured', 'a', 'b', 0.002, 0);""")
    before = path.read_bytes()
    store = open_store(path)
    assert store.path_delays("measured", 0.0, 2.0) == [PairValue(1.0, "a", "b", 0.002, None)]
    store.close()
    assert path.read_bytes() == before


def test_a_store_the_controller_is_writing_is_read_through_its_log(tmp_path):
    path = tmp_path / "live.db"
    writer = TelemetryStore(path)
    try:
        writer.add_traffic_matrix(T0, {("a", "b"): 1e6})
        reader = open_store(path)
        writer.add_traffic_matrix(T0 + 1, {("a", "b"): 2e6})
        assert [r.value for r in reader.traffic_matrices(T0, T0 + 2)] == [1e6, 2e6]
        assert reader.traffic_span() == (T0, T0 + 1)
        reader.close()
    finally:
        writer.close()


def ndt(*args):
    return subprocess.run([sys.executable, "-m", "ndt.cli", "replay", *args], capture_output=True, text=True,
                          timeout=300)


def test_cli_json_contract_plot_and_whatif(store_path, tmp_path):
    state = tmp_path / "ring.json"
    base_state().save(state)
    plot = tmp_path / "replay.png"
    proc = ndt("--store", str(store_path), "--state", str(state), "--from", "2026-12-04T18:00:00Z",
               "--to", str(END), "--model", "qt", "--whatif-at", str(T0 + 100), "--plot", str(plot), "--json")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert len(report["steps"]) == 30 and {"ts", "predicted_mean", "measured_mean"} <= set(report["steps"][0])
    assert report["suspects"][0]["link"] == "d->c"
    assert report["whatif"]["paths_changed"] == 2
    assert report["judged_by"] == {"interval": 0, "tolerance": 180}  # QT's intervals start at 10 nodes
    assert plot.stat().st_size > 10_000
    text = ndt("--store", str(store_path), "--state", str(state), "--from", str(T0), "--to", str(END), "--model", "qt")
    assert text.returncode == 0, text.stderr
    assert "d->c" in text.stdout and "link b-c down" in text.stdout and "in-band probes" in text.stdout


@pytest.mark.parametrize("args, message", [
    (["--from", "2027-01-01T00:00:00Z", "--to", "2027-01-01T01:00:00Z"], "no telemetry between"),
    (["--from", str(END), "--to", str(T0)], "the window is empty"),
    (["--from", "yesterday", "--to", str(END)], "expected Unix seconds or ISO 8601"),
    (["--from", str(T0), "--to", str(END), "--whatif-at", str(END + 10)], "outside the window"),
])
def test_cli_bad_input_is_one_line(store_path, tmp_path, args, message):
    state = tmp_path / "ring.json"
    base_state().save(state)
    proc = ndt("--store", str(store_path), "--state", str(state), "--model", "qt", *args)
    assert proc.returncode == 2 and message in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 or "usage:" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_cli_refuses_a_file_that_is_not_a_store(tmp_path):
    state = tmp_path / "ring.json"
    base_state().save(state)
    notes = tmp_path / "notes.db"
    notes.write_text("hello\n")
    proc = ndt("--store", str(notes), "--state", str(state), "--from", str(T0), "--to", str(END), "--model", "qt")
    assert proc.returncode == 2 and "not an SQLite database" in proc.stderr and notes.read_text() == "hello\n"
    assert len(proc.stderr.strip().splitlines()) == 1
