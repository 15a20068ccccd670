"""How :class:`~pyro_ssvi.AutoSparseNormal` describes its sites in a state dict.

A guide's ``state_dict()`` holds tensors only. Every site has a buffer
``meta.<site>``, an int64 vector

``[FORMAT, sparse, event_dim, support_code, support_event_dim, ndim, *shape]``

where ``shape`` is the site's (constrained) value shape, ``event_dim`` the
event dimension of its unconstrained parameters, and the support is the
named Pyro constraint ``SUPPORTS[support_code]`` wrapped in
``support_event_dim`` ``independent`` layers (``-1``: unnamed; the site then
needs one call with the model's arguments). :class:`GuideLoading` loads a
state into a set-up guide (it must fit) or a never-called one (built from the
state, checked against the model at the first call or ``setup``).
"""

from __future__ import annotations

from typing import Any

import torch
from pyro import poutine
from pyro.distributions import constraints

from ._pyro_compat import adopt_prototype, prototype_hide_fn, unconstrained_name
from ._sites import Site
from ._storage import GuideStorage

FORMAT = 1

#: Supports by code (append only: old files keep their meaning).
SUPPORTS = tuple(
    "real positive nonnegative unit_interval simplex lower_cholesky corr_cholesky "
    "positive_definite corr_matrix ordered_vector positive_ordered_vector "
    "softplus_positive softplus_lower_cholesky sphere positive_semidefinite".split()
)


def _support_code(support: constraints.Constraint | None) -> tuple[int, int]:
    ndims = 0
    while isinstance(support, constraints.independent):
        ndims += support.reinterpreted_batch_ndims
        support = support.base_constraint
    for code, name in enumerate(SUPPORTS):
        if getattr(constraints, name, None) is support:
            return code, ndims
    return -1, 0


def encode(site: Site) -> torch.Tensor:
    """The ``meta.<site>`` buffer of a site."""
    code, ndims = _support_code(site.support)
    header = [FORMAT, int(site.sparse), site.event_dim, code, ndims, len(site.shape)]
    return torch.tensor(header + list(site.shape), dtype=torch.int64)


def decode(meta: torch.Tensor, name: str) -> Site:
    """Inverse of :func:`encode`; a clear ``ValueError`` for anything else."""
    values = [int(v) for v in meta.reshape(-1).tolist()]
    if len(values) < 6 or values[0] != FORMAT or len(values) != 6 + values[5]:
        raise ValueError(
            f"AutoSparseNormal: the state dict's entry meta.{name} is not a site "
            f"description of format {FORMAT}; was it saved by AutoSparseNormal?"
        )
    _, sparse, event_dim, code, ndims, _ = values[:6]
    support = None
    if 0 <= code < len(SUPPORTS):
        support = getattr(constraints, SUPPORTS[code])
        support = constraints.independent(support, ndims) if ndims else support
    return Site(bool(sparse), torch.Size(values[6:]), event_dim, support)


