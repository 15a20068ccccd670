"""Tests for pyro_ssvi.criteria: closed forms, Monte Carlo, extremes, contracts."""

from __future__ import annotations

import math
from functools import partial

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from pyro_ssvi import criteria
from pyro_ssvi.criteria import (
    CRITERIA,
    DEFAULT_CRITERION,
    _g,
    expected_abs,
    expected_exp_abs,
    get_criterion,
    mean_abs,
    removal_scores,
    snr,
    snr_abs,
    snr_exp_abs,
)
from pyro_ssvi.selection import top_k

F64 = torch.float64
SNR_ABS_AT_ZERO = math.sqrt(2 / math.pi) / math.sqrt(1 - 2 / math.pi)  # 1.3236...
RATIOS = [0.0, 1e-12, 1e-3, 1.0, 10.0, 40.0, 1e3, 1e6, 1e12]
HYPOTHESIS = settings(max_examples=60, deadline=None, derandomize=True, database=None)


def _t(*values: float) -> torch.Tensor:
    return torch.tensor(values, dtype=F64)


# Textbook forms (Appendix B of the spec), accurate in float64 at moderate r.
def _ref_expected_abs(mu, s):
    return s * math.sqrt(2 / math.pi) * torch.exp(-(mu**2) / (2 * s**2)) + mu * (
        torch.erf(mu / (s * math.sqrt(2)))
    )


def _ref_var_abs(mu, s):
    return mu**2 + s**2 - _ref_expected_abs(mu, s) ** 2


def _ref_mgf(mu, s, lam):
    ndtr = torch.special.ndtr
    return torch.exp(lam * mu + lam**2 * s**2 / 2) * ndtr(
        mu / s + lam * s
    ) + torch.exp(-lam * mu + lam**2 * s**2 / 2) * ndtr(-mu / s + lam * s)


def _ref_snr_exp_abs(mu, s, lam):
    m1 = _ref_mgf(mu, s, lam)
    return m1 / torch.sqrt(_ref_mgf(mu, s, 2 * lam) - m1**2)


# ----------------------------------------------------------------------------
# Closed forms
# ----------------------------------------------------------------------------


def test_mean_abs_and_snr_exact():
    loc, scale = _t(-2.0, 0.0, 3.5), _t(0.5, 1.0, 7.0)
    assert torch.equal(mean_abs(loc, scale), _t(2.0, 0.0, 3.5))
    assert torch.equal(snr(loc, scale), _t(4.0, 0.0, 0.5))


@HYPOTHESIS
@given(
    r=st.floats(-5.0, 5.0),
    s=st.floats(0.05, 3.0),
    lam=st.floats(0.25, 2.0),
)
def test_criteria_match_textbook_forms(r, s, lam):
    mu, s = _t(r * s), _t(s)
    # Tolerances: float64 rounding amplified by each textbook form's own
    # cancellation, (r^2 + 1) / Var <= 70 for Var|theta|, and
    # M^2 / Var(e^{lam|theta|}) <= 1 / (0.36 u^2) <= 2e4 for the exp SNR.
    torch.testing.assert_close(
        expected_abs(mu, s), _ref_expected_abs(mu, s), rtol=1e-13, atol=0
    )
    ref_snr = _ref_expected_abs(mu, s) / _ref_var_abs(mu, s).sqrt()
    torch.testing.assert_close(snr_abs(mu, s), ref_snr, rtol=1e-12, atol=0)
    torch.testing.assert_close(
        expected_exp_abs(mu, s, lam), _ref_mgf(mu, s, lam), rtol=1e-13, atol=0
    )
    torch.testing.assert_close(
        snr_exp_abs(mu, s, lam), _ref_snr_exp_abs(mu, s, lam), rtol=1e-10, atol=0
    )


@pytest.mark.parametrize("lam", [0.5, 1.0, 3.0])
def test_snr_exp_abs_lognormal_limit(lam):
    # For r >= 40, |theta| = theta a.s. in float64, so e^{lam|theta|} is
    # lognormal: SNR = (e^{lam^2 sigma^2} - 1)^{-1/2}, whatever mu.
    s = _t(1e-30, 1e-9, 1e-4, 1e-3, 0.02, 0.5, 1.0, 2.0)
    for ratio in [40.0, 1e3, 1e6, 1e12]:
        expected = torch.expm1((lam * s) ** 2).rsqrt()
        torch.testing.assert_close(
            snr_exp_abs(ratio * s, s, lam), expected, rtol=1e-14, atol=0
        )


