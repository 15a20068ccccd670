"""PNG figures of training runs, calibration, OOD detection and sparsity.

Every function draws on its own :class:`matplotlib.figure.Figure` with the
Agg canvas (pyplot and the global backend are never touched), writes the PNG
atomically (a temporary file in the target directory, then
:func:`os.replace`) and returns the path. matplotlib is imported only when a
function is called::

    from pyro_ssvi import plots

    plots.plot_reliability(pred.probs, pred.labels, "runs/reliability.png")
    plots.plot_training_curves(history, "runs/curves.png")
"""

from __future__ import annotations

import math
import numbers
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from .checkpoint import atomic_write
from .metrics import auroc, ece, reliability_bins

__all__ = [
    "plot_density_tradeoff",
    "plot_layer_density",
    "plot_ood_entropy",
    "plot_reliability",
    "plot_swap_fraction",
    "plot_training_curves",
]

#: Dots per inch of every figure; a ``(w, h)``-inch figure is ``100 w x 100 h`` px.
DPI = 100

#: History keys drawn by :func:`plot_training_curves`, with axis labels.
TRAINING_CURVES = {
    "train_loss": "training loss (negative ELBO)",
    "test_accuracy": "test accuracy",
    "test_nll": "test NLL",
    "test_ece": "test ECE",
    "test_marginal_ce": "test marginal CE",
}

_PathLike = str | os.PathLike


# --------------------------------------------------------------- infrastructure
def _figure(width: float, height: float, nrows: int = 1, ncols: int = 1) -> Any:
    """A constrained-layout figure on an Agg canvas, and its axes (a flat list)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, squeeze=False)
    return fig, [ax for row in axes for ax in row]


def _save(fig: Any, path: _PathLike) -> Path:
    """Write ``fig`` as a PNG at ``path`` atomically, creating its directory."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return atomic_write(path, lambda fh: fig.savefig(fh, format="png", dpi=DPI))


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


def _grid(count: int, max_cols: int = 3) -> tuple[int, int]:
    cols = min(count, max_cols)
    return math.ceil(count / cols), cols


def _hide_unused(axes: list[Any], used: int) -> None:
    for ax in axes[used:]:
        ax.set_visible(False)


# ------------------------------------------------------------------- training
def plot_training_curves(history: list[dict[str, Any]], path: _PathLike) -> Path:
    """One panel per metric of :data:`TRAINING_CURVES` present in ``history``.

    Rows need not all carry every metric (e.g. evaluation every few epochs);
    each panel plots the rows that have it.

    Args:
        history: Rows with an ``epoch`` key and any of ``train_loss``,
            ``test_accuracy``, ``test_nll``, ``test_ece``, ``test_marginal_ce``.
        path: Where to write the PNG.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Raises:
        ValueError: If ``history`` is empty, a row is not a dict with
            ``epoch``, or no known metric is present.
    """
    rows = _rows(history, "history", "epoch")
    present = [k for k in TRAINING_CURVES if any(k in row for row in rows)]
    if not present:
        raise ValueError(
            f"history has none of the metrics {sorted(TRAINING_CURVES)} to plot."
        )
    nrows, ncols = _grid(len(present))
    fig, axes = _figure(4.0 * ncols, 3.0 * nrows, nrows, ncols)
    for ax, key in zip(axes, present):
        epochs, values = _series(rows, "epoch", key)
        ax.plot(epochs, values, marker="o", markersize=3)
        ax.set_xlabel("epoch")
        ax.set_ylabel(TRAINING_CURVES[key])
        ax.grid(alpha=0.3)
    _hide_unused(axes, len(present))
    return _save(fig, path)


# ---------------------------------------------------------------- calibration
def plot_reliability(
    probs: torch.Tensor, labels: torch.Tensor, path: _PathLike, num_bins: int = 15
) -> Path:
    """Reliability diagram (accuracy vs confidence per bin) over a count histogram.

    Bins are those of :func:`~pyro_ssvi.metrics.reliability_bins` and the
    title gives the top-label :func:`~pyro_ssvi.metrics.ece`.

    Args:
        probs: Mean predictive probabilities, shape ``(N, C)``.
        labels: Integer labels, shape ``(N,)``.
        path: Where to write the PNG.
        num_bins: Number of equal-width confidence bins.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Raises:
        ValueError: For malformed inputs (see :mod:`pyro_ssvi.metrics`).
    """
    bins = reliability_bins(probs, labels, num_bins)
    error = ece(probs, labels, num_bins)
    edges = bins.edges.cpu().numpy()
    width = edges[1:] - edges[:-1]
    full = (bins.counts > 0).cpu().numpy()
    acc = bins.accuracy.cpu().numpy()
    conf = bins.confidence.cpu().numpy()
    fig, (top, bottom) = _figure(5.0, 6.0, 2, 1)
    top.bar(edges[:-1][full], acc[full], width[full], align="edge", label="accuracy")
    top.bar(
        edges[:-1][full],
        conf[full] - acc[full],
        width[full],
        bottom=acc[full],
        align="edge",
        color="tab:red",
        alpha=0.3,
        label="gap to confidence",
    )
    top.plot([0, 1], [0, 1], "k--", linewidth=1, label="perfect calibration")
    top.set(xlim=(0, 1), ylim=(0, 1), xlabel="confidence", ylabel="accuracy")
    top.set_title(f"Reliability diagram (ECE = {error:.4f}, {num_bins} bins)")
    top.legend(loc="upper left")
    bottom.bar(edges[:-1], bins.counts.cpu().numpy(), width, align="edge")
    bottom.set(xlim=(0, 1), xlabel="confidence", ylabel="number of examples")
    return _save(fig, path)


