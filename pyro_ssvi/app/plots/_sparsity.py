"""Sparsity of a run: active fraction per site and swaps per subspace update."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from ._figure import _figure, _PathLike, _save

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def _site_counts(counts: Any, name: str) -> dict[str, int]:
    if not isinstance(counts, Mapping) or not counts:
        raise ValueError(f"{name} must be a non-empty dict site -> int.")
    for site, value in counts.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"{name}[{site!r}] must be an int >= 0, got {value!r}.")
    return dict(counts)


def plot_layer_density(
    num_active: dict[str, int], numel: dict[str, int], path: _PathLike
) -> Figure:
    """Horizontal bars of each site's density ``num_active / numel``.

    Site names label the bars, so long names stay readable; the figure grows
    with the number of sites.

    Args:
        num_active: ``{site: active coordinates}``, e.g.
            :meth:`~pyro_ssvi.AutoSparseNormal.num_active`.
        numel: ``{site: number of elements}``, same keys.
        path: Where to write the PNG.

    Returns:
        The figure; its axes hold one bar per site (``patches``, top down).

    Raises:
        ValueError: For empty dicts, different keys, or counts that are not
            ints with ``0 <= num_active <= numel`` and ``numel > 0``.
    """
    active = _site_counts(num_active, "num_active")
    sizes = _site_counts(numel, "numel")
    if set(active) != set(sizes):
        raise ValueError(
            f"num_active and numel must have the same sites, got {sorted(active)} "
            f"and {sorted(sizes)}."
        )
    for site, k in active.items():
        if not 0 < sizes[site] or k > sizes[site]:
            raise ValueError(
                f"site {site!r} has {k} active of {sizes[site]} elements; "
                "need 0 <= num_active <= numel and numel > 0."
            )
    sites = list(active)
    density = [active[s] / sizes[s] for s in sites]
    fig, (ax,) = _figure(7.0, 1.5 + 0.3 * len(sites))
    bars = ax.barh(sites, density)
    ax.bar_label(bars, labels=[f"{d:.3g}" for d in density], padding=2)
    ax.invert_yaxis()  # first site on top
    ax.set_xlim(0, 1.1 * max(max(density), 1e-3))
    ax.set_xlabel("density (active / total)")
    ax.set_title("Active fraction per weight site")
    return _save(fig, path)


def _update_field(update: Any, field: str, position: int) -> Any:
    if isinstance(update, Mapping) and field in update:
        return update[field]
    if hasattr(update, field):
        return getattr(update, field)
    raise ValueError(
        f"updates[{position}] has no {field!r} field; expected records like "
        "pyro_ssvi.SubspaceUpdate."
    )


def plot_swap_fraction(
    updates: Sequence[Any], num_active: dict[str, int], path: _PathLike
) -> Figure:
    """Fraction of each site's active set swapped at every subspace update.

    Args:
        updates: Records with ``step`` and ``num_swapped`` (``{site: int}``),
            such as :class:`~pyro_ssvi.SubspaceUpdate`, or dicts with those
            keys. With none, the figure says so.
        num_active: ``{site: k}``, the size of each site's active set; may be
            empty when there are no updates (e.g. a dense guide).
        path: Where to write the PNG.

    Returns:
        The figure; its axes hold one line per site (``lines``).

    Raises:
        ValueError: For a non-positive ``num_active``, records without the
            fields, or a swapped count for a site not in ``num_active``.
    """
    from matplotlib.ticker import MaxNLocator

    if isinstance(num_active, Mapping) and not num_active:
        sizes: dict[str, int] = {}  # no sparse site: fine if there is no update
    else:
        sizes = _site_counts(num_active, "num_active")
    if not all(sizes.values()):
        raise ValueError(f"num_active must be positive, got {sizes}.")
    series: dict[str, tuple[list[float], list[float]]] = {s: ([], []) for s in sizes}
    for i, update in enumerate(updates):
        step = float(_update_field(update, "step", i))
        swapped = _update_field(update, "num_swapped", i)
        if not isinstance(swapped, Mapping):
            raise ValueError(f"updates[{i}].num_swapped must be a dict site -> int.")
        unknown = sorted(set(swapped) - set(sizes))
        if unknown:
            raise ValueError(f"updates[{i}] names sites {unknown} not in num_active.")
        for site, count in swapped.items():
            series[site][0].append(step)
            series[site][1].append(count / sizes[site])
    fig, (ax,) = _figure(6.0, 3.5)
    if not any(steps for steps, _ in series.values()):
        ax.text(0.5, 0.5, "no subspace updates", ha="center", va="center")
        ax.set_axis_off()
    else:
        for site, (steps, fractions) in series.items():
            ax.plot(steps, fractions, marker="o", markersize=3, label=site)
        ax.set(xlabel="SVI step", ylabel="fraction of active set swapped")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
        ax.set_ylim(bottom=0)
        ax.legend(fontsize="small")
        ax.grid(alpha=0.3)
    ax.set_title("Subspace updates")
    return _save(fig, path)
