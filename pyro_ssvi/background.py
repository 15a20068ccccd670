r"""A sparse posterior with a learnable background variance on its inactive coordinates.

:class:`BackgroundSparseNormal` is :class:`~pyro_ssvi.distributions.SparseNormal`
whose inactive coordinates are not fixed at zero but drawn from
:math:`\mathcal{N}(0, s_c^2)`, with :math:`s_c` shared per input unit (the
*column* ``c`` of a weight ``(out, in, *kernel)``) or per layer (one ``s``), or
the product :math:`s_{jc} = r_j c_c` of a row and a column scale (``"rowcol"``,
``out + in`` scales; every formula below then carries :math:`r_j^2` per row):

.. math::

    \theta_j \sim \mathcal{N}(\mu_j, \sigma_j^2) \text{ for } j \in A, \qquad
    \theta_j \sim \mathcal{N}(0, s_{c(j)}^2) \text{ for } j \notin A.

It keeps SSVI's :math:`O(k)` parameters (plus ``in`` or 1 scales) and, in a
layer, its :math:`O(k)` compute: the background is never sampled densely
there. Its contribution to output ``j`` of a linear layer is Gaussian with
variance

.. math::

    v_j = \sum_i s_i^2 x_i^2 - \sum_{i \in A_j} s_i^2 x_i^2,

one dense vector product (the same for every output) minus a product over
the active pattern (:func:`linear_background_variance`); for a convolution
per input channel, a box-sum of :math:`x_c^2` over the kernel window minus the
active pattern's share (:func:`conv_background_variance`). The layers of
:mod:`pyro_ssvi.poutine` add :math:`\sqrt{v}\,\varepsilon` (weight sampling)
or :math:`v` to the variance (local reparameterisation): per example, the
same distribution as a dense weight draw, since the rows of a weight are
independent. Any other use of the weight gets an exact dense draw
(``BackgroundSparseNormal.rsample``).

At :math:`s = 0` every draw and every layer output is exactly SSVI's. The
KL term against a Normal prior :math:`\mathcal{N}(m, \sigma_p^2)` (one value
over the site) is the active coordinates' (as SSVI's) plus, per inactive
coordinate, the KL of :math:`\mathcal{N}(0, s_c^2)`:

.. math::

    \mathrm{KL} = \mathrm{KL}_A + \sum_c (n_c - k_c) \Big[\log\frac{\sigma_p}{s_c}
        + \frac{s_c^2 + m^2}{2\sigma_p^2} - \frac12\Big],

with :math:`n_c - k_c` the inactive count of column ``c``, from the active
indices in :math:`O(k)` (:func:`background_kl`). SSVI's point mass has no such
term (it scores the prior's density at zero instead), and this one diverges
as :math:`s \to 0`: the background KL is not SSVI's in that limit, only the
draws are.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F
from pyro.distributions import Independent, Normal
from torch.distributions import register_kl

from .distributions import SparseNormal
from .kl import constant_prior_kl, scalar_normal_prior
from .layers.lrt import CONV_FUNCTIONS, JITTER

__all__ = [
    "BACKGROUNDS",
    "BackgroundSparseNormal",
    "background_kl",
    "background_shape",
    "conv_background_variance",
    "linear_background_variance",
    "noise_std",
]

#: The background's sharing: one scale per input unit (column), per layer, or
#: a product :math:`s_{jc} = r_j c_c` of a row (output unit) and a column scale.
BACKGROUNDS = ("column", "layer", "rowcol")


def background_shape(kind: str, shape: torch.Size) -> torch.Size:
    """Shape of a site's background scales: ``(in,)`` per column of an
    ``(out, in, *kernel)`` weight, ``(1,)`` per layer, ``(out + in,)`` for
    ``"rowcol"`` (the row scales, then the column scales)."""
    if len(shape) < 2:
        return torch.Size([1])
    if kind == "column":
        return torch.Size([shape[1]])
    if kind == "rowcol":
        return torch.Size([shape[0] + shape[1]])
    return torch.Size([1])


def noise_std(variance: torch.Tensor) -> torch.Tensor:
    r""":math:`\sqrt{v + J} - \sqrt{J}` (``J`` the LRT jitter): the standard
    deviation of the background noise on the weight-sampling path, exactly 0
    at :math:`v = 0` (so SSVI's outputs at :math:`s = 0`) with a finite
    gradient there; it differs from :math:`\sqrt v` by less than
    :math:`\sqrt J = 10^{-4}`."""
    return torch.sqrt(variance + JITTER) - math.sqrt(JITTER)


class BackgroundSparseNormal(SparseNormal):
    r"""A :class:`SparseNormal` plus :math:`\mathcal{N}(0, s_c^2)` off its active set.

    Args:
        loc, scale, indices, shape, validate_args: As :class:`SparseNormal`.
        background: The background scales, shape ``(in,)`` (per column of a
            weight of ``shape`` ``(out, in, *kernel)``), ``(1,)`` (per
            layer) or ``(out + in,)`` (row scales ``r`` then column scales
            ``c``: :math:`s_{jc} = r_j c_c`); non-negative.
    """

    def __init__(
        self,
        loc: torch.Tensor,
        scale: torch.Tensor,
        indices: torch.Tensor,
        shape: Sequence[int],
        background: torch.Tensor,
        validate_args: bool | None = None,
    ) -> None:
        super().__init__(loc, scale, indices, shape, validate_args=validate_args)
        event = torch.Size(shape)
        if validate_args is not False and background.shape not in {
            background_shape(kind, event) for kind in BACKGROUNDS
        }:
            raise ValueError(
                "BackgroundSparseNormal: background must have shape (in,), (1,) or "
                f"(out + in,) for a site of shape {tuple(event)}, got "
                f"{tuple(background.shape)}."
            )
        self.background = background
        self.rowcol = len(event) >= 2 and background.numel() == event[0] + event[1]

    def expand(self, batch_shape, _instance=None):  # type: ignore[no-untyped-def]
        new = self._get_checked_instance(BackgroundSparseNormal, _instance)
        new = super().expand(batch_shape, new)
        new.background, new.rowcol = self.background, self.rowcol
        return new

    def with_loc(self, loc: torch.Tensor) -> "BackgroundSparseNormal":
        """The same posterior with other active means (the growth pass)."""
        return BackgroundSparseNormal(
            loc, self.scale, self.indices, self.event_shape, self.background, False
        )

    # ------------------------------------------------------------ columns
    def columns(self) -> torch.Tensor:
        """The column (input unit) of every active coordinate, shape ``(k,)``."""
        shape = self.event_shape
        if len(shape) < 2:
            return torch.zeros_like(self.indices)
        inner = shape[2:].numel()
        return torch.div(self.indices, inner, rounding_mode="floor") % shape[1]

    def rows(self) -> torch.Tensor:
        """The row (output unit) of every active coordinate, shape ``(k,)``."""
        inner = self.event_shape[1:].numel()
        return torch.div(self.indices, inner, rounding_mode="floor")

    def column_variance(self) -> torch.Tensor:
        """:math:`s_c^2` (``"rowcol"``: :math:`c_c^2`) per column, shape
        ``(in,)`` (broadcast per layer)."""
        width = self.event_shape[1] if len(self.event_shape) >= 2 else 1
        if self.rowcol:
            return self.background[self.event_shape[0] :] ** 2
        return (self.background**2).expand(width)

    def row_variance(self) -> torch.Tensor | None:
        """``"rowcol"``: :math:`r_j^2` per row, shape ``(out,)``; else None."""
        return self.background[: self.event_shape[0]] ** 2 if self.rowcol else None

    def active_background_variance(self) -> torch.Tensor:
        """:math:`s^2` of each active coordinate, shape ``(k,)``."""
        s2 = self.column_variance()
        values = (
            s2.expand(self.indices.shape) if s2.numel() == 1 else s2[self.columns()]
        )
        rows = self.row_variance()
        return values if rows is None else values * rows[self.rows()]

    def inactive_counts(self) -> torch.Tensor:
        """:math:`n_c - k_c`, the inactive coordinates per column, in ``O(k)``."""
        shape = self.event_shape
        if self.background.numel() == 1:
            k = self.indices.new_tensor([self.indices.numel()])
            return (shape.numel() - k).to(self.loc.dtype)
        per_column = shape.numel() // shape[1]
        active = torch.bincount(self.columns(), minlength=shape[1])
        return (per_column - active).to(self.loc.dtype)

    def background_variance(self) -> torch.Tensor:
        """The dense per-coordinate background variance (0 on the active set)."""
        shape = self.event_shape
        s2 = self.column_variance()
        view = [1, -1] + [1] * (len(shape) - 2) if len(shape) >= 2 else [-1]
        dense = s2.reshape(view).expand(shape)
        rows = self.row_variance()
        if rows is not None:
            dense = dense * rows.reshape([-1] + [1] * (len(shape) - 1))
        dense = dense.reshape(-1).clone()
        dense = dense.index_fill(0, self.indices, 0.0)
        return dense.reshape(shape)

    # ------------------------------------------------------------ draws
    def rsample_background(
        self, sample_shape: torch.Size = torch.Size()
    ) -> torch.Tensor:
        """A dense draw of the background (zeros on the active set)."""
        std = self.background_variance().sqrt()
        shape = torch.Size(sample_shape) + self.event_shape
        eps = torch.randn(shape, dtype=self.loc.dtype, device=self.loc.device)
        return std * eps

    def rsample(  # type: ignore[override]
        self, sample_shape: torch.Size = torch.Size()
    ) -> torch.Tensor:
        active = self.scatter(self.rsample_active(sample_shape))
        return active + self.rsample_background(sample_shape)

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        """Active log-density plus the background's (dense, ``O(n)``)."""
        var = self.background_variance()
        off = torch.ones(self.event_shape, dtype=torch.bool, device=value.device)
        off = off.reshape(-1).index_fill(0, self.indices, False).reshape(off.shape)
        safe = torch.where(off, var, torch.ones_like(var))
        bg = torch.where(
            off, Normal(0.0, safe.sqrt(), validate_args=False).log_prob(value), 0.0
        )
        n = len(self.event_shape)
        return super().log_prob(value) + bg.reshape(
            bg.shape[: bg.dim() - n] + (-1,)
        ).sum(-1)

    @property
    def variance(self) -> torch.Tensor:
        return self.scatter(self.scale**2) + self.background_variance()

    def inactive_log_scale(self) -> torch.Tensor:
        r""":math:`\sum_{j \notin A} \log s_j` in ``O(k + \text{in})``: from the
        inactive counts per column (and, ``"rowcol"``, per row)."""
        if not self.rowcol:
            return (self.inactive_counts() * self.background.log()).sum()
        out = self.event_shape[0]
        per_row = self.event_shape[1:].numel()
        rows = per_row - torch.bincount(self.rows(), minlength=out).to(self.loc.dtype)
        logs = self.background.log()
        return (rows * logs[:out]).sum() + (self.inactive_counts() * logs[out:]).sum()

    def inactive_square_scale(self) -> torch.Tensor:
        r""":math:`\sum_{j \notin A} s_j^2` in ``O(k + \text{in})``; for
        ``"rowcol"`` :math:`\sum_r r_r^2 (\kappa \sum_c c_c^2 - \sum_{c \in
        A_r} c_c^2)`, :math:`\kappa` the kernel size."""
        rows = self.row_variance()
        if rows is None:
            return (self.inactive_counts() * self.background**2).sum()
        c2 = self.column_variance()
        kernel = self.event_shape[2:].numel()
        active = torch.zeros_like(rows).index_add(0, self.rows(), c2[self.columns()])
        return (rows * (kernel * c2.sum() - active)).sum()

    def entropy(self) -> torch.Tensor:
        r"""Active entropy plus :math:`\sum_{j \notin A} (\frac12 +
        \frac12\log 2\pi + \log s_j)`."""
        free = self.event_shape.numel() - self.indices.numel()
        bg = free * (0.5 + 0.5 * math.log(2 * math.pi)) + self.inactive_log_scale()
        return super().entropy() + bg


def background_kl(
    q: BackgroundSparseNormal, prior_loc: torch.Tensor, prior_scale: torch.Tensor
) -> torch.Tensor:
    r"""The KL term of a :class:`BackgroundSparseNormal` against a Normal prior
    that is one value :math:`\mathcal{N}(m, \sigma_p^2)` over the site (see
    the module's formula); :math:`O(k + \text{in})`.

    Raises:
        NotImplementedError: For any other prior (then Pyro's ELBOs fall back
            to the Monte Carlo term of :meth:`BackgroundSparseNormal.log_prob`).
    """
    scalar = None
    if q.loc.dim() == 1:
        scalar = scalar_normal_prior(prior_loc, prior_scale, q.event_shape)
    if scalar is None:
        raise NotImplementedError
    m, sp = scalar
    active = constant_prior_kl(q.loc, q.scale, m, sp, q.loc.shape[-1])
    free = q.event_shape.numel() - q.indices.numel()
    log_sp = math.log(sp) if isinstance(sp, float) else sp.log()
    const = free * (log_sp + m * m / (2 * sp * sp) - 0.5)
    squares = q.inactive_square_scale() / (2 * sp * sp)
    return active + const - q.inactive_log_scale() + squares


@register_kl(BackgroundSparseNormal, Independent)
def _kl_background_independent(p: BackgroundSparseNormal, q: Independent) -> Any:
    base = q
    while isinstance(base, Independent):
        base = base.base_dist
    if not isinstance(base, Normal):
        raise NotImplementedError
    return background_kl(p, base.loc, base.scale)


@register_kl(BackgroundSparseNormal, Normal)
def _kl_background_normal(p: BackgroundSparseNormal, q: Normal) -> Any:
    return background_kl(p, q.loc, q.scale)


# ------------------------------------------------------------------- layers
def linear_background_variance(
    x: torch.Tensor,
    post: BackgroundSparseNormal,
    pattern_product: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
) -> torch.Tensor:
    r""":math:`v_j = x^2 \cdot s^2 - \sum_{i \in A_j} s_i^2 x_i^2` for every
    output ``j`` of a linear layer, shape ``(..., out)``.

    Args:
        x: Inputs ``(..., in)``.
        post: The site's posterior (weight ``(out, in)``).
        pattern_product: ``f(x2, values)`` computing ``x2 @ W.T`` for the
            sparse ``W`` with these active values (the sparse kernel of the
            layer's path); default: a dense product of the scattered values.
    """
    x2 = x * x
    total = (x2 @ post.column_variance()).unsqueeze(-1)
    rows = post.row_variance()  # "rowcol": r_j^2 times the column sum
    total = total if rows is None else total * rows
    values = post.active_background_variance()
    if pattern_product is None:
        share = F.linear(x2, post.scatter(values))
    else:
        share = pattern_product(x2, values)
    return (total - share).clamp_min(0.0)


def conv_background_variance(
    x: torch.Tensor, post: BackgroundSparseNormal, conv_kwargs: dict[str, Any]
) -> torch.Tensor:
    r"""The background variance of a convolution's outputs: per input channel
    ``c``, :math:`s_c^2` times the box-sum of :math:`x_c^2` over the kernel
    window (one convolution with one output channel, broadcast over the
    output channels), minus the active pattern's share."""
    shape = post.event_shape
    conv = CONV_FUNCTIONS[len(shape) - 2]
    x2 = x * x
    groups = conv_kwargs.get("groups", 1)
    s2 = post.column_variance()
    box = s2.reshape(1, -1, *([1] * (len(shape) - 2))).expand(1, *shape[1:])
    if groups != 1:  # each group sees its own channels: one box-sum per group
        box = box.expand(groups, *shape[1:])
    total = conv(x2, box.contiguous(), None, **conv_kwargs)
    if groups != 1:
        total = total.repeat_interleave(shape[0] // groups, dim=-len(shape) + 1)
    rows = post.row_variance()
    if rows is not None:  # "rowcol": r^2 per output channel
        total = total * rows.reshape(-1, *([1] * (len(shape) - 2)))
    share = conv(
        x2, post.scatter(post.active_background_variance()), None, **conv_kwargs
    )
    return (total - share).clamp_min(0.0)
