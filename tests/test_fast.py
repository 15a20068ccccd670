"""TraceSparseMeanField_ELBO's fast path equals the traced loss, or is not used."""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import pytest
import torch
from common import LinearRegression, classification_data, tiny_classifier
from pyro import poutine
from pyro.infer.autoguide import AutoGuideList, AutoNormal
from pyro.nn import PyroModule, PyroParam, PyroSample
from torch import nn

from pyro_ssvi import AutoSparseNormal, SparseSVI
from pyro_ssvi.elbo import TraceSparseMeanField_ELBO
from pyro_ssvi.models import BayesianClassifier, lenet
from pyro_ssvi.poutine import local_reparameterization, scale_kl, sparse_weight_sampling


class Block(nn.Module):
    """A residual block: conv-BN-ReLU-conv-BN plus the input (as in ResNets)."""

    def __init__(self, channels=4, classes=3):
        super().__init__()
        self.stem = nn.Conv2d(1, channels, 3, padding=1, bias=False)
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        self.fc = nn.Linear(channels, classes)

    def forward(self, x):
        h = torch.relu(self.stem(x))
        h = torch.relu(h + self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(h))))))
        return self.fc(h.mean((-1, -2)))


def _case(kind):
    g = torch.Generator().manual_seed(0)
    if kind == "mlp":
        x, y = classification_data(n=24, in_features=6)
        return tiny_classifier(num_data=100), x, y
    if kind == "cnn":
        x = torch.randn(8, 1, 12, 12, generator=g)
        return BayesianClassifier(lenet(1, 3, 12), num_data=100), x, torch.arange(8) % 3
    x = torch.randn(8, 1, 6, 6, generator=g)
    return BayesianClassifier(Block(), num_data=100), x, torch.arange(8) % 3


def _loss_and_grads(elbo, model, guide, x, y, handlers):
    params = [p for p in guide.parameters() if p.requires_grad]
    params += [p for p in model.parameters() if p.requires_grad]
    pyro.set_rng_seed(11)
    with handlers():
        loss = elbo.differentiable_loss(model, guide, x, y)
    return loss.detach(), torch.autograd.grad(loss, params, allow_unused=True)


HANDLERS = {
    "sampling": lambda: poutine.block(hide_all=False),  # a no-op context
    "lrt": lambda: local_reparameterization(sparse=False),
    "lrt_sparse": lambda: local_reparameterization(sparse=True),
    "sparse_sampling": lambda: sparse_weight_sampling(sparse=True),
    "kl_weight": lambda: scale_kl(weight=0.3),
}


@pytest.mark.parametrize("handler", sorted(HANDLERS))
@pytest.mark.parametrize("kind", ["mlp", "cnn", "resnet_block"])
def test_fast_path_equals_the_traced_loss_and_gradients(kind, handler):
    if handler == "sampling":  # no handler at all: the default step
        handlers = lambda: torch.enable_grad()  # noqa: E731
    else:
        handlers = HANDLERS[handler]
    model, x, y = _case(kind)
    guide = AutoSparseNormal(
        model, density=0.3, dense_sites=getattr(model, "dense_sites", ())
    )
    guide.setup(x, y)
    fast_elbo, traced_elbo = TraceSparseMeanField_ELBO(), TraceSparseMeanField_ELBO(
        fast=False
    )
    with handlers():
        path = fast_elbo.fast_path(model, guide, x, y)
    assert path is not None  # the standard case: the fast path is taken
    loss_f, grads_f = _loss_and_grads(fast_elbo, model, guide, x, y, handlers)
    loss_t, grads_t = _loss_and_grads(traced_elbo, model, guide, x, y, handlers)
    assert torch.allclose(loss_f, loss_t, rtol=1e-5)
    assert len(grads_f) == len(grads_t) > 0
    for a, b in zip(grads_f, grads_t):
        if b is None:
            assert a is None or torch.all(a == 0)
            continue
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-6 * (1 + b.abs().max()))


def test_the_first_use_check_leaves_batch_norm_statistics_alone():
    model, x, y = _case("resnet_block")
    guide = AutoSparseNormal(model, density=0.3).setup(x, y)
    before = [b.clone() for b in model.buffers()]
    assert TraceSparseMeanField_ELBO().fast_path(model, guide, x, y) is not None
    assert all(torch.equal(a, b) for a, b in zip(before, model.buffers()))


def test_sparse_svi_steps_by_the_fast_path_and_trains():
    model, x, y = _case("mlp")
    guide = AutoSparseNormal(model, density=0.3)
    svi = SparseSVI(model, guide, pyro.optim.Adam({"lr": 0.02}), update_every=10)
    losses = [svi.step(x, y) for _ in range(60)]
    assert svi.elbo.fast_path(model, guide, x, y) is not None
    assert losses[-1] < losses[0] and svi.num_updates == 6


