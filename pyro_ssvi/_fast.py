r"""The fast path of :class:`~pyro_ssvi.elbo.TraceSparseMeanField_ELBO`.

For the standard case the loss needs no per-step guide trace and model replay:
it is

.. math::

    L = -\sum_{\text{observed } i} s_i \log p(y_i \mid \theta)
        + w_{KL} \sum_{\text{sites}} \mathrm{KL}_A(q \,\|\, p),
    \qquad \theta = \mu + \operatorname{softplus}(\rho)\,\varepsilon

on each site's active set, with :math:`s_i` the observation's scale (plates,
subsampling) and the closed-form KL of
:func:`~pyro_ssvi.distributions.sparse_normal_kl` (and of Normals for dense
sites). :class:`FastLoss` computes exactly that, with the random numbers the
traced path draws, in the same order: it samples the guide's parameters
directly, places the samples on the model's modules for one forward pass (a
``PyroSample`` attribute is shadowed by an instance attribute, so no sample
statement runs), and records only the observed sites.

**What the fast path covers** (otherwise the traced path runs, unchanged):

* the guide is one :class:`~pyro_ssvi.AutoSparseNormal` (not an
  ``AutoGuideList``, not wrapped in handlers) and the model a ``PyroModule``
  whose every latent site is a ``PyroSample`` attribute of one of its
  submodules, outside any plate, with real support and a factorised
  ``Normal`` prior whose parameters are not trained;
* the loss is ``TraceSparseMeanField_ELBO`` with one particle;
* the only effect handlers active around the loss are pyro_ssvi's own
  (``scale_kl``, ``local_reparameterization``, ``sparse_weight_sampling``);
* and the two paths agree: on first use both run once on the same random
  numbers, and the fast path is used only if loss and gradients match.
"""

from __future__ import annotations

import math
import warnings
from typing import Any, Callable, NamedTuple

import pyro
import torch
from pyro.distributions.util import scale_and_mask
from pyro.poutine.messenger import Messenger
from torch.distributions import constraints, transform_to

from ._pyro_compat import (
    handler_stack,
    is_module_local_param_enabled,
    module_context,
    param_store_name,
    pyro_samples,
    tensor_version,
)
from .distributions import _is_constant, sparse_normal_kl
from .poutine import (
    DenseMoments,
    LatentScaleMessenger,
    LazyWeight,
    LazyWeightMessenger,
    SparseMoments,
)

__all__ = ["FastLoss", "NotNow", "Unsupported"]


class Unsupported(Exception):
    """The model, guide or context is outside what the fast path covers."""


class NotNow(Exception):
    """The fast path cannot be checked on this batch (e.g. a non-finite loss)."""


class _Site(NamedTuple):
    name: str
    sparse: bool
    shape: torch.Size
    module: torch.nn.Module
    attr: str
    prior_loc: torch.Tensor
    prior_scale: torch.Tensor
    lrt: bool
    # For a prior constant over the tensor, N(m, s^2): (m, 1 / (2 s^2), c, version)
    # with KL = sum (sigma^2 + (mu - m)^2) / (2 s^2) - sum log sigma + c.
    constant: tuple[float, float, float, int] | None


def _constant_prior(
    loc: torch.Tensor, scale: torch.Tensor, shape: torch.Size, k: int
) -> tuple[float, float, float, int] | None:
    r"""Closed form of the KL term under a prior constant over the tensor.

    With :math:`k` active of :math:`n` coordinates,
    :math:`c = k(\log s - \tfrac12) - (n - k)\log\mathcal{N}(0; m, s^2)`.
    """
    if not (_is_constant(loc, shape) and _is_constant(scale, shape)):
        return None
    if loc.numel() and loc.dim() > len(shape) or scale.dim() > len(shape):
        return None  # batched priors: the general path
    m = float(loc.reshape(-1)[0]) if loc.numel() else 0.0
    s = float(scale.reshape(-1)[0])
    n = shape.numel()
    log_p0 = -0.5 * (m / s) ** 2 - math.log(s) - 0.5 * math.log(2 * math.pi)
    c = k * (math.log(s) - 0.5) - (n - k) * log_p0
    return m, 0.5 / s**2, c, tensor_version(scale) + tensor_version(loc)


