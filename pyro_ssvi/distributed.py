"""Data-parallel training with PyTorch's own engine (``torch.distributed``).

Launch any script, or the CLI, with ``torchrun``::

    torchrun --standalone --nproc_per_node 2 -m pyro_ssvi train --epochs 1

:func:`init_from_env` joins ``torchrun``'s process group; ``SparseSVI`` then
wraps its loss in ``DistributedDataParallel`` (:class:`DataParallel`) and
checks that the active sets agree (:func:`check_indices_agree`). The helpers
are no-ops in a single process. Call :func:`shutdown` before exiting: leaving
with the group alive can abort the process.
"""

from __future__ import annotations

import gc
import inspect
import math
import os
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Iterable, Iterator, TypeVar

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from ._pyro_compat import is_invalid_values_error
from ._step import particles_loss

__all__ = [
    "DataParallel",
    "DistInfo",
    "all_reduce_mean_",
    "broadcast_object",
    "check_indices_agree",
    "gather_rows",
    "init_from_env",
    "is_distributed",
    "is_main_process",
    "process_group",
    "rank",
    "shard",
    "shutdown",
    "world_size",
    "wrap_ddp",
]

T = TypeVar("T")


@dataclass(frozen=True)
class DistInfo:
    """Where this process stands in the job (``local_rank`` selects the GPU)."""

    rank: int
    world_size: int
    local_rank: int
    backend: str


def is_distributed() -> bool:
    """Whether a process group with more than one process is active."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world_size() -> int:
    """Number of processes (1 without a process group)."""
    return dist.get_world_size() if is_distributed() else 1


def rank() -> int:
    """This process's global rank (0 without a process group)."""
    return dist.get_rank() if is_distributed() else 0


def is_main_process() -> bool:
    """True on rank 0, the only rank that writes files."""
    return rank() == 0


def init_from_env(device: str = "auto") -> DistInfo | None:
    """Join the process group described by ``torchrun``'s environment.

    ``nccl`` on CUDA (the device ``LOCAL_RANK``), else ``gloo``. Returns the
    :class:`DistInfo`, or None when ``WORLD_SIZE`` is unset or 1.

    Raises:
        RuntimeError: If the environment is incomplete (e.g. ``RANK`` missing).
    """
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size <= 1:
        return None
    try:
        global_rank = int(os.environ["RANK"])
        local_rank = int(os.environ.get("LOCAL_RANK", global_rank))
    except KeyError as e:
        raise RuntimeError(
            f"WORLD_SIZE={size} but {e.args[0]} is not set; launch with torchrun"
        ) from None
    cuda = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
    backend = "nccl" if cuda else "gloo"
    if cuda:
        torch.cuda.set_device(local_rank)
    if not dist.is_initialized():
        dist.init_process_group(backend=backend)
    return DistInfo(global_rank, size, local_rank, backend)


# Buffers (the active indices) are checked after every update, so DDP need not
# broadcast them before every forward; torch 2.14 renamed the switch.
_NO_FORWARD_BUFFER_SYNC: dict[str, Any] = (
    {"forward_sync_buffers": False}
    if "forward_sync_buffers" in inspect.signature(DistributedDataParallel).parameters
    else {"broadcast_buffers": False}
)


def wrap_ddp(module: torch.nn.Module) -> DistributedDataParallel:
    """``module`` (e.g. Pyro's ``ELBOModule``, its parameters made) in
    ``DistributedDataParallel``: rank 0's state broadcast, gradients averaged."""
    device = next(module.parameters()).device
    return DistributedDataParallel(
        module,
        device_ids=[device] if device.type == "cuda" else None,
        **_NO_FORWARD_BUFFER_SYNC,
    )


