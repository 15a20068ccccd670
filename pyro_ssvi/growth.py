r"""The growth score of SSVI's reselection: the loss's gradient at every coordinate.

The addition rules (:data:`ADDITIONS`) score every coordinate for growth.
The ``"grad"`` rule ranks coordinates by :math:`|\partial L / \partial
\theta_j|`, read from a zero *probe* :math:`\delta` of the weight's full shape
added to the drawn weight. ``SparseSVI`` puts probes on the step before an
update (as the reference reads its backward pass); :func:`likelihood_gradients`
runs a pass of its own, for a ``SubspaceScheduler`` in any training loop.
"""

from __future__ import annotations

import inspect
from typing import Any, Callable

import torch
from pyro import poutine
from pyro.poutine.messenger import Messenger
from torch import Tensor
from torch.distributions import kl_divergence

from ._step import DirectStep, Observer, Unsupported
from .distributed import all_reduce_mean_
from .distributions import ShiftedSparseNormal, SparseNormal

__all__ = [
    "ADDITIONS",
    "addition_scores",
    "get_addition",
    "grad_abs",
    "likelihood_gradients",
    "make_probes",
    "needs_grad",
    "probe_gradients",
    "random_scores",
]


AdditionRule = Callable[..., Tensor]


def grad_abs(name: str, posterior: object, grad: Tensor | None) -> Tensor:
    r"""Addition score :math:`|\partial L / \partial \theta_j|`, the paper's rule.

    ``grad``: the expected NLL's gradient at every coordinate of the site's
    weight, on the update's minibatch (see :func:`likelihood_gradients`).
    """
    if grad is None:
        raise ValueError(f"addition 'grad' needs the gradient of site {name!r}")
    return grad.reshape(-1).abs()


grad_abs.needs_grad = True  # type: ignore[attr-defined]


def random_scores(name: str, posterior: object, grad: Tensor | None) -> Tensor:
    """Addition score drawn uniformly at random: random growth (an ablation)."""
    n = posterior.event_shape.numel()  # type: ignore[attr-defined]
    return torch.rand(n, device=posterior.loc.device)  # type: ignore[attr-defined]


#: Addition rules by name: ``(site_name, posterior, grad) -> scores`` of all
#: ``n`` coordinates (higher means add). Rules with ``needs_grad = True``
#: receive the dense gradient; others get None.
ADDITIONS: dict[str, AdditionRule] = {"grad": grad_abs, "random": random_scores}


def get_addition(rule: str | AdditionRule) -> AdditionRule:
    """Resolves an addition rule name or callable.

    A callable is called as ``rule(site_name, posterior, grad)``, or as
    ``rule(site_name, posterior)`` if it takes two arguments; it receives a
    gradient only if it has an attribute ``needs_grad = True``.

    Raises:
        ValueError: For an unknown name. TypeError: for anything else.
    """
    if isinstance(rule, str):
        if rule not in ADDITIONS:
            raise ValueError(
                f"unknown addition rule {rule!r}; valid names are {sorted(ADDITIONS)}, "
                "or pass a callable (site_name, posterior, grad) -> scores"
            )
        return ADDITIONS[rule]
    if not callable(rule):
        raise TypeError(f"addition must be a name or a callable, got {type(rule)!r}")
    if len(inspect.signature(rule).parameters) >= 3:
        return rule
    two = rule
    return lambda name, posterior, grad: two(name, posterior)


def needs_grad(rule: AdditionRule) -> bool:
    """Whether an addition rule reads the dense gradient."""
    return bool(getattr(rule, "needs_grad", False))


def addition_scores(
    rule: AdditionRule, name: str, posterior: object, grad: Tensor | None
) -> Tensor:
    """Scores all ``n`` coordinates for addition with a rule from :func:`get_addition`.

    Raises:
        ValueError: If the rule returns the wrong shape.
    """
    with torch.no_grad():
        scores = rule(name, posterior, grad)
    n = posterior.event_shape.numel()  # type: ignore[attr-defined]
    if not isinstance(scores, Tensor) or scores.shape != (n,):
        shape = tuple(scores.shape) if isinstance(scores, Tensor) else type(scores)
        raise ValueError(
            f"the addition rule returned {shape} for site {name!r}; expected a "
            f"tensor of shape ({n},)"
        )
    return scores


def make_probes(guide: Any) -> dict[str, torch.Tensor]:
    """A zero tensor of each sparse site's shape that requires grad."""
    return {
        name: _probe(guide.site_shape(name), guide._stored("locs", name))
        for name in guide.sparse_site_names()
    }