@pytest.mark.parametrize("sigma", [1e-30, 1e-20, 1e-12, 1e-9, 1e-6, 1e-4])
@pytest.mark.parametrize("ratio", [0.0, 0.3, 1.0, 3.0, 10.0])
def test_snr_exp_abs_tiny_scale_matches_delta_method(sigma, ratio):
    # Here M(2 lam) - M(lam)^2 keeps no correct digit. The delta method gives
    # SNR = 1 / (lam sd|theta|) * (1 + O(lam sigma)): the first correction is
    # -kappa_3 u / (2 kappa_2), with |kappa_3 / kappa_2| <= 0.64, u = lam sigma.
    lam = 1.0
    mu, s = _t(ratio * sigma), _t(sigma)
    # Var|theta| in its textbook form, fine at these moderate ratios.
    sd_abs = sigma * _ref_var_abs(_t(ratio), _t(1.0)).sqrt()
    expected = 1.0 / (lam * sd_abs)
    got = snr_exp_abs(mu, s, lam)
    assert torch.isfinite(got).all()
    torch.testing.assert_close(got, expected, rtol=0.5 * lam * sigma + 1e-13, atol=0)


def test_snr_exp_abs_is_continuous_at_the_series_switch():
    # The two branches meet at lam * sigma = 1e-3; each is accurate to ~2e-10.
    scale = _t(1e-3 * (1 - 1e-12), 1e-3 * (1 + 1e-12))
    for ratio in [0.0, 0.1, 0.5, 1.0, 2.0, 5.0, 30.0]:
        lo, hi = snr_exp_abs(ratio * scale, scale)
        assert abs(hi / lo - 1) < 1e-9


def _mp_reference(mpmath, mu, s, lam):
    """High-precision folded-normal moments; enough digits for M(2l) - M(l)^2."""
    digits = 40 + int(2 * max(0.0, -math.log10(lam * s))) + int(lam * abs(mu))
    with mpmath.workdps(digits):
        mu, s = mpmath.mpf(mu), mpmath.mpf(s)
        mean = s * mpmath.sqrt(2 / mpmath.pi) * mpmath.exp(-(mu**2) / (2 * s**2))
        mean += mu * mpmath.erf(mu / (s * mpmath.sqrt(2)))

        def mgf(t):
            half = t**2 * s**2 / 2
            return mpmath.exp(t * mu + half) * mpmath.ncdf(mu / s + t * s) + mpmath.exp(
                -t * mu + half
            ) * mpmath.ncdf(-mu / s + t * s)

        m1, m2 = mgf(lam), mgf(2 * lam)
        return {
            "expected_abs": float(mean),
            "snr_abs": float(mean / mpmath.sqrt(mu**2 + s**2 - mean**2)),
            "expected_exp_abs": float(m1),
            "snr_exp_abs": float(m1 / mpmath.sqrt(m2 - m1**2)),
        }


@pytest.mark.parametrize("lam", [1.0, 2.5])
def test_folded_criteria_match_high_precision_reference(lam):
    mpmath = pytest.importorskip("mpmath")
    fns = {
        "expected_abs": expected_abs,
        "snr_abs": snr_abs,
        "expected_exp_abs": partial(expected_exp_abs, lam=lam),
        "snr_exp_abs": partial(snr_exp_abs, lam=lam),
    }
    # snr_exp_abs: worst case ~2e-10 just above the series switch (docstring).
    rtol = {"expected_abs": 1e-14, "snr_abs": 1e-14, "expected_exp_abs": 1e-13}
    ratios = [0.0, 1e-12, 1e-3, 0.3, 1.0, 2.5, 6.0, 19.9, 20.1, 30.0, 1e3, 1e12]
    scales = [1e-30, 1e-9, 1e-5, 3e-4, 9e-4, 1.2e-3, 0.01, 0.3, 1.0, 4.0]
    for ratio in ratios:
        for sigma in scales:
            mu = ratio * sigma
            if lam * mu > 40:
                continue
            ref = _mp_reference(mpmath, mu, sigma, lam)
            for name, fn in fns.items():
                got = fn(_t(mu), _t(sigma)).item()
                tol = rtol.get(name, 1e-9)
                assert got == pytest.approx(ref[name], rel=tol, abs=0), (
                    name,
                    mu,
                    sigma,
                )