class _Loss(torch.nn.Module):
    """A model and guide as one module whose forward is their loss (so that
    ``DistributedDataParallel`` sees their parameters)."""

    def __init__(self, model: Any, guide: Any, elbo: Any) -> None:
        super().__init__()
        self.model, self.guide, self.elbo = model, guide, elbo
        self.step: Any = None
        self.probes: dict[str, torch.Tensor] | None = None

    def forward(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        return particles_loss(
            self.step, self.elbo, self.model, self.guide, args, kwargs, self.probes
        )


class DataParallel:
    """``SparseSVI``'s loss under ``DistributedDataParallel``.

    Built at the first step (guides set up, rank 0's state broadcast); each
    step's loss is :func:`pyro_ssvi._step.particles_loss` on this rank's share.

    Raises:
        TypeError: If the loss is not a Pyro ELBO instance.
    """

    def __init__(
        self,
        model: Any,
        guide: Any,
        elbo: Any,
        sparse_guides: list[Any],
        args: tuple,
        kwargs: dict,
    ) -> None:
        from pyro.infer import ELBO

        if not isinstance(elbo, ELBO):
            raise TypeError(
                "SparseSVI: distributed training needs an ELBO instance as loss "
                f"(it is wrapped in DistributedDataParallel), got {elbo!r}."
            )
        with torch.no_grad():
            for sparse in sparse_guides:
                sparse.setup(*args, **kwargs)
            if sparse_guides != [guide]:
                guide(*args, **kwargs)  # other parts' lazy parameters
        self.module = wrap_ddp(_Loss(model, guide, elbo))
        self.params: set[torch.Tensor] = {
            p for p in self.module.parameters() if p.requires_grad
        }

    def loss_and_grads(
        self, step: Any, probes: Any, args: tuple, kwargs: dict
    ) -> tuple[float, set[torch.Tensor]]:
        """The loss and gradients averaged over ranks, and the trained
        parameters; NaN and no gradient on every rank when any rank's loss is
        not finite (so that all raise together)."""
        self.module.module.step, self.module.module.probes = step, probes
        try:
            loss: torch.Tensor | None = self.module(*args, **kwargs)
        except ValueError as e:
            if not is_invalid_values_error(e):
                raise
            loss = None
        value = float("nan") if loss is None else float(loss.item())
        device = next(iter(self.params)).device
        mean = float(all_reduce_mean_(torch.tensor(value, device=device)))
        if loss is not None and math.isfinite(mean):
            loss.backward()  # DDP averages the gradients over ranks
        return mean, self.params

    @staticmethod
    def mean(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Each tensor averaged over ranks."""
        return {name: all_reduce_mean_(t) for name, t in tensors.items()}


def shutdown(wait: bool = True) -> None:
    """Leave and destroy the process group (a no-op without one).

    Collects garbage first (a ``DistributedDataParallel`` in a reference cycle
    freed after the group aborts the process). ``wait``: a barrier first; pass
    False when leaving on an error other ranks may not share.
    """
    if not (dist.is_available() and dist.is_initialized()):
        return
    gc.collect()
    if wait and dist.get_world_size() > 1:
        dist.barrier()
    dist.destroy_process_group()


@contextmanager
def process_group(device: str = "auto") -> Iterator[DistInfo | None]:
    """Be in ``torchrun``'s process group for the ``with`` block.

    Joins it unless already in one; after a successful block every rank waits
    for the others; leaves it (without waiting) if this call joined it.
    Yields the :class:`DistInfo`, or None outside ``torchrun``.
    """
    created = not (dist.is_available() and dist.is_initialized())
    info = init_from_env(device)
    try:
        yield info
        if is_distributed():
            dist.barrier()
    finally:
        if info is not None and created:
            shutdown(wait=False)


def all_reduce_mean_(tensor: torch.Tensor) -> torch.Tensor:
    """Average ``tensor`` over ranks, in place; returns it."""
    if is_distributed():
        dist.all_reduce(tensor)
        tensor.div_(dist.get_world_size())
    return tensor


def broadcast_object(obj: T) -> T:
    """Rank 0's ``obj`` on every rank (for small Python objects)."""
    if not is_distributed():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def shard(tensor: torch.Tensor) -> torch.Tensor:
    """This rank's contiguous block of rows (``torch.tensor_split`` order)."""
    if not is_distributed():
        return tensor
    return torch.tensor_split(tensor, dist.get_world_size())[dist.get_rank()]


def gather_rows(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate every rank's rows (any number each), in rank order."""
    if not is_distributed():
        return tensor
    size = torch.tensor([tensor.shape[0]], device=tensor.device)
    sizes = [torch.zeros_like(size) for _ in range(dist.get_world_size())]
    dist.all_gather(sizes, size)
    longest = int(max(s.item() for s in sizes))
    padded = tensor.new_zeros((longest, *tensor.shape[1:]))
    padded[: tensor.shape[0]] = tensor
    parts = [torch.empty_like(padded) for _ in sizes]
    dist.all_gather(parts, padded.contiguous())
    return torch.cat([p[: int(s.item())] for p, s in zip(parts, sizes)])


def _checksum(indices: Iterable[torch.Tensor]) -> torch.Tensor:
    sums = []
    for idx in indices:
        idx = idx.to(torch.int64)
        sums += [idx.numel(), int(idx.sum()), int((idx * (idx % 7919 + 1)).sum())]
    return torch.tensor(sums, dtype=torch.int64)


def check_indices_agree(guides: Iterable[Any], step: int) -> None:
    """Verify that every rank holds the same active indices (one all-gather of
    three integers per sparse site).

    Raises:
        RuntimeError: Naming the step, if any rank differs from rank 0.
    """
    if not is_distributed():
        return
    local = _checksum(i for g in guides for i in g.active_indices().values())
    if dist.get_backend() == "nccl":
        local = local.cuda()
    parts = [torch.empty_like(local) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, local)
    bad = [r for r, p in enumerate(parts) if not torch.equal(p, parts[0])]
    if bad:
        raise RuntimeError(
            f"SparseSVI: the active indices of ranks {bad} differ from rank 0's after "
            f"the subspace update at step {step}. Seed every rank identically "
            "(pyro.set_rng_seed) and give every rank the same model and guide."
        )
