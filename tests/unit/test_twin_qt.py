"""QT baseline: M/M/1/K closed forms, loss propagation, and the simulator on one link."""

import numpy as np
import pytest

from twin.models.features import build_batch
from twin.models.qt import QueueingModel
from twin.models.queueing import mm1b, solve
from twin.sim.simulator import simulate
from twin.state.model import Flow, Link, NetworkState


def _closed_form(rho, k):
    if rho == 1.0:
        return 1.0 / (k + 1), k / 2.0
    blocking = (1 - rho) * rho**k / (1 - rho ** (k + 1))
    mean = rho / (1 - rho) - (k + 1) * rho ** (k + 1) / (1 - rho ** (k + 1))
    return blocking, mean


@pytest.mark.parametrize("rho,k", [(0.3, 5), (0.9, 33), (1.0, 17), (1.4, 9), (3.0, 129)])
def test_mm1k_matches_closed_form(rho, k):
    blocking, mean = mm1b(np.array([rho]), np.array([k]))
    want_b, want_l = _closed_form(rho, k)
    assert blocking[0] == pytest.approx(want_b, rel=1e-9)
    assert mean[0] == pytest.approx(want_l, rel=1e-9)


def _line(rates, capacities, buffer=8, prop=1e-3):
    nodes = tuple(str(i) for i in range(len(capacities) + 1))
    links = tuple(Link(nodes[i], nodes[i + 1], c, buffer=buffer, prop_delay=prop) for i, c in enumerate(capacities))
    flows = tuple(Flow("0", nodes[-1], rate=r, size_dist="exponential") for r in rates)
    return NetworkState(nodes=nodes, links=links, flows=flows)


def test_single_link_delay_is_the_sojourn_time():
    state = _line([0.7e6], [1e6])
    mu = 1e6 / 8000
    blocking, mean = _closed_form(0.7, 9)
    want = mean / (0.7 * mu * (1 - blocking)) + 1e-3
    assert QueueingModel().predict_delays([state])[0][0] == pytest.approx(want, rel=1e-9)


def test_losses_thin_the_load_downstream():
    state = _line([1.5e6], [1e6, 1e6])
    out = solve(build_batch([state]))
    first_loss, _ = _closed_form(1.5, 9)
    assert out["rho"][0] == pytest.approx(1.5)
    assert out["rho"][1] == pytest.approx(1.5 * (1 - first_loss), rel=1e-6)
    assert out["loss"][0] == pytest.approx(1 - (1 - out["link_loss"][0]) * (1 - out["link_loss"][1]), rel=1e-9)


def test_qt_matches_the_simulator_on_one_poisson_link():
    state = _line([0.8e6], [1e6], buffer=16)
    simulated = simulate(state, seed=4, packets_per_flow=60000).delay[0]
    predicted = QueueingModel().predict_delays([state])[0][0]
    assert predicted == pytest.approx(simulated, rel=0.05)


def test_figure3_reports_delay_and_waiting_errors(tmp_path):
    """With Poisson traffic of equal packets QT (M/M/1) charges about twice the M/D/1 wait: a few
    percent of the delay, far more of the waiting time the emulation measures."""
    from twin.data.dataset import DatasetConfig, generate
    from twin.models.evaluate import figure3

    generate(DatasetConfig(samples=2, min_nodes=5, max_nodes=6, packets_per_flow=400, real_fraction=0.0,
                           traffic="poisson", min_load=0.8, max_load=0.9, seed=3), tmp_path / "set",
             workers=1, progress=False)
    report = figure3({"qt": QueueingModel()}, {"small": tmp_path / "set"})
    (row,) = report["buckets"]
    assert row["samples"] == 2 and 0 < row["qt_mape"] < row["qt_waiting_mape"]
