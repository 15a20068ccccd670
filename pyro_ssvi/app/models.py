"""Bayesian versions of ordinary torch networks, ready for ``AutoSparseNormal``.

:func:`make_bayesian` turns any ``nn.Module`` into a :class:`~pyro.nn.PyroModule`
whose linear and convolution weights carry ``Normal(0, prior_scale)`` priors;
:class:`BayesianClassifier` adds a categorical likelihood scaled to the data
set size (:class:`BayesianRegressor` a Gaussian one), and remembers the
network's own initial weights for the guide::

    model = BayesianClassifier(mlp(64, [100], 10), num_data=len(x_train))
    guide = AutoSparseNormal(model, density=0.1, init_loc_fn=model.init_loc_fn())
"""

from __future__ import annotations

from typing import Any, Callable, Iterable, Sequence, cast

import pyro
import pyro.distributions as dist
import torch
from pyro.infer.autoguide import init_to_feasible
from pyro.nn import PyroModule, PyroParam, PyroSample
from pyro.nn.module import to_pyro_module_
from torch import nn
from torch.distributions import constraints
from torch.nn import functional as F

from .._pyro_compat import tensor_version

__all__ = [
    "BayesianClassifier",
    "BayesianRegressor",
    "DENSE_PARAMETERS_ATTR",
    "DETERMINISTIC_PARAMETERS_ATTR",
    "lenet",
    "make_bayesian",
    "mlp",
    "resnet18_cifar",
]

#: Attribute a network may set to a tuple of parameter paths that SSVI should
#: keep dense (Bayesian, but not sparse), e.g. ``("conv1.weight",)``.
DENSE_PARAMETERS_ATTR = "ssvi_dense_parameters"

#: Attribute a network may set to a tuple of parameter paths that
#: :func:`make_bayesian` leaves deterministic (ordinary parameters, trained as
#: point estimates with weight decay, no prior and no KL term), e.g.
#: ``("fc.bias",)``. ``make_bayesian(..., deterministic=())`` overrides it.
DETERMINISTIC_PARAMETERS_ATTR = "ssvi_deterministic_parameters"

_WEIGHT_LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
_NORM_LAYERS = (
    nn.BatchNorm1d,
    nn.BatchNorm2d,
    nn.BatchNorm3d,
    nn.GroupNorm,
    nn.LayerNorm,
)


def _prior(shape: torch.Size) -> Callable[[PyroModule], dist.Distribution]:
    # A callable prior reads its scale from the module's buffer at call time,
    # so the prior follows the module across devices (.to(device)) and edits
    # of the buffer; it is built again only when the buffer changed.
    built: list[Any] = [None, -1, None]  # (buffer, its version, the prior)

    def prior(module: PyroModule) -> dist.Distribution:
        scale = module._ssvi_prior_scale
        if built[0] is not scale or built[1] != tensor_version(scale):
            built[:] = (
                scale,
                tensor_version(scale),
                (  # scale checked when built
                    dist.Normal(torch.zeros_like(scale), scale, validate_args=False)
                    .expand(shape)
                    .to_event(len(shape))
                ),
            )
        return built[2]

    return prior


def make_bayesian(
    module: nn.Module,
    *,
    prior_scale: float = 1.0,
    bayesian_bias: bool = True,
    bayesian_norm: bool = False,
    exclude: Iterable[str] = (),
    deterministic: Iterable[str] | None = None,
) -> dict[str, torch.Tensor]:
    """Turn ``module`` in place into a Bayesian :class:`~pyro.nn.PyroModule`.

    Every weight of a linear or convolution layer gets an i.i.d.
    ``Normal(0, prior_scale)`` prior (a ``PyroSample`` site named by its module
    path); biases too when ``bayesian_bias``; normalisation-layer affine
    parameters when ``bayesian_norm`` (otherwise they stay point estimates that
    SVI trains as ordinary parameters). Parameters named in ``deterministic``
    (by default the network's :data:`DETERMINISTIC_PARAMETERS_ATTR`, e.g.
    ``resnet18_cifar``'s classifier bias) stay point estimates too.

    Args:
        module: Any torch network; converted in place.
        prior_scale: Standard deviation of the prior, > 0.
        bayesian_bias: Put priors on linear/conv biases as well.
        bayesian_norm: Put priors on normalisation-layer weights and biases.
        exclude: Module paths (as in ``named_modules()``) left deterministic,
            e.g. ``["conv1"]``.
        deterministic: Parameter paths (as in ``named_parameters()``) left
            deterministic, e.g. ``["fc.bias"]``; None reads the network's
            ``ssvi_deterministic_parameters`` attribute, ``()`` makes every
            eligible parameter Bayesian.

    Returns:
        ``{parameter path: initial value}`` of every parameter that became a
        sample site: the network's own weights, for
        :func:`~pyro.infer.autoguide.init_to_value`.

    Raises:
        ValueError: If ``prior_scale`` is not positive, ``exclude`` or
            ``deterministic`` names something the network does not have, or
            no parameter became Bayesian.
    """
    if not prior_scale > 0:
        raise ValueError(
            f"make_bayesian: prior_scale must be > 0, got {prior_scale!r}."
        )
    excluded = _known("exclude", set(exclude), "modules", module.named_modules())
    fixed = _deterministic_paths(module, deterministic)
    to_pyro_module_(module)
    initial: dict[str, torch.Tensor] = {}
    for path, sub in module.named_modules():
        if path in excluded or not isinstance(sub, (*_WEIGHT_LAYERS, *_NORM_LAYERS)):
            continue
        is_norm = isinstance(sub, _NORM_LAYERS)
        names = (
            ["weight", "bias"]
            if is_norm
            else ["weight"] + (["bias"] if bayesian_bias else [])
        )
        if is_norm and not bayesian_norm:
            continue
        for pname in names:
            param = getattr(sub, pname, None)
            path_name = f"{path}.{pname}" if path else pname
            if not isinstance(param, nn.Parameter) or path_name in fixed:
                continue
            ref = param.detach().new_tensor(float(prior_scale))
            if "_ssvi_prior_scale" not in sub._buffers:
                sub.register_buffer("_ssvi_prior_scale", ref, persistent=False)
            initial[path_name] = param.detach().clone()
            delattr(sub, pname)
            prior: Any = _prior(param.shape)
            setattr(sub, pname, PyroSample(prior))
    if not initial:
        raise ValueError("make_bayesian: the module has no linear or conv parameter.")
    return initial


