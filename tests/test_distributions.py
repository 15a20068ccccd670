"""SparseNormal: sampling, log-density and the registered KL divergences."""

from __future__ import annotations

import math

import pyro.distributions as dist
import pytest
import torch
from torch.distributions import kl_divergence

from pyro_ssvi.distributions import SparseNormal

SHAPE = (4, 5)


def _sparse(k: int = 6, seed: int = 0, dtype=torch.float32) -> SparseNormal:
    g = torch.Generator().manual_seed(seed)
    idx = torch.randperm(20, generator=g)[:k].sort().values
    loc = torch.randn(k, generator=g, dtype=dtype)
    scale = torch.rand(k, generator=g, dtype=dtype) + 0.1
    return SparseNormal(loc, scale, idx, SHAPE)


def _off_mask(q: SparseNormal) -> torch.Tensor:
    mask = torch.ones(math.prod(SHAPE), dtype=torch.bool)
    mask[q.indices] = False
    return mask.reshape(SHAPE)


def test_rsample_is_zero_off_the_active_set_and_differentiable():
    q = _sparse()
    loc = q.loc.detach().requires_grad_()
    q = SparseNormal(loc, q.scale, q.indices, SHAPE)
    w = q.rsample(torch.Size([3]))
    assert w.shape == (3,) + SHAPE
    assert torch.all(w[:, _off_mask(q)] == 0)
    w.sum().backward()
    assert torch.equal(loc.grad, torch.full_like(loc, 3.0))


def test_rsample_moments_match_loc_and_scale():
    q = _sparse()
    n = 20000
    active = q.gather(q.rsample(torch.Size([n])))  # (n, k)
    # Sample mean has standard error scale / sqrt(n); allow 5 standard errors.
    assert torch.all((active.mean(0) - q.loc).abs() < 5 * q.scale / math.sqrt(n))
    # Sample variance has standard error ~ scale^2 * sqrt(2 / n).
    var_se = q.scale**2 * math.sqrt(2.0 / n)
    assert torch.all((active.var(0) - q.scale**2).abs() < 5 * var_se)


def test_log_prob_is_normal_density_of_active_entries():
    q = _sparse(dtype=torch.float64)
    value = torch.randn(SHAPE, dtype=torch.float64)
    expected = dist.Normal(q.loc, q.scale).log_prob(value.reshape(-1)[q.indices]).sum()
    assert torch.allclose(q.log_prob(value), expected, rtol=1e-12)
    # Entries off the active set do not enter the density.
    value2 = value.clone()
    value2[_off_mask(q)] = 123.0
    assert q.log_prob(value2) == q.log_prob(value)


def test_mean_variance_entropy_are_dense_scatters():
    q = _sparse(dtype=torch.float64)
    assert torch.equal(q.mean.reshape(-1)[q.indices], q.loc)
    assert torch.equal(q.variance.reshape(-1)[q.indices], q.scale**2)
    assert torch.all(q.mean[_off_mask(q)] == 0)
    assert torch.all(q.variance[_off_mask(q)] == 0)
    assert torch.allclose(q.entropy(), dist.Normal(q.loc, q.scale).entropy().sum())


@pytest.mark.parametrize("prior_kind", ["constant", "tensor", "scalar_normal"])
def test_kl_equals_sum_of_closed_form_kls_on_active_set(prior_kind):
    q = _sparse(dtype=torch.float64)
    g = torch.Generator().manual_seed(1)
    if prior_kind == "constant":
        loc_p = torch.full(SHAPE, 0.3, dtype=torch.float64)
        scale_p = torch.full(SHAPE, 0.7, dtype=torch.float64)
        f64 = dict(dtype=torch.float64)
        prior = dist.Normal(torch.tensor(0.3, **f64), torch.tensor(0.7, **f64))
        prior = prior.expand(SHAPE).to_event(2)
    elif prior_kind == "tensor":
        loc_p = torch.randn(SHAPE, generator=g, dtype=torch.float64)
        scale_p = torch.rand(SHAPE, generator=g, dtype=torch.float64) + 0.2
        prior = dist.Normal(loc_p, scale_p).to_event(2)
    else:
        loc_p = torch.zeros(SHAPE, dtype=torch.float64)
        scale_p = torch.full(SHAPE, 2.0, dtype=torch.float64)
        prior = dist.Normal(torch.zeros(SHAPE, dtype=torch.float64), 2.0)
    per_coord = kl_divergence(
        dist.Normal(q.loc, q.scale),
        dist.Normal(loc_p.reshape(-1)[q.indices], scale_p.reshape(-1)[q.indices]),
    )
    # The inactive coordinates are exact zeros: the prior's log-density there.
    log_p0 = dist.Normal(loc_p, scale_p).log_prob(
        torch.zeros(SHAPE, dtype=torch.float64)
    )
    kl = kl_divergence(q, prior)
    assert kl.shape == ()
    expected = per_coord.sum() - log_p0[_off_mask(q)].sum()
    assert torch.allclose(kl, expected, rtol=1e-12)


