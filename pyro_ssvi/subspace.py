r"""Pure index arithmetic of SSVI's subspace reselection.

Every function here is a function of tensors: no guide, no optimiser, no
Pyro. :class:`~pyro_ssvi.SubspaceScheduler` (and through it
:class:`~pyro_ssvi.SparseSVI`) calls them and applies the result to the
guide's parameters and the optimiser's moments; nothing else in the library
does index arithmetic.

One reselection of a site with ``k`` active coordinates out of ``n``
(Li et al., 2024, Algorithm 1)::

    s = num_to_swap(k, drop_fraction)                     # floor(r k)
    r = reselect(indices, removal_scores, addition_scores, s)
    loc = move(loc, r.source, fill=0.0)                   # kept values follow
    moments = move(exp_avg, r.source, fill=0.0)           # so do Adam's

References:
    Li, Miao, Qiu, Zhang. *Training Bayesian Neural Networks with Sparse
    Subspace Variational Inference*, ICLR 2024, arXiv:2402.11025.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor

from .criteria import top_k

__all__ = ["Reselection", "move", "num_to_swap", "refill_value", "reselect"]


class Reselection(NamedTuple):
    """The outcome of :func:`reselect` for one site.

    Attributes:
        indices: The new active set, sorted flat indices, shape ``(k,)``.
        source: For each new position ``i``, the position in the *old*
            active set that coordinate ``indices[i]`` held, or ``-1`` if it
            was inactive (newly active), shape ``(k,)``, int64.
        num_removed: Coordinates put up for replacement (``s``); some may
            have been added straight back.
        num_added: Coordinates that were inactive and are now active (as
            many active ones became inactive).
    """

    indices: Tensor
    source: Tensor
    num_removed: int
    num_added: int


def num_to_swap(k: int, drop_fraction: float) -> int:
    r"""Coordinates to replace at one update, :math:`s = \lfloor r k \rfloor`.

    Args:
        k: Active coordinates of the site.
        drop_fraction: :math:`r \in [0, 1]`.

    Returns:
        An int in ``[0, k]``.
    """
    if not 0.0 <= drop_fraction <= 1.0:
        raise ValueError(f"drop_fraction must be in [0, 1], got {drop_fraction!r}")
    return min(k, int(math.floor(drop_fraction * k)))


def reselect(
    indices: Tensor, removal_scores: Tensor, addition_scores: Tensor, num_swap: int
) -> Reselection:
    r"""Remove the ``num_swap`` lowest-scoring active coordinates, add as many.

    With active set :math:`A` (``indices``, sorted, :math:`|A| = k`),
    removal scores :math:`r \in \mathbb{R}^k` of the active coordinates and
    addition scores :math:`a \in \mathbb{R}^n` of all coordinates:

    .. math::

        K &= \operatorname{top}_{k - s}(r)
            \quad\text{(positions kept, by removal score)}, \\
        G &= \operatorname{top}_{s}\big(a_j : j \notin A_K\big)
            \quad\text{(flat indices grown, among all not kept)}, \\
        A' &= \operatorname{sort}(A_K \cup G).

    :math:`G` may contain coordinates just removed: they come straight back
    (``source`` points at their old position, so they keep their values).
    Ties follow :func:`~pyro_ssvi.criteria.top_k`: the lower position (for
    :math:`r`) or the lower flat index (for :math:`a`) wins; NaN counts as
    :math:`-\infty`. The result does not depend on how ties were stored.

    Args:
        indices: Sorted, unique flat indices of the active set, shape
            ``(k,)``, an integer tensor.
        removal_scores: Scores of the active coordinates, shape ``(k,)``
            (higher means keep).
        addition_scores: Scores of all ``n`` coordinates, shape ``(n,)``
            (higher means add); the entries of kept coordinates are ignored.
        num_swap: :math:`s`, in ``[0, k]``.

    Returns:
        A :class:`Reselection`.

    Raises:
        ValueError: If the shapes disagree or ``num_swap`` is out of range.
    """
    k, n = indices.numel(), addition_scores.numel()
    if indices.dim() != 1 or removal_scores.shape != (k,):
        raise ValueError(
            f"reselect: indices {tuple(indices.shape)} and removal_scores "
            f"{tuple(removal_scores.shape)} must both have shape (k,)"
        )
    if addition_scores.dim() != 1 or n < k:
        raise ValueError(
            f"reselect: addition_scores must have shape (n,) with n >= k={k}, "
            f"got {tuple(addition_scores.shape)}"
        )
    if not 0 <= num_swap <= k:
        raise ValueError(f"reselect: num_swap must be in [0, {k}], got {num_swap}")
    indices = indices.to(torch.int64)
    keep = top_k(removal_scores, k - num_swap)
    kept = indices[keep]
    grow = _grow(addition_scores, kept, num_swap)
    new, order = torch.cat([kept, grow]).sort()
    # Where each grown coordinate sat in the old active set, if it was active.
    pos = torch.searchsorted(indices, grow).clamp_(max=max(k - 1, 0))
    was_active = indices[pos] == grow if k else torch.zeros_like(grow, dtype=torch.bool)
    grow_source = torch.where(was_active, pos, torch.full_like(pos, -1))
    source = torch.cat([keep, grow_source])[order]
    return Reselection(new, source, num_swap, int((~was_active).sum()))


def _grow(scores: Tensor, kept: Tensor, s: int) -> Tensor:
    """Flat indices of the ``s`` best-scoring coordinates outside ``kept``."""
    if s == 0:
        return kept.new_empty(0)
    masked = scores.clone()
    masked[kept] = -math.inf
    grow = top_k(masked, s)
    # A kept coordinate can only be picked through its -inf mask: checking the
    # s picks for -inf is O(s), where isin(grow, kept) sorts k entries.
    if not bool((masked[grow] == -math.inf).any()):
        return grow
    # Fewer than s finite scores outside the kept set: the -inf mask tied with
    # genuine -inf (or NaN) scores. Select among the candidates explicitly.
    candidate = torch.ones_like(scores, dtype=torch.bool)
    candidate[kept] = False
    pool = torch.nonzero(candidate).squeeze(1)
    return pool[top_k(scores[pool], s)]


def move(values: Tensor, source: Tensor, fill: float | Tensor) -> Tensor:
    r"""Values of the new active set: :math:`v'_i = v_{\text{source}_i}`, or ``fill``.

    Args:
        values: Values over the old active set, shape ``(k, ...)``.
        source: From :attr:`Reselection.source`, shape ``(k,)``.
        fill: Value of newly active coordinates (``source == -1``).

    Returns:
        A new tensor of ``values.shape``.
    """
    gathered = values.index_select(0, source.clamp(min=0))
    new = (source >= 0).reshape((-1,) + (1,) * (values.dim() - 1))
    return torch.where(new, gathered, torch.as_tensor(fill, dtype=values.dtype))


def refill_value(moved: Tensor, source: Tensor) -> Tensor:
    r"""Mean over the coordinates that stay active (kept or re-added).

    New coordinates' unconstrained scales start at this mean, as in the
    reference implementation (the mean :math:`\rho` over the layer's active
    entries after the update, excluding the newly grown ones).

    Args:
        moved: Values after :func:`move` (new coordinates arbitrary).
        source: From :attr:`Reselection.source`.

    Returns:
        A 0-dim tensor (0 when no coordinate stays).
    """
    stays = source >= 0
    if not bool(stays.any()):
        return moved.new_zeros(())
    return moved[stays].mean()
