"""The background-variance half of :class:`~pyro_ssvi.AutoSparseNormal` (a mixin).

With ``background="column"`` or ``"layer"`` every sparse site gets a tree
entry ``backgrounds.<site>``: a ``PyroParam`` of shape ``(in,)`` or ``(1,)``
under the guide's scale constraint (softplus), the scales :math:`s` of
:class:`~pyro_ssvi.background.BackgroundSparseNormal`. It is a variational
parameter like ``scales.<site>`` (in ``guide.parameters()`` and the state
dict); reselection never touches it, because the background is defined as
the complement of the active set: a coordinate that leaves the set joins the
background of its column, and one that enters leaves it (its start is the
scheduler's ``regrow_scale`` rule, as without a background).
"""

from __future__ import annotations

from typing import Any, Collection

import pyro
import torch
from pyro.nn import PyroModule, PyroParam
from torch.distributions import Distribution

from ._guide_state import GuideLoading
from ._pyro_compat import (
    deep_setattr,
    is_module_local_param_enabled,
    param_store_name,
    unconstrained_name,
)
from .background import BACKGROUNDS, BackgroundSparseNormal, background_shape

__all__ = ["BackgroundParams", "check_background", "drop_background_store_entries"]


def check_background(background: Any, init: Any, sites: Any = None) -> None:
    """The guide's ``background``, ``background_init`` and
    ``background_sites`` arguments."""
    if sites is not None and (
        isinstance(sites, str) or not isinstance(sites, Collection)
    ):
        raise TypeError(
            "AutoSparseNormal: background_sites must be a collection of site "
            f"names, got {sites!r}; e.g. background_sites=['net.1.weight']."
        )
    if background is not None and background not in BACKGROUNDS:
        raise ValueError(
            f"AutoSparseNormal: background must be None or one of {BACKGROUNDS}, "
            f"got {background!r}."
        )
    if isinstance(init, bool) or not isinstance(init, (int, float)) or not init > 0:
        raise ValueError(
            f"AutoSparseNormal: background_init must be a float > 0, got {init!r}."
        )


class BackgroundParams(GuideLoading):
    """Creates, reads and loads the ``backgrounds.<site>`` parameters."""

    background: str | None
    background_init: float
    background_sites: frozenset[str] | None

    def _init_background(self, background: Any, init: Any, sites: Any) -> None:
        """Check and keep the guide's background arguments."""
        check_background(background, init, sites)
        self.background_sites = None if sites is None else frozenset(sites)
        self.background = background
        self.background_init = float(init)

    def _new_trees(self) -> None:
        super()._new_trees()
        self.backgrounds = PyroModule()

    def _new_background(self, name: str, shape: torch.Size, like: torch.Tensor) -> None:
        """A sparse site's background scales, all ``background_init``."""
        assert self.background is not None
        start = float(self.background_init)  # "rowcol": r c starts there
        init = torch.full(
            background_shape(self.background, shape),
            start**0.5 if self.background == "rowcol" else start,
            dtype=like.dtype,
            device=like.device,
        )
        param = PyroParam(init, self.scale_constraint, 1)
        deep_setattr(self.backgrounds, name, param)

    def _wants_background(self, name: str) -> bool:
        return self.background is not None and (
            self.background_sites is None or name in self.background_sites
        )

    def _has_background(self, name: str) -> bool:
        return self._sites[name].sparse and self._wants_background(name)

    def _background_leaf(self, name: str) -> tuple[Any, str]:
        return self._leaf("backgrounds", name)

    def background_scales(self) -> dict[str, torch.Tensor]:
        """``{sparse site: its background scales s}`` (detached copies)."""
        out = {}
        for name in filter(self._has_background, self.sparse_site_names()):
            module, leaf = self._background_leaf(name)
            raw = getattr(module, unconstrained_name(leaf))
            out[name] = self._scale_transform(raw).detach().clone()
        return out

    def _full_posterior(self, name: str) -> Distribution:
        """A site's posterior with its background, if it has one (parameters
        read as Pyro reads them: ``pyro.param`` statements)."""
        post: Any = self._posterior(name)  # type: ignore[attr-defined]
        if not self._has_background(name):
            return post
        background = getattr(*self._background_leaf(name))
        return BackgroundSparseNormal(
            post.loc, post.scale, post.indices, post.event_shape, background, False
        )

    def _full_posteriors(self, detach: bool = False) -> Any:
        """The storage's ``_posteriors`` (for the direct step) with the
        backgrounds: a background site's leaves end with its raw scales."""
        out: Any = self._posteriors(detach)  # type: ignore[attr-defined]
        if self.background is None:
            return out
        result: list[tuple[Any, tuple[torch.Tensor, ...]]] = []
        for name, (post, leaves) in zip(self._sites, out):
            if not self._has_background(name):
                result.append((post, leaves))
                continue
            module, leaf = self._background_leaf(name)
            raw = getattr(module, unconstrained_name(leaf))
            s = self._scale_transform(raw)
            if detach:
                s = s.detach()
            q = BackgroundSparseNormal(
                post.loc, post.scale, post.indices, post.event_shape, s, False
            )
            result.append((q, (*leaves, raw)))
        return result

    def _build_from_state(
        self, sites: Any, state_dict: dict[str, Any], prefix: str
    ) -> None:
        super()._build_from_state(sites, state_dict, prefix)
        for name in filter(self._has_background, self.sparse_site_names()):
            key = f"{prefix}backgrounds.{unconstrained_name(name)}"
            like = self._stored("locs", name)
            self._new_background(name, self._sites[name].shape, like)
            kind = str(self.background)
            if key in state_dict and state_dict[key].shape != torch.Size(
                background_shape(kind, self._sites[name].shape)
            ):
                raise ValueError(
                    f"AutoSparseNormal.load_state_dict: site {name!r} has background "
                    f"scales of shape {tuple(state_dict[key].shape)} in the state "
                    f"dict; this guide's background={self.background!r} expects "
                    "another shape (was it saved with another background?)."
                )


def drop_background_store_entries(module: Any, incompatible: Any) -> None:
    """Load/move hook: the module's background tensors win over Pyro's
    param store (as :func:`pyro_ssvi._storage.after_load` does for the rest)."""
    if getattr(module, "background", None) is None or is_module_local_param_enabled():
        return
    store = pyro.get_param_store()
    names = module.sparse_site_names() if module._sites else []
    for name in filter(module._has_background, names):
        fullname = param_store_name(module, f"backgrounds.{name}")
        if fullname in store:
            del store[fullname]
