r"""The direct step: Pyro's ELBOs for an ``AutoSparseNormal``, without tracing.

For the standard case, an :class:`~pyro_ssvi.AutoSparseNormal` over a
``PyroModule`` whose latent sites are ``PyroSample`` attributes outside
plates, one particle of the negative ELBO is

.. math::

    L = -\sum_{\text{observed } i} s_i \log p(y_i \mid \theta)
        + w \sum_{\text{latent sites}} T(q, p, \theta),

with :math:`s_i` each observation's scale (plates, subsampling), :math:`w` the
KL weight of :func:`~pyro_ssvi.poutine.scale_kl` and the KL term :math:`T` of
the ELBO in use:

* :class:`~pyro.infer.TraceMeanField_ELBO` and
  :class:`~pyro_ssvi.elbo.TraceSparseMeanField_ELBO` (``"analytic"``):
  ``kl_divergence(q, p)`` where one is registered (for a sparse site
  :func:`~pyro_ssvi.kl.sparse_normal_kl`), else the Monte Carlo
  term below, as Pyro falls back;
* :class:`~pyro.infer.Trace_ELBO` (``"mc"``): :math:`\log q(\theta) - \log
  p(\theta)` of the same draw, with :math:`\log p(0)` at a sparse site's
  inactive coordinates (:func:`~pyro_ssvi.kl.monte_carlo_kl`,
  ``O(k)`` for a constant Normal prior).

:class:`DirectStep` computes exactly that from the objects the traced path
uses: the guide's own posteriors (those its ``forward`` samples), the
model's own priors, and the same functions of them, drawing the same random
numbers in the same order. It places the draws on the model's modules for one
forward pass (an instance attribute shadows the ``PyroSample``), and records
only the observed sites (:func:`observed_log_prob`). Where that cannot be
exact, :func:`direct_step` says why and the caller traces.
"""

from __future__ import annotations

import logging
from typing import Any, NamedTuple

import pyro
import torch
from pyro.distributions.util import scale_and_mask
from pyro.infer import Trace_ELBO, TraceMeanField_ELBO
from pyro.poutine.messenger import Messenger
from pyro.poutine.util import site_is_subsample
from torch.distributions import constraints, kl_divergence

from ._pyro_compat import handler_stack, module_context, pyro_samples
from ._site_kl import Draw, PriorPlan, prior_plan, site_kl, versions
from ._sites import base_support
from .background import BackgroundSparseNormal
from .distributions import SparseNormal
from .guides import AutoSparseNormal
from .poutine import (
    LatentScaleMessenger,
    LazyWeightMessenger,
    background_sampling,
)

__all__ = [
    "DirectStep",
    "Unsupported",
    "direct_step",
    "elbo_kind",
    "observed_log_prob",
    "particles_loss",
]

logger = logging.getLogger("pyro_ssvi")

#: ELBO classes (exactly these, not subclasses) and the KL term they use.
KINDS: dict[type, str] = {Trace_ELBO: "mc", TraceMeanField_ELBO: "analytic"}


class Unsupported(Exception):
    """The model, guide, loss or context is outside what the direct step covers."""


def elbo_kind(loss: Any) -> str:
    """``"analytic"`` or ``"mc"`` for a loss the direct step computes exactly.

    Raises:
        Unsupported: For any other loss (JIT ELBOs, ``TraceGraph_ELBO``,
            subclasses, vectorised particles, callables).
    """
    kind = KINDS.get(type(loss)) or type(loss).__dict__.get("direct_kind")
    if kind is None:
        raise Unsupported(
            f"the loss is {type(loss).__name__}; the direct step computes "
            "Trace_ELBO, TraceMeanField_ELBO and TraceSparseMeanField_ELBO"
        )
    if loss.vectorize_particles:
        raise Unsupported("vectorize_particles=True")
    if getattr(loss, "fast", True) is False:
        raise Unsupported("fast=False")
    return kind


def observed_log_prob(msg: dict[str, Any]) -> torch.Tensor:
    r""":math:`s \sum \log p(y)` of an observed site, with its scale and mask."""
    fn = msg["fn"]
    log_p = fn.log_prob(msg["value"], *msg["args"], **msg["kwargs"])
    return scale_and_mask(log_p, msg["scale"], msg["mask"]).sum()


class Observer(Messenger):
    """Sums the observed sites' log-likelihood and records the params read.

    A latent site that no handler gave a value (the model samples it itself)
    raises :class:`Unsupported`.
    """

    def __init__(self) -> None:
        super().__init__()
        self.log_likelihood: list[torch.Tensor] = []
        self.params: list[torch.Tensor] = []

    def _pyro_sample(self, msg: Any) -> None:
        if msg["is_observed"] or msg["value"] is not None or site_is_subsample(msg):
            return
        raise Unsupported(f"the model samples latent site {msg['name']!r} itself")

    def _pyro_post_sample(self, msg: Any) -> None:
        if msg["is_observed"]:
            self.log_likelihood.append(observed_log_prob(msg))

    def _pyro_post_param(self, msg: Any) -> None:
        value = msg["value"]
        leaf = value.unconstrained() if hasattr(value, "unconstrained") else value
        if isinstance(leaf, torch.Tensor) and leaf.requires_grad:
            self.params.append(leaf)


