"""Streaming prediction's shared plumbing: batches, eval mode, option checks.

Private to :mod:`pyro_ssvi.app.predict` (classifiers) and
:mod:`pyro_ssvi.app.regression` (regressors), which stream data through a model
and guide the same way::

    device = prepare_prediction(guide, num_samples, mean_weights, batch_size, device)
    with torch.no_grad(), eval_mode(model):
        for position, (x, y) in enumerate(batches(data, batch_size)):
            ...
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterable, Iterator

import torch
from pyro.infer.autoguide import AutoGuide
from torch.utils.data import DataLoader, Dataset, IterableDataset

Batch = tuple[torch.Tensor, "torch.Tensor | None"]


# ------------------------------------------------------------------- batching
def _split(tensors: tuple[torch.Tensor, ...], batch_size: int) -> Iterator[Batch]:
    for start in range(0, len(tensors[0]), batch_size):
        chunk = [t[start : start + batch_size] for t in tensors]
        yield chunk[0], (chunk[1] if len(chunk) > 1 else None)


def _unpack(item: Any, position: int) -> Batch:
    if isinstance(item, torch.Tensor):
        return item, None
    if isinstance(item, (tuple, list)) and 1 <= len(item) <= 2:
        if all(isinstance(t, torch.Tensor) for t in item):
            return item[0], (item[1] if len(item) == 2 else None)
    raise ValueError(
        f"batch {position} of data must be a tensor x or a pair (x, y) of tensors, "
        f"got {type(item).__name__}"
        + (f" of length {len(item)}" if isinstance(item, (tuple, list)) else "")
        + "."
    )


def batches(data: Any, batch_size: int) -> Iterator[Batch]:
    """Normalise ``data`` to an iterator of ``(x, y or None)`` batches.

    Tensors, ``(x, y)`` pairs and map-style datasets are split into
    ``batch_size`` pieces; any other iterable (a ``DataLoader``) is consumed
    in its own batches.

    Raises:
        ValueError: For ``(x, y)`` of different lengths or a malformed batch.
        TypeError: For ``data`` of an unsupported type.
    """
    if isinstance(data, torch.Tensor):
        yield from _split((data,), batch_size)
    elif (
        isinstance(data, tuple)
        and len(data) == 2
        and all(isinstance(t, torch.Tensor) for t in data)
    ):
        if len(data[0]) != len(data[1]):
            raise ValueError(
                f"data (x, y) have different lengths {len(data[0])} and {len(data[1])}."
            )
        yield from _split(data, batch_size)
    elif isinstance(data, Dataset) and not isinstance(data, IterableDataset):
        yield from batches(DataLoader(data, batch_size=batch_size), batch_size)
    elif isinstance(data, Iterable):
        for position, item in enumerate(data):
            yield _unpack(item, position)
    else:
        raise TypeError(
            "data must be a tensor of inputs, a tuple (x, y) of tensors, a Dataset, "
            f"or an iterable (e.g. DataLoader) of x or (x, y) batches; got {data!r}."
        )


def check_consistent(position: int, has: bool, first_has: bool, what: str) -> None:
    """Refuse batch ``position`` if it has ``what`` (labels, targets) unlike the first.

    Raises:
        ValueError: Naming the batch and the fix.
    """
    if position and has != first_has:
        raise ValueError(
            f"batch {position} of data has {'' if has else 'no '}{what} unlike the "
            f"first batch; give {what} for every batch or for none."
        )


# ----------------------------------------------------------------- the guide
def _default_device(guide: Any) -> torch.device | None:
    if isinstance(guide, torch.nn.Module):
        for tensor in (*guide.parameters(), *guide.buffers()):
            return tensor.device
    return None


def _check_options(num_samples: int, batch_size: int) -> None:
    for name, value in (("num_samples", num_samples), ("batch_size", batch_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}.")


def _is_loaded(guide: Any) -> bool:
    """An AutoSparseNormal loaded from a state dict (it checks itself on use)."""
    from ..guides import AutoSparseNormal

    try:
        return isinstance(guide, AutoSparseNormal) and bool(guide.site_names())
    except RuntimeError:  # no parameters yet
        return False


def _require_setup(guide: Any) -> None:
    if (
        isinstance(guide, AutoGuide)
        and guide.prototype_trace is None
        and not _is_loaded(guide)
    ):
        raise ValueError(
            f"{type(guide).__name__} has not been run on the model yet (a new or "
            "freshly loaded autoguide), so sampling it would trace the model "
            "without labels. Call guide.setup(x, y) (AutoSparseNormal) or "
            "guide(x, y) once with a labelled batch first."
        )


def prepare_prediction(
    guide: Any,
    num_samples: int,
    mean_weights: bool,
    batch_size: int,
    device: torch.device | str | None,
) -> torch.device | None:
    """Check a prediction's options against the guide; returns the device to use.

    Returns:
        ``device``, or by default the device of the guide's parameters (None
        when it has none: inputs stay where they are).

    Raises:
        ValueError: For non-positive ``num_samples`` / ``batch_size``, or an
            autoguide that was never run on the model (for Monte Carlo).
        TypeError: For ``mean_weights`` with a guide without ``median()``.
    """
    _check_options(num_samples, batch_size)
    if mean_weights and not callable(getattr(guide, "median", None)):
        raise TypeError(
            "mean_weights=True needs a guide with a median() method (an autoguide), "
            f"got {type(guide).__name__}."
        )
    if not mean_weights:
        _require_setup(guide)
    return _default_device(guide) if device is None else torch.device(device)


def median_on(guide: Any, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """The guide's median weights, on the device of ``x``."""
    return {k: v.to(x.device) for k, v in guide.median(x).items()}


@contextmanager
def eval_mode(model: Any) -> Iterator[None]:
    """Put an ``nn.Module`` model in eval mode, restoring every submodule after."""
    modules = list(model.modules()) if isinstance(model, torch.nn.Module) else []
    modes = [m.training for m in modules]
    try:
        if modules:
            model.eval()
        yield
    finally:
        for module, mode in zip(modules, modes):
            module.train(mode)
