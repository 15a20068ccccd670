r"""Streaming posterior predictive of a regression model, split by uncertainty.

For every batch, ``S`` weight draws :math:`\theta_s \sim q` (one draw shared
by the batch, fresh draws per batch, as in :func:`pyro_ssvi.app.predict.predict`)
give each input a likelihood :math:`p(y \mid x, \theta_s)` with mean
:math:`\mu_s(x)` and variance :math:`\sigma_s^2(x)`, read from the model's
observation site. Then

.. math::
    \bar\mu = \frac1S \sum_s \mu_s, \qquad
    \sigma^2_{\text{alea}} = \frac1S \sum_s \sigma_s^2, \qquad
    \sigma^2_{\text{epi}} = \frac1S \sum_s (\mu_s - \bar\mu)^2,

and the total predictive variance is their sum (the law of total variance
over the draws). Only one batch's draws are held at a time.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Iterator, NamedTuple

import torch
from pyro import poutine

from .._batching import (
    batches,
    check_consistent,
    eval_mode,
    median_on,
    prepare_prediction,
)

__all__ = ["RegressionPrediction", "predict_regression"]

_F64 = torch.float64


class RegressionPrediction(NamedTuple):
    """Posterior predictive summaries of a regression data set, float64 on the CPU.

    Shapes are ``(N,)`` for one target, ``(N, D)`` for ``D``.

    Attributes:
        mean: Predictive mean :math:`\\bar\\mu`.
        aleatoric: Mean over draws of the likelihood's variance (the noise).
        epistemic: Variance over draws of the likelihood's mean (population
            variance; zero with mean weights).
        log_likelihood: Per example, the log of the mean over draws of the
            likelihood of its targets (the mixture log-likelihood; summed
            over the ``D`` targets of an example), shape ``(N,)``; None
            without targets.
        targets: The targets the data came with, or None.
    """

    mean: torch.Tensor
    aleatoric: torch.Tensor
    epistemic: torch.Tensor
    log_likelihood: torch.Tensor | None
    targets: torch.Tensor | None

    @property
    def variance(self) -> torch.Tensor:
        """Total predictive variance, ``aleatoric + epistemic``."""
        return self.aleatoric + self.epistemic

    def unstandardize(self, loc: Any, scale: Any) -> "RegressionPrediction":
        r"""The prediction in original target units, for targets standardised as
        :math:`(y - \text{loc}) / \text{scale}`.

        Means and targets map to :math:`\text{loc} + \text{scale}\cdot m`,
        variances scale by :math:`\text{scale}^2`, and each log-likelihood
        drops :math:`\sum_d \log \text{scale}_d` (the Jacobian), as the UCI
        literature reports RMSE and test log-likelihood.

        Args:
            loc: Target mean(s) removed in standardisation: a float, or a
                tensor of shape ``(D,)``.
            scale: Target standard deviation(s) divided by, > 0.

        Returns:
            A new :class:`RegressionPrediction`.

        Raises:
            ValueError: If ``scale`` is not positive.
        """
        loc = torch.as_tensor(loc, dtype=_F64)
        scale = torch.as_tensor(scale, dtype=_F64)
        if not (scale > 0).all():
            raise ValueError(f"scale must be > 0, got {scale.tolist()!r}.")
        log_jacobian = torch.log(scale).expand(self.mean.shape[1:]).sum()
        ll = self.log_likelihood
        return RegressionPrediction(
            loc + scale * self.mean,
            scale**2 * self.aleatoric,
            scale**2 * self.epistemic,
            None if ll is None else ll - log_jacobian,
            None if self.targets is None else loc + scale * self.targets,
        )


def _likelihood(trace: Any, obs_site: str, batch: int) -> Any:
    """The distribution at the model's observation site, checked."""
    site = trace.nodes.get(obs_site)
    if site is None or site["type"] != "sample":
        raise ValueError(
            f"the model has no sample site {obs_site!r}; pass obs_site= the name of "
            "its observation (likelihood) site."
        )
    fn = site["fn"]
    try:
        mean = fn.mean
        fn.variance
    except NotImplementedError as e:
        raise ValueError(
            f"the distribution at site {obs_site!r} ({type(fn).__name__}) has no "
            "mean or variance."
        ) from e
    if mean.dim() not in (1, 2) or len(mean) != batch:
        raise ValueError(
            f"site {obs_site!r} must hold one distribution per input, with mean of "
            f"shape ({batch},) or ({batch}, D), got {tuple(mean.shape)}."
        )
    return fn


def _draws(
    model: Callable[..., Any],
    guide: Any,
    x: torch.Tensor,
    num_samples: int,
    median: dict[str, torch.Tensor] | None,
    obs_site: str,
) -> Iterator[Any]:
    """The likelihood under each of ``num_samples`` weight draws (or the median)."""
    for _ in range(1 if median is not None else num_samples):
        if median is not None:
            run = poutine.condition(model, data=median)
        else:
            guide_trace = poutine.trace(guide).get_trace(x)
            run = poutine.replay(model, trace=guide_trace)
        yield _likelihood(poutine.trace(run).get_trace(x), obs_site, len(x))


