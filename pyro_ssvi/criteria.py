r"""Removal criteria for SSVI subspace reselection (Li et al., 2024).

A criterion is a function ``(loc, scale) -> Tensor`` of the means :math:`\mu` and
standard deviations :math:`\sigma \ge 0` of independent Normal posteriors
:math:`\theta \sim \mathcal{N}(\mu, \sigma^2)`; it returns a float64 score of
``loc.shape``, higher meaning more important. Most are moments of the folded
normal :math:`|\theta|`. ``scale == 0`` gives the limiting score when
:math:`\mu \ne 0` and NaN when :math:`\mu = \sigma = 0`; :func:`removal_scores`
maps NaN to ``-inf`` (ranked last). A negative ``scale`` raises ``ValueError``.
Use ``functools.partial(snr_exp_abs, lam=2.0)`` for another :math:`\lambda`.
The addition rules (:data:`ADDITIONS`) are :mod:`pyro_ssvi.growth`'s, re-exported.

References:
    Li, Miao, Qiu, Zhang. *Training Bayesian Neural Networks with Sparse
    Subspace Variational Inference*, ICLR 2024, arXiv:2402.11025.
    Leone, Nelson, Nottingham. *The Folded Normal Distribution*,
    Technometrics 3(4), 1961.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
from torch import Tensor

from .growth import (
    ADDITIONS,
    addition_scores,
    get_addition,
    grad_abs,
    needs_grad,
    random_scores,
)

__all__ = [
    "ADDITIONS",
    "CRITERIA",
    "DEFAULT_CRITERION",
    "addition_scores",
    "expected_abs",
    "expected_exp_abs",
    "get_addition",
    "get_criterion",
    "grad_abs",
    "mean_abs",
    "needs_grad",
    "random_scores",
    "removal_scores",
    "snr",
    "snr_abs",
    "snr_exp_abs",
]

_SQRT_HALF = math.sqrt(0.5)
_SQRT_HALF_PI = math.sqrt(0.5 * math.pi)
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)
# Above _R_ASYM, 1 - r*Phi(-r)/phi(r) is summed as its asymptotic series; the
# erfcx form would lose about log10(r^2) digits to cancellation there.
_R_ASYM = 20.0
_NUM_ASYM_TERMS = 12  # first omitted term: 25!! / 20**24 < 1e-18
_R_CLAMP = 64.0  # g(r) and Phi(-r) underflow to 0 in float64 long before
_U_SERIES = 1e-3  # below lam * scale = _U_SERIES, snr_exp_abs uses its series


def _prepare(loc: Tensor, scale: Tensor) -> tuple[Tensor, Tensor]:
    """Validates ``(loc, scale)`` and returns ``(|loc|, scale)`` in float64."""
    for name, value in (("loc", loc), ("scale", scale)):
        if not isinstance(value, Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(value)!r}")
        if not value.is_floating_point():
            raise TypeError(
                f"{name} must be a floating-point tensor, got dtype {value.dtype}"
            )
    if loc.shape != scale.shape:
        raise ValueError(
            f"loc and scale must have the same shape, got {tuple(loc.shape)} and "
            f"{tuple(scale.shape)}"
        )
    scale = scale.to(torch.float64)
    if bool((scale < 0).any()):
        raise ValueError(
            f"scale must be a standard deviation (>= 0), got min {scale.min().item()}; "
            "pass e.g. softplus of the raw parameter"
        )
    return loc.to(torch.float64).abs(), scale


def _check_lam(lam: float) -> float:
    if isinstance(lam, bool) or not isinstance(lam, (int, float)):
        raise TypeError(f"lam must be a real number, got {type(lam)!r}")
    if not (math.isfinite(lam) and lam > 0):
        raise ValueError(f"lam must be positive and finite, got {lam!r}")
    return float(lam)


def _g(r: Tensor) -> Tensor:
    r"""Normal partial expectation :math:`g(r) = \phi(r) - r\Phi(-r)` for ``r >= 0``.

    Uses :math:`\Phi(-r) = \phi(r)\sqrt{\pi/2}\,\mathrm{erfcx}(r/\sqrt2)` for
    ``r <= 20`` and the series
    :math:`1 - r\Phi(-r)/\phi(r) = \sum_{n\ge1}(-1)^{n+1}(2n-1)!!\,r^{-2n}` above.
    """
    phi = _INV_SQRT_2PI * torch.exp(-0.5 * r * r)
    large = ~(r <= _R_ASYM)  # r > 20, inf or NaN: the series (computed there only)
    r_lo = r.masked_fill(large, 0.0) if bool(large.any()) else r
    out = 1.0 - r_lo * _SQRT_HALF_PI * torch.special.erfcx(r_lo * _SQRT_HALF)
    if r_lo is not r:
        inv_r2 = 1.0 / r[large].square()
        series = torch.zeros_like(inv_r2)
        for n in reversed(range(_NUM_ASYM_TERMS)):  # Horner: 1 - 3/r^2 + 15/r^4...
            series = 1.0 - (2 * n + 3) * inv_r2 * series
        out[large] = inv_r2 * series
    return phi * out


def _folded(loc: Tensor, scale: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Returns ``(|mu|, sigma, r, g(r))`` in float64, ``r = |mu| / sigma``."""
    a, s = _prepare(loc, scale)
    r = a / s
    return a, s, r, _g(r)


