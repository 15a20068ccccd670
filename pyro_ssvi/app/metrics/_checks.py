"""Validation of the inputs of :mod:`pyro_ssvi.app.metrics`: one message per problem."""

from __future__ import annotations

from typing import Any

import torch

#: Rows of ``probs`` must sum to one within this absolute tolerance.
PROBS_SUM_ATOL = 1e-3

_F64 = torch.float64


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
