"""Tests for pyro_ssvi.app.metrics: hand-computed values, references, properties."""

from __future__ import annotations

import math

import pytest
import torch
from sklearn.metrics import log_loss

from pyro_ssvi.app import metrics
from pyro_ssvi.app.metrics import (
    _calibration,
    accuracy,
    aupr,
    auroc,
    brier,
    classification_metrics,
    ece,
    marginal_calibration_error,
    mutual_information,
    nll,
    ood_metrics,
    predictive_entropy,
    reliability_bins,
)

F64 = torch.float64

# Five examples, three classes. Confidences 0.9, 0.9 (bin 13 of 15), 0.7 (bin
# 10), 0.45 and 0.42 (bin 6); rows 0, 2, 3 are correct.
PROBS = torch.tensor(
    [
        [0.90, 0.05, 0.05],
        [0.05, 0.90, 0.05],
        [0.20, 0.70, 0.10],
        [0.45, 0.35, 0.20],
        [0.30, 0.28, 0.42],
    ],
    dtype=F64,
)
LABELS = torch.tensor([0, 0, 1, 0, 0])


def _binary(p1: list[float]) -> torch.Tensor:
    p = torch.tensor(p1, dtype=F64)
    return torch.stack([1 - p, p], 1)


def _random_probs(
    n: int, c: int, seed: int, temperature: float = 2.0
) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    probs = torch.softmax(torch.randn(n, c, generator=g, dtype=F64) * temperature, -1)
    labels = torch.randint(0, c, (n,), generator=g)
    return probs, labels


# ------------------------------------------------------------ hand-computed
def test_accuracy_nll_brier_by_hand():
    assert accuracy(PROBS, LABELS) == pytest.approx(3 / 5)
    expected_nll = -(
        math.log(0.9) + math.log(0.05) + math.log(0.7) + math.log(0.45) + math.log(0.3)
    )
    assert nll(PROBS, LABELS) == pytest.approx(expected_nll / 5, rel=1e-12)
    # Per row sum_c (p_c - 1[y=c])^2: 0.015, 1.715, 0.14, 0.465, 0.7448.
    assert brier(PROBS, LABELS) == pytest.approx(3.0798 / 5, rel=1e-12)


def test_ece_by_hand():
    # Bin 13: conf 0.9, acc 1/2, gap 0.4 (2 examples); bin 10: 0.7 vs 1, gap
    # 0.3 (1); bin 6: conf (0.45 + 0.42) / 2 = 0.435, acc 1/2, gap 0.065 (2).
    # ECE = (2 * 0.4 + 0.3 + 2 * 0.065) / 5 = 0.246.
    assert ece(PROBS, LABELS) == pytest.approx(0.246, rel=1e-12)
    bins = reliability_bins(PROBS, LABELS)
    assert bins.counts.tolist() == [0] * 6 + [2, 0, 0, 0, 1, 0, 0, 2, 0]
    assert bins.confidence[13].item() == pytest.approx(0.9)
    assert bins.accuracy[[6, 10, 13]].tolist() == [0.5, 1.0, 0.5]
    assert torch.isnan(bins.confidence[0]) and torch.isnan(bins.accuracy[0])
    assert torch.allclose(bins.edges, torch.linspace(0, 1, 16, dtype=F64))


def test_ece_bins_are_right_closed():
    # With 4 bins the edges 0.25, 0.5, 0.75 are exact: a confidence on an edge
    # belongs to the lower bin (b/B, (b+1)/B].
    probs = _binary([0.5, 0.75, 1.0, 0.7])
    bins = reliability_bins(probs, torch.tensor([1, 1, 1, 0]), num_bins=4)
    assert bins.counts.tolist() == [0, 1, 2, 1]
    # Bin 1: conf 0.5, acc 1 -> 0.5; bin 2: conf 0.725, acc 1/2 -> 0.225;
    # bin 3: conf 1, acc 1 -> 0. ECE = (0.5 + 2 * 0.225) / 4.
    assert ece(probs, torch.tensor([1, 1, 1, 0]), 4) == pytest.approx(0.2375)


def _guo_reference_ece(probs: torch.Tensor, labels: torch.Tensor, n: int) -> float:
    """Guo et al.'s loop: ``lower < conf <= upper`` over ``linspace`` bins."""
    conf, pred = probs.max(1)
    hits = (pred == labels).double()
    edges = torch.linspace(0, 1, n + 1, dtype=F64)
    total = 0.0
    for lower, upper in zip(edges[:-1], edges[1:]):
        inside = (conf > lower) & (conf <= upper)
        if inside.any():
            gap = (conf[inside].mean() - hits[inside].mean()).abs()
            total += gap.item() * inside.double().mean().item()
    return total