def _standard_var(r: Tensor, g: Tensor) -> Tensor:
    """``Var|Z + r| = 1 - 4 g (r + g)``, in ``[1 - 2/pi, 1]``; finite at r = inf."""
    return 1.0 - 4.0 * g * (r.clamp(max=_R_CLAMP) + g)


def mean_abs(loc: Tensor, scale: Tensor) -> Tensor:
    r"""Magnitude of the mean, :math:`|\mu|` (``scale`` is only validated).

    References: Li et al., 2024, reference-code name ``mean``.
    """
    return _prepare(loc, scale)[0]


def snr(loc: Tensor, scale: Tensor) -> Tensor:
    r"""Signal-to-noise ratio of :math:`\theta`, :math:`|\mu| / \sigma`.

    References: Li et al., 2024, reference-code name ``snr``.
    """
    a, s = _prepare(loc, scale)
    return a / s


def expected_abs(loc: Tensor, scale: Tensor) -> Tensor:
    r"""Folded-normal mean :math:`\mathbb{E}|\theta|`.

    .. math::

        \mathbb{E}|\theta| = \sigma\sqrt{2/\pi}\,e^{-\mu^2/2\sigma^2}
            + \mu\,\mathrm{erf}\big(\mu/\sigma\sqrt2\big)
            = |\mu| + 2\sigma\, g(r),\qquad g(r) = \phi(r) - r\,\Phi(-r),

    with :math:`r = |\mu|/\sigma`, evaluated in the cancellation-free second
    form. References: Li et al., 2024, code name ``E_mean_abs``.
    """
    a, s, _, g = _folded(loc, scale)
    return a + 2.0 * s * g


def snr_abs(loc: Tensor, scale: Tensor) -> Tensor:
    r"""Signal-to-noise ratio of :math:`|\theta|`, the default SSVI criterion.

    .. math::

        \mathrm{SNR}(|\theta|) = \frac{\mathbb{E}|\theta|}{\sqrt{\mathrm{Var}|\theta|}}
            = \frac{r + 2g}{\sqrt{1 - 4g\,(r + g)}},

    with :math:`r = |\mu|/\sigma` and :math:`g = g(r)` as in :func:`expected_abs`.
    The variance :math:`\mathrm{Var}|\theta| = \sigma^2 - 2\sigma g\,
    (\mathbb{E}|\theta| + |\mu|)` avoids cancellation. The score is
    :math:`\sqrt{2/\pi}/\sqrt{1 - 2/\pi} \approx 1.3236` at :math:`\mu = 0`,
    tends to :math:`r`, and ranks exactly as :func:`snr` does.
    References: Li et al., 2024, reference-code name ``SNR_mean_abs``.
    """
    _, _, r, g = _folded(loc, scale)
    return (r + 2.0 * g) / torch.sqrt(_standard_var(r, g))


def _log_mgf(a: Tensor, s: Tensor, lam: float) -> Tensor:
    """``log E exp(lam |theta|)`` by logaddexp of the two log-Phi branches."""
    u = lam * s
    r = a / s
    return 0.5 * u * u + torch.logaddexp(
        lam * a + torch.special.log_ndtr(r + u), torch.special.log_ndtr(u - r) - lam * a
    )


