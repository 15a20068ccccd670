"""BayesianRegressor: likelihood, noise options, scaling, errors, exact posterior."""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import pytest
import torch
from common import exact_posterior
from pyro import poutine
from torch import nn
from torch.nn import functional as F

from pyro_ssvi import AutoSparseNormal, SparseSVI
from pyro_ssvi.app.models import BayesianClassifier, BayesianRegressor


def _data(n=40, d=3, noise=0.5, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g)
    y = x @ torch.randn(d, generator=g) + 0.3 + noise * torch.randn(n, generator=g)
    return x, y


def _trace(model, *args):
    return poutine.trace(model).get_trace(*args)


def test_likelihood_is_the_exact_scaled_gaussian():
    x, y = _data(n=8)
    model = BayesianRegressor(nn.Linear(3, 1), num_data=100, noise=0.25)
    trace = _trace(model, x, y)
    obs = trace.nodes["obs"]
    weight, bias = trace.nodes["net.weight"]["value"], trace.nodes["net.bias"]["value"]
    loc = x @ weight[0] + bias
    assert obs["scale"] == pytest.approx(100 / 8)  # subsampled plate: N / B
    expected = 100 / 8 * dist.Normal(loc, 0.25).log_prob(y).sum()
    trace.compute_log_prob()  # Pyro's log_prob_sum includes the plate's scale
    torch.testing.assert_close(obs["log_prob_sum"], expected)
    torch.testing.assert_close(trace.nodes["_RETURN"]["value"], loc)  # the mean


def test_several_targets_are_one_diagonal_gaussian_event():
    x = torch.randn(5, 3)
    model = BayesianRegressor(nn.Linear(3, 2), num_data=5, noise=1.0)
    y = torch.randn(5, 2)
    obs = _trace(model, x, y).nodes["obs"]
    assert obs["fn"].batch_shape == (5,) and obs["fn"].event_shape == (2,)
    assert model(x).shape == (5, 2)


def test_heteroscedastic_scale_is_softplus_of_the_second_half_plus_floor():
    x = torch.randn(6, 3)
    model = BayesianRegressor(
        nn.Linear(3, 2), num_data=6, heteroscedastic=True, min_noise=1e-3
    )
    trace = _trace(model, x)
    weight, bias = trace.nodes["net.weight"]["value"], trace.nodes["net.bias"]["value"]
    out = x @ weight.T + bias
    fn = trace.nodes["obs"]["fn"]
    torch.testing.assert_close(fn.mean, out[:, 0])
    torch.testing.assert_close(fn.stddev, F.softplus(out[:, 1]) + 1e-3)
    assert not hasattr(model, "noise_scale")


def test_targets_of_shape_b_by_1_are_accepted_for_one_output():
    x, y = _data(n=4)
    model = BayesianRegressor(nn.Linear(3, 1), num_data=4, noise=1.0)
    with poutine.seed(rng_seed=0):
        flat = _trace(model, x, y).log_prob_sum()
    with poutine.seed(rng_seed=0):
        column = _trace(model, x, y[:, None]).log_prob_sum()
    torch.testing.assert_close(flat, column)


def test_learned_noise_is_a_positive_param_trained_on_the_fast_path():
    x, y = _data(n=40, noise=0.1)
    model = BayesianRegressor(nn.Linear(3, 1), num_data=40)
    guide = AutoSparseNormal(model, density=1.0, init_loc_fn=model.init_loc_fn())
    svi = SparseSVI(model, guide, pyro.optim.Adam({"lr": 0.05}))
    for _ in range(200):
        svi.step(x, y)
    assert svi.elbo.fast_path(model, guide, x, y) is not None
    assert "noise_scale" in pyro.get_param_store()
    # The point estimate maximises the expected log-likelihood: sigma^2 = mean
    # squared residual plus the (tiny) posterior spread of the fit, so about
    # the data's 0.1 (the sample std of 40 draws is 0.1 +- 0.011); it started
    # at 1.
    assert 0.05 < model.noise_scale.item() < 0.15


def test_fixed_noise_is_a_buffer_that_training_leaves_alone():
    x, y = _data()
    model = BayesianRegressor(nn.Linear(3, 1), num_data=40, noise=0.7)
    guide = AutoSparseNormal(model, density=1.0)
    svi = SparseSVI(model, guide, pyro.optim.Adam({"lr": 0.05}))
    for _ in range(5):
        svi.step(x, y)
    assert "noise_scale" not in pyro.get_param_store()
    assert dict(model.named_buffers())["noise_scale"].item() == pytest.approx(0.7)