def test_kl_against_laplace_prior_is_unbiased():
    """Non-Normal factorised priors get an unbiased one-draw estimate."""
    q = _sparse(dtype=torch.float64)
    b = 0.8
    prior = dist.Laplace(0.0, b).expand(SHAPE).to_event(2)
    # Closed form: KL = -H(q) + sum_j [log(2b) + E|theta_j| / b] on the active set,
    # with E|theta| the folded-normal mean.
    mu, s = q.loc, q.scale
    e_abs = s * math.sqrt(2 / math.pi) * torch.exp(-(mu**2) / (2 * s**2)) + mu * (
        torch.erf(mu / (s * math.sqrt(2)))
    )
    exact = -q.entropy() + (math.log(2 * b) + e_abs / b).sum()
    # minus the prior's log-density at the 14 inactive zeros, -log(2b) each
    exact += (20 - 6) * math.log(2 * b)
    n = 4000
    draws = torch.stack([kl_divergence(q, prior) for _ in range(n)])
    # 5 standard errors of the Monte Carlo mean.
    assert abs(draws.mean() - exact) < 5 * draws.std() / math.sqrt(n)


def test_expand_adds_batch_dims():
    q = _sparse()
    e = q.expand(torch.Size([2]))
    assert e.batch_shape == (2,) and e.event_shape == SHAPE
    assert e.rsample().shape == (2,) + SHAPE
    assert e.log_prob(torch.zeros((2,) + SHAPE)).shape == (2,)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(indices=torch.tensor([0, 1])), "indices must be 1-D of length k=3"),
        (dict(indices=torch.tensor([0.0, 1.0, 2.0])), "integer"),
        (dict(shape=(1, 2)), "do not fit"),
    ],
)
def test_bad_arguments_raise(kwargs, match):
    args = dict(
        loc=torch.zeros(3), scale=torch.ones(3), indices=torch.arange(3), shape=(2, 2)
    )
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        SparseNormal(**args)


@pytest.mark.parametrize(
    "pattern", ["rows", "cols", "loc_rows_scale_const", "loc_const_scale_rows"]
)
def test_kl_with_priors_broadcast_along_some_dims(pattern):
    """ARD-style priors: per-row or per-column scales, broadcast over the rest."""
    q = _sparse(dtype=torch.float64)
    g = torch.Generator().manual_seed(2)
    f64 = dict(dtype=torch.float64)
    if pattern == "rows":
        loc_p = torch.zeros(SHAPE[0], 1, **f64)
        scale_p = torch.rand(SHAPE[0], 1, generator=g, **f64) + 0.3
    elif pattern == "cols":
        loc_p = torch.randn(SHAPE[1], generator=g, **f64)
        scale_p = torch.rand(SHAPE[1], generator=g, **f64) + 0.3
    elif pattern == "loc_rows_scale_const":
        loc_p = torch.randn(SHAPE[0], 1, generator=g, **f64)
        scale_p = torch.tensor(0.7, **f64)
    else:
        loc_p = torch.tensor(0.0, **f64)
        scale_p = torch.rand(SHAPE[0], 1, generator=g, **f64) + 0.3
    prior = dist.Normal(loc_p, scale_p).expand(SHAPE).to_event(2)
    dense_loc, dense_scale = (
        t.expand(SHAPE) for t in torch.broadcast_tensors(loc_p, scale_p)
    )
    per_coord = kl_divergence(
        dist.Normal(q.loc, q.scale),
        dist.Normal(
            dense_loc.reshape(-1)[q.indices], dense_scale.reshape(-1)[q.indices]
        ),
    )
    log_p0 = dist.Normal(dense_loc, dense_scale).log_prob(torch.zeros(SHAPE, **f64))
    expected = per_coord.sum() - log_p0[_off_mask(q)].sum()
    assert torch.allclose(kl_divergence(q, prior), expected, rtol=1e-12)


