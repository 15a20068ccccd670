"""Drop-fraction schedules: closed forms and name resolution."""

from __future__ import annotations

import math

import pytest

from pyro_ssvi.schedules import SCHEDULES, get_schedule


@pytest.mark.parametrize("p", [0.0, 0.25, 0.5, 0.75, 1.0])
def test_closed_forms(p):
    assert SCHEDULES["cosine"](p) == pytest.approx(0.5 * (1 + math.cos(math.pi * p)))
    assert SCHEDULES["linear"](p) == pytest.approx(1 - p)
    assert SCHEDULES["constant"](p) == 1.0


def test_progress_is_clamped_to_unit_interval():
    assert SCHEDULES["cosine"](-1.0) == 1.0 and SCHEDULES["cosine"](2.0) == 0.0
    assert SCHEDULES["linear"](3.0) == 0.0


def test_resolution_and_errors():
    fn = lambda p: 0.5  # noqa: E731
    assert get_schedule(fn) is fn
    assert get_schedule("cosine") is SCHEDULES["cosine"]
    with pytest.raises(ValueError, match="choose one of"):
        get_schedule("exponential")
    with pytest.raises(TypeError, match="name or a callable"):
        get_schedule(0.5)
