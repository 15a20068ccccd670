"""``SparseSVI``: ``pyro.infer.SVI`` plus subspace reselection.

Constructed and used exactly like :class:`pyro.infer.SVI`::

    guide = AutoSparseNormal(model, density=0.1)
    svi = SparseSVI(model, guide, pyro.optim.Adam({"lr": 1e-3}), num_steps=5000)
    for step in range(5000):
        loss = svi.step(x, y)

Each step is one loss and gradient (the direct step of :mod:`pyro_ssvi._step`
where it is exact, else Pyro's traced ELBO), one optimiser step, and a step of
``svi.subspace``, the :class:`~pyro_ssvi.SubspaceScheduler`.
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
    particles_loss,
)
from .distributed import DataParallel, is_distributed
from .elbo import TraceSparseMeanField_ELBO
from .growth import ADDITIONS, make_probes, probe_gradients
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

    A drop-in for :class:`pyro.infer.SVI` whose ``guide`` contains an
    :class:`~pyro_ssvi.AutoSparseNormal` (alone, in an ``AutoGuideList``, or in
    handlers). Keyword arguments of :class:`~pyro_ssvi.SubspaceScheduler`
    (``update_every``, ``removal``, ``addition``, ``drop_fraction``,
    ``num_steps``, ...) configure :attr:`subspace`; others go to ``SVI``. With
    ``num_steps`` the drop fraction decays as the reference's cosine and
    updates stop at 75%.

    Args:
        loss: Default :class:`~pyro_ssvi.elbo.TraceSparseMeanField_ELBO`;
            it, ``Trace_ELBO`` and ``TraceMeanField_ELBO`` take the direct
            step (:attr:`path` and :attr:`why_traced` say which a step took).
        kl_weight: A float >= 0 or a callable of the 1-based step: the loss is
            ``-E[log p(y|theta)] + kl_weight * KL(q || p)``. The reference
            SSVI runs use ``0.01 * min(2e/E, 1)``.
        local_reparameterization: Weight sites' layers by local
            reparameterisation (:func:`pyro_ssvi.poutine.local_reparameterization`).
        sparse_compute: Sparse kernels for sparse linear layers (``True``),
            dense ones (``False``) or the faster by a one-time timing
            (``"auto"``, the default on the CPU and with local reparameterisation).
        distributed: Data-parallel under ``torchrun``; ``False`` ignores it.

    Raises:
        ValueError, TypeError: For invalid arguments, with the fix named.
        FloatingPointError: From :meth:`step` for a NaN/inf loss (nothing changed).
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
        self.lazy_weights = _weight_handler(
            loss, local_reparameterization, sparse_compute, kl_weight
        )
        #: ``"direct"`` or ``"traced"``: the path the last step took.
        self.path: str | None = None
        #: Why the last step was traced (None when it was direct).
        self.why_traced: str | None = None
        self._direct_step: DirectStep | None = None
        self._path_for: Any = None
        self._logged: tuple[Any, Any] = (None, None)

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
        """Step from which no more updates happen, or None (never)."""
        return self.subspace.stop_updates_at

    def current_drop_fraction(self, step: int | None = None) -> float:
        """The drop fraction :math:`r_t` at ``step`` (default: the current step)."""
        return self.subspace.drop_fraction_at(step)

    def current_kl_weight(self, step: int | None = None) -> float:
        """The KL weight at ``step`` (default: the step about to be taken)."""
        w, step = self.kl_weight, self.step_count + 1 if step is None else step
        return float(w(step) if callable(w) else w)

    def step(self, *args: Any, **kwargs: Any) -> float:
        """Take one SVI step, then reselect the subspaces if an update is due.
        Returns the loss (a float) before the step."""
        parallel = self.distributed is not False and is_distributed()
        if parallel and self._parallel is None:
            guides = self.subspace.sparse_guides
            self._parallel = DataParallel(
                self.model, self.guide, self.elbo, guides, args, kwargs
            )
        with self._loss_context():
            step = self._direct(args, kwargs)
            direct = step is not None and handler_context() is not None
            probes = None  # growth probes on the step before an update reading them
            if step is not None and (parallel or direct):
                if self.subspace.wants_gradients() and self.subspace.sparse_guides == [
                    step.guide
                ]:
                    probes = make_probes(step.guide)
            if self._parallel is not None and parallel:
                loss, params = self._parallel.loss_and_grads(step, probes, args, kwargs)
            elif direct and step is not None:
                loss, params = self._direct_loss_and_grads(step, probes, args, kwargs)
            else:
                loss, params = self._traced_loss_and_grads(step, args, kwargs)
        if not math.isfinite(loss):  # the other paths raise before
            _raise_non_finite(
                self.step_count, "not finite on at least one rank", params
            )
        grads = None  # the growth gradient, from this step's backward pass
        if probes is not None and step is not None:
            grads = probe_gradients(
                step.guide, probes, self.subspace.growth_includes_kl
            )
            grads = self._parallel.mean(grads) if parallel else grads  # type: ignore
        self._optimizer_step(params)
        for p in params:  # as pyro's zero_grads, without allocating zeros
            p.grad = None
        with self._weights_context():  # a growth pass sees the weights as the loss
            self.subspace._step(args, kwargs, grads)
        return loss

    def update_subspace(self, *args: Any, **kwargs: Any) -> SubspaceUpdate:
        """Reselect every sparse site's subspace now (``subspace.update``)."""
        return self.subspace.update(*args, **kwargs)

    def evaluate_loss(self, *args: Any, **kwargs: Any) -> float:
        """The loss (with the current KL weight) without taking a step."""
        with self._loss_context(), torch.no_grad():
            step = self._direct(args, kwargs)
            if step is None or handler_context() is None:
                return super().evaluate_loss(*args, **kwargs)
            loss = particles_loss(step, self.elbo, self.model, self.guide, args, kwargs)
            return torch_item(loss)

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
        """The direct step (None: traced), chosen at the first step (after setting
        the guide up) and whenever it is set up anew; one log line."""
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
            self.path, self.why_traced = "direct" if step else "traced", reason
            if self._logged != (self.path, reason):
                self._logged = (self.path, reason)
                log_choice("SparseSVI", self.elbo, reason)
        return self._direct_step

    def _traced_loss_and_grads(
        self, step: DirectStep | None, args: tuple, kwargs: dict
    ) -> tuple[float, set[torch.Tensor]]:
        if step is not None:
            self.path, self.why_traced = "traced", "a foreign handler is active"
        with poutine.trace(param_only=True) as capture:
            try:
                loss = self.loss_and_grads(self.model, self.guide, *args, **kwargs)
            except ValueError as e:
                if not is_invalid_values_error(e):
                    raise
                _raise_non_finite(
                    self.step_count, "not finite", _trainable(capture.trace), e
                )
        params = _trainable(capture.trace)
        loss = torch_item(loss)
        if not math.isfinite(loss):
            _raise_non_finite(self.step_count, loss, params)
        return loss, params

    def _direct_loss_and_grads(
        self, step: DirectStep, probes: Any, args: tuple, kwargs: dict
    ) -> tuple[float, set[torch.Tensor]]:
        """Particles one after the other, each backpropagated with weight
        ``1 / num_particles``, as Pyro's ELBOs do."""
        num = self.elbo.num_particles
        total, trained = 0.0, set[torch.Tensor]()
        for _ in range(num):
            try:
                result = step(args, kwargs, probes)
            except ValueError as e:  # Pyro's validation saw NaN/inf
                if not is_invalid_values_error(e):
                    raise
                _raise_non_finite(self.step_count, "not finite", trained, e)
            assert result is not None
            loss_tensor, params = result
            trained.update(params)
            loss = torch_item(loss_tensor)
            if not math.isfinite(loss):
                _raise_non_finite(self.step_count, loss, trained)
            (loss_tensor / num if num > 1 else loss_tensor).backward()
            total += loss / num
        self.path, self.why_traced = "direct", None
        return total, trained

    def state_dict(self) -> dict[str, Any]:
        """The scheduler's progress and the timed kernel choices."""
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


