r"""The KL terms of a sparse site's ELBO, written once.

Pyro's traced ELBOs reach them through the divergences registered here for
``kl_divergence(SparseNormal, Normal | Independent)``; the direct step of
:mod:`pyro_ssvi._step` calls them by name.

* the analytic KL term: :func:`sparse_normal_kl` (what
  :class:`~pyro.infer.TraceMeanField_ELBO` uses), :math:`O(k)` under a
  constant prior (:func:`constant_prior_kl`);
* the Monte Carlo KL term of a draw: :func:`monte_carlo_kl` (what
  :class:`~pyro.infer.Trace_ELBO` estimates, in :math:`O(k)`).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from pyro.distributions import Independent, Normal
from torch.autograd.function import once_differentiable
from torch.distributions import register_kl

from .distributions import HALF_LOG_2PI, SparseNormal

__all__ = [
    "constant_prior_kl",
    "monte_carlo_kl",
    "scalar_normal_prior",
    "sparse_normal_kl",
]


# ----------------------------------------------------------------- prior maths
def _normal_log_prob_at_zero(loc: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return -0.5 * (loc / scale) ** 2 - scale.log() - HALF_LOG_2PI


Scalar = Any  # a Python float, or a 0-d tensor where it needs a gradient


def _log(x: Scalar) -> Scalar:
    return math.log(x) if isinstance(x, float) else x.log()


def _centred(x: torch.Tensor, m: Scalar) -> torch.Tensor:
    return x if isinstance(m, float) and m == 0.0 else x - m


class _ConstantPriorKL(torch.autograd.Function):
    """:func:`sparse_normal_kl` under a constant prior, 1-D ``loc``: the value
    and its gradient in closed form (a few passes over the ``k`` values)."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any, loc: torch.Tensor, scale: torch.Tensor, m: Scalar, s: Scalar, n: int
    ) -> torch.Tensor:
        k, centred = loc.shape[0], _centred(loc, m)
        squares = torch.dot(scale, scale) + torch.dot(centred, centred)
        ctx.save_for_backward(centred, scale, squares)
        ctx.prior, ctx.n = (m, s), n
        return (
            0.5 * squares / (s * s)
            - scale.log().sum()
            + (k * (_log(s) - 0.5) + (n - k) * (0.5 * m * m / (s * s) + _log(s)))
            + (n - k) * HALF_LOG_2PI
        )

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[Any, ...]:
        centred, scale, squares = ctx.saved_tensors
        (m, s), n, need = ctx.prior, ctx.n, ctx.needs_input_grad
        free, inv_s2 = n - centred.shape[0], 1.0 / (s * s)
        g_loc = centred * (grad * inv_s2) if need[0] else None
        g_scale = (scale * inv_s2 - scale.reciprocal()) * grad if need[1] else None
        g_m = grad * inv_s2 * (free * m - centred.sum()) if need[2] else None
        g_s = (
            grad * (n / s - (squares + free * m * m) * inv_s2 / s) if need[3] else None
        )
        return g_loc, g_scale, g_m, g_s, None