def _standard_pair():
    model, x, y = _case("mlp")
    return model, AutoSparseNormal(model, density=0.3).setup(x, y), x, y


class LearnablePrior(PyroModule):
    def __init__(self):
        super().__init__()
        self.tau = PyroParam(torch.tensor(1.0), dist.constraints.positive)
        self.w = PyroSample(
            lambda m: dist.Normal(0.0, m.tau).expand([1, 6]).to_event(2)
        )

    def forward(self, x, y=None):
        mean = (x @ self.w.T)[:, 0]
        with pyro.plate("data", x.shape[0]):
            return pyro.sample("obs", dist.Normal(mean, 1.0), obs=y)


class SampleInForward(PyroModule):
    def forward(self, x, y=None):
        w = pyro.sample("w", dist.Normal(0.0, 1.0).expand([2, 6]).to_event(2))
        with pyro.plate("data", x.shape[0]):
            return pyro.sample("obs", dist.Normal((x @ w.T)[:, 0], 1.0), obs=y)


@pytest.mark.parametrize(
    "kind, why",
    [
        ("learnable_prior", "the prior has trained parameters"),
        ("sample_in_forward", "site 'w' is not a PyroSample attribute"),
        ("guide_list", "needs a PyroModule model and an AutoSparseNormal"),
    ],
)
def test_outside_the_standard_case_the_traced_path_runs(kind, why):
    x, y = classification_data(n=24, in_features=6)
    y = y.float()
    if kind == "learnable_prior":
        model = LearnablePrior()
        guide = AutoSparseNormal(model).setup(x, y)
    elif kind == "sample_in_forward":
        model = SampleInForward()
        guide = AutoSparseNormal(model, density=0.3).setup(x, y)
    else:
        model = LinearRegression(6, bias=True)
        guide = AutoGuideList(model)
        guide.append(AutoSparseNormal(poutine.block(model, expose=["w"])))
        guide.append(AutoNormal(poutine.block(model, hide=["w"])))
        guide(x, y)
    elbo = TraceSparseMeanField_ELBO()
    assert elbo.fast_path(model, guide, x, y) is None
    assert elbo.why_traced(model, guide, x, y) == why
    pyro.set_rng_seed(2)
    fast = elbo.loss(model, guide, x, y)
    pyro.set_rng_seed(2)
    traced = TraceSparseMeanField_ELBO(fast=False).loss(model, guide, x, y)
    assert fast == pytest.approx(traced, rel=1e-6)


def test_a_foreign_handler_sends_the_call_down_the_traced_path():
    model, guide, x, y = _standard_pair()
    elbo = TraceSparseMeanField_ELBO()
    assert elbo.fast_path(model, guide, x, y) is not None
    assert elbo.why_traced(model, guide, x, y) is None
    with poutine.scale(scale=0.5):  # not one of pyro_ssvi's own handlers
        assert elbo.fast_loss(model, guide, x, y) is None
        pyro.set_rng_seed(4)
        scaled = elbo.loss(model, guide, x, y)
    pyro.set_rng_seed(4)
    assert scaled == pytest.approx(0.5 * elbo.loss(model, guide, x, y), rel=1e-5)


def test_param_store_rollback_is_seen_by_the_fast_path():
    model, x, y = _case("mlp")
    guide = AutoSparseNormal(model, density=0.3)
    svi = SparseSVI(model, guide, pyro.optim.Adam({"lr": 0.05}), update_every=10**6)
    for _ in range(3):
        svi.step(x, y)
    import copy

    saved = copy.deepcopy(pyro.get_param_store().get_state())
    pyro.set_rng_seed(8)
    before = svi.evaluate_loss(x, y)
    for _ in range(5):
        svi.step(x, y)
    pyro.get_param_store().set_state(saved)
    pyro.set_rng_seed(8)
    assert svi.evaluate_loss(x, y) == pytest.approx(before, rel=1e-6)


def test_a_prior_edited_in_place_is_read_again():
    model, guide, x, y = _standard_pair()
    elbo, traced = TraceSparseMeanField_ELBO(), TraceSparseMeanField_ELBO(fast=False)
    assert elbo.fast_path(model, guide, x, y) is not None
    with torch.no_grad():
        for buffer in model.buffers():  # BayesianClassifier's prior scale
            buffer.fill_(2.5)
    pyro.set_rng_seed(6)
    fast = elbo.loss(model, guide, x, y)
    pyro.set_rng_seed(6)
    assert fast == pytest.approx(traced.loss(model, guide, x, y), rel=1e-6)