def _weight_handler(
    loss: Any, local_reparameterization: bool, sparse_compute: Any, kl_weight: Any
) -> LazyWeightMessenger | None:
    """The weight handler for ``SparseSVI``'s options, checked against JIT ELBOs."""
    handler: LazyWeightMessenger | None = None
    jit = type(loss).__name__.startswith("Jit")
    if local_reparameterization:
        sparse = "auto" if sparse_compute is None else sparse_compute
        handler = LocalReparameterizationMessenger(sparse=sparse)
    elif sparse_compute is None and not jit:
        handler = SparseWeightSamplingMessenger("auto", devices=("cpu",))
    elif sparse_compute not in (None, False):
        handler = SparseWeightSamplingMessenger(sparse=sparse_compute)
    if jit and (handler is not None or callable(kl_weight)):
        raise ValueError(
            f"SparseSVI: {type(loss).__name__} compiles the loss once, so it "
            "cannot follow local_reparameterization, sparse_compute or a "
            "kl_weight schedule; use a constant kl_weight and plain weight "
            "sampling with it, or its non-JIT version (e.g. TraceMeanField_ELBO)."
        )
    return handler


def _raise_non_finite(
    steps: int, loss: Any, params: set[torch.Tensor], cause: BaseException | None = None
) -> None:
    zero_grads(params)
    raise FloatingPointError(
        f"SparseSVI: the loss is {loss} at step {steps + 1}; no "
        "parameter or subspace was changed. Lower the learning rate, check "
        "the data for NaN/inf, or use a smaller init_scale."
    ) from cause
