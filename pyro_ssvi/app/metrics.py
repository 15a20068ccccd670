r"""Accuracy, calibration and out-of-distribution metrics of predictive probabilities.

Every metric is a pure function of the mean predictive probabilities
``probs`` (shape ``(N, C)``, rows summing to one) and integer ``labels``
(shape ``(N,)``); sums are taken in float64 and scalars are returned as Python
floats. Accuracy, AUROC and AUPR are scikit-learn's; this module validates
their inputs and fixes the OOD convention. NLL and Brier score are one-line
means whose conventions scikit-learn does not share (``log_loss`` clips at
its ``eps``, ``brier_score_loss`` is binary before 1.7); the calibration
errors have no library implementation to reuse. Streaming over batches and
posterior samples is :mod:`pyro_ssvi.app.predict`'s job.

Two calibration errors are provided, and they are *not* comparable:
:func:`ece` is Guo et al.'s top-label L1 ECE with equal-width bins, and
:func:`marginal_calibration_error` is the class-wise debiased L2 error of
Kumar et al. that the SSVI reference code reports as "ECE".

Example::

    from pyro_ssvi.app import metrics

    metrics.accuracy(probs, labels)            # 0.93
    metrics.classification_metrics(probs, labels, probs_ood=probs_ood)
    # {'accuracy': ..., 'nll': ..., 'ece': ..., 'marginal_ce': ..., 'ood_auroc': ...}
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch

__all__ = [
    "ReliabilityBins",
    "accuracy",
    "aupr",
    "auroc",
    "brier",
    "classification_metrics",
    "ece",
    "marginal_calibration_error",
    "mutual_information",
    "nll",
    "ood_metrics",
    "predictive_entropy",
    "reliability_bins",
]

#: Rows of ``probs`` must sum to one within this absolute tolerance.
PROBS_SUM_ATOL = 1e-3

_F64 = torch.float64


# ------------------------------------------------------------------ validation
def _as_tensor(value: Any, name: str) -> torch.Tensor:
    try:
        return torch.as_tensor(value)
    except (TypeError, ValueError, RuntimeError) as e:
        raise ValueError(f"{name} must be a tensor or array, got {value!r}.") from e


def _check_probs(probs: Any, name: str = "probs") -> torch.Tensor:
    probs = _as_tensor(probs, name).detach()
    if not probs.is_floating_point():
        raise ValueError(f"{name} must be floating point, got dtype {probs.dtype}.")
    if probs.dim() != 2:
        raise ValueError(
            f"{name} must have shape (N, C), got shape {tuple(probs.shape)}."
        )
    if probs.shape[0] == 0 or probs.shape[1] == 0:
        raise ValueError(f"{name} is empty (shape {tuple(probs.shape)}).")
    if not torch.isfinite(probs).all():
        raise ValueError(f"{name} contains NaN or infinite values.")
    low, high = probs.min().item(), probs.max().item()
    if low < -PROBS_SUM_ATOL or high > 1 + PROBS_SUM_ATOL:
        raise ValueError(
            f"{name} must lie in [0, 1], got values in [{low:.4g}, {high:.4g}]; "
            "pass probabilities, not logits."
        )
    worst = (probs.to(_F64).sum(-1) - 1).abs().max().item()
    if worst > PROBS_SUM_ATOL:
        raise ValueError(
            f"rows of {name} must sum to 1 (within {PROBS_SUM_ATOL}), but a row is "
            f"off by {worst:.4g}; pass softmax probabilities."
        )
    return probs


def _check_labels(labels: Any, probs: torch.Tensor) -> torch.Tensor:
    labels = _as_tensor(labels, "labels").detach()
    if labels.dtype == torch.bool or labels.is_floating_point() or labels.is_complex():
        raise ValueError(f"labels must be integers, got dtype {labels.dtype}.")
    if labels.shape != probs.shape[:1]:
        raise ValueError(
            f"labels must have shape ({probs.shape[0]},) to match probs of shape "
            f"{tuple(probs.shape)}, got shape {tuple(labels.shape)}."
        )
    num_classes = probs.shape[1]
    if labels.min().item() < 0 or labels.max().item() >= num_classes:
        raise ValueError(
            f"labels must lie in [0, {num_classes - 1}] for {num_classes} classes, "
            f"got values in [{labels.min().item()}, {labels.max().item()}]."
        )
    return labels.to(device=probs.device, dtype=torch.int64)


def _check_inputs(probs: Any, labels: Any) -> tuple[torch.Tensor, torch.Tensor]:
    probs = _check_probs(probs)
    return probs, _check_labels(labels, probs)


def _check_num_bins(num_bins: int) -> int:
    if isinstance(num_bins, bool) or not isinstance(num_bins, int) or num_bins < 1:
        raise ValueError(f"num_bins must be a positive int, got {num_bins!r}.")
    return num_bins


def _check_scores(scores: Any, name: str) -> torch.Tensor:
    scores = _as_tensor(scores, name).detach()
    if scores.dim() != 1 or scores.numel() == 0:
        raise ValueError(
            f"{name} must be a non-empty 1-D tensor, got shape {tuple(scores.shape)}."
        )
    if not torch.isfinite(scores.to(_F64)).all():
        raise ValueError(f"{name} contains NaN or infinite values.")
    return scores.to(_F64)


# --------------------------------------------------------- accuracy and scores
def accuracy(probs: torch.Tensor, labels: torch.Tensor) -> float:
    r"""Fraction of examples whose most probable class is the label.

    .. math:: \frac{1}{N} \sum_i 1[\arg\max_c p_{ic} = y_i]

    Ties in :math:`\arg\max` go to the lowest class index.

    Args:
        probs: Predictive probabilities, shape ``(N, C)``.
        labels: Integer labels in ``[0, C)``, shape ``(N,)``.

    Returns:
        The accuracy in ``[0, 1]``.

    Raises:
        ValueError: For malformed ``probs`` or ``labels`` (see module notes).
    """
    from sklearn.metrics import accuracy_score

    probs, labels = _check_inputs(probs, labels)
    return float(accuracy_score(labels.cpu(), probs.argmax(-1).cpu()))


def nll(probs: torch.Tensor, labels: torch.Tensor) -> float:
    r"""Mean negative log predictive probability of the label (nats).

    .. math:: -\frac{1}{N} \sum_i \log \max(\bar p_{i y_i}, t)

    where ``t`` is the smallest positive normal number of ``probs``' dtype
    (``torch.finfo(dtype).tiny``), so a zero probability gives a large finite
    value (about 87.3 in float32) instead of infinity.

    Args:
        probs: Predictive probabilities, shape ``(N, C)``.
        labels: Integer labels, shape ``(N,)``.

    Returns:
        The mean NLL, >= 0.

    Raises:
        ValueError: For malformed inputs.
    """
    probs, labels = _check_inputs(probs, labels)
    tiny = torch.finfo(probs.dtype).tiny
    p_label = probs.gather(1, labels[:, None]).squeeze(1).to(_F64).clamp_min(tiny)
    return -p_label.log().mean().item()


def brier(probs: torch.Tensor, labels: torch.Tensor) -> float:
    r"""Multi-class Brier score, summed over classes and averaged over examples.

    .. math:: \frac{1}{N} \sum_i \sum_c (p_{ic} - 1[y_i = c])^2

    This is Brier's original convention, in ``[0, 2]``; it is *not* divided
    by the number of classes.

    Args:
        probs: Predictive probabilities, shape ``(N, C)``.
        labels: Integer labels, shape ``(N,)``.

    Returns:
        The Brier score.

    Raises:
        ValueError: For malformed inputs.
    """
    probs, labels = _check_inputs(probs, labels)
    probs = probs.to(_F64)
    p_label = probs.gather(1, labels[:, None]).squeeze(1)
    return (probs.square().sum(-1) - 2 * p_label + 1).mean().item()


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


# ------------------------------------------------------------------ uncertainty
def _entropy(probs: torch.Tensor) -> torch.Tensor:
    return -torch.special.xlogy(probs, probs).sum(-1)


def predictive_entropy(probs: torch.Tensor) -> torch.Tensor:
    r"""Entropy of each row of ``probs``, in nats, with :math:`0 \log 0 = 0`.

    .. math:: H[\bar p_i] = -\sum_c \bar p_{ic} \log \bar p_{ic}

    Args:
        probs: Predictive probabilities, shape ``(N, C)``.

    Returns:
        Entropies in ``[0, log C]``, shape ``(N,)``, dtype of ``probs``.

    Raises:
        ValueError: For malformed ``probs``.
    """
    return _entropy(_check_probs(probs))


def mutual_information(
    mean_probs: torch.Tensor, mean_entropy: torch.Tensor
) -> torch.Tensor:
    r"""Mutual information between prediction and weights (epistemic uncertainty).

    .. math:: I_i = H[\bar p_i] - \frac{1}{S} \sum_s H[p_i^{(s)}]

    with :math:`\bar p_i` the mean over posterior samples of the predictive
    probabilities and ``mean_entropy`` the mean over samples of each sample's
    entropy. It is >= 0 by Jensen's inequality; rounding negatives are
    clamped to 0.

    Args:
        mean_probs: Mean predictive probabilities, shape ``(N, C)``.
        mean_entropy: :math:`\frac1S \sum_s H[p^{(s)}]`, shape ``(N,)``.

    Returns:
        Mutual information in nats, shape ``(N,)``.

    Raises:
        ValueError: For malformed inputs or mismatched lengths.
    """
    mean_probs = _check_probs(mean_probs, "mean_probs")
    mean_entropy = _check_mean_entropy(mean_entropy, mean_probs)
    return (_entropy(mean_probs) - mean_entropy).clamp_min(0.0)


def _check_mean_entropy(mean_entropy: Any, probs: torch.Tensor) -> torch.Tensor:
    mean_entropy = _as_tensor(mean_entropy, "mean_entropy").detach()
    if mean_entropy.shape != probs.shape[:1]:
        raise ValueError(
            f"mean_entropy must have shape ({probs.shape[0]},) to match probs, "
            f"got shape {tuple(mean_entropy.shape)}."
        )
    if not mean_entropy.is_floating_point() or not torch.isfinite(mean_entropy).all():
        raise ValueError("mean_entropy must be finite floating point values.")
    return mean_entropy.to(device=probs.device, dtype=probs.dtype)


# -------------------------------------------------------------- OOD detection
def _ood_problem(scores_in: Any, scores_out: Any) -> tuple[Any, Any]:
    """Binary labels (OOD = 1) and scores for scikit-learn, validated."""
    import numpy as np

    s_in = _check_scores(scores_in, "scores_in").cpu().numpy()
    s_out = _check_scores(scores_out, "scores_out").cpu().numpy()
    labels = np.r_[np.zeros(len(s_in)), np.ones(len(s_out))]
    return labels, np.r_[s_in, s_out]


def auroc(scores_in: torch.Tensor, scores_out: torch.Tensor) -> float:
    r"""Area under the ROC curve for detecting OOD inputs by a score.

    OOD is the positive class and a *higher* score means "more OOD";
    ``sklearn.metrics.roc_auc_score``, so ties count one half:

    .. math:: \mathrm{AUROC} = P(s_{out} > s_{in}) + \tfrac12 P(s_{out} = s_{in})

    over independent pairs.

    Args:
        scores_in: Scores of in-distribution inputs (negatives), shape ``(N,)``.
        scores_out: Scores of OOD inputs (positives), shape ``(M,)``.

    Returns:
        The AUROC in ``[0, 1]``; 0.5 is chance.

    Raises:
        ValueError: For empty, non-1-D or non-finite scores.
    """
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(*_ood_problem(scores_in, scores_out)))


def aupr(scores_in: torch.Tensor, scores_out: torch.Tensor) -> float:
    r"""Average precision for detecting OOD inputs (OOD positive, high = OOD).

    ``sklearn.metrics.average_precision_score``: thresholds at each distinct
    score, descending; tied scores enter together, and

    .. math:: \mathrm{AP} = \sum_k (R_k - R_{k-1}) P_k

    with precision :math:`P_k` and recall :math:`R_k` at the ``k``-th
    threshold (:math:`R_0 = 0`; no interpolation).

    Args:
        scores_in: Scores of in-distribution inputs (negatives), shape ``(N,)``.
        scores_out: Scores of OOD inputs (positives), shape ``(M,)``.

    Returns:
        The average precision in ``(0, 1]``; chance is ``M / (N + M)``.

    Raises:
        ValueError: For empty, non-1-D or non-finite scores.
    """
    from sklearn.metrics import average_precision_score

    return float(average_precision_score(*_ood_problem(scores_in, scores_out)))


def ood_metrics(probs_in: torch.Tensor, probs_out: torch.Tensor) -> dict[str, float]:
    """AUROC and AUPR of OOD detection by predictive entropy and by max probability.

    The scores are the entropy :math:`H[\\bar p]` and the negated top-label
    probability :math:`-\\max_c \\bar p_c` (higher = more OOD).

    Args:
        probs_in: Mean predictive probabilities on in-distribution data,
            shape ``(N, C)``.
        probs_out: The same on OOD data, shape ``(M, C)``.

    Returns:
        ``{"ood_auroc", "ood_aupr"}`` (by entropy) and
        ``{"ood_auroc_maxprob", "ood_aupr_maxprob"}``.

    Raises:
        ValueError: For malformed inputs or different numbers of classes.
    """
    probs_in = _check_probs(probs_in, "probs_in")
    probs_out = _check_probs(probs_out, "probs_out")
    if probs_in.shape[1] != probs_out.shape[1]:
        raise ValueError(
            f"probs_in has {probs_in.shape[1]} classes but probs_out has "
            f"{probs_out.shape[1]}."
        )
    ent_in, ent_out = _entropy(probs_in), _entropy(probs_out)
    max_in, max_out = -probs_in.max(-1).values, -probs_out.max(-1).values
    return {
        "ood_auroc": auroc(ent_in, ent_out),
        "ood_aupr": aupr(ent_in, ent_out),
        "ood_auroc_maxprob": auroc(max_in, max_out),
        "ood_aupr_maxprob": aupr(max_in, max_out),
    }


# ---------------------------------------------------------------- aggregation
def classification_metrics(
    probs: torch.Tensor,
    labels: torch.Tensor,
    mean_entropy: torch.Tensor | None = None,
    *,
    probs_ood: torch.Tensor | None = None,
    num_bins: int = 15,
) -> dict[str, float]:
    """All metrics of this module in one pass.

    Args:
        probs: Mean predictive probabilities, shape ``(N, C)``.
        labels: Integer labels, shape ``(N,)``.
        mean_entropy: Mean over posterior samples of each sample's entropy,
            shape ``(N,)``; enables ``mutual_information``.
        probs_ood: Mean predictive probabilities on OOD inputs, shape
            ``(M, C)``; enables the ``ood_*`` metrics of :func:`ood_metrics`.
        num_bins: Bins of both :func:`ece` and :func:`marginal_calibration_error`.

    Returns:
        ``accuracy``, ``nll``, ``brier``, ``ece``, ``marginal_ce``, ``entropy``
        (mean predictive entropy), then ``mutual_information`` (mean) and the
        ``ood_*`` keys when their inputs are given.

    Raises:
        ValueError: For malformed inputs.
    """
    probs, labels = _check_inputs(probs, labels)
    result = {
        "accuracy": accuracy(probs, labels),
        "nll": nll(probs, labels),
        "brier": brier(probs, labels),
        "ece": ece(probs, labels, num_bins),
        "marginal_ce": marginal_calibration_error(probs, labels, num_bins),
        "entropy": _entropy(probs).to(_F64).mean().item(),
    }
    if mean_entropy is not None:
        info = mutual_information(probs, mean_entropy)
        result["mutual_information"] = info.to(_F64).mean().item()
    if probs_ood is not None:
        result.update(ood_metrics(probs, probs_ood))
    return result
