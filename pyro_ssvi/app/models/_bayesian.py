"""``make_bayesian``: priors on the linear and convolution weights of a network."""

from __future__ import annotations

from typing import Any, Callable, Iterable

import pyro.distributions as dist
import torch
from pyro.nn import PyroModule, PyroSample
from pyro.nn.module import to_pyro_module_
from torch import nn

from ..._pyro_compat import tensor_version

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
