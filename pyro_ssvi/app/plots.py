"""PNG figures of training runs, calibration, OOD detection, regression and sparsity.

Every function draws on its own :class:`matplotlib.figure.Figure` with the
Agg canvas (pyplot and the global backend are never touched), writes the PNG
atomically (a temporary file in the target directory, then
:func:`os.replace`) and returns the figure, whose artists hold exactly the
data drawn (tests read them back). Every calibration error says whether it
comes from Monte Carlo predictions or from the mean weights. matplotlib is
imported only when a function is called::

    from pyro_ssvi.app import plots

    plots.plot_reliability(pred.probs, pred.labels, "runs/reliability.png")
    fig = plots.plot_training_curves(history, "runs/curves.png")
    fig.axes[0].lines[0].get_ydata()   # the training losses
"""

from __future__ import annotations

import math
import numbers
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from .checkpoint import atomic_write
from .metrics import auroc, ece, reliability_bins

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = [
    "plot_density_tradeoff",
    "plot_layer_density",
    "plot_ood_entropy",
    "plot_predictions",
    "plot_regression_calibration",
    "plot_reliability",
    "plot_swap_fraction",
    "plot_training_curves",
]

#: Dots per inch of every figure; a ``(w, h)``-inch figure is ``100 w x 100 h`` px.
DPI = 100

#: History keys drawn by :func:`plot_training_curves`, with axis labels. The
#: per-epoch test metrics of ``pyro-ssvi train`` use the mean weights.
TRAINING_CURVES = {
    "train_loss": "training loss (−ELBO / N)",
    "test_accuracy": "test accuracy",
    "test_nll": "test NLL",
    "test_ece": "test ECE (top-label, 15 bins)",
    "test_rmse": "test RMSE",
}

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

_PathLike = str | os.PathLike


# --------------------------------------------------------------- infrastructure
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


# ------------------------------------------------------------------- training
def plot_training_curves(
    history: list[dict[str, Any]],
    path: _PathLike,
    *,
    final: Mapping[str, Any] | None = None,
    kind: str = "mean weights",
) -> Figure:
    """One panel per metric of :data:`TRAINING_CURVES` present in ``history``.

    Rows need not all carry every metric (e.g. evaluation every few epochs);
    each panel plots the rows that have it, against integer epochs. Test
    metrics are labelled with ``kind``, how they were predicted (``pyro-ssvi
    train`` evaluates each epoch with the mean weights), and ``final`` adds
    the final Monte Carlo value of each at the last epoch, labelled with its
    number of samples, so the two kinds are never confused.

    Args:
        history: Rows with an ``epoch`` key and any of ``train_loss``,
            ``test_accuracy``, ``test_nll``, ``test_ece``.
        path: Where to write the PNG.
        final: Final metrics (``metrics.json``): ``test_accuracy``,
            ``test_nll``, ``test_ece`` from Monte Carlo predictions and
            ``num_samples``.
        kind: How the per-epoch test metrics were predicted.

    Returns:
        The figure: panel ``i`` holds the series as ``lines[0]`` and the
        final value, if any, as ``lines[1]``.

    Raises:
        ValueError: If ``history`` is empty, a row is not a dict with
            ``epoch``, or no known metric is present.
    """
    from matplotlib.ticker import MaxNLocator

    rows = _rows(history, "history", "epoch")
    present = [k for k in TRAINING_CURVES if any(k in row for row in rows)]
    if not present:
        raise ValueError(
            f"history has none of the metrics {sorted(TRAINING_CURVES)} to plot."
        )
    last = max(float(row["epoch"]) for row in rows)
    samples = (
        f", {final['num_samples']} samples" if final and "num_samples" in final else ""
    )
    fig, axes = _panels(len(present), 4.0, 3.0)
    for ax, key in zip(axes, present):
        epochs, values = _series(rows, "epoch", key)
        test = key.startswith("test_")
        label = f"{kind}, each epoch" if test else None
        ax.plot(epochs, values, marker="o", markersize=3, label=label)
        if test and final is not None and _is_number(final.get(key)):
            ax.plot(
                [last],
                [final[key]],
                "*",
                markersize=11,
                color="tab:red",
                label=f"MC{samples}, final",
            )
        if test:
            ax.legend(fontsize="small")
        ax.set(xlabel="epoch", ylabel=TRAINING_CURVES[key])
        ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
        ax.grid(alpha=0.3)
    return _save(fig, path)


