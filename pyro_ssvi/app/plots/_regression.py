"""A regressor's interval calibration and its predictions with error bars."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from ._figure import _figure, _PathLike, _save, _vector

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def _gaussian(
    mean: Any, variance: Any, targets: Any
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Flattened float64 ``(mean, variance, targets)`` of one shape, variance > 0."""
    mean, variance, targets = (
        _vector(torch.as_tensor(v, dtype=torch.float64).reshape(-1), name)
        for v, name in ((mean, "mean"), (variance, "variance"), (targets, "targets"))
    )
    if not len(mean) == len(variance) == len(targets):
        raise ValueError(
            f"mean, variance and targets must have the same size, got {len(mean)}, "
            f"{len(variance)} and {len(targets)}."
        )
    if (variance <= 0).any():
        raise ValueError("variance must be > 0.")
    return mean, variance, targets


def plot_regression_calibration(
    mean: Any,
    variance: Any,
    targets: Any,
    path: _PathLike,
    *,
    num_levels: int = 19,
    kind: str = "MC",
) -> Figure:
    """Observed against expected coverage of the central predictive intervals.

    The points are :func:`~pyro_ssvi.app.regression.calibration_curve` of the
    moment-matched Gaussian predictive ``N(mean, variance)`` at levels
    ``1/(L+1) ... L/(L+1)``; the diagonal is perfect calibration, points
    below it mean intervals that are too narrow. The title gives
    :func:`~pyro_ssvi.app.regression.calibration_error` and ``kind``.

    Args:
        mean: Predictive means, shape ``(N,)`` (or ``(N, D)``, flattened).
        variance: Total predictive variances, > 0, same shape.
        targets: Targets, same shape.
        path: Where to write the PNG.
        num_levels: Number ``L`` of interval levels.
        kind: How the predictions were made, e.g. ``"MC, 100 samples"``.

    Returns:
        The figure; its axes hold the curve as ``lines[0]`` (expected, observed)
        and the diagonal as ``lines[1]``.

    Raises:
        ValueError: For malformed inputs (see :mod:`pyro_ssvi.app.regression`).
    """
    from ..regression import calibration_curve, calibration_error

    mean, variance, targets = _gaussian(mean, variance, targets)
    curve = calibration_curve(mean, variance, targets, num_levels=num_levels)
    error = calibration_error(mean, variance, targets, num_levels=num_levels)
    fig, (ax,) = _figure(4.5, 4.5)
    ax.plot(
        curve.expected.numpy(),
        curve.observed.numpy(),
        "o-",
        markersize=4,
        label="observed",
    )
    ax.plot([0, 1], [0, 1], "k--", linewidth=1, label="perfect calibration")
    ax.set(
        xlim=(0, 1),
        ylim=(0, 1),
        xlabel="expected coverage (interval level)",
        ylabel="observed coverage",
    )
    ax.set_title(
        f"Interval calibration ({kind})\n"
        f"calibration error {error:.4f} ({num_levels} levels)"
    )
    ax.legend(loc="upper left")
    ax.grid(alpha=0.3)
    return _save(fig, path)


def plot_predictions(
    mean: Any,
    variance: Any,
    targets: Any,
    path: _PathLike,
    *,
    kind: str = "MC",
) -> Figure:
    """Predicted against true targets, with ±2 predictive standard deviations.

    Each example is a point at (target, predictive mean) with an error bar of
    ``2 sqrt(variance)`` either side; the diagonal is a perfect prediction.
    The title gives the RMSE and the fraction of targets within the bars.

    Args:
        mean: Predictive means, shape ``(N,)`` (or ``(N, D)``, flattened).
        variance: Total predictive variances, > 0, same shape.
        targets: Targets, same shape.
        path: Where to write the PNG.
        kind: How the predictions were made, e.g. ``"MC, 100 samples"``.

    Returns:
        The figure; its axes hold the error bars (``containers[0]``: the
        points as ``lines[0]`` and the bars as ``collections[0]``) and the
        diagonal as ``lines[1]``.

    Raises:
        ValueError: For malformed inputs.
    """
    mean, variance, targets = _gaussian(mean, variance, targets)
    std = variance.sqrt()
    rmse = (targets - mean).pow(2).mean().sqrt().item()
    inside = ((targets - mean).abs() <= 2 * std).double().mean().item()
    fig, (ax,) = _figure(5.0, 4.5)
    ax.errorbar(
        targets.numpy(),
        mean.numpy(),
        yerr=2 * std.numpy(),
        fmt="o",
        markersize=3,
        elinewidth=0.8,
        alpha=0.8,
        label="predictive mean ± 2 std",
    )
    low = min(targets.min().item(), (mean - 2 * std).min().item())
    high = max(targets.max().item(), (mean + 2 * std).max().item())
    ax.plot([low, high], [low, high], "k--", linewidth=1, label="perfect prediction")
    ax.set(xlabel="true target", ylabel="predicted target")
    ax.set_title(
        f"Predictions ({kind})\nRMSE {rmse:.4g}, {inside:.0%} of targets "
        "within ± 2 std"
    )
    ax.legend(loc="upper left", fontsize="small")
    ax.grid(alpha=0.3)
    return _save(fig, path)
