"""Optimisers: one multi-tensor step for a ``PyroOptim``, and moving their state.

``PyroOptim`` steps one torch optimiser per tensor, several times the cost of
one ``foreach`` step; :class:`GroupedStep` runs a shared optimiser on those
optimisers' own state dicts, so Pyro's per-parameter state stays as it is.
"""

from __future__ import annotations

from typing import Any, Iterable, Iterator

import torch
from pyro.optim import PyroOptim

from ._pyro_compat import (
    pyro_optim_grad_clip,
    pyro_optim_objects,
    pyro_optim_optimizers,
)
from .selection import move

#: Optimisers whose update depends only on their hyperparameters and the
#: per-parameter state (not, e.g., ClippedAdam, which decays its own lr).
_GROUPABLE = (
    torch.optim.Adam,
    torch.optim.AdamW,
    torch.optim.SGD,
    torch.optim.RMSprop,
    torch.optim.Adagrad,
)


class GroupedStep:
    """Steps a ``PyroOptim``'s parameters, one optimiser call per optimiser class."""

    def __init__(self, optim: Any) -> None:
        self.optim = optim
        self._shared: dict[type, torch.optim.Optimizer] = {}

    def __call__(self, params: Iterable[torch.Tensor]) -> None:
        """One optimiser step on ``params`` (those with a gradient move)."""
        params = list(params)
        objects = pyro_optim_objects(self.optim)
        new = [p for p in params if p not in objects]
        if new:  # Pyro creates (restoring saved state) and steps their optimisers
            self.optim(new)
            fresh = set(new)
            params = [p for p in params if p not in fresh]
        by_class: dict[type, list[tuple[torch.Tensor, Any]]] = {}
        single = []
        for p in params:
            opt = objects.get(p)
            if opt is None:
                continue
            opt = getattr(opt, "optimizer", opt)  # LR schedulers: their optimiser
            if type(opt) in _GROUPABLE and len(opt.param_groups) == 1:
                by_class.setdefault(type(opt), []).append((p, opt))
            else:
                single.append(p)
        clip = pyro_optim_grad_clip(self.optim)
        for cls, members in by_class.items():
            for p, _ in members:
                if clip.get(p) is not None:
                    clip[p](p)
            self._step(cls, members)
        if single:
            self.optim(single)

    def _step(self, cls: type, members: list[tuple[torch.Tensor, Any]]) -> None:
        """One step of a shared ``cls`` optimiser on the members' own state dicts,
        with their hyperparameters read afresh (so LR schedules apply)."""
        groups: dict[tuple, dict[str, Any]] = {}
        for p, opt in members:
            group = dict(opt.param_groups[0])
            del group["params"]
            key = tuple(group.values())
            if any(map(torch.is_tensor, key)):  # e.g. a tensor lr: by identity
                key = tuple(map(id, key))
            if key not in groups:
                if group.get("foreach") is None and not group.get("fused"):
                    group["foreach"] = True
                groups[key] = dict(group, params=[])
            groups[key]["params"].append(p)
        shared = self._shared.get(cls)
        if shared is None:  # its own defaults are never used: groups replace them
            shared = cls(next(iter(groups.values()))["params"])
            self._shared[cls] = shared
        shared.param_groups = list(groups.values())
        state = {p: opt.state[p] for p, opt in members}
        shared.state = state  # type: ignore[assignment]
        shared.step()


def torch_optimizers(optimizer: Any) -> Iterator[Any]:
    """The torch optimisers (or ``PyroOptim``) behind ``optimizer``."""
    if optimizer is None:
        return
    if isinstance(optimizer, (list, tuple)):
        for item in optimizer:
            yield from torch_optimizers(item)
        return
    yield getattr(optimizer, "optimizer", optimizer)  # torch LR schedulers


def move_optimizer_state(
    optimizer: Any, param: torch.Tensor, source: torch.Tensor
) -> None:
    """Moments of ``param`` follow its coordinates; new coordinates start at 0."""
    for opt in torch_optimizers(optimizer):
        if isinstance(opt, PyroOptim):
            opt = pyro_optim_optimizers(opt).get(param)
            if opt is None:
                continue
        state = getattr(opt, "state", {}).get(param)
        for value in (state or {}).values():
            if torch.is_tensor(value) and value.shape == param.shape:
                value.copy_(move(value, source, 0.0))
    if param.grad is not None:
        param.grad.zero_()


def check_optimizer(optimizer: Any) -> None:
    """Raise ``TypeError`` unless every optimiser behind ``optimizer`` has state."""
    for opt in torch_optimizers(optimizer):
        if not (isinstance(opt, PyroOptim) or hasattr(opt, "state")):
            raise TypeError(
                "SubspaceScheduler: optimizer must be a torch.optim.Optimizer, a "
                "torch LR scheduler, a pyro.optim.PyroOptim, a list of these or "
                f"None, got {type(opt).__name__}."
            )
