"""Drop-fraction schedules: how much of each active set to replace at an update.

A schedule maps training progress ``t / T`` in ``[0, 1]`` (``T`` the step at
which updates stop) to a multiplier of the initial drop fraction ``alpha``::

    r_t = alpha * SCHEDULES["cosine"](t / T)      # alpha/2 * (1 + cos(pi t/T))

Users may pass their own callable ``progress -> multiplier``.
"""

from __future__ import annotations

import math
from typing import Callable

__all__ = ["SCHEDULES", "constant", "cosine", "get_schedule", "linear"]


def cosine(progress: float) -> float:
    r"""RigL's cosine decay, :math:`\tfrac12 (1 + \cos(\pi p))`, from 1 to 0."""
    return 0.5 * (1.0 + math.cos(math.pi * min(max(progress, 0.0), 1.0)))


def linear(progress: float) -> float:
    r"""Linear decay :math:`1 - p`, from 1 to 0."""
    return 1.0 - min(max(progress, 0.0), 1.0)


def constant(progress: float) -> float:
    """No decay: always 1."""
    return 1.0


#: Named schedules accepted by ``SparseSVI(drop_schedule=...)``.
SCHEDULES: dict[str, Callable[[float], float]] = {
    "constant": constant,
    "cosine": cosine,
    "linear": linear,
}


def get_schedule(schedule: str | Callable[[float], float]) -> Callable[[float], float]:
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
