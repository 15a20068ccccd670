"""The posterior's summaries, a part of :class:`~pyro_ssvi.AutoSparseNormal`:
the joint posterior of the unconstrained latent vector, medians and quantiles
(the ``AutoGuide`` methods of the same names)."""

from __future__ import annotations

from typing import Any, Callable

import pyro.distributions as dist
import torch
from pyro.distributions.transforms import biject_to

from ._pyro_compat import module_context
from .background import BackgroundSparseNormal
from .distributions import SparseNormal


class PosteriorSummaries:
    """The mixin of :class:`~pyro_ssvi.AutoSparseNormal` with its summaries
    (it reads the guide's storage, :mod:`pyro_ssvi._storage`)."""

    _sites: dict[str, Any]
    _verified: bool
    prototype_trace: Any
    # the guide's own methods (guides and _storage) that the summaries read
    setup: Callable[..., Any]
    _check_against_model: Callable[..., None]
    _require_params: Callable[[], None]
    _get_loc_and_scale: Callable[[str], tuple[torch.Tensor, torch.Tensor]]
    _indices: Callable[..., torch.Tensor]
    _posterior: Callable[..., SparseNormal]
    _full_posterior: Callable[[str], Any]

    def get_posterior(self, *args: Any, **kwargs: Any) -> SparseNormal:
        """The joint posterior of the whole unconstrained latent vector.

        As in Pyro's :class:`~pyro.infer.autoguide.AutoContinuous`: one
        distribution over the concatenation, in model order, of every site's
        unconstrained value flattened, here a ``SparseNormal`` whose active
        set is every sparse site's active coordinates plus all coordinates of
        dense sites. Sets the guide up from ``*args, **kwargs`` if needed.
        """
        self._require_setup(args, kwargs)
        locs, scales, indices, offset = [], [], [], 0
        with module_context(self):
            for name, info in self._sites.items():
                loc, scale = self._get_loc_and_scale(name)
                if info.sparse:
                    idx, numel = self._indices(name), info.shape.numel()
                else:
                    numel = loc.numel()
                    idx = torch.arange(numel, device=loc.device)
                locs.append(loc.reshape(-1))
                scales.append(scale.reshape(-1))
                indices.append(idx + offset)
                offset += numel
        if not locs:
            raise RuntimeError("AutoSparseNormal: the model has no latent site.")
        return SparseNormal(
            torch.cat(locs), torch.cat(scales), torch.cat(indices), (offset,)
        )

    def _require_setup(self, args: tuple, kwargs: dict) -> None:
        """Set up from the model's arguments if given, else insist it was done."""
        if self.prototype_trace is None and not self._sites:
            if not args and not kwargs:
                self._require_params()
            self.setup(*args, **kwargs)

    def _check_verified(self, args: tuple, kwargs: dict, what: str) -> None:
        if self._verified:
            return
        if not args and not kwargs:
            raise ValueError(
                f"AutoSparseNormal.{what}: this guide was loaded from a state dict "
                "and not yet checked against its model; call guide.setup(*args) "
                f"with the model's arguments first (or pass them to {what})."
            )
        self._check_against_model(*args, **kwargs)

    @torch.no_grad()
    def median(self, *args: Any, **kwargs: Any) -> dict[str, torch.Tensor]:
        """Posterior median of every site: dense tensors, zero off the active set."""
        self._require_params()
        self._check_verified(args, kwargs, "median")
        result = {}
        with module_context(self):
            for name, info in self._sites.items():
                loc, _ = self._get_loc_and_scale(name)
                if info.sparse:
                    result[name] = self._posterior(name).mean.detach()
                    continue
                med = biject_to(info.support)(loc)
                result[name] = (med.clone() if med is loc else med).detach()
        return result

    @torch.no_grad()
    def quantiles(
        self, quantiles: list[float] | torch.Tensor, *args: Any, **kwargs: Any
    ) -> dict[str, torch.Tensor]:
        """Posterior quantiles of every site, with a leading quantile dimension
        (inactive coordinates are zero for every quantile, a point mass, or
        their background's quantiles)."""
        self._require_params()
        self._check_verified(args, kwargs, "quantiles")
        result = {}
        with module_context(self):
            for name, info in self._sites.items():
                loc, scale = self._get_loc_and_scale(name)
                q = torch.as_tensor(quantiles, dtype=loc.dtype, device=loc.device)
                values = dist.Normal(loc, scale).icdf(
                    q.reshape((-1,) + (1,) * loc.dim())
                )
                if info.sparse:
                    post: Any = self._full_posterior(name)
                    result[name] = post.scatter(values)
                    if isinstance(post, BackgroundSparseNormal):
                        z = dist.Normal(0.0, 1.0).icdf(q)
                        std = post.background_variance().detach().sqrt()
                        result[name] = (
                            result[name] + z.reshape((-1,) + (1,) * std.dim()) * std
                        )
                else:
                    result[name] = biject_to(info.support)(values)
        return result
