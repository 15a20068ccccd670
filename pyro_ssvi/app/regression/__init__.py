"""Bayesian regression: streaming predictive uncertainty, metrics and data.

Train a :class:`~pyro_ssvi.app.models.BayesianRegressor` like a classifier, then
split its predictive variance into the noise it learned (aleatoric) and the
spread of its weight draws (epistemic), and score it::

    from pyro_ssvi.app.regression import (
        evaluate_regression, load_regression_dataset, predict_regression)

    data = load_regression_dataset("diabetes", seed=0)   # standardised split
    ...                                                   # train model, guide
    pred = predict_regression(model, guide, (data.x_test, data.y_test),
                              num_samples=100)
    pred.mean, pred.aleatoric, pred.epistemic, pred.variance
    evaluate_regression(model, guide, (data.x_test, data.y_test),
                        target_loc=data.y_mean, target_scale=data.y_std)
    # {'rmse': ..., 'nll': ..., 'log_likelihood': ..., 'coverage_90': ..., ...}

The metric functions (:func:`rmse`, :func:`gaussian_nll`,
:func:`interval_coverage`, :func:`calibration_curve`,
:func:`calibration_error`) are pure functions of means, variances and targets.
"""

from __future__ import annotations

from ._data import (
    REGRESSION_DATASETS,
    RegressionData,
    RegressionDatasetInfo,
    load_regression_dataset,
    split_and_standardize,
)
from ._evaluate import evaluate_regression, regression_metrics
from ._metrics import (
    DEFAULT_LEVELS,
    CalibrationCurve,
    calibration_curve,
    calibration_error,
    gaussian_nll,
    interval_coverage,
    rmse,
)
from ._predict import RegressionPrediction, predict_regression

__all__ = [
    "CalibrationCurve",
    "DEFAULT_LEVELS",
    "REGRESSION_DATASETS",
    "RegressionData",
    "RegressionDatasetInfo",
    "RegressionPrediction",
    "calibration_curve",
    "calibration_error",
    "evaluate_regression",
    "gaussian_nll",
    "interval_coverage",
    "load_regression_dataset",
    "predict_regression",
    "regression_metrics",
    "rmse",
    "split_and_standardize",
]
