"""The compiled forward pass gives TensorFlow's numbers: random and shipped weights, every model kind
(RouteNet-F's three heads too), mixed traffic, batches of states of different sizes; the width it does not run falls back to TensorFlow;
a prediction from the command line never imports TensorFlow."""

import copy
import json
import subprocess
import sys

import h5py
import numba
import numpy as np
import pytest

from twin.data.dataset import DatasetConfig, make_state
from twin.models.features import CLASS_FEATURES, build_batch
from twin.models.inference import CompiledTwin, load_compiled, load_predictor
from twin.models.kernels import STATE_DIM, _dealt
from twin.models.learned import LearnedTwin, build, load_twin, make_network
from twin.models.model_files import CLASS_KINDS, MODELS_DIR, ModelFileError, Normalizer
from twin.state.model import POLICIES

MIXED = DatasetConfig(samples=3, min_nodes=6, max_nodes=14, real_fraction=0.0, traffic="mixed", seed=77)
SCHEDULED = DatasetConfig(samples=2, min_nodes=6, max_nodes=10, real_fraction=0.0, traffic="mixed",
                          scheduled_fraction=1.0, seed=78)


def _states():
    states = [make_state(MIXED, i)[0] for i in range(3)] + [make_state(SCHEDULED, i)[0] for i in range(2)]
    assert len({len(s.nodes) for s in states}) > 1 and sum(s.scheduled for s in states) == 2
    return states


def _saved_random_model(kind: str, state_dim: int, directory) -> LearnedTwin:
    states = _states()
    norm = Normalizer.fit(build_batch(states), classes=kind in CLASS_KINDS)
    net = make_network(kind, {"state_dim": state_dim, "iterations": 3})
    build(net, norm, build_batch(states[:1]))
    twin = LearnedTwin(net, norm, kind)
    twin.save(directory, kind)
    return twin


@pytest.mark.parametrize("kind", ["routenet_e", "routenet_f", "rnn"])
def test_compiled_equals_tensorflow_on_random_weights(kind, tmp_path):
    reference = _saved_random_model(kind, STATE_DIM, tmp_path)
    compiled = load_compiled(kind, tmp_path)
    states = _states()
    got, want = compiled.predict_delays(states), reference.predict_delays(states)
    assert [len(g) for g in got] == [len(s.flows) for s in states]
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, rtol=2e-5)


def test_compiled_routenet_f_gives_tensorflow_s_delay_jitter_and_loss(tmp_path):
    reference = _saved_random_model("routenet_f", STATE_DIM, tmp_path)
    compiled = load_compiled("routenet_f", tmp_path)
    assert compiled.heads == reference.heads == ("delay", "jitter", "loss")
    states = _states()
    batch = build_batch(states)
    got, want = compiled.forward(batch), reference.forward(batch).numpy()
    assert got.shape == want.shape == (batch.n_paths, 3)
    np.testing.assert_allclose(got, want, rtol=2e-5, atol=1e-12)
    for mine, theirs in zip(compiled.predict_metrics(states), reference.predict_metrics(states)):
        for head in compiled.heads:
            np.testing.assert_allclose(mine[head], theirs[head], rtol=2e-5, atol=1e-12)


def test_the_rnn_reads_the_features_of_the_queue_each_hop_waits_in(tmp_path):
    # the same batch with one scheduled queue's policy and weight share changed, nothing else
    twin = _saved_random_model("rnn", STATE_DIM, tmp_path)
    compiled = load_compiled("rnn", tmp_path)
    batch = build_batch(_states()[3:])
    assert len(batch.class_link) > len(batch.link_buffer)  # ports of several queues
    changed = copy.copy(batch)
    changed.class_x = batch.class_x.copy()
    queue = int(batch.hop_class[0])
    policy = [CLASS_FEATURES.index(f"policy_{p}") for p in POLICIES]
    changed.class_x[queue, policy] = changed.class_x[queue, policy][::-1]
    changed.class_x[queue, CLASS_FEATURES.index("weight_share")] += 0.5
    for forward in (compiled.forward, lambda b: twin.forward(b).numpy()):
        before, after = forward(batch), forward(changed)
        moved = np.abs(after - before) > 1e-6 * np.abs(before)
        assert moved.any() and moved.sum() < len(moved)  # the paths through that queue, not all


@pytest.mark.parametrize("stem", ["routenet_e", "routenet_f", "rnn"])
def test_compiled_equals_tensorflow_on_shipped_weights(stem):
    if not (MODELS_DIR / f"{stem}.weights.h5").exists():
        pytest.skip("no shipped weights")
    state = make_state(DatasetConfig(samples=1, min_nodes=40, max_nodes=40, real_fraction=0.0, seed=5,
                                     scheduled_fraction=1.0 if stem == "routenet_f" else 0.0), 0)[0]
    batch = build_batch([state])
    np.testing.assert_allclose(load_compiled(stem).forward(batch), load_twin(stem).forward(batch).numpy(), rtol=2e-5,
                               atol=1e-12)


