"""The tail delay implied by a predicted mean and variance, and its fitted correction (twin.models.tails)."""

import json
import math
import subprocess
import sys

import numpy as np
import pytest
from scipy.special import gammaincinv

from twin.data.dataset import DatasetConfig, generate, make_state
from twin.models.features import fixed_delays
from twin.models.tails import (
    SCORED_QUANTILES,
    ShapeTable,
    TailCorrection,
    TailError,
    delay_quantile,
    fit_tail_correction,
    gamma_quantile,
    read_tail_correction,
    tail_delays,
    tail_errors,
)


def test_an_exponential_wait_has_its_closed_form_quantile():
    """Variance = wait²: the gamma is an exponential, whose q-quantile is −ln(1 − q) × its mean."""
    floor = np.array([0.002, 0.0])
    wait = np.array([0.003, 0.010])
    for q in (0.9, 0.99):
        expected = floor - math.log(1 - q) * wait
        np.testing.assert_allclose(gamma_quantile(floor + wait, wait**2, floor, q), expected, rtol=1e-9)


def test_no_spread_gives_the_mean_and_more_spread_a_longer_tail():
    delay, floor = np.full(4, 0.01), np.full(4, 0.004)
    jitter = np.array([0.0, 1e-6, 1e-5, 1e-4])
    tails = delay_quantile(delay, jitter, floor)
    assert tails[0] == pytest.approx(0.01)
    assert np.all(np.diff(tails) > 0) and tails[1] > 0.01
    nothing_waits = delay_quantile(np.array([0.004]), np.array([1e-6]), np.array([0.004]))
    assert nothing_waits[0] == pytest.approx(0.004)


def step_correction(low: float, high: float, lossy: float | None = None) -> TailCorrection:
    """ln factor ``low`` for shapes up to e, ``high`` from e² on, p99 only; lossy paths ``lossy`` everywhere."""
    tables = {"lossless": ShapeTable(np.array([0.0, 1.0, 2.0]), {"p99": np.array([low, low, high])}, 1)}
    if lossy is not None:
        tables["lossy"] = ShapeTable(np.array([0.0, 1.0]), {"p99": np.array([lossy, lossy])}, 1)
    return TailCorrection(tables)


def test_the_correction_scales_only_the_part_above_the_floor_and_only_its_quantile_and_class():
    floor = np.array([0.002, 0.002, 0.003, 0.002])
    wait = np.array([0.004, 0.004, 0.0, 0.004])
    jitter = np.array([wait[0] ** 2, wait[1] ** 2 / 10, 1e-6, wait[3] ** 2])  # shapes 1, 10, none, 1
    loss = np.array([0.0, 1e-4, 0.5, 0.02])  # the last path loses packets
    correction = step_correction(math.log(1.2), math.log(0.8), lossy=math.log(0.7))
    plain = gamma_quantile(floor + wait, jitter, floor, 0.99)
    corrected = delay_quantile(floor + wait, jitter, floor, 0.99, loss, correction)
    np.testing.assert_allclose(corrected - floor, (plain - floor) * np.array([1.2, 0.8, 1.0, 0.7]), rtol=1e-12)
    as_lossless = delay_quantile(floor + wait, jitter, floor, 0.99, None, correction)
    np.testing.assert_allclose(as_lossless - floor, (plain - floor) * np.array([1.2, 0.8, 1.0, 1.2]), rtol=1e-12)
    np.testing.assert_allclose(delay_quantile(floor + wait, jitter, floor, 0.9, loss, correction),
                               gamma_quantile(floor + wait, jitter, floor, 0.9), rtol=1e-12)


