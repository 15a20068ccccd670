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


def _loss_and_grads(elbo, model, guide, *args):
    pyro.set_rng_seed(3)
    params = [p for p in guide.parameters() if p.requires_grad]
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
        guide = AutoSparseNormal(model) if case == "sparse_classifier" else None
        guide = guide or AutoNormal(model)
    guide(*args)
    ref_loss, ref_grads = _loss_and_grads(TraceMeanField_ELBO(), model, guide, *args)
    loss, grads = _loss_and_grads(TraceSparseMeanField_ELBO(), model, guide, *args)
    assert loss == pytest.approx(ref_loss, rel=1e-6)
    for a, b in zip(grads, ref_grads):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-7)


def test_latent_sites_are_not_scored_when_kl_is_analytic():
    model = tiny_classifier()
    guide = AutoSparseNormal(model)
    guide(X, Y)
    model_trace, guide_trace = TraceSparseMeanField_ELBO()._get_trace(
        model, guide, (X, Y), {}
    )
    scored = [n for n, s in model_trace.nodes.items() if "log_prob_sum" in s]
    assert scored == ["obs"]
    assert not any("score_parts" in s for s in guide_trace.nodes.values())