# ---------------------------------------------------------------- calibration
def plot_reliability(
    probs: torch.Tensor,
    labels: torch.Tensor,
    path: _PathLike,
    num_bins: int = 15,
    *,
    kind: str = "MC",
) -> Figure:
    """Reliability diagram (accuracy and confidence per bin) over a count histogram.

    Bins are those of :func:`~pyro_ssvi.app.metrics.reliability_bins`: each
    non-empty bin is an accuracy bar with its mean confidence as a line
    across it, so the gap to the diagonal reads off directly and nothing is
    drawn in a colour the legend does not name. The title gives the
    top-label :func:`~pyro_ssvi.app.metrics.ece` and ``kind``.

    Args:
        probs: Mean predictive probabilities, shape ``(N, C)``.
        labels: Integer labels, shape ``(N,)``.
        path: Where to write the PNG.
        num_bins: Number of equal-width confidence bins.
        kind: How ``probs`` were predicted, e.g. ``"MC, 10 samples"`` or
            ``"mean weights"``.

    Returns:
        The figure: the top axes hold the accuracy bars (``patches``) and the
        confidences (``collections[0]``), the bottom axes the count bars.

    Raises:
        ValueError: For malformed inputs (see :mod:`pyro_ssvi.app.metrics`).
    """
    bins = reliability_bins(probs, labels, num_bins)
    error = ece(probs, labels, num_bins)
    edges = bins.edges.cpu().numpy()
    width = edges[1:] - edges[:-1]
    full = (bins.counts > 0).cpu().numpy()
    acc = bins.accuracy.cpu().numpy()[full]
    conf = bins.confidence.cpu().numpy()[full]
    left = edges[:-1][full]
    fig, (top, bottom) = _figure(5.0, 6.0, 2, 1)
    bars = top.bar(
        left, acc, width[full], align="edge", color="tab:blue", label="accuracy"
    )
    confidence = top.hlines(
        conf,
        left,
        left + width[full],
        colors="tab:red",
        linewidth=2.5,
        label="mean confidence",
    )
    (diagonal,) = top.plot(
        [0, 1], [0, 1], "k--", linewidth=1, label="perfect calibration"
    )
    top.set(xlim=(0, 1), ylim=(0, 1), xlabel="confidence", ylabel="accuracy")
    top.set_title(f"Reliability ({kind})\nECE {error:.4f} (top-label, {num_bins} bins)")
    top.legend(handles=[bars, confidence, diagonal], loc="upper left", framealpha=1)
    bottom.bar(
        edges[:-1], bins.counts.cpu().numpy(), width, align="edge", color="tab:gray"
    )
    bottom.set(xlim=(0, 1), xlabel="confidence", ylabel="number of examples")
    return _save(fig, path)