def expected_exp_abs(loc: Tensor, scale: Tensor, lam: float = 1.0) -> Tensor:
    r"""Folded-normal moment generating function :math:`\mathbb{E}e^{\lambda|\theta|}`.

    .. math::

        M(\lambda) = e^{\lambda\mu + \lambda^2\sigma^2/2}\,
                \Phi(\mu/\sigma + \lambda\sigma)
            + e^{-\lambda\mu + \lambda^2\sigma^2/2}\,
                \Phi(-\mu/\sigma + \lambda\sigma),

    summed in log space (only the final ``exp`` can overflow, to ``inf``).
    ``lam`` is :math:`\lambda > 0` (reference flag ``--lambda_exp``).
    References: Li et al., 2024, reference-code name ``E_exp_mean_abs``.

    Raises:
        TypeError, ValueError: If ``lam`` is not a positive finite number.
    """
    lam = _check_lam(lam)
    a, s = _prepare(loc, scale)
    return torch.exp(_log_mgf(a, s, lam))


def _folded_cumulants_34(r: Tensor, g: Tensor) -> tuple[Tensor, Tensor]:
    r"""Third and fourth cumulants of :math:`|Z + r|`, :math:`Z \sim \mathcal{N}(0, 1)`.

    Built from the moments of :math:`V = |Z + r| - r`, which stay of order one:
    :math:`\mathbb{E}V^n = \mathbb{E}Z^n + (-1)^{n+1} 2\sum_{j\,\mathrm{odd}}
    \binom{n}{j} r^{n-j} J_j` with the normal partial moments
    :math:`J_j = \mathbb{E}[(-Z - r)_+^j]`, :math:`J_1 = g`,
    :math:`J_{j+1} = j J_{j-1} - r J_j`. Their absolute error is a few ulps.
    """
    r = r.clamp(max=_R_CLAMP)  # g and Phi(-r) are exactly 0 beyond; avoids inf * 0
    j2 = torch.special.ndtr(-r) - r * g
    j3 = 2.0 * g - r * j2
    m1 = 2.0 * g
    m2 = 1.0 - 4.0 * r * g
    m3 = 2.0 * (3.0 * r * r * g + j3)
    m4 = 3.0 - 8.0 * r * (r * r * g + j3)
    k3 = m3 - 3.0 * m2 * m1 + 2.0 * m1**3
    k4 = m4 - 4.0 * m3 * m1 - 3.0 * m2 * m2 + 12.0 * m2 * m1 * m1 - 6.0 * m1**4
    return k3, k4


def _log_expm1_d(r: Tensor, a: Tensor, g: Tensor, u: Tensor, lam: float) -> Tensor:
    """``log(exp(D) - 1)``: from the cumulant series where ``u < _U_SERIES``,
    else from ``D = u^2 + L(2u) - 2 L(u)`` directly (NaN goes there)."""
    out = torch.empty_like(u)
    series, direct = u < _U_SERIES, ~(u < _U_SERIES)
    r_s, g_s, u_s = r[series], g[series], u[series]
    k3, k4 = _folded_cumulants_34(r_s, g_s)
    log_d = 2.0 * torch.log(u_s) + torch.log(
        _standard_var(r_s, g_s) + u_s * (k3 + (7.0 / 12.0) * k4 * u_s)
    )
    d = torch.exp(log_d)  # log(expm1(d)) = log(d) + d/2 + d^2/24 + O(d^4)
    out[series] = log_d + d * (0.5 + d / 24.0)
    r_d, a_d, u_d = r[direct], a[direct], u[direct]

    def centered_log_mgf(v: Tensor, vr: Tensor) -> Tensor:  # L(v), vr = v * r
        ndtr = torch.special.log_ndtr
        return torch.logaddexp(ndtr(r_d + v), ndtr(v - r_d) - 2.0 * vr)

    # v * r = lam * |mu| for v = u: written so, it stays finite when sigma = 0.
    d = (
        u_d * u_d
        + centered_log_mgf(2 * u_d, 2 * lam * a_d)
        - 2 * centered_log_mgf(u_d, lam * a_d)
    )
    out[direct] = torch.where(d > 1.0, d + torch.log1p(-torch.exp(-d)), d.expm1().log())
    return out


