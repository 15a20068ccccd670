r"""Accuracy and calibration of Gaussian predictive distributions.

Every metric is a pure function of the predictive ``mean`` and ``variance``
and the ``targets``, all of shape ``(N,)`` or ``(N, D)``; sums are taken in
float64 and scalars are returned as Python floats. Gaussian quantiles and
CDFs are scipy's (:data:`scipy.stats.norm`).

Two log-likelihoods are in use, and they differ:

* :func:`gaussian_nll` scores the *moment-matched* Gaussian
  :math:`\mathcal{N}(\bar\mu, \sigma^2_{\text{total}})` of the predictive
  (what coverage and calibration assume too);
* the *mixture* log-likelihood over posterior draws,
  :math:`\log \frac1S \sum_s \mathcal{N}(y; \mu_s, \sigma_s^2)`, the "test
  log-likelihood" of the UCI literature (Hernández-Lobato & Adams 2015), is
  computed draw by draw during prediction
  (:attr:`~pyro_ssvi.app.regression.RegressionPrediction.log_likelihood`).
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple, Sequence

import torch

__all__ = [
    "CalibrationCurve",
    "DEFAULT_LEVELS",
    "calibration_curve",
    "calibration_error",
    "gaussian_nll",
    "interval_coverage",
    "rmse",
]

#: Central-interval levels :func:`interval_coverage` reports by default.
DEFAULT_LEVELS = (0.5, 0.9, 0.95)

_F64 = torch.float64


class CalibrationCurve(NamedTuple):
    """Expected against observed coverage of central predictive intervals.

    Attributes:
        expected: The interval levels :math:`p`, shape ``(L,)``, float64.
        observed: Fraction of targets inside each level's central interval,
            shape ``(L,)``, float64; a calibrated predictive has
            ``observed == expected``.
    """

    expected: torch.Tensor
    observed: torch.Tensor


# ------------------------------------------------------------------ validation
def _as_float(value: Any, name: str) -> torch.Tensor:
    try:
        if isinstance(value, torch.Tensor):
            tensor = value.detach()
        else:  # lists and arrays: no detour through float32
            tensor = torch.as_tensor(value, dtype=_F64)
    except (TypeError, ValueError, RuntimeError) as e:
        raise ValueError(f"{name} must be a tensor or array, got {value!r}.") from e
    if tensor.dim() not in (1, 2) or tensor.numel() == 0:
        raise ValueError(
            f"{name} must be a non-empty tensor of shape (N,) or (N, D), got shape "
            f"{tuple(tensor.shape)}."
        )
    if not torch.isfinite(tensor.to(_F64)).all():
        raise ValueError(f"{name} contains NaN or infinite values.")
    return tensor.to(_F64)


def _check(mean: Any, targets: Any) -> tuple[torch.Tensor, torch.Tensor]:
    mean = _as_float(mean, "mean")
    targets = _as_float(targets, "targets")
    if targets.shape != mean.shape:
        raise ValueError(
            f"targets must have the shape of mean {tuple(mean.shape)}, got "
            f"{tuple(targets.shape)}."
        )
    return mean, targets


def _check_gaussian(
    mean: Any, variance: Any, targets: Any
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    mean, targets = _check(mean, targets)
    variance = _as_float(variance, "variance")
    if variance.shape != mean.shape:
        raise ValueError(
            f"variance must have the shape of mean {tuple(mean.shape)}, got "
            f"{tuple(variance.shape)}."
        )
    if (variance <= 0).any():
        raise ValueError(
            f"variance must be > 0, got a minimum of {variance.min().item():.4g}."
        )
    return mean, variance, targets


def _check_levels(levels: Sequence[float]) -> torch.Tensor:
    values = torch.as_tensor(list(levels), dtype=_F64)
    if (
        values.dim() != 1
        or values.numel() == 0
        or not ((values > 0) & (values < 1)).all()
    ):
        raise ValueError(
            f"levels must be a non-empty sequence of numbers in (0, 1), got {levels!r}."
        )
    return values


def _pit_distance(mean: Any, variance: Any, targets: Any) -> torch.Tensor:
    r"""``|2 \Phi(z) - 1|`` per element: the smallest central level covering it."""
    from scipy.stats import norm

    mean, variance, targets = _check_gaussian(mean, variance, targets)
    z = ((targets - mean) / variance.sqrt()).reshape(-1).numpy()
    # 2 * Phi(|z|) - 1, written with the survival function for accuracy in the tails
    return torch.from_numpy(1.0 - 2.0 * norm.sf(abs(z)))


def _covered(distance: torch.Tensor, levels: torch.Tensor) -> torch.Tensor:
    """Fraction of elements within each level's central interval, ``(L,)``."""
    return (distance[None, :] <= levels[:, None]).to(_F64).mean(1)


