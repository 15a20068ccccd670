"""Metrics against density, from a comparison of runs."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from ._figure import _is_number, _panels, _PathLike, _rows, _save, _series

if TYPE_CHECKING:
    from matplotlib.figure import Figure


#: Axis labels of metrics keys in :func:`plot_density_tradeoff` (other keys
#: are shown with spaces for underscores).
METRIC_LABELS = {
    "density": "density (log scale)",
    "test_accuracy": "test accuracy (MC)",
    "test_nll": "test NLL (MC)",
    "test_ece": "test ECE (MC, top-label, 15 bins)",
    "test_marginal_ce": "test marginal CE (MC)",
    "ood_auroc": "OOD AUROC (entropy, MC)",
    "test_rmse": "test RMSE (MC)",
    "test_log_likelihood": "test log-likelihood (MC)",
    "test_coverage_90": "90% interval coverage (MC)",
    "test_calibration_error": "calibration error (MC, 19 levels)",
}


def plot_density_tradeoff(
    rows: list[dict[str, Any]],
    path: _PathLike,
    x: str = "density",
    ys: Sequence[str] = ("test_accuracy", "test_nll", "test_ece", "ood_auroc"),
    group: str | None = None,
    *,
    reference: Mapping[str, Any] | None = None,
    reference_label: str = "dense VI (AutoNormal)",
) -> Figure:
    """Metrics against density (log x axis) from a comparison table.

    The x ticks are the values in ``rows``, labelled as plain numbers (no
    crowded minor labels); axes carry readable names (:data:`METRIC_LABELS`),
    and ``reference`` (e.g. the dense-VI row) is drawn as a dashed
    horizontal line in each panel that has its metric. The first panel holds
    the legend.

    Args:
        rows: One dict per run, with key ``x`` (> 0) and any of ``ys``.
        path: Where to write the PNG.
        x: The key on the horizontal (log) axis.
        ys: Keys to plot, one panel each; those absent from every row are
            skipped.
        group: Optional key splitting the rows into labelled lines (e.g. a
            criterion name); rows are sorted by ``x`` within each line.
        reference: A row drawn as a horizontal line, not a point.
        reference_label: Its legend entry.

    Returns:
        The figure: in each panel one line per group (``lines``, sorted by
        ``x``), then the reference line.

    Raises:
        ValueError: For empty rows, rows without ``x`` (or ``group``), a
            non-positive ``x``, or none of ``ys`` present.
    """
    from matplotlib.ticker import FixedLocator, NullFormatter

    table = _rows(rows, "rows", x)
    for i, row in enumerate(table):
        if not float(row[x]) > 0:
            raise ValueError(f"rows[{i}][{x!r}] must be > 0 for a log axis.")
        if group is not None and group not in row:
            raise ValueError(f"rows[{i}] has no {group!r} key to group by.")
    present = [y for y in ys if any(y in row for row in table)]
    if not present:
        raise ValueError(f"rows have none of the keys {list(ys)} to plot.")
    lines: dict[str, list[Mapping[str, Any]]] = {}
    for row in sorted(table, key=lambda r: float(r[x])):
        lines.setdefault("" if group is None else str(row[group]), []).append(row)
    ticks = sorted({float(row[x]) for row in table})
    fig, axes = _panels(len(present), 4.5, 3.2)
    for ax, y in zip(axes, present):
        for name, line in lines.items():
            xs, values = _series(line, x, y)
            ax.plot(xs, values, marker="o", markersize=4, label=name or "SSVI")
        if reference is not None and _is_number(reference.get(y)):
            ax.axhline(
                float(reference[y]), color="k", linestyle="--", label=reference_label
            )
        ax.set_xscale("log")
        ax.xaxis.set_major_locator(FixedLocator(ticks))
        ax.xaxis.set_major_formatter(lambda value, _pos: f"{value:g}")
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set(xlabel=_label(x), ylabel=_label(y))
        ax.grid(alpha=0.3, which="both")
        ax.margins(y=0.2)  # keep points off the edges, where a legend may sit
    axes[0].legend(fontsize="small", title=group)  # the same entries in every panel
    return _save(fig, path)


def _label(key: str) -> str:
    return METRIC_LABELS.get(key, key.replace("_", " "))