# ---------------------------------------------------------------------- OOD
def plot_ood_entropy(
    entropy_in: torch.Tensor,
    entropy_out: torch.Tensor,
    path: _PathLike,
    labels: tuple[str, str] = ("in-distribution", "OOD"),
) -> Path:
    """Overlaid histograms of predictive entropy, with the OOD-detection AUROC.

    Args:
        entropy_in: Entropies on in-distribution inputs, shape ``(N,)``.
        entropy_out: Entropies on OOD inputs, shape ``(M,)``.
        path: Where to write the PNG.
        labels: Legend names of the two sets.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Raises:
        ValueError: For empty or non-finite entropies, or ``labels`` that
            are not two strings.
    """
    ent_in = _vector(entropy_in, "entropy_in")
    ent_out = _vector(entropy_out, "entropy_out")
    if len(labels) != 2 or not all(isinstance(s, str) for s in labels):
        raise ValueError(f"labels must be two strings, got {labels!r}.")
    score = auroc(ent_in, ent_out)
    low = min(ent_in.min().item(), ent_out.min().item())
    high = max(ent_in.max().item(), ent_out.max().item())
    edges = torch.linspace(low, high if high > low else low + 1.0, 31).numpy()
    fig, (ax,) = _figure(5.0, 3.5)
    for values, name in ((ent_in, labels[0]), (ent_out, labels[1])):
        ax.hist(values.numpy(), bins=edges, density=True, alpha=0.5, label=name)
    ax.set(xlabel="predictive entropy (nats)", ylabel="density")
    ax.set_title(f"OOD detection by entropy: AUROC = {score:.4f}")
    ax.legend()
    return _save(fig, path)


# ------------------------------------------------------------------ sparsity
def _site_counts(counts: Any, name: str) -> dict[str, int]:
    if not isinstance(counts, Mapping) or not counts:
        raise ValueError(f"{name} must be a non-empty dict site -> int.")
    for site, value in counts.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"{name}[{site!r}] must be an int >= 0, got {value!r}.")
    return dict(counts)


def plot_layer_density(
    num_active: dict[str, int], numel: dict[str, int], path: _PathLike
) -> Path:
    """Horizontal bars of each site's density ``num_active / numel``.

    Site names label the bars, so long names stay readable; the figure grows
    with the number of sites.

    Args:
        num_active: ``{site: active coordinates}``, e.g.
            :meth:`~pyro_ssvi.AutoSparseNormal.num_active`.
        numel: ``{site: number of elements}``, same keys.
        path: Where to write the PNG.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

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
    ax.set_title("Active fraction per sparse site")
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
) -> Path:
    """Fraction of each site's active set swapped at every subspace update.

    Args:
        updates: Records with ``step`` and ``num_swapped`` (``{site: int}``),
            such as :class:`~pyro_ssvi.SubspaceUpdate`, or dicts with those
            keys. With none, the figure says so.
        num_active: ``{site: k}``, the size of each site's active set; may be
            empty when there are no updates (e.g. a dense guide).
        path: Where to write the PNG.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Raises:
        ValueError: For a non-positive ``num_active``, records without the
            fields, or a swapped count for a site not in ``num_active``.
    """
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
        ax.set_ylim(bottom=0)
        ax.legend(fontsize="small")
        ax.grid(alpha=0.3)
    ax.set_title("Subspace updates")
    return _save(fig, path)


def plot_density_tradeoff(
    rows: list[dict[str, Any]],
    path: _PathLike,
    x: str = "density",
    ys: Sequence[str] = ("test_accuracy", "test_nll", "test_ece", "ood_auroc"),
    group: str | None = None,
) -> Path:
    """Metrics against density (log x axis) from a comparison table.

    Args:
        rows: One dict per run, with key ``x`` (> 0) and any of ``ys``.
        path: Where to write the PNG.
        x: The key on the horizontal (log) axis.
        ys: Keys to plot, one panel each; those absent from every row are
            skipped.
        group: Optional key splitting the rows into labelled lines (e.g. a
            criterion name); rows are sorted by ``x`` within each line.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Raises:
        ValueError: For empty rows, rows without ``x`` (or ``group``), a
            non-positive ``x``, or none of ``ys`` present.
    """
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
    nrows, ncols = _grid(len(present), max_cols=2)
    fig, axes = _figure(4.5 * ncols, 3.2 * nrows, nrows, ncols)
    for ax, y in zip(axes, present):
        for name, line in lines.items():
            xs, values = _series(line, x, y)
            ax.plot(xs, values, marker="o", markersize=4, label=name or None)
        ax.set_xscale("log")
        ax.set(xlabel=x, ylabel=y)
        ax.grid(alpha=0.3, which="both")
        if group is not None:
            ax.legend(fontsize="small", title=group)
    _hide_unused(axes, len(present))
    return _save(fig, path)
