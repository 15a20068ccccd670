"""``SubspaceScheduler``: SSVI's subspace reselection, for any training loop.

Stepped after every optimiser step, like a torch LR scheduler, with the step's
minibatch; it edits the guide and the optimiser's moments."""

from __future__ import annotations

import warnings
from typing import Any, Callable, Iterable, NamedTuple

import torch
from torch import Tensor
from torch.distributions import transform_to

from ._optim import check_optimizer, move_optimizer_state
from ._step import DirectStep, Unsupported, direct_step
from .criteria import get_criterion, removal_scores
from .distributed import check_indices_agree, is_distributed
from .distributions import SparseNormal
from .growth import (
    addition_scores,
    get_addition,
    likelihood_gradients,
    needs_grad,
)
from .guides import AutoSparseNormal
from .schedules import drop_fraction_at, get_schedule, needs_horizon, update_due
from .selection import move, num_to_swap, regrown_scale, reselect

__all__ = ["SubspaceScheduler", "SubspaceUpdate", "find_sparse_guides"]


class SubspaceUpdate(NamedTuple):
    """Record of one subspace reselection.

    ``step``: optimisation steps taken; ``drop_fraction``: :math:`r_t`;
    ``num_dropped``: ``{site: floor(r_t * k)}`` removed (some re-added at once);
    ``num_swapped``: ``{site: n}`` newly active (as many became inactive).
    """

    step: int
    drop_fraction: float
    num_dropped: dict[str, int]
    num_swapped: dict[str, int]


def find_sparse_guides(guide: Any) -> list[AutoSparseNormal]:
    """Every :class:`~pyro_ssvi.AutoSparseNormal` inside ``guide``: in
    ``nn.Module`` children and in handler wrappers such as
    ``poutine.scale(guide, 1/N)`` (``functools.partial`` objects)."""
    found: list[AutoSparseNormal] = []
    seen: set[int] = set()

    def visit(obj: Any, depth: int) -> None:
        if id(obj) in seen or depth > 20:
            return
        seen.add(id(obj))
        if isinstance(obj, torch.nn.Module):
            found.extend(m for m in obj.modules() if isinstance(m, AutoSparseNormal))
            return
        for attr in ("args", "keywords", "func", "__wrapped__", "__self__"):
            inner = getattr(obj, attr, None)
            if isinstance(inner, dict):
                inner = tuple(inner.values())
            for item in inner if isinstance(inner, tuple) else (inner,):
                if item is not None and (callable(item) or isinstance(item, tuple)):
                    visit(item, depth + 1)

    visit(guide, 0)
    return list(dict.fromkeys(found))


