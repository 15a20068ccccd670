r"""Streaming posterior predictive of a classifier: mean weights or Monte Carlo.

Only running sums over posterior samples are kept, never the samples or their
traces, so memory grows with the number of inputs but not with
``num_samples`` (unlike :class:`pyro.infer.Predictive`, which holds every
sample)::

    pred = predict(model, guide, (x_test, y_test), num_samples=20)
    pred.probs            # (N, C) mean predictive probabilities
    evaluate(model, guide, test_loader, ood_data=ood_loader)
    # {'accuracy': ..., 'nll': ..., 'ece': ..., 'marginal_ce': ..., 'ood_auroc': ...}

The model must return logits from ``model(x)``; it may also take ``y=None``
(as :class:`~pyro_ssvi.app.models.BayesianClassifier` does).
"""

from __future__ import annotations

from typing import Any, Callable, Iterator, NamedTuple

import torch
from pyro import poutine

from ._batching import (
    batches,
    check_consistent,
    eval_mode,
    median_on,
    prepare_prediction,
)
from .metrics import _entropy, classification_metrics

__all__ = ["Prediction", "evaluate", "predict", "predict_proba"]


class Prediction(NamedTuple):
    """Posterior predictive summaries of a data set, on the CPU.

    Attributes:
        probs: Mean predictive probabilities :math:`\\bar p(y \\mid x)`,
            shape ``(N, C)``.
        mean_entropy: Mean over posterior samples of each sample's predictive
            entropy, shape ``(N,)``; with mean weights, the entropy of
            ``probs``. For :func:`~pyro_ssvi.app.metrics.mutual_information`.
        labels: The labels the data came with, int64, shape ``(N,)``, or None
            when the data had none.
    """

    probs: torch.Tensor
    mean_entropy: torch.Tensor
    labels: torch.Tensor | None


# ----------------------------------------------------------------- prediction
def _softmax(logits: Any, x: torch.Tensor) -> torch.Tensor:
    """Checked ``softmax(logits)``, in at least float32 (half-precision models)."""
    if (
        not isinstance(logits, torch.Tensor)
        or logits.dim() != 2
        or len(logits) != len(x)
    ):
        shape = tuple(logits.shape) if isinstance(logits, torch.Tensor) else logits
        raise ValueError(
            f"model(x) must return logits of shape ({len(x)}, num_classes) for a "
            f"batch of {len(x)} inputs, got {shape!r}."
        )
    dtype = torch.promote_types(logits.dtype, torch.float32)
    return torch.softmax(logits, dim=-1, dtype=dtype)


def _draw(model: Callable[..., Any], guide: Any, x: torch.Tensor) -> torch.Tensor:
    """Probabilities under one weight draw from the guide, shared by the batch."""
    guide_trace = poutine.trace(guide).get_trace(x)
    return _softmax(poutine.replay(model, trace=guide_trace)(x), x)