def test_tail_delays_read_the_shipped_correction_with_the_predicted_loss():
    """What intents' p99 bounds see: the shipped correction, the lossy table for a path that loses packets."""
    from twin.models.tails import shipped_correction

    correction = shipped_correction()
    assert correction is not None and set(correction.tables) == {"lossless", "lossy"}
    state = make_state(DatasetConfig(samples=1, min_nodes=25, max_nodes=25, real_fraction=0.0, seed=3), 0)[0]
    prop, _ = fixed_delays(state)
    delay, jitter = prop + 0.003, np.full(len(prop), 0.003**2 / 5)
    lossy = tail_delays(state, delay, jitter, np.full(len(prop), 0.05))
    lossless = tail_delays(state, delay, jitter, np.zeros(len(prop)))
    expected = {c: prop + (gamma_quantile(delay, jitter, prop) - prop)
                * correction.tables[c].factor("p99", np.full(len(prop), 5.0)) for c in ("lossless", "lossy")}
    np.testing.assert_allclose(lossless, expected["lossless"], rtol=1e-9)
    np.testing.assert_allclose(lossy, expected["lossy"], rtol=1e-9)
    assert not np.allclose(lossy, lossless)


def synthetic_samples(factor, n_states: int = 2, seed: int = 5):
    """Real generated states whose 'simulated' p90/p99 are the gamma's above the propagation times
    ``factor(q, shape)``: a known truth for the fit to recover."""
    config = DatasetConfig(samples=n_states, min_nodes=25, max_nodes=30, real_fraction=0.0, seed=seed)
    rng = np.random.default_rng(seed)
    samples = []
    for i in range(n_states):
        state = make_state(config, i)[0]
        prop, _ = fixed_delays(state)
        wait = rng.uniform(1e-4, 5e-3, len(prop))
        shape = np.exp(rng.uniform(-1.0, 4.0, len(prop)))
        labels = {"delay": prop + wait, "jitter": wait**2 / shape}
        for name, q in SCORED_QUANTILES.items():
            labels[name] = prop + gammaincinv(shape, q) * wait / shape * factor(q, shape)
        samples.append((state, labels))
    return samples


def test_a_fit_recovers_a_known_factor_and_scores_it():
    def truth(q, shape):
        return np.where(shape < 3.0, 1.10, 0.90) if q == 0.99 else np.ones_like(shape)

    fitted = synthetic_samples(truth)
    correction = fit_tail_correction(fitted, fitted_on={"data": ["synthetic"]})
    assert set(correction.tables) == {"lossless"}  # the synthetic labels lose nothing
    assert set(correction.tables["lossless"].log_factor) == {"p90", "p99"}
    assert correction.factor(0.99, np.array([0.5]))[0] == pytest.approx(1.10, rel=1e-3)
    assert correction.factor(0.99, np.array([20.0]))[0] == pytest.approx(0.90, rel=1e-3)
    assert correction.factor(0.9, np.array([0.5, 20.0])) == pytest.approx([1.0, 1.0], rel=1e-3)
    held_out = synthetic_samples(truth, seed=6)  # other states, other draws
    report = tail_errors(held_out, correction)
    gamma_errors = []
    for state, labels in held_out:
        prop, _ = fixed_delays(state)
        plain = gamma_quantile(labels["delay"], labels["jitter"], prop, 0.99)
        gamma_errors.append(np.abs(plain - labels["p99"]) / labels["p99"])
    assert report["p99"]["gamma_mape"] == pytest.approx(np.concatenate(gamma_errors).mean(), rel=1e-9)
    assert report["p99"]["gamma_mape"] > 0.03
    assert report["p99"]["corrected_mape"] < 0.02
    assert report["p90"]["corrected_mape"] < 1e-3


def test_too_few_paths_are_refused_with_the_count():
    one_state = synthetic_samples(lambda q, shape: np.ones_like(shape), n_states=1)
    state, labels = one_state[0]
    few = [(state, {k: v.copy() for k, v in labels.items()})]
    few[0][1]["p99"][100:] = np.nan
    with pytest.raises(TailError, match=r"too few usable paths to fit a tail correction \(100; at least 640"):
        fit_tail_correction(few)