def test_g_against_high_precision_reference():
    mpmath = pytest.importorskip("mpmath")
    r = torch.linspace(0, 37, 741, dtype=F64)
    got = _g(r)
    with mpmath.workdps(50):
        ref = [float(mpmath.npdf(x) - x * mpmath.ncdf(-x)) for x in r.tolist()]
    # 2e-13 near r = 20: the erfcx form loses ~log10(r^2) digits to cancellation.
    torch.testing.assert_close(got, torch.tensor(ref, dtype=F64), rtol=5e-13, atol=0)


def test_g_asymptotic_branch(monkeypatch):
    # g(r) r^2 / phi(r) = 1 - 3/r^2 + 15/r^4 - 105/r^6 + 945/r^8 - ..., an
    # enveloping series: the error is below the first omitted term.
    r = torch.linspace(20.5, 36.0, 32, dtype=F64)
    phi = torch.exp(-0.5 * r**2) / math.sqrt(2 * math.pi)
    x = r**-2
    series = 1 - 3 * x + 15 * x**2 - 105 * x**3 + 945 * x**4
    assert ((_g(r) * r**2 / phi - series).abs() <= 10395 * x**5).all()
    g = _g(torch.linspace(0, 40, 4001, dtype=F64))
    assert (g >= 0).all() and (g[1:] <= g[:-1]).all()
    # Near the switch at r = 20 the erfcx form and the series agree.
    r = torch.linspace(17.0, 23.0, 61, dtype=F64)
    monkeypatch.setattr(criteria, "_R_ASYM", 100.0)
    erfcx_form = _g(r)
    monkeypatch.setattr(criteria, "_R_ASYM", 0.0)
    torch.testing.assert_close(_g(r), erfcx_form, rtol=5e-13, atol=0)


# ----------------------------------------------------------------------------
# Monte Carlo
# ----------------------------------------------------------------------------


def _snr_with_se(y: torch.Tensor) -> tuple[float, float]:
    """Sample SNR m / s of y and its delta-method standard error."""
    n = y.numel()
    m = y.mean()
    c = y - m
    v, mu3, mu4 = c.square().mean(), c.pow(3).mean(), c.pow(4).mean()
    # Var(m/s) ~ [1 - m mu3 / s^4 + m^2 (mu4 - s^4) / (4 s^6)] / N, from the
    # gradient (1/s, -m/(2 s^3)) of m / sqrt(v) and Cov(m, v) = mu3 / N,
    # Var(v) = (mu4 - s^4) / N.
    var = (1 - m * mu3 / v**2 + m**2 * (mu4 - v**2) / (4 * v**3)) / n
    return (m / v.sqrt()).item(), var.sqrt().item()


@pytest.mark.parametrize(
    "mu, sigma, lam",
    [
        (0.0, 1.0, 1.0),
        (0.8, 0.5, 1.0),
        (-1.5, 1.0, 0.5),
        (0.3, 2.0, 0.25),
        (0.02, 0.01, 1.0),
        (-0.01, 6e-4, 1.0),  # typical SSVI weight; lam sigma < 1e-3: series branch
    ],
)
def test_monte_carlo(mu, sigma, lam):
    n = 10**6
    gen = torch.Generator().manual_seed(1234)
    x = (mu + sigma * torch.randn(n, generator=gen, dtype=F64)).abs()
    y = torch.exp(lam * x)
    loc, scale = _t(mu), _t(sigma)
    # Means: atol = 5 * sample std / sqrt(N).
    for got, sample in [
        (expected_abs(loc, scale), x),
        (expected_exp_abs(loc, scale, lam), y),
    ]:
        atol = 5 * sample.std().item() / math.sqrt(n)
        assert abs(got.item() - sample.mean().item()) < atol
    # SNRs: atol = 5 * delta-method standard error of the sample SNR.
    for got, sample in [(snr_abs(loc, scale), x), (snr_exp_abs(loc, scale, lam), y)]:
        value, se = _snr_with_se(sample)
        assert abs(got.item() - value) < 5 * se


# ----------------------------------------------------------------------------
# Sanity values and extremes
# ----------------------------------------------------------------------------