class SubspaceScheduler:
    r"""Reselects the sparse subspaces of a guide on a schedule.

    :meth:`step` counts one optimisation step; at every step ``t`` that is a
    multiple of ``update_every`` below ``stop_updates_at`` it calls
    :meth:`update`, which for every sparse site:

    1. removes the :math:`s = \lfloor r_t k \rfloor` active coordinates with
       the lowest ``removal`` score (:data:`pyro_ssvi.criteria.CRITERIA`;
       the SNR of :math:`|\theta|` by default), :math:`r_t` from
       :func:`pyro_ssvi.schedules.drop_fraction_at`;
    2. adds :math:`s` coordinates, among all not kept, with the highest
       ``addition`` score (``"grad"``: :math:`|\partial L/\partial\theta_j|`,
       see :mod:`pyro_ssvi.growth`; ``"random"``);
    3. moves the kept coordinates' means, scales and optimiser moments in place
       (:mod:`pyro_ssvi.selection`); new ones start at mean 0, the
       :func:`~pyro_ssvi.selection.regrown_scale` and zero moments.

    ``optimizer``: a torch optimiser or LR scheduler, a ``PyroOptim``, a list
    of these, or None. ``drop_schedule``: a name from
    :data:`~pyro_ssvi.schedules.SCHEDULES` or a callable, default ``"cosine"``
    with a stop step (``stop_updates_at``, default ``floor(0.75 * num_steps)``),
    else ``"inverse"``. ``growth_includes_kl``: add ``kl_weight`` (a float or a
    callable of the step) times :math:`\partial\mathrm{KL}/\partial\mu_j` of
    the active coordinates to the ``"grad"`` score, as the reference does.

    Raises:
        ValueError, TypeError: For invalid arguments, with the fix named.
    """

    def __init__(
        self,
        model: Callable[..., Any],
        guide: Callable[..., Any],
        optimizer: Any = None,
        *,
        update_every: int = 100,
        removal: str | Callable[..., Tensor] = "snr_abs",
        addition: str | Callable[..., Tensor] = "grad",
        drop_fraction: float = 0.3,
        drop_schedule: str | Callable[[float], float] | None = None,
        stop_updates_at: int | None = None,
        num_steps: int | None = None,
        sparse_guides: AutoSparseNormal | Iterable[AutoSparseNormal] | None = None,
        regrow_scale: str | float = "mean",
        kl_weight: float | Callable[[int], float] = 1.0,
        growth_includes_kl: bool = False,
    ) -> None:
        self.model, self.guide, self.optimizer = model, guide, optimizer
        check_optimizer(optimizer)
        self.kl_weight, self.growth_includes_kl = kl_weight, bool(growth_includes_kl)
        if regrow_scale != "mean" and not (
            isinstance(regrow_scale, (int, float))
            and not isinstance(regrow_scale, bool)
            and regrow_scale > 0
        ):
            raise ValueError(
                "SubspaceScheduler: regrow_scale must be 'mean' or a standard "
                f"deviation > 0, got {regrow_scale!r}."
            )
        self.regrow_scale = regrow_scale
        if isinstance(sparse_guides, AutoSparseNormal):
            sparse_guides = [sparse_guides]
        self.sparse_guides = (
            find_sparse_guides(guide) if sparse_guides is None else list(sparse_guides)
        )
        if not self.sparse_guides or not all(
            isinstance(g, AutoSparseNormal) for g in self.sparse_guides
        ):
            raise TypeError(
                "SubspaceScheduler: the guide needs an AutoSparseNormal inside "
                "(alone, in an AutoGuideList, or wrapped in poutine handlers), but "
                f"{_describe(guide)} has none; pass sparse_guides=... if it is "
                "hidden elsewhere, or use pyro.infer.SVI for other guides."
            )
        self.update_every = _check_int("update_every", update_every, 1)
        self.removal = removal  # type: ignore[assignment]
        self.addition = addition  # type: ignore[assignment]
        if isinstance(drop_fraction, bool) or not 0.0 <= drop_fraction < 1.0:
            raise ValueError(
                "SubspaceScheduler: drop_fraction must be in [0, 1), got "
                f"{drop_fraction!r}."
            )
        self.drop_fraction = float(drop_fraction)
        if num_steps is not None:
            _check_int("num_steps", num_steps, 1)
        if stop_updates_at is None and num_steps is not None:
            stop_updates_at = int(0.75 * num_steps)
        if stop_updates_at is not None:
            _check_int("stop_updates_at", stop_updates_at, 0)
        self.stop_updates_at = stop_updates_at
        if drop_schedule is None:
            drop_schedule = "cosine" if stop_updates_at else "inverse"
        get_schedule(drop_schedule)
        if needs_horizon(drop_schedule) and not stop_updates_at:
            raise ValueError(
                f"SubspaceScheduler: drop_schedule {drop_schedule!r} decays towards "
                "the stop step; pass num_steps= (or stop_updates_at=), or use "
                "drop_schedule='inverse' or 'constant', which need no horizon."
            )
        self.drop_schedule = drop_schedule
        self.step_count = 0
        self.updates: list[SubspaceUpdate] = []
        self._warned: set[str] = set()
        self._direct: tuple[Any, DirectStep | None] | None = None

    @property
    def removal(self) -> Callable[..., Tensor]:
        """The removal criterion ``(loc, scale) -> scores`` (resolved when set)."""
        return self._removal

    @removal.setter
    def removal(self, criterion: str | Callable[..., Tensor]) -> None:
        self._removal = get_criterion(criterion)

    @property
    def addition(self) -> Callable[..., Tensor]:
        """The addition rule ``(site, posterior, grad) -> scores``, resolved."""
        return self._addition

    @addition.setter
    def addition(self, rule: str | Callable[..., Tensor]) -> None:
        self._addition = get_addition(rule)

    @property
    def num_updates(self) -> int:
        """Number of subspace updates performed so far."""
        return len(self.updates)

    def drop_fraction_at(self, step: int | None = None) -> float:
        """The drop fraction :math:`r_t` of an update at ``step`` (default: now)."""
        return drop_fraction_at(
            self.step_count if step is None else step,
            alpha=self.drop_fraction,
            schedule=self.drop_schedule,
            update_every=self.update_every,
            stop_at=self.stop_updates_at,
        )

    def update_due(self, step: int | None = None) -> bool:
        """Whether an update runs at ``step`` (default: the current step)."""
        return update_due(
            self.step_count if step is None else step,
            update_every=self.update_every,
            stop_at=self.stop_updates_at,
        )

    def growth_kl_weight(self) -> float:
        """The growth score's KL weight now (0 without ``growth_includes_kl``)."""
        if not self.growth_includes_kl:
            return 0.0
        weight = self.kl_weight
        return float(weight(self.step_count) if callable(weight) else weight)

    def step(self, *args: Any, **kwargs: Any) -> SubspaceUpdate | None:
        """Count one optimisation step; reselect if an update is due.

        Pass the step's minibatch (the ``"grad"`` rule runs a growth pass on it).
        Returns the :class:`SubspaceUpdate` if one ran, else None.
        """
        return self._step(args, kwargs)

    def _step(
        self, args: tuple, kwargs: dict, grads: dict[str, Tensor] | None = None
    ) -> SubspaceUpdate | None:
        self.step_count += 1
        return self._update(args, kwargs, grads) if self.update_due() else None

    def wants_gradients(self) -> bool:
        """Whether the next :meth:`step`'s update reads the growth gradient."""
        return (
            needs_grad(self.addition)
            and self.update_due(self.step_count + 1)
            and not self._all_full()
        )

    def _direct_step(self) -> DirectStep | None:
        """The growth pass's direct step (None: traced), chosen once per set-up."""
        key = getattr(self.guide, "prototype_trace", None)
        if key is not None and (self._direct is None or self._direct[0] is not key):
            try:
                step: DirectStep | None = direct_step(self.model, self.guide)
            except Unsupported:
                step = None
            self._direct = (key, step)
        return None if key is None or self._direct is None else self._direct[1]

    def update(self, *args: Any, **kwargs: Any) -> SubspaceUpdate:
        """Reselect every sparse site's subspace now, with the current fraction.

        ``addition="grad"`` needs the model's arguments (for the growth pass).
        """
        return self._update(args, kwargs)

    def _update(
        self, args: tuple, kwargs: dict, grads: dict[str, Tensor] | None = None
    ) -> SubspaceUpdate:
        if grads is None and (not needs_grad(self.addition) or self._all_full()):
            grads = {}
        elif grads is None:  # the addition rule's gradients, by a growth pass
            try:
                grads = likelihood_gradients(
                    self.model,
                    self.guide,
                    *args,
                    kl_weight=self.growth_kl_weight(),
                    direct=self._direct_step(),
                    **kwargs,
                )
            except TypeError as e:
                if args or kwargs:
                    raise
                raise ValueError(
                    "SubspaceScheduler.update: addition='grad' needs a minibatch; "
                    "call it with the model's arguments, e.g. update(x, y)."
                ) from e
        fraction = self.drop_fraction_at()
        dropped: dict[str, int] = {}
        swapped: dict[str, int] = {}
        several = len(self.sparse_guides) > 1
        for i, guide in enumerate(self.sparse_guides):
            for name in guide.sparse_site_names():
                key = f"{i}.{name}" if several else name
                unseen = needs_grad(self.addition) and name not in grads
                if unseen and not guide._is_full(name):
                    if name not in self._warned:
                        self._warned.add(name)
                        warnings.warn(
                            f"SubspaceScheduler: sparse site {name!r} was not sampled "
                            "by the guide as the loss sees it (hidden by "
                            "poutine.block?), so its subspace is not reselected.",
                            UserWarning,
                            stacklevel=2,
                        )
                    dropped[key] = swapped[key] = 0
                    continue
                dropped[key], swapped[key] = self._reselect_site(
                    guide, name, fraction, grads.get(name)
                )
        record = SubspaceUpdate(self.step_count, fraction, dropped, swapped)
        self.updates.append(record)
        if is_distributed():
            check_indices_agree(self.sparse_guides, self.step_count)
        return record

    def _all_full(self) -> bool:
        """Whether every sparse site is full (an update changes nothing)."""
        return all(
            guide._sites and all(map(guide._is_full, guide.sparse_site_names()))
            for guide in self.sparse_guides
        )

    @torch.no_grad()
    def _reselect_site(
        self, guide: AutoSparseNormal, name: str, fraction: float, grad: Tensor | None
    ) -> tuple[int, int]:
        loc_u, scale_u, stored = guide.subspace_params(name)
        if not bool(torch.isfinite(loc_u).all() & torch.isfinite(scale_u).all()):
            raise FloatingPointError(
                f"SubspaceScheduler: the parameters of site {name!r} are not finite "
                f"at step {self.step_count}; the subspace was not changed. Lower the "
                "learning rate or use a smaller init_scale."
            )
        num_swap = num_to_swap(loc_u.numel(), fraction)
        if num_swap == 0 or guide._is_full(name):  # all removed come straight back
            return num_swap, 0
        transform = transform_to(guide.scale_constraint)
        scale = transform(scale_u)
        shape, indices = guide.site_shape(name), guide._indices(name)
        post = SparseNormal(loc_u, scale, indices, shape, False)
        result = reselect(
            post.indices,
            removal_scores(self.removal, loc_u, scale),
            addition_scores(self.addition, name, post, grad),
            num_swap,
        )
        new_scale = move(scale_u, result.source, 0.0)
        fill = regrown_scale(new_scale, result.source, self.regrow_scale, transform)
        new_scale[result.source < 0] = fill
        loc_u.copy_(move(loc_u, result.source, 0.0))
        scale_u.copy_(new_scale)
        stored.copy_(result.indices.to(stored.dtype))
        for param in (loc_u, scale_u):
            move_optimizer_state(self.optimizer, param, result.source)
        return result.num_dropped, result.num_swapped

    def state_dict(self) -> dict[str, Any]:
        """Progress of the schedule: step count and update history."""
        return {
            "step_count": self.step_count,
            "updates": [list(u) for u in self.updates],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` output, e.g. to resume training.

        Raises:
            ValueError: For a dict without exactly these keys.
        """
        if set(state) != {"step_count", "updates"}:
            raise ValueError(
                "SubspaceScheduler.load_state_dict expects keys {'step_count', "
                f"'updates'}}, got {sorted(state)}."
            )
        self.step_count = _check_int("step_count", state["step_count"], 0)
        self.updates = [SubspaceUpdate(*u) for u in state["updates"]]


def _check_int(name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"SubspaceScheduler: {name} must be an int, got {value!r}.")
    if value < minimum:
        raise ValueError(
            f"SubspaceScheduler: {name} must be >= {minimum}, got {value!r}."
        )
    return value


def _describe(obj: Any) -> str:
    """What a guide is, in words: its class, or the function it is."""
    if isinstance(obj, torch.nn.Module):
        return f"the {type(obj).__name__} given"
    name = getattr(obj, "__qualname__", None) or getattr(obj, "__name__", None)
    return f"the {type(obj).__name__} {name!r} given" if name else f"{obj!r}"
