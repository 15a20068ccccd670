"""Local reparameterisation and sparse compute: exact moments, exact gradients."""

from __future__ import annotations

import math

import pyro
import pytest
import torch
from common import LinearRegression, classification_data, tiny_classifier
from pyro import poutine
from pyro.infer import TraceMeanField_ELBO
from torch import nn

from pyro_ssvi import AutoSparseNormal, SparseSVI, TraceSparseMeanField_ELBO
from pyro_ssvi.app.models import BayesianClassifier, make_bayesian
from pyro_ssvi.layers import conv_moments, linear_moments, sample_moments
from pyro_ssvi.poutine import (
    LazyWeight,
    local_reparameterization,
    sparse_weight_sampling,
)

F64 = torch.float64


# ------------------------------------------------------------ pure moments
def test_linear_and_conv_moments_are_the_closed_forms(float64):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 5, generator=g)
    mu, var = torch.randn(4, 5, generator=g), torch.rand(4, 5, generator=g)
    mean, v = linear_moments(x, mu, var)
    assert torch.allclose(mean, x @ mu.T) and torch.allclose(v, (x**2) @ var.T)
    # A convolution is a linear map of each receptive field: check with unfold.
    x = torch.randn(2, 3, 6, 6, generator=g)
    mu, var = torch.randn(4, 3, 3, 3, generator=g), torch.rand(4, 3, 3, 3, generator=g)
    mean, v = conv_moments(x, mu, var, padding=1, stride=2)
    cols = torch.nn.functional.unfold(x, 3, padding=1, stride=2)  # (2, 27, 9)
    assert torch.allclose(mean.flatten(2), mu.reshape(4, -1) @ cols)
    assert torch.allclose(v.flatten(2), var.reshape(4, -1) @ cols**2)


def test_sample_moments_has_the_requested_moments():
    mean, var = torch.full((100_000,), 2.0), torch.full((100_000,), 9.0)
    draws = sample_moments(mean, var)
    n = draws.numel()
    assert abs(draws.mean() - 2.0) < 5 * 3.0 / math.sqrt(n)
    assert abs(draws.var() - 9.0) < 5 * 9.0 * math.sqrt(2.0 / n)


# ------------------------------------------- LRT versus weight sampling (MC)
def _bayes_layer(layer: nn.Module, density: float, example: torch.Tensor):
    make_bayesian(layer, prior_scale=1.0)
    guide = AutoSparseNormal(layer, density=density, init_scale=0.4)
    guide.setup(example)
    with torch.no_grad():  # spread the means so that moments are informative
        for name in guide.site_names():
            guide.unconstrained_params(name)[0].normal_()
    return guide


def _outputs(layer, guide, x, n, lrt):
    outs = []
    for _ in range(n):
        handler = local_reparameterization(sparse=False) if lrt else poutine.block()
        with torch.no_grad(), handler:
            trace = poutine.trace(guide).get_trace(x)
            outs.append(poutine.replay(layer, trace=trace)(x))
    return torch.stack(outs)


def _closed_form(guide, x, conv_kwargs=None):
    w = guide.site_posterior("weight")
    b = guide.site_posterior("bias") if "bias" in guide.site_names() else None
    if conv_kwargs is None:
        mean, var = linear_moments(x, w.mean, w.variance)
        shape = (-1,)
    else:
        mean, var = conv_moments(x, w.mean, w.variance, **conv_kwargs)
        shape = (-1, 1, 1)
    if b is not None:
        mean = mean + b.mean.reshape(shape)
        var = var + b.variance.reshape(shape)
    return mean, var


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("kind", ["linear", "conv"])
def test_lrt_and_weight_sampling_have_the_closed_form_moments(kind, bias):
    pyro.set_rng_seed(0)
    if kind == "linear":
        layer, x, conv_kwargs = nn.Linear(6, 4, bias=bias), torch.randn(2, 6), None
    else:
        layer = nn.Conv2d(2, 3, 3, padding=1, bias=bias)
        x, conv_kwargs = torch.randn(1, 2, 4, 4), {"padding": 1}
    guide = _bayes_layer(layer, 0.5, x)
    mean, var = _closed_form(guide, x, conv_kwargs)
    n = 1500
    for lrt in (True, False):
        draws = _outputs(layer, guide, x, n, lrt)
        # 5 standard errors: sd/sqrt(n) for the mean, var*sqrt(2/n) for the
        # variance of Gaussian draws (the pre-activations are exactly Gaussian).
        assert torch.all((draws.mean(0) - mean).abs() < 5 * (var / n).sqrt()), lrt
        assert torch.all((draws.var(0) - var).abs() < 5 * var * math.sqrt(2 / n)), lrt


