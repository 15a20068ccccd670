"""Accuracy and the proper scores of the label: NLL and Brier score."""

from __future__ import annotations

import torch

from ._checks import _F64, _check_inputs


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
