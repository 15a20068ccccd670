"""What every figure shares: an Agg canvas, atomic PNG writes, input checks."""

from __future__ import annotations

import math
import numbers
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from ..checkpoint import atomic_write

if TYPE_CHECKING:
    from matplotlib.figure import Figure

#: Dots per inch of every figure; a ``(w, h)``-inch figure is ``100 w x 100 h`` px.
DPI = 100

_PathLike = str | os.PathLike


def _figure(
    width: float, height: float, nrows: int = 1, ncols: int = 1
) -> tuple[Figure, list[Any]]:
    """A constrained-layout figure on an Agg canvas, and its axes (a flat list)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    if not nrows:
        return fig, []
    axes = fig.subplots(nrows, ncols, squeeze=False)
    return fig, [ax for row in axes for ax in row]


def _save(fig: Figure, path: _PathLike) -> Figure:
    """Write ``fig`` as a PNG at ``path`` atomically, creating its directory."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda fh: fig.savefig(fh, format="png", dpi=DPI))
    return fig


def _vector(values: Any, name: str) -> torch.Tensor:
    """A non-empty, finite 1-D float64 tensor."""
    tensor = torch.as_tensor(values, dtype=torch.float64).detach().cpu()
    if tensor.dim() != 1 or tensor.numel() == 0:
        raise ValueError(
            f"{name} must be a non-empty 1-D sequence, got shape {tuple(tensor.shape)}."
        )
    if not torch.isfinite(tensor).all():
        raise ValueError(f"{name} contains NaN or infinite values.")
    return tensor


def _rows(rows: Any, name: str, required: str) -> list[Mapping[str, Any]]:
    if isinstance(rows, (str, bytes, Mapping)) or not isinstance(rows, Iterable):
        raise ValueError(f"{name} must be a list of dicts, got {type(rows).__name__}.")
    rows = list(rows)
    if not rows:
        raise ValueError(f"{name} is empty: there is nothing to plot.")
    for i, row in enumerate(rows):
        if not isinstance(row, Mapping) or required not in row:
            raise ValueError(f"{name}[{i}] must be a dict with a {required!r} key.")
        if not _is_number(row[required]):
            raise ValueError(
                f"{name}[{i}][{required!r}] must be a number, got {row[required]!r}."
            )
    return rows


def _is_number(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _series(
    rows: Sequence[Mapping[str, Any]], x: str, y: str
) -> tuple[list[float], list[float]]:
    """``(x, y)`` pairs of the rows that have a numeric ``y``."""
    pairs = [(float(row[x]), float(row[y])) for row in rows if _is_number(row.get(y))]
    return [p[0] for p in pairs], [p[1] for p in pairs]


def _grid(count: int) -> tuple[int, int]:
    """Rows and columns for ``count`` panels: one row up to 3, then 2 rows."""
    if count <= 3:
        return 1, count
    return 2, math.ceil(count / 2)


def _panels(count: int, width: float, height: float) -> tuple[Figure, list[Any]]:
    """A figure with exactly ``count`` panels (an odd last row is centred)."""
    nrows, ncols = _grid(count)
    fig, _ = _figure(width * ncols, height * nrows, 0, 0)
    grid = fig.add_gridspec(nrows, 2 * ncols)
    axes = []
    for i in range(count):
        row, col = divmod(i, ncols)
        left = 2 * col + (ncols * nrows - count if row == nrows - 1 else 0)
        axes.append(fig.add_subplot(grid[row, left : left + 2]))
    return fig, axes
