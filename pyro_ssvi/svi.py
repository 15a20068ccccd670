"""``SparseSVI``: ``pyro.infer.SVI`` plus subspace reselection.

Constructed and used exactly like :class:`pyro.infer.SVI`::

    guide = AutoSparseNormal(model, density=0.1)
    svi = SparseSVI(model, guide, pyro.optim.Adam({"lr": 1e-3}), num_steps=5000)
    for step in range(5000):
        loss = svi.step(x, y)
    svi.num_updates, svi.updates[-1]

Each :meth:`SparseSVI.step` is one loss and gradient (the direct step of
:mod:`pyro_ssvi._step` where it is exact, else Pyro's traced ELBO), one
optimiser step, and a step of ``svi.subspace``, the
:class:`~pyro_ssvi.SubspaceScheduler` that reselects the active sets.
"""

from __future__ import annotations

import inspect
import math
from contextlib import ExitStack, contextmanager, nullcontext
from typing import Any, Callable, Iterator

import torch
from pyro import poutine
from pyro.infer import SVI
from pyro.infer.util import torch_item, zero_grads
from pyro.optim import PyroOptim

from ._optim import GroupedStep
from ._pyro_compat import handler_stack, is_invalid_values_error
from ._step import (
    DirectStep,
    Unsupported,
    direct_step,
    elbo_kind,
    handler_context,
    log_choice,
)
from .criteria import ADDITIONS
from .distributed import DataParallel, is_distributed
from .elbo import TraceSparseMeanField_ELBO
from .growth import make_probes, probe_gradients
from .guides import AutoSparseNormal
from .poutine import (
    LatentScaleMessenger,
    LazyWeightMessenger,
    LocalReparameterizationMessenger,
    SparseWeightSamplingMessenger,
)
from .reselection import SubspaceScheduler, SubspaceUpdate

__all__ = ["ADDITIONS", "SparseSVI", "SubspaceUpdate"]

_SCHEDULER_OPTIONS = frozenset(
    list(inspect.signature(SubspaceScheduler).parameters)[3:]
)


