"""Effect handlers for Bayesian networks in Pyro.

:func:`local_reparameterization` computes linear and convolution layers of
weight sites from the posterior's moments (and from the active coordinates
only, with sparse kernels, where that is faster)::

    with local_reparameterization():
        loss = svi.step(x, y)

:func:`scale_kl` multiplies the scale of every latent (unobserved) sample site,
so that around both model and guide it weights the KL term of the ELBO and
leaves the likelihood alone (KL tempering and annealing in Pyro's own terms)::

    with scale_kl(0.1):
        loss = svi.step(x, y)          # -E[log p(y|theta)] + 0.1 KL(q || p)
"""

from __future__ import annotations

import time
import weakref
from typing import Any, Callable

import torch
from pyro.poutine.messenger import Messenger

from ._pyro_compat import disable_torch_function_subclass, tensor_version
from .background import (
    BackgroundSparseNormal,
    conv_background_variance,
    linear_background_variance,
    noise_std,
)
from .distributions import ShiftedSparseNormal
from .layers.lrt import (
    CONV_FUNCTIONS,
    LINEAR,
    conv_moments,
    linear_moments,
    sample_moments,
)
from .layers.sparse import SparseStructure, sparse_linear

__all__ = [
    "LatentScaleMessenger",
    "LazyWeight",
    "LazyWeightMessenger",
    "LocalReparameterizationMessenger",
    "SparseWeightSamplingMessenger",
    "background_sampling",
    "local_reparameterization",
    "scale_kl",
    "sparse_weight_sampling",
]


class LatentScaleMessenger(Messenger):
    """Multiply the scale of every unobserved sample site by ``weight``.

    Under :class:`~pyro.infer.TraceMeanField_ELBO` the analytic KL of a site
    is scaled by the guide site's scale, so this weights the KL exactly; under
    :class:`~pyro.infer.Trace_ELBO` it weights ``log p(theta) - log q(theta)``.

    Args:
        weight: The factor, a float >= 0 (mutable: ``messenger.weight = w``).
    """

    def __init__(self, weight: float) -> None:
        super().__init__()
        self.weight = weight

    def _pyro_sample(self, msg: dict[str, Any]) -> None:
        if not msg["is_observed"]:
            msg["scale"] = msg["scale"] * self.weight


def scale_kl(
    fn: Callable[..., Any] | None = None, weight: float = 1.0
) -> LatentScaleMessenger | Callable[..., Any]:
    """Weight the KL term: scale every latent sample site by ``weight``.

    Use as a context manager around a whole SVI step (it then applies to model
    and guide alike) or as a wrapper ``scale_kl(fn, weight)``.

    Args:
        fn: Optional callable to wrap.
        weight: The KL weight, >= 0.

    Returns:
        The messenger (context manager), or the wrapped callable.

    Raises:
        ValueError: If ``weight`` is negative or not finite.
    """
    if not (weight >= 0 and weight != float("inf")):
        raise ValueError(f"scale_kl: weight must be finite and >= 0, got {weight!r}")
    messenger = LatentScaleMessenger(weight)
    return messenger if fn is None else messenger(fn)


# ----------------------------------------------------------------------- LRT
_CONVS = {f: d for d, f in CONV_FUNCTIONS.items()}
_CONV_ARGS = ("stride", "padding", "dilation", "groups")
# Tensor metadata that the placeholder answers itself (no sample needed).
_METADATA = {
    torch.Tensor.shape.__get__,  # type: ignore[attr-defined]
    torch.Tensor.dtype.__get__,  # type: ignore[attr-defined]
    torch.Tensor.device.__get__,  # type: ignore[attr-defined]
    torch.Tensor.requires_grad.__get__,  # type: ignore[attr-defined]
    torch.Tensor.ndim.__get__,  # type: ignore[attr-defined]
    torch.Tensor.layout.__get__,  # type: ignore[attr-defined]
    torch.Tensor.is_cuda.__get__,  # type: ignore[attr-defined]
    torch.Tensor.dim,
    torch.Tensor.size,
    torch.Tensor.numel,
    torch.Tensor.nelement,
    torch.Tensor.__len__,
    torch.Tensor.is_floating_point,
    torch.Tensor.element_size,
}


