r"""Local reparameterisation (LRT): pre-activation moments of random layers.

For a layer whose weights are independent Normals,
:math:`W_{ij} \sim \mathcal{N}(\mu_{ij}, \sigma_{ij}^2)`, the pre-activation of
a linear layer is Gaussian with

.. math::

    \mathbb{E}[x W^\top] = x \mu^\top, \qquad
    \mathrm{Var}[x W^\top] = x^2 (\sigma^2)^\top,

and of a convolution with :math:`\mathrm{conv}(x, \mu)` and
:math:`\mathrm{conv}(x^2, \sigma^2)` (Kingma, Salimans, Welling 2015). Sampling
the output from these moments, with fresh noise per output element, has the
same per-element marginals as sampling the weight and lower-variance
gradients. These are plain functions of tensors::

    mean, var = linear_moments(x, w_mean, w_var)
    out = sample_moments(mean, var)            # mean + sqrt(var + 1e-8) * eps
"""

from __future__ import annotations

import inspect
from typing import Any, Callable

import torch
import torch.nn.functional as F

__all__ = [
    "CONV_FUNCTIONS",
    "JITTER",
    "conv_moments",
    "linear_moments",
    "sample_moments",
]

#: Added to the variance under the square root, as in the reference code,
#: so that the gradient stays finite where the variance is 0.
JITTER = 1e-8

#: torch's own linear and convolutions (by number of spatial dimensions),
#: also where another library has replaced ``F.linear``/``F.conv*`` by
#: wrappers (TyXe's local reparameterisation does): our layer maths never
#: goes through them.
LINEAR: Callable[..., torch.Tensor] = inspect.unwrap(F.linear)
#: torch's own convolutions by number of spatial dimensions (as ``LINEAR``:
#: never another library's wrappers).
CONV_FUNCTIONS: dict[int, Callable[..., torch.Tensor]] = {
    1: torch.conv1d,
    2: torch.conv2d,
    3: torch.conv3d,
}


def linear_moments(
    x: torch.Tensor, w_mean: torch.Tensor, w_var: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and variance of ``x @ W.T`` for independent Normal weights.

    Args:
        x: Inputs, shape ``(..., in)``.
        w_mean: Weight means, shape ``(out, in)``.
        w_var: Weight variances, shape ``(out, in)``.

    Returns:
        ``(mean, var)``, each of shape ``(..., out)``.
    """
    return LINEAR(x, w_mean), LINEAR(x * x, w_var)


def conv_moments(
    x: torch.Tensor,
    w_mean: torch.Tensor,
    w_var: torch.Tensor,
    **conv_kwargs: Any,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and variance of ``conv(x, W)`` for independent Normal weights.

    Args:
        x: Inputs ``(N, C_in, *spatial)`` (or unbatched ``(C_in, *spatial)``).
        w_mean: Kernel means ``(C_out, C_in / groups, *kernel)``.
        w_var: Kernel variances, same shape.
        **conv_kwargs: ``stride``, ``padding``, ``dilation``, ``groups`` as in
            :func:`torch.nn.functional.conv2d`.

    Returns:
        ``(mean, var)`` of the convolution's output.
    """
    conv = CONV_FUNCTIONS[w_mean.dim() - 2]
    return conv(x, w_mean, None, **conv_kwargs), conv(x * x, w_var, None, **conv_kwargs)


def sample_moments(mean: torch.Tensor, var: torch.Tensor) -> torch.Tensor:
    """A reparameterised draw ``mean + sqrt(var + JITTER) * eps``, eps ~ N(0, I).

    The noise is independent for every output element (example, unit and
    position), and drawn in logical (row-major) order whatever the memory
    layout of ``mean``, so dense and sparse kernels draw the same noise.
    """
    eps = torch.randn(mean.shape, dtype=mean.dtype, device=mean.device)
    return mean + torch.sqrt(var + JITTER) * eps