# -------------------------------------------------------------------- metrics
def rmse(mean: Any, targets: Any) -> float:
    r"""Root mean squared error over every example and target.

    .. math:: \sqrt{\frac{1}{N D} \sum_{i, d} (y_{id} - \bar\mu_{id})^2}

    Args:
        mean: Predictive means, shape ``(N,)`` or ``(N, D)``.
        targets: Targets of the same shape.

    Returns:
        The RMSE, in target units.

    Raises:
        ValueError: For empty, non-finite or mismatched inputs.
    """
    mean, targets = _check(mean, targets)
    return math.sqrt((targets - mean).pow(2).mean().item())


def gaussian_nll(mean: Any, variance: Any, targets: Any) -> float:
    r"""Mean negative log-likelihood of the moment-matched Gaussian predictive.

    .. math::
        -\frac1N \sum_i \sum_d \log \mathcal{N}(y_{id};
        \bar\mu_{id}, \sigma^2_{id})
        = \frac1N \sum_{i, d} \Bigl[\tfrac12 \log(2\pi\sigma^2_{id})
        + \frac{(y_{id} - \bar\mu_{id})^2}{2\sigma^2_{id}}\Bigr]

    Per example (summed over the ``D`` targets, as a diagonal Gaussian),
    averaged over examples. For the mixture log-likelihood of the UCI
    literature use ``prediction.log_likelihood`` instead (see the module
    notes).

    Args:
        mean: Predictive means :math:`\bar\mu`, shape ``(N,)`` or ``(N, D)``.
        variance: Total predictive variances :math:`\sigma^2`, > 0.
        targets: Targets :math:`y`.

    Returns:
        The NLL in nats per example.

    Raises:
        ValueError: For empty, non-finite, non-positive or mismatched inputs.
    """
    mean, variance, targets = _check_gaussian(mean, variance, targets)
    terms = 0.5 * torch.log(2 * math.pi * variance) + (targets - mean).pow(2) / (
        2 * variance
    )
    return terms.sum().item() / len(terms)


def interval_coverage(
    mean: Any,
    variance: Any,
    targets: Any,
    levels: Sequence[float] = DEFAULT_LEVELS,
) -> dict[float, float]:
    r"""Fraction of targets inside the central Gaussian predictive intervals.

    The central interval of level :math:`p` is
    :math:`\bar\mu \pm z_{(1+p)/2}\, \sigma` with :math:`z_q` the standard
    normal quantile (1.645 for 90%); the fraction is over every example and
    target. A calibrated predictive covers a fraction :math:`p`.

    Args:
        mean: Predictive means, shape ``(N,)`` or ``(N, D)``.
        variance: Total predictive variances, > 0.
        targets: Targets.
        levels: Interval levels in ``(0, 1)``.

    Returns:
        ``{level: observed coverage}``.

    Raises:
        ValueError: For malformed inputs or levels outside ``(0, 1)``.
    """
    expected = _check_levels(levels)
    observed = _covered(_pit_distance(mean, variance, targets), expected)
    return {float(p): float(c) for p, c in zip(levels, observed)}


def calibration_curve(
    mean: Any, variance: Any, targets: Any, *, num_levels: int = 19
) -> CalibrationCurve:
    r"""Observed coverage of central intervals on a grid of levels.

    Levels :math:`p_j = j / (L + 1)`, :math:`j = 1 \dots L` (0.05, 0.10, ...,
    0.95 for the default ``L = 19``); for each, the fraction of targets in
    the central interval of :func:`interval_coverage`. Plot ``observed``
    against ``expected``: the diagonal is perfect calibration, a curve below
    it an overconfident predictive (intervals too narrow).

    Args:
        mean: Predictive means, shape ``(N,)`` or ``(N, D)``.
        variance: Total predictive variances, > 0.
        targets: Targets.
        num_levels: Number ``L`` of levels, >= 1.

    Returns:
        A :class:`CalibrationCurve`.

    Raises:
        ValueError: For malformed inputs or ``num_levels < 1``.
    """
    if (
        isinstance(num_levels, bool)
        or not isinstance(num_levels, int)
        or num_levels < 1
    ):
        raise ValueError(f"num_levels must be a positive int, got {num_levels!r}.")
    expected = torch.arange(1, num_levels + 1, dtype=_F64) / (num_levels + 1)
    observed = _covered(_pit_distance(mean, variance, targets), expected)
    return CalibrationCurve(expected, observed)


def calibration_error(
    mean: Any, variance: Any, targets: Any, *, num_levels: int = 19
) -> float:
    r"""Mean absolute calibration error over :func:`calibration_curve`'s grid.

    .. math:: \frac1L \sum_{j=1}^L |\hat p_j - p_j|

    with :math:`\hat p_j` the observed coverage of the central interval of
    level :math:`p_j`: 0 for a calibrated predictive, at most 0.5.

    Args:
        mean: Predictive means, shape ``(N,)`` or ``(N, D)``.
        variance: Total predictive variances, > 0.
        targets: Targets.
        num_levels: Number of levels of the grid.

    Returns:
        The error, in ``[0, 0.5]``.

    Raises:
        ValueError: As :func:`calibration_curve`.
    """
    curve = calibration_curve(mean, variance, targets, num_levels=num_levels)
    return (curve.observed - curve.expected).abs().mean().item()