def test_sanity_values():
    s = _t(1e-30, 1e-9, 6e-4, 1.0, 1e3)
    torch.testing.assert_close(
        snr_abs(torch.zeros_like(s), s),
        torch.full_like(s, SNR_ABS_AT_ZERO),
        rtol=1e-15,
        atol=0,
    )
    assert SNR_ABS_AT_ZERO == pytest.approx(1.3236, abs=1e-4)
    torch.testing.assert_close(
        expected_abs(torch.zeros_like(s), s),
        s * math.sqrt(2 / math.pi),
        rtol=1e-15,
        atol=0,
    )
    # r -> inf: SNR(|theta|) -> |mu| / sigma (exactly, once g(r) underflows).
    for ratio in [40.0, 1e3, 1e6, 1e12]:
        torch.testing.assert_close(
            snr_abs(-ratio * s, s), torch.full_like(s, ratio), rtol=1e-15, atol=0
        )
    gen = torch.Generator().manual_seed(0)
    loc = 3 * torch.randn(1000, generator=gen, dtype=F64)
    scale = torch.rand(1000, generator=gen, dtype=F64) * 2 + 1e-6
    assert (expected_exp_abs(loc, scale) >= 1).all()
    assert (expected_exp_abs(loc, scale, lam=0.1) >= 1).all()


@pytest.mark.parametrize("name", sorted(CRITERIA))
@pytest.mark.parametrize("sigma", [1e-30, 1e-20, 1e-12, 1e-9, 1e-6, 1e-3, 1.0, 10.0])
def test_extreme_ratios_are_finite_and_monotone(name, sigma):
    ratio = _t(*RATIOS)
    loc, scale = ratio * sigma, torch.full_like(ratio, sigma)
    if name == "expected_exp_abs":  # M = e^{|mu| + sigma^2/2} overflows beyond ~709
        keep = loc + scale**2 / 2 < 700
        loc, scale = loc[keep], scale[keep]
    for sign in [1, -1]:
        got = CRITERIA[name](sign * loc, scale)
        assert got.dtype == F64 and torch.isfinite(got).all() and (got >= 0).all()
        if name != "snr_exp_abs":  # see test_snr_exp_abs_decreases_in_scale
            assert (got[1:] >= got[:-1] * (1 - 1e-13)).all()


def test_snr_exp_abs_decreases_in_scale():
    # At fixed mu, SNR(e^{lam|theta|}) falls as sigma grows, but at fixed sigma
    # it is not monotone in |mu|: for small lam sigma it is ~1 / (lam sd|theta|).
    s = torch.logspace(-30, 1.5, 500, dtype=F64)
    for mu in [0.0, 1e-9, 1e-3, 1.0, 30.0]:
        got = snr_exp_abs(torch.full_like(s, mu), s)
        assert torch.isfinite(got).all() and (got > 0).all()
        assert (got[1:] < got[:-1]).all()


def test_float32_inputs_give_float64_outputs():
    gen = torch.Generator().manual_seed(0)
    loc = torch.randn(50, generator=gen) * 0.01
    scale = torch.rand(50, generator=gen) * 1e-3 + 1e-5
    for name, fn in CRITERIA.items():
        got = fn(loc, scale)
        assert got.dtype == F64, name
        assert torch.equal(got, fn(loc.double(), scale.double())), name


@pytest.mark.parametrize("shape", [(), (0,), (0, 3)])
def test_scalar_and_empty_inputs(shape):
    loc, scale = torch.full(shape, 0.3), torch.full(shape, 1e-4)
    for name, fn in CRITERIA.items():
        got = removal_scores(name, loc, scale)
        assert got.shape == shape and torch.isfinite(got).all(), name


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    loc, scale = _random_posterior(2, (1000,))
    scale[::2] *= 1000  # both snr_exp_abs branches
    for name, fn in CRITERIA.items():
        got = fn(loc.cuda(), scale.cuda())
        assert got.device.type == "cuda", name
        # CUDA's exp/erfc differ from the CPU's by a few float64 ulps, and a
        # variance E2 - E1^2 amplifies that by cancellation: 2.8e-10 relative
        # was seen on an H200 (torch 2.11), still 6 digits inside float32.
        torch.testing.assert_close(
            got.cpu(), fn(loc, scale), rtol=1e-8, atol=0, msg=lambda m: f"{name}: {m}"
        )


def test_zero_scale_gives_limits_and_nan_only_for_zero_over_zero():
    loc, scale = _t(0.5, 0.0), _t(0.0, 0.0)
    assert expected_abs(loc, scale)[0].item() == 0.5
    assert expected_exp_abs(loc, scale)[0].item() == pytest.approx(math.exp(0.5))
    assert snr_abs(loc, scale)[0].item() == math.inf
    assert snr_exp_abs(loc, scale)[0].item() == math.inf
    for name in ["snr", "expected_abs", "snr_abs", "expected_exp_abs", "snr_exp_abs"]:
        assert torch.isnan(CRITERIA[name](loc, scale)[1]), name


