"""Bayesian networks with a likelihood: categorical or Gaussian, scaled to N."""

from __future__ import annotations

from typing import Any, Callable, cast

import pyro
import pyro.distributions as dist
import torch
from pyro.infer.autoguide import init_to_feasible
from pyro.nn import PyroModule, PyroParam
from torch import nn
from torch.distributions import constraints
from torch.nn import functional as F

from ._bayesian import DENSE_PARAMETERS_ATTR, make_bayesian


class _BayesianNet(PyroModule):
    """What :class:`BayesianClassifier` and :class:`BayesianRegressor` share.

    Makes ``net`` Bayesian, remembers its initial weights for
    :meth:`init_loc_fn` and the sites it asks to keep dense; subclasses add a
    likelihood in ``forward``.
    """

    def __init__(self, net: nn.Module, num_data: int, **bayes_kwargs: Any) -> None:
        super().__init__()
        if not isinstance(num_data, int) or num_data < 1:
            raise ValueError(
                f"{type(self).__name__}: num_data must be >= 1, got {num_data!r}."
            )
        dense = tuple(getattr(net, DENSE_PARAMETERS_ATTR, ()))
        initial = make_bayesian(net, **bayes_kwargs)
        self.net = net
        self.num_data = num_data
        self.initial_values = {f"net.{k}": v for k, v in initial.items()}
        self._released_values: set[str] = set()
        self.dense_sites = tuple(f"net.{k}" for k in dense if k in initial)

    def init_loc_fn(
        self,
        fallback: Callable[[dict[str, Any]], torch.Tensor] | None = init_to_feasible,
        *,
        keep: bool = False,
    ) -> Callable[[dict[str, Any]], torch.Tensor]:
        """Initialiser that starts every weight mean at the network's own weights.

        Values are moved to the device of each site's prior, so the guide's
        parameters land where the model lives. The model holds a dense copy of
        every weight until a guide has used it: by default the initialiser
        then releases it (``initial_values`` loses the site), so a trained
        sparse guide does not keep the dense network alive. Pass
        ``keep=True`` to start several guides from the same model.

        Raises:
            ValueError: At guide setup, for a site whose value an earlier
                guide already used and released.
        """
        values = self.initial_values
        released = self._released_values
        owner = type(self).__name__

        def init(site: dict[str, Any]) -> torch.Tensor:
            name = site["name"]
            if name in values:
                value = values[name].to(site["fn"].mean.device)
                if not keep:
                    del values[name]
                    released.add(name)
                return value
            if name in released:
                raise ValueError(
                    f"{owner}: the initial value of site {name!r} was "
                    "given to an earlier guide and released; call "
                    "model.init_loc_fn(keep=True) when one model starts several guides."
                )
            if fallback is None:
                raise ValueError(f"no initial value for site {name!r}")
            return fallback(site)

        def gives_values(name: str) -> bool:  # see init_gives_values
            return name in values or name in released

        init.gives_values = gives_values  # type: ignore[attr-defined]
        return init

    def _subsample(self, x: torch.Tensor) -> torch.Tensor:
        """Indices of the minibatch within ``pyro.plate("data", num_data)``."""
        return torch.arange(x.shape[0], device=x.device)


class BayesianClassifier(_BayesianNet):
    """A Bayesian network with a categorical likelihood over ``num_data`` examples.

    ``forward(x, y=None)`` returns the logits and observes ``y`` in a
    ``pyro.plate("data", num_data)`` subsampled to the minibatch, so the
    likelihood is scaled by ``num_data / len(x)`` and the ELBO is that of the
    whole data set.

    Args:
        net: A torch network mapping inputs to logits; made Bayesian in place
            by :func:`make_bayesian` with ``**bayes_kwargs`` (parameters the
            network marks in ``ssvi_deterministic_parameters`` stay ordinary
            parameters of this module unless ``deterministic=`` says
            otherwise).
        num_data: Size of the training set.
        **bayes_kwargs: Passed to :func:`make_bayesian`.

    Attributes:
        initial_values: ``{site name: the network's own initial value}``, until
            a guide's setup uses it (see :meth:`init_loc_fn`).
        dense_sites: Site names the network asks to keep dense under SSVI
            (from its ``ssvi_dense_parameters`` attribute); pass them to
            ``AutoSparseNormal(..., dense_sites=model.dense_sites)``.
    """

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        logits = self.net(x)
        with pyro.plate("data", self.num_data, subsample=self._subsample(x)):
            pyro.sample("obs", dist.Categorical(logits=logits), obs=y)
        return logits


