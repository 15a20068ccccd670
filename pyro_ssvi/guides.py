"""``AutoSparseNormal``: a Pyro autoguide whose posterior lives on a sparse subspace.

A superset of :class:`~pyro.infer.autoguide.AutoNormal`: swap one for the
other. Weight tensors get a sparse subspace; every other latent site gets
AutoNormal's mean-field Normal::

    guide = AutoSparseNormal(model, density=0.1)
    svi = SparseSVI(model, guide, pyro.optim.Adam({"lr": 1e-3}))
    for x, y in loader:
        svi.step(x, y)
    guide.active_indices()   # {site: sorted flat indices of the active set}

The guide's parts: its site rules (:mod:`pyro_ssvi._sites`), storage
(:mod:`pyro_ssvi._storage`), state dicts (:mod:`pyro_ssvi._guide_state`) and
start (:mod:`pyro_ssvi.initialization`).
"""

from __future__ import annotations

import math
import warnings
from contextlib import ExitStack
from typing import Any, Callable, Collection

import pyro
import torch
from pyro.distributions.transforms import biject_to
from pyro.infer.autoguide import AutoGuide
from torch.distributions import Distribution, transform_to

from ._allocation import BudgetAllocation
from ._background_guide import BackgroundParams, drop_background_store_entries
from ._guide_state import encode
from ._pyro_compat import (
    InitMessenger,
    create_plates,
    handler_stack,
    helpful_support_errors,
    module_context,
    periodic_repeat,
)
from ._sites import Site, check_site_choice, is_weight, lrt_weight
from ._softplus import softplus_positive
from ._storage import SubspaceParams, after_load, compact_indices
from ._summaries import PosteriorSummaries
from .background import BackgroundSparseNormal
from .initialization import (
    DEFAULT_INIT_SCALE,
    DEFAULT_WEIGHT_INIT_SCALE,
    INIT_ACTIVE,
    active_floor,
    check_start,
    init_to_kaiming,
    initial_active_set,
    initial_scales,
    num_active,
)
from .poutine import LazyWeightMessenger, background_sampling

__all__ = [
    "AutoSparseNormal",
    "DEFAULT_INIT_SCALE",
    "DEFAULT_MIN_SPARSE_NUMEL",
    "DEFAULT_WEIGHT_INIT_SCALE",
    "INIT_ACTIVE",
    "SubspaceParams",
    "active_floor",
]

#: A one-dimensional site is sparse by default only above this many elements.
DEFAULT_MIN_SPARSE_NUMEL = 4096


