"""Predictive entropy and mutual information (total and epistemic uncertainty)."""

from __future__ import annotations

import torch

from ._checks import _check_mean_entropy, _check_probs


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
