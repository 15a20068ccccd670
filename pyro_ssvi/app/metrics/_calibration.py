"""Calibration errors: Guo et al.'s top-label ECE and Kumar et al.'s marginal error."""

from __future__ import annotations

from typing import NamedTuple

import torch

from ._checks import _F64, _check_inputs, _check_num_bins


# ---------------------------------------------------------------- top-label ECE
class ReliabilityBins(NamedTuple):
    """Equal-width bins of top-label confidence (see :func:`reliability_bins`).

    Attributes:
        edges: Bin edges ``0, 1/B, ..., 1``, float64, shape ``(B + 1,)``.
        confidence: Mean top-label probability per bin, NaN for empty bins,
            shape ``(B,)``.
        accuracy: Fraction correct per bin, NaN for empty bins, shape ``(B,)``.
        counts: Number of examples per bin, int64, shape ``(B,)``.
    """

    edges: torch.Tensor
    confidence: torch.Tensor
    accuracy: torch.Tensor
    counts: torch.Tensor


def reliability_bins(
    probs: torch.Tensor, labels: torch.Tensor, num_bins: int = 15
) -> ReliabilityBins:
    r"""Bin examples by top-label confidence into ``num_bins`` equal-width bins.

    The confidence is :math:`\max_c p_{ic}` and the prediction its class
    (lowest index on ties). Bin ``b`` (0-based) is the right-closed interval
    :math:`(b/B, (b+1)/B]`; a confidence equal to an edge (compared in
    float64) falls in the lower bin, as in Guo et al.'s code. The first bin
    also takes a confidence of exactly 0 and the last anything rounding
    above 1.

    Args:
        probs: Predictive probabilities, shape ``(N, C)``.
        labels: Integer labels, shape ``(N,)``.
        num_bins: Number ``B`` of bins.

    Returns:
        A :class:`ReliabilityBins` on the device of ``probs``.

    Raises:
        ValueError: For malformed inputs or a non-positive ``num_bins``.
    """
    probs, labels = _check_inputs(probs, labels)
    num_bins = _check_num_bins(num_bins)
    conf, pred = probs.to(_F64).max(-1)
    correct = (pred == labels).to(_F64)
    edges = torch.linspace(0.0, 1.0, num_bins + 1, dtype=_F64, device=probs.device)
    idx = torch.searchsorted(edges[1:], conf, side="left").clamp_max(num_bins - 1)
    count = torch.bincount(idx, minlength=num_bins)
    mean_conf = torch.bincount(idx, weights=conf, minlength=num_bins) / count
    mean_acc = torch.bincount(idx, weights=correct, minlength=num_bins) / count
    return ReliabilityBins(edges, mean_conf, mean_acc, count)


def ece(probs: torch.Tensor, labels: torch.Tensor, num_bins: int = 15) -> float:
    r"""Top-label expected calibration error of Guo et al. (2017), L1, equal width.

    .. math:: \mathrm{ECE} = \sum_{b=1}^{B} \frac{n_b}{N}
        \left| \mathrm{acc}_b - \mathrm{conf}_b \right|

    over the bins of :func:`reliability_bins` (right-closed intervals
    :math:`((b-1)/B, b/B]`); empty bins contribute nothing.

    Args:
        probs: Predictive probabilities, shape ``(N, C)``.
        labels: Integer labels, shape ``(N,)``.
        num_bins: Number ``B`` of equal-width bins.

    Returns:
        The ECE in ``[0, 1]``.

    Raises:
        ValueError: For malformed inputs.

    References:
        Guo, Pleiss, Sun, Weinberger. *On Calibration of Modern Neural
        Networks*, ICML 2017.
    """
    bins = reliability_bins(probs, labels, num_bins)
    full = bins.counts > 0
    gaps = (bins.accuracy[full] - bins.confidence[full]).abs()
    return (gaps * bins.counts[full]).sum().item() / bins.counts.sum().item()


# -------------------------------------------------- class-marginal L2 error
#: Columns are binned in chunks of about this many elements, to bound memory.
_CHUNK_ELEMENTS = 1 << 22


def _equal_mass_edges(sorted_rows: torch.Tensor, num_bins: int) -> torch.Tensor:
    """``calibration.get_equal_bins`` per row (before deduplication).

    The sorted values are cut into ``min(num_bins, n)`` groups as by
    ``numpy.array_split`` (the first ``n % bins`` groups one longer); the edges
    are the midpoints between neighbouring groups, then 1.
    """
    n = sorted_rows.shape[1]
    num_bins = min(num_bins, n)
    q, r = divmod(n, num_bins)
    sizes = torch.full((num_bins,), q, dtype=torch.int64)
    sizes[:r] += 1
    ends = sizes.cumsum(0)[:-1].to(sorted_rows.device)
    mids = (sorted_rows[:, ends - 1] + sorted_rows[:, ends]) / 2.0
    return torch.cat([mids, mids.new_ones(len(mids), 1)], 1)


def _discrete_edges(col: torch.Tensor) -> torch.Tensor:
    """``calibration.get_discrete_bins``: midpoints between distinct values, then 1."""
    unique = torch.unique(col)
    return torch.cat([(unique[:-1] + unique[1:]) / 2.0, unique.new_ones(1)])


