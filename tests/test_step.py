"""The direct step equals Pyro's traced ELBOs, for every ELBO it serves.

Each case draws the same random numbers on both paths (same seed), so the
losses and gradients agree to float rounding: a different sum order is the
only difference (``rtol=1e-5`` in float32).
"""

from __future__ import annotations

import copy
import logging

import pyro
import pyro.distributions as dist
import pytest
import torch
from common import LinearRegression, classification_data, tiny_classifier
from pyro import poutine
from pyro.infer import (
    JitTrace_ELBO,
    Trace_ELBO,
    TraceGraph_ELBO,
    TraceMeanField_ELBO,
)
from pyro.infer.autoguide import AutoGuideList, AutoNormal
from pyro.nn import PyroModule, PyroParam, PyroSample
from torch import nn

from pyro_ssvi import AutoSparseNormal, SparseSVI
from pyro_ssvi._step import Unsupported, direct_step
from pyro_ssvi.app.models import BayesianClassifier, lenet
from pyro_ssvi.elbo import TraceSparseMeanField_ELBO
from pyro_ssvi.poutine import local_reparameterization, scale_kl, sparse_weight_sampling
from pyro_ssvi.reselection import likelihood_gradients


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


class LearnablePrior(PyroModule):
    """A learnable prior scale (a PyroParam read by the weight's prior) and a
    hierarchical one (a positive latent site that the bias's prior reads)."""

    def __init__(self):
        super().__init__()
        self.tau = PyroParam(torch.tensor(1.5), dist.constraints.positive)
        self.lam = PyroSample(dist.LogNormal(0.0, 1.0))
        self.w = PyroSample(
            lambda m: dist.Normal(0.0, m.tau).expand([2, 6]).to_event(2)
        )
        self.b = PyroSample(lambda m: dist.Normal(0.0, m.lam).expand([2]).to_event(1))

    def forward(self, x, y=None):
        mean = x @ self.w.T + self.b
        with pyro.plate("data", x.shape[0]):
            return pyro.sample("obs", dist.Normal(mean.sum(-1), 1.0), obs=y)


class GammaNoise(PyroModule):
    """A Gamma-distributed noise scale: no analytic KL (the MC fallback)."""

    def __init__(self):
        super().__init__()
        self.w = PyroSample(dist.Normal(0.0, 1.0).expand([1, 6]).to_event(2))
        self.noise = PyroSample(dist.Gamma(2.0, 2.0))

    def forward(self, x, y=None):
        mean, noise = (x @ self.w.T).squeeze(-1), self.noise
        with pyro.plate("data", x.shape[0], subsample_size=16) as idx:
            y = None if y is None else y[idx]
            return pyro.sample("obs", dist.Normal(mean[idx], noise), obs=y)


def _case(kind):
    g = torch.Generator().manual_seed(0)
    if kind == "mlp":  # a subsampled plate over 100 examples
        x, y = classification_data(n=24, in_features=6)
        return tiny_classifier(num_data=100), x, y
    if kind == "cnn":
        x = torch.randn(8, 1, 12, 12, generator=g)
        return BayesianClassifier(lenet(1, 3, 12), num_data=100), x, torch.arange(8) % 3
    if kind == "resnet_block":
        x = torch.randn(8, 1, 6, 6, generator=g)
        return BayesianClassifier(Block(), num_data=100), x, torch.arange(8) % 3
    x, _ = classification_data(n=24, in_features=6)
    model = LearnablePrior() if kind == "learnable_prior" else GammaNoise()
    return model, x, x[:, 0] - x[:, 1]


ELBOS = {
    "Trace_ELBO": Trace_ELBO,
    "TraceMeanField_ELBO": TraceMeanField_ELBO,
    "TraceSparseMeanField_ELBO": lambda **kw: TraceSparseMeanField_ELBO(
        fast=False, **kw
    ),
}
HANDLERS = {
    "none": lambda: torch.enable_grad(),  # a no-op context
    "lrt": lambda: local_reparameterization(sparse=False),
    "lrt_sparse": lambda: local_reparameterization(sparse=True),
    "sparse_sampling": lambda: sparse_weight_sampling(sparse=True),
    "kl_weight": lambda: scale_kl(weight=0.3),
}


def _pair(kind):
    model, x, y = _case(kind)
    dense = getattr(model, "dense_sites", ())
    guide = AutoSparseNormal(model, density=0.3, dense_sites=dense).setup(x, y)
    return model, guide, x, y


def _grads(loss, model, guide):
    params = [p for p in guide.parameters() if p.requires_grad]
    params += [p for p in model.parameters() if p.requires_grad]
    return loss.detach(), torch.autograd.grad(loss, params, allow_unused=True)


