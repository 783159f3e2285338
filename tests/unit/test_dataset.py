"""Dataset generation: seeded, sharded, resumable, reproducible byte for byte on Ray, and readable back."""

import numpy as np
import pytest

from twin.data.dataset import DatasetConfig, generate, generate_shard, iter_samples, make_state, shard_path
from twin.state.errors import StateError

SMALL = DatasetConfig(samples=5, min_nodes=6, max_nodes=9, shard_size=2, packets_per_flow=150, seed=11,
                      real_fraction=0.0, failure_fraction=0.5)


def test_states_are_seeded_and_varied():
    a, meta_a = make_state(SMALL, 3)
    b, _ = make_state(SMALL, 3)
    c, _ = make_state(SMALL, 4)
    assert a == b
    assert a != c
    assert SMALL.min_nodes <= len(a.nodes) <= SMALL.max_nodes
    assert len(a.flows) == len(a.nodes) * (len(a.nodes) - 1)
    assert a.utilization().max() == pytest.approx(meta_a["load"])


def test_real_topologies_are_drawn():
    config = DatasetConfig(real_fraction=1.0, seed=2)
    state, meta = make_state(config, 0)
    assert meta["topology"].split("/")[0] in ("sndlib", "topozoo")
    assert 25 <= len(state.nodes) <= 50


def test_generate_resume_and_read(tmp_path):
    first = generate(SMALL, tmp_path, workers=1, progress=False)
    assert first["written"] == 5 and sorted(p.name for p in tmp_path.glob("shard-*")) == [
        "shard-00000.jsonl.gz", "shard-00001.jsonl.gz", "shard-00002.jsonl.gz"]
    # a lost shard is regenerated, identically; the others are skipped
    kept = _shard_bytes(tmp_path)
    shard_path(tmp_path, 1).unlink()
    again = generate(SMALL, tmp_path, workers=1, progress=False)
    assert again["written"] == 2 and again["skipped"] == 3
    assert _shard_bytes(tmp_path) == kept
    samples = list(iter_samples(tmp_path))
    assert [s.meta["index"] for s in samples] == [0, 1, 2, 3, 4]
    for s in samples:
        assert len(s.labels["delay"]) == len(s.state.flows)
        assert len(s.labels["utilization"]) == len(s.state.links)
        np.testing.assert_array_equal(s.labels["sent"], s.labels["delivered"] + np.round(s.labels["loss"] * s.labels["sent"]))
        assert np.nanmin(s.labels["delay"]) > 0


def test_resume_with_other_settings_is_refused(tmp_path):
    generate(DatasetConfig(**{**SMALL.__dict__, "samples": 1}), tmp_path, workers=1, progress=False)
    with pytest.raises(StateError, match="other settings"):
        generate(DatasetConfig(**{**SMALL.__dict__, "samples": 1, "seed": 99}), tmp_path, workers=1, progress=False)


def test_a_damaged_manifest_or_shard_is_named_and_nothing_is_overwritten(tmp_path):
    generate(DatasetConfig(**{**SMALL.__dict__, "samples": 3}), tmp_path, workers=1, progress=False)
    config = DatasetConfig(**{**SMALL.__dict__, "samples": 3})
    shard = shard_path(tmp_path, 0)
    shard.write_bytes(b"not gzip")
    with pytest.raises(StateError, match=r"shard-00000.jsonl.gz: damaged shard .*delete it"):
        generate(config, tmp_path, workers=1, progress=False)
    assert shard.read_bytes() == b"not gzip"
    (tmp_path / "dataset.json").write_text("{bad")
    with pytest.raises(StateError, match="dataset.json: not a readable dataset manifest"):
        generate(config, tmp_path, workers=1, progress=False)
    with pytest.raises(StateError, match="no such directory"):
        list(iter_samples(tmp_path / "missing"))


def test_a_run_that_makes_nothing_leaves_nothing(tmp_path):
    from twin.data.ray_engine import RayError

    with pytest.raises(RayError, match="no Ray cluster answers at 127.0.0.1:1"):
        generate(SMALL, tmp_path / "new", address="127.0.0.1:1", progress=False)
    assert not (tmp_path / "new").exists()


def test_ray_workers_write_the_same_bytes_as_one_process(tmp_path):
    config = DatasetConfig(**{**SMALL.__dict__, "samples": 4})
    serial = generate(config, tmp_path / "serial", workers=1, progress=False)
    parallel = generate(config, tmp_path / "ray", workers=2, progress=False)
    assert (serial["engine"], parallel["engine"]) == ("local", "ray")
    assert _shard_bytes(tmp_path / "serial") == _shard_bytes(tmp_path / "ray")
    timed = [s.meta["sim_wall_s"] for s in iter_samples(tmp_path / "ray")]
    assert len(timed) == 4 and all(t > 0 for t in timed)


def test_a_shard_is_a_self_contained_job(tmp_path):
    generate(SMALL, tmp_path / "pool", workers=1, progress=False)
    (tmp_path / "job").mkdir()
    assert generate_shard(SMALL, 2, tmp_path / "job") == 1
    assert _shard_bytes(tmp_path / "job") == {name: data for name, data in _shard_bytes(tmp_path / "pool").items()
                                               if name == shard_path(tmp_path, 2).name}
    assert [s.meta["index"] for s in iter_samples(tmp_path / "job")] == [4]
    assert "sim_wall_s" in next(iter_samples(tmp_path / "job")).meta


def _shard_bytes(directory):
    """Every shard file of a dataset by name, as bytes."""
    return {p.name: p.read_bytes() for p in sorted(directory.glob("shard-*"))}


def test_labelled_states_written_as_a_dataset_read_back(tmp_path):
    from twin.data.dataset import label_state, write_samples

    config = DatasetConfig(samples=3, min_nodes=4, max_nodes=5, real_fraction=0.0, packets_per_flow=200, seed=4)
    samples = [label_state(*make_state(config, i), packets_per_flow=200) for i in range(3)]
    write_samples(tmp_path, samples, shard_size=2)
    again = list(iter_samples(tmp_path))
    assert len(list(tmp_path.glob("shard-*.jsonl.gz"))) == 2 and [s.meta["index"] for s in again] == [0, 1, 2]
    np.testing.assert_allclose(again[2].labels["delay"], samples[2].labels["delay"])
    assert again[1].state == samples[1].state