def _binned_errors(
    rows: torch.Tensor,
    hits: torch.Tensor,
    edges: torch.Tensor,
    p: float,
    debias: bool,
) -> torch.Tensor:
    """Binned calibration error of each row (``unbiased_l2_ce`` or ``plugin_ce``).

    ``rows`` and ``hits`` are ``(R, N)``, ``edges`` ``(R, K)`` with repeats
    allowed: a repeated edge only adds an empty bin, and values above the
    largest edge join its (first) bin, as the package's deduplicated edges
    and ``fast_bin`` do.
    """
    num_rows, k = edges.shape
    edges = edges.sort(dim=1).values
    top = torch.searchsorted(edges, edges[:, -1:].contiguous(), side="left")
    idx = torch.minimum(torch.searchsorted(edges, rows, side="left"), top)
    flat = (idx + k * torch.arange(num_rows, device=idx.device)[:, None]).flatten()

    def per_bin(weights: torch.Tensor | None = None) -> torch.Tensor:
        total = torch.bincount(flat, weights, minlength=num_rows * k)
        return total.view(num_rows, k).to(_F64)

    count = per_bin()
    safe = count.clamp_min(1)
    mean_prob, mean_hit = per_bin(rows.flatten()) / safe, per_bin(hits.flatten()) / safe
    weight = count / rows.shape[1]
    if debias:
        err = (mean_prob - mean_hit).square()
        err = err - mean_hit * (1.0 - mean_hit) / (count - 1.0).clamp_min(1)
        err = torch.where(count >= 2, err, 0.0)
        return (weight * err).sum(1).clamp_min(0.0) ** 0.5
    err = torch.where(count > 0, (mean_prob - mean_hit).abs() ** p, 0.0)
    return (weight * err).sum(1) ** (1.0 / p)


def _class_rows(probs: torch.Tensor, chunk: slice) -> torch.Tensor:
    """Columns ``chunk`` of ``probs`` as contiguous float64 rows."""
    return probs[:, chunk].T.contiguous().to(_F64)


def marginal_calibration_error(
    probs: torch.Tensor,
    labels: torch.Tensor,
    num_bins: int = 15,
    debias: bool = True,
    p: float = 2,
) -> float:
    r"""Class-marginal calibration error of Kumar, Liang and Ma (2019).

    Reproduces ``calibration.get_calibration_error(probs, labels)`` of the
    ``uncertainty-calibration`` package with its defaults (``mode='marginal'``,
    ``p=2``, ``debias=True``), the "ECE" of the SSVI reference code. For each
    class :math:`c` the column :math:`p_{\cdot c}` is split into ``num_bins``
    *equal-mass* bins: sorted values are cut into groups as by
    ``numpy.array_split``, the edges are the midpoints between neighbouring
    groups plus 1, duplicates removed; a value equal to an edge falls in the
    lower bin. With :math:`n_b` points, mean probability :math:`\bar p_b` and
    label frequency :math:`\bar y_b` in bin :math:`b`,

    .. math::
        \mathrm{CE}_c^2 = \max\Big(0, \sum_b \frac{n_b}{N}\Big[
            (\bar p_b - \bar y_b)^2 - \frac{\bar y_b (1 - \bar y_b)}{n_b - 1}
        \Big]\Big), \qquad
        \mathrm{CE} = \Big(\frac{1}{C} \sum_c \mathrm{CE}_c^2\Big)^{1/2},

    where bins with :math:`n_b < 2` contribute 0. With ``debias=False`` it is
    the plug-in :math:`\mathrm{CE}_c = (\sum_b \frac{n_b}{N} |\bar p_b - \bar
    y_b|^p)^{1/p}` and :math:`\mathrm{CE} = (\frac1C \sum_c
    \mathrm{CE}_c^p)^{1/p}`.

    Like the package, when *every* class column has fewer than :math:`N/4`
    distinct values the outputs are treated as coming from a binned model:
    each distinct value gets its own bin (edges at midpoints between them)
    and ``num_bins`` is ignored. Everything is computed in float64.

    Args:
        probs: Predictive probabilities, shape ``(N, C)``.
        labels: Integer labels, shape ``(N,)``.
        num_bins: Equal-mass bins per class (fewer when ``N < num_bins``).
        debias: Subtract the label-variance term (only with ``p=2``).
        p: Order of the error, >= 1.

    Returns:
        The calibration error, >= 0.

    Raises:
        ValueError: For malformed inputs, ``p < 1``, or ``debias`` with
            ``p != 2`` (the package then debiases by random resampling,
            which is not reproduced; pass ``debias=False``).

    References:
        Kumar, Liang, Ma. *Verified Uncertainty Calibration*, NeurIPS 2019.
    """
    probs, labels = _check_inputs(probs, labels)
    num_bins = _check_num_bins(num_bins)
    if isinstance(p, bool) or not isinstance(p, (int, float)) or not p >= 1:
        raise ValueError(f"p must be a number >= 1, got {p!r}.")
    if debias and p != 2:
        raise ValueError(
            f"debias=True is only supported with p=2, got p={p!r}; pass debias=False."
        )
    n, num_classes = probs.shape
    step = max(1, _CHUNK_ELEMENTS // n)
    chunks = [slice(c, c + step) for c in range(0, num_classes, step)]
    equal_mass, discrete = [], True
    for chunk in chunks:
        sorted_rows = _class_rows(probs, chunk).sort(dim=1).values
        num_unique = 1 + (sorted_rows[:, 1:] != sorted_rows[:, :-1]).sum(1)
        discrete = discrete and bool((num_unique < n / 4.0).all())
        equal_mass.append(_equal_mass_edges(sorted_rows, num_bins))
    if discrete:
        columns = [_discrete_edges(probs[:, c].to(_F64)) for c in range(num_classes)]
        edges = torch.nn.utils.rnn.pad_sequence(columns, True, padding_value=1.0)
    else:
        edges = torch.cat(equal_mass)
    classes = torch.arange(num_classes, device=probs.device)
    errors = [
        _binned_errors(
            _class_rows(probs, chunk),
            (labels == classes[chunk, None]).to(_F64),
            edges[chunk],
            p,
            debias,
        )
        for chunk in chunks
    ]
    return (torch.cat(errors) ** p).mean().item() ** (1.0 / p)
