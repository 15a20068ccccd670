"""A classifier's calibration (reliability diagram) and OOD detection (entropy)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from ..metrics import auroc, ece, reliability_bins
from ._figure import _figure, _PathLike, _save, _vector

if TYPE_CHECKING:
    from matplotlib.figure import Figure


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