def probe_gradients(
    guide: Any, probes: dict[str, torch.Tensor], with_kl: bool
) -> dict[str, torch.Tensor]:
    r"""The probes' gradients after the training loss's backward pass:
    :math:`\partial \mathrm{NLL} / \partial \theta`; ``with_kl``, the active
    coordinates read the mean's gradient instead, :math:`\partial
    \mathrm{NLL} / \partial \theta + w\, \partial \mathrm{KL} / \partial
    \mu` (the loss's own KL weight :math:`w`)."""
    out = {}
    for name, probe in probes.items():
        grad = torch.zeros_like(probe) if probe.grad is None else probe.grad
        loc = guide._stored("locs", name)
        if with_kl and loc.grad is not None:
            flat = grad.reshape(-1).index_copy(0, guide._indices(name), loc.grad)
            grad = flat.reshape(grad.shape)
        out[name] = grad
    return out


def likelihood_gradients(
    model: Callable[..., Any],
    guide: Callable[..., Any],
    *args: Any,
    kl_weight: float = 0.0,
    direct: DirectStep | None = None,
    **kwargs: Any,
) -> dict[str, torch.Tensor]:
    r"""Gradient of the negative log-likelihood with respect to every sparse weight.

    One draw :math:`\theta \sim q` from the guide, with every sparse site
    sampled as :math:`\theta + \delta`, :math:`\delta = 0`; then

    .. math:: g = \frac{\partial}{\partial \delta}
        \Big(-\sum_{\text{observed } i} \log p(y_i \mid \theta + \delta)
        + w\, s\, \mathrm{KL}(\mu + \delta_A)\Big),

    each observed site weighted by its scale and mask, as in the ELBO. With
    ``kl_weight`` :math:`w > 0` it adds :math:`w\, s\, \partial \mathrm{KL} /
    \partial \mu_j` at the active coordinates (:math:`s`: the guide site's
    scale), the reference implementation's growth score. Gradients are averaged
    over ranks. With ``direct`` (a :class:`~pyro_ssvi._step.DirectStep`) the
    pass is that step's forward. Returns ``{site: dense gradient}``.
    """
    result = None
    if direct is not None:
        result = _direct_gradients(direct, args, kwargs, kl_weight)
    if result is None:
        result = _traced_gradients(model, guide, args, kwargs, kl_weight)
    return {name: all_reduce_mean_(grad) for name, grad in result.items()}


def _probe(shape: torch.Size, like: torch.Tensor) -> torch.Tensor:
    return torch.zeros(shape, dtype=like.dtype, device=like.device, requires_grad=True)


def _gradients(loss: Any, probes: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    inputs = list(probes.values())
    grads = (
        torch.autograd.grad(loss, inputs, allow_unused=True)
        if inputs and loss.requires_grad
        else [None] * len(inputs)
    )
    return {
        name: torch.zeros_like(probe) if grad is None else grad.detach()
        for (name, probe), grad in zip(probes.items(), grads)
    }


def _direct_gradients(
    direct: DirectStep, args: tuple, kwargs: dict, kl_weight: float
) -> dict[str, torch.Tensor] | None:
    guide = direct.guide
    probes = make_probes(guide)
    with torch.enable_grad():
        try:
            result = direct(args, kwargs, probes, growth=True, growth_kl=kl_weight)
        except Unsupported:
            return None
        return None if result is None else _gradients(result[0], probes)


class _Probes(Messenger):
    """Samples every sparse guide site shifted by a zero probe that requires grad."""

    def __init__(self) -> None:
        super().__init__()
        self.probes: dict[str, torch.Tensor] = {}

    def _pyro_sample(self, msg: Any) -> None:
        fn = msg["fn"]
        if isinstance(fn, SparseNormal) and msg["value"] is None:
            probe = _probe(fn.event_shape, fn.loc)
            self.probes[msg["name"]] = probe
            msg["fn"] = ShiftedSparseNormal(fn, probe)


def _traced_gradients(
    model: Callable[..., Any],
    guide: Callable[..., Any],
    args: tuple,
    kwargs: dict,
    kl_weight: float,
) -> dict[str, torch.Tensor]:
    probes = _Probes()
    observer = Observer()
    with torch.enable_grad():
        with probes:
            guide_trace = poutine.trace(guide).get_trace(*args, **kwargs)
        with observer:
            model_trace = poutine.trace(
                poutine.replay(model, trace=guide_trace)
            ).get_trace(*args, **kwargs)
        loss = -sum(observer.log_likelihood, torch.zeros(()))
        if kl_weight:
            for name, probe in probes.probes.items():
                site: Any = guide_trace.nodes[name]
                post = site["fn"].base
                shifted = SparseNormal(
                    post.loc.detach() + post.gather(probe),
                    post.scale.detach(),
                    post.indices,
                    post.event_shape,
                    validate_args=False,
                )
                prior: Any = model_trace.nodes[name]["fn"]
                kl = kl_divergence(shifted, prior).sum() * site["scale"]
                loss = loss + kl_weight * kl
        return _gradients(loss, probes.probes)
