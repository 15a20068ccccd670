"""Measuring a network: weights and dense forward MACs of each linear or conv layer."""

from __future__ import annotations

import math
from dataclasses import dataclass
from numbers import Integral
from typing import Any

import pyro.poutine
import torch
from torch import nn

_CONV_LAYERS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)


@dataclass(frozen=True)
class LayerCost:
    """The size and dense forward cost of one linear or convolution layer.

    Attributes:
        name: Parameter path of the weight relative to the network passed to
            :func:`layer_costs`, e.g. ``"layer1.0.conv1.weight"``.
        kind: ``"conv"`` or ``"linear"``.
        numel: Number of weights.
        macs: Dense forward multiply-accumulates per example: weights times the
            output positions they are applied at (summed over calls if the
            layer runs more than once; 0 if it never runs).
    """

    name: str
    kind: str
    numel: int
    macs: int


def _layer_shape(module: nn.Module) -> tuple[str, int, int]:
    """``(kind, numel, out_units)`` of a linear or conv layer, from its config.

    The config, not ``module.weight``, because reading the weight of a Pyro
    Bayesian layer draws a sample.
    """
    if isinstance(module, nn.Linear):
        return "linear", module.in_features * module.out_features, module.out_features
    assert isinstance(module, _CONV_LAYERS)
    per_output = (module.in_channels // module.groups) * math.prod(module.kernel_size)
    return "conv", module.out_channels * per_output, module.out_channels


def _probe_tensor(net: nn.Module) -> torch.Tensor:
    """The net's first float tensor, for its device and dtype (CPU if none)."""
    for tensor in (*net.parameters(), *net.buffers()):
        if tensor.is_floating_point():
            return tensor
    return torch.zeros(())


def layer_costs(net: nn.Module, input_shape: tuple[int, ...]) -> dict[str, LayerCost]:
    """Weights and dense forward MACs of every linear and convolution layer.

    Runs one forward pass of ``net`` on zeros of shape ``(1, *input_shape)``
    with a forward hook on every :class:`~torch.nn.Linear` and
    :class:`~torch.nn.Conv1d`/``2d``/``3d`` (grouped, strided and dilated convs
    included), and counts ``numel * output positions`` MACs per call; biases
    are not counted. Works on plain torch networks and on Bayesian ones from
    :func:`pyro_ssvi.app.models.make_bayesian`, whose weights are ``PyroSample``
    sites: the pass then draws weights from the prior, hidden from any
    enclosing Pyro handler by :func:`pyro.poutine.block` and without touching
    the global RNG state.

    The pass runs in eval mode (batch norms use, and do not update, their
    running statistics), under :func:`torch.no_grad`; each submodule's
    train/eval flag is restored afterwards and the hooks are removed.

    Names are parameter paths relative to ``net``: ``"1.weight"`` for
    ``mlp(...)``, ``"layer1.0.conv1.weight"`` for a ResNet. Given a
    :class:`~pyro_ssvi.app.models.BayesianClassifier` they start with ``"net."``,
    as its sample sites (and ``AutoSparseNormal``'s site names) do; given its
    ``.net`` they do not.

    Args:
        net: The network; it must accept one tensor of shape
            ``(batch, *input_shape)``.
        input_shape: Shape of one example, e.g. ``(3, 32, 32)``.

    Returns:
        ``{weight name: LayerCost}`` in ``net.named_modules()`` order,
        including layers the forward pass never called (with ``macs == 0``).

    Raises:
        ValueError: If ``input_shape`` is not a non-empty tuple of positive
            ints, or ``net`` has no linear or convolution layer.
    """
    if not (
        len(input_shape) > 0
        and all(
            isinstance(s, Integral) and not isinstance(s, bool) for s in input_shape
        )
        and all(s > 0 for s in input_shape)
    ):
        raise ValueError(
            f"layer_costs: input_shape must be positive ints, got {input_shape!r}."
        )
    layers = {
        f"{path}.weight" if path else "weight": module
        for path, module in net.named_modules()
        if isinstance(module, (nn.Linear, *_CONV_LAYERS))
    }
    if not layers:
        raise ValueError("layer_costs: the network has no linear or conv layer.")
    macs = dict.fromkeys(layers, 0)

    def hook_for(name: str, module: nn.Module) -> Any:
        _, numel, out_units = _layer_shape(module)

        def hook(_module: nn.Module, _inputs: Any, output: torch.Tensor) -> None:
            macs[name] += numel * (output.numel() // out_units)

        return hook

    handles = [m.register_forward_hook(hook_for(n, m)) for n, m in layers.items()]
    modes = {module: module.training for module in net.modules()}
    probe = _probe_tensor(net)
    on_cpu = probe.device.type == "cpu"
    # No device_type for the CPU: torch < 2.12 refuses device_type=None.
    rng = torch.random.fork_rng(
        [] if on_cpu else [probe.device],
        **({} if on_cpu else {"device_type": probe.device.type}),
    )
    try:
        net.eval()
        with torch.no_grad(), pyro.poutine.block(), rng:
            net(probe.new_zeros((1, *input_shape)))
    finally:
        for handle in handles:
            handle.remove()
        for module, training in modes.items():
            module.training = training
    return {
        name: LayerCost(name, *_layer_shape(module)[:2], macs[name])
        for name, module in layers.items()
    }
