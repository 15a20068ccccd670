"""A site's KL term in the direct step (:mod:`pyro_ssvi._step`): which of the
functions of :mod:`pyro_ssvi.kl` computes it, from the site's prior and draw."""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
from torch.distributions import kl_divergence

from ._pyro_compat import tensor_version
from .background import BackgroundSparseNormal, background_kl
from .distributions import normal_log_prob
from .kl import constant_prior_kl, monte_carlo_kl, scalar_normal_prior, sparse_normal_kl
from .layers.lazy import LazyWeight


class PriorPlan(NamedTuple):
    """How a site's KL term is computed, for one prior object."""

    prior: Any
    versions: tuple[int, int]  # of its Normal's loc and scale (in-place edits)
    normal: tuple[torch.Tensor, torch.Tensor] | None  # a factorised Normal's
    scalars: tuple[Any, Any] | None  # (m, s) of one Normal over the site


class Draw(NamedTuple):
    """One site's draw in a direct step."""

    q: Any  # the site's posterior
    value: Any  # what the model sees: a tensor or a LazyWeight
    active: Any  # a sparse site's active values (None: dense, or not drawn yet)


def prior_plan(prior: Any, shape: torch.Size) -> PriorPlan:
    """How the KL term of a site of ``shape`` under ``prior`` is computed."""
    normal = _normal_prior(prior, shape)
    scalars = None if normal is None else scalar_normal_prior(*normal, shape)
    return PriorPlan(prior, versions(normal), normal, scalars)


def site_kl(kind: str, plan: PriorPlan, form: str, draw: Draw) -> torch.Tensor:
    """A site's KL term: analytic (``kind="analytic"``, falling back to the
    Monte Carlo term where no KL is registered, as Pyro does), or the Monte
    Carlo term :math:`\\log q(\\theta) - \\log p(\\theta)` of the draw
    (``"mc"``). ``form`` is the binding's posterior form."""
    q = draw.q
    if isinstance(q, BackgroundSparseNormal):
        if kind == "analytic" and plan.normal is not None:
            try:
                return background_kl(q, *plan.normal)
            except NotImplementedError:
                pass  # as TraceMeanField_ELBO: the Monte Carlo term
        dense = _dense(draw)
        return q.log_prob(dense).sum() - plan.prior.log_prob(dense).sum()
    shape, moments = q.event_shape, _moments(q, form)
    if kind == "analytic":
        indices = q.indices if form == "sparse" else None
        if moments is not None and plan.scalars is not None:
            return constant_prior_kl(*moments, *plan.scalars, shape.numel())
        if moments is not None and plan.normal is not None:
            return sparse_normal_kl(*moments, indices, shape, *plan.normal)
        try:
            return kl_divergence(q, plan.prior).sum()
        except NotImplementedError:
            pass  # as TraceMeanField_ELBO: the Monte Carlo term
    if moments is None:
        return q.log_prob(_dense(draw)).sum() - plan.prior.log_prob(_dense(draw)).sum()
    active: Any = _active(draw) if form == "sparse" else _dense(draw).reshape(-1)
    if plan.scalars is not None:
        return monte_carlo_kl(active, *moments, *plan.scalars, shape.numel())
    log_q = normal_log_prob(active, *moments)
    return log_q - plan.prior.log_prob(_dense(draw)).sum()


def _active(draw: Draw) -> torch.Tensor | None:
    """A sparse site's drawn active values (None for a dense site)."""
    value = draw.value
    if isinstance(value, LazyWeight):
        return value.values() if value.sparse else None
    return draw.active


def _dense(draw: Draw) -> torch.Tensor:
    """The drawn weight, full shape."""
    value = draw.value
    return value.sample() if isinstance(value, LazyWeight) else value


def _moments(q: Any, form: str) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The posterior's ``(loc, scale)``: active (sparse) or flattened (dense,
    real); None for other sites."""
    if form == "sparse":
        return q.loc, q.scale
    if form == "normal":
        base = getattr(q, "base_dist", q)
        return base.loc.reshape(-1), base.scale.reshape(-1)
    return None


def versions(normal: tuple[torch.Tensor, torch.Tensor] | None) -> tuple[int, int]:
    """The in-place versions of a Normal prior's ``(loc, scale)``: a plan is
    made again when they change."""
    if normal is None:
        return -1, -1
    return tensor_version(normal[0]), tensor_version(normal[1])


def _normal_prior(
    prior: Any, shape: torch.Size
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """``(loc, scale)`` of a factorised Normal prior of the site's shape."""
    base = prior
    while isinstance(base, torch.distributions.Independent):
        base = base.base_dist
    if not isinstance(base, torch.distributions.Normal):
        return None
    if tuple(prior.batch_shape) + tuple(prior.event_shape) != tuple(shape):
        return None
    if prior.event_shape not in (shape, torch.Size()):
        return None  # the registered KL's condition too
    return base.loc, base.scale