def test_input_validation():
    x = _t(1.0, 2.0)
    with pytest.raises(ValueError, match="same shape"):
        snr_abs(x, _t(1.0))
    with pytest.raises(ValueError, match="scale must be a standard deviation"):
        snr_abs(x, _t(1.0, -1.0))
    with pytest.raises(TypeError, match="floating-point"):
        snr_abs(torch.tensor([1, 2]), x)
    with pytest.raises(TypeError, match="torch.Tensor"):
        snr_abs([1.0, 2.0], x)
    for bad in [0.0, -1.0, math.inf, math.nan]:
        with pytest.raises(ValueError, match="lam must be positive"):
            snr_exp_abs(x, x, lam=bad)
    with pytest.raises(TypeError, match="lam must be a real number"):
        expected_exp_abs(x, x, lam="1")


# ----------------------------------------------------------------------------
# Registry contract
# ----------------------------------------------------------------------------


def test_registry():
    assert set(CRITERIA) == {
        "mean_abs",
        "snr",
        "expected_abs",
        "snr_abs",
        "expected_exp_abs",
        "snr_exp_abs",
    }
    assert DEFAULT_CRITERION == "snr_abs" and DEFAULT_CRITERION in CRITERIA
    for fn in CRITERIA.values():
        assert fn.__doc__ and "References" in fn.__doc__


def _random_posterior(
    seed: int, shape: tuple[int, ...]
) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    loc = 0.01 * torch.randn(shape, generator=gen)
    scale = torch.nn.functional.softplus(-7.4 + 0.8 * torch.randn(shape, generator=gen))
    return loc, scale


@pytest.mark.parametrize("name", sorted(CRITERIA))
def test_criterion_contract(name):
    loc, scale = _random_posterior(0, (1000, 1000))
    # Speed is measured in benchmarks/, not asserted here (shared, noisy CPUs).
    scores = removal_scores(name, loc, scale)
    assert scores.shape == loc.shape and scores.dtype == F64
    assert torch.isfinite(scores).all()
    again = removal_scores(name, *_random_posterior(0, (1000, 1000)))
    assert torch.equal(scores, again)
    flat = scores.flatten()
    keep = top_k(flat, 1234)
    assert keep.numel() == torch.unique(keep).numel() == 1234
    dropped = torch.ones_like(flat, dtype=torch.bool)
    dropped[keep] = False
    assert flat[dropped].max() <= flat[keep].min()


@pytest.mark.parametrize("name", sorted(CRITERIA))
def test_inactive_coordinates_rank_last(name):
    # Reference convention: inactive entries have mu = sigma = 0.
    loc, scale = _random_posterior(1, (200,))
    inactive = torch.arange(200) % 3 == 0
    loc, scale = loc.masked_fill(inactive, 0.0), scale.masked_fill(inactive, 0.0)
    scores = removal_scores(name, loc, scale)
    num_active = int((~inactive).sum())
    assert torch.equal(top_k(scores, num_active), torch.nonzero(~inactive).flatten())


# ----------------------------------------------------------------------------
# get_criterion, removal_scores, top_k
# ----------------------------------------------------------------------------


def test_get_criterion():
    for name, fn in CRITERIA.items():
        assert get_criterion(name) is fn
    custom = partial(snr_exp_abs, lam=2.0)
    assert get_criterion(custom) is custom
    with pytest.raises(ValueError) as info:
        get_criterion("SNR_mean_abs")
    for name in CRITERIA:
        assert repr(name) in str(info.value)
    with pytest.raises(TypeError, match="name from CRITERIA or a callable"):
        get_criterion(3)


def test_partial_lam_changes_the_score():
    loc, scale = _t(0.5, 1.0), _t(0.3, 0.3)
    two = removal_scores(partial(snr_exp_abs, lam=2.0), loc, scale)
    torch.testing.assert_close(
        two, _ref_snr_exp_abs(loc, scale, 2.0), rtol=1e-10, atol=0
    )
    assert not torch.allclose(two, removal_scores("snr_exp_abs", loc, scale))