def _targets(y: torch.Tensor, mean: torch.Tensor) -> torch.Tensor:
    if len(y) != len(mean) or y.numel() != mean.numel():
        raise ValueError(
            f"targets must have shape {tuple(mean.shape)} to match the model's "
            f"predictions, got {tuple(y.shape)}."
        )
    return y.reshape(mean.shape).to(mean)


def _summarise(
    draws: Iterator[Any], y: torch.Tensor | None
) -> tuple[torch.Tensor, ...]:
    """``(mean, aleatoric, epistemic, log-likelihood or None)`` of a batch."""
    locs, variances, log_probs = [], [], []
    for fn in draws:
        locs.append(fn.mean.detach().to(_F64))
        variances.append(fn.variance.detach().to(_F64))
        if y is not None:
            log_probs.append(fn.log_prob(_targets(y, fn.mean)).detach().to(_F64))
    loc = torch.stack(locs)
    mean = loc.mean(0)
    epistemic = (loc - mean).pow(2).mean(0)
    aleatoric = torch.stack(variances).mean(0)
    if y is None:
        return mean, aleatoric, epistemic
    ll = torch.logsumexp(torch.stack(log_probs), 0) - math.log(len(log_probs))
    return mean, aleatoric, epistemic, ll


def predict_regression(
    model: Callable[..., Any],
    guide: Any,
    data: Any,
    *,
    num_samples: int = 10,
    mean_weights: bool = False,
    batch_size: int = 1000,
    device: torch.device | str | None = None,
    obs_site: str = "obs",
    on_batch: Callable[[int], object] | None = None,
) -> RegressionPrediction:
    r"""Posterior predictive mean and variance of a regression model, batch by batch.

    See the module notes for the estimators. Any Pyro model works whose
    observation site (``obs_site``) holds, for a batch of ``B`` inputs, a
    distribution with ``mean``, ``variance`` and ``log_prob`` of shape
    ``(B,)`` or ``(B, D)`` (:class:`~pyro_ssvi.app.models.BayesianRegressor`'s
    Normal, a Student-t, ...); it is traced with ``model(x)`` replayed
    against guide draws. With ``mean_weights=True`` there is one pass with
    the model conditioned on ``guide.median()``: the epistemic part is zero.

    The model is put in eval mode for the call and its modes restored
    afterwards; everything runs under ``torch.no_grad()``.

    Args:
        model: Pyro model taking ``model(x)``.
        guide: The trained guide. Autoguides must have been run (or set up)
            on the model already.
        data: A tensor of inputs; a tuple ``(x, y)`` of tensors; a map-style
            ``Dataset`` of ``(x, y)`` items; or an iterable such as a
            ``DataLoader`` of ``x`` or ``(x, y)`` batches. Targets of one
            output may be ``(N,)`` or ``(N, 1)``.
        num_samples: Number ``S`` of posterior draws per batch (ignored with
            ``mean_weights``).
        mean_weights: Predict once with the guide's median weights.
        batch_size: Inputs per forward pass for tensor or dataset ``data``.
        device: Where to run the model; default: the device of the guide's
            parameters.
        obs_site: Name of the model's observation site.
        on_batch: Called with the number of inputs after each batch.

    Returns:
        A :class:`RegressionPrediction` (in the model's target units; see
        :meth:`RegressionPrediction.unstandardize`).

    Raises:
        ValueError: For non-positive ``num_samples`` / ``batch_size``, empty
            data, batches of the wrong form, targets on only some batches or
            of the wrong shape, a model without ``obs_site``, or an autoguide
            that was never run on the model (for Monte Carlo).
        TypeError: For ``data`` of an unsupported type, or ``mean_weights``
            with a guide that has no ``median()``.

    Example::

        pred = predict_regression(model, guide, (x_test, y_test), num_samples=100)
        pred.mean, pred.variance.sqrt(), pred.log_likelihood.mean()
    """
    device = prepare_prediction(guide, num_samples, mean_weights, batch_size, device)
    parts: list[tuple[torch.Tensor, ...]] = []
    targets: list[torch.Tensor] = []
    median = None
    with torch.no_grad(), eval_mode(model):
        for position, (x, y) in enumerate(batches(data, batch_size)):
            check_consistent(position, y is not None, bool(targets), "targets")
            x = x if device is None else x.to(device)
            y = None if y is None else y.to(x.device)
            if mean_weights and median is None:
                median = median_on(guide, x)
            draws = _draws(model, guide, x, num_samples, median, obs_site)
            parts.append(tuple(t.cpu() for t in _summarise(draws, y)))
            if y is not None:
                targets.append(_targets(y, parts[-1][0]).detach().to("cpu", _F64))
            if on_batch is not None:
                on_batch(len(x))
    if not parts:
        raise ValueError("data is empty: there is nothing to predict.")
    columns = [torch.cat(column) for column in zip(*parts)]
    return RegressionPrediction(
        columns[0],
        columns[1],
        columns[2],
        columns[3] if targets else None,
        torch.cat(targets) if targets else None,
    )
