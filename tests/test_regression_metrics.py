"""Regression metrics against hand-computed values, references and sampling theory."""

from __future__ import annotations

import math

import pytest
import torch
from scipy.stats import norm
from sklearn.metrics import mean_squared_error

from pyro_ssvi.app.regression import (
    calibration_curve,
    calibration_error,
    gaussian_nll,
    interval_coverage,
    rmse,
)

# Four points worked by hand: errors y - mean = (1, 0, -2, 2), standard
# deviations (1, 2, 1, 0.5), so z = (1, 0, -2, 4).
MEAN = torch.tensor([0.0, 1.0, 2.0, 3.0])
VARIANCE = torch.tensor([1.0, 4.0, 1.0, 0.25])
TARGETS = torch.tensor([1.0, 1.0, 0.0, 5.0])


def test_rmse_by_hand_and_sklearn():
    # squared errors 1, 0, 4, 4: mean 9 / 4, root 1.5
    assert rmse(MEAN, TARGETS) == pytest.approx(1.5, rel=1e-12)
    reference = math.sqrt(mean_squared_error(TARGETS.numpy(), MEAN.numpy()))
    assert rmse(MEAN, TARGETS) == pytest.approx(reference, rel=1e-6)


def test_gaussian_nll_by_hand():
    # sum_i 0.5 log(2 pi v_i) + e_i^2 / (2 v_i); log 4 + log 0.25 = 0, and
    # e^2 / (2 v) = 1/2, 0, 2, 8: total 2 log(2 pi) + 10.5 over 4 points
    expected = (2 * math.log(2 * math.pi) + 10.5) / 4
    assert gaussian_nll(MEAN, VARIANCE, TARGETS) == pytest.approx(expected, rel=1e-12)


def test_gaussian_nll_matches_torch_and_sums_targets_per_example():
    g = torch.Generator().manual_seed(0)
    mean, y = torch.randn(50, 3, generator=g), torch.randn(50, 3, generator=g)
    var = torch.rand(50, 3, generator=g) + 0.1
    reference = torch.nn.functional.gaussian_nll_loss(mean, y, var, full=True)
    # torch averages over all 150 elements; ours sums the 3 targets per example
    assert gaussian_nll(mean, var, y) == pytest.approx(3 * reference.item(), rel=1e-5)


def test_interval_coverage_by_hand():
    # |z| = 1, 0, 2, 4 against z_{0.75} = 0.674, z_{0.95} = 1.645,
    # z_{0.975} = 1.960, z_{0.995} = 2.576
    cov = interval_coverage(MEAN, VARIANCE, TARGETS, levels=(0.5, 0.9, 0.95, 0.99))
    assert cov == {0.5: 0.25, 0.9: 0.5, 0.95: 0.5, 0.99: 0.75}


def test_calibration_curve_and_error_by_hand():
    # levels 0.2, 0.4, 0.6, 0.8 have z = 0.253, 0.524, 0.842, 1.282: only z = 0
    # is inside the first three, z = 0 and 1 inside the last
    curve = calibration_curve(MEAN, VARIANCE, TARGETS, num_levels=4)
    torch.testing.assert_close(
        curve.expected, torch.tensor([0.2, 0.4, 0.6, 0.8], dtype=torch.float64)
    )
    torch.testing.assert_close(
        curve.observed, torch.tensor([0.25, 0.25, 0.25, 0.5], dtype=torch.float64)
    )
    # |0.25 - 0.2| + |0.25 - 0.4| + |0.25 - 0.6| + |0.5 - 0.8| = 0.85 over 4
    error = calibration_error(MEAN, VARIANCE, TARGETS, num_levels=4)
    assert error == pytest.approx(0.2125, rel=1e-12)


def test_coverage_of_samples_from_the_predictive_within_binomial_tolerance():
    # Targets drawn from the very Gaussians scored: each level's coverage is a
    # binomial proportion, standard error sqrt(p (1 - p) / N); allow 5 of them.
    n = 4000
    g = torch.Generator().manual_seed(1)
    mean = 3 * torch.randn(n, generator=g, dtype=torch.float64)
    std = 0.1 + 2 * torch.rand(n, generator=g, dtype=torch.float64)
    y = mean + std * torch.randn(n, generator=g, dtype=torch.float64)
    curve = calibration_curve(mean, std**2, y)
    p = curve.expected
    tolerance = 5 * torch.sqrt(p * (1 - p) / n)
    assert ((curve.observed - p).abs() <= tolerance).all()
    # an overconfident predictive (half the std) falls far outside it
    narrow = calibration_curve(mean, (std / 2) ** 2, y)
    assert ((p - narrow.observed) > tolerance).all()


def test_coverage_uses_gaussian_quantiles():
    # a target exactly at mean + z_{0.95} sigma is on the edge of the 90% interval
    z = float(norm.ppf(0.95))
    inside = interval_coverage([0.0], [4.0], [2 * z * (1 - 1e-9)], levels=(0.9,))
    outside = interval_coverage([0.0], [4.0], [2 * z * (1 + 1e-9)], levels=(0.9,))
    assert inside == {0.9: 1.0} and outside == {0.9: 0.0}


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: rmse(MEAN, TARGETS[:3]), "targets must have the shape"),
        (lambda: rmse(torch.zeros(0), torch.zeros(0)), "non-empty"),
        (lambda: rmse(torch.zeros(2, 2, 2), torch.zeros(2, 2, 2)), r"\(N,\) or"),
        (lambda: rmse([float("nan"), 1.0], [1.0, 1.0]), "NaN"),
        (lambda: gaussian_nll(MEAN, VARIANCE[:3], TARGETS), "variance must have"),
        (lambda: gaussian_nll(MEAN, VARIANCE * 0, TARGETS), "variance must be > 0"),
        (lambda: interval_coverage(MEAN, VARIANCE, TARGETS, (0.5, 1.0)), "levels"),
        (lambda: interval_coverage(MEAN, VARIANCE, TARGETS, ()), "levels"),
        (lambda: calibration_curve(MEAN, VARIANCE, TARGETS, num_levels=0), "num_"),
        (lambda: rmse("a", TARGETS), "tensor or array"),
    ],
)
def test_bad_inputs_raise_one_clear_error(call, message):
    with pytest.raises(ValueError, match=message):
        call()