@pytest.mark.parametrize("n_chunks,threads", [(1, 2), (7, 2), (8, 2), (10, 3), (5, 1)])
def test_chunks_are_dealt_round_robin_each_once(n_chunks, threads):
    per_thread = -(-n_chunks // threads)
    blocks = [[_dealt(task, n_chunks, threads) for task in range(j * per_thread, (j + 1) * per_thread)]
              for j in range(threads)]
    dealt = sorted(c for block in blocks for c in block if c >= 0)
    assert dealt == list(range(n_chunks))
    for j, block in enumerate(blocks):
        assert [c for c in block if c >= 0] == list(range(j, n_chunks, threads))


@pytest.mark.parametrize("stem", ["routenet_e", "routenet_f", "rnn"])
def test_one_thread_and_all_threads_predict_alike(stem):
    state = make_state(DatasetConfig(samples=1, min_nodes=40, max_nodes=40, real_fraction=0.0, seed=5), 0)[0]
    twin = load_compiled(stem)
    batch = build_batch([state])
    everyone = twin.forward(batch)
    threads = numba.get_num_threads()
    numba.set_num_threads(1)
    try:
        alone = twin.forward(batch)
    finally:
        numba.set_num_threads(threads)
    np.testing.assert_allclose(alone, everyone, rtol=1e-5, atol=1e-12)


def test_other_widths_run_on_tensorflow(tmp_path):
    reference = _saved_random_model("routenet_e", 8, tmp_path)
    with pytest.raises(ModelFileError, match="state_dim 8"):
        load_compiled("routenet_e", tmp_path)
    predictor = load_predictor("routenet_e", tmp_path)
    assert isinstance(predictor, LearnedTwin)
    np.testing.assert_allclose(predictor.predict_delays(_states())[0], reference.predict_delays(_states())[0])


@pytest.mark.parametrize("stem", ["routenet_e", "routenet_f", "rnn"])
def test_shipped_width_runs_compiled(stem):
    if not (MODELS_DIR / f"{stem}.json").exists():
        pytest.skip("no shipped weights")
    assert isinstance(load_predictor(stem), CompiledTwin)


def test_weights_of_another_network_are_refused(tmp_path):
    _saved_random_model("rnn", STATE_DIM, tmp_path)
    (tmp_path / "rnn.json").rename(tmp_path / "routenet_e.json")
    (tmp_path / "rnn.weights.h5").rename(tmp_path / "routenet_e.weights.h5")
    description = (tmp_path / "routenet_e.json").read_text().replace('"kind": "rnn"', '"kind": "routenet_e"')
    (tmp_path / "routenet_e.json").write_text(description)
    with pytest.raises(ModelFileError, match="iterations must be a whole number >= 1, got 0"):
        load_compiled("routenet_e", tmp_path)
    (tmp_path / "routenet_e.json").write_text(description.replace('"iterations": 0', '"iterations": 3'))
    with pytest.raises(ModelFileError, match="no layer link_embed"):
        load_compiled("routenet_e", tmp_path)


def test_weights_for_other_features_are_refused(tmp_path):
    _saved_random_model("routenet_e", STATE_DIM, tmp_path)
    with h5py.File(tmp_path / "routenet_e.weights.h5", "r+") as f:
        group = next(g for g in f["layers"].values() if g["vars"].attrs.get("name") == "path_embed")
        kernel = group["layers"]["dense"]["vars"]["0"]
        data = kernel[:]
        del group["layers"]["dense"]["vars"]["0"]
        group["layers"]["dense"]["vars"]["0"] = data[:-1]
    with pytest.raises(ModelFileError, match="layer path_embed takes"):
        load_compiled("routenet_e", tmp_path)


def test_an_rnn_without_queue_features_is_refused_on_both_engines(tmp_path):
    # an RNN file of an earlier version: its normalisation has no queue (class) features
    _saved_random_model("rnn", STATE_DIM, tmp_path)
    meta = tmp_path / "rnn.json"
    description = json.loads(meta.read_text())
    del description["norm"]["class_x"]
    meta.write_text(json.dumps(description))
    for load in (load_compiled, load_twin):
        with pytest.raises(ModelFileError, match="reads queue features.*retrain it"):
            load("rnn", tmp_path)


def test_unreadable_files_name_the_file(tmp_path):
    _saved_random_model("rnn", STATE_DIM, tmp_path)
    (tmp_path / "rnn.weights.h5").write_bytes(b"not hdf5")
    with pytest.raises(ModelFileError, match="rnn.weights.h5: not a Keras weights file"):
        load_compiled("rnn", tmp_path)
    (tmp_path / "rnn.json").write_text("{")
    with pytest.raises(ModelFileError, match="rnn.json: not a model description"):
        load_compiled("rnn", tmp_path)
    with pytest.raises(ModelFileError, match="routenet_e.json: no such model file"):
        load_compiled("routenet_e", tmp_path)


def test_weights_file_layers_are_read_by_name(tmp_path):
    _saved_random_model("routenet_e", STATE_DIM, tmp_path)
    with h5py.File(tmp_path / "routenet_e.weights.h5") as f:
        names = set()
        f.visititems(lambda name, obj: names.add(obj.attrs.get("name")) if name.endswith("vars") else None)
    compiled = load_compiled("routenet_e", tmp_path)
    assert set(compiled.LAYERS) <= names
    assert [a.shape for a in compiled.layers["path_gru"]] == [(2 * STATE_DIM, 3 * STATE_DIM),
                                                              (STATE_DIM, 3 * STATE_DIM), (2, 3 * STATE_DIM)]


@pytest.mark.parametrize("model", ["routenet", "routenet_f"])
def test_a_prediction_does_not_load_tensorflow(model, tmp_path):
    state = make_state(DatasetConfig(samples=1, min_nodes=8, max_nodes=8, real_fraction=0.0, seed=3), 0)[0]
    state.save(tmp_path / "state.json")
    script = ("import sys; from ndt.cli import main; "
              "code = main(['predict', '--state', sys.argv[1], '--model', sys.argv[2], '--json']); "
              "print('tensorflow' in sys.modules, file=sys.stderr); sys.exit(code)")
    run = subprocess.run([sys.executable, "-c", script, str(tmp_path / "state.json"), model], capture_output=True,
                         text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    paths = json.loads(run.stdout)["paths"]
    assert paths and run.stderr.strip().splitlines()[-1] == "False"
    if model == "routenet_f":
        assert all(p["jitter"] >= 0 and 0 <= p["loss"] <= 1 for p in paths)
