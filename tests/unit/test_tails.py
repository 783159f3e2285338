"""The tail delay implied by a predicted mean and variance (twin.models.tails)."""

import math

import numpy as np
import pytest

from twin.models.tails import delay_quantile


def test_an_exponential_wait_has_its_closed_form_quantile():
    """Variance = wait²: the gamma is an exponential, whose q-quantile is −ln(1 − q) × its mean."""
    floor = np.array([0.002, 0.0])
    wait = np.array([0.003, 0.010])
    for q in (0.9, 0.99):
        expected = floor - math.log(1 - q) * wait
        np.testing.assert_allclose(delay_quantile(floor + wait, wait**2, floor, q), expected, rtol=1e-9)


def test_no_spread_gives_the_mean_and_more_spread_a_longer_tail():
    delay, floor = np.full(4, 0.01), np.full(4, 0.004)
    jitter = np.array([0.0, 1e-6, 1e-5, 1e-4])
    tails = delay_quantile(delay, jitter, floor)
    assert tails[0] == pytest.approx(0.01)
    assert np.all(np.diff(tails) > 0) and tails[1] > 0.01
    nothing_waits = delay_quantile(np.array([0.004]), np.array([1e-6]), np.array([0.004]))
    assert nothing_waits[0] == pytest.approx(0.004)