# ----------------------------------------------------------------- regression
def _gaussian(
    mean: Any, variance: Any, targets: Any
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Flattened float64 ``(mean, variance, targets)`` of one shape, variance > 0."""
    mean, variance, targets = (
        _vector(torch.as_tensor(v, dtype=torch.float64).reshape(-1), name)
        for v, name in ((mean, "mean"), (variance, "variance"), (targets, "targets"))
    )
    if not len(mean) == len(variance) == len(targets):
        raise ValueError(
            f"mean, variance and targets must have the same size, got {len(mean)}, "
            f"{len(variance)} and {len(targets)}."
        )
    if (variance <= 0).any():
        raise ValueError("variance must be > 0.")
    return mean, variance, targets


def plot_regression_calibration(
    mean: Any,
    variance: Any,
    targets: Any,
    path: _PathLike,
    *,
    num_levels: int = 19,
    kind: str = "MC",
) -> Figure:
    """Observed against expected coverage of the central predictive intervals.

    The points are :func:`~pyro_ssvi.app.regression.calibration_curve` of the
    moment-matched Gaussian predictive ``N(mean, variance)`` at levels
    ``1/(L+1) ... L/(L+1)``; the diagonal is perfect calibration, points
    below it mean intervals that are too narrow. The title gives
    :func:`~pyro_ssvi.app.regression.calibration_error` and ``kind``.

    Args:
        mean: Predictive means, shape ``(N,)`` (or ``(N, D)``, flattened).
        variance: Total predictive variances, > 0, same shape.
        targets: Targets, same shape.
        path: Where to write the PNG.
        num_levels: Number ``L`` of interval levels.
        kind: How the predictions were made, e.g. ``"MC, 100 samples"``.

    Returns:
        The figure; its axes hold the curve as ``lines[0]`` (expected, observed)
        and the diagonal as ``lines[1]``.

    Raises:
        ValueError: For malformed inputs (see :mod:`pyro_ssvi.app.regression`).
    """
    from .regression import calibration_curve, calibration_error

    mean, variance, targets = _gaussian(mean, variance, targets)
    curve = calibration_curve(mean, variance, targets, num_levels=num_levels)
    error = calibration_error(mean, variance, targets, num_levels=num_levels)
    fig, (ax,) = _figure(4.5, 4.5)
    ax.plot(
        curve.expected.numpy(),
        curve.observed.numpy(),
        "o-",
        markersize=4,
        label="observed",
    )
    ax.plot([0, 1], [0, 1], "k--", linewidth=1, label="perfect calibration")
    ax.set(
        xlim=(0, 1),
        ylim=(0, 1),
        xlabel="expected coverage (interval level)",
        ylabel="observed coverage",
    )
    ax.set_title(
        f"Interval calibration ({kind})\n"
        f"calibration error {error:.4f} ({num_levels} levels)"
    )
    ax.legend(loc="upper left")
    ax.grid(alpha=0.3)
    return _save(fig, path)


def plot_predictions(
    mean: Any,
    variance: Any,
    targets: Any,
    path: _PathLike,
    *,
    kind: str = "MC",
) -> Figure:
    """Predicted against true targets, with ±2 predictive standard deviations.

    Each example is a point at (target, predictive mean) with an error bar of
    ``2 sqrt(variance)`` either side; the diagonal is a perfect prediction.
    The title gives the RMSE and the fraction of targets within the bars.

    Args:
        mean: Predictive means, shape ``(N,)`` (or ``(N, D)``, flattened).
        variance: Total predictive variances, > 0, same shape.
        targets: Targets, same shape.
        path: Where to write the PNG.
        kind: How the predictions were made, e.g. ``"MC, 100 samples"``.

    Returns:
        The figure; its axes hold the error bars (``containers[0]``: the
        points as ``lines[0]`` and the bars as ``collections[0]``) and the
        diagonal as ``lines[1]``.

    Raises:
        ValueError: For malformed inputs.
    """
    mean, variance, targets = _gaussian(mean, variance, targets)
    std = variance.sqrt()
    rmse = (targets - mean).pow(2).mean().sqrt().item()
    inside = ((targets - mean).abs() <= 2 * std).double().mean().item()
    fig, (ax,) = _figure(5.0, 4.5)
    ax.errorbar(
        targets.numpy(),
        mean.numpy(),
        yerr=2 * std.numpy(),
        fmt="o",
        markersize=3,
        elinewidth=0.8,
        alpha=0.8,
        label="predictive mean ± 2 std",
    )
    low = min(targets.min().item(), (mean - 2 * std).min().item())
    high = max(targets.max().item(), (mean + 2 * std).max().item())
    ax.plot([low, high], [low, high], "k--", linewidth=1, label="perfect prediction")
    ax.set(xlabel="true target", ylabel="predicted target")
    ax.set_title(
        f"Predictions ({kind})\nRMSE {rmse:.4g}, {inside:.0%} of targets "
        "within ± 2 std"
    )
    ax.legend(loc="upper left", fontsize="small")
    ax.grid(alpha=0.3)
    return _save(fig, path)


# ---------------------------------------------------------------------- OOD
def plot_ood_entropy(
    entropy_in: torch.Tensor,
    entropy_out: torch.Tensor,
    path: _PathLike,
    labels: tuple[str, str] = ("in-distribution", "OOD"),
    *,
    kind: str = "MC",
) -> Figure:
    """Histograms of predictive entropy side by side, with the OOD-detection AUROC.

    Both histograms share 30 equal-width bins and are normalised to density;
    they are drawn as outlines, so overlapping bins show no mixed colour.

    Args:
        entropy_in: Entropies on in-distribution inputs, shape ``(N,)``.
        entropy_out: Entropies on OOD inputs, shape ``(M,)``.
        path: Where to write the PNG.
        labels: Legend names of the two sets.
        kind: How the predictions were made, e.g. ``"MC, 10 samples"``.

    Returns:
        The figure; its axes hold one step patch per set (``patches``).

    Raises:
        ValueError: For empty or non-finite entropies, or ``labels`` that
            are not two strings.
    """
    ent_in = _vector(entropy_in, "entropy_in")
    ent_out = _vector(entropy_out, "entropy_out")
    if len(labels) != 2 or not all(isinstance(s, str) for s in labels):
        raise ValueError(f"labels must be two strings, got {labels!r}.")
    score = auroc(ent_in, ent_out)
    # float64 edges: entropies that differ by a few float32 steps (a network
    # of almost no weights predicts nearly the same for every input) would
    # give float32 bins of zero width, and numpy's density a 0/0.
    ent_in, ent_out = ent_in.double(), ent_out.double()
    low = min(ent_in.min().item(), ent_out.min().item())
    high = max(ent_in.max().item(), ent_out.max().item())
    top = high if high > low else low + 1.0
    edges = torch.linspace(low, top, 31, dtype=torch.float64)
    fig, (ax,) = _figure(5.0, 3.5)
    for values, name, color in (
        (ent_in, labels[0], "tab:blue"),
        (ent_out, labels[1], "tab:orange"),
    ):
        ax.hist(
            values.numpy(),
            bins=edges.numpy(),
            density=True,
            histtype="step",
            linewidth=1.8,
            color=color,
            label=name,
        )
    ax.set(xlabel="predictive entropy (nats)", ylabel="density")
    ax.set_title(f"OOD detection by entropy ({kind})\nAUROC {score:.4f}")
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