def _deterministic_paths(
    module: nn.Module, deterministic: Iterable[str] | None
) -> set[str]:
    """The parameter paths ``make_bayesian`` leaves alone, validated."""
    if deterministic is None:
        deterministic = getattr(module, DETERMINISTIC_PARAMETERS_ATTR, ())
    if isinstance(deterministic, str):
        raise TypeError(
            "make_bayesian: deterministic must be a sequence of parameter paths, "
            f"got the string {deterministic!r}; write [{deterministic!r}]."
        )
    return _known(
        "deterministic", set(deterministic), "parameters", module.named_parameters()
    )


def _known(arg: str, given: set[str], kind: str, named: Iterable[Any]) -> set[str]:
    """``given``, if every name in it is among the names of ``named``."""
    unknown = given - {name for name, _ in named}
    if unknown:
        raise ValueError(
            f"make_bayesian: {arg} names unknown {kind} {sorted(unknown)}."
        )
    return given


def mlp(
    in_features: int, hidden: Sequence[int], out_features: int, *, flatten: bool = True
) -> nn.Sequential:
    """A ReLU multilayer perceptron ``in -> hidden... -> out`` (plain torch)."""
    sizes = [in_features, *hidden, out_features]
    layers: list[nn.Module] = [nn.Flatten()] if flatten else []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


def lenet(
    in_channels: int = 1, num_classes: int = 10, input_size: int = 28
) -> nn.Sequential:
    """A LeNet-5 style CNN (plain torch): two 5x5 convs with max-pooling, 3 FCs.

    ``conv(in, 6, 5, pad 2) -> pool -> conv(6, 16, 5) -> pool -> 120 -> 84 ->
    num_classes`` with ReLUs. The first convolution (150 weights for MNIST) is
    marked to stay dense under SSVI, as the reference keeps its stem dense.

    Args:
        in_channels: Input channels (1 for MNIST, 3 for CIFAR).
        num_classes: Number of output logits.
        input_size: Height and width of the (square) input, at least 8.

    Returns:
        The network; ``net.ssvi_dense_parameters == ("0.weight",)``.
    """
    if input_size < 8:
        raise ValueError(f"lenet: input_size must be >= 8, got {input_size}.")
    side = ((input_size // 2) - 4) // 2
    net = nn.Sequential(
        nn.Conv2d(in_channels, 6, 5, padding=2),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(6, 16, 5),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(16 * side * side, 120),
        nn.ReLU(),
        nn.Linear(120, 84),
        nn.ReLU(),
        nn.Linear(84, num_classes),
    )
    setattr(net, DENSE_PARAMETERS_ATTR, ("0.weight",))
    return net


def resnet18_cifar(
    num_classes: int = 10, *, bayesian_fc_bias: bool = False
) -> nn.Module:
    """The CIFAR variant of ResNet-18 used by the SSVI paper (plain torch).

    Built from :func:`torchvision.models.resnet18` with a 3x3 stride-1 stem and
    no max-pooling (11.17M conv and linear weights for 10 classes); the stem
    convolution is marked to stay dense under SSVI, as in the reference
    implementation. Batch norms stay deterministic under
    :func:`make_bayesian`'s defaults, as in the reference, and so does the
    classifier bias (marked in ``ssvi_deterministic_parameters``): the
    reference's ``StoLinear`` bias is a point estimate with weight decay. The
    Bayesian weights are then exactly the reference's 21 conv and linear
    weight tensors.

    Args:
        num_classes: Number of output logits.
        bayesian_fc_bias: Give the classifier bias a prior (and a KL term)
            like every other bias under :func:`make_bayesian`.

    Returns:
        The network; ``net.ssvi_dense_parameters == ("conv1.weight",)`` and
        ``net.ssvi_deterministic_parameters == ("fc.bias",)`` (``()`` with
        ``bayesian_fc_bias=True``).
    """
    from torchvision.models import resnet18

    net = resnet18(num_classes=num_classes)
    net.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
    nn.init.kaiming_normal_(net.conv1.weight, mode="fan_out", nonlinearity="relu")
    net.maxpool = nn.Identity()  # type: ignore[assignment]
    setattr(net, DENSE_PARAMETERS_ATTR, ("conv1.weight",))
    deterministic = () if bayesian_fc_bias else ("fc.bias",)
    setattr(net, DETERMINISTIC_PARAMETERS_ATTR, deterministic)
    return net


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
