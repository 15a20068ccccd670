"""How a guide starts: initial means, scales and active sets.

Initialisers for the means of network weights, in Pyro's ``init_to_*`` style,
and the pure rules :class:`~pyro_ssvi.AutoSparseNormal` applies at set-up.

Pyro's default :func:`~pyro.infer.autoguide.init_to_feasible` starts every
weight mean at exactly zero, which leaves a deep network's units symmetric and
its activations vanishing. :func:`init_to_kaiming` draws fan-in scaled means
instead. To start from the weights of a trained or freshly initialised torch
network, pass them to Pyro's :func:`~pyro.infer.autoguide.init_to_value`
(``pyro_ssvi.app.models`` records those weights for you).

Example::

    guide = AutoSparseNormal(model, density=0.1, init_loc_fn=init_to_kaiming)
"""

from __future__ import annotations

import functools
import math
import warnings
from typing import Any, Callable, Collection, Mapping

import torch
from pyro.distributions import constraints
from pyro.infer.autoguide.initialization import (
    init_to_feasible,
    init_to_uniform,
    init_to_value,
)

from .selection import top_k

__all__ = [
    "ALLOCATIONS",
    "DEFAULT_INIT_SCALE",
    "DEFAULT_WEIGHT_INIT_SCALE",
    "INIT_ACTIVE",
    "active_floor",
    "allocate_densities",
    "check_start",
    "init_gives_values",
    "init_to_kaiming",
    "initial_active_set",
    "initial_scales",
    "num_active",
]

#: Initial posterior scale of ordinary sites, as in ``AutoNormal``.
DEFAULT_INIT_SCALE = 0.1
#: Initial posterior scale of network weights (real, >= 2-D, outside plates).
DEFAULT_WEIGHT_INIT_SCALE = 0.01
#: How the initial active set is chosen (see :func:`initial_active_set`).
INIT_ACTIVE = ("auto", "random", "largest")
#: How a density budget is shared between sites (see :func:`allocate_densities`).
ALLOCATIONS = ("uniform", "erk")


def init_to_kaiming(
    site: dict[str, Any] | None = None,
    *,
    gain: float = math.sqrt(2.0),
    fallback: Callable[[dict[str, Any]], torch.Tensor] | None = init_to_feasible,
) -> Any:
    r"""Initialise weight-like sites with fan-in scaled Normal draws.

    For a real-valued site whose value has at least two dimensions (a linear
    weight ``(out, in)`` or a conv kernel ``(out, in, *kernel)``), returns a
    draw of

    .. math:: W_{ij} \sim \mathcal{N}\!\left(0, \frac{g^2}{\text{fan\_in}}\right),
        \qquad \text{fan\_in} = \prod_{d \geq 1} \text{shape}_d,

    the initialisation of He et al. (2015) with ``g = gain``. Every other site
    (biases, scalars, constrained sites) is initialised by ``fallback``.

    Args:
        site: A Pyro sample site; omit it to get a configured initialiser.
        gain: The gain ``g`` (``sqrt(2)`` suits ReLU networks, 1 linear ones).
        fallback: Initialiser for the sites this one does not handle.

    Returns:
        The initial value, or a partially applied initialiser when ``site``
        is None.

    Raises:
        ValueError: If ``gain`` is not positive.

    References:
        He, Zhang, Ren, Sun. *Delving Deep into Rectifiers*, ICCV 2015.
    """
    if not gain > 0:
        raise ValueError(f"init_to_kaiming: gain must be > 0, got {gain!r}.")
    if site is None:
        return functools.partial(init_to_kaiming, gain=gain, fallback=fallback)
    support = site["fn"].support
    while isinstance(support, constraints.independent):
        support = support.base_constraint
    shape = site["fn"].shape()
    if len(shape) < 2 or support is not constraints.real:
        if fallback is None:
            raise ValueError(
                f"init_to_kaiming cannot initialise site {site['name']!r}; "
                "pass a fallback initialiser."
            )
        return fallback(site)
    template = site["fn"].sample().detach()
    fan_in = template[0].numel()
    std = gain / math.sqrt(fan_in)
    return torch.randn_like(template) * std