class BayesianRegressor(_BayesianNet):
    r"""A Bayesian network with a Gaussian likelihood over ``num_data`` examples.

    Homoscedastic (default), with one noise scale :math:`\sigma` for every
    example and target:

    .. math:: y_i \sim \mathcal{N}(f_\theta(x_i), \sigma^2)

    Heteroscedastic, with a network that outputs ``2 * D`` columns for ``D``
    targets, the means and then the raw scales :math:`r_\theta(x)`:

    .. math::
        y_i \sim \mathcal{N}\bigl(f_\theta(x_i),\,
        (\operatorname{softplus}(r_\theta(x_i)) + \sigma_{\min})^2\bigr)

    ``forward(x, y=None)`` returns the predictive mean of the weights it runs
    with, shape ``(B,)`` for one target (``(B, D)`` for ``D``), and observes
    ``y`` at site ``"obs"`` in a ``pyro.plate("data", num_data)`` subsampled
    to the minibatch, as :class:`BayesianClassifier` does, so the ELBO is
    that of the whole data set. Several targets are one event (diagonal
    Gaussian).

    **The noise.** ``noise="learned"`` makes :math:`\sigma` a positive
    :class:`~pyro.nn.PyroParam` (``noise_scale``, a point estimate trained by
    SVI alongside the guide: type-II maximum likelihood, the common choice in
    the Bayesian deep learning literature; it has no prior and no KL term). A
    float fixes it (a buffer, never trained). A noise with a prior would be a
    latent site; wrap the model yourself for that.

    Args:
        net: A torch network mapping inputs to ``(B, D)`` outputs (``(B,)``
            is read as ``D = 1``), ``(B, 2 * D)`` when heteroscedastic; made
            Bayesian in place by :func:`make_bayesian` with ``**bayes_kwargs``.
        num_data: Size of the training set.
        noise: ``"learned"`` or a fixed noise standard deviation > 0.
        heteroscedastic: Let the network predict the noise scale per input
            (the second half of its outputs); needs ``noise="learned"``.
        init_noise: Initial value of the learned homoscedastic noise scale,
            > 0 (in target units: 1.0 is the spread of standardised targets).
        min_noise: Floor :math:`\sigma_{\min} \ge 0` added to the
            heteroscedastic scale, for numerical safety.
        **bayes_kwargs: Passed to :func:`make_bayesian`.

    Attributes:
        noise_scale: The homoscedastic noise scale (a constrained parameter
            when learned, a buffer when fixed); absent when heteroscedastic.
        initial_values: As :class:`BayesianClassifier`'s.
        dense_sites: As :class:`BayesianClassifier`'s.

    Raises:
        ValueError: For a bad ``num_data``, ``noise``, ``init_noise`` or
            ``min_noise``, or a fixed noise with ``heteroscedastic=True``; at
            call time, for network outputs or targets of the wrong shape.
        TypeError: For a non-boolean ``heteroscedastic``.

    Example::

        model = BayesianRegressor(mlp(13, [50], 1, flatten=False), len(x_train))
        guide = AutoSparseNormal(model, density=0.1, init_loc_fn=model.init_loc_fn())
        svi = SparseSVI(model, guide, pyro.optim.Adam({"lr": 1e-2}))
        svi.step(x_batch, y_batch)            # y: (B,) float targets
        pyro_ssvi.app.regression.predict_regression(model, guide, x_test)
    """

    def __init__(
        self,
        net: nn.Module,
        num_data: int,
        *,
        noise: str | float = "learned",
        heteroscedastic: bool = False,
        init_noise: float = 1.0,
        min_noise: float = 1e-6,
        **bayes_kwargs: Any,
    ) -> None:
        learned = _check_noise(noise, heteroscedastic, init_noise, min_noise)
        super().__init__(net, num_data, **bayes_kwargs)
        self.heteroscedastic = heteroscedastic
        self.min_noise = float(min_noise)
        if heteroscedastic:
            return
        if learned:
            initial = torch.tensor(float(init_noise))
            self.noise_scale = PyroParam(initial, constraint=constraints.positive)
        else:
            self.register_buffer("noise_scale", torch.tensor(float(noise)))

    def _loc_and_scale(
        self, out: torch.Tensor, batch: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and noise scale of each output, ``(B,)`` for one target."""
        if out.dim() == 1 and not self.heteroscedastic:
            out = out.unsqueeze(-1)
        width = out.shape[-1] if out.dim() == 2 else 0
        if out.dim() != 2 or len(out) != batch or (self.heteroscedastic and width % 2):
            wanted = "(B, 2 * num_targets)" if self.heteroscedastic else "(B, D)"
            raise ValueError(
                f"BayesianRegressor: net(x) must return shape {wanted} for a batch "
                f"of B = {batch} inputs, got {tuple(out.shape)}."
            )
        if self.heteroscedastic:
            loc, raw = out.chunk(2, dim=-1)
            scale = F.softplus(raw) + self.min_noise
        else:
            loc, scale = out, cast(torch.Tensor, self.noise_scale).expand(out.shape)
        if loc.shape[-1] == 1:
            return loc.squeeze(-1), scale.squeeze(-1)
        return loc, scale

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        loc, scale = self._loc_and_scale(self.net(x), x.shape[0])
        if y is not None:
            y = _check_targets(y, loc)
        with pyro.plate("data", self.num_data, subsample=self._subsample(x)):
            likelihood = dist.Normal(loc, scale).to_event(loc.dim() - 1)
            pyro.sample("obs", likelihood, obs=y)
        return loc


def _check_noise(
    noise: Any, heteroscedastic: Any, init_noise: Any, min_noise: Any
) -> bool:
    """Validate :class:`BayesianRegressor`'s noise options; True if learned."""
    if not isinstance(heteroscedastic, bool):
        raise TypeError(
            f"BayesianRegressor: heteroscedastic must be True or False, "
            f"got {heteroscedastic!r}."
        )
    learned = isinstance(noise, str) and noise == "learned"
    fixed = (
        isinstance(noise, (int, float))
        and not isinstance(noise, bool)
        and noise > 0
        and noise != float("inf")
    )
    if not (learned or fixed):
        raise ValueError(
            f"BayesianRegressor: noise must be 'learned' or a positive finite "
            f"float, got {noise!r}."
        )
    if heteroscedastic and not learned:
        raise ValueError(
            f"BayesianRegressor: heteroscedastic=True learns the noise per input; "
            f"drop noise={noise!r}."
        )
    for name, value, low in (
        ("init_noise", init_noise, 0.0),
        ("min_noise", min_noise, None),
    ):
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        if not ok or not (value > 0 if low is not None else value >= 0):
            bound = "> 0" if low is not None else ">= 0"
            raise ValueError(
                f"BayesianRegressor: {name} must be a float {bound}, got {value!r}."
            )
    return learned


def _check_targets(y: torch.Tensor, loc: torch.Tensor) -> torch.Tensor:
    """``y`` shaped like ``loc`` (``(B, 1)`` targets of one output are flattened)."""
    if (
        not isinstance(y, torch.Tensor)
        or len(y) != len(loc)
        or y.numel() != loc.numel()
    ):
        shape = tuple(y.shape) if isinstance(y, torch.Tensor) else y
        raise ValueError(
            f"BayesianRegressor: targets must have shape {tuple(loc.shape)} to "
            f"match the network's outputs, got {shape!r}."
        )
    return y.reshape(loc.shape).to(loc.dtype)
