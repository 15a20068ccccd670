"""``AutoSparseNormal``: a Pyro autoguide whose posterior lives on a sparse subspace.

A superset of :class:`~pyro.infer.autoguide.AutoNormal`: swap one for the
other. Weight tensors get a sparse subspace; every other latent site gets
AutoNormal's mean-field Normal::

    guide = AutoSparseNormal(model, density=0.1)
    svi = SparseSVI(model, guide, pyro.optim.Adam({"lr": 1e-3}), Trace_ELBO())
    for x, y in loader:
        svi.step(x, y)
    guide.active_indices()   # {site: sorted flat indices of the active set}
"""

from __future__ import annotations

import math
import warnings
from contextlib import ExitStack
from operator import attrgetter
from typing import Any, Callable, Collection, Iterator, NamedTuple

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from pyro.distributions import constraints
from pyro.distributions.transforms import biject_to
from pyro.infer.autoguide import AutoGuide
from pyro.nn import PyroModule, PyroParam
from torch.distributions import Distribution, transform_to

from . import _guide_state
from ._guide_state import Site
from ._pyro_compat import (
    InitMessenger,
    deep_setattr,
    helpful_support_errors,
    is_module_local_param_enabled,
    module_context,
    param_store_name,
    periodic_repeat,
    tensor_version,
)
from ._softplus import softplus_positive
from .criteria import top_k
from .distributions import SparseNormal
from .initialization import init_gives_values, init_to_kaiming

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
#: Initial posterior scale of ordinary sites, as in ``AutoNormal``.
DEFAULT_INIT_SCALE = 0.1
#: Initial posterior scale of network weights (real, >= 2-D, outside plates).
DEFAULT_WEIGHT_INIT_SCALE = 0.01
#: How the initial active set is chosen (see ``AutoSparseNormal``).
INIT_ACTIVE = ("auto", "random", "magnitude")

_TREES = ("locs", "scales", "indices")


class SubspaceParams(NamedTuple):
    """The stored tensors of one sparse site, as Pyro's optimisers hold them.

    Attributes:
        loc: Active means, shape ``(k,)`` (a leaf ``Parameter``).
        scale: Active scales in unconstrained space, shape ``(k,)``.
        indices: Sorted flat indices of the active coordinates, stored as
            exact integers in a float64 ``Parameter`` that requires no grad
            (so that Pyro's param store, which holds only floating-point
            tensors, carries them along with ``loc`` and ``scale``).
    """

    loc: torch.nn.Parameter
    scale: torch.nn.Parameter
    indices: torch.nn.Parameter


def _base_support(support: constraints.Constraint) -> constraints.Constraint:
    while isinstance(support, constraints.independent):
        support = support.base_constraint
    return support


def _is_factorised(fn: Distribution) -> bool:
    base = fn
    while isinstance(base, torch.distributions.Independent):
        base = base.base_dist
    return base.event_shape == torch.Size() and not isinstance(base, dist.Delta)


def _is_weight(site: dict[str, Any]) -> bool:
    """Real, at least two dimensions, outside every plate: a network weight."""
    return (
        site["value"].dim() >= 2
        and _base_support(site["fn"].support) is constraints.real
        and not site["cond_indep_stack"]
    )


def _deep_register_buffer(root: PyroModule, name: str, tensor: torch.Tensor) -> None:
    module = root
    *prefix, leaf = name.split(".")
    for part in prefix:
        if getattr(module, part, None) is None:
            setattr(module, part, PyroModule())
        module = getattr(module, part)
    module.register_buffer(leaf, tensor, persistent=True)


def _compact_indices(
    module: torch.nn.Module, state_dict: dict[str, Any], prefix: str, local: Any
) -> None:
    """In state dicts, indices are integers: int32 when they fit (half the bytes)."""
    for key, value in state_dict.items():
        if key.startswith(prefix + "indices.") and value.is_floating_point():
            small = value.numel() == 0 or float(value.max()) < 2**31
            state_dict[key] = value.detach().to(torch.int32 if small else torch.int64)