class _Observe(Messenger):
    """Records observed sites and param statements; refuses latent sites."""

    def __init__(self) -> None:
        super().__init__()
        self.log_probs: list[torch.Tensor] = []
        self.params: list[torch.Tensor] = []

    def _pyro_sample(self, msg: Any) -> None:
        if msg["is_observed"] or type(msg["fn"]).__name__ == "_Subsample":
            return
        raise Unsupported(f"the model samples latent site {msg['name']!r} itself")

    def _pyro_post_sample(self, msg: Any) -> None:
        if msg["is_observed"]:
            fn = msg["fn"]
            log_p = fn.log_prob(msg["value"], *msg["args"], **msg["kwargs"])
            self.log_probs.append(
                scale_and_mask(log_p, msg["scale"], msg["mask"]).sum()
            )

    def _pyro_post_param(self, msg: Any) -> None:
        value = msg["value"]
        leaf = value.unconstrained() if hasattr(value, "unconstrained") else value
        if isinstance(leaf, torch.Tensor) and leaf.requires_grad:
            self.params.append(leaf)


def _normal_prior(prior: Any, shape: torch.Size) -> tuple[torch.Tensor, torch.Tensor]:
    base = prior
    while isinstance(base, torch.distributions.Independent):
        base = base.base_dist
    if type(base) not in (torch.distributions.Normal, pyro.distributions.Normal):
        raise Unsupported(f"prior {type(base).__name__} is not a factorised Normal")
    if tuple(prior.batch_shape) + tuple(prior.event_shape) != tuple(shape):
        raise Unsupported("the prior's shape is not the site's")
    loc, scale = base.loc, base.scale
    if loc.requires_grad or scale.requires_grad:
        raise Unsupported("the prior has trained parameters")
    return loc.detach(), scale.detach()


def _dense_kl(
    loc: torch.Tensor,
    scale: torch.Tensor,
    prior_loc: torch.Tensor,
    prior_scale: torch.Tensor,
) -> torch.Tensor:
    """Sum of closed-form Normal KLs (torch's formula)."""
    var_ratio = (scale / prior_scale) ** 2
    t1 = ((loc - prior_loc) / prior_scale) ** 2
    return (0.5 * (var_ratio + t1 - 1 - var_ratio.log())).sum()


