"""Where a run's active set sits and how it moved: active fraction per input unit."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import torch

from ._figure import _figure, _PathLike, _save

if TYPE_CHECKING:
    from matplotlib.figure import Figure

#: Panels per row of :func:`plot_active_set`.
ACTIVE_SET_COLUMNS = 3


def _shape(shape: Any, name: str) -> torch.Size:
    try:
        size = torch.Size(shape)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{name} must be a shape (ints >= 1), got {shape!r}.") from e
    if not size or any(s < 1 for s in size):
        raise ValueError(f"{name} must be a shape (ints >= 1), got {shape!r}.")
    return size


def _indices(indices: Any, numel: int, name: str) -> torch.Tensor:
    """Distinct flat int64 indices in ``[0, numel)``, on the CPU."""
    tensor = torch.as_tensor(indices).detach().cpu()
    if tensor.dim() != 1 or tensor.is_floating_point() or tensor.dtype == torch.bool:
        raise ValueError(
            f"{name} must be a 1-D tensor of flat integer indices, got dtype "
            f"{tensor.dtype} and shape {tuple(tensor.shape)}."
        )
    tensor = tensor.long()
    if len(tensor) and (tensor.min() < 0 or tensor.max() >= numel):
        raise ValueError(f"{name} must lie in [0, {numel}), got values outside it.")
    if len(torch.unique(tensor)) != len(tensor):
        raise ValueError(f"{name} holds an index twice; pass the active set.")
    return tensor


def column_fractions(indices: Any, shape: Sequence[int]) -> torch.Tensor:
    r"""Active fraction :math:`f_j` of each input unit (column) of a weight site.

    A weight of shape ``(O, I, *kernel)`` (a linear layer's ``(out, in)``, a
    convolution's ``(out, in, kh, kw)``) has ``I`` input units; column ``j``
    holds its :math:`O K` coordinates ``w[:, j, ...]``, :math:`K = \prod
    \text{kernel}`. With :math:`A` the flat (row-major) active indices, index
    :math:`i` lies in column :math:`\lfloor i / K \rfloor \bmod I`, and

    .. math:: f_j = \frac{|\{i \in A : \lfloor i / K \rfloor \bmod I = j\}|}{O K}.

    A site of one dimension is one column: :math:`f_0 = |A| / n`.

    Args:
        indices: Distinct flat (row-major) active indices, e.g. a value of
            :meth:`~pyro_ssvi.AutoSparseNormal.active_indices`.
        shape: The site's shape, e.g.
            :meth:`~pyro_ssvi.AutoSparseNormal.site_shape`.

    Returns:
        float64 fractions in ``[0, 1]``, shape ``(I,)``.

    Raises:
        ValueError: For a malformed shape, or indices that are not distinct
            integers in ``[0, numel)``.
    """
    size = _shape(shape, "shape")
    flat = _indices(indices, size.numel(), "indices")
    columns = size[1] if len(size) > 1 else 1
    per_column = size.numel() // columns
    inner = math.prod(size[2:])
    counts = torch.bincount((flat // inner) % columns, minlength=columns)
    return counts.double() / per_column


def kept_fraction(start: Any, end: Any) -> float:
    r"""Share of the starting active set still active at the end,
    :math:`|A_{start} \cap A_{end}| / |A_{start}|` (1.0 for an empty start).

    Args:
        start: Flat active indices at the start, 1-D integers.
        end: Flat active indices at the end, 1-D integers.
    """
    start, end = torch.as_tensor(start).cpu(), torch.as_tensor(end).cpu()
    if not len(start):
        return 1.0
    return torch.isin(start, end).double().mean().item()


def plot_active_set(
    start: Mapping[str, Any] | None,
    end: Mapping[str, Any],
    shapes: Mapping[str, Sequence[int]],
    path: _PathLike,
) -> Figure:
    """Active fraction per input unit of each weight site, at start and at end.

    One panel per site (``ACTIVE_SET_COLUMNS`` to a row): the
    :func:`column_fractions` of the starting set (grey) and of the final one,
    and the site's density as a dotted line (a set spread evenly over the
    inputs lies on it). The title gives the site, its shape and the
    :func:`kept_fraction`, how much of the starting set survived the
    reselections. With no sparse site the figure says so.

    Args:
        start: ``{site: flat indices}`` at the start of training; None, or a
            site missing, draws the end alone.
        end: ``{site: flat indices}`` at the end, e.g.
            :meth:`~pyro_ssvi.AutoSparseNormal.active_indices`.
        shapes: ``{site: shape}``, the same sites as ``end``.
        path: Where to write the PNG.

    Returns:
        The figure; each panel holds the lines labelled ``"start"`` (when
        known), ``"end"`` and ``"density"``, x the input unit.

    Raises:
        ValueError: If ``end`` and ``shapes`` name different sites, ``start``
            names a site not in ``shapes``, or indices do not fit the shapes.
    """
    start = {} if start is None else dict(start)
    if set(end) != set(shapes) or set(start) - set(shapes):
        raise ValueError(
            f"end and shapes must name the same sites and start no others, got "
            f"{sorted(end)}, {sorted(shapes)} and {sorted(start)}."
        )
    sites = list(shapes)
    if not sites:
        fig, (ax,) = _figure(6.0, 2.0)
        ax.text(0.5, 0.5, "no sparse site: every weight is active", ha="center")
        ax.set_axis_off()
        return _save(fig, path)
    ncols = min(len(sites), ACTIVE_SET_COLUMNS)
    nrows = math.ceil(len(sites) / ncols)
    fig, axes = _figure(4.5 * ncols, 3.2 * nrows, nrows, ncols)
    for ax in axes[len(sites) :]:
        ax.remove()
    for ax, site in zip(axes, sites):
        size = _shape(shapes[site], f"shapes[{site!r}]")
        final = _indices(end[site], size.numel(), f"end[{site!r}]")
        units = torch.arange(size[1] if len(size) > 1 else 1).numpy()
        kept = "start not recorded"
        if site in start:
            first = _indices(start[site], size.numel(), f"start[{site!r}]")
            fractions = column_fractions(first, size).numpy()
            ax.plot(units, fractions, color="0.6", linewidth=1, label="start")
            kept = f"{kept_fraction(first, final):.1%} of the start still active"
        fractions = column_fractions(final, size).numpy()
        ax.plot(units, fractions, color="tab:blue", linewidth=1, label="end")
        if len(units) == 1:  # one point per line: show it
            for line in ax.lines:
                line.set_marker("o")
        density = len(final) / size.numel()
        ax.axhline(density, color="k", linestyle=":", linewidth=1, label="density")
        ax.set_title(f"{site} {tuple(size)}\n{kept}", fontsize="medium")
        ax.set(xlabel="input unit (column)", ylabel="active fraction")
        ax.set_ylim(bottom=0)
        ax.legend(fontsize="small")
        ax.grid(alpha=0.3)
    return _save(fig, path)
