"""TraceSparseMeanField_ELBO: the same loss and gradients as Pyro's, less work."""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import pytest
import torch
from common import classification_data, tiny_classifier
from pyro.infer import TraceMeanField_ELBO
from pyro.infer.autoguide import AutoNormal
from pyro.nn import PyroModule, PyroSample

from pyro_ssvi import AutoSparseNormal
from pyro_ssvi.elbo import TraceSparseMeanField_ELBO

X, Y = classification_data()


class ScaledRegression(PyroModule):
    """A weight matrix plus a Gamma-distributed noise scale (no analytic KL)."""

    def __init__(self):
        super().__init__()
        self.w = PyroSample(dist.Normal(0.0, 1.0).expand([1, 6]).to_event(2))
        self.noise = PyroSample(dist.Gamma(2.0, 2.0))

    def forward(self, x, y=None):
        mean = (x @ self.w.T).squeeze(-1)
        with pyro.plate("data", x.shape[0]):
            return pyro.sample("obs", dist.Normal(mean, self.noise), obs=y)


def _loss_and_grads(elbo, model, guide, *args, params_of=None):
    pyro.set_rng_seed(3)
    params = [p for p in (params_of or guide).parameters() if p.requires_grad]
    for p in params:
        p.grad = None
    loss = elbo.loss_and_grads(model, guide, *args)
    return loss, [p.grad.clone() for p in params]


@pytest.mark.parametrize("case", ["sparse_classifier", "mc_fallback", "autonormal"])
def test_same_loss_and_gradients_as_pyro(case):
    if case == "mc_fallback":
        model = ScaledRegression()
        args = (X, X[:, 0])
        guide = AutoSparseNormal(model, density=0.5)
    else:
        model, args = tiny_classifier(), (X, Y)
        guide = (
            AutoSparseNormal(model, density=0.3)
            if case == "sparse_classifier"
            else None
        )
        guide = guide or AutoNormal(model)
    guide(*args)
    ref_loss, ref_grads = _loss_and_grads(TraceMeanField_ELBO(), model, guide, *args)
    loss, grads = _loss_and_grads(TraceSparseMeanField_ELBO(), model, guide, *args)
    assert loss == pytest.approx(ref_loss, rel=1e-6)
    for a, b in zip(grads, ref_grads):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-7)


def test_latent_sites_are_not_scored_when_kl_is_analytic():
    model = tiny_classifier()
    guide = AutoSparseNormal(model, density=0.3)
    guide(X, Y)
    model_trace, guide_trace = TraceSparseMeanField_ELBO()._get_trace(
        model, guide, (X, Y), {}
    )
    scored = [n for n, s in model_trace.nodes.items() if "log_prob_sum" in s]
    assert scored == ["obs"]
    assert not any("score_parts" in s for s in guide_trace.nodes.values())


class LocalLatents(PyroModule):
    """A sparse weight, a global scale, and a local latent per data point in a
    subsampled plate (the likelihood and local KL scaled by N / B)."""

    def __init__(self, n=20):
        super().__init__()
        self.n = n
        self.w = PyroSample(dist.Normal(0.0, 1.0).expand([2, 6]).to_event(2))
        self.s = PyroSample(dist.LogNormal(0.0, 0.5))

    def forward(self, x, y=None, batch=8):
        w, s = self.w, self.s
        with pyro.plate("data", self.n, subsample_size=batch) as idx:
            z = pyro.sample("z", dist.Normal(0.0, 1.0))
            mean = x[idx] @ w[0] * s + z
            yy = None if y is None else y[idx]
            return pyro.sample("obs", dist.Normal(mean, 1.0), obs=yy)


@pytest.mark.parametrize("scale", [1.0, 0.25])
def test_same_loss_and_gradients_with_plates_subsampling_and_scale(scale):
    from pyro import poutine

    x, y = X[:20], X[:20, 0]  # subsamples of 8 of the 20 data points
    model = poutine.scale(LocalLatents(), scale=scale)
    inner = AutoSparseNormal(model, density=0.5)
    guide = poutine.scale(inner, scale=scale)
    inner(x, y)
    assert inner.sparse_site_names() == ["w"]
    # the same seed draws the same subsample and the same latents for both
    ref_loss, ref_grads = _loss_and_grads(
        TraceMeanField_ELBO(), model, guide, x, y, params_of=inner
    )
    loss, grads = _loss_and_grads(
        TraceSparseMeanField_ELBO(), model, guide, x, y, params_of=inner
    )
    assert loss == pytest.approx(ref_loss, rel=1e-6)
    assert len(grads) == len(ref_grads) == 6  # w, s, z: loc and scale each
    for a, b in zip(grads, ref_grads):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-7)
