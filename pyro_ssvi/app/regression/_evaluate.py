"""All regression metrics of a prediction, or of a model and guide on data."""

from __future__ import annotations

from typing import Any, Callable, Sequence

import torch

from ._metrics import (
    DEFAULT_LEVELS,
    calibration_error,
    gaussian_nll,
    interval_coverage,
    rmse,
)
from ._predict import RegressionPrediction, predict_regression

__all__ = ["evaluate_regression", "regression_metrics"]


def _coverage_key(level: float) -> str:
    return f"coverage_{level * 100:g}"


def regression_metrics(
    prediction: RegressionPrediction,
    *,
    levels: Sequence[float] = DEFAULT_LEVELS,
    num_levels: int = 19,
) -> dict[str, float]:
    """Every regression metric of a prediction that carries targets.

    Args:
        prediction: A :class:`RegressionPrediction` with targets, in the units
            the metrics should be in (see
            :meth:`RegressionPrediction.unstandardize`).
        levels: Levels of the ``coverage_*`` keys.
        num_levels: Grid size of ``calibration_error``.

    Returns:
        ``rmse``; ``nll`` (moment-matched Gaussian, nats per example);
        ``log_likelihood`` (mean over examples of the mixture log-likelihood
        over posterior draws: the UCI literature's "test log-likelihood");
        ``coverage_50``, ``coverage_90``, ``coverage_95`` (one per level);
        ``calibration_error`` (mean absolute, over the grid of
        :func:`calibration_curve`); ``aleatoric_var`` and ``epistemic_var``
        (means over the data of the two variances).

    Raises:
        ValueError: If the prediction has no targets, or as the metrics.
    """
    pred = prediction
    if pred.targets is None or pred.log_likelihood is None:
        raise ValueError(
            "regression_metrics needs a prediction with targets: predict on (x, y) "
            "data, a dataset of (x, y) items or a loader of (x, y) batches."
        )
    variance = pred.variance
    metrics = {
        "rmse": rmse(pred.mean, pred.targets),
        "nll": gaussian_nll(pred.mean, variance, pred.targets),
        "log_likelihood": pred.log_likelihood.mean().item(),
    }
    coverage = interval_coverage(pred.mean, variance, pred.targets, levels)
    metrics.update({_coverage_key(p): c for p, c in coverage.items()})
    metrics["calibration_error"] = calibration_error(
        pred.mean, variance, pred.targets, num_levels=num_levels
    )
    metrics["aleatoric_var"] = pred.aleatoric.mean().item()
    metrics["epistemic_var"] = pred.epistemic.mean().item()
    return metrics


def evaluate_regression(
    model: Callable[..., Any],
    guide: Any,
    data: Any,
    *,
    num_samples: int = 10,
    mean_weights: bool = False,
    batch_size: int = 1000,
    device: torch.device | str | None = None,
    target_loc: Any = 0.0,
    target_scale: Any = 1.0,
    levels: Sequence[float] = DEFAULT_LEVELS,
    num_levels: int = 19,
) -> dict[str, float]:
    """Predict on labelled data and compute every regression metric.

    Args:
        model: Pyro regression model (e.g.
            :class:`~pyro_ssvi.app.models.BayesianRegressor`).
        guide: The trained guide.
        data: Labelled data in any form :func:`predict_regression` accepts.
        num_samples: Posterior draws per batch (ignored with ``mean_weights``).
        mean_weights: Use the guide's median weights.
        batch_size: Inputs per forward pass for tensor or dataset data.
        device: Where to run the model.
        target_loc: Mean removed from the targets in standardisation
            (``RegressionData.y_mean``); metrics are reported in original
            units.
        target_scale: Standard deviation divided by (``RegressionData.y_std``).
        levels: Levels of the ``coverage_*`` keys.
        num_levels: Grid size of ``calibration_error``.

    Returns:
        :func:`regression_metrics`'s dictionary.

    Raises:
        ValueError: If ``data`` has no targets, or as
            :func:`predict_regression`.
        TypeError: As :func:`predict_regression`.

    Example::

        evaluate_regression(model, guide, (data.x_test, data.y_test),
                            num_samples=100, target_loc=data.y_mean,
                            target_scale=data.y_std)
        # {'rmse': 3.1, 'nll': 2.6, 'log_likelihood': -2.6, 'coverage_50': ...}
    """
    pred = predict_regression(
        model,
        guide,
        data,
        num_samples=num_samples,
        mean_weights=mean_weights,
        batch_size=batch_size,
        device=device,
    )
    pred = pred.unstandardize(target_loc, target_scale)
    return regression_metrics(pred, levels=levels, num_levels=num_levels)