def init_gives_values(init_loc_fn: Callable[..., Any], site_name: str) -> bool:
    """Whether ``init_loc_fn`` gives ``site_name`` values that are really given.

    Given values (a trained network's weights) carry information, and the
    guide starts a sparse site on the ``k`` largest of their magnitudes; any
    other initialiser, random or generic, gets a random active set, as in the
    SSVI paper. Values are given by Pyro's
    :func:`~pyro.infer.autoguide.init_to_value` for the sites in its
    ``values`` (the others are asked of its ``fallback``), and by any
    initialiser with a method ``gives_values(site_name) -> bool`` that says
    so (``BayesianClassifier.init_loc_fn()`` of :mod:`pyro_ssvi.app.models`
    has one). ``init_active="largest"`` forces the rule for any initialiser.
    """
    fn: Any = init_loc_fn
    while True:
        asks = getattr(fn, "gives_values", None)
        if callable(asks):
            return bool(asks(site_name))
        if not isinstance(fn, functools.partial):
            return False
        if fn.func is init_to_value:
            if site_name in fn.keywords.get("values", {}):
                return True
            fn = fn.keywords.get("fallback", init_to_uniform)
        else:
            fn = fn.func


def initial_scales(
    like: torch.Tensor, scale: float | tuple[float, float]
) -> torch.Tensor:
    r"""A constant scale, or :math:`|\varepsilon|`, :math:`\varepsilon \sim
    \mathcal{N}(\text{mean}, \text{std}^2)` per coordinate (zeros redrawn)."""
    if not isinstance(scale, tuple):
        return torch.full_like(like, scale)
    mean, std = scale
    draw = (torch.randn_like(like) * std + mean).abs()
    while not bool((draw > 0).all()):
        zero = draw == 0
        draw[zero] = (torch.randn_like(draw[zero]) * std + mean).abs()
    return draw


def active_floor(shape: torch.Size) -> int:
    """The fewest active coordinates a sparse site of ``shape`` keeps.

    One per output unit, ``min(n, shape[0])``, for a site of two or more
    dimensions (torch's ``(out, in, ...)`` layout): below it a unit would, on
    average, see no input at all; 1 for a vector or a scalar.

    Example::

        active_floor(torch.Size([400, 784]))   # 400
        active_floor(torch.Size([5000]))       # 1
    """
    return min(shape.numel(), shape[0]) if len(shape) >= 2 else 1


def num_active(name: str, shape: torch.Size, density: float) -> int:
    r"""A sparse site's :math:`k = \max(k_{\min}, \operatorname{round}(d\,n))`,
    with the floor :math:`k_{\min}` of :func:`active_floor`; a
    ``UserWarning`` names the site when the floor raises ``k``."""
    k = int(round(density * shape.numel()))
    floor = active_floor(shape)
    if k < floor:
        warnings.warn(
            f"AutoSparseNormal: density {density:g} would keep {k} of the "
            f"{shape.numel()} coordinates of site {name!r}; it keeps k={floor}, the "
            "floor (one per output unit of a weight, 1 for a vector: see "
            "pyro_ssvi.guides.active_floor)",
            UserWarning,
            stacklevel=6,
        )
    return max(k, floor)


def initial_active_set(
    rule: str, init_loc_fn: Callable[..., Any], name: str, value: torch.Tensor, k: int
) -> torch.Tensor:
    """The sorted flat indices a sparse site starts on.

    ``"largest"``: the ``k`` largest ``|value|``; ``"random"``: a uniformly
    random subset; ``"auto"``: the first when the initial values are given
    (:func:`init_gives_values`), the second otherwise, as in the SSVI paper.
    """
    if rule == "auto":
        rule = "largest" if init_gives_values(init_loc_fn, name) else "random"
    if rule == "largest":
        return top_k(value.reshape(-1).abs(), k)
    return torch.randperm(value.numel(), device=value.device)[:k].sort().values


