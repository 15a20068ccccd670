"""The rules of :class:`~pyro_ssvi.AutoSparseNormal`'s sites, as pure functions:
which may be sparse, which are weights, and each one's :func:`posterior`."""

from __future__ import annotations

from typing import Any, Callable, Collection, NamedTuple

import pyro.distributions as dist
import torch
from pyro.distributions import constraints
from pyro.distributions.transforms import biject_to
from torch.distributions import Distribution

from .distributions import SparseNormal


class Site(NamedTuple):
    """Static description of one latent site of the guide: ``shape`` of its
    value, ``event_dim`` of its unconstrained parameters (1 if sparse), and
    ``support`` (None if not recorded)."""

    sparse: bool
    shape: torch.Size
    event_dim: int
    support: constraints.Constraint | None


def base_support(support: constraints.Constraint) -> constraints.Constraint:
    """The support without its ``independent`` wrappers."""
    while isinstance(support, constraints.independent):
        support = support.base_constraint
    return support


def _is_factorised(fn: Distribution) -> bool:
    base = fn
    while isinstance(base, torch.distributions.Independent):
        base = base.base_dist
    return base.event_shape == torch.Size() and not isinstance(base, dist.Delta)


def eligibility(site: dict[str, Any]) -> tuple[bool, str]:
    """Whether a site may be sparse (real support, a prior that factorises
    over elements, outside every plate), and if not, why not."""
    fn = site["fn"]
    if base_support(fn.support) is not constraints.real:
        return False, f"its support is {fn.support}, not the real line"
    if not _is_factorised(fn):
        return False, (
            f"its prior {type(fn).__name__} does not factorise over elements "
            "(sparse sites need e.g. Normal(...).expand(shape).to_event(n))"
        )
    if site["cond_indep_stack"]:
        return False, "it is inside a plate"
    return True, ""


def is_weight(site: dict[str, Any]) -> bool:
    """Real, at least two dimensions, outside every plate: a network weight."""
    return (
        site["value"].dim() >= 2
        and base_support(site["fn"].support) is constraints.real
        and not site["cond_indep_stack"]
    )


def is_sparse(
    name: str,
    site: dict[str, Any],
    rule: Collection[str] | Callable[[str, dict], bool] | None,
    dense_sites: Collection[str],
    min_sparse_numel: int,
) -> bool:
    """Whether a site gets a sparse subspace.

    ``rule`` None: eligible sites of at least two dimensions or more than
    ``min_sparse_numel`` elements; a collection: the named sites (each must
    be eligible); a predicate ``(name, site) -> bool``: asked about eligible
    sites only. ``dense_sites`` are never sparse.

    Raises:
        ValueError: If ``rule`` names a site that is not eligible.
    """
    if name in dense_sites:
        return False
    eligible, why = eligibility(site)
    if rule is None:
        value = site["value"]
        return eligible and (value.dim() >= 2 or value.numel() > min_sparse_numel)
    if not callable(rule):
        if name in rule and not eligible:
            raise ValueError(
                f"AutoSparseNormal: site {name!r} was requested as sparse but "
                f"{why}. Remove it from sparse_sites (it will get a dense "
                "mean-field Normal)."
            )
        return name in rule
    return eligible and bool(rule(name, site))


def lrt_weight(info: Site) -> bool:
    """Whether a site is a weight that local reparameterisation may take: a
    sparse site, or a real dense site of at least two dimensions."""
    return info.sparse or (
        len(info.shape) >= 2
        and info.event_dim == len(info.shape)
        and info.support is not None
        and base_support(info.support) is constraints.real
    )


def posterior(
    info: Site,
    loc: torch.Tensor,
    scale: torch.Tensor,
    indices: torch.Tensor | None,
) -> Distribution:
    """A site's variational distribution: a ``SparseNormal`` on the active set,
    or a mean-field Normal transformed to the support (checked at creation)."""
    if info.sparse:
        assert indices is not None
        return SparseNormal(loc, scale, indices, info.shape, validate_args=False)
    base = dist.Normal(loc, scale, validate_args=False).to_event(info.event_dim)
    if info.support is None:
        raise RuntimeError(
            "AutoSparseNormal: the support of a site is not recorded in the loaded "
            "state; call guide.setup(*model_args) once."
        )
    if base_support(info.support) is constraints.real:
        return base
    return dist.TransformedDistribution(base, biject_to(info.support).with_cache())


def check_site_choice(
    sparse_sites: Any, dense_sites: Any, min_sparse_numel: Any
) -> None:
    """:class:`~pyro_ssvi.AutoSparseNormal`'s arguments that choose its sparse
    sites, checked once at construction.

    Raises:
        TypeError, ValueError: Naming the argument and what it takes.
    """
    if not isinstance(min_sparse_numel, int) or min_sparse_numel < 1:
        raise ValueError(
            "AutoSparseNormal: min_sparse_numel must be a positive int, "
            f"got {min_sparse_numel!r}."
        )
    if isinstance(dense_sites, str) or not isinstance(dense_sites, Collection):
        raise TypeError(
            "AutoSparseNormal: dense_sites must be a collection of site names, "
            f"got {dense_sites!r}."
        )
    if isinstance(sparse_sites, str):
        raise TypeError(
            "AutoSparseNormal: sparse_sites must be a collection of site names "
            f"or a predicate, not a string; write sparse_sites=[{sparse_sites!r}]."
        )
    if not (sparse_sites is None or callable(sparse_sites)):
        if not isinstance(sparse_sites, Collection):
            raise TypeError(
                "AutoSparseNormal: sparse_sites must be None, a collection of site "
                f"names or a predicate (name, site) -> bool, got {sparse_sites!r}."
            )