@pytest.mark.parametrize("num_bins", [1, 10, 15])
def test_ece_matches_guo_reference(num_bins):
    probs, labels = _random_probs(300, 10, seed=num_bins)
    expected = _guo_reference_ece(probs, labels, num_bins)
    assert ece(probs, labels, num_bins) == pytest.approx(expected, rel=1e-12)


def test_marginal_ce_by_hand_equal_mass():
    # Class 1 column [0.2, 0.4, 0.6, 0.9] with hits [1, 1, 1, 0], 2 bins: groups
    # {0.2, 0.4} and {0.6, 0.9}, edge 0.5. Bin A: (0.3 - 1)^2 - 0 = 0.49; bin B:
    # (0.75 - 0.5)^2 - 0.5 * 0.5 / 1 = -0.1875. Weighted: 0.15125. Class 0 is
    # the mirror image with the same value, so CE = sqrt(0.15125).
    probs, labels = _binary([0.2, 0.4, 0.6, 0.9]), torch.tensor([1, 1, 1, 0])
    value = marginal_calibration_error(probs, labels, num_bins=2)
    assert value == pytest.approx(math.sqrt(0.15125), rel=1e-12)


def test_marginal_ce_by_hand_ties_and_clamping():
    # Class 1: [0.1, 0.3, 0.3, 0.3, 0.6], 2 bins of sizes 3 and 2 (as
    # numpy.array_split): edge (0.3 + 0.3) / 2 = 0.3, and the three 0.3s fall in
    # the lower bin. Bin A (4 points, hits 0): (0.25 - 0)^2 = 0.0625, weight
    # 4/5; bin B has one point and contributes 0. Class 1: 0.05.
    # Class 0: [0.9, 0.7, 0.7, 0.7, 0.4] with hits [1, 1, 1, 1, 0]; bin A =
    # {0.4, 0.7, 0.7, 0.7}: (0.625 - 0.75)^2 - 0.75 * 0.25 / 3 = -0.046875,
    # weight 4/5, total -0.0375, clamped to 0. CE = sqrt((0.05 + 0) / 2).
    probs = _binary([0.1, 0.3, 0.3, 0.3, 0.6])
    value = marginal_calibration_error(probs, torch.tensor([0, 0, 0, 0, 1]), 2)
    assert value == pytest.approx(math.sqrt(0.025), rel=1e-12)


def test_marginal_ce_by_hand_discrete_outputs():
    # Every column takes 3 < 16 / 4 values, so each value is its own bin and
    # num_bins is ignored. Class 1: 0.1 (x6, hits 0) -> 0.01; 0.3 (x5, hits 1)
    # -> 0.49; 0.6 (x5, hits 0) -> 0.36; weighted (6*0.01 + 5*0.49 + 5*0.36)/16.
    # Class 0 mirrors it. (Two equal-mass bins would give 0.378 instead.)
    probs = _binary([0.1] * 6 + [0.3] * 5 + [0.6] * 5)
    labels = torch.tensor([0] * 6 + [1] * 5 + [0] * 5)
    expected = math.sqrt(4.31 / 16)
    for num_bins in (2, 15):
        value = marginal_calibration_error(probs, labels, num_bins)
        assert value == pytest.approx(expected, rel=1e-12)


def test_marginal_ce_discrete_columns_with_different_value_counts():
    # Columns with 2, 2 and 3 distinct values (< 16 / 4): each class is scored
    # on its own bins, so the error is the RMS of the per-class errors, and a
    # class's error equals that of the binary problem (1 - p_c, p_c) vs y == c.
    rows = torch.tensor([[0.6, 0.3, 0.1], [0.2, 0.3, 0.5], [0.2, 0.6, 0.2]], dtype=F64)
    pick = torch.tensor([0, 1, 2, 0, 0, 1, 2, 2, 0, 1, 1, 0, 2, 0, 1, 0])
    labels = torch.tensor([0, 2, 1, 0, 1, 2, 1, 0, 0, 2, 1, 0, 1, 0, 2, 1])
    probs = rows[pick]
    per_class = [
        marginal_calibration_error(_binary(probs[:, c].tolist()), (labels == c).long())
        for c in range(3)
    ]
    expected = math.sqrt(sum(e**2 for e in per_class) / 3)
    assert marginal_calibration_error(probs, labels) == pytest.approx(expected)
    assert max(per_class) > 0


@pytest.mark.parametrize("discrete", [False, True])
def test_marginal_ce_chunking_does_not_change_the_result(monkeypatch, discrete):
    probs, labels = _random_probs(40, 7, seed=4, temperature=3.0)
    if discrete:  # 3 distinct rows: at most 3 < 40 / 4 values per column
        probs = probs[torch.arange(40) % 3]
    expected = marginal_calibration_error(probs, labels, num_bins=4)
    monkeypatch.setattr(_calibration, "_CHUNK_ELEMENTS", 80)  # 2 classes per chunk
    assert marginal_calibration_error(probs, labels, num_bins=4) == expected


