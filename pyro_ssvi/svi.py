"""``SparseSVI``: ``pyro.infer.SVI`` plus subspace reselection.

Constructed and used exactly like :class:`pyro.infer.SVI`::

    guide = AutoSparseNormal(model, density=0.1)
    svi = SparseSVI(model, guide, pyro.optim.Adam({"lr": 1e-3}), Trace_ELBO())
    for step in range(5000):
        loss = svi.step(x, y)
    svi.num_updates, svi.updates[-1]

Each :meth:`SparseSVI.step` is an ordinary SVI step followed by
``svi.subspace.step(...)``, a :class:`~pyro_ssvi.SubspaceScheduler` that
reselects the active sets when an update is due.
"""

from __future__ import annotations

import math
from contextlib import ExitStack, contextmanager, nullcontext
from typing import Any, Callable, Iterable, Iterator

import torch
from pyro import poutine
from pyro.infer import ELBO, SVI
from pyro.infer.util import torch_item, zero_grads
from pyro.optim import PyroOptim

from ._optim import GroupedStep
from ._pyro_compat import handler_stack, is_invalid_values_error
from ._step import DirectStep, Unsupported, direct_step, elbo_kind, log_choice
from .criteria import ADDITIONS
from .distributed import (
    DataParallelLoss,
    all_reduce_mean_,
    data_parallel_loss,
    is_distributed,
    wrap_ddp,
)
from .elbo import TraceSparseMeanField_ELBO
from .guides import AutoSparseNormal
from .poutine import (
    LatentScaleMessenger,
    LazyWeightMessenger,
    LocalReparameterizationMessenger,
    SparseWeightSamplingMessenger,
)
from .scheduler import SubspaceScheduler, SubspaceUpdate

__all__ = ["ADDITIONS", "SparseSVI", "SubspaceUpdate"]


def _trainable(param_trace: Any) -> set[torch.Tensor]:
    """The leaf tensors behind the param sites of a ``param_only`` trace.

    Constrained Pyro params expose their leaf via ``.unconstrained()``; plain
    ``nn.Parameter``s of a ``PyroModule`` under ``module_local_params`` are
    the leaf themselves (Pyro's own ``SVI`` fails on those).
    """
    leaves = set()
    for site in param_trace.nodes.values():
        value = site["value"]
        leaf = value.unconstrained() if hasattr(value, "unconstrained") else value
        if leaf.requires_grad:  # not the guide's active indices
            leaves.add(leaf)
    return leaves


def _is_jit(loss: Any) -> bool:
    return type(loss).__name__.startswith("Jit")