class _Binding(NamedTuple):
    """Where a latent site lives in the model."""

    name: str
    module: torch.nn.Module
    attr: str
    prior: Any  # a distribution, or a callable of the module
    lrt: bool  # a weight site that a LazyWeightMessenger may take
    form: str  # the posterior: "sparse", "normal" (dense, real) or "other"


def handler_context() -> tuple[float, LazyWeightMessenger | None] | None:
    """The KL weight and the weight handler around a step, or None when a
    handler other than pyro_ssvi's is active (then the step is traced)."""
    weight, lazy = 1.0, None
    for handler in handler_stack():
        if isinstance(handler, LatentScaleMessenger):
            weight *= handler.weight
        elif isinstance(handler, LazyWeightMessenger):
            lazy = handler  # the innermost one acts first
        else:
            return None
    return weight, lazy


class DirectStep:
    """The negative ELBO of a model and an ``AutoSparseNormal``, computed directly.

    Args:
        model: A ``PyroModule``.
        guide: An ``AutoSparseNormal`` that has been set up.
        kind: ``"analytic"`` or ``"mc"`` (see :func:`elbo_kind`).

    Raises:
        Unsupported: If the pair is outside what the direct step covers.
    """

    def __init__(self, model: Any, guide: Any, kind: str) -> None:
        if not isinstance(model, pyro.nn.PyroModule):
            raise Unsupported("the model is not a PyroModule")
        if type(guide).forward is not AutoSparseNormal.forward:
            raise Unsupported("the guide is not an AutoSparseNormal used as is")
        self.model, self.guide, self.kind = model, guide, kind
        self.bindings = [self._bind(name) for name in guide.site_names()]
        self._plans: list[PriorPlan | None] = [None] * len(self.bindings)

    def _bind(self, name: str) -> _Binding:
        node = self.guide.prototype_trace.nodes[name]
        if node["cond_indep_stack"]:
            raise Unsupported(f"site {name!r} is inside a plate")
        if node["scale"] is not None and not (
            isinstance(node["scale"], float) and node["scale"] == 1.0
        ):
            raise Unsupported(f"site {name!r} is scaled inside the model")
        path, _, attr = name.rpartition(".")
        try:
            module = self.model.get_submodule(path)
        except AttributeError:
            raise Unsupported(f"site {name!r} is not a module attribute") from None
        samples = pyro_samples(module)
        if attr not in samples or not isinstance(module, pyro.nn.PyroModule):
            raise Unsupported(f"site {name!r} is not a PyroSample attribute")
        lrt = bool(self.guide._infer(name).get("lrt"))
        info = self.guide._sites[name]
        form = "sparse" if info.sparse else "other"
        if not info.sparse and base_support(info.support) is constraints.real:
            form = "normal"
        return _Binding(name, module, attr, samples[attr], lrt, form)

    # ------------------------------------------------------------ per step
    def __call__(
        self,
        args: tuple,
        kwargs: dict,
        probes: dict[str, torch.Tensor] | None = None,
        growth: bool = False,
        growth_kl: float = 0.0,
    ) -> tuple[torch.Tensor, list[torch.Tensor]] | None:
        """One particle: ``(loss, trained tensors)``, or None if a foreign
        handler is active (nothing was drawn; trace this call).

        ``probes`` (``{sparse site: zero tensor of its shape that requires
        grad}``) are added to the drawn weights, so that their gradient is
        the loss's gradient with respect to every coordinate of the weight.
        With ``growth`` it is the growth pass: the parameters are held fixed,
        and the loss is the negative log-likelihood, plus ``growth_kl`` times
        each sparse site's KL at means shifted by the probe's active entries
        (the reference implementation's growth score, see
        :func:`~pyro_ssvi.reselection.likelihood_gradients`).

        Raises:
            Unsupported: If the model samples a latent site itself.
        """
        context = handler_context()
        if context is None:
            return None
        kl_weight, lazy = context
        posteriors = self.guide._full_posteriors(detach=growth)
        draws = [
            self._draw(b, q, lazy, probes)
            for b, (q, _) in zip(self.bindings, posteriors)
        ]
        observer = Observer()
        shadowed = []
        try:
            for binding, draw in zip(self.bindings, draws):
                binding.module.__dict__[binding.attr] = draw.value
                shadowed.append(binding)
            with observer, module_context(self.model):
                self.model(*args, **kwargs)
                nll = -_sum(observer.log_likelihood)
                if growth and probes is not None:
                    return (
                        nll + kl_weight * growth_kl * self._growth_kl(draws, probes),
                        observer.params,
                    )
                kl = _sum([self._kl(i, draw) for i, draw in enumerate(draws)])
        finally:
            for binding in shadowed:
                binding.module.__dict__.pop(binding.attr, None)
        loss = nll + kl_weight * kl if kl_weight != 1.0 else nll + kl
        trained = [p for _, leaves in posteriors for p in leaves]
        return loss, trained + observer.params

    @staticmethod
    def _draw(
        binding: _Binding,
        q: Any,
        lazy: LazyWeightMessenger | None,
        probes: dict[str, torch.Tensor] | None,
    ) -> Draw:
        """One site's value, drawn as the guide's ``pyro.sample`` draws it."""
        probe = None if probes is None else probes.get(binding.name)
        if lazy is None and isinstance(q, BackgroundSparseNormal):
            lazy = background_sampling()  # as the guide's forward draws it
        if lazy is not None and binding.lrt and lazy.accepts(q):
            return Draw(q, lazy.wrap(q, binding.name, probe), None)
        if isinstance(q, SparseNormal):
            active = q.rsample_active()
            value = q.scatter(active)
            return Draw(q, value if probe is None else value + probe, active)
        return Draw(q, q.rsample(), None)

    def _growth_kl(
        self, draws: list[Draw], probes: dict[str, torch.Tensor]
    ) -> torch.Tensor | float:
        terms = []
        for binding, draw in zip(self.bindings, draws):
            q, probe = draw.q, probes.get(binding.name)
            if probe is None or not isinstance(q, SparseNormal):
                continue
            loc = q.loc + q.gather(probe)
            if isinstance(q, BackgroundSparseNormal):
                shifted: SparseNormal = q.with_loc(loc)
            else:
                shifted = SparseNormal(loc, q.scale, q.indices, q.event_shape, False)
            terms.append(kl_divergence(shifted, _prior(binding)).sum())
        return _sum(terms) if terms else 0.0

    def _kl(self, i: int, draw: Draw) -> torch.Tensor:
        """Site ``i``'s KL term: analytic, or the Monte Carlo one of the draw."""
        return site_kl(self.kind, self._plan(i), self.bindings[i].form, draw)

    def _plan(self, i: int) -> PriorPlan:
        """Site ``i``'s prior and how its KL is computed (made again when the
        prior object or its parameters change)."""
        binding, plan = self.bindings[i], self._plans[i]
        prior = _prior(binding)
        if (
            plan is not None
            and plan.prior is prior
            and plan.versions == versions(plan.normal)
        ):
            return plan
        self._plans[i] = plan = prior_plan(prior, self.guide._sites[binding.name].shape)
        return plan