def _assert_same(direct, traced):
    (loss_d, grads_d), (loss_t, grads_t) = direct, traced
    assert torch.allclose(loss_d, loss_t, rtol=1e-5)
    assert len(grads_d) == len(grads_t) > 0
    for a, b in zip(grads_d, grads_t):
        if b is None:
            assert a is None or torch.all(a == 0)
            continue
        assert a is not None
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-6 * (1 + b.abs().max()))


def _direct_and_traced(elbo_name, kind, handler, num_particles=1):
    model, guide, x, y = _pair(kind)
    elbo = ELBOS[elbo_name](num_particles=num_particles)
    fast = TraceSparseMeanField_ELBO() if elbo_name.startswith("TraceSparse") else elbo
    step = direct_step(model, guide, fast)
    with HANDLERS[handler]():
        pyro.set_rng_seed(11)
        losses = [step((x, y), {})[0] for _ in range(num_particles)]
        direct = _grads(sum(losses) / num_particles, model, guide)
        pyro.set_rng_seed(11)
        traced = _grads(elbo.differentiable_loss(model, guide, x, y), model, guide)
    return direct, traced


@pytest.mark.parametrize("handler", sorted(HANDLERS))
@pytest.mark.parametrize("kind", ["mlp", "cnn", "resnet_block"])
@pytest.mark.parametrize("elbo_name", sorted(ELBOS))
def test_direct_step_equals_the_traced_elbo(elbo_name, kind, handler):
    _assert_same(*_direct_and_traced(elbo_name, kind, handler))


@pytest.mark.parametrize("handler", ["none", "kl_weight"])
@pytest.mark.parametrize("kind", ["learnable_prior", "gamma_noise"])
@pytest.mark.parametrize("elbo_name", sorted(ELBOS))
def test_direct_step_equals_the_traced_elbo_for_learnable_and_non_normal_priors(
    elbo_name, kind, handler
):
    direct, traced = _direct_and_traced(elbo_name, kind, handler)
    _assert_same(direct, traced)
    if kind == "learnable_prior":  # the prior's own parameter is trained
        model, guide, _, _ = _pair(kind)
        assert model.tau_unconstrained.requires_grad
        assert traced[1][-1] is not None and direct[1][-1] is not None


@pytest.mark.parametrize(
    "elbo_name, handler", [("Trace_ELBO", "lrt"), ("TraceMeanField_ELBO", "none")]
)
def test_several_particles_are_averaged_as_pyro_averages_them(elbo_name, handler):
    # (Under LRT, Pyro's TraceMeanField_ELBO also draws every weight sample to
    # score it, unused, which shifts the next particle's random numbers; the
    # direct step does not draw them, so only its distribution is the same.)
    _assert_same(*_direct_and_traced(elbo_name, "mlp", handler, num_particles=3))


# ------------------------------------------------------- SparseSVI's choice
@pytest.mark.parametrize(
    "loss", [None, Trace_ELBO(), TraceMeanField_ELBO(), TraceSparseMeanField_ELBO()]
)
def test_sparse_svi_takes_the_direct_step_for_every_elbo_it_can(loss, caplog):
    model, x, y = _case("mlp")
    guide = AutoSparseNormal(model, density=0.3)
    svi = SparseSVI(model, guide, pyro.optim.Adam({"lr": 0.02}), loss, update_every=5)
    with caplog.at_level(logging.INFO, logger="pyro_ssvi"):
        losses = [svi.step(x, y) for _ in range(30)]
    assert svi.path == "direct" and svi.why_traced is None
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1 and "direct step" in lines[0]
    assert losses[-1] < losses[0] and svi.num_updates == 6


@pytest.mark.parametrize(
    "loss, why",
    [
        (JitTrace_ELBO(), "the loss is JitTrace_ELBO"),
        (TraceGraph_ELBO(), "the loss is TraceGraph_ELBO"),
        (type("MyELBO", (Trace_ELBO,), {})(), "the loss is MyELBO"),
        (Trace_ELBO(vectorize_particles=True), "vectorize_particles=True"),
        (TraceSparseMeanField_ELBO(fast=False), "fast=False"),
    ],
)
def test_losses_the_direct_step_cannot_compute_exactly_are_traced(loss, why):
    model, guide, _, _ = _pair("mlp")
    with pytest.raises(Unsupported, match=why):
        direct_step(model, guide, loss)