class AutoSparseNormal(AutoGuide):
    r"""Mean-field Normal guide restricted to a fixed-size sparse subspace per site.

    For every *sparse* site the guide keeps exactly

    .. math:: k = \max(k_{\min}, \operatorname{round}(\text{density} \cdot n))

    active coordinates out of the site's ``n`` elements, where the floor
    :math:`k_{\min}` (:func:`active_floor`) is one coordinate per output unit
    of a weight, ``min(n, shape[0])`` for a site of two or more dimensions (a
    ``Linear`` weight ``(out, in)``, a conv kernel ``(out, in, kh, kw)``), and
    1 for a vector or scalar site: below it a unit would, on average, see no
    input at all. When the floor raises ``k``, a ``UserWarning`` names the
    site and its ``k``. Parameters
    ``locs.<site>`` and ``scales.<site>`` of length ``k`` and the sorted flat
    indices ``indices.<site>``, all three in Pyro's param store (the indices
    as exact integers in a float64 tensor that is never trained), so that
    every way of saving, restoring or rolling back a Pyro guide keeps them
    together. The site is sampled from a
    :class:`~pyro_ssvi.distributions.SparseNormal` under its own name (no
    auxiliary site), so :class:`~pyro.infer.TraceMeanField_ELBO` uses the
    registered closed-form KL. :class:`~pyro_ssvi.SparseSVI` moves the active
    set during training; ``k`` never changes.

    Every other latent site is *dense*, exactly as in
    :class:`~pyro.infer.autoguide.AutoNormal` (a mean-field Normal in
    unconstrained space, same parameter names and shapes), but sampled
    directly under the site name, so its KL is analytic where the prior is
    Normal. A model with no sparse site, or with no latent site at all, gets
    what ``AutoNormal`` would give it.

    **Which sites are sparse.** A site is *eligible* when its support is the
    real line, its prior factorises over elements (a univariate distribution,
    possibly expanded and wrapped in ``.to_event``) and it is outside every
    plate. With ``sparse_sites=None`` an eligible site is sparse when its
    value has at least two dimensions (linear weights, conv kernels) or more
    than ``min_sparse_numel`` elements; biases and small vectors stay dense.
    ``sparse_sites`` may instead be a collection of site names (each must be
    eligible) or a predicate ``(name, site) -> bool``, asked about eligible
    sites only.

    **The initial active set.** With ``init_active="auto"`` a sparse site
    starts on a uniformly random subset when its initial means are drawn by a
    generic rule (the default :func:`~pyro_ssvi.init_to_kaiming`, Pyro's
    ``init_to_feasible``/``sample``/``uniform``/``mean``/``median``), as in
    the SSVI paper, and on the ``k`` largest-magnitude coordinates of the
    initial values when they are *given* (``init_to_value``, a pretrained
    network's weights, any other function): so a trained network becomes a
    sparse Bayesian network without losing its best weights.
    ``"random"`` and ``"magnitude"`` force either rule.

    The guide is lazy like every Pyro autoguide: parameters are created on the
    first call (or by :meth:`setup`). :meth:`load_state_dict` also works on a
    guide that was never called; its first call (or :meth:`setup`) then
    checks the loaded sites against the model.

    Args:
        model: A Pyro model.
        density: Fraction of each sparse site's coordinates that is active,
            in ``(0, 1]`` (at least the floor above, per site).
        init_loc_fn: Pyro-style initialiser for the means (see
            :mod:`pyro.infer.autoguide.initialization`); the default
            :func:`~pyro_ssvi.init_to_kaiming` gives fan-in scaled weights.
        init_scale: Initial posterior standard deviation (in unconstrained
            space for constrained sites): a float > 0, or a pair
            ``(mean, std)`` to draw every coordinate's scale as
            :math:`\sigma_j = |\varepsilon_j|`,
            :math:`\varepsilon_j \sim \mathcal{N}(\text{mean}, \text{std}^2)`
            (exact zeros redrawn), as the SSVI reference implementation does
            with ``(6e-4, 5e-4)``. Default: :data:`DEFAULT_INIT_SCALE` (0.1,
            ``AutoNormal``'s) for ordinary sites and
            :data:`DEFAULT_WEIGHT_INIT_SCALE` (0.01) for network weights
            (real sites of at least two dimensions outside plates), whose
            fan-in scaled means are about that small.
        init_active: ``"auto"``, ``"random"`` or ``"magnitude"``; see above.
        sparse_sites: None, a collection of site names, or a predicate; see
            above.
        min_sparse_numel: Size above which a one-dimensional site is sparse by
            default.
        dense_sites: Names of sites kept dense whatever ``sparse_sites`` says,
            e.g. a network's first convolution, which SSVI keeps dense.
        create_plates: As in :class:`~pyro.infer.autoguide.AutoNormal`.

    Raises:
        ValueError: For a density outside ``(0, 1]``, a non-positive
            ``init_scale``, or (at setup) an unknown or ineligible site in
            ``sparse_sites``.
        TypeError: For arguments of the wrong type.

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
    ) -> None:
        _validate(density, init_loc_fn, init_scale, init_active, sparse_sites)
        if not isinstance(min_sparse_numel, int) or min_sparse_numel < 1:
            raise ValueError(
                "AutoSparseNormal: min_sparse_numel must be a positive int, "
                f"got {min_sparse_numel!r}."
            )
        if isinstance(dense_sites, str) or not isinstance(dense_sites, Collection):
            raise TypeError(
                "AutoSparseNormal: dense_sites must be a collection of site names, "
                f"got {dense_sites!r}."
            )
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
        self._verified = True  # False after loading into a never-called guide
        self._raw_model = (model,)
        self._scale_transform = transform_to(self.scale_constraint)
        self._reset_caches()
        super().__init__(InitMessenger(init_loc_fn)(model), create_plates=create_plates)
        self.register_state_dict_post_hook(_compact_indices)
        self.register_load_state_dict_post_hook(_after_load)

    def _reset_caches(self) -> None:
        # (tree, site) -> (leaf module, attribute): the trees are static once
        # built, and walking them through PyroModule.__getattr__ each step
        # costs a third of a small network's step.
        self._leaves: dict[tuple[str, str], tuple[PyroModule, str]] = {}
        self._infer_cache: dict[str, dict[str, Any]] = {}
        # site -> (loc read with it, float64 indices, their version, int64 indices)
        self._index_cache: dict[str, tuple[Any, torch.Tensor, int, torch.Tensor]] = {}

    def __getstate__(self) -> dict[str, Any]:
        # PyroModule's drops Pyro's weakrefs from the parameters; AutoGuide's
        # would also detach the model from this very guide, not only the copy.
        state = PyroModule.__getstate__(self)
        state.update(_model=None, _raw_model=None, master=None)
        state.update(_leaves={}, _infer_cache={}, _index_cache={})
        return state

    # ------------------------------------------------------------------ setup
    def setup(self, *args: Any, **kwargs: Any) -> "AutoSparseNormal":
        """Run the model once to create the guide's parameters.

        Equivalent to the lazy set-up done by the first call, but without
        sampling. On a guide loaded from a state dict, checks the loaded
        sites against the model instead. Call it before building a torch
        optimiser over ``guide.parameters()``. Returns the guide itself.
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
        self._check_site_names(sites)
        for trees in _TREES:
            setattr(self, trees, PyroModule())
        self.meta = PyroModule()
        self._reset_caches()
        self._sites = {}
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

    def _check_site_names(self, sites: dict[str, dict[str, Any]]) -> None:
        named = {"dense_sites": self.dense_sites}
        if self._sparse_sites is not None and not callable(self._sparse_sites):
            named["sparse_sites"] = frozenset(self._sparse_sites)
        for arg, names in named.items():
            unknown = sorted(set(names) - set(sites))
            if unknown:
                raise ValueError(
                    f"AutoSparseNormal: {arg} names {unknown} are not latent "
                    f"sites of the model; latent sites are {sorted(sites)}."
                )

    def _site_is_sparse(self, name: str, site: dict[str, Any]) -> bool:
        if name in self.dense_sites:
            return False
        eligible, why = _eligibility(site)
        rule = self._sparse_sites
        if rule is None:
            value = site["value"]
            return eligible and (
                value.dim() >= 2 or value.numel() > self.min_sparse_numel
            )
        if not callable(rule):
            if name in rule and not eligible:
                raise ValueError(
                    f"AutoSparseNormal: site {name!r} was requested as sparse but "
                    f"{why}. Remove it from sparse_sites (it will get a dense "
                    "mean-field Normal)."
                )
            return name in rule
        return eligible and bool(rule(name, site))

    def _add_site(self, name: str, site: dict[str, Any]) -> None:
        value = site["value"].detach()
        with helpful_support_errors(site):
            unconstrained = biject_to(site["fn"].support).inv(value).detach()
        event_dim = site["fn"].event_dim + unconstrained.dim() - value.dim()
        sparse = self._site_is_sparse(name, site)
        scale = self._init_scale
        if scale is None:
            scale = (
                DEFAULT_WEIGHT_INIT_SCALE if _is_weight(site) else DEFAULT_INIT_SCALE
            )
        if sparse:
            k = self._num_active(name, value.shape)
            idx = self._initial_active_set(name, value, k)
            loc = value.reshape(-1).index_select(0, idx).contiguous()
            info = Site(True, value.shape, 1, site["fn"].support)
            self._new_params(name, info, loc, _initial_scales(loc, scale), idx)
            return
        loc = unconstrained
        for frame in site["cond_indep_stack"]:  # subsampled: repeat to full size
            full_size = frame.full_size or frame.size
            if full_size != frame.size:
                loc = periodic_repeat(loc, full_size, frame.dim - event_dim)
        loc = loc.contiguous()
        info = Site(False, value.shape, event_dim, site["fn"].support)
        self._new_params(name, info, loc, _initial_scales(loc, scale), None)

    def _num_active(self, name: str, shape: torch.Size) -> int:
        """``k`` of a sparse site: ``round(density * n)``, at least its floor."""
        k = int(round(self.target_density * shape.numel()))
        floor = active_floor(shape)
        if k < floor:
            warnings.warn(
                f"AutoSparseNormal: density {self.target_density:g} would keep "
                f"{k} of the {shape.numel()} coordinates of site {name!r}; it "
                f"keeps k={floor}, the floor (one per output unit of a weight, 1 "
                "for a vector: see pyro_ssvi.guides.active_floor)",
                UserWarning,
                stacklevel=6,
            )
        return max(k, floor)

    def _initial_active_set(
        self, name: str, value: torch.Tensor, k: int
    ) -> torch.Tensor:
        rule = self.init_active
        if rule == "auto":
            given = init_gives_values(self.init_loc_fn, name)
            rule = "magnitude" if given else "random"
        if rule == "magnitude":
            return top_k(value.reshape(-1).abs(), k)
        return torch.randperm(value.numel(), device=value.device)[:k].sort().values

    def _new_params(
        self,
        name: str,
        info: Site,
        loc: torch.Tensor,
        scale: torch.Tensor,
        indices: torch.Tensor | None,
    ) -> None:
        """Create a site's parameters (reusing Pyro's param store entries, if any).

        Like every Pyro module, a new guide picks up parameters of the same
        name already in the global param store (e.g. after
        ``pyro.get_param_store().load(path)``); for a sparse site its
        ``locs``, ``scales`` and ``indices`` must then all be there.
        """
        trees = _TREES if indices is not None else _TREES[:2]
        self._check_store_entries(name, trees)
        ed = info.event_dim
        deep_setattr(self.locs, name, PyroParam(loc, constraints.real, ed))
        deep_setattr(self.scales, name, PyroParam(scale, self.scale_constraint, ed))
        if indices is not None:
            idx = indices.to(torch.float64)
            deep_setattr(self.indices, name, PyroParam(idx, constraints.real, 1))
        _deep_register_buffer(self.meta, name, _guide_state.encode(info).to(loc.device))
        self._sites[name] = info
        params = self.subspace_params(name) if info.sparse else None
        if params is not None:
            params.indices.requires_grad_(False)
            _check_subspace(name, params, info.shape.numel())

    def _check_store_entries(self, name: str, trees: tuple[str, ...]) -> None:
        if is_module_local_param_enabled():
            return
        store = pyro.get_param_store()
        held = [t for t in trees if param_store_name(self, f"{t}.{name}") in store]
        if held and len(held) != len(trees):
            raise ValueError(
                f"AutoSparseNormal: Pyro's param store holds {held} but not all of "
                f"{list(trees)} for site {name!r} (left over from another guide or "
                "an old file?), so its parameters could not be paired with their "
                "indices. Call pyro.clear_param_store() before building the guide."
            )

    # -------------------------------------------------------------- reading
    def _leaf(self, tree: str, name: str) -> tuple[PyroModule, str]:
        """The module holding a site's entry in ``tree``, and its attribute."""
        key = (tree, name)
        if key not in self._leaves:
            prefix, _, leaf = name.rpartition(".")
            module = getattr(self, tree)
            self._leaves[key] = (attrgetter(prefix)(module) if prefix else module, leaf)
        return self._leaves[key]

    def _stored(self, tree: str, name: str) -> torch.Tensor:
        """A site's stored (unconstrained) tensor in ``tree``, as the module
        holds it (no synchronisation with Pyro's param store)."""
        module, leaf = self._leaf(tree, name)
        return getattr(module, leaf + "_unconstrained")

    def _param(self, tree: str, name: str) -> torch.Tensor:
        """A site's (constrained) parameter, read as Pyro reads it."""
        module, leaf = self._leaf(tree, name)
        return getattr(module, leaf)

    def _get_loc_and_scale(self, name: str) -> tuple[torch.Tensor, torch.Tensor]:
        """The site's ``(loc, scale)`` parameters (length ``k`` for sparse sites)."""
        return self._param("locs", name), self._param("scales", name)

    def _indices(self, name: str, loc: torch.Tensor | None = None) -> torch.Tensor:
        """The site's active indices as int64 (derived from the stored float64).

        Reading the stored tensor is a ``pyro.param`` statement (it keeps the
        guide in step with Pyro's param store). Within a step, ``loc`` (the
        site's loc as just read) tells whether that is needed: the param store
        replaces a site's tensors together, so while the loc and the stored
        indices are the very tensors of the last read, and the indices were
        not edited since, the cached int64 indices are current.
        """
        if torch.jit.is_tracing():  # a traced graph must read its input
            return self._param("indices", name).long()
        cached = self._index_cache.get(name)
        if (
            cached is not None
            and loc is not None
            and cached[0] is loc
            and cached[2] == tensor_version(cached[1])
        ):
            return cached[3]
        stored = self._param("indices", name)
        if stored.dtype != torch.float64:
            raise RuntimeError(
                f"AutoSparseNormal: the active indices of site {name!r} were "
                f"converted to {stored.dtype}; they are exact integers in float64. "
                "Move the guide with guide.to(device) and reload its state_dict."
            )
        version = tensor_version(stored)
        if cached is None or cached[1] is not stored or cached[2] != version:
            idx = stored.detach().long()
        else:
            idx = cached[3]
        self._index_cache[name] = (loc, stored, version, idx)
        return idx

    def subspace_params(self, name: str) -> SubspaceParams:
        """The stored tensors of a sparse site (those its optimisers hold).

        Read through Pyro's param store, so that after
        ``pyro.get_param_store().set_state(...)`` they are the restored ones.
        Editing them in place (under ``torch.no_grad()``) keeps optimiser
        state attached; :class:`~pyro_ssvi.SubspaceScheduler` does that.
        """
        self._require_site(name)
        if not self._sites[name].sparse:
            raise ValueError(f"AutoSparseNormal: site {name!r} is dense.")
        with module_context(self):
            tensors = []
            for tree in _TREES:
                module, leaf = self._leaf(tree, name)
                getattr(module, leaf)  # synchronise with the param store
                tensors.append(getattr(module, leaf + "_unconstrained"))
        return SubspaceParams(*tensors)

    def unconstrained_params(
        self, name: str
    ) -> tuple[torch.nn.Parameter, torch.nn.Parameter]:
        """The trainable tensors ``(loc, unconstrained scale)`` of a site."""
        self._require_site(name)
        with module_context(self):
            self._get_loc_and_scale(name)  # synchronise with the param store
            return tuple(  # type: ignore[return-value]
                getattr(module, leaf + "_unconstrained")
                for module, leaf in (self._leaf(t, name) for t in _TREES[:2])
            )

    def _require_site(self, name: str) -> None:
        self._require_params()
        if name not in self._sites:
            raise KeyError(
                f"AutoSparseNormal has no site {name!r}; sites are "
                f"{sorted(self._sites)}."
            )

    def _support(self, name: str) -> constraints.Constraint:
        support = self._sites[name].support
        if support is None:
            raise RuntimeError(
                f"AutoSparseNormal: the support of site {name!r} is not recorded in "
                "the loaded state; call guide.setup(*model_args) once."
            )
        return support

    # ------------------------------------------------------------ posteriors
    def _posterior(
        self,
        name: str,
        loc: torch.Tensor | None = None,
        scale: torch.Tensor | None = None,
        detach: bool = False,
    ) -> Distribution:
        """The site's posterior, from its parameters (read now if not given)."""
        info = self._sites[name]
        if loc is None or scale is None:
            loc, scale = self._get_loc_and_scale(name)
        indices = self._indices(name, loc) if info.sparse else None
        if detach:
            loc, scale = loc.detach(), scale.detach()
        if indices is not None:
            return SparseNormal(loc, scale, indices, info.shape, validate_args=False)
        base = dist.Normal(loc, scale, validate_args=False).to_event(info.event_dim)
        support = self._support(name)
        if _base_support(support) is constraints.real:
            return base
        return dist.TransformedDistribution(base, biject_to(support).with_cache())

    def _posteriors(
        self, detach: bool = False
    ) -> list[tuple[Distribution, tuple[torch.Tensor, torch.Tensor]]]:
        """Every site's posterior and its trained leaves ``(loc, raw scale)``.

        The posteriors ``forward`` samples, read from the stored tensors
        without ``pyro.param`` statements (for the direct step); ``detach``
        builds them from detached parameters.
        """
        if not is_module_local_param_enabled():
            self._sync_with_store()
        transform = self._scale_transform
        out = []
        for name in self._sites:
            loc, scale_u = self._stored("locs", name), self._stored("scales", name)
            posterior = self._posterior(name, loc, transform(scale_u), detach)
            out.append((posterior, (loc, scale_u)))
        return out

    def _sync_with_store(self) -> None:
        """Adopt tensors that Pyro's param store replaced (set_state, load)."""
        store = dict(pyro.get_param_store().named_parameters())
        for name in self._sites:
            for tree in ("locs", "scales"):
                module, leaf = self._leaf(tree, name)
                if store.get(param_store_name(module, leaf)) is not getattr(
                    module, leaf + "_unconstrained"
                ):
                    with module_context(self):  # read as Pyro reads: synchronise
                        for site in self._sites:
                            self._get_loc_and_scale(site)
                    return

    def site_posterior(self, name: str) -> Distribution:
        """The variational distribution of one site.

        A :class:`~pyro_ssvi.distributions.SparseNormal` for sparse sites and
        a (transformed) mean-field Normal for dense sites, with the event
        shape of the model's site.
        """
        self._require_site(name)
        with module_context(self):
            return self._posterior(name)

    def get_posterior(self, *args: Any, **kwargs: Any) -> SparseNormal:
        r"""The joint posterior of the whole unconstrained latent vector.

        As in Pyro's :class:`~pyro.infer.autoguide.AutoContinuous`: one
        distribution over the concatenation, in model order, of every site's
        unconstrained value flattened (length ``D``), here a
        :class:`~pyro_ssvi.distributions.SparseNormal` whose active set is
        every sparse site's active coordinates plus all coordinates of dense
        sites. Sets the guide up from ``*args, **kwargs`` if needed. For one
        site's posterior use :meth:`site_posterior`.
        """
        if len(args) == 1 and not kwargs and isinstance(args[0], str):
            if args[0] in self._sites:
                warnings.warn(
                    "AutoSparseNormal.get_posterior(name) is deprecated: "
                    "get_posterior(*args) is the joint posterior, as in Pyro; "
                    "use site_posterior(name) for one site.",
                    FutureWarning,
                    stacklevel=2,
                )
                return self.site_posterior(args[0])  # type: ignore[return-value]
        self._require_setup(args, kwargs)
        locs, scales, indices, offset = [], [], [], 0
        with module_context(self):
            for name, info in self._sites.items():
                loc, scale = self._get_loc_and_scale(name)
                if info.sparse:
                    idx, numel = self._indices(name), info.shape.numel()
                else:
                    numel = loc.numel()
                    idx = torch.arange(numel, device=loc.device)
                locs.append(loc.reshape(-1))
                scales.append(scale.reshape(-1))
                indices.append(idx + offset)
                offset += numel
        if not locs:
            raise RuntimeError("AutoSparseNormal: the model has no latent site.")
        return SparseNormal(
            torch.cat(locs), torch.cat(scales), torch.cat(indices), (offset,)
        )

    # ---------------------------------------------------------------- sampling
    def forward(self, *args: Any, **kwargs: Any) -> dict[str, torch.Tensor]:
        """Sample every latent site; same ``*args, **kwargs`` as the model.

        Returns:
            A dict from site name to its sampled (constrained) value, full
            shape, with zeros off the active set at sparse sites.
        """
        if self.prototype_trace is None:
            self.setup(*args, **kwargs)
        plates = self._create_plates(*args, **kwargs)
        result = {}
        for name, site in self.prototype_trace.iter_stochastic_nodes():
            with ExitStack() as stack:
                for frame in site["cond_indep_stack"]:
                    if frame.vectorized:
                        stack.enter_context(plates[frame.name])
                posterior: Any = self._posterior(name)  # params read inside plates
                infer: Any = self._infer(name)
                result[name] = pyro.sample(name, posterior, infer=infer)
        return result

    def _infer(self, name: str) -> dict[str, Any]:
        """Weight sites (real, at least 2-D) may be locally reparameterised."""
        if name not in self._infer_cache:
            info = self._sites[name]
            weight = info.sparse or (
                len(info.shape) >= 2
                and info.event_dim == len(info.shape)
                and info.support is not None
                and _base_support(info.support) is constraints.real
            )
            self._infer_cache[name] = {"lrt": True} if weight else {}
        return dict(self._infer_cache[name])  # handlers may edit a site's copy

    # ----------------------------------------------------------- introspection
    def _require_params(self) -> None:
        if self.prototype_trace is None and not self._sites:
            raise RuntimeError(
                "AutoSparseNormal has no parameters yet: call guide.setup(*args) or "
                "the guide itself with the model's arguments, or load a state dict."
            )

    def site_names(self) -> list[str]:
        """Names of all latent sites of the guide, in model order."""
        self._require_params()
        return list(self._sites)

    def sparse_site_names(self) -> list[str]:
        """Names of the sparse sites, in model order."""
        self._require_params()
        return [n for n, s in self._sites.items() if s.sparse]

    def site_shape(self, name: str) -> torch.Size:
        """Full shape of a site's value."""
        self._require_site(name)
        return self._sites[name].shape

    def active_indices(self) -> dict[str, torch.Tensor]:
        """Sorted flat indices of the active coordinates of every sparse site.

        Returns:
            ``{site: LongTensor of shape (k,)}``; a copy, safe to keep.
        """
        with module_context(self):
            return {n: self._indices(n).clone() for n in self.sparse_site_names()}

    def _is_full(self, name: str) -> bool:
        """Whether every coordinate of a sparse site is active (``k == n``)."""
        return self._stored("locs", name).numel() == self._sites[name].shape.numel()

    def num_active(self) -> dict[str, int]:
        """Number ``k`` of active coordinates of every sparse site."""
        return {
            n: int(self.subspace_params(n).loc.numel())
            for n in self.sparse_site_names()
        }

    @property
    def density(self) -> float:
        """The fraction of the sparse sites' coordinates that is active.

        ``sum(k) / sum(n)`` over the sparse sites only (dense sites do not
        count); ``nan`` when there is no sparse site (no coordinate to count,
        e.g. a model without weights: the guide warned at setup).
        """
        names = self.sparse_site_names()
        total = sum(self._sites[n].shape.numel() for n in names)
        if not total:
            return math.nan
        return sum(self.num_active().values()) / total

    def named_parameters(  # type: ignore[override]
        self, prefix: str = "", recurse: bool = True, remove_duplicate: bool = True
    ) -> Iterator[tuple[str, torch.nn.Parameter]]:
        """The variational parameters: every site's loc and scale.

        The active indices are stored beside them (so that Pyro's param
        store carries them), but they are integers, never trained, and not
        listed here.
        """
        for name, param in super().named_parameters(prefix, recurse, remove_duplicate):
            if not name[len(prefix) :].lstrip(".").startswith("indices."):
                yield name, param

    def num_variational_params(self) -> int:
        """Number of variational parameters (means plus scales) of all sites."""
        with module_context(self):
            return sum(
                loc.numel() + scale.numel()
                for loc, scale in map(self._get_loc_and_scale, self._sites)
            )

    def _require_setup(self, args: tuple, kwargs: dict) -> None:
        """Set up from the model's arguments if given, else insist it was done."""
        if self.prototype_trace is None and not self._sites:
            if not args and not kwargs:
                self._require_params()
            self.setup(*args, **kwargs)

    def _check_verified(self, args: tuple, kwargs: dict, what: str) -> None:
        if self._verified:
            return
        if not args and not kwargs:
            raise ValueError(
                f"AutoSparseNormal.{what}: this guide was loaded from a state dict "
                "and not yet checked against its model; call guide.setup(*args) "
                f"with the model's arguments first (or pass them to {what})."
            )
        self._check_against_model(*args, **kwargs)

    @torch.no_grad()
    def median(self, *args: Any, **kwargs: Any) -> dict[str, torch.Tensor]:
        """Posterior median of every site: dense tensors, zero off the active set."""
        self._require_params()
        self._check_verified(args, kwargs, "median")
        result = {}
        with module_context(self):
            for name, info in self._sites.items():
                loc, _ = self._get_loc_and_scale(name)
                if info.sparse:
                    result[name] = self._posterior(name).mean.detach()
                    continue
                med = biject_to(self._support(name))(loc)
                result[name] = (med.clone() if med is loc else med).detach()
        return result

    @torch.no_grad()
    def quantiles(
        self, quantiles: list[float] | torch.Tensor, *args: Any, **kwargs: Any
    ) -> dict[str, torch.Tensor]:
        """Posterior quantiles of every site, with a leading quantile dimension.

        Inactive coordinates are zero for every quantile (a point mass at 0).
        """
        self._require_params()
        self._check_verified(args, kwargs, "quantiles")
        result = {}
        with module_context(self):
            for name, info in self._sites.items():
                loc, scale = self._get_loc_and_scale(name)
                q = torch.as_tensor(quantiles, dtype=loc.dtype, device=loc.device)
                values = dist.Normal(loc, scale).icdf(
                    q.reshape((-1,) + (1,) * loc.dim())
                )
                if info.sparse:
                    post = self._posterior(name)
                    assert isinstance(post, SparseNormal)
                    result[name] = post.scatter(values)
                else:
                    result[name] = biject_to(self._support(name))(values)
        return result

    # --------------------------------------------------------- serialisation
    def _load_from_state_dict(  # type: ignore[override]
        self,
        state_dict: dict[str, Any],
        prefix: str,
        local_metadata: dict[str, Any],
        strict: bool,
        missing_keys: list[str],
        unexpected_keys: list[str],
        error_msgs: list[str],
    ) -> None:
        """Build a never-called guide from the state, or check the state fits."""
        _guide_state.migrate(state_dict, prefix)
        sites = {
            key[len(prefix) + len("meta.") :]: _guide_state.decode(
                value, key[len(prefix) + len("meta.") :]
            )
            for key, value in state_dict.items()
            if key.startswith(prefix + "meta.")
        }
        if not sites and not self._sites:
            raise ValueError(
                "AutoSparseNormal.load_state_dict: the state dict has no meta.<site> "
                "entries; was it saved from an AutoSparseNormal (not an AutoNormal)?"
            )
        for key in list(state_dict):
            if key.startswith(prefix + "indices."):
                state_dict[key] = state_dict[key].to(torch.float64)
        if self._sites:
            self._check_state(sites, state_dict, prefix)
        elif sites:
            self._build_from_state(sites, state_dict, prefix)
        super()._load_from_state_dict(
            state_dict,
            prefix,
            local_metadata,
            strict,
            missing_keys,
            unexpected_keys,
            error_msgs,
        )

    def _state_k(self, state_dict: dict[str, Any], prefix: str, name: str) -> int:
        key = f"{prefix}locs.{name}_unconstrained"
        idx = state_dict.get(f"{prefix}indices.{name}_unconstrained")
        if key not in state_dict or idx is None or idx.shape != state_dict[key].shape:
            raise ValueError(
                f"AutoSparseNormal.load_state_dict: sparse site {name!r} needs "
                "locs, scales and indices of the same length in the state dict."
            )
        return int(idx.numel())

    def _check_state(
        self, sites: dict[str, Site], state_dict: dict[str, Any], prefix: str
    ) -> None:
        mine = {k: (s.sparse, tuple(s.shape)) for k, s in self._sites.items()}
        theirs = {k: (s.sparse, tuple(s.shape)) for k, s in sites.items()}
        if mine != theirs:
            raise ValueError(
                "AutoSparseNormal.load_state_dict: the state dict's sites "
                f"{theirs} do not match this guide's {mine}."
            )
        for name in self.sparse_site_names():
            k_saved = self._state_k(state_dict, prefix, name)
            k_here = self.subspace_params(name).loc.numel()
            if k_saved != k_here:
                raise ValueError(
                    f"AutoSparseNormal.load_state_dict: site {name!r} has {k_here} "
                    f"active coordinates here but {k_saved} in the state dict "
                    "(different density?)."
                )

    def _build_from_state(
        self, sites: dict[str, Site], state_dict: dict[str, Any], prefix: str
    ) -> None:
        for trees in _TREES:
            setattr(self, trees, PyroModule())
        self.meta = PyroModule()
        self._reset_caches()
        self._sites = {}
        for name, info in sites.items():
            try:
                loc = state_dict[f"{prefix}locs.{name}_unconstrained"]
                scale = state_dict[f"{prefix}scales.{name}_unconstrained"]
            except KeyError as e:
                raise ValueError(
                    f"AutoSparseNormal.load_state_dict: missing entry {e.args[0]!r}."
                ) from None
            idx = None
            if info.sparse:
                k = self._state_k(state_dict, prefix, name)
                idx = torch.arange(k, dtype=torch.float64, device=loc.device)
            self._new_params(
                name, info, torch.zeros_like(loc), torch.ones_like(scale), idx
            )
        self._verified = False

    def _check_against_model(self, *args: Any, **kwargs: Any) -> None:
        """Trace the model to check loaded sites and to learn plates and supports.

        The model runs without initialisation (its own prior draws); sites it
        has beyond the loaded ones (e.g. an unobserved likelihood under
        ``Predictive``) are left to the model.
        """
        model = poutine.block(self._raw_model[0], self._prototype_hide_fn)
        devices = [torch.cuda.current_device()] if torch.cuda.is_initialized() else []
        with torch.random.fork_rng(devices=devices):  # the model's prior draws
            trace = poutine.block(poutine.trace(model).get_trace)(*args, **kwargs)
        latent = dict(trace.iter_stochastic_nodes())
        for name, info in self._sites.items():
            if name not in latent:
                raise ValueError(
                    f"AutoSparseNormal: the loaded state has site {name!r}, but the "
                    f"model's latent sites are {sorted(latent)}: the state is from "
                    "another model."
                )
            site: Any = latent[name]
            shape = site["value"].shape
            if shape != info.shape:
                raise ValueError(
                    f"AutoSparseNormal: site {name!r} has shape {tuple(info.shape)} "
                    f"in the loaded state but {tuple(shape)} in the model: the state "
                    "is from another model."
                )
            self._sites[name] = info._replace(support=site["fn"].support)
        for name in set(latent) - set(self._sites):
            trace.remove_node(name)
        self.prototype_trace = trace
        if self.master is not None:
            self.master()._check_prototype(trace)
        self._prototype_frames = {}
        for _, site in trace.iter_stochastic_nodes():
            for frame in site["cond_indep_stack"]:
                if not frame.vectorized:
                    raise NotImplementedError(
                        "AutoGuide does not support sequential pyro.plate"
                    )
                self._prototype_frames[frame.name] = frame
        self._verified = True

    def _apply(self, fn: Callable[..., Any], recurse: bool = True) -> Any:
        """``.to(...)``, ``.float()``...: indices move but stay exact float64.

        Whether torch moves the data of the same ``Parameter`` objects or
        replaces them, the module's (moved) tensors then win over the entries
        of Pyro's param store.
        """

        sparse = [name for name, info in self._sites.items() if info.sparse]
        before = {name: self._stored("indices", name).data for name in sparse}
        result = super()._apply(fn, recurse)
        for name, data in before.items():
            param = self._stored("indices", name)
            if param.dtype != torch.float64:
                param.data = data.to(device=param.device)
        _after_load(self, None)
        return result


