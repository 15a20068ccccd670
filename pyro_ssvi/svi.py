"""``SparseSVI``: stochastic variational inference with subspace reselection.

Used exactly like :class:`pyro.infer.SVI`::

    guide = AutoSparseNormal(model, density=0.1)
    svi = SparseSVI(model, guide, pyro.optim.Adam({"lr": 1e-3}),
                    num_steps=5000)
    for step in range(5000):
        loss = svi.step(x, y)
    svi.num_updates, svi.updates[-1]

Every ``update_every`` steps (until ``stop_updates_at``) each sparse site drops
its ``floor(r_t k)`` lowest-scoring active coordinates and activates as many
inactive ones with the highest addition score (Li et al., ICLR 2024, Alg. 1).
"""

from __future__ import annotations

import math
import warnings
from contextlib import ExitStack, contextmanager
from typing import Any, Callable, Iterator, NamedTuple

import torch
from pyro import poutine
from pyro.infer import ELBO, SVI, Trace_ELBO
from pyro.infer.util import torch_item, zero_grads
from pyro.optim import PyroOptim

from .criteria import get_criterion, removal_scores, top_k
from .distributed import (
    all_reduce_mean_,
    check_indices_agree,
    is_distributed,
    wrap_ddp,
)
from .distributions import SparseNormal
from .elbo import TraceSparseMeanField_ELBO
from .guides import AutoSparseNormal
from .poutine import (
    LatentScaleMessenger,
    LazyWeightMessenger,
    LocalReparameterizationMessenger,
    SparseWeightSamplingMessenger,
)
from .schedules import get_schedule

__all__ = ["ADDITIONS", "SparseSVI", "SubspaceUpdate"]

#: Named addition rules: ``"grad"`` activates the inactive coordinates with the
#: largest ``|dL/dtheta|`` on the minibatch of the update step; ``"random"``
#: activates uniformly random inactive coordinates.
ADDITIONS = ("grad", "random")

AdditionFn = Callable[[str, SparseNormal], torch.Tensor]


class SubspaceUpdate(NamedTuple):
    """Record of one subspace reselection.

    Attributes:
        step: Number of SVI steps taken when the update ran.
        drop_fraction: The fraction ``r_t`` of each active set put up for
            replacement.
        num_dropped: ``{site: floor(r_t * k)}``, coordinates removed (some
            may be re-added at once).
        num_swapped: ``{site: n}``, coordinates that actually changed: newly
            active ones (as many became inactive).
    """

    step: int
    drop_fraction: float
    num_dropped: dict[str, int]
    num_swapped: dict[str, int]


def _trainable(param_trace: Any) -> set[torch.Tensor]:
    """The leaf tensors behind the param sites of a ``param_only`` trace.

    Constrained Pyro params expose their leaf via ``.unconstrained()``; plain
    ``nn.Parameter``s of a ``PyroModule`` under ``module_local_params`` are
    the leaf themselves (Pyro's own ``SVI`` fails on those).
    """
    leaves = set()
    for site in param_trace.nodes.values():
        value = site["value"]
        leaves.add(value.unconstrained() if hasattr(value, "unconstrained") else value)
    return leaves


def _check_int(name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"SparseSVI: {name} must be an int, got {value!r}.")
    if value < minimum:
        raise ValueError(f"SparseSVI: {name} must be >= {minimum}, got {value!r}.")
    return value


