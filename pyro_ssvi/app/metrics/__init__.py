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

import torch

from ._calibration import (
    ReliabilityBins,
    ece,
    marginal_calibration_error,
    reliability_bins,
)
from ._checks import _F64, PROBS_SUM_ATOL, _check_inputs  # noqa: F401
from ._ood import aupr, auroc, ood_metrics
from ._scoring import accuracy, brier, nll
from ._uncertainty import _entropy, mutual_information, predictive_entropy

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