def test_removal_scores_maps_nan_and_validates():
    loc = torch.zeros(4, requires_grad=True)
    scale = torch.ones(4)

    def with_nan(loc, scale):
        return torch.tensor([1.0, math.nan, -2.0, math.inf], dtype=torch.float32)

    got = removal_scores(with_nan, loc, scale)
    assert got.dtype == F64
    assert torch.equal(got, _t(1.0, -math.inf, -2.0, math.inf))
    assert not removal_scores("snr_abs", loc * 2, scale).requires_grad

    def flat(loc, scale):
        return loc.flatten()

    with pytest.raises(
        ValueError, match=r"flat returned shape \(6,\), expected .*\(2, 3\)"
    ):
        removal_scores(flat, torch.zeros(2, 3), torch.ones(2, 3))
    with pytest.raises(TypeError, match="must return a Tensor"):
        removal_scores(lambda loc, scale: [0.0] * 4, loc, scale)
    with pytest.raises(ValueError, match="unknown removal criterion"):
        removal_scores("nope", loc, scale)


def test_top_k_ties_and_edges():
    scores = _t(1.0, 3.0, 3.0, math.nan, -math.inf, 3.0, 2.0)
    assert torch.equal(top_k(scores, 2), torch.tensor([1, 2]))
    assert torch.equal(top_k(scores, 4), torch.tensor([1, 2, 5, 6]))
    # NaN and -inf tie last; the lower position wins.
    assert torch.equal(top_k(scores, 6), torch.tensor([0, 1, 2, 3, 5, 6]))
    empty = top_k(scores, 0)
    assert empty.dtype == torch.long and empty.shape == (0,)
    assert torch.equal(top_k(scores, 7), torch.arange(7))
    assert torch.equal(top_k(torch.zeros(5), 2), torch.tensor([0, 1]))
    for bad in [-1, 8]:
        with pytest.raises(ValueError, match=r"k must be in \[0, 7\]"):
            top_k(scores, bad)
    with pytest.raises(TypeError, match="k must be an int"):
        top_k(scores, 2.0)
    with pytest.raises(ValueError, match="1-D"):
        top_k(torch.zeros(2, 2), 1)


@HYPOTHESIS
@given(
    values=st.lists(
        st.sampled_from([0.0, 1.0, 2.0, -math.inf]), min_size=1, max_size=40
    ),
    data=st.data(),
)
def test_top_k_matches_brute_force(values, data):
    k = data.draw(st.integers(0, len(values)))
    ranked = sorted(range(len(values)), key=lambda i: (-values[i], i))
    expected = torch.tensor(sorted(ranked[:k]), dtype=torch.long)
    assert torch.equal(top_k(torch.tensor(values), k), expected)


@HYPOTHESIS
@given(
    n=st.integers(1, 300),
    levels=st.integers(1, 6),
    nan_fraction=st.floats(0.0, 0.5),
    seed=st.integers(0, 2**16),
    data=st.data(),
)
def test_top_k_equals_a_stable_descending_sort(n, levels, nan_fraction, seed, data):
    """The O(n) selection picks exactly what a stable sort would, ties included."""
    gen = torch.Generator().manual_seed(seed)
    scores = torch.randint(0, levels, (n,), generator=gen).to(F64)
    scores[torch.rand(n, generator=gen) < nan_fraction] = math.nan
    k = data.draw(st.integers(0, n))
    clean = torch.where(torch.isnan(scores), -math.inf, scores)
    order = torch.sort(clean, descending=True, stable=True).indices
    assert torch.equal(top_k(scores, k), order[:k].sort().values)


@pytest.mark.parametrize(
    "pattern, k",
    [
        ("ties", 1_000),
        ("ties", 60_000),
        ("ascending", 5_000),
        ("descending", 5_000),
        ("fine", 100_000),
        ("ties", (1 << 20) + 3),
    ],
)
def test_top_k_large_inputs_take_exact_shortcuts(pattern, k):
    """The pre-filter and complement paths (large n) pick what a sort picks."""
    n = (1 << 21) + 7
    gen = torch.Generator().manual_seed(1)
    if pattern == "ties":
        scores = torch.randint(0, 5, (n,), generator=gen).float()
        scores[torch.rand(n, generator=gen) < 0.05] = math.nan
    elif pattern == "fine":
        scores = torch.randint(0, 10**6, (n,), generator=gen).float()
    else:  # structured: a strided sample sees a biased picture
        scores = torch.arange(n).float() * (1 if pattern == "ascending" else -1)
    clean = torch.where(torch.isnan(scores), -math.inf, scores)
    order = torch.sort(clean, descending=True, stable=True).indices
    assert torch.equal(top_k(scores, k), order[:k].sort().values)