class SparseSVI(SVI):
    r"""SVI that alternates gradient steps with reselection of sparse subspaces.

    A drop-in replacement for :class:`pyro.infer.SVI` for guides that contain
    :class:`~pyro_ssvi.AutoSparseNormal` (alone or inside an
    :class:`~pyro.infer.autoguide.AutoGuideList`). :meth:`step` takes an
    ordinary SVI step; when ``step_count`` reaches a multiple of
    ``update_every`` below ``stop_updates_at``, it then reselects every sparse
    site's active set:

    1. remove the :math:`\lfloor r_t k \rfloor` active coordinates with the
       lowest ``removal`` score, where
       :math:`r_t = \alpha\, s(t / T_\text{stop})` with
       :math:`\alpha` = ``drop_fraction`` and :math:`s` = ``drop_schedule``
       (cosine by default: :math:`r_t = \tfrac{\alpha}{2}(1 + \cos \pi t / T)`);
    2. add as many coordinates, not among those kept, with the highest
       ``addition`` score (``"grad"``: :math:`|\partial L / \partial\theta_j|`
       on the same minibatch; ``"random"``: uniformly random).

    Each site keeps exactly ``k`` active coordinates. New coordinates start at
    loc 0 and at the mean unconstrained scale of the kept ones; a coordinate
    removed and re-added at once keeps its values; the optimiser moments of
    new coordinates are zeroed. Parameters are edited in place, so Pyro's
    per-parameter optimisers stay valid. Unlike the reference implementation,
    the update step's minibatch is also used for an ordinary parameter step.

    Args:
        model: The Pyro model.
        guide: An ``AutoSparseNormal`` or a guide containing one.
        optim: A :class:`pyro.optim.PyroOptim` (Adam, ClippedAdam, SGD, a
            ``PyroLRScheduler``, ...).
        loss: An ELBO; default
            :class:`~pyro_ssvi.elbo.TraceSparseMeanField_ELBO` (Pyro's
            ``TraceMeanField_ELBO`` without the unused log-densities), which
            uses the analytic KL on the active set.
        update_every: Steps between subspace updates.
        removal: A criterion name from :data:`pyro_ssvi.criteria.CRITERIA`
            or a callable ``(loc, scale) -> scores``.
        addition: ``"grad"``, ``"random"``, or a callable
            ``(site_name, posterior) -> dense scores`` of shape ``(numel,)``.
        drop_fraction: Initial fraction :math:`\alpha` in ``[0, 1)``.
        drop_schedule: ``"cosine"``, ``"linear"``, ``"constant"`` or a
            callable ``progress -> multiplier``.
        stop_updates_at: Step from which no more updates happen. Default:
            ``floor(0.75 * num_steps)`` as in the reference implementation.
        num_steps: Planned number of training steps (sets the default stop).
        kl_weight: Weight of the KL term: a float >= 0, or a callable of the
            1-based step number (for annealing). Implemented by scaling every
            latent site of model and guide, so the loss is
            ``-E[log p(y|theta)] + kl_weight * KL(q || p)``. Default 1 (the
            ELBO). The reference SSVI runs use ``0.01 * min(2e/E, 1)``.
        local_reparameterization: Compute linear and convolution layers of
            weight sites by the local reparameterisation trick (see
            :func:`pyro_ssvi.poutine.local_reparameterization`): lower-variance
            gradients, and no dense weight sample per step.
        sparse_compute: Compute sparse linear layers from their active
            coordinates with sparse kernels (``True``), densely (``False``),
            or by a one-time timing of both per layer (``"auto"``). With local
            reparameterisation the default (``None``) is ``"auto"``; without
            it, ``None`` samples dense weights as usual and any other value
            uses :func:`pyro_ssvi.poutine.sparse_weight_sampling` (the same
            samples, computed sparsely). The per-layer choice is in
            ``svi.lazy_weights.decisions``.
        distributed: Data-parallel training with ``DistributedDataParallel``
            when a ``torch.distributed`` process group of more than one
            process is initialised (``None``, the default, or ``True``);
            ``False`` ignores the group. Each rank passes its own share of
            the minibatch; gradients (and the gradients used for addition) are
            averaged over ranks, and the active sets are checked to agree after
            every update. Seed all ranks identically and use
            ``pyro.settings.set(module_local_params=True)`` (see
            :mod:`pyro_ssvi.distributed`).
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
        removal: str | Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = "snr_abs",
        addition: str | AdditionFn = "grad",
        drop_fraction: float = 0.3,
        drop_schedule: str | Callable[[float], float] = "cosine",
        stop_updates_at: int | None = None,
        num_steps: int | None = None,
        kl_weight: float | Callable[[int], float] = 1.0,
        local_reparameterization: bool = False,
        sparse_compute: bool | str | None = None,
        distributed: bool | None = None,
        **kwargs: Any,
    ) -> None:
        if loss is None:
            loss = TraceSparseMeanField_ELBO()
        elif type(loss) is Trace_ELBO:
            warnings.warn(
                "SparseSVI with Trace_ELBO estimates the KL by Monte Carlo and scores "
                "the zeros off the active set under the prior; use "
                "TraceMeanField_ELBO() for the exact KL on the active subspace.",
                UserWarning,
                stacklevel=2,
            )
        super().__init__(model, guide, optim, loss, **kwargs)
        self.elbo = loss  # SVI keeps only its bound methods
        self._sparse_guides = (
            [m for m in guide.modules() if isinstance(m, AutoSparseNormal)]
            if isinstance(guide, torch.nn.Module)
            else []
        )
        if not self._sparse_guides:
            raise TypeError(
                "SparseSVI needs an AutoSparseNormal guide (alone or inside an "
                f"AutoGuideList), got {type(guide).__name__}; use pyro.infer.SVI "
                "for other guides."
            )
        self.update_every = _check_int("update_every", update_every, 1)
        self.removal = get_criterion(removal)
        if isinstance(addition, str) and addition not in ADDITIONS:
            raise ValueError(
                f"SparseSVI: unknown addition {addition!r}; choose one of {ADDITIONS} "
                "or pass a callable (site_name, posterior) -> scores."
            )
        if not isinstance(addition, str) and not callable(addition):
            raise TypeError(
                f"SparseSVI: addition must be a name or callable, got {addition!r}."
            )
        self.addition = addition
        if isinstance(drop_fraction, bool) or not isinstance(
            drop_fraction, (int, float)
        ):
            raise TypeError(
                f"SparseSVI: drop_fraction must be a float, got {drop_fraction!r}."
            )
        if not 0.0 <= drop_fraction < 1.0:
            raise ValueError(
                f"SparseSVI: drop_fraction must be in [0, 1), got {drop_fraction!r}; "
                "the reference value is 0.3."
            )
        self.drop_fraction = float(drop_fraction)
        self.drop_schedule = get_schedule(drop_schedule)
        if num_steps is not None:
            _check_int("num_steps", num_steps, 1)
        if stop_updates_at is not None:
            _check_int("stop_updates_at", stop_updates_at, 0)
        elif num_steps is not None:
            stop_updates_at = int(0.75 * num_steps)
        elif drop_schedule not in ("constant",):
            raise ValueError(
                "SparseSVI: a decaying drop_schedule needs to know when training "
                "ends; pass num_steps=<total steps> (updates stop at 75% of it) or "
                "stop_updates_at=<step>, or use drop_schedule='constant'."
            )
        self.num_steps = num_steps  # type: ignore[assignment]
        self.stop_updates_at = stop_updates_at
        if not callable(kl_weight):
            if isinstance(kl_weight, bool) or not isinstance(kl_weight, (int, float)):
                raise TypeError(
                    "SparseSVI: kl_weight must be a float or a callable step -> "
                    f"float, got {kl_weight!r}."
                )
            if not (math.isfinite(kl_weight) and kl_weight >= 0):
                raise ValueError(
                    f"SparseSVI: kl_weight must be finite and >= 0, got {kl_weight!r}."
                )
        self.kl_weight = kl_weight
        self.distributed = distributed
        self._ddp: Any = None
        self.lazy_weights: LazyWeightMessenger | None = None
        if local_reparameterization:
            sparse = "auto" if sparse_compute is None else sparse_compute
            self.lazy_weights = LocalReparameterizationMessenger(sparse=sparse)
        elif sparse_compute not in (None, False):
            assert sparse_compute is not None
            self.lazy_weights = SparseWeightSamplingMessenger(sparse=sparse_compute)
        self.step_count = 0
        self.updates: list[SubspaceUpdate] = []

    # ------------------------------------------------------------ schedule
    @property
    def num_updates(self) -> int:
        """Number of subspace updates performed so far."""
        return len(self.updates)

    def current_drop_fraction(self, step: int | None = None) -> float:
        """The drop fraction :math:`r_t` at ``step`` (default: the current step)."""
        t = self.step_count if step is None else step
        horizon = self.stop_updates_at
        progress = 0.0 if not horizon else t / horizon
        return self.drop_fraction * float(self.drop_schedule(progress))

    def _update_due(self, step: int) -> bool:
        if step % self.update_every:
            return False
        return self.stop_updates_at is None or step < self.stop_updates_at

    # ----------------------------------------------------------------- step
    @contextmanager
    def _capturing(self, enabled: bool) -> Iterator[list[dict[str, torch.Tensor]]]:
        captures: list[dict[str, torch.Tensor]] = []
        if enabled:
            for g in self._sparse_guides:
                g._grad_capture = {}
                captures.append(g._grad_capture)
        try:
            yield captures
        finally:
            for g in self._sparse_guides:
                g._grad_capture = None

    def current_kl_weight(self, step: int | None = None) -> float:
        """The KL weight at ``step`` (default: the step about to be taken)."""
        step = self.step_count + 1 if step is None else step
        weight = self.kl_weight
        return float(weight(step)) if callable(weight) else float(weight)

    @contextmanager
    def _kl_scaled(self) -> Iterator[None]:
        """KL weight and local reparameterisation around a loss computation."""
        weight = self.current_kl_weight()
        with ExitStack() as stack:
            if weight != 1.0:
                stack.enter_context(LatentScaleMessenger(weight))
            if self.lazy_weights is not None:
                stack.enter_context(self.lazy_weights)
            yield

    def evaluate_loss(self, *args: Any, **kwargs: Any) -> float:
        """The loss (with the current KL weight) without taking a step."""
        with self._kl_scaled():
            return super().evaluate_loss(*args, **kwargs)

    def _loss_and_grads(
        self, capture: bool, args: tuple, kwargs: dict
    ) -> tuple[float, set[torch.Tensor], list[dict[str, torch.Tensor]]]:
        if self._use_ddp():
            return self._ddp_loss_and_grads(capture, args, kwargs)
        with self._capturing(capture) as captures, self._kl_scaled():
            with poutine.trace(param_only=True) as param_capture:
                try:
                    loss = self.loss_and_grads(self.model, self.guide, *args, **kwargs)
                except ValueError as e:
                    # Pyro's validation rejects NaN/inf distribution parameters
                    # before a loss exists; report it like a non-finite loss.
                    if "invalid values" not in str(e):
                        raise
                    self._raise_non_finite("not finite", param_capture.trace, e)
        loss = torch_item(loss)
        if not math.isfinite(loss):
            self._raise_non_finite(loss, param_capture.trace)
        return loss, _trainable(param_capture.trace), captures

    # ---------------------------------------------------------- distributed
    def _use_ddp(self) -> bool:
        return self.distributed is not False and is_distributed()

    def _ddp_module(self, args: tuple, kwargs: dict) -> Any:
        """Pyro's ELBOModule in DistributedDataParallel (built on first use).

        Broadcasting rank 0's parameters and buffers at construction gives
        every rank the same initial values and active sets.
        """
        if self._ddp is None:
            with torch.no_grad():
                for guide in self._sparse_guides:
                    if guide.prototype_trace is None:
                        guide.setup(*args, **kwargs)
                if not isinstance(self.guide, AutoSparseNormal):
                    self.guide(*args, **kwargs)  # other parts' lazy parameters
            if not isinstance(self.elbo, ELBO):
                raise TypeError(
                    "SparseSVI: distributed training needs an ELBO instance as loss "
                    f"(it is wrapped in DistributedDataParallel), got {self.elbo!r}."
                )
            self._ddp = wrap_ddp(self.elbo(self.model, self.guide))
        return self._ddp

    def _ddp_loss_and_grads(
        self, capture: bool, args: tuple, kwargs: dict
    ) -> tuple[float, set[torch.Tensor], list[dict[str, torch.Tensor]]]:
        ddp = self._ddp_module(args, kwargs)
        params = {p for p in ddp.parameters() if p.requires_grad}
        with self._capturing(capture) as captures, self._kl_scaled():
            try:
                surrogate = ddp(*args, **kwargs)
                failed = 0.0
            except ValueError as e:  # Pyro's validation saw NaN/inf
                if "invalid values" not in str(e):
                    raise
                surrogate, failed = None, float("nan")
            # Every rank must agree before anyone raises (or they deadlock).
            value = failed if surrogate is None else surrogate.item()
            device = next(iter(params)).device
            loss = all_reduce_mean_(torch.tensor(value, device=device))
            if not math.isfinite(float(loss)):
                zero_grads(params)
                raise FloatingPointError(
                    f"SparseSVI: the loss is not finite at step {self.step_count + 1} "
                    "on at least one rank; no parameter or subspace was changed. "
                    "Lower the learning rate, check the data for NaN/inf, or use "
                    "a smaller init_scale."
                )
            assert surrogate is not None
            surrogate.backward()  # DDP averages the gradients over ranks
        for store in captures:  # dL/dtheta for addition: the global batch's
            for grad in store.values():
                all_reduce_mean_(grad)
        return float(loss), params, captures

    def _raise_non_finite(
        self, loss: Any, trace: Any, cause: BaseException | None = None
    ) -> None:
        zero_grads(_trainable(trace))
        raise FloatingPointError(
            f"SparseSVI: the loss is {loss} at step {self.step_count + 1}; no "
            "parameter or subspace was changed. Lower the learning rate, check "
            "the data for NaN/inf, or use a smaller init_scale."
        ) from cause

    def step(self, *args: Any, **kwargs: Any) -> float:
        """Take one SVI step, then reselect the subspaces if one is due.

        Args:
            *args, **kwargs: Passed to the model and guide.

        Returns:
            The loss (a float) before the step.
        """
        next_step = self.step_count + 1
        due = self._update_due(next_step)
        capture = due and self.addition == "grad"
        loss, params, captures = self._loss_and_grads(capture, args, kwargs)
        self.optim(params)
        zero_grads(params)
        self.step_count = next_step
        if due:
            self._reselect(self.current_drop_fraction(), captures)
        return loss

    def update_subspace(self, *args: Any, **kwargs: Any) -> SubspaceUpdate:
        """Reselect every sparse site's subspace now, outside the schedule.

        Uses the drop fraction of the current step. With ``addition="grad"``
        the model arguments are required: one forward and backward pass on
        them gives the gradients (no parameter step is taken).

        Returns:
            The :class:`SubspaceUpdate` record (also appended to ``updates``).
        """
        captures: list[dict[str, torch.Tensor]] = []
        if self.addition == "grad":
            if not args and not kwargs:
                raise ValueError(
                    "SparseSVI.update_subspace: addition='grad' needs a minibatch; "
                    "call update_subspace(*model_args)."
                )
            _, params, captures = self._loss_and_grads(True, args, kwargs)
            zero_grads(params)
        return self._reselect(self.current_drop_fraction(), captures)

    # ---------------------------------------------------------- reselection
    def _reselect(
        self, fraction: float, captures: list[dict[str, torch.Tensor]]
    ) -> SubspaceUpdate:
        dropped: dict[str, int] = {}
        swapped: dict[str, int] = {}
        for i, guide in enumerate(self._sparse_guides):
            grads = captures[i] if captures else {}
            prefix = "" if len(self._sparse_guides) == 1 else f"{guide._pyro_name}."
            for name in guide.sparse_site_names():
                n_drop, n_new = self._reselect_site(
                    guide, name, fraction, grads.get(name)
                )
                dropped[prefix + name] = n_drop
                swapped[prefix + name] = n_new
        record = SubspaceUpdate(self.step_count, fraction, dropped, swapped)
        self.updates.append(record)
        if self._use_ddp():
            check_indices_agree(self._sparse_guides, self.step_count)
        return record

    def _addition_scores(
        self, name: str, post: SparseNormal, grad: torch.Tensor | None
    ) -> torch.Tensor:
        numel = post.event_shape.numel()
        if self.addition == "random":
            return torch.rand(numel, device=post.loc.device)
        if self.addition == "grad":
            if grad is None:
                raise RuntimeError(
                    f"SparseSVI: no gradient was captured for site {name!r}; the model "
                    "must use the sampled value so dL/dtheta exists."
                )
            grad = grad.reshape(-1, numel)  # (particles or 1, numel)
            total = grad[0] if grad.shape[0] == 1 else grad.sum(0)
            # ranking only: no float64; our own buffer, so in place
            return total.abs_() if grad.shape[0] == 1 else total.abs()
        scores = self.addition(name, post).detach().clone()  # type: ignore[operator]
        if scores.shape != (numel,):
            raise ValueError(
                "SparseSVI: the addition callable returned shape "
                f"{tuple(scores.shape)} for site {name!r}; expected ({numel},)."
            )
        return scores.to(torch.float64)

    @torch.no_grad()
    def _reselect_site(
        self,
        guide: AutoSparseNormal,
        name: str,
        fraction: float,
        grad: torch.Tensor | None,
    ) -> tuple[int, int]:
        loc_u, scale_u = guide.unconstrained_params(name)
        if not (
            bool(torch.isfinite(loc_u).all()) and bool(torch.isfinite(scale_u).all())
        ):
            raise FloatingPointError(
                f"SparseSVI: the parameters of site {name!r} are not finite at step "
                f"{self.step_count}; the subspace was not changed. Lower the learning "
                "rate or use a smaller init_scale."
            )
        try:
            post = guide.get_posterior(name)
        except ValueError as e:  # e.g. a scale that underflowed to 0
            raise FloatingPointError(
                f"SparseSVI: the posterior of site {name!r} is invalid at step "
                f"{self.step_count} ({str(e).splitlines()[0]}); lower the "
                "learning rate."
            ) from e
        assert isinstance(post, SparseNormal)
        idx = guide._get_indices(name)
        k = idx.numel()
        n_drop = int(math.floor(fraction * k))
        if n_drop == 0:
            return 0, 0
        scores = removal_scores(self.removal, post.loc.detach(), post.scale.detach())
        keep_pos = top_k(scores, k - n_drop)
        add_scores = self._addition_scores(name, post, grad)
        add_scores[idx[keep_pos]] = -math.inf
        grow = top_k(add_scores, n_drop)
        new_idx, order = torch.cat([idx[keep_pos], grow]).sort()
        # Where each new coordinate sat in the old active set, if it was active:
        # kept ones come from keep_pos, grown ones may be re-added old ones.
        grow_pos = torch.searchsorted(idx, grow).clamp_(max=k - 1)
        grow_was = idx[grow_pos] == grow
        old_pos = torch.cat([keep_pos, grow_pos])[order]
        was_active = torch.cat([torch.ones_like(keep_pos, dtype=torch.bool), grow_was])
        was_active = was_active[order]
        new_scale = scale_u[keep_pos].mean()
        loc_u.copy_(torch.where(was_active, loc_u[old_pos], torch.zeros_like(loc_u)))
        scale_u.copy_(torch.where(was_active, scale_u[old_pos], new_scale))
        for param in (loc_u, scale_u):
            self._move_optimizer_state(param, old_pos, was_active)
        idx.copy_(new_idx)
        return n_drop, int((~was_active).sum())

    def _move_optimizer_state(
        self, param: torch.Tensor, old_pos: torch.Tensor, was_active: torch.Tensor
    ) -> None:
        optimizer = self.optim.optim_objs.get(param)
        if optimizer is None:
            return
        optimizer = getattr(optimizer, "optimizer", optimizer)  # LR schedulers
        state = optimizer.state.get(param, {})
        for key, value in state.items():
            if torch.is_tensor(value) and value.shape == param.shape:
                moved = torch.where(was_active, value[old_pos], torch.zeros_like(value))
                value.copy_(moved)
        if param.grad is not None:
            param.grad.zero_()

    # --------------------------------------------------------- serialisation
    def state_dict(self) -> dict[str, Any]:
        """Progress of the schedule (step count and update history).

        The guide and optimiser have their own state; save them too.
        """
        state: dict[str, Any] = {
            "step_count": self.step_count,
            "updates": [list(u) for u in self.updates],
        }
        if self.lazy_weights is not None:
            state["paths"] = self.lazy_weights.state_dict()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` output, e.g. to resume training."""
        if (
            not {"step_count", "updates"}
            <= set(state)
            <= {
                "step_count",
                "updates",
                "paths",
            }
        ):
            raise ValueError(
                "SparseSVI.load_state_dict expects keys {'step_count', 'updates'} "
                f"(and 'paths'), got {sorted(state)}."
            )
        self.step_count = _check_int("step_count", state["step_count"], 0)
        self.updates = [SubspaceUpdate(*u) for u in state["updates"]]
        if "paths" in state and self.lazy_weights is not None:
            self.lazy_weights.load_state_dict(state["paths"])