class SparseSVI(SVI):
    r"""SVI that alternates gradient steps with reselection of sparse subspaces.

    A drop-in replacement for :class:`pyro.infer.SVI`:
    ``SparseSVI(model, guide, optim, loss)`` trains with no further argument.
    ``guide`` must contain an :class:`~pyro_ssvi.AutoSparseNormal` (alone, in
    an ``AutoGuideList``, or wrapped in handlers such as
    ``poutine.scale(guide, 1/N)``). Any keyword argument of
    :class:`~pyro_ssvi.SubspaceScheduler` (``update_every``, ``removal``,
    ``addition``, ``drop_fraction``, ``drop_schedule``, ``stop_updates_at``,
    ``num_steps``, ``sparse_guides``, ``regrow_scale``,
    ``growth_includes_kl``) configures :attr:`subspace`, the scheduler; with
    ``num_steps`` the drop fraction follows the reference's cosine decay and
    updates stop at 75% of training, without it they never stop.

    Args:
        model: The Pyro model.
        guide: A guide containing an ``AutoSparseNormal``.
        optim: A :class:`pyro.optim.PyroOptim`.
        loss: An ELBO or a loss callable; default
            :class:`~pyro_ssvi.elbo.TraceSparseMeanField_ELBO`.
            ``Trace_ELBO``, ``TraceMeanField_ELBO`` and it take the direct
            step; :attr:`path` and :attr:`why_traced` say which path a step
            took.
        kl_weight: Weight of the KL term, a float >= 0 or a callable of the
            1-based step number: the loss is ``-E[log p(y|theta)] +
            kl_weight * KL(q || p)`` (every latent site of model and guide is
            scaled). The reference SSVI runs use ``0.01 * min(2e/E, 1)``.
        local_reparameterization: Compute weight sites' linear and
            convolution layers by local reparameterisation
            (:func:`pyro_ssvi.poutine.local_reparameterization`).
        sparse_compute: Sparse kernels for sparse linear layers (``True``),
            dense ones (``False``) or whichever a one-time timing finds faster
            (``"auto"``); default ``"auto"`` on the CPU and, with local
            reparameterisation, everywhere (on an H200 it chose dense).
        distributed: Data-parallel training under ``torchrun`` (``None`` or
            ``True``; ``False`` ignores a process group): each rank passes its
            share of the minibatch, gradients are averaged over ranks.
        **options: The scheduler's options above; others go to
            :class:`pyro.infer.SVI`.

    Raises:
        ValueError, TypeError: For invalid arguments, with the fix named.
        FloatingPointError: From :meth:`step` when the loss is NaN or
            infinite; parameters and subspaces are left untouched.
    """

    def __init__(
        self,
        model: Callable[..., Any],
        guide: Callable[..., Any],
        optim: PyroOptim,
        loss: Any = None,
        *,
        kl_weight: float | Callable[[int], float] = 1.0,
        local_reparameterization: bool = False,
        sparse_compute: bool | str | None = None,
        distributed: bool | None = None,
        **options: Any,
    ) -> None:
        loss = TraceSparseMeanField_ELBO() if loss is None else loss
        scheduler = {
            k: options.pop(k) for k in list(options) if k in _SCHEDULER_OPTIONS
        }
        super().__init__(model, guide, optim, loss, **options)
        self.elbo = loss  # SVI keeps only its bound methods
        self.kl_weight = _check_kl_weight(kl_weight)
        self.subspace = SubspaceScheduler(
            model, guide, optim, kl_weight=self.kl_weight, **scheduler
        )
        self.num_steps = scheduler.get("num_steps")  # type: ignore[assignment]
        self.distributed = distributed
        self._optimizer_step = GroupedStep(optim)
        self._parallel: DataParallel | None = None
        self.lazy_weights: LazyWeightMessenger | None = None
        jit = type(loss).__name__.startswith("Jit")
        if local_reparameterization:
            sparse = "auto" if sparse_compute is None else sparse_compute
            self.lazy_weights = LocalReparameterizationMessenger(sparse=sparse)
        elif sparse_compute is None and not jit:
            self.lazy_weights = SparseWeightSamplingMessenger("auto", devices=("cpu",))
        elif sparse_compute not in (None, False):
            self.lazy_weights = SparseWeightSamplingMessenger(sparse=sparse_compute)
        if jit and (self.lazy_weights is not None or callable(kl_weight)):
            raise ValueError(
                f"SparseSVI: {type(loss).__name__} compiles the loss once, so it "
                "cannot follow local_reparameterization, sparse_compute or a "
                "kl_weight schedule; use a constant kl_weight and plain weight "
                "sampling with it, or its non-JIT version (e.g. TraceMeanField_ELBO)."
            )
        #: ``"direct"`` or ``"traced"``: the path the last step took.
        self.path: str | None = None
        #: Why the last step was traced (None when it was direct).
        self.why_traced: str | None = None
        self._direct_step: DirectStep | None = None
        self._path_for: Any = None
        self._logged: tuple[Any, Any] = (None, None)
        self._growth: dict[str, torch.Tensor] | None = None

    @property
    def step_count(self) -> int:
        """Number of steps taken."""
        return self.subspace.step_count

    @property
    def updates(self) -> list[SubspaceUpdate]:
        """Every :class:`SubspaceUpdate` so far."""
        return self.subspace.updates

    @property
    def num_updates(self) -> int:
        """Number of subspace updates performed so far."""
        return self.subspace.num_updates

    @property
    def stop_updates_at(self) -> int | None:
        """Step from which no more updates happen (None: never)."""
        return self.subspace.stop_updates_at

    def current_drop_fraction(self, step: int | None = None) -> float:
        """The drop fraction :math:`r_t` at ``step`` (default: the current step)."""
        return self.subspace.drop_fraction_at(step)

    def current_kl_weight(self, step: int | None = None) -> float:
        """The KL weight at ``step`` (default: the step about to be taken)."""
        step = self.step_count + 1 if step is None else step
        weight = self.kl_weight
        return float(weight(step)) if callable(weight) else float(weight)

    # ----------------------------------------------------------------- step
    def step(self, *args: Any, **kwargs: Any) -> float:
        """Take one SVI step, then reselect the subspaces if an update is due.

        Returns:
            The loss (a float) before the step.
        """
        if self.distributed is not False and is_distributed():
            loss, params = self._parallel_loss_and_grads(args, kwargs)
        else:
            loss, params = self._loss_and_grads(args, kwargs)
        grads, self._growth = self._growth, None  # from this step's backward pass
        self._optimizer_step(params)
        for p in params:  # as pyro's zero_grads, without allocating zeros
            p.grad = None
        with self._weights_context():  # a growth pass sees the weights as the loss
            self.subspace._step(args, kwargs, grads)
        return loss

    def update_subspace(self, *args: Any, **kwargs: Any) -> SubspaceUpdate:
        """Reselect every sparse site's subspace now, outside the schedule
        (:meth:`SubspaceScheduler.update`)."""
        return self.subspace.update(*args, **kwargs)

    def evaluate_loss(self, *args: Any, **kwargs: Any) -> float:
        """The loss (with the current KL weight) without taking a step."""
        with self._loss_context(), torch.no_grad():
            step = self._direct(args, kwargs)
            if step is None or handler_context() is None:
                return super().evaluate_loss(*args, **kwargs)
            return torch_item(self._particles(step, args, kwargs, None))

    @contextmanager
    def _loss_context(self) -> Iterator[None]:
        """KL weight and the weight handler around a loss computation."""
        weight = self.current_kl_weight()
        with ExitStack() as stack:
            if weight != 1.0:
                stack.enter_context(LatentScaleMessenger(weight))
            stack.enter_context(self._weights_context())
            yield

    def _weights_context(self) -> Any:
        """This step's weight handler, unless the caller entered one (which wins)."""
        if self.lazy_weights is None or any(
            isinstance(h, LazyWeightMessenger) for h in handler_stack()
        ):
            return nullcontext()
        return self.lazy_weights

    def _direct(self, args: tuple, kwargs: dict) -> DirectStep | None:
        """The direct step of this model, guide and loss, or None (traced):
        chosen at the first step (after setting the guide up, as its first
        call would) and when the guide is set up anew; one log line."""
        guide, key = self.guide, None
        if isinstance(guide, AutoSparseNormal):
            if guide.prototype_trace is None and _computes_directly(self.elbo):
                guide.setup(*args, **kwargs)
            key = guide.prototype_trace
        if self.path is None or key is not self._path_for:
            try:
                step: DirectStep | None = direct_step(self.model, guide, self.elbo)
                reason = None
            except Unsupported as e:
                step, reason = None, str(e)
            self._direct_step, self._path_for = step, key
            self.path, self.why_traced = (
                ("direct", None) if step else ("traced", reason)
            )
            if self._logged != (self.path, reason):
                self._logged = (self.path, reason)
                log_choice("SparseSVI", self.elbo, reason)
        return self._direct_step

    def _probes(self, step: DirectStep) -> dict[str, torch.Tensor] | None:
        """Growth probes on the step before an update that reads them."""
        if self.subspace.wants_gradients() and self.subspace.sparse_guides == [
            step.guide
        ]:
            return make_probes(step.guide)
        return None

    def _particles(
        self, step: DirectStep, args: tuple, kwargs: dict, probes: Any
    ) -> torch.Tensor:
        """The loss averaged over the ELBO's particles, by the direct step."""
        num, total = self.elbo.num_particles, None
        for _ in range(num):
            result = step(args, kwargs, probes)
            assert result is not None  # no foreign handler: checked by the caller
            total = result[0] if total is None else total + result[0]
        return total / num  # type: ignore[operator]

    def _loss_and_grads(
        self, args: tuple, kwargs: dict
    ) -> tuple[float, set[torch.Tensor]]:
        with self._loss_context():
            step = self._direct(args, kwargs)
            if step is not None and not handler_context() is None:
                return self._direct_loss_and_grads(step, args, kwargs)
            if step is not None:
                self.path, self.why_traced = "traced", "a foreign handler is active"
            with poutine.trace(param_only=True) as capture:
                try:
                    loss = self.loss_and_grads(self.model, self.guide, *args, **kwargs)
                except ValueError as e:
                    if not is_invalid_values_error(e):
                        raise
                    self._raise_non_finite("not finite", _trainable(capture.trace), e)
        params = _trainable(capture.trace)
        loss = torch_item(loss)
        if not math.isfinite(loss):
            self._raise_non_finite(loss, params)
        return loss, params

    def _direct_loss_and_grads(
        self, step: DirectStep, args: tuple, kwargs: dict
    ) -> tuple[float, set[torch.Tensor]]:
        """Particles one after the other, each backpropagated with weight
        ``1 / num_particles``, as Pyro's ELBOs do."""
        probes, num = self._probes(step), self.elbo.num_particles
        total, trained = 0.0, set[torch.Tensor]()
        for _ in range(num):
            try:
                result = step(args, kwargs, probes)
            except ValueError as e:  # Pyro's validation saw NaN/inf
                if not is_invalid_values_error(e):
                    raise
                self._raise_non_finite("not finite", trained, e)
            assert result is not None
            loss_tensor, params = result
            trained.update(params)
            loss = torch_item(loss_tensor)
            if not math.isfinite(loss):
                self._raise_non_finite(loss, trained)
            (loss_tensor / num if num > 1 else loss_tensor).backward()
            total += loss / num
        self.path, self.why_traced = "direct", None
        if probes is not None:
            self._growth = probe_gradients(
                step.guide, probes, self.subspace.growth_includes_kl
            )
        return total, trained

    def _parallel_loss_and_grads(
        self, args: tuple, kwargs: dict
    ) -> tuple[float, set[torch.Tensor]]:
        if self._parallel is None:
            self._parallel = DataParallel(
                self.model,
                self.guide,
                self.elbo,
                self.subspace.sparse_guides,
                args,
                kwargs,
            )
        with self._loss_context():
            step = self._direct(args, kwargs)
            probes = None if step is None else self._probes(step)
            loss, params = self._parallel.loss_and_grads(step, probes, args, kwargs)
        if not math.isfinite(loss):
            self._raise_non_finite("not finite on at least one rank", params)
        if step is not None and probes is not None:
            with_kl = self.subspace.growth_includes_kl
            self._growth = self._parallel.mean(
                probe_gradients(step.guide, probes, with_kl)
            )
        return loss, params

    def _raise_non_finite(
        self, loss: Any, params: set[torch.Tensor], cause: BaseException | None = None
    ) -> None:
        zero_grads(params)
        raise FloatingPointError(
            f"SparseSVI: the loss is {loss} at step {self.step_count + 1}; no "
            "parameter or subspace was changed. Lower the learning rate, check "
            "the data for NaN/inf, or use a smaller init_scale."
        ) from cause

    # --------------------------------------------------------- serialisation
    def state_dict(self) -> dict[str, Any]:
        """Progress of the schedule (step count and update history) and the
        timed kernel choices; the guide and optimiser have their own state."""
        state = self.subspace.state_dict()
        if self.lazy_weights is not None:
            state["paths"] = self.lazy_weights.state_dict()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` output, e.g. to resume training."""
        state = dict(state)
        paths = state.pop("paths", None)
        self.subspace.load_state_dict(state)
        if paths is not None and self.lazy_weights is not None:
            self.lazy_weights.load_state_dict(paths)


def _trainable(param_trace: Any) -> set[torch.Tensor]:
    """The trained leaf tensors behind the param sites of a ``param_only``
    trace (constrained ones via ``.unconstrained()``; never the indices)."""
    leaves = set()
    for site in param_trace.nodes.values():
        value = site["value"]
        leaf = value.unconstrained() if hasattr(value, "unconstrained") else value
        if leaf.requires_grad:
            leaves.add(leaf)
    return leaves


def _computes_directly(loss: Any) -> bool:
    try:
        elbo_kind(loss)
    except Unsupported:
        return False
    return True


def _check_kl_weight(kl_weight: Any) -> Any:
    if callable(kl_weight):
        return kl_weight
    if isinstance(kl_weight, bool) or not isinstance(kl_weight, (int, float)):
        raise TypeError(
            "SparseSVI: kl_weight must be a float or a callable step -> float, "
            f"got {kl_weight!r}."
        )
    if not (math.isfinite(kl_weight) and kl_weight >= 0):
        raise ValueError(
            f"SparseSVI: kl_weight must be finite and >= 0, got {kl_weight!r}."
        )
    return kl_weight