def snr_exp_abs(loc: Tensor, scale: Tensor, lam: float = 1.0) -> Tensor:
    r"""Signal-to-noise ratio of :math:`e^{\lambda|\theta|}`.

    .. math::

        \mathrm{SNR}(e^{\lambda|\theta|}) = \frac{M(\lambda)}
            {\sqrt{M(2\lambda) - M(\lambda)^2}} = \big(e^{D} - 1\big)^{-1/2},
        \qquad D = \log M(2\lambda) - 2\log M(\lambda),

    with :math:`M` as in :func:`expected_exp_abs`. Write :math:`r = |\mu|/\sigma`,
    :math:`u = \lambda\sigma` and :math:`Y = |Z + r|`, so that
    :math:`\lambda|\theta| = uY`. The terms linear in :math:`\lambda|\mu|`
    cancel exactly, which keeps :math:`D` finite when :math:`M` overflows:

    .. math::

        D = u^2 + L(2u) - 2L(u),\qquad
        L(v) = \log\big[\Phi(r + v) + e^{-2vr}\,\Phi(v - r)\big].

    used for :math:`u \ge 10^{-3}` (relative error about :math:`10^{-16}/u^2`);
    below, the cumulant expansion of the CGF of :math:`Y`,

    .. math::

        D = \sum_{n \ge 2} \frac{2^n - 2}{n!}\,\kappa_n(Y)\,u^n
          = u^2\big(\kappa_2 + \kappa_3 u + \tfrac{7}{12}\kappa_4 u^2\big)
            + O(u^5),

    with :math:`\kappa_2 = \mathrm{Var}\,Y = 1 - 4g(r + g)` as in :func:`snr_abs`,
    carried as :math:`\log D` (finite for :math:`\sigma` down to
    :math:`10^{-300}`). Close to :math:`1/(\lambda\sigma)` for small
    :math:`\lambda\sigma`, it ranks mostly by :math:`\sigma`.
    References: Li et al., 2024, reference-code name ``SNR_exp_mean_abs``.

    Raises:
        TypeError, ValueError: If ``lam`` is not a positive finite number.
    """
    lam = _check_lam(lam)
    a, s, r, g = _folded(loc, scale)
    return torch.exp(-0.5 * _log_expm1_d(r, a, g, lam * s, lam))


Criterion = Callable[[Tensor, Tensor], Tensor]

CRITERIA: dict[str, Criterion] = {
    "mean_abs": mean_abs,
    "snr": snr,
    "expected_abs": expected_abs,
    "snr_abs": snr_abs,
    "expected_exp_abs": expected_exp_abs,
    "snr_exp_abs": snr_exp_abs,
}
"""Removal criteria by name; the exp variants use ``lam=1``."""

DEFAULT_CRITERION = "snr_abs"
"""The paper's and the reference code's default, SNR of :math:`|\\theta|`."""


def get_criterion(criterion: str | Criterion) -> Criterion:
    """Resolves a criterion name or callable to a score function.

    Raises:
        ValueError: If ``criterion`` is an unknown name.
        TypeError: If ``criterion`` is neither a string nor callable.
    """
    if isinstance(criterion, str):
        try:
            return CRITERIA[criterion]
        except KeyError:
            raise ValueError(
                f"unknown removal criterion {criterion!r}; valid names are "
                f"{sorted(CRITERIA)}, or pass a callable (loc, scale) -> Tensor"
            ) from None
    if callable(criterion):
        return criterion
    raise TypeError(
        "criterion must be a name from CRITERIA or a callable (loc, scale) -> "
        f"Tensor, got {type(criterion)!r}"
    )


def removal_scores(criterion: str | Criterion, loc: Tensor, scale: Tensor) -> Tensor:
    """Scores coordinates for removal with a validated criterion.

    Runs the criterion under ``torch.no_grad()``, checks its shape, casts to
    float64 and maps NaN to ``-inf`` (removed first; the reference maps it to 0).

    Raises:
        ValueError: If the criterion is unknown or returns the wrong shape.
        TypeError: If the criterion is not resolvable or returns a non-tensor.
    """
    fn = get_criterion(criterion)
    with torch.no_grad():
        scores = fn(loc, scale)
    name = getattr(fn, "__name__", repr(fn))
    if not isinstance(scores, Tensor):
        raise TypeError(f"criterion {name} must return a Tensor, got {type(scores)!r}")
    if scores.shape != loc.shape:
        raise ValueError(
            f"criterion {name} returned shape {tuple(scores.shape)}, expected "
            f"loc.shape {tuple(loc.shape)}; criteria must score every coordinate"
        )
    scores = scores.to(torch.float64)
    return torch.where(torch.isnan(scores), -math.inf, scores)
