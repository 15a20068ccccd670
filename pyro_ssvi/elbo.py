"""A mean-field ELBO that computes only what it uses, directly when it can.

Pyro's ``TraceMeanField_ELBO`` scores every site before it knows which the loss
needs; with analytic KLs the priors' ``log_prob`` costs about a forward pass
and is never used. Where it applies, the direct step of :mod:`pyro_ssvi._step`
skips tracing, also when the ELBO is called by itself (``ELBOModule``).
"""

from __future__ import annotations

import weakref
from typing import Any

import torch
from pyro import poutine
from pyro.distributions.kl import kl_divergence
from pyro.distributions.util import scale_and_mask
from pyro.infer import TraceMeanField_ELBO
from pyro.infer.util import is_validation_enabled, torch_item
from pyro.util import check_model_guide_match, check_site_shape

from ._pyro_compat import check_mean_field_requirement, prune_subsample_sites
from ._step import DirectStep, Unsupported, direct_step, log_choice

__all__ = ["TraceSparseMeanField_ELBO"]


def _score_parts(site: dict[str, Any]) -> Any:
    """Score parts of one guide site, computed on demand and memoised."""
    if "score_parts" not in site:
        parts = site["fn"].score_parts(site["value"], *site["args"], **site["kwargs"])
        site["score_parts"] = parts.scale_and_mask(site["scale"], site["mask"])
    return site["score_parts"]


def _check_shape(site: Any, max_plate_nesting: float) -> None:
    """Pyro's plate/shape check, from the batch shape when ``log_prob`` is unset."""
    if "log_prob" not in site:  # the shape log_prob would have, at no cost
        shape = site["fn"].batch_shape
        site = {**site, "log_prob": torch.zeros(()).expand(shape)}
    check_site_shape(site, max_plate_nesting)  # type: ignore[arg-type]