class AutoSparseNormal(
    PosteriorSummaries, BackgroundParams, BudgetAllocation, AutoGuide
):
    r"""Mean-field Normal guide restricted to a fixed-size sparse subspace per site.

    Every *sparse* site keeps exactly

    .. math:: k = \max(k_{\min}, \operatorname{round}(\text{density} \cdot n))

    active coordinates out of its ``n`` elements, with the floor
    :math:`k_{\min}` of :func:`~pyro_ssvi.initialization.active_floor` (one
    per output unit of a weight); a ``UserWarning`` names a site whose ``k``
    the floor raised. Its posterior is a
    :class:`~pyro_ssvi.distributions.SparseNormal`, sampled under the site's
    own name, with parameters ``locs.<site>`` and ``scales.<site>`` of length
    ``k`` and the active indices ``indices.<site>`` stored beside them (see
    :mod:`pyro_ssvi._storage`). :class:`~pyro_ssvi.SparseSVI` moves the
    active set during training; ``k`` never changes. Every other latent site
    is *dense*, exactly as in :class:`~pyro.infer.autoguide.AutoNormal`.

    A site may be sparse when its support is the real line, its prior
    factorises over elements and it is outside every plate; by default such
    a site is sparse when it has at least two dimensions (weights, kernels)
    or more than ``min_sparse_numel`` elements. ``sparse_sites`` may instead
    name the sites, or be a predicate ``(name, site) -> bool``.

    A sparse site starts on a uniformly random subset of coordinates, as in
    the SSVI paper, unless its initial values are given (``init_to_value``,
    a pretrained network's weights): then on their ``k`` largest magnitudes
    (``init_active="auto"``; ``"random"`` and ``"largest"`` force a rule).
    Any other initialiser (a random draw included) starts on a random set:
    see :func:`~pyro_ssvi.initialization.init_gives_values`.

    The guide is lazy like every Pyro autoguide: parameters are created at
    the first call or by :meth:`setup`. :meth:`load_state_dict` also works on
    a guide never called; its first call (or :meth:`setup`) then checks the
    loaded sites against the model.

    Args:
        model: A Pyro model.
        density: Fraction of each sparse site's coordinates that is active,
            in ``(0, 1]``.
        init_loc_fn: Pyro-style initialiser of the means; the default
            :func:`~pyro_ssvi.init_to_kaiming` draws fan-in scaled weights.
        init_scale: Initial posterior standard deviation (unconstrained for
            constrained sites): a float > 0, or ``(mean, std)`` to draw each
            coordinate's :math:`\sigma_j = |\varepsilon_j|`,
            :math:`\varepsilon_j \sim \mathcal{N}(\text{mean}, \text{std}^2)`,
            as the reference implementation does with ``(6e-4, 5e-4)``.
            Default: 0.1 (``AutoNormal``'s), and 0.01 for network weights.
        init_active: ``"auto"``, ``"random"`` or ``"largest"``.
        sparse_sites: None, a collection of site names, or a predicate.
        min_sparse_numel: Size above which a one-dimensional site is sparse by
            default.
        dense_sites: Names of sites kept dense whatever ``sparse_sites`` says,
            e.g. a network's first convolution, which SSVI keeps dense. They
            are not charged to the density budget.
        allocation: How the budget ``density * sum(n)`` of active coordinates
            is shared between the sparse sites: ``"uniform"`` (every site at
            ``density``) or ``"erk"`` (Erdős–Rényi-kernel, as in RigL:
            :func:`~pyro_ssvi.initialization.allocate_densities`). A site the
            allocation gives density 1 gets a dense mean-field posterior.
        dense_below: Sparse sites of at most this many elements get a dense
            posterior (e.g. ``4096`` for the 4,000-weight output layer of an
            MNIST MLP), charged to the budget: the other sites share what is
            left. 0 (default): none.
        background: ``None`` (default: SSVI, inactive coordinates are exact
            zeros), ``"column"``, ``"layer"`` or ``"rowcol"``: inactive
            coordinates are :math:`\mathcal{N}(0, s^2)` with a learnt ``s`` per
            input unit, per site, or :math:`s_{jc} = r_j c_c` per output unit
            and input unit (:class:`~pyro_ssvi.background.BackgroundSparseNormal`;
            its layers never draw the background densely).
        background_init: The background scales' start (default 0.01, the
            weights' initial posterior scale: every coordinate then starts
            with the same uncertainty).
        background_sites: The sparse sites that get a background (default:
            all), e.g. only a network's first layer.
        create_plates: As in :class:`~pyro.infer.autoguide.AutoNormal`.

    Raises:
        ValueError, TypeError: For invalid arguments, or (at set-up) an
            unknown or ineligible site in ``sparse_sites``.

    Example::

        guide = AutoSparseNormal(model, density=0.1)
        guide.setup(x, y)                   # optional: materialise parameters
        guide.num_active()                  # {'fc1.weight': 31360, ...}
    """

    scale_constraint = softplus_positive

    def __init__(
        self,
        model: Callable[..., Any],
        *,
        density: float = 0.1,
        init_loc_fn: Callable[[dict[str, Any]], torch.Tensor] = init_to_kaiming,
        init_scale: float | tuple[float, float] | None = None,
        init_active: str = "auto",
        sparse_sites: Collection[str] | Callable[[str, dict], bool] | None = None,
        min_sparse_numel: int = DEFAULT_MIN_SPARSE_NUMEL,
        dense_sites: Collection[str] = (),
        create_plates: Callable[..., Any] | None = None,
        allocation: str = "uniform",
        dense_below: int = 0,
        background: str | None = None,
        background_init: float = DEFAULT_WEIGHT_INIT_SCALE,
        background_sites: Collection[str] | None = None,
    ) -> None:
        check_start(density, init_loc_fn, init_scale, init_active)
        check_site_choice(sparse_sites, dense_sites, min_sparse_numel)
        self._init_background(background, background_init, background_sites)
        self._init_allocation(allocation, dense_below)
        self.target_density = float(density)
        self.init_loc_fn = init_loc_fn
        self._init_scale = (
            init_scale
            if init_scale is None or isinstance(init_scale, tuple)
            else float(init_scale)
        )
        self.init_active = init_active
        self._sparse_sites = sparse_sites
        self.dense_sites = frozenset(dense_sites)
        self.min_sparse_numel = min_sparse_numel
        self._sites: dict[str, Site] = {}
        self._index_buffers: set[str] = set()
        self._verified = True  # False after loading into a never-called guide
        self._raw_model = (model,)
        self._scale_transform = transform_to(self.scale_constraint)
        self._reset_caches()
        super().__init__(InitMessenger(init_loc_fn)(model), create_plates=create_plates)
        self.register_state_dict_post_hook(compact_indices)
        self.register_load_state_dict_post_hook(after_load)
        self.register_load_state_dict_post_hook(drop_background_store_entries)

    def __getstate__(self) -> dict[str, Any]:
        # PyroModule's drops Pyro's weakrefs from the parameters; AutoGuide's
        # would also detach the model from this very guide, not only the copy.
        state = super(AutoGuide, self).__getstate__()
        state.update(_model=None, _raw_model=None, master=None)
        state.update(_leaves={}, _index_cache={})
        return state

    # ------------------------------------------------------------------ setup
    def setup(self, *args: Any, **kwargs: Any) -> "AutoSparseNormal":
        """Run the model once to create the guide's parameters.

        Equivalent to the lazy set-up of the first call, without sampling; on
        a guide loaded from a state dict, checks the loaded sites against the
        model instead. Call it before building a torch optimiser over
        ``guide.parameters()``. Returns the guide itself.
        """
        if self.prototype_trace is None:
            if self._sites:
                self._check_against_model(*args, **kwargs)
            else:
                self._setup_prototype(*args, **kwargs)
        return self

    def _setup_prototype(self, *args: Any, **kwargs: Any) -> None:
        super()._setup_prototype(*args, **kwargs)
        sites = dict(self.prototype_trace.iter_stochastic_nodes())
        named = {"dense_sites": self.dense_sites}
        if self.background_sites is not None:
            named["background_sites"] = self.background_sites
        if self._sparse_sites is not None and not callable(self._sparse_sites):
            named["sparse_sites"] = frozenset(self._sparse_sites)
        for arg, names in named.items():
            if set(names) - set(sites):
                raise ValueError(
                    f"AutoSparseNormal: {arg} names {sorted(set(names) - set(sites))} "
                    f"are not latent sites of the model; latent sites are "
                    f"{sorted(sites)}."
                )
        self._new_trees()
        self._allocate(sites)
        for name, site in sites.items():
            self._add_site(name, site)
            # The dense initial value is in the parameters now; keep its shape.
            site["value"] = site["value"].new_zeros(()).expand(site["value"].shape)
        if self.target_density < 1 and not self.sparse_site_names():
            which = (
                f"latent sites are {sorted(sites)}"
                if sites
                else "the model has no latent site at all"
            )
            warnings.warn(
                "AutoSparseNormal: no latent site is sparse, so the guide is a dense "
                "mean-field Normal like AutoNormal. Sparse sites need real support, "
                "a factorised prior, no plate, and (by default) at least two "
                f"dimensions or more than {self.min_sparse_numel} elements; "
                f"{which}. Pass sparse_sites=[...] to choose.",
                UserWarning,
                stacklevel=4,
            )

    def _add_site(self, name: str, site: dict[str, Any]) -> None:
        value = site["value"].detach()
        with helpful_support_errors(site):
            unconstrained = biject_to(site["fn"].support).inv(value).detach()
        event_dim = site["fn"].event_dim + unconstrained.dim() - value.dim()
        scale = self._init_scale
        if scale is None:
            scale = DEFAULT_WEIGHT_INIT_SCALE if is_weight(site) else DEFAULT_INIT_SCALE
        if name in self._sparse_names:  # decided by _allocate
            density = self._site_density.get(name, self.target_density)
            k = num_active(name, value.shape, density)
            idx = initial_active_set(self.init_active, self.init_loc_fn, name, value, k)
            loc = value.reshape(-1).index_select(0, idx).contiguous()
            info = Site(True, value.shape, 1, site["fn"].support)
            self._new_params(
                name, info, loc, initial_scales(loc, scale), idx, encode(info)
            )
            if self._wants_background(name):
                self._new_background(name, value.shape, loc)
            return
        loc = unconstrained
        for frame in site["cond_indep_stack"]:  # subsampled: repeat to full size
            full_size = frame.full_size or frame.size
            if full_size != frame.size:
                loc = periodic_repeat(loc, full_size, frame.dim - event_dim)
        loc = loc.contiguous()
        info = Site(False, value.shape, event_dim, site["fn"].support)
        self._new_params(
            name, info, loc, initial_scales(loc, scale), None, encode(info)
        )

    # -------------------------------------------------------------- sampling
    def forward(self, *args: Any, **kwargs: Any) -> dict[str, torch.Tensor]:
        """Sample every latent site; same ``*args, **kwargs`` as the model.

        Returns:
            A dict from site name to its sampled (constrained) value, full
            shape, with zeros off the active set at sparse sites.
        """
        if self.prototype_trace is None:
            self.setup(*args, **kwargs)
        plates = create_plates(self, *args, **kwargs)
        result = {}
        for name, site in self.prototype_trace.iter_stochastic_nodes():
            with ExitStack() as stack:
                for frame in site["cond_indep_stack"]:
                    if frame.vectorized:
                        stack.enter_context(plates[frame.name])
                posterior: Any = self._full_posterior(name)  # read inside plates
                infer: Any = self._infer(name)
                if isinstance(posterior, BackgroundSparseNormal) and not any(
                    isinstance(h, LazyWeightMessenger) for h in handler_stack()
                ):  # never a dense background draw in a layer
                    stack.enter_context(background_sampling())
                result[name] = pyro.sample(name, posterior, infer=infer)
        return result

    def _infer(self, name: str) -> dict[str, Any]:
        """Weight sites may be locally reparameterised (a fresh dict: handlers
        may edit a site's copy)."""
        return {"lrt": True} if lrt_weight(self._sites[name]) else {}

    def site_posterior(self, name: str) -> Distribution:
        """The variational distribution of one site: a ``SparseNormal`` for a
        sparse site, a (transformed) mean-field Normal for a dense one."""
        self._require_site(name)
        with module_context(self):
            return self._full_posterior(name)

    # ----------------------------------------------------------- introspection
    def site_names(self) -> list[str]:
        """Names of all latent sites of the guide, in model order."""
        self._require_params()
        return list(self._sites)

    def site_shape(self, name: str) -> torch.Size:
        """Full shape of a site's value."""
        self._require_site(name)
        return self._sites[name].shape

    def active_indices(self) -> dict[str, torch.Tensor]:
        """Sorted flat indices of every sparse site's active coordinates:
        ``{site: LongTensor (k,)}``, a copy, safe to keep."""
        with module_context(self):
            return {n: self._indices(n).clone() for n in self.sparse_site_names()}

    def num_active(self) -> dict[str, int]:
        """Number ``k`` of active coordinates of every sparse site."""
        return {
            n: int(self.subspace_params(n).loc.numel())
            for n in self.sparse_site_names()
        }

    @property
    def density(self) -> float:
        """The fraction of the budget's coordinates that is active:
        ``sum(k) / sum(n)`` over the sparse sites and the sites the allocation
        made dense (``k = n``; other dense sites do not count); ``nan``
        without a sparse site (the guide warned at set-up)."""
        names = self.sparse_site_names()
        charged = [n for n in self.charged_site_names() if n not in names]
        total = sum(self._sites[n].shape.numel() for n in names + charged)
        if not names:
            return math.nan
        full = sum(self._sites[n].shape.numel() for n in charged)
        return (sum(self.num_active().values()) + full) / total

    def num_variational_params(self) -> int:
        """Number of variational parameters (means plus scales) of all sites."""
        with module_context(self):
            return sum(
                loc.numel() + scale.numel()
                for loc, scale in map(self._get_loc_and_scale, self._sites)
            )
