r"""When to reselect the subspaces, and how much of each active set to replace.

Pure functions of the step number. An update runs at every step ``t`` (the
1-based count of optimisation steps taken) that is a multiple of
``update_every`` and below the stop step :math:`T` (if any), and replaces the
fraction

.. math:: r_t = \alpha \cdot m

of each active set, with :math:`\alpha` the initial drop fraction and the
multiplier :math:`m` given by the schedule:

* horizon schedules, functions of the progress :math:`p = t / T` (they need a
  stop step :math:`T`): ``"cosine"`` (RigL's and the SSVI reference's,
  :math:`\tfrac12(1 + \cos \pi p)`), ``"linear"`` (:math:`1 - p`),
  ``"constant"`` (1), or any callable ``progress -> multiplier``;
* the horizon-free ``"inverse"`` schedule, a function of the number
  :math:`u = t / \text{update\_every} - 1` of earlier updates:
  :math:`m = 1 / (1 + u / u_{1/2})` with :math:`u_{1/2}` =
  :data:`INVERSE_HALF_LIFE` updates, the default without a stop step.
"""

from __future__ import annotations

import math
from typing import Callable

__all__ = [
    "HORIZON_SCHEDULES",
    "INVERSE_HALF_LIFE",
    "SCHEDULES",
    "constant",
    "cosine",
    "drop_fraction_at",
    "get_schedule",
    "inverse",
    "linear",
    "update_due",
]

#: Updates after which the ``"inverse"`` schedule has halved the drop fraction.
INVERSE_HALF_LIFE = 25


def cosine(progress: float) -> float:
    r"""RigL's cosine decay, :math:`\tfrac12 (1 + \cos(\pi p))`, from 1 to 0."""
    return 0.5 * (1.0 + math.cos(math.pi * min(max(progress, 0.0), 1.0)))


def linear(progress: float) -> float:
    r"""Linear decay :math:`1 - p`, from 1 to 0."""
    return 1.0 - min(max(progress, 0.0), 1.0)


def constant(progress: float) -> float:
    """No decay: always 1."""
    return 1.0


def inverse(num_updates: int, half_life: float = INVERSE_HALF_LIFE) -> float:
    r"""Horizon-free decay :math:`1 / (1 + u / u_{1/2})` after ``u`` updates."""
    return 1.0 / (1.0 + max(num_updates, 0) / half_life)


#: Named schedules accepted by ``SparseSVI(drop_schedule=...)``.
SCHEDULES: dict[str, Callable[..., float]] = {
    "constant": constant,
    "cosine": cosine,
    "inverse": inverse,
    "linear": linear,
}

#: The schedules that are functions of progress towards a stop step.
HORIZON_SCHEDULES = frozenset({"cosine", "linear"})


def get_schedule(schedule: str | Callable[[float], float]) -> Callable[..., float]:
    """Resolve a schedule name or callable.

    Raises:
        ValueError: For an unknown name (the message lists the valid ones).
        TypeError: If ``schedule`` is neither a string nor callable.
    """
    if isinstance(schedule, str):
        if schedule not in SCHEDULES:
            raise ValueError(
                f"Unknown drop_schedule {schedule!r}; choose one of "
                f"{sorted(SCHEDULES)} or pass a callable progress -> multiplier."
            )
        return SCHEDULES[schedule]
    if callable(schedule):
        return schedule
    raise TypeError(f"drop_schedule must be a name or a callable, got {schedule!r}.")


def needs_horizon(schedule: str | Callable[[float], float]) -> bool:
    """Whether a schedule is a function of progress ``t / T`` (needs ``T``)."""
    if isinstance(schedule, str):
        return schedule in HORIZON_SCHEDULES
    return True  # a callable of progress


def update_due(step: int, *, update_every: int, stop_at: int | None) -> bool:
    """Whether an update runs after optimisation step ``step`` (1-based): a
    positive multiple of ``update_every`` below ``stop_at`` (None: never stops)."""
    if step < 1 or step % update_every:
        return False
    return stop_at is None or step < stop_at


def drop_fraction_at(
    step: int,
    *,
    alpha: float,
    schedule: str | Callable[[float], float],
    update_every: int,
    stop_at: int | None,
) -> float:
    r"""The drop fraction :math:`r_t = \alpha\, m` of an update at ``step``.

    ``schedule`` is a name from :data:`SCHEDULES` or a callable of progress;
    ``stop_at`` is :math:`T`. The result is clamped to ``[0, 1]``.

    Raises:
        ValueError: If a horizon schedule has no stop step.
    """
    if schedule == "inverse":
        multiplier = inverse(step // update_every - 1)
    elif schedule == "constant":
        multiplier = 1.0
    else:
        if not stop_at:
            raise ValueError(
                f"drop_schedule {schedule!r} decays towards a stop step; pass "
                "num_steps= or stop_updates_at=, or use drop_schedule='inverse' "
                "or 'constant', which need none."
            )
        multiplier = float(get_schedule(schedule)(step / stop_at))
    return min(max(alpha * multiplier, 0.0), 1.0)