def _prior(binding: _Binding) -> Any:
    """The site's prior: a distribution, or a callable of its module (as Pyro)."""
    prior = binding.prior
    return prior if hasattr(prior, "sample") else prior(binding.module)


def _sum(terms: list[torch.Tensor]) -> torch.Tensor:
    return sum(terms[1:], terms[0]) if terms else torch.zeros(())


def particles_loss(
    step: DirectStep | None,
    elbo: Any,
    model: Any,
    guide: Any,
    args: tuple,
    kwargs: dict,
    probes: dict[str, torch.Tensor] | None = None,
) -> torch.Tensor:
    """The negative ELBO averaged over ``elbo.num_particles`` particles.

    By the direct step where one is given (and no foreign handler is active),
    else by the ELBO's own (traced) ``differentiable_loss``.
    """
    if step is not None:
        losses = []
        for _ in range(elbo.num_particles):
            result = step(args, kwargs, probes)
            if result is None:
                break
            losses.append(result[0])
        else:
            return _sum(losses) / len(losses)
    return elbo.differentiable_loss(model, guide, *args, **kwargs)


def direct_step(model: Any, guide: Any, loss: Any = None) -> DirectStep:
    """The :class:`DirectStep` of a model, guide and loss (None: the analytic
    KL, for the growth pass).

    Raises:
        Unsupported: With the reason, if the step must be traced.
    """
    kind = "analytic" if loss is None else elbo_kind(loss)
    if not isinstance(guide, AutoSparseNormal):
        what = type(guide).__name__ if isinstance(guide, torch.nn.Module) else None
        raise Unsupported(
            "the guide is not an AutoSparseNormal used alone (it is "
            + (f"an {what})" if what else "wrapped in a handler)")
        )
    if guide.prototype_trace is None:
        raise Unsupported("the guide is not set up")
    return DirectStep(model, guide, kind)


def log_choice(who: str, loss: Any, reason: str | None) -> None:
    """The one log line that says which path a step takes."""
    name = type(loss).__name__
    if reason is None:
        logger.info("%s: direct step (%s, no tracing).", who, name)
    else:
        logger.warning(
            "%s: traced step (%s), because %s; see 'Which step runs' in the "
            "user guide (docs/guide/python.md).",
            who,
            name,
            reason,
        )
