"""Effect handlers for Bayesian networks in Pyro.

:func:`scale_kl` multiplies the scale of every latent (unobserved) sample site,
so that around both model and guide it weights the KL term of the ELBO and
leaves the likelihood alone (KL tempering and annealing in Pyro's own terms)::

    with scale_kl(0.1):
        loss = svi.step(x, y)          # -E[log p(y|theta)] + 0.1 KL(q || p)
"""

from __future__ import annotations

from typing import Any, Callable

from pyro.poutine.messenger import Messenger

__all__ = ["LatentScaleMessenger", "scale_kl"]


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