class _ConstantPriorMonteCarloKL(torch.autograd.Function):
    """:func:`monte_carlo_kl` under a constant prior, 1-D values: the value and
    its gradient in closed form."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        active: torch.Tensor,
        loc: torch.Tensor,
        scale: torch.Tensor,
        m: Scalar,
        s: Scalar,
        n: int,
    ) -> torch.Tensor:
        k, z, centred = active.shape[0], (active - loc) / scale, _centred(active, m)
        squares = torch.dot(centred, centred) + (n - k) * m * m
        ctx.save_for_backward(z, centred, scale, squares)
        ctx.prior, ctx.n = (m, s), n
        return (
            -0.5 * torch.dot(z, z)
            - scale.log().sum()
            + 0.5 * squares / (s * s)
            + (n * _log(s) + (n - k) * HALF_LOG_2PI)
        )

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[Any, ...]:
        z, centred, scale, squares = ctx.saved_tensors
        (m, s), n, need = ctx.prior, ctx.n, ctx.needs_input_grad
        k, inv_s2 = z.shape[0], 1.0 / (s * s)
        z_over_scale = z / scale
        g_active = (centred * inv_s2 - z_over_scale) * grad if need[0] else None
        g_loc = z_over_scale * grad if need[1] else None
        g_scale = (z * z - 1) / scale * grad if need[2] else None
        g_m = grad * inv_s2 * ((n - k) * m - centred.sum()) if need[3] else None
        g_s = grad * (n / s - squares * inv_s2 / s) if need[4] else None
        return g_active, g_loc, g_scale, g_m, g_s, None


def scalar_normal_prior(
    prior_loc: torch.Tensor, prior_scale: torch.Tensor, shape: torch.Size
) -> tuple[Scalar, Scalar] | None:
    r"""``(m, s)`` if the prior is one Normal :math:`\mathcal{N}(m, s^2)` over
    the whole event (``Normal(m, s).expand(shape)``, whose strides are zero;
    no batch dimensions), else None.

    Floats where that costs nothing (on the CPU, without gradient), else 0-d
    views that carry the gradient of a learnable prior.
    """
    for t in (prior_loc, prior_scale):
        if t.dim() > len(shape) or any(
            st and sz > 1 for sz, st in zip(t.shape, t.stride())
        ):
            return None
    m, s = prior_loc.as_strided((), ()), prior_scale.as_strided((), ())
    if m.requires_grad or s.requires_grad or s.device.type != "cpu":
        return m, s
    return m.item(), s.item()


def constant_prior_kl(
    loc: torch.Tensor, scale: torch.Tensor, m: Scalar, s: Scalar, n: int
) -> torch.Tensor:
    """:func:`sparse_normal_kl` under one Normal prior ``N(m, s^2)`` (its
    second formula), for ``k`` active values of shape ``(k,)`` out of ``n``."""
    return _ConstantPriorKL.apply(loc, scale, m, s, n)


def sparse_normal_kl(
    loc: torch.Tensor,
    scale: torch.Tensor,
    indices: torch.Tensor | None,
    shape: torch.Size,
    prior_loc: torch.Tensor,
    prior_scale: torch.Tensor,
) -> torch.Tensor:
    r"""The ELBO's KL term of a sparse posterior against a factorised Normal prior.

    .. math::

        \mathrm{KL}_A = \sum_{j \in A} \Big[\log \frac{s_j}{\sigma_j}
            + \frac{\sigma_j^2 + (\mu_j - m_j)^2}{2 s_j^2} - \frac12\Big]
            - \sum_{j \notin A} \log \mathcal{N}(0; m_j, s_j^2)

    with posterior :math:`\mathcal{N}(\mu_j, \sigma_j^2)` on the active set
    :math:`A` and prior :math:`\mathcal{N}(m_j, s_j^2)`: the expectation of
    :math:`\log q(\theta) - \log p(\theta)`, where the inactive coordinates are
    exact zeros. A prior that is one value over the tensor
    (``Normal(m, s).expand(shape)``, zero strides) costs :math:`O(k)`:

    .. math::

        \mathrm{KL}_A = \frac{\sum_A \sigma_j^2 + \sum_A (\mu_j - m)^2}{2 s^2}
            - \sum_A \log \sigma_j + k (\log s - \tfrac12)
            - (n - k) \log \mathcal{N}(0; m, s^2).

    Prior parameters that require grad (hierarchical or learnable priors)
    receive their gradient, the second sum included. With ``indices=None``
    every coordinate is active (a dense mean-field site, flattened): the
    closed-form KL of independent Normals.

    Args:
        loc, scale: Active means and standard deviations, shape ``(..., k)``.
        indices: Flat indices of the active coordinates, shape ``(k,)``, or
            None for all ``n`` in order.
        shape: The full event shape (``n`` elements).
        prior_loc, prior_scale: The prior's parameters, broadcastable to
            ``batch + shape``.

    Returns:
        Shape ``batch``.
    """
    n = shape.numel()
    scalar = (
        scalar_normal_prior(prior_loc, prior_scale, shape) if loc.dim() == 1 else None
    )
    if scalar is not None:
        return constant_prior_kl(loc, scale, *scalar, n)
    prior_loc, prior_scale = torch.broadcast_tensors(prior_loc, prior_scale)
    lead = prior_loc.shape[: prior_loc.dim() - len(shape)]
    flat_loc = prior_loc.expand(lead + shape).reshape(lead + (n,))
    flat_scale = prior_scale.expand(lead + shape).reshape(lead + (n,))
    if indices is None:
        m, s = flat_loc, flat_scale
    else:
        m, s = flat_loc.index_select(-1, indices), flat_scale.index_select(-1, indices)
    var_ratio = (scale / s) ** 2
    active = 0.5 * (var_ratio + ((loc - m) / s) ** 2 - 1 - var_ratio.log())
    if indices is None:
        return active.sum(-1)
    log_p0 = _normal_log_prob_at_zero(flat_loc, flat_scale)
    inactive = log_p0.sum(-1) - log_p0.index_select(-1, indices).sum(-1)
    return active.sum(-1) - inactive


def monte_carlo_kl(
    active: torch.Tensor,
    loc: torch.Tensor,
    scale: torch.Tensor,
    m: Scalar,
    s: Scalar,
    n: int,
) -> torch.Tensor:
    r"""The Monte Carlo KL term of one draw, :math:`\log q(\theta) - \log p(\theta)`,
    under one Normal prior :math:`\mathcal{N}(m, s^2)` over the site, in ``O(k)``.

    For :math:`\theta` with values ``active`` on the :math:`k` active
    coordinates and exact zeros on the other :math:`n - k`:

    .. math::

        \log q(\theta) - \log p(\theta) =
            -\sum_A \Big[\frac{z_j^2}{2} + \log \sigma_j\Big]
            - \frac{k}{2}\log 2\pi
            + \frac{\sum_A (\theta_j - m)^2 + (n - k)\, m^2}{2 s^2}
            + n \big(\log s + \tfrac12 \log 2\pi\big),

    :math:`z_j = (\theta_j - \mu_j) / \sigma_j`: what
    :class:`~pyro.infer.Trace_ELBO` computes from the guide's and the prior's
    ``log_prob`` (the latter densely), with the same gradients.

    Args:
        active: The drawn active values, shape ``(k,)``.
        loc, scale: The posterior's active means and scales, shape ``(k,)``.
        m, s: The prior's mean and scale (from :func:`scalar_normal_prior`).
        n: Number of coordinates of the site (``k = n`` for a dense site).

    Returns:
        A 0-d tensor.
    """
    return _ConstantPriorMonteCarloKL.apply(active, loc, scale, m, s, n)


# ------------------------------------------------------ registered divergences
def _unwrap_independent(
    q: torch.distributions.Distribution,
) -> torch.distributions.Distribution:
    while isinstance(q, torch.distributions.Independent):
        q = q.base_dist
    return q


def _inactive_log_prob(
    p: SparseNormal, base: torch.distributions.Distribution
) -> torch.Tensor:
    r""":math:`\sum_{j \notin A} \log p_j(0)` for any factorised prior (dense)."""
    n = len(p.event_shape)
    zeros = torch.zeros(p.event_shape, dtype=p.loc.dtype, device=p.loc.device)
    log_p0 = base.log_prob(zeros)
    lead = log_p0.shape[: log_p0.dim() - n]
    log_p0 = log_p0.reshape(lead + (-1,))
    return log_p0.sum(-1) - log_p0.index_select(-1, p.indices).sum(-1)


def _kl_sparse_factorised(
    p: SparseNormal, q: torch.distributions.Distribution
) -> torch.Tensor:
    r"""The KL term of the ELBO for a sparse posterior against a factorised prior.

    .. math::

        \mathrm{KL}_A(q \,\|\, p) = \sum_{j \in A} \mathrm{KL}\big(
            \mathcal{N}(\mu_j, \sigma_j^2) \,\|\, p_j\big)
            - \sum_{j \notin A} \log p_j(0),

    the expectation of :math:`\log q(\theta) - \log p(\theta)` that
    :class:`~pyro.infer.Trace_ELBO` estimates. Normal priors: the closed form
    of :func:`sparse_normal_kl`. Any other univariate factorised prior: the
    analytic entropy of the active coordinates plus a one-draw
    reparameterised estimate of their cross-entropy (unbiased).
    """
    if q.event_shape != p.event_shape and len(q.event_shape) != 0:
        raise NotImplementedError
    base = _unwrap_independent(q)
    if base.event_shape != torch.Size():
        raise NotImplementedError  # not factorised: let Pyro fall back to MC
    if isinstance(base, torch.distributions.Normal):
        return sparse_normal_kl(
            p.loc, p.scale, p.indices, p.event_shape, base.loc, base.scale
        )
    dense = p.rsample()
    n = len(p.event_shape)
    log_p = base.log_prob(dense.expand(base.batch_shape[: -n or None] + dense.shape))
    return -p.entropy() - p.gather(log_p).sum(-1) - _inactive_log_prob(p, base)


@register_kl(SparseNormal, Independent)
def _kl_sparse_independent(p: SparseNormal, q: Independent) -> torch.Tensor:
    return _kl_sparse_factorised(p, q)


@register_kl(SparseNormal, Normal)
def _kl_sparse_normal(p: SparseNormal, q: Normal) -> torch.Tensor:
    return _kl_sparse_factorised(p, q)