def test_marginal_ce_plugin_by_hand():
    # Six identical rows [0.1, 0.9], all labels 0: one bin per class with
    # |0.1 - 1| = |0.9 - 0| = 0.9, for every p, debiased or not.
    probs, labels = _binary([0.9] * 6), torch.zeros(6, dtype=torch.int64)
    assert marginal_calibration_error(probs, labels) == pytest.approx(0.9)
    for p in (1, 2, 3):
        value = marginal_calibration_error(probs, labels, debias=False, p=p)
        assert value == pytest.approx(0.9)


def test_marginal_ce_zero_when_bins_have_single_points():
    probs, labels = _random_probs(6, 3, seed=1)
    assert marginal_calibration_error(probs, labels) == 0.0  # 6 bins of 1 point


def test_entropy_and_mutual_information_by_hand():
    probs = torch.tensor([[0.5, 0.5, 0.0], [1.0, 0.0, 0.0]])
    assert predictive_entropy(probs).tolist() == pytest.approx([math.log(2), 0.0])
    # Mean of the one-hot samples [1, 0] and [0, 1]: each has entropy 0.
    info = mutual_information(torch.tensor([[0.5, 0.5]]), torch.tensor([0.0]))
    assert info.tolist() == pytest.approx([math.log(2)])
    mean = torch.tensor([[0.7, 0.3]])
    assert mutual_information(mean, predictive_entropy(mean)).item() == 0.0


def test_auroc_aupr_by_hand():
    scores_in = torch.tensor([0.1, 0.4, 0.35, 0.8])
    scores_out = torch.tensor([0.8, 0.9, 0.4])
    # Winning pairs: 0.8 beats 3 and ties 1 (3.5), 0.9 beats 4, 0.4 beats 2 and
    # ties 1 (2.5): 10 of 12.
    assert auroc(scores_in, scores_out) == pytest.approx(10 / 12, rel=1e-12)
    # Thresholds 0.9, 0.8, 0.4: (R, P) = (1/3, 1), (2/3, 2/3), (1, 3/5).
    assert aupr(scores_in, scores_out) == pytest.approx(34 / 45, rel=1e-12)
    assert auroc(scores_out, scores_in) == pytest.approx(2 / 12, rel=1e-12)


def test_ood_metrics_scores():
    confident = torch.tensor([[0.98, 0.01, 0.01], [0.02, 0.96, 0.02]])
    unsure = torch.tensor([[0.4, 0.3, 0.3], [0.34, 0.33, 0.33]])
    result = ood_metrics(confident, unsure)
    assert set(result) == {
        "ood_auroc",
        "ood_aupr",
        "ood_auroc_maxprob",
        "ood_aupr_maxprob",
    }
    assert all(v == 1.0 for v in result.values())
    assert ood_metrics(unsure, confident)["ood_auroc_maxprob"] == 0.0


# ------------------------------------------------------ reference implementations
def test_nll_matches_sklearn_log_loss_away_from_zero():
    # Equal wherever no probability is below sklearn's clipping eps.
    probs, labels = _random_probs(200, 5, seed=9, temperature=1.0)
    expected = log_loss(labels.numpy(), probs.numpy(), labels=range(5))
    assert nll(probs, labels) == pytest.approx(expected, rel=1e-12)


# -------------------------------------------------------------- properties
def test_marginal_ce_invariant_to_permutations():
    probs, labels = _random_probs(200, 5, seed=3, temperature=3.0)
    value = marginal_calibration_error(probs, labels)
    rows = torch.randperm(200, generator=torch.Generator().manual_seed(0))
    assert marginal_calibration_error(probs[rows], labels[rows]) == pytest.approx(
        value, rel=1e-12
    )
    classes = torch.tensor([3, 0, 4, 1, 2])  # new class j is old class classes[j]
    relabel = torch.argsort(classes)
    permuted = marginal_calibration_error(probs[:, classes], relabel[labels])
    assert permuted == pytest.approx(value, rel=1e-12)


@pytest.mark.parametrize("seed", range(3))
def test_marginal_ce_debiased_below_plugin(seed):
    probs, labels = _random_probs(150, 4, seed=seed, temperature=3.0)
    debiased = marginal_calibration_error(probs, labels)
    plugin = marginal_calibration_error(probs, labels, debias=False)
    assert 0.0 <= debiased <= plugin


def test_marginal_ce_one_bin_is_mean_gap():
    # With one bin and no debiasing, each class's error is |mean p - mean y|.
    probs, labels = _random_probs(50, 3, seed=7)
    freq = torch.bincount(labels, minlength=3).double() / 50
    gaps = (probs.mean(0) - freq).abs()
    value = marginal_calibration_error(probs, labels, num_bins=1, debias=False, p=1)
    assert value == pytest.approx(gaps.mean().item(), rel=1e-12)


