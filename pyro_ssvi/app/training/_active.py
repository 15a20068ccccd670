"""The active set at a run's start, kept for the plot of where it sat and moved.

At a fresh start the run writes ``active_start.pt`` (rank 0): each sparse
site's shape and its active mask, packed 8 coordinates to a byte, about
``numel / 8`` bytes a site whatever the density. At the end
``plots/active_set.png`` draws the active fraction per input unit at start
and end (:func:`~pyro_ssvi.app.plots.plot_active_set`).
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from ..checkpoint import CheckpointError, load_checkpoint, save_checkpoint

if TYPE_CHECKING:
    from matplotlib.figure import Figure

#: The run-directory file of the starting active sets.
ACTIVE_START = "active_start.pt"
#: The plot of the active sets under ``plots/``.
ACTIVE_SET_PLOT = "active_set.png"


def active_sets(guide: Any) -> tuple[dict[str, torch.Tensor], dict[str, torch.Size]]:
    """``({site: sorted flat active indices}, {site: shape})`` of the sparse
    sites of an ``AutoSparseNormal`` (both empty for another guide)."""
    from ...guides import AutoSparseNormal

    if not isinstance(guide, AutoSparseNormal):
        return {}, {}
    indices = {n: i.cpu() for n, i in guide.active_indices().items()}
    return indices, {n: guide.site_shape(n) for n in indices}


def save_active_start(guide: Any, out: Path) -> None:
    """Write the guide's active sets as the run's start (``active_start.pt``)."""
    indices, shapes = active_sets(guide)
    sites = {}
    for name, index in indices.items():
        mask = np.zeros(shapes[name].numel(), dtype=bool)
        mask[index.numpy()] = True
        packed = torch.from_numpy(np.packbits(mask))
        sites[name] = {"shape": list(shapes[name]), "mask": packed}
    save_checkpoint(out / ACTIVE_START, {"active_start": sites})


def load_active_start(out: Path) -> dict[str, torch.Tensor] | None:
    """``{site: sorted flat indices}`` from ``active_start.pt``; None when the
    run has none (it started before this file existed) or it is unreadable
    (with a warning)."""
    path = out / ACTIVE_START
    if not path.is_file():
        return None
    try:
        sites = load_checkpoint(path, map_location="cpu")["active_start"]
        start = {}
        for name, site in sites.items():
            numel = int(np.prod(site["shape"]))
            mask = np.unpackbits(site["mask"].numpy(), count=numel).astype(bool)
            start[name] = torch.from_numpy(np.flatnonzero(mask))
        return start
    except (CheckpointError, KeyError, TypeError, ValueError) as e:
        warnings.warn(
            f"{path} is unreadable ({' '.join(str(e).split())}); "
            f"{ACTIVE_SET_PLOT} shows the final active set alone",
            stacklevel=2,
        )
        return None


def write_active_set_plot(guide: Any, out: Path) -> Figure:
    """``plots/active_set.png``: the active sets at the start and now."""
    from ..plots import plot_active_set

    end, shapes = active_sets(guide)
    start = load_active_start(out)
    if start is not None and set(start) != set(shapes):
        start = None  # another guide's record: not this run's start
    return plot_active_set(start, end, shapes, out / "plots" / ACTIVE_SET_PLOT)