class FastLoss:
    """The negative ELBO of a model and an ``AutoSparseNormal``, computed directly.

    Args:
        model: A ``PyroModule`` (see the module docstring for what is covered).
        guide: An ``AutoSparseNormal`` that has been set up.

    Raises:
        Unsupported: If the pair is outside what the fast path covers.
    """

    def __init__(self, model: Any, guide: Any) -> None:
        from .guides import AutoSparseNormal

        if not isinstance(guide, AutoSparseNormal) or not isinstance(
            model, pyro.nn.PyroModule
        ):
            raise Unsupported("needs a PyroModule model and an AutoSparseNormal")
        if guide.prototype_trace is None:
            raise Unsupported("the guide is not set up")
        self.model, self.guide = model, guide
        self.scale_transform = transform_to(guide.scale_constraint)
        self.sites = [self._site(name) for name in guide.site_names()]
        self.device: torch.device | None = None

    def _site(self, name: str) -> _Site:
        node = self.guide.prototype_trace.nodes[name]
        if node["cond_indep_stack"]:
            raise Unsupported(f"site {name!r} is inside a plate")
        support = node["fn"].support
        while isinstance(support, constraints.independent):
            support = support.base_constraint
        if support is not constraints.real:
            raise Unsupported(f"site {name!r} is not real-valued")
        path, _, attr = name.rpartition(".")
        try:
            module = self.model.get_submodule(path)
        except AttributeError:
            raise Unsupported(f"site {name!r} is not a module attribute") from None
        samples = pyro_samples(module)
        if attr not in samples or not isinstance(module, pyro.nn.PyroModule):
            raise Unsupported(f"site {name!r} is not a PyroSample attribute")
        prior = samples[attr]
        if not hasattr(prior, "sample"):
            prior = prior(module)
        shape = self.guide.site_shape(name)
        loc, scale = _normal_prior(prior, shape)
        sparse = name in self.guide.sparse_site_names()
        lrt = bool(self.guide._infer(name).get("lrt"))
        k = self.guide.num_active()[name] if sparse else shape.numel()
        constant = _constant_prior(loc, scale, shape, k)
        return _Site(name, sparse, shape, module, attr, loc, scale, lrt, constant)

    # ------------------------------------------------------------ per step
    def _context(self) -> tuple[float, LazyWeightMessenger | None]:
        """The KL weight and the weight handler active around the loss."""
        weight, lazy = 1.0, None
        for handler in handler_stack():
            if isinstance(handler, LatentScaleMessenger):
                weight *= handler.weight
            elif isinstance(handler, LazyWeightMessenger) and lazy is None:
                lazy = handler
            else:
                raise Unsupported(f"handler {type(handler).__name__} is active")
        return weight, lazy

    def _params(self) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]]:
        """Each site's (loc, unconstrained scale, int64 indices or None)."""
        guide = self.guide
        if not is_module_local_param_enabled():
            self._sync_with_store()
        out = []
        for site in self.sites:
            loc_mod, leaf = guide._leaf("locs", site.name)
            scale_mod, _ = guide._leaf("scales", site.name)
            loc = getattr(loc_mod, leaf + "_unconstrained")
            scale_u = getattr(scale_mod, leaf + "_unconstrained")
            idx = guide._indices(site.name, loc) if site.sparse else None
            out.append((loc, scale_u, idx))
        return out

    def _sync_with_store(self) -> None:
        """Adopt tensors that Pyro's param store replaced (set_state, load)."""
        guide = self.guide
        store = dict(pyro.get_param_store().named_parameters())
        for site in self.sites:
            for tree in ("locs", "scales"):
                module, leaf = guide._leaf(tree, site.name)
                name = param_store_name(module, leaf)
                if store.get(name) is not getattr(module, leaf + "_unconstrained"):
                    with module_context(guide):  # read as Pyro reads: synchronise
                        for s in self.sites:
                            guide._get_loc_and_scale(s.name)
                    return

    def __call__(
        self, *args: Any, **kwargs: Any
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """The loss (a differentiable scalar) and the tensors it trains.

        Raises:
            Unsupported: If a handler other than pyro_ssvi's is active or the
                model samples a latent site itself.
        """
        kl_weight, lazy = self._context()
        params = self._params()
        values, kl = self._sample(params, lazy)
        observe = _Observe()
        shadowed = []
        try:
            for site, value in zip(self.sites, values):
                site.module.__dict__[site.attr] = value
                shadowed.append(site)
            with observe:
                self.model(*args, **kwargs)
        finally:
            for site in shadowed:
                site.module.__dict__.pop(site.attr, None)
        nll = -sum(observe.log_probs, torch.zeros((), device=kl.device))
        loss = nll + kl_weight * kl if kl_weight != 1.0 else nll + kl
        trained = [p for triple in params for p in triple[:2]] + observe.params
        return loss, trained

    def _sample(
        self, params: list[tuple[torch.Tensor, ...]], lazy: LazyWeightMessenger | None
    ) -> tuple[list[Any], torch.Tensor]:
        """Draw every site (the traced guide's random numbers, in its order)."""
        values: list[Any] = []
        kl: Any = 0.0
        if (
            self.device is None
            or self.sites[0].prior_scale.device != params[0][0].device
        ):
            self._move_priors(params[0][0].device)
        for i, (site, (loc, scale_u, idx)) in enumerate(zip(self.sites, params)):
            scale = self.scale_transform(scale_u)
            const = site.constant
            if const is not None and const[3] != tensor_version(
                site.prior_scale
            ) + tensor_version(
                site.prior_loc
            ):  # the prior was edited: re-read it
                k = loc.numel()
                const = _constant_prior(site.prior_loc, site.prior_scale, site.shape, k)
                self.sites[i] = site = site._replace(constant=const)
            if const is not None:
                m, half_inv_s2, c, _ = const
                centred = loc if m == 0.0 else loc - m
                squares = (scale.square() + centred.square()).sum()
                kl = kl + (squares * half_inv_s2 - scale.log().sum() + c)
            elif site.sparse:
                kl = kl + sparse_normal_kl(
                    loc, scale, idx, site.shape, site.prior_loc, site.prior_scale
                )
            else:
                kl = kl + _dense_kl(loc, scale, site.prior_loc, site.prior_scale)
            if lazy is not None and site.lrt and lazy.covers(loc.device):
                moments: Any = (
                    SparseMoments(loc, scale, idx, site.shape)
                    if site.sparse
                    else DenseMoments(loc, scale)
                )
                weight = LazyWeight(moments, site.name, lazy)
                if not lazy.lrt:  # drawn now, as the messenger does
                    weight.values() if site.sparse else weight.sample()
                values.append(weight)
            elif site.sparse:
                eps = torch.randn(loc.shape, dtype=loc.dtype, device=loc.device)
                values.append(
                    SparseMoments(loc, scale, idx, site.shape).scatter(
                        loc + scale * eps
                    )
                )
            else:
                eps = torch.empty(
                    loc.shape, dtype=loc.dtype, device=loc.device
                ).normal_()
                values.append(loc + eps * scale)
        return values, kl

    def _move_priors(self, device: torch.device) -> None:
        self.sites = [
            s._replace(
                prior_loc=s.prior_loc.to(device), prior_scale=s.prior_scale.to(device)
            )
            for s in self.sites
        ]
        self.device = device


def check_agrees(
    fast: FastLoss, traced: Callable[[], torch.Tensor], args: tuple, kwargs: dict
) -> str | None:
    """Run both paths on the same random numbers; None if they agree, else why not.

    Compares the loss and its gradients with respect to the guide's trained
    tensors (float tolerance: ``rtol=1e-4``, ``atol=1e-5`` relative to the
    gradient's scale). Random state and the model's buffers (batch-norm
    statistics) are restored afterwards.
    """
    params = [p for triple in fast._params() for p in triple[:2]]
    devices = sorted({p.device.index for p in params if p.is_cuda})
    buffers = [(b, b.detach().clone()) for b in fast.model.buffers()]
    results = []
    for run in (traced, lambda: fast(*args, **kwargs)[0]):
        with torch.random.fork_rng(devices=devices), torch.enable_grad():
            torch.manual_seed(20241)
            loss = run()
            grads = torch.autograd.grad(loss, params, allow_unused=True)
        results.append((loss.detach(), grads))
        with torch.no_grad():  # e.g. batch-norm statistics: as if not run
            for buffer, saved in buffers:
                if not torch.equal(buffer, saved):
                    buffer.copy_(saved)
    (loss_t, grads_t), (loss_f, grads_f) = results
    if not bool(torch.isfinite(loss_t)):
        raise NotNow("the traced loss is not finite")
    if not torch.allclose(
        loss_f, loss_t, rtol=1e-4, atol=1e-4 * (1 + loss_t.abs().item())
    ):
        return f"loss {loss_f.item():.6g} (fast) against {loss_t.item():.6g} (traced)"
    for p, gt, gf in zip(params, grads_t, grads_f):
        gt = torch.zeros_like(p) if gt is None else gt
        gf = torch.zeros_like(p) if gf is None else gf
        tol = 1e-5 * (1 + gt.abs().max().item())
        if not torch.allclose(gf, gt, rtol=1e-4, atol=tol):
            return "gradients differ"
    return None


def build_fast_loss(
    model: Any,
    guide: Any,
    traced: Callable[[], torch.Tensor],
    args: tuple,
    kwargs: dict,
) -> tuple[FastLoss | None, str | None]:
    """A checked :class:`FastLoss` for this pair, or ``(None, why not)``.

    Raises:
        NotNow: If the check cannot be made on this batch; try again later.
    """
    try:
        fast = FastLoss(model, guide)
        reason = check_agrees(fast, traced, args, kwargs)
    except Unsupported as e:
        return None, str(e)
    if reason is not None:
        warnings.warn(
            "TraceSparseMeanField_ELBO: the fast path disagrees with the traced "
            f"loss for this model ({reason}); using the traced path.",
            RuntimeWarning,
            stacklevel=3,
        )
        return None, f"the fast path disagrees with the traced loss ({reason})"
    return fast, None
