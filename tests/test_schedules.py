"""Drop-fraction schedules: closed forms and name resolution."""

from __future__ import annotations

import math

import pytest

from pyro_ssvi.schedules import (
    INVERSE_HALF_LIFE,
    SCHEDULES,
    drop_fraction_at,
    get_schedule,
    update_due,
)


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


def test_update_steps_and_stop():
    due = [t for t in range(0, 40) if update_due(t, update_every=10, stop_at=30)]
    assert due == [10, 20]
    assert [t for t in range(35) if update_due(t, update_every=10, stop_at=None)] == [
        10,
        20,
        30,
    ]


def test_drop_fraction_at_closed_forms():
    kw = dict(alpha=0.3, update_every=100, stop_at=1000)
    assert drop_fraction_at(300, schedule="cosine", **kw) == pytest.approx(
        0.15 * (1 + math.cos(0.3 * math.pi))
    )
    assert drop_fraction_at(300, schedule="linear", **kw) == pytest.approx(0.21)
    assert drop_fraction_at(300, schedule="constant", **kw) == 0.3
    # inverse: alpha / (1 + u / 25) with u = t / update_every - 1 earlier updates
    for t, u in ((100, 0), (600, 5), (2600, 25)):
        got = drop_fraction_at(
            t, alpha=0.3, schedule="inverse", update_every=100, stop_at=None
        )
        assert got == pytest.approx(0.3 / (1 + u / INVERSE_HALF_LIFE))
    assert drop_fraction_at(
        2600, alpha=0.3, schedule="inverse", update_every=100, stop_at=None
    ) == pytest.approx(0.15)
    with pytest.raises(ValueError, match="needs? none|need none"):
        drop_fraction_at(
            100, alpha=0.3, schedule="cosine", update_every=100, stop_at=None
        )