class TraceSparseMeanField_ELBO(TraceMeanField_ELBO):
    """:class:`~pyro.infer.TraceMeanField_ELBO` without the unused log-densities.

    The same loss: per latent site the analytic ``KL(q || p)`` when
    registered, else ``log p(z) - log q(z)`` (scored when reached); plus the
    observed sites' log-likelihood. Pyro's validation checks run as in Pyro.
    It takes every argument of ``TraceMeanField_ELBO``, and ``fast=False``
    always traces. The default loss of :class:`~pyro_ssvi.SparseSVI`.
    """

    direct_kind = "analytic"

    def __init__(self, *args: Any, fast: bool = True, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fast = fast
        self._paths: Any = weakref.WeakKeyDictionary()  # guide -> (model ref, path)

    def fast_path(
        self, model: Any, guide: Any, *args: Any, **kwargs: Any
    ) -> DirectStep | None:
        """The direct step for ``(model, guide)`` (cached), or None (traced)."""
        return self._path(model, guide)[0]

    def why_traced(
        self, model: Any, guide: Any, *args: Any, **kwargs: Any
    ) -> str | None:
        """Why ``(model, guide)`` takes the traced path (None: the direct one)."""
        return self._path(model, guide)[1]

    def _path(self, model: Any, guide: Any) -> tuple[DirectStep | None, str | None]:
        try:
            entry = self._paths.get(guide)
        except TypeError:
            return None, "the guide is not weak-referenceable"
        trace = getattr(guide, "prototype_trace", None)
        if entry is None or entry[0]() is not model or entry[1] is not trace:
            try:
                path: tuple[DirectStep | None, str | None] = (
                    direct_step(model, guide, self),
                    None,
                )
            except Unsupported as e:
                path = (None, str(e))
            if trace is None:
                return path  # set up by the traced call; choose again then
            log_choice(type(self).__name__, self, path[1])
            entry = (weakref.ref(model), trace, path)
            self._paths[guide] = entry
        return entry[2]

    def fast_loss(
        self, model: Any, guide: Any, *args: Any, **kwargs: Any
    ) -> tuple[torch.Tensor, list[torch.Tensor]] | None:
        """``(loss, trained tensors)`` by the direct step, or None to trace."""
        step = self._path(model, guide)[0]
        if step is None:
            return None
        total, trained = None, list[torch.Tensor]()
        for _ in range(self.num_particles):
            result = step(args, kwargs)
            if result is None:  # a handler the direct step does not cover
                return None
            loss, trained = result
            total = loss if total is None else total + loss
        assert total is not None
        return total / self.num_particles, trained

    def differentiable_loss(
        self, model: Any, guide: Any, *args: Any, **kwargs: Any
    ) -> torch.Tensor:
        result = self.fast_loss(model, guide, *args, **kwargs)
        if result is not None:
            return result[0]
        return super().differentiable_loss(model, guide, *args, **kwargs)

    def loss(self, model: Any, guide: Any, *args: Any, **kwargs: Any) -> float:
        with torch.no_grad():
            result = self.fast_loss(model, guide, *args, **kwargs)
        if result is not None:
            return torch_item(result[0])
        return super().loss(model, guide, *args, **kwargs)

    def loss_and_grads(
        self, model: Any, guide: Any, *args: Any, **kwargs: Any
    ) -> float:
        result = self.fast_loss(model, guide, *args, **kwargs)
        if result is None:
            return super().loss_and_grads(model, guide, *args, **kwargs)
        result[0].backward()
        return torch_item(result[0])

    def _get_trace(self, model: Any, guide: Any, args: Any, kwargs: Any) -> Any:
        guide_trace = poutine.trace(guide, graph_type="flat").get_trace(*args, **kwargs)
        model_trace = poutine.trace(
            poutine.replay(model, trace=guide_trace), graph_type="flat"
        ).get_trace(*args, **kwargs)
        validate = is_validation_enabled()
        if validate:
            check_model_guide_match(model_trace, guide_trace, self.max_plate_nesting)
        guide_trace = prune_subsample_sites(guide_trace)
        model_trace = prune_subsample_sites(model_trace)
        model_trace.compute_log_prob(site_filter=lambda _, site: site["is_observed"])
        if validate:
            for trace in (model_trace, guide_trace):
                for site in trace.nodes.values():
                    if site["type"] == "sample":
                        _check_shape(site, self.max_plate_nesting)
            check_mean_field_requirement(model_trace, guide_trace)
        return model_trace, guide_trace

    def _differentiable_loss_particle(
        self, model_trace: Any, guide_trace: Any
    ) -> tuple[Any, Any]:
        elbo_particle: Any = 0
        for name, model_site in model_trace.nodes.items():
            if model_site["type"] != "sample":
                continue
            if model_site["is_observed"]:
                elbo_particle = elbo_particle + model_site["log_prob_sum"]
                continue
            guide_site = guide_trace.nodes[name]
            if is_validation_enabled() and not guide_site["fn"].has_rsample:
                raise NotImplementedError(
                    f"All distributions in the guide must be fully reparameterized; "
                    f"site {name!r} is not."
                )
            try:
                kl = kl_divergence(guide_site["fn"], model_site["fn"])
            except NotImplementedError:
                model_trace.compute_log_prob(site_filter=lambda n, _: n == name)
                entropy = _score_parts(guide_site).entropy_term
                elbo_particle = (
                    elbo_particle + model_site["log_prob_sum"] - entropy.sum()
                )
                continue
            kl = scale_and_mask(kl, scale=guide_site["scale"], mask=guide_site["mask"])
            if torch.is_tensor(kl):
                elbo_particle = elbo_particle - kl.sum()
            else:
                numel = torch.Size(guide_site["fn"].batch_shape).numel()
                elbo_particle = elbo_particle - kl * numel
        for name, guide_site in guide_trace.nodes.items():
            if guide_site["type"] == "sample" and name not in model_trace.nodes:
                elbo_particle = (
                    elbo_particle - _score_parts(guide_site).entropy_term.sum()
                )
        loss = -torch_item(elbo_particle)
        return loss, -elbo_particle