def test_lrt_noise_is_independent_per_output_element():
    layer = nn.Linear(5, 3, bias=False)
    x = torch.randn(1, 5).expand(4000, 5)  # identical rows
    guide = _bayes_layer(layer, 0.6, x)
    out = _outputs(layer, guide, x, 1, lrt=True)[0]
    # Under LRT rows are i.i.d.; under weight sampling they would be equal.
    corr = torch.corrcoef(torch.cat([out[:-1], out[1:]], 1).T)[:3, 3:].diagonal()
    assert torch.all(corr.abs() < 5 / math.sqrt(4000))


# ------------------------------------------------ sparse versus dense paths
def _loss_grads(model, guide, sparse):
    pyro.set_rng_seed(1)
    params = [p for p in guide.parameters() if p.requires_grad]
    for p in params:
        p.grad = None
    with local_reparameterization(sparse=sparse):
        loss = TraceSparseMeanField_ELBO().loss_and_grads(model, guide, *DATA)
    return loss, [p.grad.clone() for p in params]


DATA = classification_data(n=32, in_features=6)


def test_sparse_kernels_match_the_dense_masked_computation():
    model = tiny_classifier()
    guide = AutoSparseNormal(model, density=0.3).setup(*DATA)
    loss_d, grads_d = _loss_grads(model, guide, False)
    loss_s, grads_s = _loss_grads(model, guide, True)
    assert loss_s == pytest.approx(loss_d, rel=1e-5)
    for a, b in zip(grads_s, grads_d):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("lead", [(5,), (2, 3)])
def test_sparse_linear_and_its_gradients_equal_the_dense_masked_product(lead):
    """y = x W^T with W zero off the active set; dy/dx and dy/dvalues exact
    (float64), for inputs with one or two leading dimensions."""
    from pyro_ssvi.layers.sparse import SparseStructure, sparse_linear

    g = torch.Generator().manual_seed(0)
    out_f, in_f = 7, 11
    idx = torch.randperm(out_f * in_f, generator=g)[:20].sort().values
    values = torch.randn(20, dtype=torch.float64, generator=g, requires_grad=True)
    x = torch.randn(*lead, in_f, dtype=torch.float64, generator=g, requires_grad=True)
    weight = (
        torch.zeros(out_f * in_f, dtype=torch.float64)
        .index_put((idx,), values)
        .view(out_f, in_f)
    )
    seed = torch.randn(*lead, out_f, dtype=torch.float64, generator=g)
    dense = x @ weight.T
    gx_d, gv_d = torch.autograd.grad((dense * seed).sum(), (x, values))
    sparse = sparse_linear(x, values, SparseStructure(idx, (out_f, in_f)))
    gx_s, gv_s = torch.autograd.grad((sparse * seed).sum(), (x, values))
    for a, b in ((sparse, dense), (gx_s, gx_d), (gv_s, gv_d)):
        assert torch.allclose(a, b, rtol=1e-12, atol=1e-12)


def test_auto_path_decides_per_site_and_records_it():
    model = tiny_classifier()
    guide = AutoSparseNormal(model, density=0.3).setup(*DATA)
    handler = local_reparameterization(sparse="auto")
    with handler:
        TraceSparseMeanField_ELBO().loss(model, guide, *DATA)
    assert set(handler.decisions) == {"net.0.weight", "net.2.weight"}
    assert set(handler.decisions.values()) <= {"sparse", "dense"}
    with pytest.raises(ValueError, match="sparse must be True, False or 'auto'"):
        local_reparameterization(sparse="yes")


# ------------------------------------------------------ semantics preserved
def test_kl_is_unchanged_and_weights_never_materialised():
    model = tiny_classifier()
    guide = AutoSparseNormal(model, density=0.3).setup(*DATA)
    with local_reparameterization():
        _, guide_trace = TraceSparseMeanField_ELBO()._get_trace(model, guide, DATA, {})
    values = [s["value"] for s in guide_trace.nodes.values() if s["type"] == "sample"]
    weights = [v for v in values if isinstance(v, LazyWeight)]
    assert len(weights) == 2 and all(w._sample is None for w in weights)
    assert all(w.shape == guide.site_shape(w.site) for w in weights)


def test_other_uses_of_the_weight_get_an_exact_sample():
    """LinearRegression computes x @ w.T (not F.linear): a sample is used."""
    x = torch.randn(8, 4)
    model = LinearRegression(4)
    guide = AutoSparseNormal(model, density=0.5, init_scale=1e-6).setup(x)
    with local_reparameterization(), torch.no_grad():
        trace = poutine.trace(guide).get_trace(x)
        out = poutine.replay(model, trace=trace)(x)
    w = trace.nodes["w"]["value"]
    assert isinstance(w, LazyWeight) and w._sample is not None
    assert torch.allclose(out, (x @ w._sample.T).squeeze(-1))
    off = torch.ones(4, dtype=torch.bool)
    off[guide.active_indices()["w"]] = False
    assert torch.all(w._sample.reshape(-1)[off] == 0)
    # And it is the posterior mean up to the tiny scale.
    assert torch.allclose(w._sample, guide.median()["w"], atol=1e-4)


