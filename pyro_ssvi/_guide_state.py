"""How :class:`~pyro_ssvi.AutoSparseNormal` describes its sites in tensors.

A guide's ``state_dict()`` holds tensors only (safetensors and
``{k: v.clone()}`` work on it). Besides the parameters, every site has a
buffer ``meta.<site>``, an int64 vector

``[FORMAT, sparse, event_dim, support_code, support_event_dim, ndim, *shape]``

where ``shape`` is the site's (constrained) value shape, ``event_dim`` the
event dimension of its unconstrained parameters, and the support is the
named Pyro constraint ``SUPPORTS[support_code]`` wrapped in
``support_event_dim`` ``independent`` layers (``-1``: a support that has no
name here; such a site needs one call with the model's arguments after
loading). ``SUPPORTS`` is append-only, so old files keep their meaning.

State dicts written by pyro_ssvi 0.1 (int64 buffers ``indices.<site>`` and a
dict ``_extra_state``) are converted on loading by :func:`migrate`.
"""

from __future__ import annotations

from typing import Any, MutableMapping, NamedTuple

import torch
from pyro.distributions import constraints

__all__ = ["FORMAT", "SUPPORTS", "Site", "decode", "encode", "migrate"]

FORMAT = 1

#: Supports by code (append only).
SUPPORTS = (
    "real",
    "positive",
    "nonnegative",
    "unit_interval",
    "simplex",
    "lower_cholesky",
    "corr_cholesky",
    "positive_definite",
    "corr_matrix",
    "ordered_vector",
    "positive_ordered_vector",
    "softplus_positive",
    "softplus_lower_cholesky",
    "sphere",
    "positive_semidefinite",
)


class Site(NamedTuple):
    """Static description of one latent site of the guide.

    Attributes:
        sparse: Whether the site has a sparse subspace.
        shape: Shape of the site's (constrained) value.
        event_dim: Event dimension of the unconstrained parameters (1 for a
            sparse site: its ``(k,)`` vector).
        support: The site's support, or None if it could not be recorded.
    """

    sparse: bool
    shape: torch.Size
    event_dim: int
    support: constraints.Constraint | None


def _support_code(support: constraints.Constraint | None) -> tuple[int, int]:
    ndims = 0
    while isinstance(support, constraints.independent):
        ndims += support.reinterpreted_batch_ndims
        support = support.base_constraint
    for code, name in enumerate(SUPPORTS):
        if getattr(constraints, name, None) is support:
            return code, ndims
    return -1, 0


def _support(code: int, ndims: int) -> constraints.Constraint | None:
    if not 0 <= code < len(SUPPORTS):
        return None
    support = getattr(constraints, SUPPORTS[code])
    return constraints.independent(support, ndims) if ndims else support


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
    return Site(bool(sparse), torch.Size(values[6:]), event_dim, _support(code, ndims))


def migrate(state_dict: MutableMapping[str, Any], prefix: str) -> None:
    """Convert a pyro_ssvi 0.1 state dict (in place) to the current format."""
    extra = state_dict.pop(prefix + "_extra_state", None)
    if extra is None:
        return
    if not isinstance(extra, dict) or "sites" not in extra:
        raise ValueError(
            "AutoSparseNormal: malformed _extra_state in an old state dict."
        )
    for name, meta in extra["sites"].items():
        support = meta.get("support")
        code, ndims = (
            (SUPPORTS.index(support[0]), support[1])
            if support and support[0] in SUPPORTS
            else (-1, 0)
        )
        shape = [int(s) for s in meta["shape"]]
        event_dim = 1 if meta["sparse"] else int(meta["event_dim"])
        header = [FORMAT, int(meta["sparse"]), event_dim, code, ndims]
        state_dict[f"{prefix}meta.{name}"] = torch.tensor(
            header + [len(shape)] + shape, dtype=torch.int64
        )
        if meta["sparse"]:
            key = f"{prefix}indices.{name}"
            if key in state_dict:
                state_dict[key + "_unconstrained"] = state_dict.pop(key)
