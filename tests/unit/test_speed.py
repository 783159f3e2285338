"""The speed report's scaling table: one row per size with the state's paths and hops, every model timed."""

from ndt.cmd_predict import load_model
from twin.models.speed import all_pairs_state, scaling


def test_scaling_rows_count_paths_and_hops_and_time_every_model():
    qt = load_model("qt")
    rows = scaling(qt, {"again": qt}, sizes=(6, 9))
    assert [r["nodes"] for r in rows] == [6, 9]
    for row in rows:
        state = all_pairs_state(row["nodes"])
        assert row["paths"] == row["nodes"] * (row["nodes"] - 1) == len(state.flows)
        assert row["hops"] == sum(map(len, state.flow_links)) >= row["paths"]
        assert row["infer_s"] > 0 and row["again_infer_s"] > 0 and row["peak_mib"] > 0
