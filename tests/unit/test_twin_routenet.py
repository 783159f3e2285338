"""Learned twins: shapes, batching, saving, training on a tiny simulated set, and the shipped weights."""

import numpy as np
import pytest

from twin.data.dataset import DatasetConfig, generate, make_state
from twin.models.features import build_batch
from twin.models.learned import LearnedTwin, build, load_twin, make_network
from twin.models.model_files import CLASS_KINDS, MODELS_DIR, ModelFileError, Normalizer
from twin.models.qt import QueueingModel
from twin.models.train import TrainConfig, Trainer
from twin.sim.simulator import simulate

SMALL = DatasetConfig(samples=2, min_nodes=5, max_nodes=12, real_fraction=0.0, seed=21)


def _states():
    a, b = make_state(SMALL, 0)[0], make_state(SMALL, 1)[0]
    assert len(a.nodes) != len(b.nodes)
    return [a, b]


@pytest.fixture(scope="module", params=["routenet_e", "rnn"])
def twin(request):
    states = _states()
    norm = Normalizer.fit(build_batch(states), classes=request.param in CLASS_KINDS)
    net = make_network(request.param, {"state_dim": 16, "iterations": 3})
    build(net, norm, build_batch(states[:1]))
    return LearnedTwin(net, norm, request.param)


def test_forward_shapes_on_two_states_of_different_sizes(twin):
    states = _states()
    out = twin.predict_delays(states)
    assert [len(d) for d in out] == [len(s.flows) for s in states]
    for delays, state in zip(out, states):
        floor = np.array([sum(state.links[l].prop_delay + f.packet_size / state.links[l].capacity for l in links)
                          for f, links in zip(state.flows, state.flow_links)])
        assert np.all(delays >= floor * (1 - 1e-5))


def test_batched_equals_one_by_one(twin):
    states = _states()
    together = twin.predict_delays(states)
    for state, batched in zip(states, together):
        np.testing.assert_allclose(batched, twin.predict_delays([state])[0], rtol=1e-4)


def test_save_and_load_round_trip(twin, tmp_path):
    twin.save(tmp_path, twin.kind)
    again = load_twin(twin.kind, tmp_path)
    states = _states()
    np.testing.assert_allclose(again.predict_delays(states)[0], twin.predict_delays(states)[0], rtol=1e-6)


def test_missing_weights_name_the_file(tmp_path):
    with pytest.raises(ModelFileError, match="routenet_e.json"):
        load_twin("routenet_e", tmp_path)


def test_training_loss_decreases_and_resumes(tmp_path):
    data = tmp_path / "data"
    generate(DatasetConfig(samples=6, min_nodes=5, max_nodes=8, packets_per_flow=300, shard_size=3,
                           real_fraction=0.0, seed=5), data, workers=1, progress=False)
    config = TrainConfig(state_dim=16, iterations=2, epochs=4, batch_size=2, lr=5e-3, val_every=5)
    summary = Trainer(data, tmp_path / "run", config, progress=False, log=lambda m: None).run()
    history = [h["train_loss"] for h in summary["history"]]
    assert len(history) == 4 and history[-1] < history[0]
    resumed = Trainer(data, tmp_path / "run", TrainConfig(**{**config.__dict__, "epochs": 5}),
                      progress=False, log=lambda m: None).run()
    assert [h["epoch"] for h in resumed["history"]] == [1, 2, 3, 4, 5]
    assert (tmp_path / "run" / "best.weights.h5").exists()

    more = tmp_path / "more"
    generate(DatasetConfig(samples=3, min_nodes=5, max_nodes=6, packets_per_flow=300, shard_size=3,
                           real_fraction=0.0, traffic="poisson", seed=6), more, workers=1, progress=False)
    tuned = Trainer([data, more], tmp_path / "tuned", TrainConfig(**{**config.__dict__, "epochs": 1,
                    "init_from": str(tmp_path / "run" / "best")}), progress=False, log=lambda m: None)
    assert len(tuned.data.items) == 9
    start = load_twin("best", tmp_path / "run")
    np.testing.assert_allclose(tuned.twin.predict_delays(_states())[0], start.predict_delays(_states())[0], rtol=1e-6)
    fewer = Trainer(data, tmp_path / "fewer", TrainConfig(**{**config.__dict__, "iterations": 1, "epochs": 1,
                    "init_from": str(tmp_path / "run" / "best")}), progress=False, log=lambda m: None)
    assert fewer.net.get_config()["iterations"] == 1
    start_weights, fewer_weights = start.net.get_weights(), fewer.net.get_weights()
    assert len(start_weights) == len(fewer_weights)
    for a, b in zip(start_weights, fewer_weights):
        np.testing.assert_array_equal(a, b)
    assert not np.allclose(fewer.twin.predict_delays(_states())[0], start.predict_delays(_states())[0], rtol=1e-6)
    with pytest.raises(ModelFileError, match="cannot start"):
        Trainer(data, tmp_path / "other", TrainConfig(**{**config.__dict__, "state_dim": 8,
                "init_from": str(tmp_path / "run" / "best")}), progress=False, log=lambda m: None)


@pytest.mark.skipif(not (MODELS_DIR / "routenet_e.weights.h5").exists(), reason="no shipped weights yet")
def test_shipped_weights_beat_qt_on_fresh_states():
    twin = load_twin()
    config = DatasetConfig(samples=3, min_nodes=25, max_nodes=30, real_fraction=0.0, seed=424242)
    errors = {"twin": [], "qt": []}
    for i in range(3):
        state, meta = make_state(config, i)
        label = simulate(state, seed=meta["sim_seed"], packets_per_flow=800).delay
        ok = np.isfinite(label) & (label > 0)
        for name, model in (("twin", twin), ("qt", QueueingModel())):
            predicted = model.predict_delays([state])[0]
            errors[name].append(np.abs(predicted[ok] - label[ok]) / label[ok])
    twin_mape, qt_mape = (float(np.mean(np.concatenate(errors[k]))) for k in ("twin", "qt"))
    assert twin_mape < qt_mape
