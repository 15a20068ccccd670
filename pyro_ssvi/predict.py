"""Streaming prediction with a trained guide: mean weights or Monte Carlo.

Only running sums are kept, never the posterior samples, so memory does not
grow with ``num_samples``::

    probs = predict_proba(model, guide, x_test, num_samples=20)
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from pyro import poutine

__all__ = ["predict_proba"]


@torch.no_grad()
def predict_proba(
    model: Callable[..., torch.Tensor],
    guide: Any,
    x: torch.Tensor,
    *,
    num_samples: int = 10,
    batch_size: int = 1024,
    mean_weights: bool = False,
) -> torch.Tensor:
    r"""Posterior predictive class probabilities of a classifier model.

    The model must return logits from ``model(x)``. With ``mean_weights`` the
    prediction uses the guide's ``median()`` weights (one deterministic pass,
    what the SSVI reference code reports during training); otherwise

    .. math:: \bar p(y \mid x) = \frac{1}{S} \sum_{s=1}^{S}
        \operatorname{softmax} f_{\theta_s}(x), \qquad \theta_s \sim q,

    with one weight draw per sample shared across the batch.

    Args:
        model: Pyro model returning logits.
        guide: The trained guide.
        x: Inputs, batched along the first dimension.
        num_samples: Number ``S`` of posterior draws (ignored with
            ``mean_weights``).
        batch_size: Inputs per forward pass.
        mean_weights: Predict with the posterior median weights.

    Returns:
        Probabilities of shape ``(len(x), num_classes)``.
    """
    if num_samples < 1:
        raise ValueError(f"num_samples must be >= 1, got {num_samples!r}.")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size!r}.")
    chunks = []
    for start in range(0, x.shape[0], batch_size):
        xb = x[start : start + batch_size]
        if mean_weights:
            logits = poutine.condition(model, data=guide.median())(xb)
            chunks.append(torch.softmax(logits, -1))
            continue
        total = None
        for _ in range(num_samples):
            guide_trace = poutine.trace(guide).get_trace(xb)
            logits = poutine.replay(model, trace=guide_trace)(xb)
            p = torch.softmax(logits, -1)
            total = p if total is None else total + p
        chunks.append(total / num_samples)
    return torch.cat(chunks)
