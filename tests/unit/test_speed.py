"""The speed report's scaling table: one row per size with the state's paths and hops, every model timed."""

from ndt.cmd_predict import load_model
from twin.models.speed import all_pairs_state, peak_mib, scaling


def test_scaling_rows_count_paths_and_hops_and_time_every_model():
    qt = load_model("qt")
    rows = scaling(qt, {"again": qt}, sizes=(6, 9))
    assert [r["nodes"] for r in rows] == [6, 9]
    for row in rows:
        state = all_pairs_state(row["nodes"])
        assert row["paths"] == row["nodes"] * (row["nodes"] - 1) == len(state.flows)
        assert row["hops"] == sum(map(len, state.flow_links)) >= row["paths"]
        assert row["infer_s"] > 0 and row["again_infer_s"] > 0 and row["peak_mib"] > 0


def test_peak_memory_counts_the_buffer_a_twin_keeps_between_calls():
    twin = load_model("routenet")
    state = all_pairs_state(60)  # its per-hop states are the largest array of a pass
    twin.predict_delays([state])  # the per-hop buffer is now kept
    kept = peak_mib(lambda: twin.predict_delays([state]))
    counted = peak_mib(lambda: twin.predict_delays([state]), twin.release_buffers)
    hops = sum(map(len, state.flow_links))
    assert counted - kept >= 0.5 * hops * 32 * 4 / 2**20