def test_linear_model_converges_to_the_exact_posterior():
    # Bayesian linear regression with the bias Bayesian too: the mean-field
    # optimum has the exact posterior mean and 1 / sqrt(diag precision) as
    # standard deviations (the recipe of tests/test_svi.py).
    x, y = _data(n=40)
    model = BayesianRegressor(nn.Linear(3, 1), num_data=40, noise=0.5)
    guide = AutoSparseNormal(model, density=1.0, init_scale=0.1)
    steps = 1500
    optim = pyro.optim.ClippedAdam({"lr": 0.03, "lrd": 0.1 ** (1 / steps)})
    svi = SparseSVI(model, guide, optim, num_steps=steps)
    locs, scales = [], []
    for step in range(steps):
        svi.step(x, y)
        if step >= steps - 500:  # Polyak-average the last iterates
            w, b = guide.site_posterior("net.weight"), guide.site_posterior("net.bias")
            locs.append(torch.cat([w.mean.reshape(-1), b.mean]).detach())
            scales.append(torch.cat([w.stddev.reshape(-1), b.stddev]).detach())
    mean, std = exact_posterior(torch.cat([x, torch.ones(40, 1)], 1), y, 0.5, 1.0)
    torch.testing.assert_close(torch.stack(locs).mean(0), mean, atol=0.02, rtol=0)
    torch.testing.assert_close(torch.stack(scales).mean(0), std, atol=0.01, rtol=0)


def test_init_loc_fn_is_shared_with_the_classifier():
    model = BayesianRegressor(nn.Linear(3, 1), num_data=4)
    initial = {k: v.clone() for k, v in model.initial_values.items()}
    guide = AutoSparseNormal(model, density=1.0, init_loc_fn=model.init_loc_fn())
    guide.setup(torch.randn(4, 3), torch.randn(4))
    for name, value in initial.items():
        torch.testing.assert_close(guide.median()[name], value)
    with pytest.raises(ValueError, match="BayesianRegressor: the initial value"):
        AutoSparseNormal(model, init_loc_fn=model.init_loc_fn()).setup(
            torch.randn(4, 3)
        )
    with pytest.raises(ValueError, match="BayesianClassifier: num_data"):
        BayesianClassifier(nn.Linear(3, 2), num_data=0)


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        ({"num_data": 0}, ValueError, "num_data must be >= 1"),
        ({"noise": 0.0}, ValueError, "noise must be 'learned' or a positive"),
        ({"noise": -1.0}, ValueError, "noise must be"),
        ({"noise": "fixed"}, ValueError, "noise must be"),
        ({"noise": True}, ValueError, "noise must be"),
        ({"noise": float("inf")}, ValueError, "noise must be"),
        ({"noise": 0.5, "heteroscedastic": True}, ValueError, "drop noise=0.5"),
        ({"heteroscedastic": "yes"}, TypeError, "heteroscedastic must be True"),
        ({"init_noise": 0.0}, ValueError, "init_noise must be a float > 0"),
        ({"min_noise": -1e-3}, ValueError, "min_noise must be a float >= 0"),
    ],
)
def test_bad_options_raise_one_clear_error(kwargs, error, message):
    options = {"num_data": 10, **kwargs}
    with pytest.raises(error, match=message):
        BayesianRegressor(nn.Linear(3, 2), **options)


def test_bad_shapes_at_call_time_raise_one_clear_error():
    x = torch.randn(4, 3)
    odd = BayesianRegressor(nn.Linear(3, 3), num_data=4, heteroscedastic=True)
    with pytest.raises(ValueError, match=r"\(B, 2 \* num_targets\).*got \(4, 3\)"):
        odd(x)
    model = BayesianRegressor(nn.Linear(3, 2), num_data=4)
    with pytest.raises(ValueError, match=r"targets must have shape \(4, 2\)"):
        model(x, torch.randn(4))
    flat = BayesianRegressor(nn.Sequential(nn.Linear(3, 2), nn.Flatten(0)), 4)
    with pytest.raises(ValueError, match=r"net\(x\) must return shape \(B, D\)"):
        flat(x)
