"""The sparse-subspace Normal distribution and its KL divergences.

:class:`SparseNormal` is the variational family of SSVI for one weight tensor:
independent Normals on a fixed set of ``k`` active coordinates, a point mass at
zero everywhere else. It is what :class:`~pyro_ssvi.AutoSparseNormal` samples at
each sparse site, directly under the site's name, so that
:class:`~pyro.infer.TraceMeanField_ELBO` can use the KL divergences registered
here.

Example::

    q = SparseNormal(loc, scale, indices, shape=(400, 784))
    w = q.rsample()                   # (400, 784), zero off the active set
    kl = kl_divergence(q, prior)      # KL on the k active coordinates, minus
                                      # the prior's log-density at the zeros
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
from pyro.distributions import Independent, Normal, TorchDistribution
from torch.distributions import constraints, register_kl

__all__ = ["ShiftedSparseNormal", "SparseNormal", "sparse_normal_kl"]

_HALF_LOG_2PI_E = 0.5 * math.log(2 * math.pi * math.e)


class SparseNormal(TorchDistribution):
    r"""Independent Normals on ``k`` active coordinates of a tensor, zero elsewhere.

    .. math::

        \theta_j \sim \mathcal{N}(\mu_j, \sigma_j^2) \text{ for } j \in A,
        \qquad \theta_j = 0 \text{ for } j \notin A,

    where :math:`A` (``indices``) indexes the flattened tensor of shape
    ``shape``. The whole tensor is one event, so ``event_shape == shape``.

    ``rsample`` returns the full tensor (zeros off the active set) and is
    differentiable in ``loc`` and ``scale``. ``log_prob`` scores the active
    entries only, which is the density of the active subspace; ``mean`` and
    ``variance`` are dense tensors with zeros off the active set.

    Args:
        loc: Active means, shape ``batch_shape + (k,)``.
        scale: Active standard deviations (positive), same shape as ``loc``.
        indices: Flat indices of the active coordinates into the flattened
            event, a 1-D integer tensor of length ``k``.
        shape: The full event shape, with ``prod(shape) >= k``.
        validate_args: As in :class:`torch.distributions.Distribution`.

    Raises:
        ValueError: If the shapes of ``loc``, ``scale``, ``indices`` and
            ``shape`` disagree.
    """

    arg_constraints = {"loc": constraints.real, "scale": constraints.positive}
    has_rsample = True

    def __init__(
        self,
        loc: torch.Tensor,
        scale: torch.Tensor,
        indices: torch.Tensor,
        shape: Sequence[int],
        validate_args: bool | None = None,
    ) -> None:
        event_shape = torch.Size(shape)
        loc, scale = torch.broadcast_tensors(loc, scale)
        if loc.dim() < 1:
            raise ValueError("SparseNormal needs loc of shape batch_shape + (k,).")
        if indices.dim() != 1 or indices.shape[0] != loc.shape[-1]:
            raise ValueError(
                f"SparseNormal: indices must be 1-D of length k={loc.shape[-1]} "
                f"(the last dim of loc), got shape {tuple(indices.shape)}."
            )
        if indices.dtype not in (torch.int64, torch.int32):
            raise ValueError("SparseNormal: indices must be an integer tensor.")
        if loc.shape[-1] > event_shape.numel():
            raise ValueError(
                f"SparseNormal: k={loc.shape[-1]} active coordinates do not fit "
                f"in shape {tuple(event_shape)}."
            )
        self.loc = loc
        self.scale = scale
        self.indices = indices
        self._numel = event_shape.numel()
        super().__init__(loc.shape[:-1], event_shape, validate_args=validate_args)

    @constraints.dependent_property(is_discrete=False, event_dim=0)
    def support(self) -> constraints.Constraint:
        return constraints.independent(constraints.real, len(self.event_shape))

    @property
    def num_active(self) -> int:
        """The number ``k`` of active coordinates."""
        return int(self.indices.shape[0])

    def expand(self, batch_shape, _instance=None):  # type: ignore[no-untyped-def]
        batch_shape = torch.Size(batch_shape)
        new = self._get_checked_instance(SparseNormal, _instance)
        k = self.loc.shape[-1]
        new.loc = self.loc.expand(batch_shape + (k,))
        new.scale = self.scale.expand(batch_shape + (k,))
        new.indices = self.indices
        new._numel = self._numel
        super(SparseNormal, new).__init__(
            batch_shape, self.event_shape, validate_args=False
        )
        new._validate_args = self._validate_args
        return new

    def scatter(self, active: torch.Tensor) -> torch.Tensor:
        """Place active values into a zero tensor of the full event shape.

        Args:
            active: Values of the active coordinates, shape ``(..., k)``.

        Returns:
            A tensor of shape ``active.shape[:-1] + event_shape``, differentiable
            in ``active``.
        """
        lead = active.shape[:-1]
        dense = active.new_zeros(lead + (self._numel,))
        dense = dense.index_copy(-1, self.indices, active)
        return dense.reshape(lead + self.event_shape)

    def gather(self, value: torch.Tensor) -> torch.Tensor:
        """Read the active coordinates out of full-shape tensors.

        Args:
            value: Tensor of shape ``(...,) + event_shape``.

        Returns:
            Tensor of shape ``(..., k)``.
        """
        n = len(self.event_shape)
        flat = value.reshape(value.shape[: value.dim() - n] + (self._numel,))
        return flat.index_select(-1, self.indices)

    def rsample(  # type: ignore[override]
        self, sample_shape: torch.Size = torch.Size()
    ) -> torch.Tensor:
        shape = self._extended_shape(sample_shape)[: -len(self.event_shape) or None]
        eps = torch.randn(
            shape + (self.loc.shape[-1],), dtype=self.loc.dtype, device=self.loc.device
        )
        return self.scatter(self.loc + self.scale * eps)

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        if self._validate_args:
            self._validate_sample(value)
        active = self.gather(value)
        var = self.scale**2
        lp = -((active - self.loc) ** 2) / (2 * var) - self.scale.log()
        return (lp - 0.5 * math.log(2 * math.pi)).sum(-1)

    @property
    def mean(self) -> torch.Tensor:
        return self.scatter(self.loc)

    @property
    def mode(self) -> torch.Tensor:
        return self.scatter(self.loc)

    @property
    def variance(self) -> torch.Tensor:
        return self.scatter(self.scale**2)

    def entropy(self) -> torch.Tensor:
        """Differential entropy of the active coordinates (shape ``batch_shape``)."""
        return (_HALF_LOG_2PI_E + self.scale.log()).sum(-1)


def _compact(t: torch.Tensor, event_shape: torch.Size) -> tuple[torch.Tensor, int]:
    """A prior parameter without its broadcast copies, and how often each value repeats.

    ``Normal(0., s).expand(shape)`` stores ``s`` once with zero strides; summing
    a function of it over the event equals summing over the stored values
    times the number of copies. Returns ``(t', m)`` with
    ``sum_event f(t) = m * sum_event' f(t')``.
    """
    n = len(event_shape)
    if t.dim() < n:
        t = t.expand(event_shape)
    multiplicity = 1
    for d in range(t.dim() - n, t.dim()):
        if t.stride(d) == 0 and t.shape[d] > 1:
            multiplicity *= t.shape[d]
            t = t.narrow(d, 0, 1)
    return t, multiplicity


def _is_constant(t: torch.Tensor, event_shape: torch.Size) -> bool:
    """Whether a prior parameter is one value over the event (zero strides)."""
    n = len(event_shape)
    if t.dim() < n:
        t = t.expand(event_shape)
    sizes, strides = t.shape[t.dim() - n :], t.stride()[t.dim() - n :]
    return all(st == 0 or sz == 1 for sz, st in zip(sizes, strides))


def _gather_param(
    t: torch.Tensor, event_shape: torch.Size, indices: torch.Tensor
) -> torch.Tensor:
    """Values of a prior parameter at the active coordinates, shape ``(..., k)``.

    Parameters that are constant over the event (the usual
    ``Normal(0., s).expand(shape)``, whose strides are zero) are read once
    instead of being materialised densely: shape ``(..., 1)``.
    """
    n = len(event_shape)
    if t.dim() < n:
        t = t.expand(event_shape)
    if _is_constant(t, event_shape):
        return t[(Ellipsis,) + (0,) * n].unsqueeze(-1)
    lead = t.shape[: t.dim() - n]
    flat = t.expand(lead + event_shape).reshape(lead + (event_shape.numel(),))
    return flat.index_select(-1, indices)


def _unwrap_independent(
    q: torch.distributions.Distribution,
) -> torch.distributions.Distribution:
    while isinstance(q, torch.distributions.Independent):
        q = q.base_dist
    return q


def _normal_log_prob_at_zero(loc: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return -0.5 * (loc / scale) ** 2 - scale.log() - 0.5 * math.log(2 * math.pi)


def sparse_normal_kl(
    loc: torch.Tensor,
    scale: torch.Tensor,
    indices: torch.Tensor,
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
    :math:`A` and prior :math:`\mathcal{N}(m_j, s_j^2)`. A prior whose
    parameters are one value over the tensor (``Normal(m, s).expand(shape)``,
    zero strides) costs :math:`O(k)`; the second sum is then
    :math:`(n - k) \log \mathcal{N}(0; m, s^2)`.

    Args:
        loc, scale: Active means and standard deviations, shape ``(..., k)``.
        indices: Flat indices of the active coordinates, shape ``(k,)``.
        shape: The full event shape (``n`` elements).
        prior_loc, prior_scale: The prior's parameters, broadcastable to
            ``batch + shape``.

    Returns:
        Shape ``batch``.
    """
    n = len(shape)
    prior_loc, prior_scale = torch.broadcast_tensors(prior_loc, prior_scale)
    loc_q = _gather_param(prior_loc, shape, indices)
    scale_q = _gather_param(prior_scale, shape, indices)
    var_ratio = (scale / scale_q) ** 2
    t1 = ((loc - loc_q) / scale_q) ** 2
    active_kl = (0.5 * (var_ratio + t1 - 1 - var_ratio.log())).sum(-1)
    k = indices.shape[0]
    active_lp0 = _normal_log_prob_at_zero(loc_q, scale_q)
    if _is_constant(prior_loc, shape) and _is_constant(prior_scale, shape):
        return active_kl - (shape.numel() - k) * active_lp0[..., 0]
    lead = prior_loc.shape[: prior_loc.dim() - n] if prior_loc.dim() >= n else ()
    loc_c, m_loc = _compact(prior_loc, shape)
    scale_c, m_scale = _compact(prior_scale, shape)
    if m_loc == m_scale and loc_c.shape == scale_c.shape:
        total = m_loc * _normal_log_prob_at_zero(loc_c, scale_c).reshape(
            tuple(lead) + (-1,)
        ).sum(-1)
    else:  # different broadcast patterns: sum densely
        total = (
            _normal_log_prob_at_zero(prior_loc, prior_scale)
            .reshape(tuple(lead) + (-1,))
            .sum(-1)
        )
    active_lp0 = active_lp0.expand(active_lp0.shape[:-1] + (k,)).sum(-1)
    return active_kl - (total - active_lp0)


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
    :class:`~pyro.infer.Trace_ELBO` estimates: the inactive coordinates are
    exact zeros, so the prior's density there belongs to the objective. For
    a fixed prior the second sum is a constant; for a prior with learnable
    parameters (hierarchical, ARD) it carries their gradient, so they are
    fitted as under ``Trace_ELBO``.
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
    # Any other univariate factorised prior: analytic entropy of the active
    # coordinates plus a one-draw reparameterised estimate of the cross-entropy,
    # both restricted to the active set (an unbiased estimate of the KL).
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