def _learnable_case(k=6, n=20, seed=3):
    g = torch.Generator().manual_seed(seed)
    f64 = dict(dtype=torch.float64)
    loc = torch.randn(k, generator=g, **f64).requires_grad_()
    scale = (torch.rand(k, generator=g, **f64) + 0.2).requires_grad_()
    m = torch.tensor(0.3, **f64, requires_grad=True)
    s = torch.tensor(0.8, **f64, requires_grad=True)
    idx = torch.randperm(n, generator=g)[:k].sort().values
    return loc, scale, m, s, idx


@pytest.mark.parametrize("dense", [False, True])
def test_constant_prior_kl_and_its_closed_form_gradient(dense):
    """The constant-prior KL (value and hand-written gradient, learnable prior
    included) against the general formula and finite differences."""
    from pyro_ssvi.kl import sparse_normal_kl

    shape = torch.Size(SHAPE)
    loc, scale, m, s, idx = _learnable_case(k=20 if dense else 6)
    idx = None if dense else idx

    def constant(loc, scale, m, s):
        return sparse_normal_kl(
            loc, scale, idx, shape, m.expand(shape), s.expand(shape)
        )

    def general(loc, scale, m, s):  # a per-coordinate prior of the same values
        ones = torch.ones(shape, dtype=torch.float64)
        return sparse_normal_kl(loc, scale, idx, shape, m * ones, s * ones)

    args = (loc, scale, m, s)
    assert torch.allclose(constant(*args), general(*args), rtol=1e-12)
    assert torch.autograd.gradcheck(constant, args)
    fixed = (m.detach(), s.detach())  # a fixed prior: its constants as floats
    assert torch.autograd.gradcheck(
        lambda loc, scale: constant(loc, scale, *fixed), args[:2]
    )
    for a, b in zip(
        torch.autograd.grad(constant(*args), args),
        torch.autograd.grad(general(*args), args),
    ):
        assert torch.allclose(a, b, rtol=1e-10)


def test_monte_carlo_kl_is_log_q_minus_log_p_of_the_draw():
    """log q(theta) - log p(theta), the prior scoring the zeros too, with the
    gradients autograd gives the plain formula (learnable prior included)."""
    from pyro_ssvi.kl import monte_carlo_kl, scalar_normal_prior

    shape = torch.Size(SHAPE)
    loc, scale, m, s, idx = _learnable_case()
    active = (loc + scale * torch.randn(6, dtype=torch.float64)).detach()
    active.requires_grad_()

    def fused(active, loc, scale, m, s):
        scalars = scalar_normal_prior(m.expand(shape), s.expand(shape), shape)
        return monte_carlo_kl(active, loc, scale, *scalars, shape.numel())

    def plain(active, loc, scale, m, s):
        q = SparseNormal(loc, scale, idx, shape)
        dense = q.scatter(active)
        return q.log_prob(dense) - dist.Normal(m, s).log_prob(dense).sum()

    args = (active, loc, scale, m, s)
    assert torch.allclose(fused(*args), plain(*args), rtol=1e-12)
    assert torch.autograd.gradcheck(fused, args)
    fixed = (m.detach(), s.detach())  # a fixed prior: its constants as floats
    assert isinstance(
        scalar_normal_prior(*(t.expand(shape) for t in fixed), shape)[0], float
    )
    assert torch.autograd.gradcheck(lambda *a: fused(*a, *fixed), args[:3])
    assert torch.allclose(fused(*args[:3], *fixed), plain(*args[:3], *fixed))
    for a, b in zip(
        torch.autograd.grad(fused(*args), args), torch.autograd.grad(plain(*args), args)
    ):
        assert torch.allclose(a, b, rtol=1e-10, atol=1e-12)
    per_coordinate = torch.ones(shape, dtype=torch.float64)
    assert scalar_normal_prior(per_coordinate, per_coordinate, shape) is None


@pytest.mark.parametrize(
    "name",
    ["constant_prior_kl", "monte_carlo_kl", "scalar_normal_prior", "sparse_normal_kl"],
)
def test_the_kl_functions_of_0_1_0_still_import_from_distributions_with_a_warning(
    name,
):
    import pyro_ssvi.distributions as distributions
    import pyro_ssvi.kl as kl

    with pytest.warns(DeprecationWarning, match=f"moved to pyro_ssvi.kl.{name}"):
        assert getattr(distributions, name) is getattr(kl, name)
    with pytest.raises(AttributeError, match="no attribute 'rsample_active'"):
        distributions.rsample_active
