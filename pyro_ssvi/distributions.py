r"""The sparse-subspace Normal distribution and the maths of its ELBO terms.

:class:`SparseNormal` is the variational family of SSVI for one weight tensor:
independent Normals on a fixed set of ``k`` active coordinates, a point mass at
zero everywhere else. :class:`~pyro_ssvi.AutoSparseNormal` samples it at each
sparse site, directly under the site's name, so that Pyro's ELBOs score it
like any other distribution.

The draw (:meth:`SparseNormal.rsample_active`, ``loc + scale * eps``) and the
variational log-density (:meth:`SparseNormal.log_prob_active`) live here, once;
the KL terms live in :mod:`pyro_ssvi.kl`. Pyro's traced ELBOs (through the
distribution's methods) and the direct step of :mod:`pyro_ssvi._step` both
use them.

Example::

    q = SparseNormal(loc, scale, indices, shape=(400, 784))
    w = q.rsample()                   # (400, 784), zero off the active set
    kl = kl_divergence(q, prior)      # pyro_ssvi.kl: on the k active
                                      # coordinates, minus log p(0) off them
"""

from __future__ import annotations

import math
import warnings
from typing import Any, Sequence

import torch
from pyro.distributions import TorchDistribution
from torch.distributions import constraints

__all__ = ["ShiftedSparseNormal", "SparseNormal", "normal_log_prob"]

HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)


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
        return (0.5 + HALF_LOG_2PI + self.scale.log()).sum(-1)


def normal_log_prob(
    value: torch.Tensor, loc: torch.Tensor, scale: torch.Tensor
) -> torch.Tensor:
    r""":math:`\sum_j \log \mathcal{N}(x_j; \mu_j, \sigma_j^2)` over the last
    dimension: the variational log-density of independent Normals."""
    z = (value - loc) / scale
    return -(0.5 * z * z + scale.log()).sum(-1) - value.shape[-1] * HALF_LOG_2PI


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


_MOVED_TO_KL = (
    "constant_prior_kl",
    "monte_carlo_kl",
    "scalar_normal_prior",
    "sparse_normal_kl",
)


def __getattr__(name: str) -> Any:
    """The KL functions this module had in 0.1.0, now in :mod:`pyro_ssvi.kl`:
    still importable from here, with a ``DeprecationWarning`` (until 0.2)."""
    if name not in _MOVED_TO_KL:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    warnings.warn(
        f"pyro_ssvi.distributions.{name} moved to pyro_ssvi.kl.{name} after 0.1.0; "
        "import it from there (this path goes in 0.2).",
        DeprecationWarning,
        stacklevel=2,
    )
    from . import kl

    return getattr(kl, name)