def _after_load(module: AutoSparseNormal, incompatible: Any) -> None:
    """Let the module's (loaded, moved) tensors win over Pyro's param store.

    A PyroModule reads a parameter from the global store when the store has
    one of the same name; drop ours from it, so the next call puts the
    module's tensors there.
    """
    if is_module_local_param_enabled():
        return
    store = pyro.get_param_store()
    for name in module._sites:
        for tree in _TREES:
            fullname = param_store_name(module, f"{tree}.{name}")
            if fullname in store:
                del store[fullname]
    module._index_cache.clear()


def _initial_scales(
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
    dimensions (torch's ``(out, in, ...)`` layout); 1 for a vector or a
    scalar. ``AutoSparseNormal`` keeps ``max(floor, round(density * n))``.

    Example::

        active_floor(torch.Size([400, 784]))   # 400
        active_floor(torch.Size([5000]))       # 1
    """
    return min(shape.numel(), shape[0]) if len(shape) >= 2 else 1


def _eligibility(site: dict[str, Any]) -> tuple[bool, str]:
    fn = site["fn"]
    if _base_support(fn.support) is not constraints.real:
        return False, f"its support is {fn.support}, not the real line"
    if not _is_factorised(fn):
        return False, (
            f"its prior {type(fn).__name__} does not factorise over elements "
            "(sparse sites need e.g. Normal(...).expand(shape).to_event(n))"
        )
    if site["cond_indep_stack"]:
        return False, "it is inside a plate"
    return True, ""


def _check_subspace(name: str, params: SubspaceParams, numel: int) -> None:
    k = params.loc.numel()
    if not (params.scale.numel() == params.indices.numel() == k):
        raise ValueError(
            f"AutoSparseNormal: site {name!r} has {k} locs, {params.scale.numel()} "
            f"scales and {params.indices.numel()} indices (stale param-store "
            "entries?); call pyro.clear_param_store() before building the guide."
        )
    idx = params.indices.detach()
    if k and (float(idx.min()) < 0 or float(idx.max()) >= numel):
        raise ValueError(
            f"AutoSparseNormal: site {name!r} has active indices outside its "
            f"{numel} coordinates; call pyro.clear_param_store() before building "
            "the guide."
        )


def _validate(
    density: Any, init_loc_fn: Any, init_scale: Any, init_active: Any, sparse_sites: Any
) -> None:
    """Constructor arguments, checked once at the boundary."""
    if isinstance(density, bool) or not isinstance(density, (int, float)):
        raise TypeError(
            f"AutoSparseNormal: density must be a float in (0, 1], got {density!r}."
        )
    if not 0.0 < float(density) <= 1.0:
        raise ValueError(
            f"AutoSparseNormal: density must be in (0, 1], got {density!r}; "
            "use e.g. density=0.1 to keep 10% of each weight tensor."
        )
    if isinstance(init_scale, tuple):
        if len(init_scale) != 2 or not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) for v in init_scale
        ):
            raise TypeError(
                "AutoSparseNormal: init_scale must be a float or a pair (mean, std), "
                f"got {init_scale!r}."
            )
        mean, std = init_scale
        if not (mean >= 0 and std >= 0 and mean + std > 0):
            raise ValueError(
                "AutoSparseNormal: init_scale=(mean, std) needs mean >= 0, std >= 0 "
                f"and not both 0, got {init_scale!r}; e.g. (6e-4, 5e-4)."
            )
    elif init_scale is not None:
        if isinstance(init_scale, bool) or not isinstance(init_scale, (int, float)):
            raise TypeError(
                f"AutoSparseNormal: init_scale must be a float, got {init_scale!r}."
            )
        if not init_scale > 0:
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
    if isinstance(sparse_sites, str):
        raise TypeError(
            "AutoSparseNormal: sparse_sites must be a collection of site names "
            f"or a predicate, not a string; write sparse_sites=[{sparse_sites!r}]."
        )
    if not (
        sparse_sites is None
        or callable(sparse_sites)
        or isinstance(sparse_sites, Collection)
    ):
        raise TypeError(
            "AutoSparseNormal: sparse_sites must be None, a collection of "
            f"site names or a predicate (name, site) -> bool, got {sparse_sites!r}."
        )