class LazyWeight(torch.Tensor):
    """The value of a weight site under :func:`local_reparameterization`.

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
    _handler: "LazyWeightMessenger"
    _sample: torch.Tensor | None
    _active_draw: torch.Tensor | None
    _active_sample: torch.Tensor | None

    @staticmethod
    def __new__(
        cls,
        posterior: Any,
        name: str,
        handler: "LazyWeightMessenger",
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


class LazyWeightMessenger(Messenger):
    """Replace marked weight sites by :class:`LazyWeight` placeholders.

    The base of :class:`LocalReparameterizationMessenger` (``lrt=True``) and
    :class:`SparseWeightSamplingMessenger` (``lrt=False``).

    Attributes:
        lrt: Local reparameterisation (else exact weight sampling).
        sparse: ``True``, ``False`` or ``"auto"`` (see
            :func:`local_reparameterization`).
        decisions: ``{site: "sparse" | "dense"}``, the path each linear
            site took last.
    """

    lrt = True

    def __init__(
        self,
        sparse: bool | str = "auto",
        margin: float = 0.8,
        devices: tuple[str, ...] | None = None,
    ) -> None:
        super().__init__()
        if sparse not in (True, False, "auto"):
            raise ValueError(
                f"{type(self).__name__}: sparse must be True, False or 'auto', "
                f"got {sparse!r}"
            )
        self.sparse = sparse
        self.margin = margin
        self.devices = devices
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
            (
                tuple(k[0]),
                k[1],
                k[2],
                torch.device(k[3]),
                getattr(torch, str(k[4]).replace("torch.", "")),
            ): bool(v)
            for k, v in state["timed"]
        }

    def covers(self, device: torch.device) -> bool:
        """Whether the handler acts on weights on ``device`` (else: ordinary)."""
        return self.devices is None or device.type in self.devices

    def accepts(self, fn: Any) -> bool:
        """Whether a guide site's distribution gets a :class:`LazyWeight`."""
        loc = fn.mean if not hasattr(fn, "loc") else fn.loc
        return (
            fn.batch_shape == torch.Size()
            and len(fn.event_shape) >= 2
            and self.covers(loc.device)
        )

    def wrap(
        self, posterior: Any, name: str, probe: torch.Tensor | None = None
    ) -> LazyWeight:
        """The :class:`LazyWeight` of a weight site (drawn now when sampling).

        Under weight sampling the weight is drawn at once, in site order, so
        that the random numbers are those of ordinary sampling. ``probe``, a
        zero tensor of the weight's shape that requires grad, receives the
        gradient with respect to every coordinate of the weight (the growth
        score of :class:`~pyro_ssvi.SubspaceScheduler`).
        """
        lazy = LazyWeight(posterior, name, self, probe)
        if not self.lrt:
            lazy.values() if lazy.sparse else lazy.sample()
        return lazy

    def _pyro_sample(self, msg: dict[str, Any]) -> None:
        fn, probe = msg["fn"], None
        if isinstance(fn, ShiftedSparseNormal):  # the growth pass's probe
            fn, probe = fn.base, fn.shift
        if (
            msg["value"] is None
            and not msg["is_observed"]
            and msg["infer"].get("lrt")
            and self.accepts(fn)
        ):
            msg["value"] = self.wrap(fn, msg["name"], probe)

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
        indices = post.indices
        cached = self._structures.get(id(indices))
        if (
            cached is None
            or cached[0]() is not indices
            or cached[1] != tensor_version(indices)
        ):
            structure = SparseStructure(indices, post.event_shape)
            cached = (weakref.ref(indices), tensor_version(indices), structure)
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
        key = (
            tuple(post.event_shape),
            post.indices.numel(),
            x.shape[:-1].numel(),
            x.device,
            x.dtype,
        )
        if key not in self._timed:
            dense, sparse = _time_paths(self, post, x, self.lrt)
            self._timed[key] = sparse < self.margin * dense
        return self._timed[key]


def _product(structure: SparseStructure) -> Callable[..., torch.Tensor]:
    """``(x2, values) -> x2 @ W.T`` on the active pattern, by the sparse kernel."""
    return lambda x2, values: sparse_linear(x2, values, structure)


