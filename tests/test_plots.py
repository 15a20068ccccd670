"""Tests for pyro_ssvi.plots: valid PNGs of the expected size, atomic writes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from pyro_ssvi import plots
from pyro_ssvi.svi import SubspaceUpdate

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _probs(n: int = 60, c: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    probs = torch.softmax(torch.randn(n, c, generator=g) * 2, -1)
    return probs, torch.randint(0, c, (n,), generator=g)


def _check_png(path: Path, width_in: float, height_in: float) -> None:
    """A non-empty PNG that matplotlib reads back at ``DPI`` pixels per inch,
    alone in its directory (no temporary file left behind)."""
    import matplotlib.image

    assert path.read_bytes()[:8] == PNG_SIGNATURE
    image = matplotlib.image.imread(path)
    assert image.shape[:2] == (
        round(height_in * plots.DPI),
        round(width_in * plots.DPI),
    )
    assert image.std() > 0  # something was drawn
    assert [p.name for p in path.parent.iterdir()] == [path.name]


def _updates() -> list[SubspaceUpdate]:
    return [
        SubspaceUpdate(step, 0.3, {"a": 3, "b": 1}, {"a": swapped, "b": 1})
        for step, swapped in ((100, 3), (200, 2), (300, 0))
    ]


# ----------------------------------------------------------- valid figures
def test_training_curves(tmp_path):
    history = [
        {"epoch": e, "train_loss": 10.0 / e, "test_accuracy": 0.5 + e / 40}
        for e in range(1, 6)
    ]
    history[2]["test_ece"] = 0.1  # a metric present in some rows only
    path = plots.plot_training_curves(history, tmp_path / "curves.png")
    assert path == tmp_path / "curves.png"
    _check_png(path, 3 * 4.0, 3.0)


def test_training_curves_wrap_to_two_rows(tmp_path):
    row = {k: np.float32(0.5) for k in plots.TRAINING_CURVES}  # numpy scalars
    history = [{"epoch": e, **row} for e in range(3)]
    path = plots.plot_training_curves(history, str(tmp_path / "curves.png"))
    _check_png(path, 3 * 4.0, 2 * 3.0)


def test_reliability(tmp_path):
    probs, labels = _probs()
    _check_png(plots.plot_reliability(probs, labels, tmp_path / "r.png"), 5.0, 6.0)


def test_ood_entropy(tmp_path):
    path = plots.plot_ood_entropy(
        torch.rand(50), torch.rand(30) + 0.5, tmp_path / "ood.png"
    )
    _check_png(path, 5.0, 3.5)


def test_ood_entropy_constant_values(tmp_path):
    path = plots.plot_ood_entropy([0.0, 0.0], [0.0], tmp_path / "ood.png")
    _check_png(path, 5.0, 3.5)


def test_layer_density(tmp_path):
    num_active = {"net.features.layer3.0.conv1.weight": 100, "fc.weight": 5}
    numel = {"net.features.layer3.0.conv1.weight": 1000, "fc.weight": 50}
    path = plots.plot_layer_density(num_active, numel, tmp_path / "density.png")
    _check_png(path, 7.0, 1.5 + 0.3 * 2)


def test_swap_fraction(tmp_path):
    path = plots.plot_swap_fraction(_updates(), {"a": 10, "b": 5}, tmp_path / "s.png")
    _check_png(path, 6.0, 3.5)


def test_swap_fraction_accepts_dicts_and_no_updates(tmp_path):
    records = [u._asdict() for u in _updates()]
    _check_png(
        plots.plot_swap_fraction(records, {"a": 10, "b": 5}, tmp_path / "s.png"),
        6.0,
        3.5,
    )
    (tmp_path / "s.png").unlink()
    _check_png(plots.plot_swap_fraction([], {"a": 10}, tmp_path / "s.png"), 6.0, 3.5)
    (tmp_path / "s.png").unlink()
    _check_png(plots.plot_swap_fraction([], {}, tmp_path / "s.png"), 6.0, 3.5)


def test_density_tradeoff(tmp_path):
    rows = [
        {"density": d, "criterion": c, "test_accuracy": 0.9 - d / 10, "ood_auroc": 0.8}
        for d in (1.0, 0.01, 0.1)
        for c in ("snr", "mean")
    ]
    path = plots.plot_density_tradeoff(rows, tmp_path / "t.png", group="criterion")
    _check_png(path, 2 * 4.5, 3.2)


def test_overwrites_atomically_and_creates_directories(tmp_path):
    probs, labels = _probs()
    target = tmp_path / "new" / "dir" / "r.png"
    plots.plot_reliability(probs, labels, target)
    first = target.read_bytes()
    plots.plot_reliability(probs, labels, target, num_bins=5)
    assert target.read_bytes() != first
    _check_png(target, 5.0, 6.0)


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
    ],
)
def test_invalid_input_raises_and_writes_nothing(tmp_path, call, match):
    with pytest.raises(ValueError, match=match):
        call(tmp_path / "x.png")
    assert list(tmp_path.iterdir()) == []


def test_import_is_cheap_and_pyplot_is_never_used(tmp_path):
    code = (
        "import sys, pyro_ssvi.plots as p, pyro_ssvi.predict, pyro_ssvi.metrics; "
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