class GuideLoading(GuideStorage):
    """The state-dict half of :class:`~pyro_ssvi.AutoSparseNormal` (a mixin)."""

    _verified: bool
    _raw_model: tuple[Any]
    prototype_trace: Any

    def _load_from_state_dict(  # type: ignore[override]
        self, state_dict: dict[str, Any], prefix: str, *args: Any
    ) -> None:
        """Build a never-called guide from the state, or check the state fits."""
        start = len(prefix) + len("meta.")
        sites = {
            key[start:]: decode(value, key[start:])
            for key, value in state_dict.items()
            if key.startswith(prefix + "meta.")
        }
        if not sites and not self._sites:
            raise ValueError(
                "AutoSparseNormal.load_state_dict: the state dict has no meta.<site> "
                "entries; was it saved from an AutoSparseNormal (not an AutoNormal)?"
            )
        if self._sites:
            self._check_state(sites, state_dict, prefix)
        elif sites:
            self._build_from_state(sites, state_dict, prefix)
        for name in self.sparse_site_names():  # as this guide stores them
            key = f"{prefix}indices.{unconstrained_name(name)}"
            if key in state_dict:
                if name in self._index_buffers:
                    state_dict[f"{prefix}indices.{name}"] = state_dict.pop(key).long()
                else:
                    state_dict[key] = state_dict[key].to(torch.float64)
        super()._load_from_state_dict(state_dict, prefix, *args)

    def _state_k(self, state_dict: dict[str, Any], prefix: str, name: str) -> int:
        loc = state_dict.get(f"{prefix}locs.{unconstrained_name(name)}")
        idx = state_dict.get(f"{prefix}indices.{unconstrained_name(name)}")
        if loc is None or idx is None or idx.shape != loc.shape:
            raise ValueError(
                f"AutoSparseNormal.load_state_dict: sparse site {name!r} needs "
                "locs, scales and indices of the same length in the state dict."
            )
        return int(idx.numel())

    def _check_state(
        self, sites: dict[str, Site], state_dict: dict[str, Any], prefix: str
    ) -> None:
        mine = {k: (s.sparse, tuple(s.shape)) for k, s in self._sites.items()}
        theirs = {k: (s.sparse, tuple(s.shape)) for k, s in sites.items()}
        if mine != theirs:
            raise ValueError(
                "AutoSparseNormal.load_state_dict: the state dict's sites "
                f"{theirs} do not match this guide's {mine}."
            )
        for name in self.sparse_site_names():
            k_saved = self._state_k(state_dict, prefix, name)
            k_here = self._stored("locs", name).numel()
            if k_saved != k_here:
                raise ValueError(
                    f"AutoSparseNormal.load_state_dict: site {name!r} has {k_here} "
                    f"active coordinates here but {k_saved} in the state dict "
                    "(different density?)."
                )

    def _build_from_state(
        self, sites: dict[str, Site], state_dict: dict[str, Any], prefix: str
    ) -> None:
        self._new_trees()
        for name, info in sites.items():
            try:
                loc = state_dict[f"{prefix}locs.{unconstrained_name(name)}"]
                scale = state_dict[f"{prefix}scales.{unconstrained_name(name)}"]
            except KeyError as e:
                raise ValueError(
                    f"AutoSparseNormal.load_state_dict: missing entry {e.args[0]!r}."
                ) from None
            idx = None
            if info.sparse:
                k = self._state_k(state_dict, prefix, name)
                idx = torch.arange(k, device=loc.device)
            zeros, ones = torch.zeros_like(loc), torch.ones_like(scale)
            self._new_params(name, info, zeros, ones, idx, encode(info))
        self._verified = False

    def _check_against_model(self, *args: Any, **kwargs: Any) -> None:
        """Trace the model (its own prior draws) to check loaded sites and learn
        plates and supports; sites beyond the loaded ones are left to the model."""
        model = poutine.block(self._raw_model[0], prototype_hide_fn(self))
        devices = [torch.cuda.current_device()] if torch.cuda.is_initialized() else []
        with torch.random.fork_rng(devices=devices):  # the model's prior draws
            trace = poutine.block(poutine.trace(model).get_trace)(*args, **kwargs)
        latent = dict(trace.iter_stochastic_nodes())
        for name, info in self._sites.items():
            if name not in latent:
                raise ValueError(
                    f"AutoSparseNormal: the loaded state has site {name!r}, but the "
                    f"model's latent sites are {sorted(latent)}: the state is from "
                    "another model."
                )
            site: Any = latent[name]
            if site["value"].shape != info.shape:
                raise ValueError(
                    f"AutoSparseNormal: site {name!r} has shape {tuple(info.shape)} "
                    f"in the loaded state but {tuple(site['value'].shape)} in the "
                    "model: the state is from another model."
                )
            self._sites[name] = info._replace(support=site["fn"].support)
        for name in set(latent) - set(self._sites):
            trace.remove_node(name)
        adopt_prototype(self, trace)
        self._verified = True

    def sparse_site_names(self) -> list[str]:
        """Names of the sparse sites, in model order."""
        self._require_params()
        return [n for n, s in self._sites.items() if s.sparse]