@pytest.mark.parametrize(
    "wrap, loss, why",
    [
        (lambda g: g, TraceGraph_ELBO(), "the loss is TraceGraph_ELBO"),
        (
            lambda g: poutine.scale(g, scale=0.5),
            Trace_ELBO(),
            "the guide is not an AutoSparseNormal used alone (it is wrapped",
        ),
    ],
)
def test_sparse_svi_says_once_why_it_traces(wrap, loss, why, caplog):
    model, x, y = _case("mlp")
    guide = wrap(AutoSparseNormal(model, density=0.3))
    svi = SparseSVI(model, guide, pyro.optim.Adam({"lr": 0.02}), loss)
    with caplog.at_level(logging.INFO, logger="pyro_ssvi"):
        for _ in range(3):
            svi.step(x, y)
    assert svi.path == "traced" and svi.why_traced.startswith(why)
    assert [r.levelno for r in caplog.records] == [logging.WARNING]
    assert why in caplog.records[0].getMessage()


def test_a_foreign_handler_sends_one_call_down_the_traced_path():
    model, guide, x, y = _pair("mlp")
    elbo = TraceSparseMeanField_ELBO()
    assert elbo.fast_path(model, guide, x, y) is not None
    with poutine.scale(scale=0.5):  # not one of pyro_ssvi's own handlers
        assert elbo.fast_loss(model, guide, x, y) is None
        pyro.set_rng_seed(4)
        scaled = elbo.loss(model, guide, x, y)
    pyro.set_rng_seed(4)
    assert scaled == pytest.approx(0.5 * elbo.loss(model, guide, x, y), rel=1e-5)


class SampleInForward(PyroModule):
    def forward(self, x, y=None):
        w = pyro.sample("w", dist.Normal(0.0, 1.0).expand([2, 6]).to_event(2))
        with pyro.plate("data", x.shape[0]):
            return pyro.sample("obs", dist.Normal((x @ w.T)[:, 0], 1.0), obs=y)


@pytest.mark.parametrize(
    "kind, why",
    [
        ("sample_in_forward", "site 'w' is not a PyroSample attribute"),
        ("guide_list", "the guide is not an AutoSparseNormal used alone (it is an"),
    ],
)
def test_outside_the_standard_case_the_traced_path_runs(kind, why):
    x, y = classification_data(n=24, in_features=6)
    y = y.float()
    if kind == "sample_in_forward":
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
    assert elbo.why_traced(model, guide, x, y).startswith(why)
    pyro.set_rng_seed(2)
    fast = elbo.loss(model, guide, x, y)
    pyro.set_rng_seed(2)
    traced = TraceSparseMeanField_ELBO(fast=False).loss(model, guide, x, y)
    assert fast == pytest.approx(traced, rel=1e-6)


# ----------------------------------------------- state the direct step reads
def test_param_store_rollback_is_seen_by_the_direct_step():
    model, x, y = _case("mlp")
    guide = AutoSparseNormal(model, density=0.3)
    svi = SparseSVI(model, guide, pyro.optim.Adam({"lr": 0.05}), update_every=10**6)
    for _ in range(3):
        svi.step(x, y)
    saved = copy.deepcopy(pyro.get_param_store().get_state())
    pyro.set_rng_seed(8)
    before = svi.evaluate_loss(x, y)
    for _ in range(5):
        svi.step(x, y)
    pyro.get_param_store().set_state(saved)
    pyro.set_rng_seed(8)
    assert svi.evaluate_loss(x, y) == pytest.approx(before, rel=1e-6)
    assert svi.path == "direct"


def test_a_prior_edited_in_place_is_read_again():
    model, guide, x, y = _pair("mlp")
    elbo, traced = TraceSparseMeanField_ELBO(), TraceSparseMeanField_ELBO(fast=False)
    assert elbo.fast_path(model, guide, x, y) is not None
    with torch.no_grad():
        for buffer in model.buffers():  # BayesianClassifier's prior scale
            buffer.fill_(2.5)
    pyro.set_rng_seed(6)
    fast = elbo.loss(model, guide, x, y)
    pyro.set_rng_seed(6)
    assert fast == pytest.approx(traced.loss(model, guide, x, y), rel=1e-6)


# ----------------------------------------------------------- the growth pass
@pytest.mark.parametrize("kl_weight", [0.0, 0.4])
@pytest.mark.parametrize("handler", ["none", "lrt", "lrt_sparse", "sparse_sampling"])
@pytest.mark.parametrize("kind", ["mlp", "cnn", "learnable_prior"])
def test_direct_growth_gradients_equal_the_traced_ones(kind, handler, kl_weight):
    model, guide, x, y = _pair(kind)
    step = direct_step(model, guide)
    with HANDLERS[handler]():
        pyro.set_rng_seed(5)
        direct = likelihood_gradients(
            model, guide, x, y, kl_weight=kl_weight, direct=step
        )
        pyro.set_rng_seed(5)
        traced = likelihood_gradients(model, guide, x, y, kl_weight=kl_weight)
    assert direct.keys() == traced.keys() == set(guide.sparse_site_names())
    for name in direct:
        a, b = direct[name], traced[name]
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-6 * (1 + b.abs().max()))
        assert bool((a != 0).any())


