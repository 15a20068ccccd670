"""Training curves: loss and test metrics per epoch."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from ._figure import _is_number, _panels, _PathLike, _rows, _save, _series

if TYPE_CHECKING:
    from matplotlib.figure import Figure


#: History keys drawn by :func:`plot_training_curves`, with axis labels. The
#: per-epoch test metrics of ``pyro-ssvi train`` use the mean weights.
TRAINING_CURVES = {
    "train_loss": "training loss (−ELBO / N)",
    "test_accuracy": "test accuracy",
    "test_nll": "test NLL",
    "test_ece": "test ECE (top-label, 15 bins)",
    "test_rmse": "test RMSE",
}


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