def allocate_densities(
    shapes: Mapping[str, torch.Size],
    density: float,
    rule: str = "uniform",
    dense: Collection[str] = (),
) -> dict[str, float]:
    r"""Per-site densities with the total budget of a uniform density.

    The budget is :math:`B = d \sum_l n_l` active coordinates over the sites
    ``shapes`` (:math:`n_l` elements each). Sites in ``dense`` get density 1
    and are charged to it; the rest :math:`R` share :math:`B' = B - \sum_{l
    \in \text{dense}} n_l`:

    * ``"uniform"``: :math:`d_l = B' / \sum_{l \in R} n_l`;
    * ``"erk"`` (Erdős–Rényi-kernel, Evci et al. 2020, RigL):
      :math:`d_l = \epsilon \, \frac{\sum_i s_{l,i}}{\prod_i s_{l,i}}`
      over the dimensions :math:`s_{l,i}` of the site's shape, i.e.
      :math:`(n_\text{in} + n_\text{out}) / (n_\text{in} n_\text{out})` for
      a linear weight and :math:`(n_\text{in} + n_\text{out} + k_h + k_w) /
      (n_\text{in} n_\text{out} k_h k_w)` for a 2-D kernel, with
      :math:`\epsilon = B' / \sum_{l \in R} n_l \, \text{raw}_l`.

    A site whose density would exceed 1 is capped at 1 and its surplus is
    redistributed: it joins the capped set, and :math:`\epsilon` (or the
    uniform density) is solved again for the others, until no site exceeds 1.
    The result sums to the budget exactly (before each site's rounding to an
    integer ``k`` and its floor, :func:`num_active`).

    Args:
        shapes: The sparse-eligible sites' shapes, in model order.
        density: The uniform density ``d`` in ``(0, 1]`` that sets the budget.
        rule: ``"uniform"`` or ``"erk"``.
        dense: Sites kept dense (density 1), charged to the budget.

    Returns:
        ``{site: density}`` for every site of ``shapes``.

    Raises:
        ValueError: For an unknown rule, or dense sites over the budget.

    Example::

        shapes = {"fc1": torch.Size([400, 784]), "fc2": torch.Size([400, 400]),
                  "fc3": torch.Size([10, 400])}
        allocate_densities(shapes, 0.1, "erk")
        # {'fc1': 0.0833, 'fc2': 0.1103, 'fc3': 1.0}
    """
    if rule not in ALLOCATIONS:
        raise ValueError(
            f"allocation must be one of {ALLOCATIONS}, got {rule!r}; "
            "e.g. allocation='erk'."
        )
    numel = {name: int(shape.numel()) for name, shape in shapes.items()}
    budget = density * sum(numel.values())
    capped = {name for name in numel if name in dense}
    charged = sum(numel[name] for name in capped)
    if charged > budget + 1e-9 and density < 1:
        raise ValueError(
            f"allocation: the dense sites {sorted(capped)} hold {charged} "
            f"coordinates, more than the budget of {budget:.0f} at density "
            f"{density:g}; raise the density or keep fewer sites dense."
        )
    raw = {
        name: (1.0 if rule == "uniform" else sum(shape) / shape.numel())
        for name, shape in shapes.items()
    }
    while True:
        rest = [name for name in numel if name not in capped]
        left = budget - sum(numel[name] for name in capped)
        weight = sum(numel[name] * raw[name] for name in rest)
        eps = left / weight if weight > 0 else 0.0
        over = {name for name in rest if eps * raw[name] > 1.0}
        if not over:
            break
        capped |= over
    return {
        name: 1.0 if name in capped else max(0.0, eps * raw[name]) for name in numel
    }


def check_start(
    density: Any, init_loc_fn: Any, init_scale: Any, init_active: Any
) -> None:
    """:class:`~pyro_ssvi.AutoSparseNormal`'s arguments of its start, checked
    once at construction.

    Raises:
        TypeError, ValueError: Naming the argument and what it takes.
    """
    if isinstance(density, bool) or not isinstance(density, (int, float)):
        raise TypeError(
            f"AutoSparseNormal: density must be a float in (0, 1], got {density!r}."
        )
    if not 0.0 < float(density) <= 1.0:
        raise ValueError(
            f"AutoSparseNormal: density must be in (0, 1], got {density!r}; "
            "use e.g. density=0.1 to keep 10% of each weight tensor."
        )
    values: tuple[Any, ...] = (
        init_scale if isinstance(init_scale, tuple) else (init_scale,)
    )
    if init_scale is not None and (
        len(values) not in (1, 2)
        or isinstance(init_scale, tuple)
        and len(values) != 2
        or not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) for v in values
        )
    ):
        raise TypeError(
            "AutoSparseNormal: init_scale must be a float or a pair (mean, std), "
            f"got {init_scale!r}."
        )
    if len(values) == 2 and not (min(values) >= 0 and sum(values) > 0):
        raise ValueError(
            "AutoSparseNormal: init_scale=(mean, std) needs mean >= 0, std >= 0 "
            f"and not both 0, got {init_scale!r}; e.g. (6e-4, 5e-4)."
        )
    if init_scale is not None and len(values) == 1 and not values[0] > 0:
        raise ValueError(
            f"AutoSparseNormal: init_scale must be > 0, got {init_scale!r}."
        )
    if not callable(init_loc_fn):
        raise TypeError("AutoSparseNormal: init_loc_fn must be callable.")
    if init_active not in INIT_ACTIVE:
        raise ValueError(
            f"AutoSparseNormal: init_active must be one of {INIT_ACTIVE}, "
            f"got {init_active!r}."
        )