class SparseSVI(SVI):
    r"""SVI that alternates gradient steps with reselection of sparse subspaces.

    A drop-in replacement for :class:`pyro.infer.SVI`:
    ``SparseSVI(model, guide, optim, loss)`` trains with no further argument.
    ``guide`` must contain an :class:`~pyro_ssvi.AutoSparseNormal` (alone, in
    an ``AutoGuideList``, or wrapped in handlers such as
    ``poutine.scale(guide, 1/N)``; ``sparse_guides=`` names it otherwise).
    :meth:`step` takes an ordinary SVI step, then steps :attr:`subspace`, a
    :class:`~pyro_ssvi.SubspaceScheduler` that reselects every sparse site's
    active set every ``update_every`` steps (see there for the rules). The
    keyword arguments below configure it and the loss computation.

    **The schedule.** With ``num_steps`` (the planned number of steps) the
    drop fraction follows the reference implementation's cosine decay from
    ``drop_fraction`` to 0 and updates stop at 75% of training. Without it,
    updates never stop and the fraction decays as
    :math:`\alpha / (1 + u / 25)` after :math:`u` updates (the ``"inverse"``
    schedule of :mod:`pyro_ssvi.schedules`).

    Args:
        model: The Pyro model.
        guide: A guide containing an ``AutoSparseNormal``.
        optim: A :class:`pyro.optim.PyroOptim` (Adam, ClippedAdam, SGD, a
            ``PyroLRScheduler``, ...).
        loss: An ELBO (any of Pyro's, JIT ones included) or a loss callable;
            default :class:`~pyro_ssvi.elbo.TraceSparseMeanField_ELBO`
            (Pyro's ``TraceMeanField_ELBO`` without the unused
            log-densities), which uses the analytic KL on the active set.
        update_every, removal, addition, drop_fraction, drop_schedule,
        stop_updates_at, num_steps, sparse_guides, regrow_scale: Passed to
            :class:`~pyro_ssvi.SubspaceScheduler`. ``stop_updates_at`` is a
            step count.
        growth_includes_kl: Add the current KL weight times the KL's gradient
            at the active coordinates to the ``"grad"`` addition score, as
            the reference implementation does (default: the likelihood's
            gradient alone).
        kl_weight: Weight of the KL term: a float >= 0, or a callable of the
            1-based step number (for annealing). Implemented by scaling every
            latent site of model and guide, so the loss is
            ``-E[log p(y|theta)] + kl_weight * KL(q || p)``. Default 1 (the
            ELBO). The reference SSVI runs use ``0.01 * min(2e/E, 1)``.
        local_reparameterization: Compute linear and convolution layers of
            weight sites by the local reparameterisation trick (see
            :func:`pyro_ssvi.poutine.local_reparameterization`).
        sparse_compute: Compute sparse linear layers from their active
            coordinates with sparse kernels (``True``), densely (``False``),
            or by a one-time timing of both per layer (``"auto"``: sparse
            where it is at least 20% faster). The default (``None``) is
            ``"auto"`` for weights on the CPU (where it is never more than
            3% slower than dense at density >= 0.5, see the README) and dense
            elsewhere (on an NVIDIA H200 ``"auto"`` chose dense kernels for
            every layer, see the README); with local
            reparameterisation ``"auto"`` on every device. Without local
            reparameterisation the sparse path draws the same weight samples
            (:func:`pyro_ssvi.poutine.sparse_weight_sampling`).
        distributed: Data-parallel training with ``DistributedDataParallel``
            when a ``torch.distributed`` process group of more than one
            process is initialised (``None``, the default, or ``True``);
            ``False`` ignores the group. Each rank passes its own share of the
            minibatch; gradients (and the addition gradients) are averaged
            over ranks, and the active sets are checked to agree after every
            update. Seed all ranks identically and use
            ``pyro.settings.set(module_local_params=True)``.
        **kwargs: Passed to :class:`pyro.infer.SVI`.

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
        update_every: int = 100,
        removal: str | Callable[..., torch.Tensor] = "snr_abs",
        addition: str | Callable[..., torch.Tensor] = "grad",
        drop_fraction: float = 0.3,
        drop_schedule: str | Callable[[float], float] | None = None,
        stop_updates_at: int | None = None,
        num_steps: int | None = None,
        kl_weight: float | Callable[[int], float] = 1.0,
        local_reparameterization: bool = False,
        sparse_compute: bool | str | None = None,
        distributed: bool | None = None,
        sparse_guides: AutoSparseNormal | Iterable[AutoSparseNormal] | None = None,
        regrow_scale: str | float = "mean",
        growth_includes_kl: bool = False,
        **kwargs: Any,
    ) -> None:
        if loss is None:
            loss = TraceSparseMeanField_ELBO()
        super().__init__(model, guide, optim, loss, **kwargs)
        self.elbo = loss  # SVI keeps only its bound methods
        self.subspace = SubspaceScheduler(
            model,
            guide,
            optim,
            update_every=update_every,
            removal=removal,
            addition=addition,
            drop_fraction=drop_fraction,
            drop_schedule=drop_schedule,
            stop_updates_at=stop_updates_at,
            num_steps=num_steps,
            sparse_guides=sparse_guides,
            regrow_scale=regrow_scale,
            growth_kl_weight=(
                (lambda: self.current_kl_weight(self.step_count))
                if growth_includes_kl
                else 0.0
            ),
        )
        self._optimizer_step = GroupedStep(optim)
        self.num_steps = num_steps  # type: ignore[assignment]
        self.kl_weight = _check_kl_weight(kl_weight)
        self.distributed = distributed
        self._ddp: Any = None
        self.lazy_weights: LazyWeightMessenger | None = None
        #: ``"direct"`` or ``"traced"``: the path the last step took (None
        #: before the first); see :mod:`pyro_ssvi._step`.
        self.path: str | None = None
        #: Why the last step was traced (None when it was direct).
        self.why_traced: str | None = None
        self._direct_step: DirectStep | None = None
        self._growth: dict[str, torch.Tensor] | None = None
        self._path_for: Any = None
        self._logged: tuple[str | None, str | None] = (None, None)
        if local_reparameterization:
            sparse = "auto" if sparse_compute is None else sparse_compute
            self.lazy_weights = LocalReparameterizationMessenger(sparse=sparse)
        elif sparse_compute is None and not _is_jit(loss):
            self.lazy_weights = SparseWeightSamplingMessenger("auto", devices=("cpu",))
        elif sparse_compute not in (None, False):
            assert sparse_compute is not None
            self.lazy_weights = SparseWeightSamplingMessenger(sparse=sparse_compute)
        if _is_jit(loss) and (self.lazy_weights is not None or callable(kl_weight)):
            raise ValueError(
                f"SparseSVI: {type(loss).__name__} compiles the loss once, so it "
                "cannot follow local_reparameterization, sparse_compute or a "
                "kl_weight schedule; use a constant kl_weight and plain weight "
                "sampling with it, or its non-JIT version (e.g. TraceMeanField_ELBO)."
            )

    # ------------------------------------------------ the schedule, delegated
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

    @property
    def update_every(self) -> int:
        """Steps between subspace updates."""
        return self.subspace.update_every

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

        Args:
            *args, **kwargs: Passed to the model and guide.

        Returns:
            The loss (a float) before the step.
        """
        loss, params = self._loss_and_grads(args, kwargs)
        grads, self._growth = self._growth, None  # from this step's backward pass
        self._optimizer_step(params)
        for p in params:  # as pyro's zero_grads, without allocating zeros
            p.grad = None
        with self._weights_context():  # a growth pass sees the weights as the loss
            self.subspace._step(args, kwargs, grads)
        return loss

    def update_subspace(self, *args: Any, **kwargs: Any) -> SubspaceUpdate:
        """Reselect every sparse site's subspace now, outside the schedule.

        See :meth:`SubspaceScheduler.update`; the model's arguments are
        needed for ``addition="grad"``.
        """
        return self.subspace.update(*args, **kwargs)

    def evaluate_loss(self, *args: Any, **kwargs: Any) -> float:
        """The loss (with the current KL weight) without taking a step."""
        with self._loss_context(), torch.no_grad():
            step = self._direct(args, kwargs)
            if step is not None:
                num, total = self.elbo.num_particles, 0.0
                for _ in range(num):
                    result = step(args, kwargs)
                    if result is None:
                        break
                    total += torch_item(result[0]) / num
                else:
                    return total
            return super().evaluate_loss(*args, **kwargs)

    @contextmanager
    def _loss_context(self) -> Iterator[None]:
        """KL weight and local reparameterisation around a loss computation."""
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
        """The direct step of this model, guide and loss, or None (traced).

        Chosen at the first step (after setting the guide up, as its first
        call would) and again when the guide is set up anew; the choice is
        :attr:`path` and one log line.
        """
        guide, key = self.guide, None
        if isinstance(guide, AutoSparseNormal):
            if guide.prototype_trace is None and _takes_direct_step(self.elbo):
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

    def _loss_and_grads(
        self, args: tuple, kwargs: dict
    ) -> tuple[float, set[torch.Tensor]]:
        if self.distributed is not False and is_distributed():
            return self._ddp_loss_and_grads(args, kwargs)
        with self._loss_context():
            direct = self._direct_loss_and_grads(args, kwargs)
            if direct is not None:
                return direct
            with poutine.trace(param_only=True) as capture:
                try:
                    loss = self.loss_and_grads(self.model, self.guide, *args, **kwargs)
                except ValueError as e:
                    # Pyro's validation rejects NaN/inf distribution parameters
                    # before a loss exists; report it like a non-finite loss.
                    if not is_invalid_values_error(e):
                        raise
                    self._raise_non_finite("not finite", _trainable(capture.trace), e)
        params = _trainable(capture.trace)
        loss = torch_item(loss)
        if not math.isfinite(loss):
            self._raise_non_finite(loss, params)
        return loss, params

    def _direct_loss_and_grads(
        self, args: tuple, kwargs: dict
    ) -> tuple[float, set[torch.Tensor]] | None:
        """The loss and gradients by the direct step, or None to trace.

        Particles are drawn one after the other, each backpropagated with
        weight ``1 / num_particles``, as Pyro's ELBOs do.
        """
        step = self._direct(args, kwargs)
        if step is None:
            return None
        probes = self._probes(step)
        num = self.elbo.num_particles
        total, trained = 0.0, set[torch.Tensor]()
        for _ in range(num):
            try:
                result = step(args, kwargs, probes)
            except ValueError as e:  # Pyro's validation saw NaN/inf, as below
                if not is_invalid_values_error(e):
                    raise
                self._raise_non_finite("not finite", trained, e)
            if result is None:  # a foreign handler around this call: trace it
                self.path, self.why_traced = "traced", "a foreign handler is active"
                return None
            loss_tensor, params = result
            trained.update(params)
            loss = torch_item(loss_tensor)
            if not math.isfinite(loss):
                self._raise_non_finite(loss, trained)
            (loss_tensor / num if num > 1 else loss_tensor).backward()
            total += loss / num
        self.path, self.why_traced = "direct", None
        if probes is not None:
            self._growth = self._growth_gradients(step.guide, probes)
        return total, trained

    def _probes(self, step: DirectStep) -> dict[str, torch.Tensor] | None:
        """Zero probes on the sparse weights when the update after this step
        reads the growth gradient: it is then this step's gradient with
        respect to every coordinate, as in the reference implementation (the
        backward pass just before the update), and no extra pass is run."""
        if not self.subspace.wants_gradients() or self.subspace.sparse_guides != [
            step.guide
        ]:
            return None
        guide = step.guide
        return {
            name: torch.zeros(
                guide.site_shape(name),
                dtype=guide._stored("locs", name).dtype,
                device=guide._stored("locs", name).device,
                requires_grad=True,
            )
            for name in guide.sparse_site_names()
        }

    def _growth_gradients(
        self, guide: AutoSparseNormal, probes: dict[str, torch.Tensor]
    ) -> dict[str, torch.Tensor]:
        """The probes' gradients: ``dNLL/dtheta``; with ``growth_includes_kl``
        the active coordinates read the mean's gradient, ``dNLL/dtheta +
        w dKL/dmu`` (the training loss's own KL weight ``w``)."""
        weight = self.subspace.growth_kl_weight
        out = {}
        for name, probe in probes.items():
            grad = torch.zeros_like(probe) if probe.grad is None else probe.grad
            loc = guide._stored("locs", name)
            if (callable(weight) or weight) and loc.grad is not None:
                flat = grad.reshape(-1).index_copy(0, guide._indices(name), loc.grad)
                grad = flat.reshape(grad.shape)
            out[name] = grad
        return out

    # ---------------------------------------------------------- distributed
    def _ddp_module(self, args: tuple, kwargs: dict) -> Any:
        """The loss in DistributedDataParallel (built on first use).

        Broadcasting rank 0's parameters and buffers at construction gives
        every rank the same initial values and active sets.
        """
        if self._ddp is None:
            with torch.no_grad():
                for guide in self.subspace.sparse_guides:
                    guide.setup(*args, **kwargs)
                if not isinstance(self.guide, AutoSparseNormal):
                    self.guide(*args, **kwargs)  # other parts' lazy parameters
            if not isinstance(self.elbo, ELBO):
                raise TypeError(
                    "SparseSVI: distributed training needs an ELBO instance as loss "
                    f"(it is wrapped in DistributedDataParallel), got {self.elbo!r}."
                )
            self._ddp = wrap_ddp(DataParallelLoss(self.model, self.guide, self.elbo))
        return self._ddp

    def _ddp_loss_and_grads(
        self, args: tuple, kwargs: dict
    ) -> tuple[float, set[torch.Tensor]]:
        ddp = self._ddp_module(args, kwargs)
        params = {p for p in ddp.parameters() if p.requires_grad}
        with self._loss_context():
            step = self._direct(args, kwargs)
            probes = None if step is None else self._probes(step)
            ddp.module.step, ddp.module.probes = step, probes
            surrogate, loss = data_parallel_loss(ddp, args, kwargs)
            if surrogate is None or not math.isfinite(loss):
                self._raise_non_finite("not finite on at least one rank", params)
            assert surrogate is not None
            surrogate.backward()  # DDP averages the gradients over ranks
        if step is not None and probes is not None:
            grads = self._growth_gradients(step.guide, probes)
            self._growth = {n: all_reduce_mean_(g) for n, g in grads.items()}
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
        """Progress of the schedule (step count and update history).

        The guide and optimiser have their own state; save them too.
        """
        state = self.subspace.state_dict()
        if self.lazy_weights is not None:
            state["paths"] = self.lazy_weights.state_dict()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` output, e.g. to resume training."""
        unknown = set(state) - {"step_count", "updates", "paths"}
        if unknown:
            raise ValueError(
                "SparseSVI.load_state_dict expects keys {'step_count', 'updates'} "
                f"(and 'paths'), got {sorted(state)}."
            )
        self.subspace.load_state_dict(state)
        if "paths" in state and self.lazy_weights is not None:
            self.lazy_weights.load_state_dict(state["paths"])


def _takes_direct_step(loss: Any) -> bool:
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
