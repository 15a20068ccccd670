r"""Pure index arithmetic of SSVI's subspace reselection: functions of tensors.

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
import operator
from typing import Any, NamedTuple

import torch
from torch import Tensor

__all__ = [
    "Reselection",
    "move",
    "num_to_swap",
    "regrown_scale",
    "reselect",
    "top_k",
]


class Reselection(NamedTuple):
    """The outcome of :func:`reselect` for one site.

    ``indices``: the new active set, sorted, ``(k,)``; ``source``: for each new
    position the position in the *old* active set of that coordinate, or -1 if
    newly active (int64, ``(k,)``); ``num_dropped``: the ``s`` put up for
    replacement; ``num_swapped``: coordinates newly active (as many left).
    """

    indices: Tensor
    source: Tensor
    num_dropped: int
    num_swapped: int


def num_to_swap(k: int, drop_fraction: float) -> int:
    r"""Coordinates to replace at one update, :math:`s = \lfloor r k \rfloor`.

    Raises:
        ValueError: If ``drop_fraction`` :math:`r` is outside ``[0, 1]``.
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
    Ties follow :func:`top_k` (the lower position or flat index wins); NaN
    counts as :math:`-\infty`. ``indices`` are sorted and unique.

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

    ``values`` has shape ``(k, ...)``; ``fill`` goes where ``source == -1``.
    """
    gathered = values.index_select(0, source.clamp(min=0))
    new = (source >= 0).reshape((-1,) + (1,) * (values.dim() - 1))
    return torch.where(new, gathered, torch.as_tensor(fill, dtype=values.dtype))


def regrown_scale(
    moved: Tensor, source: Tensor, rule: str | float, transform: Any
) -> Tensor:
    r"""The unconstrained scale of newly active coordinates (a 0-d tensor).

    ``rule="mean"``: the mean :math:`\rho` of the ``moved`` unconstrained scales
    that stay active (kept or re-added), as the reference implementation (0
    when none stays); a float :math:`\sigma_0 > 0`: ``transform.inv(sigma_0)``.
    """
    if rule != "mean":
        return transform.inv(
            torch.as_tensor(rule, dtype=moved.dtype, device=moved.device)
        )
    stays = source >= 0
    if not bool(stays.any()):
        return moved.new_zeros(())
    return moved[stays].mean()


def top_k(scores: Tensor, k: int) -> Tensor:
    """Positions of the ``k`` largest scores, with stable tie-breaking.

    Among equal scores the lower position wins, so the selection is
    deterministic across runs and devices. NaN counts as ``-inf``, and ``-inf``
    entries are chosen only when fewer than ``k`` finite ones exist. Returns
    the sorted int64 positions, shape ``(k,)``.

    Raises:
        TypeError: If ``k`` is not an int.
        ValueError: If ``scores`` is not 1-D or ``k`` is out of range.
    """
    if isinstance(k, bool):
        raise TypeError("k must be an int, got bool")
    try:
        k = operator.index(k)
    except TypeError:
        raise TypeError(f"k must be an int, got {type(k)!r}") from None
    if scores.dim() != 1:
        raise ValueError(
            f"scores must be 1-D, got shape {tuple(scores.shape)}; flatten it first"
        )
    if not 0 <= k <= scores.numel():
        raise ValueError(f"k must be in [0, {scores.numel()}], got {k}")
    if bool(torch.isnan(scores).any()):  # copy only when there is NaN to map
        scores = torch.where(torch.isnan(scores), -math.inf, scores)
    return _top_k(scores, k)


def _top_k(scores: Tensor, k: int) -> Tensor:
    """:func:`top_k` on NaN-free scores, by exact selection (no full sort).

    Among equal scores the lowest positions win, exactly as in a stable
    descending sort. Three exact shortcuts keep the cost near ``O(n)``: the
    complement when ``k > n / 2``; a candidate pre-filter for large ``n`` and
    small ``k`` (a strided sample gives a threshold, the count of scores above
    it proves that the top ``k`` are among them, else the full path runs);
    and ``torch.topk`` for the threshold value itself.
    """
    n = scores.numel()
    if k == 0:
        return torch.empty(0, dtype=torch.int64, device=scores.device)
    if k == n:
        return torch.arange(n, device=scores.device)
    if 2 * k > n:  # keep = all but the n - k last in stable descending order
        flipped = _top_k(-scores.flip(0), n - k)  # ties: highest positions go
        keep = torch.ones(n, dtype=torch.bool, device=scores.device)
        keep[n - 1 - flipped] = False
        return torch.nonzero(keep).squeeze(1)
    if n >= _PREFILTER_MIN and k * _PREFILTER_RATIO <= n:
        candidates = _candidates(scores, k)
        if candidates is not None:  # every top-k score is >= the threshold
            return candidates[_top_k(scores[candidates], k)]
    threshold = torch.topk(scores, k, sorted=False).values.min()
    keep = scores > threshold
    tied = k - int(keep.sum())  # the lowest positions among the tied scores
    if tied:
        keep[torch.nonzero(scores == threshold).squeeze(1)[:tied]] = True
    return torch.nonzero(keep).squeeze(1)


# The pre-filter of _top_k runs for n >= 2^16 and k <= n / 16.
_PREFILTER_MIN = 1 << 16
_PREFILTER_RATIO = 16


def _candidates(scores: Tensor, k: int) -> Tensor | None:
    """Sorted positions with score >= t, for a t that leaves about 2k of them;
    None when fewer than ``k`` or more than half reach ``t`` (search them all)."""
    n = scores.numel()
    sample = scores[:: max(1, n // 65536)]
    rank = int(sample.numel() * (1 - 2 * k / n))
    t = torch.kthvalue(sample, max(1, rank)).values
    candidates = torch.nonzero(scores >= t).squeeze(1)
    return candidates if k <= candidates.numel() <= n // 2 else None