def test_under_lrt_the_growth_pass_uses_the_sparse_kernels():
    model, guide, x, y = _pair("mlp")
    handler = local_reparameterization(sparse=True)
    with handler:
        likelihood_gradients(model, guide, x, y, direct=direct_step(model, guide))
    assert set(handler.decisions.values()) == {"sparse"}
    assert set(handler.decisions) == set(guide.sparse_site_names())


def _train(lrt_option, steps=12):
    pyro.clear_param_store()
    pyro.set_rng_seed(3)
    model, x, y = _case("mlp")
    guide = AutoSparseNormal(model, density=0.3)
    svi = SparseSVI(
        model,
        guide,
        pyro.optim.Adam({"lr": 0.05}),
        update_every=3,
        local_reparameterization=lrt_option,
        sparse_compute=True if lrt_option else None,
    )
    for _ in range(steps):
        if lrt_option:
            svi.step(x, y)
        else:
            with local_reparameterization(sparse=True):
                svi.step(x, y)
    return guide, svi


def test_lrt_option_and_a_users_lrt_block_take_the_same_steps():
    option, svi_a = _train(True)
    block, svi_b = _train(False)
    assert svi_a.num_updates == svi_b.num_updates == 4
    for name in option.sparse_site_names():
        assert torch.equal(option.active_indices()[name], block.active_indices()[name])
    for a, b in zip(option.parameters(), block.parameters()):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-6)


class FixedPrior(PyroModule):
    """A prior object built once, with a scale tensor a user may edit in place."""

    def __init__(self):
        super().__init__()
        self.prior_scale = torch.tensor(1.0)
        self.w = PyroSample(
            dist.Normal(0.0, self.prior_scale).expand([2, 6]).to_event(2)
        )

    def forward(self, x, y=None):
        mean = (x @ self.w.T)[:, 0]
        with pyro.plate("data", x.shape[0]):
            return pyro.sample("obs", dist.Normal(mean, 1.0), obs=y)


@pytest.mark.parametrize("elbo", [Trace_ELBO(), TraceMeanField_ELBO()])
def test_a_fixed_prior_object_edited_in_place_is_read_again(elbo):
    x, _ = classification_data(n=24, in_features=6)
    model = FixedPrior()
    guide = AutoSparseNormal(model, density=0.5).setup(x, x[:, 0])
    step = direct_step(model, guide, elbo)
    for scale in (1.0, 3.0):
        model.prior_scale.fill_(scale)  # the same prior object, edited
        pyro.set_rng_seed(1)
        direct = step((x, x[:, 0]), {})[0]
        pyro.set_rng_seed(1)
        traced = elbo.differentiable_loss(model, guide, x, x[:, 0])
        assert torch.allclose(direct, traced, rtol=1e-5)


@pytest.mark.parametrize("growth_includes_kl", [False, True])
@pytest.mark.parametrize("lrt", [False, True])
def test_the_update_reads_the_growth_gradient_of_the_step_before_it(
    growth_includes_kl, lrt
):
    """As in the reference implementation, the growth score of an update is
    the gradient from the backward pass just before it: SparseSVI takes it
    from the training step (no extra pass), equal to the growth pass's on the
    same draw (same seed, same parameters)."""
    model, guide, x, y = _pair("mlp")
    svi = SparseSVI(
        model,
        guide,
        pyro.optim.Adam({"lr": 0.01}),
        update_every=3,
        kl_weight=0.5,
        growth_includes_kl=growth_includes_kl,
        local_reparameterization=lrt,
        sparse_compute=True,
    )
    for _ in range(2):
        svi.step(x, y)
    seen = []
    step = svi.subspace._step
    svi.subspace._step = lambda a, k, grads=None: seen.append(grads) or step(
        a, k, grads
    )
    with svi._weights_context():
        pyro.set_rng_seed(7)
        expected = likelihood_gradients(
            model,
            guide,
            x,
            y,
            kl_weight=0.5 if growth_includes_kl else 0.0,
            direct=direct_step(model, guide),
        )
    pyro.set_rng_seed(7)
    svi.step(x, y)
    assert svi.num_updates == 1 and seen[0].keys() == expected.keys()
    for name, grad in seen[0].items():
        assert torch.allclose(grad, expected[name], rtol=1e-4, atol=1e-5)