class ShiftedSparseNormal(TorchDistribution):
    r"""A :class:`SparseNormal` translated by a dense tensor: :math:`\theta + \delta`.

    :class:`~pyro_ssvi.SubspaceScheduler` samples sparse sites from this with
    :math:`\delta = 0` (a leaf that requires grad), so that
    :math:`\partial L / \partial \delta` is the gradient of the loss with
    respect to every coordinate of the weight, active or not: the addition
    score. Only the scheduler's likelihood pass samples it; no KL is
    registered for it.

    Args:
        base: The sparse posterior.
        shift: A tensor of the event shape.
    """

    arg_constraints: dict = {}
    has_rsample = True

    def __init__(self, base: SparseNormal, shift: torch.Tensor) -> None:
        self.base = base
        self.shift = shift
        super().__init__(base.batch_shape, base.event_shape, validate_args=False)

    @constraints.dependent_property(is_discrete=False, event_dim=0)
    def support(self) -> constraints.Constraint:
        return self.base.support

    def rsample(  # type: ignore[override]
        self, sample_shape: torch.Size = torch.Size()
    ) -> torch.Tensor:
        return self.base.rsample(sample_shape) + self.shift

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        return self.base.log_prob(value - self.shift)

    @property
    def mean(self) -> torch.Tensor:
        return self.base.mean + self.shift

    @property
    def variance(self) -> torch.Tensor:
        return self.base.variance
