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

from typing import Any, Callable

import torch
from pyro.poutine.messenger import Messenger

from .distributions import ShiftedSparseNormal
from .layers.lazy import MIN_TIMED_NUMEL, LayerKernels, LazyWeight

__all__ = [
    "LatentScaleMessenger",
    "LazyWeight",
    "LazyWeightMessenger",
    "LocalReparameterizationMessenger",
    "MIN_TIMED_NUMEL",
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


class LazyWeightMessenger(LayerKernels, Messenger):
    """Replace marked weight sites by :class:`~pyro_ssvi.layers.lazy.LazyWeight`
    placeholders, and compute their layers (its base,
    :class:`~pyro_ssvi.layers.lazy.LayerKernels`).

    The base of :class:`LocalReparameterizationMessenger` (``lrt=True``) and
    :class:`SparseWeightSamplingMessenger` (``lrt=False``).

    Attributes:
        devices: The device types it acts on (None: all).
    """

    def __init__(
        self,
        sparse: bool | str = "auto",
        margin: float = 0.8,
        devices: tuple[str, ...] | None = None,
    ) -> None:
        Messenger.__init__(self)
        LayerKernels.__init__(self, sparse, margin)
        self.devices = devices

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
