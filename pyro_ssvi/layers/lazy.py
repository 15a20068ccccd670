r"""Lazy weights: what a layer computes from a weight's posterior.

A :class:`LazyWeight` stands for a weight site's value under
:func:`~pyro_ssvi.poutine.local_reparameterization` or
:func:`~pyro_ssvi.poutine.sparse_weight_sampling`. Passed to ``F.linear`` or
``F.conv*d`` it asks its handler's :class:`LayerKernels` for the layer's
output: a local reparameterisation sample from the output's moments
(:mod:`pyro_ssvi.layers.lrt`), or the product with a weight drawn on the
active set only (:mod:`pyro_ssvi.layers.sparse`), on the sparse or the dense
kernels, whichever is faster. Any other use of it gets an exact weight sample.
"""

from __future__ import annotations

import time
import weakref
from typing import Any, Callable

import torch

from .._pyro_compat import disable_torch_function_subclass, tensor_version
from ..background import (
    BackgroundSparseNormal,
    conv_background_variance,
    linear_background_variance,
    noise_std,
)
from .lrt import CONV_FUNCTIONS, LINEAR, conv_moments, linear_moments, sample_moments
from .sparse import SparseStructure, sparse_linear

__all__ = ["LayerKernels", "LazyWeight", "MIN_TIMED_NUMEL"]

_CONVS = {f: d for d, f in CONV_FUNCTIONS.items()}
_CONV_ARGS = ("stride", "padding", "dilation", "groups")
# Tensor metadata that the placeholder answers itself (no sample needed).
_PROPERTIES = ("shape", "dtype", "device", "requires_grad", "ndim", "layout", "is_cuda")
_METHODS = ("dim", "size", "numel", "nelement", "__len__", "element_size")
_METADATA = {getattr(torch.Tensor, name).__get__ for name in _PROPERTIES} | {
    getattr(torch.Tensor, name) for name in _METHODS + ("is_floating_point",)
}


class LazyWeight(torch.Tensor):
    """The value of a weight site under
    :func:`~pyro_ssvi.poutine.local_reparameterization`.

    It has the weight's shape, dtype and device but holds no data. Passed to
    ``F.linear`` / ``F.conv1d/2d/3d`` as the weight, it returns a local
    reparameterisation sample of the output, computed from the posterior's
    mean and variance (from its active coordinates only, on the sparse path).
    Used in any other operation it turns into an exact sample of the weight
    (drawn once), so no computation ever sees placeholder values.

    Attributes:
        posterior: The site's guide distribution (a ``SparseNormal`` or an
            ``Independent(Normal)``).
        site: The site name.
    """

    posterior: Any
    site: str
    probe: torch.Tensor | None
    _handler: "LayerKernels"
    _sample: torch.Tensor | None
    _active_draw: torch.Tensor | None
    _active_sample: torch.Tensor | None

    @staticmethod
    def __new__(
        cls,
        posterior: Any,
        name: str,
        handler: "LayerKernels",
        probe: torch.Tensor | None = None,
    ) -> "LazyWeight":
        loc = posterior.mean if not hasattr(posterior, "loc") else posterior.loc
        base = torch.zeros((), dtype=loc.dtype, device=loc.device)
        obj = base.expand(posterior.event_shape).as_subclass(cls)
        obj.posterior, obj.site, obj._handler = posterior, name, handler
        obj.probe = probe
        obj._sample, obj._active_draw, obj._active_sample = None, None, None
        return obj

    @property
    def sparse(self) -> bool:
        """Whether the posterior is a ``SparseNormal`` (has active indices)."""
        return hasattr(self.posterior, "indices")

    @property
    def background(self) -> bool:
        """Whether the posterior has a background variance off its active set
        (:class:`~pyro_ssvi.background.BackgroundSparseNormal`)."""
        return isinstance(self.posterior, BackgroundSparseNormal)

    def values(self) -> torch.Tensor:
        """The active coordinates of the weight sample (sparse posteriors).

        ``SparseNormal.rsample_active``, drawn once and shared by
        :meth:`sample`.
        """
        if self._active_draw is None:
            with disable_torch_function_subclass():
                self._active_draw = self.posterior.rsample_active()
        return self._active_draw

    def active_sample(self) -> torch.Tensor:
        """The weight sample without its background (dense, full shape; the
        whole sample for a posterior without one), drawn once."""
        if self._active_sample is None:
            with disable_torch_function_subclass():
                if self.sparse:
                    value = self.posterior.scatter(self.values())
                else:
                    value = self.posterior.rsample()
                if self.probe is not None:
                    value = value + self.probe
            self._active_sample = value
        return self._active_sample

    def sample(self) -> torch.Tensor:
        """An exact weight sample (drawn on first use, then reused): the
        active draw plus, with a background, a dense draw of it."""
        if self._sample is None:
            value = self.active_sample()
            if self.background:
                with disable_torch_function_subclass():
                    value = value + self.posterior.rsample_background()
            self._sample = value
        return self._sample

    @classmethod
    def __torch_function__(
        cls, func: Any, types: Any, args: Any = (), kwargs: Any = None
    ) -> Any:
        kwargs = kwargs or {}
        if func is LINEAR or func in _CONVS:
            result = _layer_call(func, args, kwargs)
            if result is not None:
                return result
        with disable_torch_function_subclass():
            if func in _METADATA:
                return func(*args, **kwargs)
            args, kwargs = _materialise((args, kwargs))
            return func(*args, **kwargs)


