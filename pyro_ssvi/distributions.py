r"""The sparse-subspace Normal distribution and the maths of its ELBO terms.

:class:`SparseNormal` is the variational family of SSVI for one weight tensor:
independent Normals on a fixed set of ``k`` active coordinates, a point mass at
zero everywhere else. :class:`~pyro_ssvi.AutoSparseNormal` samples it at each
sparse site, directly under the site's name, so that Pyro's ELBOs score it
like any other distribution.

Every formula of a sparse site's ELBO terms lives here, once, and both ways of
computing a step use it: Pyro's traced ELBOs (through the distribution's
methods and the registered KL divergences) and the direct step of
:mod:`pyro_ssvi._step`.

* the draw: :meth:`SparseNormal.rsample_active`, ``loc + scale * eps``;
* the variational log-density: :meth:`SparseNormal.log_prob_active`;
* the analytic KL term: :func:`sparse_normal_kl` (what
  :class:`~pyro.infer.TraceMeanField_ELBO` uses);
* the Monte Carlo KL term of a draw: :func:`monte_carlo_kl` (what
  :class:`~pyro.infer.Trace_ELBO` estimates, in ``O(k)``).

Example::

    q = SparseNormal(loc, scale, indices, shape=(400, 784))
    w = q.rsample()                   # (400, 784), zero off the active set
    kl = kl_divergence(q, prior)      # KL on the k active coordinates, minus
                                      # the prior's log-density at the zeros
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import torch
from pyro.distributions import Independent, Normal, TorchDistribution
from torch.autograd.function import once_differentiable
from torch.distributions import constraints, register_kl

__all__ = [
    "ShiftedSparseNormal",
    "SparseNormal",
    "constant_prior_kl",
    "monte_carlo_kl",
    "normal_log_prob",
    "scalar_normal_prior",
    "sparse_normal_kl",
]

_HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)


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
        validate_args: As in :class:`torch.distributions.Distribution`;
            ``False`` also skips the shape checks (the guide, which built the
            tensors itself, passes ``False`` on every step).

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
        if loc.shape != scale.shape:
            loc, scale = torch.broadcast_tensors(loc, scale)
        if validate_args is not False:
            _check_shapes(loc, indices, event_shape)
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

    def rsample_active(self, sample_shape: torch.Size = torch.Size()) -> torch.Tensor:
        r"""A draw of the active coordinates, :math:`\mu + \sigma \odot \varepsilon`.

        The one way a sparse weight is drawn: :meth:`rsample`, the guide's
        sparse kernels and the direct step all draw through here.

        Returns:
            Shape ``sample_shape + batch_shape + (k,)``.
        """
        shape = torch.Size(sample_shape) + self.loc.shape
        eps = torch.randn(shape, dtype=self.loc.dtype, device=self.loc.device)
        return self.loc + self.scale * eps

    def rsample(  # type: ignore[override]
        self, sample_shape: torch.Size = torch.Size()
    ) -> torch.Tensor:
        return self.scatter(self.rsample_active(sample_shape))

    def log_prob_active(self, active: torch.Tensor) -> torch.Tensor:
        r""":math:`\sum_{j \in A} \log \mathcal{N}(\theta_j; \mu_j, \sigma_j^2)`.

        Args:
            active: Values of the active coordinates, shape ``(..., k)``.

        Returns:
            Shape ``(...)``.
        """
        return normal_log_prob(active, self.loc, self.scale)

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        if self._validate_args:
            self._validate_sample(value)
        return self.log_prob_active(self.gather(value))

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
        return (0.5 + _HALF_LOG_2PI + self.scale.log()).sum(-1)


def normal_log_prob(
    value: torch.Tensor, loc: torch.Tensor, scale: torch.Tensor
) -> torch.Tensor:
    r""":math:`\sum_j \log \mathcal{N}(x_j; \mu_j, \sigma_j^2)` over the last
    dimension: the variational log-density of independent Normals."""
    z = (value - loc) / scale
    return -(0.5 * z * z + scale.log()).sum(-1) - value.shape[-1] * _HALF_LOG_2PI


def _check_shapes(
    loc: torch.Tensor, indices: torch.Tensor, event_shape: torch.Size
) -> None:
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


# ----------------------------------------------------------------- prior maths
def _normal_log_prob_at_zero(loc: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return -0.5 * (loc / scale) ** 2 - scale.log() - _HALF_LOG_2PI


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
            + (n - k) * _HALF_LOG_2PI
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
            + (n * _log(s) + (n - k) * _HALF_LOG_2PI)
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


class ShiftedSparseNormal(TorchDistribution):
    r"""A :class:`SparseNormal` translated by a dense tensor: :math:`\theta + \delta`.

    The traced growth pass of :class:`~pyro_ssvi.SubspaceScheduler` samples
    sparse sites from this with :math:`\delta = 0` (a leaf that requires
    grad), so that :math:`\partial L / \partial \delta` is the gradient of the
    loss with respect to every coordinate of the weight, active or not: the
    addition score. No KL is registered for it.

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