def test_perfect_predictions():
    labels = torch.tensor([0, 2, 1, 2])
    probs = torch.nn.functional.one_hot(labels, 3).double()
    assert accuracy(probs, labels) == 1.0
    assert nll(probs, labels) == 0.0
    assert brier(probs, labels) == 0.0
    assert ece(probs, labels) == 0.0
    assert marginal_calibration_error(probs, labels) == 0.0


def test_nll_is_finite_for_zero_probability():
    probs = torch.tensor([[1.0, 0.0], [0.5, 0.5]])
    value = nll(probs, torch.tensor([1, 0]))
    tiny = torch.finfo(torch.float32).tiny
    assert value == pytest.approx((-math.log(tiny) + math.log(2)) / 2)


def test_float32_and_float64_agree():
    probs, labels = _random_probs(100, 4, seed=5)
    for fn in (accuracy, nll, brier, ece, marginal_calibration_error):
        assert fn(probs.float(), labels) == pytest.approx(
            fn(probs, labels), rel=1e-5, abs=1e-6
        )


# -------------------------------------------------------------- all at once
def test_classification_metrics_equal_the_single_metrics():
    probs, labels = _random_probs(97, 6, seed=11)
    entropy = predictive_entropy(probs) * 0.9
    ood, _ = _random_probs(31, 6, seed=12, temperature=0.5)
    result = classification_metrics(probs, labels, entropy, probs_ood=ood, num_bins=5)
    assert result == {
        "accuracy": accuracy(probs, labels),
        "nll": nll(probs, labels),
        "brier": brier(probs, labels),
        "ece": ece(probs, labels, 5),
        "marginal_ce": marginal_calibration_error(probs, labels, 5),
        "entropy": predictive_entropy(probs).mean().item(),
        "mutual_information": pytest.approx(
            (predictive_entropy(probs) * 0.1).mean().item(), rel=1e-12
        ),
        **ood_metrics(probs, ood),
    }
    plain = classification_metrics(probs, labels)
    assert "mutual_information" not in plain and "ood_auroc" not in plain


# --------------------------------------------------------------- validation
@pytest.mark.parametrize(
    "probs, labels, match",
    [
        (torch.full((3, 2), 0.5), torch.tensor([0, 1]), "labels must have shape"),
        (torch.full((2, 2), 0.5), torch.tensor([0, 2]), r"labels must lie in \[0, 1\]"),
        (torch.full((2, 2), 0.5), torch.tensor([-1, 0]), "labels must lie"),
        (torch.full((2, 2), 0.6), torch.tensor([0, 1]), "must sum to 1"),
        (torch.tensor([[2.0, -1.0]]), torch.tensor([0]), r"lie in \[0, 1\]"),
        (torch.empty(0, 3), torch.empty(0, dtype=torch.int64), "empty"),
        (torch.full((4,), 0.5), torch.tensor([0, 1, 0, 1]), "shape \\(N, C\\)"),
        (torch.tensor([[0, 1]]), torch.tensor([1]), "floating point"),
        (torch.full((2, 2), 0.5), torch.tensor([0.0, 1.0]), "integers"),
        (torch.tensor([[float("nan"), 1.0]]), torch.tensor([0]), "NaN"),
    ],
)
def test_invalid_inputs(probs, labels, match):
    for fn in (accuracy, nll, brier, ece, marginal_calibration_error):
        with pytest.raises(ValueError, match=match):
            fn(probs, labels)


def test_invalid_options():
    with pytest.raises(ValueError, match="num_bins"):
        ece(PROBS, LABELS, num_bins=0)
    with pytest.raises(ValueError, match="debias=False"):
        marginal_calibration_error(PROBS, LABELS, p=1)
    with pytest.raises(ValueError, match="p must be"):
        marginal_calibration_error(PROBS, LABELS, p=0.5, debias=False)
    with pytest.raises(ValueError, match="scores_out must be a non-empty"):
        auroc(torch.tensor([0.1]), torch.tensor([]))
    with pytest.raises(ValueError, match="NaN"):
        aupr(torch.tensor([float("nan")]), torch.tensor([1.0]))
    with pytest.raises(ValueError, match="classes"):
        ood_metrics(PROBS, torch.full((2, 2), 0.5))
    with pytest.raises(ValueError, match="mean_entropy must have shape"):
        mutual_information(PROBS, torch.zeros(4))


def test_public_names_documented():
    for name in metrics.__all__:
        obj = getattr(metrics, name)
        assert obj.__doc__ and obj.__doc__.strip(), name
