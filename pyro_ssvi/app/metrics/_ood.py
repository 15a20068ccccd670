"""Out-of-distribution detection by a score: AUROC and AUPR (OOD positive)."""

from __future__ import annotations

from typing import Any

import torch

from ._checks import _check_probs, _check_scores
from ._uncertainty import _entropy


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
