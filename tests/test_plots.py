"""Tests of pyro_ssvi.app.plots by content: the data each figure drew, read back from
its matplotlib artists, equals the input; labels say what is shown; the PNG is
written whole (no temporary file left)."""

from __future__ import annotations

import math
import re
import subprocess
import sys
from pathlib import Path

import matplotlib.colors
import matplotlib.image
import numpy as np
import pytest
import torch

from pyro_ssvi.app import plots
from pyro_ssvi.app.metrics import auroc, ece, reliability_bins
from pyro_ssvi.app.regression import calibration_curve, calibration_error
from pyro_ssvi.svi import SubspaceUpdate

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _probs(n: int = 60, c: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    probs = torch.softmax(torch.randn(n, c, generator=g) * 2, -1)
    return probs, torch.randint(0, c, (n,), generator=g)


def _check_png(path: Path, fig) -> None:
    """The figure as a PNG at ``DPI`` pixels per inch, alone in its directory."""
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    image = matplotlib.image.imread(path)
    width, height = fig.get_size_inches() * plots.DPI
    assert image.shape[:2] == (round(height), round(width))
    assert [p.name for p in path.parent.iterdir()] == [path.name]


def _legend(ax) -> list[str]:
    return [t.get_text() for t in ax.get_legend().get_texts()]


def _visible_ticks(ax) -> np.ndarray:
    low, high = ax.get_xlim()
    ticks = ax.get_xticks()
    return ticks[(ticks >= low) & (ticks <= high)]


def _updates() -> list[SubspaceUpdate]:
    return [
        SubspaceUpdate(step, 0.3, {"a": 3, "b": 1}, {"a": swapped, "b": 1})
        for step, swapped in ((100, 3), (200, 2), (300, 0))
    ]


# ------------------------------------------------------------ training curves
def test_training_curves_draw_each_metric_and_the_final_mc_value(tmp_path):
    history = [
        {"epoch": e, "train_loss": 10 / e, "test_accuracy": 0.5 + e / 40}
        | {"test_nll": 1 / e, "test_ece": 0.1 / e}
        for e in range(1, 8)
    ]
    del history[2]["test_nll"]  # a metric missing from some rows
    final = {"test_accuracy": 0.61, "test_nll": 0.2, "test_ece": 0.03}
    fig = plots.plot_training_curves(
        history, tmp_path / "c.png", final={**final, "num_samples": 10}
    )
    _check_png(tmp_path / "c.png", fig)
    assert len(fig.axes) == 4  # a 2 x 2 grid: no empty panel
    corners = {
        (round(a.get_position().x0, 2), round(a.get_position().y0, 2)) for a in fig.axes
    }
    assert len(corners) == 4
    for ax, key in zip(fig.axes, plots.TRAINING_CURVES):
        rows = [r for r in history if key in r]
        assert ax.lines[0].get_xdata().tolist() == [r["epoch"] for r in rows]
        assert ax.lines[0].get_ydata().tolist() == [r[key] for r in rows]
        assert (
            ax.get_xlabel() == "epoch" and ax.get_ylabel() == plots.TRAINING_CURVES[key]
        )
        ticks = _visible_ticks(ax)
        assert len(ticks) > 1 and np.array_equal(ticks, np.round(ticks))
        if key == "train_loss":
            assert len(ax.lines) == 1 and ax.get_legend() is None
        else:
            assert ax.lines[1].get_xdata().tolist() == [7]
            assert ax.lines[1].get_ydata().tolist() == [final[key]]
            assert _legend(ax) == ["mean weights, each epoch", "MC, 10 samples, final"]


@pytest.mark.parametrize("count, grid", [(1, (1, 1)), (2, (1, 2)), (3, (1, 3))])
def test_training_curves_use_one_row_up_to_three_panels(tmp_path, count, grid):
    keys = list(plots.TRAINING_CURVES)[:count]
    history = [{"epoch": e, **{k: np.float32(e) for k in keys}} for e in (1, 2)]
    fig = plots.plot_training_curves(history, str(tmp_path / "c.png"))
    assert len(fig.axes) == count
    assert fig.get_size_inches().tolist() == [4.0 * grid[1], 3.0 * grid[0]]
    assert [ax.lines[0].get_ydata().tolist() for ax in fig.axes] == [[1, 2]] * count


def _assert_plain_ticks(fig) -> None:
    """No axis of ``fig`` has an offset ("+9.32e-1") or scientific tick labels."""
    fig.canvas.draw()
    for ax in fig.axes:
        for axis in (ax.xaxis, ax.yaxis):
            assert axis.get_offset_text().get_text() == "", ax.get_title()
            for label in axis.get_ticklabels():
                text = label.get_text()
                assert not re.search(r"\d[eE][-+−]?\d|\\times|×", text), text


@pytest.mark.parametrize("each_epoch, final_mc", [(0.932, 0.9321), (0.93212, 0.93218)])
def test_one_epoch_training_curves_label_ticks_plainly(tmp_path, each_epoch, final_mc):
    # One epoch, accuracies 0.9320 and 0.9321: matplotlib labelled the axis
    # with an offset "+9.32e-1" over ticks from -0.00002 to 0.00012 (and
    # 0.93212, 0.93218 with "1e-5+9.321e-1" over ticks 1 to 9).
    history = [{"epoch": 1, "train_loss": 0.25, "test_accuracy": each_epoch}]
    final = {"test_accuracy": final_mc, "num_samples": 10}
    fig = plots.plot_training_curves(history, tmp_path / "c.png", final=final)
    _assert_plain_ticks(fig)
    accuracy = fig.axes[1]
    labels = [t.get_text() for t in accuracy.yaxis.get_ticklabels()]
    values = [float(t.replace("\u2212", "-")) for t in labels]
    assert np.allclose(values, accuracy.get_yticks(), rtol=0, atol=1e-9)
    low, high = accuracy.get_ylim()
    assert low <= min(each_epoch, final_mc) and max(each_epoch, final_mc) <= high


def test_every_plot_labels_ticks_plainly(tmp_path):
    """Near-constant and large values: no offset or scientific labels anywhere."""
    big = torch.tensor([1e6 + 0.01, 1e6 + 0.02, 1e6 + 0.03], dtype=torch.float64)
    figures = [
        plots.plot_predictions(big, torch.full((3,), 1e-6), big, tmp_path / "p.png"),
        plots.plot_regression_calibration(
            big, torch.full((3,), 1e-4), big, tmp_path / "c.png"
        ),
        plots.plot_ood_entropy([1e-5, 1.1e-5], [1.2e-5, 1.3e-5], tmp_path / "o.png"),
        plots.plot_layer_density({"a": 1}, {"a": 10**7}, tmp_path / "d.png"),
        plots.plot_swap_fraction(
            [{"step": 10**7 + s, "num_swapped": {"a": 1}} for s in (1, 2)],
            {"a": 10**6},
            tmp_path / "s.png",
        ),
        plots.plot_density_tradeoff(
            [{"density": d, "test_accuracy": 0.93 + d * 1e-4} for d in (0.1, 0.5)],
            tmp_path / "t.png",
        ),
    ]
    for fig in figures:
        _assert_plain_ticks(fig)


# ------------------------------------------------------------------ calibration
def test_reliability_draws_the_bins_and_labels_every_colour(tmp_path):
    probs, labels = _probs()
    fig = plots.plot_reliability(
        probs, labels, tmp_path / "r.png", num_bins=10, kind="MC, 3 samples"
    )
    _check_png(tmp_path / "r.png", fig)
    bins = reliability_bins(probs, labels, 10)
    full = bins.counts > 0
    top, bottom = fig.axes
    bars = top.patches
    assert [b.get_x() for b in bars] == pytest.approx(bins.edges[:-1][full].tolist())
    assert [b.get_height() for b in bars] == pytest.approx(bins.accuracy[full].tolist())
    segments = top.collections[0].get_segments()
    assert [s[0][1] for s in segments] == pytest.approx(bins.confidence[full].tolist())
    assert [s[0][0] for s in segments] == pytest.approx(bins.edges[:-1][full].tolist())
    assert [b.get_height() for b in bottom.patches] == bins.counts.tolist()
    assert _legend(top) == ["accuracy", "mean confidence", "perfect calibration"]
    # Opaque bars in the legend's colour: no blended overlap colour anywhere.
    blue = matplotlib.colors.to_rgba("tab:blue")
    assert {b.get_facecolor() for b in bars} == {blue}
    assert top.get_legend().legend_handles[0].get_facecolor() == blue
    title = top.get_title()
    assert f"ECE {ece(probs, labels, 10):.4f}" in title and "(MC, 3 samples)" in title


def test_reliability_rewrites_atomically_and_creates_directories(tmp_path):
    probs, labels = _probs()
    target = tmp_path / "new" / "dir" / "r.png"
    plots.plot_reliability(probs, labels, target)
    first = target.read_bytes()
    fig = plots.plot_reliability(probs, labels, target, num_bins=5)
    assert target.read_bytes() != first and len(fig.axes[1].patches) == 5
    _check_png(target, fig)


# ---------------------------------------------------------------------- OOD
def test_ood_entropy_histograms_equal_the_inputs(tmp_path):
    g = torch.Generator().manual_seed(1)
    ent_in, ent_out = torch.rand(50, generator=g), torch.rand(30, generator=g) + 0.5
    fig = plots.plot_ood_entropy(
        ent_in, ent_out, tmp_path / "ood.png", labels=("mnist", "fashion"), kind="MC"
    )
    _check_png(tmp_path / "ood.png", fig)
    (ax,) = fig.axes
    edges = np.linspace(ent_in.min().item(), ent_out.max().item(), 31)
    for patch, values in zip(ax.patches, (ent_in, ent_out)):
        heights = patch.get_xy()[1:-1:2, 1]  # a step outline: x0,0 x0,h0 x1,h0 ...
        expected = np.histogram(values.numpy(), edges, density=True)[0]
        assert heights == pytest.approx(expected, rel=1e-5)
    assert _legend(ax) == ["mnist", "fashion"]
    assert (
        ax.get_title()
        == f"OOD detection by entropy (MC)\nAUROC {auroc(ent_in, ent_out):.4f}"
    )


def test_ood_entropy_constant_values(tmp_path):
    fig = plots.plot_ood_entropy([0.0, 0.0], [0.0], tmp_path / "ood.png")
    assert "AUROC 0.5000" in fig.axes[0].get_title()


def test_ood_entropy_of_nearly_equal_values_has_bins_and_no_numpy_warning(tmp_path):
    """A network of almost no active weights (``--density 1e-6``) predicts
    nearly the same for every input: entropies a few float32 steps apart.
    In float32 the 30 bins had zero width, and numpy's normalisation divided
    by it (a RuntimeWarning, an error here: filterwarnings = error)."""
    step = torch.finfo(torch.float32).eps * 2.3026  # one float32 step at log(10)
    ent_in = 2.3026 + step * torch.arange(4.0)
    ent_out = 2.3026 + step * torch.tensor([1.0, 3.0, 3.0, 5.0])
    fig = plots.plot_ood_entropy(ent_in, ent_out, tmp_path / "ood.png")
    _check_png(tmp_path / "ood.png", fig)
    edges = np.linspace(ent_in.min().item(), ent_out.max().item(), 31)
    assert np.all(np.diff(edges) > 0)
    for patch, values in zip(fig.axes[0].patches, (ent_in, ent_out)):
        heights = patch.get_xy()[1:-1:2, 1]
        expected = np.histogram(values.double().numpy(), edges, density=True)[0]
        assert np.isfinite(heights).all() and heights == pytest.approx(expected)


# ------------------------------------------------------------------ sparsity
def test_layer_density_bars_are_the_densities(tmp_path):
    sites = ["net.features.layer3.0.conv1.weight", "fc.weight"]
    fig = plots.plot_layer_density(
        dict(zip(sites, (100, 5))), dict(zip(sites, (1000, 50))), tmp_path / "d.png"
    )
    _check_png(tmp_path / "d.png", fig)
    (ax,) = fig.axes
    assert [b.get_width() for b in ax.patches] == pytest.approx([0.1, 0.1])
    assert [t.get_text() for t in ax.get_yticklabels()] == sites
    assert ax.get_ylim()[0] > ax.get_ylim()[1]  # first site on top


def test_swap_fraction_lines_are_the_swapped_fractions(tmp_path):
    for updates in (_updates(), [u._asdict() for u in _updates()]):
        fig = plots.plot_swap_fraction(updates, {"a": 10, "b": 5}, tmp_path / "s.png")
        _check_png(tmp_path / "s.png", fig)
        a, b = fig.axes[0].lines
        assert a.get_xdata().tolist() == b.get_xdata().tolist() == [100, 200, 300]
        assert a.get_ydata().tolist() == [0.3, 0.2, 0.0]
        assert b.get_ydata().tolist() == [0.2, 0.2, 0.2]
        assert _legend(fig.axes[0]) == ["a", "b"]
        (tmp_path / "s.png").unlink()


def test_swap_fraction_without_updates_says_so(tmp_path):
    for sizes in ({"a": 10}, {}):
        fig = plots.plot_swap_fraction([], sizes, tmp_path / "s.png")
        assert [t.get_text() for t in fig.axes[0].texts] == ["no subspace updates"]
        assert len(fig.axes[0].lines) == 0


# ------------------------------------------------------------------ active set
def test_column_fractions_by_hand_and_by_a_reference():
    # (3, 4): row 0 has columns 0 and 1, row 1 column 1, row 2 columns 1 and 3.
    linear = plots.column_fractions(torch.tensor([0, 1, 5, 9, 11]), (3, 4))
    assert linear.dtype == torch.float64
    assert linear.tolist() == [1 / 3, 1.0, 0.0, 1 / 3]
    # (2, 3, 1, 2): index i is in column (i // 2) % 3; a column holds 2 * 2.
    conv = plots.column_fractions(torch.tensor([0, 1, 2, 7, 10]), (2, 3, 1, 2))
    assert conv.tolist() == [0.75, 0.25, 0.25]
    assert plots.column_fractions([1, 3], (8,)).tolist() == [0.25]  # one column
    empty = torch.tensor([], dtype=torch.int64)
    assert plots.column_fractions(empty, (2, 2)).tolist() == [0.0, 0.0]
    # Reference: the mask with the input axis first, averaged per input unit.
    g = torch.Generator().manual_seed(0)
    shape = (5, 7, 3, 2)
    active = torch.randperm(210, generator=g)[:61]
    mask = torch.zeros(210, dtype=torch.float64)
    mask[active] = 1
    reference = mask.view(shape).transpose(0, 1).reshape(7, -1).mean(1)
    assert torch.allclose(plots.column_fractions(active, shape), reference)


def test_kept_fraction_is_the_share_of_the_start_still_active():
    assert (
        plots.kept_fraction(torch.tensor([0, 1, 2, 3]), torch.tensor([2, 3, 4])) == 0.5
    )
    assert plots.kept_fraction(torch.tensor([], dtype=torch.int64), [1]) == 1.0


def test_active_set_plot_draws_start_and_end_per_input_unit(tmp_path):
    shapes = {"net.0.weight": (3, 4), "net.2.weight": (2, 3, 1, 2)}
    start = {"net.0.weight": [0, 1, 5, 9, 11], "net.2.weight": [0, 1, 2, 7, 10]}
    end = {"net.0.weight": [1, 5, 8, 9, 10], "net.2.weight": [0, 4, 6, 8, 11]}
    fig = plots.plot_active_set(
        {k: torch.tensor(v) for k, v in start.items()},
        {k: torch.tensor(v) for k, v in end.items()},
        shapes,
        tmp_path / "a.png",
    )
    _check_png(tmp_path / "a.png", fig)
    _assert_plain_ticks(fig)
    expected = {  # (start, end, kept) by hand
        "net.0.weight": ([1 / 3, 1, 0, 1 / 3], [1 / 3, 1, 1 / 3, 0], "60.0%"),
        "net.2.weight": ([0.75, 0.25, 0.25], [0.5, 0.25, 0.5], "20.0%"),
    }
    assert len(fig.axes) == 2
    for ax, (site, (first, last, kept)) in zip(fig.axes, expected.items()):
        lines = {line.get_label(): line for line in ax.lines}
        assert list(lines) == ["start", "end", "density"]
        assert lines["start"].get_xdata().tolist() == list(range(len(first)))
        assert lines["start"].get_ydata().tolist() == pytest.approx(first, abs=0)
        assert lines["end"].get_ydata().tolist() == pytest.approx(last, abs=0)
        numel = math.prod(shapes[site])
        assert list(lines["density"].get_ydata()) == [5 / numel] * 2
        assert ax.get_title() == (
            f"{site} {shapes[site]}\n{kept} of the start still active"
        )
        assert _legend(ax) == ["start", "end", "density"]


def test_active_set_plot_without_a_start_or_without_sparse_sites(tmp_path):
    fig = plots.plot_active_set(None, {"w": [0, 3]}, {"w": (2, 2)}, tmp_path / "a.png")
    (ax,) = fig.axes
    assert [line.get_label() for line in ax.lines] == ["end", "density"]
    assert ax.lines[0].get_ydata().tolist() == [0.5, 0.5]
    assert ax.get_title().endswith("start not recorded")
    fig = plots.plot_active_set({}, {}, {}, tmp_path / "b.png")
    assert fig.axes[0].texts[0].get_text() == "no sparse site: every weight is active"


# ---------------------------------------------------------- density trade-off
def test_density_tradeoff_lines_reference_and_readable_axes(tmp_path):
    rows = [
        {"density": d, "criterion": c, "test_accuracy": 0.9 - d / 10 - len(c) / 100}
        | {"ood_auroc": 0.8 + d / 10}
        for d in (1.0, 0.01, 0.05, 0.1, 0.02)
        for c in ("snr", "mean")
    ]
    dense = {"test_accuracy": 0.95, "ood_auroc": 0.97, "test_nll": 0.1}
    fig = plots.plot_density_tradeoff(
        rows, tmp_path / "t.png", group="criterion", reference=dense
    )
    _check_png(tmp_path / "t.png", fig)
    assert len(fig.axes) == 2  # test_nll and test_ece are in no row
    for ax, key in zip(fig.axes, ("test_accuracy", "ood_auroc")):
        snr, mean, ref = ax.lines
        for line, name in ((snr, "snr"), (mean, "mean")):
            mine = sorted(
                (r for r in rows if r["criterion"] == name), key=lambda r: r["density"]
            )
            assert line.get_xdata().tolist() == [r["density"] for r in mine]
            assert line.get_ydata().tolist() == [r[key] for r in mine]
        assert ref.get_ydata() == [dense[key]] * 2 and ref.get_linestyle() == "--"
        assert ax.get_xscale() == "log" and ax.get_ylabel() == plots.METRIC_LABELS[key]
        assert ax.get_xlabel() == "density (log scale)"
        labels = [t.get_text() for t in ax.get_xticklabels()]
        assert labels == ["0.01", "0.02", "0.05", "0.1", "1"]
        assert not any(t.get_text() for t in ax.get_xticklabels(minor=True))
    assert _legend(fig.axes[0]) == ["snr", "mean", "dense VI (AutoNormal)"]
    assert fig.axes[1].get_legend() is None  # one legend: the same in each panel


# ----------------------------------------------------------------- regression
def _gaussian_predictions(n: int = 40) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(0)
    mean = torch.randn(n, generator=g, dtype=torch.float64) * 3
    variance = torch.rand(n, generator=g, dtype=torch.float64) + 0.5
    targets = mean + variance.sqrt() * torch.randn(n, generator=g, dtype=torch.float64)
    return mean, variance, targets


def test_regression_calibration_draws_the_calibration_curve(tmp_path):
    mean, variance, targets = _gaussian_predictions()
    fig = plots.plot_regression_calibration(
        mean, variance, targets, tmp_path / "c.png", num_levels=9, kind="MC, 5"
    )
    _check_png(tmp_path / "c.png", fig)
    (ax,) = fig.axes
    curve = calibration_curve(mean, variance, targets, num_levels=9)
    assert ax.lines[0].get_xdata().tolist() == curve.expected.tolist()
    assert ax.lines[0].get_ydata().tolist() == curve.observed.tolist()
    diagonal = ax.lines[1]
    assert list(diagonal.get_xdata()) == [0, 1] == list(diagonal.get_ydata())
    error = calibration_error(mean, variance, targets, num_levels=9)
    assert ax.get_title() == (
        f"Interval calibration (MC, 5)\ncalibration error {error:.4f} (9 levels)"
    )
    assert _legend(ax) == ["observed", "perfect calibration"]


def test_predictions_draw_means_against_targets_with_two_std_bars(tmp_path):
    mean, variance, targets = _gaussian_predictions()
    fig = plots.plot_predictions(mean, variance, targets, tmp_path / "p.png")
    _check_png(tmp_path / "p.png", fig)
    (ax,) = fig.axes
    points, _, (bars,) = ax.containers[0]
    assert points.get_xdata().tolist() == targets.tolist()
    assert points.get_ydata().tolist() == mean.tolist()
    segments = np.array(bars.get_segments())  # (N, 2 ends, (x, y))
    std = variance.sqrt().numpy()
    np.testing.assert_allclose(segments[:, 0, 1], mean.numpy() - 2 * std)
    np.testing.assert_allclose(segments[:, 1, 1], mean.numpy() + 2 * std)
    inside = ((targets - mean).abs() <= 2 * variance.sqrt()).double().mean().item()
    rmse = (targets - mean).pow(2).mean().sqrt().item()
    assert ax.get_title() == (
        f"Predictions (MC)\nRMSE {rmse:.4g}, {inside:.0%} of targets within ± 2 std"
    )


def test_failed_write_leaves_no_temporary_file(tmp_path):
    # Saving onto an existing directory fails at os.replace, after the PNG
    # was rendered to the temporary file: it must be cleaned up.
    (tmp_path / "taken.png").mkdir()
    with pytest.raises(OSError):
        plots.plot_ood_entropy([0.1, 0.2], [0.3], tmp_path / "taken.png")
    assert [p.name for p in tmp_path.iterdir()] == ["taken.png"]


# ---------------------------------------------------------- invalid input
@pytest.mark.parametrize(
    "call, match",
    [
        (lambda p: plots.plot_training_curves([], p), "empty"),
        (lambda p: plots.plot_training_curves([{"loss": 1}], p), "'epoch'"),
        (lambda p: plots.plot_training_curves([{"epoch": 1}], p), "none of"),
        (lambda p: plots.plot_training_curves({"epoch": 1}, p), "list of dicts"),
        (lambda p: plots.plot_reliability(torch.ones(3, 2), [0, 1, 0], p), "sum to 1"),
        (lambda p: plots.plot_reliability(*_probs(), p, num_bins=0), "num_bins"),
        (lambda p: plots.plot_ood_entropy([], [0.5], p), "entropy_in"),
        (lambda p: plots.plot_ood_entropy([0.1], [float("nan")], p), "NaN"),
        (lambda p: plots.plot_ood_entropy([0.1], [0.2], p, labels=("a",)), "two"),
        (lambda p: plots.plot_layer_density({}, {}, p), "non-empty"),
        (lambda p: plots.plot_layer_density({"a": 1}, {"b": 2}, p), "same sites"),
        (lambda p: plots.plot_layer_density({"a": 3}, {"a": 2}, p), "num_active <="),
        (lambda p: plots.plot_layer_density({"a": 1.5}, {"a": 2}, p), "int >= 0"),
        (lambda p: plots.plot_swap_fraction([], [], p), "non-empty"),
        (
            lambda p: plots.plot_swap_fraction(
                [{"step": 1, "num_swapped": {"a": 1}}], {}, p
            ),
            r"\['a'\] not in num_active",
        ),
        (lambda p: plots.plot_swap_fraction([], {"a": 0}, p), "positive"),
        (lambda p: plots.plot_swap_fraction([{"step": 1}], {"a": 1}, p), "num_swapped"),
        (
            lambda p: plots.plot_swap_fraction(
                [{"step": 1, "num_swapped": 3}], {"a": 1}, p
            ),
            "must be a dict",
        ),
        (
            lambda p: plots.plot_swap_fraction(
                [{"step": 1, "num_swapped": {"z": 1}}], {"a": 1}, p
            ),
            r"\['z'\]",
        ),
        (lambda p: plots.plot_predictions([1.0], [0.0], [1.0], p), "variance must"),
        (lambda p: plots.plot_predictions([1.0, 2], [1.0], [1.0], p), "same size"),
        (
            lambda p: plots.plot_regression_calibration([1.0], [1.0], [], p),
            "targets must be a non-empty",
        ),
        (lambda p: plots.plot_density_tradeoff([{"acc": 1}], p), "'density'"),
        (lambda p: plots.plot_density_tradeoff([{"density": "a"}], p), "number"),
        (lambda p: plots.plot_density_tradeoff([{"density": 0.0}], p), "> 0"),
        (lambda p: plots.plot_density_tradeoff([{"density": 0.1}], p), "none of"),
        (
            lambda p: plots.plot_density_tradeoff(
                [{"density": 0.1, "test_nll": 1}], p, group="criterion"
            ),
            "'criterion'",
        ),
        (lambda p: plots.plot_active_set({}, {"a": [0]}, {}, p), "same sites"),
        (
            lambda p: plots.plot_active_set(None, {"a": [4]}, {"a": (2, 2)}, p),
            r"must lie in \[0, 4\)",
        ),
        (lambda p: plots.plot_active_set(None, {"a": [1, 1]}, {"a": (4,)}, p), "twice"),
        (
            lambda p: plots.plot_active_set(None, {"a": [0.5]}, {"a": (4,)}, p),
            "integer indices",
        ),
        (lambda p: plots.plot_active_set(None, {"a": [0]}, {"a": (0, 2)}, p), "shape"),
    ],
)
def test_invalid_input_raises_and_writes_nothing(tmp_path, call, match):
    with pytest.raises(ValueError, match=match):
        call(tmp_path / "x.png")
    assert list(tmp_path.iterdir()) == []


def test_import_is_cheap_and_pyplot_is_never_used(tmp_path):
    code = (
        "import sys, pyro_ssvi.app.plots as p, pyro_ssvi.app.predict; "
        "import pyro_ssvi.app.metrics; "
        "print('matplotlib' in sys.modules); "
        "p.plot_ood_entropy([0.1, 0.2], [0.3], sys.argv[1]); "
        "print('matplotlib.pyplot' in sys.modules)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path / "ood.png")],
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.split() == ["False", "False"]