def _time_paths(
    handler: LazyWeightMessenger, post: Any, x: torch.Tensor, lrt: bool
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

    def best(fn: Callable[[], None]) -> float:
        times = []
        for _ in range(3):
            if x.is_cuda:
                torch.cuda.synchronize(x.device)
            start = time.perf_counter()
            fn()
            if x.is_cuda:
                torch.cuda.synchronize(x.device)
            times.append(time.perf_counter() - start)
        return min(times)

    with torch.enable_grad():
        return best(dense), best(sparse)


class LocalReparameterizationMessenger(LazyWeightMessenger):
    """See :func:`local_reparameterization`."""

    lrt = True


class SparseWeightSamplingMessenger(LazyWeightMessenger):
    """See :func:`sparse_weight_sampling`."""

    lrt = False


def sparse_weight_sampling(
    fn: Callable[..., Any] | None = None, *, sparse: bool | str = "auto"
) -> Any:
    """Exact weight sampling, with sparse kernels for sparse linear layers.

    The same model as ordinary sampling (one weight draw per forward pass,
    the same random numbers), computed differently: a sparse linear site
    draws only its ``k`` active values and multiplies by them with a sparse
    kernel (``sparse=True``), or scatters them into a dense weight
    (``False``), or whichever a one-time timing on the first batch finds
    faster by at least 20% (``"auto"``; weights under
    :data:`MIN_TIMED_NUMEL` elements are never timed and stay dense). Other
    layers and any other use of a weight get the dense weight sample.

    Args:
        fn: Optional callable to wrap.
        sparse: ``True``, ``False`` or ``"auto"``.

    Returns:
        The messenger, or the wrapped callable.
    """
    messenger = SparseWeightSamplingMessenger(sparse=sparse)
    return messenger if fn is None else messenger(fn)


_BACKGROUND = SparseWeightSamplingMessenger(sparse=False)


def background_sampling() -> SparseWeightSamplingMessenger:
    """The handler a weight site with a background variance is drawn under
    when no weight handler is active (weight sampling, dense kernels), so
    that its background is never sampled densely in ``F.linear`` or a
    convolution (see :mod:`pyro_ssvi.background`). One shared instance."""
    return _BACKGROUND


def local_reparameterization(
    fn: Callable[..., Any] | None = None, *, sparse: bool | str = "auto"
) -> Any:
    """Local reparameterisation for weight sites of Pyro guides.

    Inside this handler, guide sites marked ``infer={"lrt": True}`` (every
    weight site of :class:`~pyro_ssvi.AutoSparseNormal`: sparse sites and
    dense sites with at least two dimensions) take a :class:`LazyWeight`
    instead of a sampled weight. When the model passes it to ``F.linear`` or
    ``F.conv1d/2d/3d`` (as ``nn.Linear`` and ``nn.Conv*d`` do), the output is
    drawn from its exact Gaussian marginal,

    .. math:: y = x\\mu^\\top + b + \\sqrt{x^2 (\\sigma^2)^\\top + 10^{-8}}\\,
        \\varepsilon,

    with fresh noise for every output element (convolutions alike), instead
    of multiplying by one weight sample; the KL is unchanged (analytic, on the
    active set). Any other use of the weight gets an exact weight sample, so
    models that do something else with their weights stay correct. Use it
    around a whole SVI step, or pass ``local_reparameterization=True`` to
    :class:`~pyro_ssvi.SparseSVI`.

    Args:
        fn: Optional callable to wrap.
        sparse: For sparse linear sites, compute the mean and variance
            products (and their gradients) from the active coordinates with
            sparse kernels (``True``), with dense masked tensors (``False``),
            or whichever a one-time timing of both on the first batch finds
            faster by at least 20% (``"auto"``; weights under
            :data:`MIN_TIMED_NUMEL` elements stay dense). Convolutions always
            use dense kernels.

    Returns:
        The messenger, or the wrapped callable.

    Example::

        with local_reparameterization():
            loss = svi.step(x, y)
    """
    messenger = LocalReparameterizationMessenger(sparse=sparse)
    return messenger if fn is None else messenger(fn)
