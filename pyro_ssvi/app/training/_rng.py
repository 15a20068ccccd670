"""The global RNG states of a run: captured into its checkpoint, restored on resume."""

from __future__ import annotations

import random
from contextlib import contextmanager
from typing import Any, Iterator

import numpy as np
import torch


def _rng_state() -> dict[str, Any]:
    np_state: Any = np.random.get_state()
    name, keys, pos, has_gauss, cached = np_state
    state = {
        "torch": torch.get_rng_state(),
        "numpy": [
            name,
            torch.from_numpy(keys.astype(np.int64)),
            pos,
            has_gauss,
            cached,
        ],
        "python": random.getstate(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


@contextmanager
def python_and_numpy_rng_kept() -> Iterator[None]:
    """Python's and numpy's global RNG states, restored after the block.

    A module imported for the first time may draw from them (``rich``, which
    scikit-learn's metrics import, draws a style id from Python's), so when
    a process first evaluates would otherwise change the RNG state that the
    next checkpoint saves: a resumed run's checkpoint would differ from an
    uninterrupted run's (in size too) with every tensor equal.
    """
    python, numpy = random.getstate(), np.random.get_state()
    try:
        yield
    finally:
        random.setstate(python)
        np.random.set_state(numpy)