def _mc_batch(
    model: Callable[..., Any], guide: Any, x: torch.Tensor, num_samples: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Means over ``num_samples`` draws of the probabilities and their entropies."""
    sum_probs = _draw(model, guide, x)
    sum_entropy = _entropy(sum_probs)
    for _ in range(num_samples - 1):
        probs = _draw(model, guide, x)
        sum_probs = sum_probs + probs
        sum_entropy = sum_entropy + _entropy(probs)
    return sum_probs / num_samples, sum_entropy / num_samples


def _predict_batches(
    model: Callable[..., Any],
    guide: Any,
    data: Any,
    *,
    num_samples: int,
    mean_weights: bool,
    batch_size: int,
    device: torch.device | str | None,
) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]]:
    """Yield ``(mean probs, mean entropy, labels or None)`` per batch, on the CPU.

    The caller must hold ``torch.no_grad()`` and ``eval_mode``.
    """
    device = prepare_prediction(guide, num_samples, mean_weights, batch_size, device)
    median = None
    for x, y in batches(data, batch_size):
        x = x if device is None else x.to(device)
        if not mean_weights:
            probs, entropy = _mc_batch(model, guide, x, num_samples)
        else:
            if median is None:
                median = median_on(guide, x)
            probs = _softmax(poutine.condition(model, data=median)(x), x)
            entropy = _entropy(probs)
        labels = None if y is None else y.detach().to("cpu", torch.int64)
        yield probs.detach().cpu(), entropy.detach().cpu(), labels


def predict(
    model: Callable[..., Any],
    guide: Any,
    data: Any,
    *,
    num_samples: int = 10,
    mean_weights: bool = False,
    batch_size: int = 1000,
    device: torch.device | str | None = None,
    on_batch: Callable[[int], object] | None = None,
) -> Prediction:
    r"""Posterior predictive probabilities of a classifier, batch by batch.

    Monte Carlo (default): for every batch, ``num_samples`` weight draws
    :math:`\theta_s \sim q` are taken by tracing the guide, and the model is
    replayed against each; one draw is shared by all inputs of the batch (as
    in the SSVI reference evaluation), and fresh draws are taken per batch.

    .. math::
        \bar p(y \mid x) = \frac1S \sum_{s=1}^S \operatorname{softmax}
        f_{\theta_s}(x), \qquad
        \bar H(x) = \frac1S \sum_{s=1}^S H[\operatorname{softmax} f_{\theta_s}(x)]

    Only the running sums are kept. With ``mean_weights=True`` there is a
    single deterministic pass with the model conditioned on
    ``guide.median()`` (the reference code's per-epoch evaluation).

    The model is put in eval mode (batch norm, dropout) for the call and its
    modes restored afterwards; everything runs under ``torch.no_grad()``.

    Args:
        model: Pyro model; ``model(x)`` returns logits of shape ``(B, C)``.
        guide: The trained guide. Autoguides must have been run (or set up)
            on the model already.
        data: A tensor of inputs; a tuple ``(x, y)`` of tensors; a map-style
            ``Dataset`` of ``(x, y)`` items; or an iterable such as a
            ``DataLoader`` of ``x`` or ``(x, y)`` batches (consumed in its own
            batches). ``batch_size`` splits tensors and datasets only.
        num_samples: Number ``S`` of posterior draws per batch (ignored with
            ``mean_weights``).
        mean_weights: Predict once with the guide's median weights.
        batch_size: Inputs per forward pass for tensor or dataset ``data``.
        device: Where to run the model; default: the device of the guide's
            parameters (inputs are left where they are if it has none).
        on_batch: Called with the number of inputs after each batch, e.g. a
            progress bar's ``update``.

    Returns:
        A :class:`Prediction`, tensors on the CPU.

    Raises:
        ValueError: For non-positive ``num_samples`` / ``batch_size``, empty
            data, batches of the wrong form, labels on only some batches, a
            model output that is not ``(B, C)`` logits, or an autoguide that
            was never run on the model (for Monte Carlo).
        TypeError: For ``data`` of an unsupported type, or ``mean_weights``
            with a guide that has no ``median()``.

    Example::

        pred = predict(model, guide, x_test, num_samples=50)
        pred.probs.argmax(-1)
    """
    stream = _predict_batches(
        model,
        guide,
        data,
        num_samples=num_samples,
        mean_weights=mean_weights,
        batch_size=batch_size,
        device=device,
    )
    probs: list[torch.Tensor] = []
    entropies: list[torch.Tensor] = []
    labels: list[torch.Tensor | None] = []
    with torch.no_grad(), eval_mode(model):
        for position, (batch_probs, batch_entropy, batch_labels) in enumerate(stream):
            first = batch_labels if not labels else labels[0]
            check_consistent(
                position, batch_labels is not None, first is not None, "labels"
            )
            probs.append(batch_probs)
            entropies.append(batch_entropy)
            labels.append(batch_labels)
            if on_batch is not None:
                on_batch(len(batch_probs))
    if not probs:
        raise ValueError("data is empty: there is nothing to predict.")
    first = labels[0]
    return Prediction(
        torch.cat(probs),
        torch.cat(entropies),
        None if first is None else torch.cat([y for y in labels if y is not None]),
    )


def predict_proba(
    model: Callable[..., Any],
    guide: Any,
    x: Any,
    *,
    num_samples: int = 10,
    mean_weights: bool = False,
    batch_size: int = 1000,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Mean predictive probabilities only: ``predict(...).probs``.

    Args:
        model: Pyro model returning logits.
        guide: The trained guide.
        x: Inputs, or any ``data`` accepted by :func:`predict`.
        num_samples: Posterior draws per batch.
        mean_weights: Use the guide's median weights.
        batch_size: Inputs per forward pass.
        device: Where to run the model.

    Returns:
        Probabilities of shape ``(N, C)``, on the CPU.

    Raises:
        ValueError: As :func:`predict`.
        TypeError: As :func:`predict`.
    """
    return predict(
        model,
        guide,
        x,
        num_samples=num_samples,
        mean_weights=mean_weights,
        batch_size=batch_size,
        device=device,
    ).probs


def evaluate(
    model: Callable[..., Any],
    guide: Any,
    data: Any,
    *,
    ood_data: Any = None,
    num_samples: int = 10,
    mean_weights: bool = False,
    batch_size: int = 1000,
    device: torch.device | str | None = None,
    num_bins: int = 15,
) -> dict[str, float]:
    """Predict on labelled data (and optionally OOD data) and compute all metrics.

    Args:
        model: Pyro model returning logits.
        guide: The trained guide.
        data: Labelled data in any form :func:`predict` accepts that carries
            labels: ``(x, y)`` tensors, a dataset or a loader of ``(x, y)``.
        ood_data: Out-of-distribution inputs (labels, if any, are ignored).
        num_samples: Posterior draws per batch (ignored with ``mean_weights``).
        mean_weights: Use the guide's median weights.
        batch_size: Inputs per forward pass for tensor or dataset data.
        device: Where to run the model.
        num_bins: Bins of both calibration errors.

    Returns:
        ``accuracy``, ``nll``, ``brier``, ``ece`` (Guo, top-label L1, equal
        width), ``marginal_ce`` (Kumar et al., debiased class-marginal L2,
        the reference code's "ECE"), ``entropy`` (mean predictive entropy)
        and ``mutual_information`` (mean); with ``ood_data`` also
        ``ood_auroc`` and ``ood_aupr`` (by entropy) and
        ``ood_auroc_maxprob`` and ``ood_aupr_maxprob``. See
        :mod:`pyro_ssvi.app.metrics`.

    Raises:
        ValueError: If ``data`` has no labels, or as :func:`predict`.
        TypeError: As :func:`predict`.
    """
    options: dict[str, Any] = dict(
        num_samples=num_samples,
        mean_weights=mean_weights,
        batch_size=batch_size,
        device=device,
    )
    pred = predict(model, guide, data, **options)
    if pred.labels is None:
        raise ValueError(
            "evaluate needs labelled data: pass (x, y) tensors, a dataset of (x, y) "
            "items or a loader of (x, y) batches."
        )
    probs_ood = None if ood_data is None else predict(model, guide, ood_data, **options)
    return classification_metrics(
        pred.probs,
        pred.labels,
        pred.mean_entropy,
        probs_ood=None if probs_ood is None else probs_ood.probs,
        num_bins=num_bins,
    )