def test_pyro_mean_field_elbo_works_with_lazy_weights():
    model = tiny_classifier()
    guide = AutoSparseNormal(model, density=0.3).setup(*DATA)
    with local_reparameterization():
        loss = TraceMeanField_ELBO().loss(model, guide, *DATA)
    assert math.isfinite(loss)


def test_sparse_svi_with_lrt_trains_and_reselects():
    x, y = DATA
    pyro.set_rng_seed(0)
    model = BayesianClassifier(
        nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 3)), num_data=len(x)
    )
    guide = AutoSparseNormal(model, density=0.5)
    svi = SparseSVI(
        model,
        guide,
        pyro.optim.Adam({"lr": 0.03}),
        num_steps=300,
        update_every=20,
        local_reparameterization=True,
        sparse_compute=True,
    )
    losses = [svi.step(x, y) for _ in range(300)]
    assert svi.num_updates == 11
    assert sum(losses[-20:]) < 0.5 * sum(losses[:20])
    assert svi.lazy_weights.decisions == {
        "net.0.weight": "sparse",
        "net.2.weight": "sparse",
    }
    med = guide.median()
    with torch.no_grad():
        logits = poutine.condition(model, data=med)(x)
    assert (logits.argmax(-1) == y).float().mean() > 0.9


# ------------------------------------------- sparse kernels, weight sampling
def _sampled_loss_grads(model, guide, handler):
    pyro.set_rng_seed(5)
    params = [p for p in guide.parameters() if p.requires_grad]
    for p in params:
        p.grad = None
    with handler:
        loss = TraceSparseMeanField_ELBO().loss_and_grads(model, guide, *DATA)
    return loss, [p.grad.clone() for p in params]


@pytest.mark.parametrize("sparse", [True, False])
def test_sparse_weight_sampling_is_ordinary_sampling(sparse):
    model = tiny_classifier()
    guide = AutoSparseNormal(model, density=0.3).setup(*DATA)
    ref = _sampled_loss_grads(model, guide, poutine.block(hide_all=False))
    out = _sampled_loss_grads(model, guide, sparse_weight_sampling(sparse=sparse))
    assert out[0] == pytest.approx(ref[0], rel=1e-5)  # the same weight draws
    for a, b in zip(out[1], ref[1]):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-6)


def test_timed_path_choices_are_checkpointed():
    # two layers of 38,000 weights: large enough to be timed (MIN_TIMED_NUMEL)
    x, y = classification_data(n=32, in_features=200)
    model = tiny_classifier(in_features=200, hidden=190, classes=200)
    guide = AutoSparseNormal(model, density=0.3)
    svi = SparseSVI(
        model, guide, pyro.optim.Adam({"lr": 0.01}), num_steps=10, sparse_compute="auto"
    )
    svi.step(x, y)
    state = svi.state_dict()
    assert len(state["paths"]["timed"]) == 2
    other = SparseSVI(
        model, guide, pyro.optim.Adam({"lr": 0.01}), num_steps=10, sparse_compute="auto"
    )
    other.load_state_dict(state)
    assert other.lazy_weights._timed == svi.lazy_weights._timed


def test_lrt_stays_on_when_another_library_wraps_f_linear(monkeypatch):
    """TyXe's local reparameterisation replaces ``F.linear`` by a wrapper of
    it (``functools.update_wrapper``). Ours must still see the layer call:
    the same draws as without the wrapper, and not a weight sample's."""
    import functools

    x, y = DATA
    model = BayesianClassifier(
        nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 3)), num_data=len(x)
    )
    guide = AutoSparseNormal(model, density=0.5).setup(x, y)

    def logits(weights) -> torch.Tensor:
        pyro.set_rng_seed(3)
        with weights(), torch.no_grad():
            trace = poutine.trace(guide).get_trace(x, y)
            return poutine.replay(model, trace=trace)(x)

    expected = logits(local_reparameterization)
    sampled = logits(sparse_weight_sampling)
    original = torch.nn.functional.linear

    def wrapper(*args, **kwargs):
        return original(*args, **kwargs)

    monkeypatch.setattr(
        torch.nn.functional, "linear", functools.update_wrapper(wrapper, original)
    )
    assert torch.equal(logits(local_reparameterization), expected)
    assert not torch.allclose(expected, sampled)
