"""pyro_ssvi.selection: reselection against a brute-force oracle."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from pyro_ssvi.selection import move, num_to_swap, regrown_scale, reselect


def _oracle(indices, removal, addition, s):
    """The docstring's rule written out with Python sorts (NaN = -inf)."""

    def key(score):
        return -math.inf if math.isnan(score) else score

    k = len(indices)
    by_removal = sorted(range(k), key=lambda p: (-key(removal[p]), p))
    kept = sorted(indices[p] for p in by_removal[: k - s])
    candidates = [j for j in range(len(addition)) if j not in kept]
    by_addition = sorted(candidates, key=lambda j: (-key(addition[j]), j))
    grown = by_addition[:s]
    new = sorted(kept + grown)
    source = [indices.index(j) if j in indices else -1 for j in new]
    return new, source


# Scores from a small set of levels make ties frequent; some NaN and -inf.
_LEVELS = st.sampled_from([0.0, 1.0, 2.0, 3.0, -math.inf, math.nan, 0.5])


@settings(max_examples=300, deadline=None)
@given(data=st.data(), n=st.integers(1, 40))
def test_reselect_matches_the_oracle(data, n):
    k = data.draw(st.integers(1, n))
    indices = sorted(
        data.draw(st.lists(st.integers(0, n - 1), min_size=k, max_size=k, unique=True))
    )
    removal = data.draw(st.lists(_LEVELS, min_size=k, max_size=k))
    addition = data.draw(st.lists(_LEVELS, min_size=n, max_size=n))
    s = data.draw(st.integers(0, k))
    result = reselect(
        torch.tensor(indices),
        torch.tensor(removal, dtype=torch.float64),
        torch.tensor(addition, dtype=torch.float64),
        s,
    )
    new, source = _oracle(indices, removal, addition, s)
    assert result.indices.tolist() == new
    assert result.source.tolist() == source
    assert result.num_dropped == s
    assert result.num_swapped == sum(1 for p in source if p < 0)
    # invariants: k stays, sorted, unique, in range
    assert result.indices.numel() == k
    assert torch.all(result.indices[1:] > result.indices[:-1])


def test_readded_coordinates_keep_their_source():
    indices = torch.tensor([1, 4, 7])
    removal = torch.tensor([0.1, 5.0, 3.0], dtype=torch.float64)  # drop 1
    addition = torch.zeros(10, dtype=torch.float64)
    addition[1] = 9.0  # the dropped coordinate is the best to add back
    r = reselect(indices, removal, addition, 1)
    assert r.indices.tolist() == [1, 4, 7] and r.source.tolist() == [0, 1, 2]
    assert r.num_swapped == 0
    addition[1], addition[9] = 0.0, 9.0
    r = reselect(indices, removal, addition, 1)
    assert r.indices.tolist() == [4, 7, 9] and r.source.tolist() == [1, 2, -1]
    assert r.num_swapped == 1


def test_move_and_refill():
    values = torch.tensor([[1.0, 10.0], [2.0, 20.0], [3.0, 30.0]])
    source = torch.tensor([2, -1, 0])
    moved = move(values, source, 0.0)
    assert moved.tolist() == [[3.0, 30.0], [0.0, 0.0], [1.0, 10.0]]
    assert regrown_scale(moved[:, 0], source, "mean", None) == pytest.approx(2.0)
    assert regrown_scale(moved[:, 0], torch.tensor([-1, -1, -1]), "mean", None) == 0.0


@pytest.mark.parametrize(
    "k, r, s", [(10, 0.3, 3), (10, 0.0, 0), (7, 0.5, 3), (3, 1.0, 3)]
)
def test_num_to_swap_is_floor(k, r, s):
    assert num_to_swap(k, r) == s
    with pytest.raises(ValueError, match="drop_fraction"):
        num_to_swap(k, 1.5)


def test_bad_shapes_are_refused():
    idx = torch.tensor([0, 1])
    with pytest.raises(ValueError, match="shape \\(k,\\)"):
        reselect(idx, torch.zeros(3), torch.zeros(4), 1)
    with pytest.raises(ValueError, match="n >= k"):
        reselect(idx, torch.zeros(2), torch.zeros(1), 1)
    with pytest.raises(ValueError, match="num_swap"):
        reselect(idx, torch.zeros(2), torch.zeros(4), 3)
