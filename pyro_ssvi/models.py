"""Bayesian versions of ordinary torch networks, ready for ``AutoSparseNormal``.

:func:`make_bayesian` turns any ``nn.Module`` into a :class:`~pyro.nn.PyroModule`
whose linear and convolution weights carry ``Normal(0, prior_scale)`` priors;
:class:`BayesianClassifier` adds a categorical likelihood scaled to the data
set size, and remembers the network's own initial weights for the guide::

    model = BayesianClassifier(mlp(64, [100], 10), num_data=len(x_train))
    guide = AutoSparseNormal(model, density=0.1, init_loc_fn=model.init_loc_fn())
"""

from __future__ import annotations

from typing import Any, Callable, Iterable, Sequence

import pyro
import pyro.distributions as dist
import torch
from pyro.infer.autoguide import init_to_feasible
from pyro.nn import PyroModule, PyroSample
from pyro.nn.module import to_pyro_module_
from torch import nn

__all__ = [
    "BayesianClassifier",
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
    # so the prior follows the module across devices (.to(device)).
    def prior(module: PyroModule) -> dist.Distribution:
        scale = module._ssvi_prior_scale
        return (
            dist.Normal(torch.zeros_like(scale), scale)
            .expand(shape)
            .to_event(len(shape))
        )

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


class BayesianClassifier(PyroModule):
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

    def __init__(self, net: nn.Module, num_data: int, **bayes_kwargs: Any) -> None:
        super().__init__()
        if not isinstance(num_data, int) or num_data < 1:
            raise ValueError(
                f"BayesianClassifier: num_data must be >= 1, got {num_data!r}."
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
                    f"BayesianClassifier: the initial value of site {name!r} was "
                    "given to an earlier guide and released; call "
                    "model.init_loc_fn(keep=True) when one model starts several guides."
                )
            if fallback is None:
                raise ValueError(f"no initial value for site {name!r}")
            return fallback(site)

        return init

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        logits = self.net(x)
        idx = torch.arange(x.shape[0], device=x.device)
        with pyro.plate("data", self.num_data, subsample=idx):
            pyro.sample("obs", dist.Categorical(logits=logits), obs=y)
        return logits