def test_correction_file_round_trip_and_damage(tmp_path):
    correction = step_correction(0.1, -0.1, lossy=-0.2)
    path = correction.save(tmp_path / "tails.json")
    again = read_tail_correction(path)
    shapes, loss = np.array([0.5, 2.0, 100.0, 2.0]), np.array([0.0, 0.0, 0.0, 0.1])
    np.testing.assert_allclose(again.factor(0.99, shapes, loss), correction.factor(0.99, shapes, loss))
    raw = json.loads(path.read_text())
    table = raw["tables"]["lossless"]
    for damage, message in ((dict(table, log_shape=[0.0, 0.0, 1.0]), "log_shape must be at least two ascending"),
                            (dict(table, log_factor={"p95": [0, 0, 0]}), "unknown quantile 'p95'"),
                            (dict(table, log_factor={"p99": [0, 0]}), "log_factor.p99 needs one finite number")):
        path.write_text(json.dumps(dict(raw, tables={"lossless": damage})))
        with pytest.raises(TailError, match=message):
            read_tail_correction(path)
    for damage, message in ((dict(raw, kind="intervals"), "not a tail correction"),
                            (dict(raw, lossy_from=2), "lossy_from must be a share"),
                            (dict(raw, tables={"bursty": table}), "unknown class of path")):
        path.write_text(json.dumps(damage))
        with pytest.raises(TailError, match=message):
            read_tail_correction(path)
    path.write_text("{")
    with pytest.raises(TailError, match="not a tail-correction file"):
        read_tail_correction(path)
    with pytest.raises(TailError, match="no such tail-correction file"):
        read_tail_correction(tmp_path / "absent.json")


def ndt(*args):
    return subprocess.run([sys.executable, "-m", "ndt.cli", *args], capture_output=True, text=True, timeout=300)


def test_tails_fit_and_check_commands(tmp_path):
    """'ndt tails fit' on simulated samples writes a correction that 'ndt tails check' reads; bad input is
    one line naming what is wrong."""
    config = DatasetConfig(samples=6, min_nodes=12, max_nodes=14, packets_per_flow=300, real_fraction=0.0, seed=21)
    generate(config, tmp_path / "data", workers=1, progress=False)
    out = tmp_path / "tails.json"
    fit = ndt("tails", "fit", "--data", str(tmp_path / "data"), "--out", str(out), "--plot", str(tmp_path / "t.png"),
              "--json")
    assert fit.returncode == 0, fit.stderr
    report = json.loads(fit.stdout)
    assert report["path"] == str(out) and (tmp_path / "t.png").stat().st_size > 0
    assert report["in_sample"]["p99"]["corrected_mape"] < report["in_sample"]["p99"]["gamma_mape"]
    check = ndt("tails", "check", "--data", str(tmp_path / "data"), "--correction", str(out), "--json")
    assert check.returncode == 0, check.stderr
    assert json.loads(check.stdout)["p99"]["paths"] == report["in_sample"]["p99"]["paths"]
    scored = {}
    for tails in ("none", str(out)):
        run = ndt("eval", "--data", str(tmp_path / "data"), "--tails", tails, "--out", str(tmp_path / "eval"), "--json")
        assert run.returncode == 0, run.stderr
        scored[tails] = json.loads(run.stdout)
        assert scored[tails]["tails"] == tails
    plain, corrected = (scored[t]["buckets"][0] for t in ("none", str(out)))
    assert plain["qt_p99_mape"] != corrected["qt_p99_mape"]  # the percentiles follow the correction given
    assert plain["qt_mape"] == corrected["qt_mape"]  # the mean delay does not
    missing = ndt("tails", "check", "--data", str(tmp_path / "data"), "--correction", str(tmp_path / "no.json"))
    assert missing.returncode == 2 and missing.stderr.strip().endswith("no such tail-correction file")
    assert len(missing.stderr.strip().splitlines()) == 1