def _materialise(obj: Any) -> Any:
    if isinstance(obj, LazyWeight):
        return obj.sample()
    if isinstance(obj, (list, tuple)):
        return type(obj)(_materialise(o) for o in obj)
    if isinstance(obj, dict):
        return {k: _materialise(v) for k, v in obj.items()}
    return obj


class _LinearProbe(torch.autograd.Function):
    """``out + x @ probe.T`` for a zero ``probe``: ``out`` itself in the forward
    pass, and the dense weight gradient ``g^T x`` for ``probe`` in the backward
    pass (whatever the layer's kernel)."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any, out: torch.Tensor, x: torch.Tensor, probe: torch.Tensor
    ) -> torch.Tensor:
        ctx.save_for_backward(x)
        return out.view_as(out)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[Any, ...]:  # type: ignore
        (x,) = ctx.saved_tensors
        g = grad.reshape(-1, grad.shape[-1])
        return grad, None, g.T @ x.reshape(-1, x.shape[-1])


def _with_probe(
    out: torch.Tensor, x: torch.Tensor, probe: torch.Tensor | None
) -> torch.Tensor:
    return out if probe is None else _LinearProbe.apply(out, x, probe)


def _probed_mean(weight: LazyWeight) -> torch.Tensor:
    mean = weight.posterior.mean
    return mean if weight.probe is None else mean + weight.probe


def _layer_call(func: Any, args: Any, kwargs: Any) -> torch.Tensor | None:
    """``func(x, weight, bias, ...)`` for a lazy weight, or None to fall back."""
    x, weight = args[0], args[1] if len(args) > 1 else kwargs.get("weight")
    bias = args[2] if len(args) > 2 else kwargs.get("bias")
    if not isinstance(weight, LazyWeight) or isinstance(x, LazyWeight):
        return None
    if not weight._handler.lrt and func is not LINEAR and not weight.background:
        return None  # weight sampling of a convolution: the exact dense sample
    if isinstance(bias, LazyWeight):
        bias = bias.sample()
    extra = dict(zip(_CONV_ARGS, args[3:]))
    extra.update({k: v for k, v in kwargs.items() if k in _CONV_ARGS})
    with disable_torch_function_subclass():
        if not weight._handler.lrt:
            if func is LINEAR:
                out = weight._handler.sampled_linear(weight, x)
                return out if bias is None else out + bias
            out = func(x, weight.active_sample(), bias, **extra)
            var = conv_background_variance(x, weight.posterior, extra)
            return out + noise_std(var) * torch.randn_like(out)
        if func is LINEAR:
            mean, var = weight._handler.linear_moments(weight, x)
        else:
            mean, var = weight._handler.conv_moments(weight, x, extra)
        out = sample_moments(mean, var)
        if bias is None:
            return out
        if func is not LINEAR:  # (C_out,) over (N, C_out, *spatial)
            bias = bias.reshape(-1, *([1] * _CONVS[func]))
        return out + bias


#: ``sparse="auto"`` times the sparse kernels only for weights of at least
#: this many elements; smaller ones take the dense kernels, where timing
#: differences are within a shared machine's noise.
MIN_TIMED_NUMEL = 1 << 11


class LayerKernels:
    """The layer maths of lazy weights, and the choice of kernels.

    The base of :class:`~pyro_ssvi.poutine.LazyWeightMessenger`: the handler
    that hands out :class:`LazyWeight` placeholders also computes what a
    layer makes of them.

    Attributes:
        lrt: Local reparameterisation (else exact weight sampling).
        sparse: ``True``, ``False`` or ``"auto"`` (see
            :func:`~pyro_ssvi.poutine.local_reparameterization`).
        decisions: ``{site: "sparse" | "dense"}``, the path each linear
            site took last.
    """

    lrt = True

    def __init__(self, sparse: bool | str = "auto", margin: float = 0.8) -> None:
        if sparse not in (True, False, "auto"):
            raise ValueError(
                f"{type(self).__name__}: sparse must be True, False or 'auto', "
                f"got {sparse!r}"
            )
        self.sparse = sparse
        self.margin = margin
        self.decisions: dict[str, str] = {}
        self._timed: dict[tuple[Any, ...], bool] = {}
        # id(indices) -> (weakref to indices, indices._version, structure)
        self._structures: dict[int, tuple[Any, int, SparseStructure]] = {}

    def state_dict(self) -> dict[str, Any]:
        """The timed path choices, so that a resumed run makes the same ones."""
        return {
            "timed": [
                [[list(k[0]), k[1], k[2], str(k[3]), str(k[4])], v]
                for k, v in self._timed.items()
            ]
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` output."""
        self._timed = {
            (tuple(shape), k, rows, torch.device(device), getattr(torch, dtype[6:])): v
            for (shape, k, rows, device, dtype), v in state["timed"]
        }

    # ------------------------------------------------------------ moments
    def linear_moments(
        self, weight: LazyWeight, x: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and variance of ``x @ W.T``, on the sparse or the dense path
        (plus the background's variance, :mod:`pyro_ssvi.background`)."""
        post = weight.posterior
        if self._use_sparse(weight, x):
            structure = self.structure(post)
            mean = _with_probe(sparse_linear(x, post.loc, structure), x, weight.probe)
            var = sparse_linear(x * x, post.scale**2, structure)
            self.decisions[weight.site] = "sparse"
            if weight.background:
                var = var + linear_background_variance(x, post, _product(structure))
            return mean, var
        self.decisions[weight.site] = "dense"
        if weight.background:
            mean, var = linear_moments(
                x, _probed_mean(weight), post.scatter(post.scale**2)
            )
            return mean, var + linear_background_variance(x, post)
        return linear_moments(x, _probed_mean(weight), post.variance)

    def sampled_linear(self, weight: LazyWeight, x: torch.Tensor) -> torch.Tensor:
        """``x @ W.T`` for the weight sample, on the sparse or the dense path;
        a background adds :math:`(\\sqrt{v + J} - \\sqrt{J})\\,\\varepsilon`
        (:func:`~pyro_ssvi.background.noise_std`), never a dense draw."""
        product = None
        if self._use_sparse(weight, x):
            structure = self.structure(weight.posterior)
            out = sparse_linear(x, weight.values(), structure)
            self.decisions[weight.site] = "sparse"
            out = _with_probe(out, x, weight.probe)
            product = _product(structure)
        else:
            self.decisions[weight.site] = "dense"
            out = LINEAR(x, weight.active_sample())
        if weight.background:  # the active pattern's share: on the layer's path
            var = linear_background_variance(x, weight.posterior, product)
            out = out + noise_std(var) * torch.randn_like(out)
        return out

    def conv_moments(
        self, weight: LazyWeight, x: torch.Tensor, conv_kwargs: dict[str, Any]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and variance of a convolution (dense kernels; plus the
        background's box-sum variance)."""
        post = weight.posterior
        if weight.background:
            variance = post.scatter(post.scale**2)
            mean, var = conv_moments(x, _probed_mean(weight), variance, **conv_kwargs)
            return mean, var + conv_background_variance(x, post, conv_kwargs)
        return conv_moments(x, _probed_mean(weight), post.variance, **conv_kwargs)

    # --------------------------------------------------------- sparse path
    def structure(self, post: Any) -> SparseStructure:
        """The CSR structure of a sparse posterior, rebuilt when its set moves."""
        indices, version = post.indices, tensor_version(post.indices)
        cached = self._structures.get(id(indices))
        if cached is None or cached[0]() is not indices or cached[1] != version:
            structure = SparseStructure(indices, post.event_shape)
            cached = (weakref.ref(indices), version, structure)
            self._structures = {  # drop the structures of replaced active sets
                key: value
                for key, value in self._structures.items()
                if value[0]() is not None
            }
            self._structures[id(indices)] = cached
        return cached[2]

    def _use_sparse(self, weight: LazyWeight, x: torch.Tensor) -> bool:
        post = weight.posterior
        if self.sparse is False or not hasattr(post, "indices"):
            return False
        if self.sparse is True:
            return True
        if post.event_shape.numel() < MIN_TIMED_NUMEL:
            return False  # too small for sparse kernels to pay: never timed
        shape, rows = tuple(post.event_shape), x.shape[:-1].numel()
        key = (shape, post.indices.numel(), rows, x.device, x.dtype)
        if key not in self._timed:
            dense, sparse = _time_paths(self, post, x, self.lrt)
            self._timed[key] = sparse < self.margin * dense
        return self._timed[key]


def _product(structure: SparseStructure) -> Callable[..., torch.Tensor]:
    """``(x2, values) -> x2 @ W.T`` on the active pattern, by the sparse kernel."""
    return lambda x2, values: sparse_linear(x2, values, structure)


def _time_paths(
    handler: LayerKernels, post: Any, x: torch.Tensor, lrt: bool
) -> tuple[float, float]:
    """Seconds for a forward and backward pass of the dense and sparse paths.

    With ``lrt`` both products (mean and variance) are timed, else the one
    product of a weight sample.
    """
    x = x.detach().requires_grad_(x.requires_grad)
    loc = post.loc.detach().requires_grad_()
    scale = post.scale.detach().requires_grad_()
    structure = handler.structure(post)

    def dense() -> None:
        out = LINEAR(x, post.scatter(loc))
        if lrt:
            out = out + LINEAR(x * x, post.scatter(scale**2))
        out.sum().backward()

    def sparse() -> None:
        out = sparse_linear(x, loc, structure)
        if lrt:
            out = out + sparse_linear(x * x, scale**2, structure)
        out.sum().backward()

    def seconds(fn: Callable[[], None]) -> float:
        if x.is_cuda:
            torch.cuda.synchronize(x.device)
        start = time.perf_counter()
        fn()
        if x.is_cuda:
            torch.cuda.synchronize(x.device)
        return time.perf_counter() - start

    with torch.enable_grad():
        dense_seconds = min(seconds(dense) for _ in range(3))  # then the sparse
        return dense_seconds, min(seconds(sparse) for _ in range(3))
