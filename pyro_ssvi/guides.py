"""``AutoSparseNormal``: a Pyro autoguide whose posterior lives on a sparse subspace.

Usage::

    guide = AutoSparseNormal(model, density=0.1)
    svi = SparseSVI(model, guide, pyro.optim.Adam({"lr": 1e-3}),
                    TraceMeanField_ELBO(), num_steps=10_000)
    for x, y in loader:
        svi.step(x, y)
    guide.active_indices()   # {site: sorted flat indices of the active set}
"""

from __future__ import annotations

from contextlib import ExitStack
from operator import attrgetter
from typing import Any, Callable, Collection, Iterator, Mapping

import pyro
import pyro.distributions as dist
import torch
from pyro.distributions import constraints
from pyro.distributions.transforms import biject_to
from pyro.infer.autoguide import AutoGuide
from pyro.nn import PyroModule, PyroParam
from torch.distributions import Distribution

from ._pyro_compat import (
    InitMessenger,
    deep_setattr,
    helpful_support_errors,
    is_module_local_param_enabled,
    periodic_repeat,
)
from ._softplus import softplus_positive
from .distributions import SparseNormal
from .initialization import init_to_kaiming
from .poutine import LazyWeight

__all__ = ["AutoSparseNormal", "DEFAULT_MIN_SPARSE_NUMEL"]

#: A one-dimensional site is sparse by default only above this many elements.
DEFAULT_MIN_SPARSE_NUMEL = 4096

_META_KEY = "_extra_state"
_NAMED_SUPPORTS = {
    name: c
    for name, c in vars(constraints).items()
    if isinstance(c, constraints.Constraint) and not name.startswith("_")
}


def _support_name(support: constraints.Constraint) -> list[Any] | None:
    """A weights-only-loadable description of a support, or None if unknown."""
    ndims = 0
    while isinstance(support, constraints.independent):
        ndims += support.reinterpreted_batch_ndims
        support = support.base_constraint
    for name, c in _NAMED_SUPPORTS.items():
        if c is support:
            return [name, ndims]
    return None


def _support_from_name(desc: list[Any] | None) -> constraints.Constraint | None:
    if desc is None:
        return None
    support = _NAMED_SUPPORTS[desc[0]]
    return constraints.independent(support, desc[1]) if desc[1] else support


def _base_support(support: constraints.Constraint) -> constraints.Constraint:
    while isinstance(support, constraints.independent):
        support = support.base_constraint
    return support


def _is_factorised(fn: Distribution) -> bool:
    base = fn
    while isinstance(base, torch.distributions.Independent):
        base = base.base_dist
    return base.event_shape == torch.Size() and not isinstance(base, dist.Delta)


def _deep_register_buffer(root: PyroModule, name: str, tensor: torch.Tensor) -> None:
    module = root
    *prefix, leaf = name.split(".")
    for part in prefix:
        nxt = getattr(module, part, None)
        if nxt is None:
            setattr(module, part, PyroModule())
            nxt = getattr(module, part)
        module = nxt
    module.register_buffer(leaf, tensor, persistent=True)


def _compact_indices(
    module: torch.nn.Module, state_dict: dict[str, Any], prefix: str, local: Any
) -> None:
    """Store active indices as int32 in state dicts (half the bytes of int64).

    Loading copies them back into the int64 buffers.
    """
    for key, value in state_dict.items():
        if key.startswith(prefix + "indices.") and value.dtype == torch.int64:
            if value.numel() and int(value.max()) < 2**31:
                state_dict[key] = value.to(torch.int32)


class AutoSparseNormal(AutoGuide):
    r"""Mean-field Normal guide restricted to a fixed-size sparse subspace per site.

    For every *sparse* site the guide keeps exactly

    .. math:: k = \max(1, \operatorname{round}(\text{density} \cdot n))

    active coordinates out of the site's ``n`` elements: a persistent buffer
    ``indices.<site>`` of sorted flat indices, and parameters ``locs.<site>``
    and ``scales.<site>`` of length ``k``. The site is sampled from a
    :class:`~pyro_ssvi.distributions.SparseNormal` directly under its own name
    (no auxiliary site), so :class:`~pyro.infer.TraceMeanField_ELBO` uses the
    registered closed-form KL, summed over the active coordinates only.
    :class:`~pyro_ssvi.SparseSVI` moves the active set during training; the
    number of active coordinates never changes.

    Every other latent site is *dense*: an ordinary mean-field Normal in
    unconstrained space (as :class:`~pyro.infer.autoguide.AutoNormal`), but
    also sampled directly under the site name so its KL is analytic when the
    prior is Normal.

    **Which sites are sparse.** A site is *eligible* when its support is the
    real line, its prior factorises over elements (a univariate distribution,
    possibly expanded and wrapped in ``.to_event``) and it is outside every
    plate. With ``sparse_sites=None`` an eligible site is sparse when its
    value has at least two dimensions (linear weights, conv kernels) or more
    than ``min_sparse_numel`` elements; biases and small vectors stay dense.
    ``sparse_sites`` may instead be a collection of site names (each must be
    eligible) or a predicate ``(name, site) -> bool`` applied to eligible sites.

    The guide is lazy like every Pyro autoguide: parameters are created on the
    first call (or by :meth:`setup`). :meth:`load_state_dict` also works on a
    guide that was never called, because the state dict carries each site's
    shape.

    Args:
        model: A Pyro model.
        density: Fraction of each sparse site's coordinates that is active,
            in ``(0, 1]``.
        init_loc_fn: Pyro-style initialiser for the means (see
            :mod:`pyro.infer.autoguide.initialization`); the default
            :func:`~pyro_ssvi.init_to_kaiming` gives fan-in scaled weights.
        init_scale: Initial posterior standard deviation (unconstrained space
            for dense constrained sites), a float > 0.
        sparse_sites: None, a collection of site names, or a predicate; see
            above.
        min_sparse_numel: Size above which a one-dimensional site is sparse by
            default.
        dense_sites: Names of sites kept dense whatever ``sparse_sites`` says,
            e.g. a network's first convolution, which SSVI keeps dense.
        create_plates: As in :class:`~pyro.infer.autoguide.AutoNormal`.

    Raises:
        ValueError: For a density outside ``(0, 1]``, a non-positive
            ``init_scale``, or (at setup) no sparse site, an unknown or
            ineligible site in ``sparse_sites``.
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
        init_scale: float = 0.01,
        sparse_sites: Collection[str] | Callable[[str, dict], bool] | None = None,
        min_sparse_numel: int = DEFAULT_MIN_SPARSE_NUMEL,
        dense_sites: Collection[str] = (),
        create_plates: Callable[..., Any] | None = None,
    ) -> None:
        if isinstance(density, bool) or not isinstance(density, (int, float)):
            raise TypeError(
                f"AutoSparseNormal: density must be a float in (0, 1], got {density!r}."
            )
        if not 0.0 < float(density) <= 1.0:
            raise ValueError(
                f"AutoSparseNormal: density must be in (0, 1], got {density!r}; "
                "use e.g. density=0.1 to keep 10% of each weight tensor."
            )
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
        if not isinstance(min_sparse_numel, int) or min_sparse_numel < 1:
            raise ValueError(
                "AutoSparseNormal: min_sparse_numel must be a positive int, "
                f"got {min_sparse_numel!r}."
            )
        self.target_density = float(density)
        self.init_loc_fn = init_loc_fn
        self._init_scale = float(init_scale)
        if isinstance(dense_sites, str) or not isinstance(dense_sites, Collection):
            raise TypeError(
                "AutoSparseNormal: dense_sites must be a collection of site names, "
                f"got {dense_sites!r}."
            )
        self._sparse_sites = sparse_sites
        self.dense_sites = frozenset(dense_sites)
        self.min_sparse_numel = min_sparse_numel
        self._meta: dict[str, dict[str, Any]] = {}
        self._grad_capture: dict[str, torch.Tensor] | None = None
        # (tree, site) -> (leaf module, attribute): the trees are static once
        # built, and walking them through PyroModule.__getattr__ each step
        # costs a third of a small network's step.
        self._leaves: dict[tuple[str, str], tuple[PyroModule, str]] = {}
        self._infer_cache: dict[str, dict[str, Any]] = {}
        super().__init__(InitMessenger(init_loc_fn)(model), create_plates=create_plates)
        self.register_state_dict_post_hook(_compact_indices)

    # ------------------------------------------------------------------ setup
    def setup(self, *args: Any, **kwargs: Any) -> "AutoSparseNormal":
        """Run the model once to create the guide's parameters.

        Equivalent to the lazy set-up done by the first call, but without
        sampling. Call it before building a torch optimiser over
        ``guide.parameters()``. Returns the guide itself.
        """
        if self.prototype_trace is None:
            self._setup_prototype(*args, **kwargs)
        return self

    def _site_is_sparse(self, name: str, site: dict[str, Any]) -> bool:
        if name in self.dense_sites:
            return False
        value = site["value"]
        eligible, why = self._eligibility(site)
        rule = self._sparse_sites
        if rule is None:
            return eligible and (
                value.dim() >= 2 or value.numel() > self.min_sparse_numel
            )
        chosen = rule(name, site) if callable(rule) else name in rule
        if chosen and not eligible:
            raise ValueError(
                f"AutoSparseNormal: site {name!r} was requested as sparse but {why}. "
                "Remove it from sparse_sites (it will get a dense mean-field Normal)."
            )
        return bool(chosen)

    @staticmethod
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

    def _setup_prototype(self, *args: Any, **kwargs: Any) -> None:
        super()._setup_prototype(*args, **kwargs)
        sites = dict(self.prototype_trace.iter_stochastic_nodes())
        if not sites:
            raise ValueError(
                "AutoSparseNormal: the model has no latent sample sites to infer."
            )
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
        meta = {}
        for name, site in sites.items():
            value = site["value"].detach()
            sparse = self._site_is_sparse(name, site)
            with helpful_support_errors(site):
                unconstrained = biject_to(site["fn"].support).inv(value)
            meta[name] = {
                "sparse": sparse,
                "shape": list(value.shape),
                "event_dim": site["fn"].event_dim + unconstrained.dim() - value.dim(),
                "support": _support_name(site["fn"].support),
            }
        if not any(m["sparse"] for m in meta.values()):
            raise ValueError(
                "AutoSparseNormal: no latent site is sparse. Sparse sites need real "
                "support, a factorised prior, no plate, and (by default) at least two "
                f"dimensions or more than {self.min_sparse_numel} elements; latent "
                f"sites are {sorted(sites)}. Pass sparse_sites=[...] to choose, or "
                "use pyro.infer.autoguide.AutoNormal for a fully dense guide."
            )
        if self._meta:  # parameters were loaded before the first call
            self._check_meta(meta)
            return
        self._check_param_store(meta)
        self._meta = meta
        self._create_params(sites)

    def _check_meta(self, meta: Mapping[str, Mapping[str, Any]]) -> None:
        loaded = {k: (v["sparse"], list(v["shape"])) for k, v in self._meta.items()}
        traced = {k: (v["sparse"], list(v["shape"])) for k, v in meta.items()}
        if loaded != traced:
            raise ValueError(
                "AutoSparseNormal: the loaded state does not match the model: "
                f"loaded sites {loaded} but the model has {traced}."
            )
        for name, m in meta.items():
            self._meta[name]["support"] = m["support"]

    def _check_param_store(self, meta: Mapping[str, Any]) -> None:
        if is_module_local_param_enabled():
            return
        store = pyro.get_param_store()
        prefix = self._pyro_name
        taken = [
            f"{prefix}.{tree}.{name}"
            for name in meta
            for tree in ("locs", "scales")
            if f"{prefix}.{tree}.{name}" in store
        ]
        if taken:
            raise ValueError(
                "AutoSparseNormal: Pyro's global param store already holds "
                f"{taken[0]!r} from another guide, whose values would be paired "
                "with this guide's new active indices. Call pyro.clear_param_store() "
                "before building a new guide, or enable "
                "pyro.settings.set(module_local_params=True)."
            )

    def _create_params(self, sites: Mapping[str, dict[str, Any]]) -> None:
        self.locs = PyroModule()
        self.scales = PyroModule()
        self.indices = PyroModule()
        self._leaves.clear()
        self._infer_cache.clear()
        for name, site in sites.items():
            value = site["value"].detach()
            if self._meta[name]["sparse"]:
                numel = value.numel()
                k = max(1, int(round(self.target_density * numel)))
                perm = torch.randperm(numel, device=value.device)
                idx = perm[:k].sort().values
                init_loc = value.reshape(-1).index_select(0, idx).contiguous()
                event_dim = 1
                _deep_register_buffer(self.indices, name, idx)
            else:
                init_loc = biject_to(site["fn"].support).inv(value).detach()
                event_dim = self._meta[name]["event_dim"]
                for frame in site["cond_indep_stack"]:
                    full_size = frame.full_size or frame.size
                    if full_size != frame.size:
                        dim = frame.dim - event_dim
                        init_loc = periodic_repeat(init_loc, full_size, dim)
                init_loc = init_loc.contiguous()
            init_scale = torch.full_like(init_loc, self._init_scale)
            deep_setattr(
                self.locs, name, PyroParam(init_loc, constraints.real, event_dim)
            )
            deep_setattr(
                self.scales,
                name,
                PyroParam(init_scale, self.scale_constraint, event_dim),
            )

    # ---------------------------------------------------------------- sampling
    def _sites(self) -> Iterator[tuple[str, dict[str, Any] | None]]:
        if self.prototype_trace is not None:
            yield from self.prototype_trace.iter_stochastic_nodes()
        else:
            self._require_params()
            yield from ((name, None) for name in self._meta)

    def _require_params(self) -> None:
        if not self._meta:
            raise RuntimeError(
                "AutoSparseNormal has no parameters yet: call guide.setup(*args) or "
                "the guide itself with the model's arguments, or load a state dict."
            )

    def _leaf(self, tree: str, name: str) -> tuple[PyroModule, str]:
        """The module holding a site's entry in ``tree``, and its attribute."""
        key = (tree, name)
        if key not in self._leaves:
            prefix, _, leaf = name.rpartition(".")
            module = getattr(self, tree)
            self._leaves[key] = (attrgetter(prefix)(module) if prefix else module, leaf)
        return self._leaves[key]

    def _get_loc_and_scale(self, name: str) -> tuple[torch.Tensor, torch.Tensor]:
        """The site's ``(loc, scale)`` parameters (length ``k`` for sparse sites)."""
        locs, leaf = self._leaf("locs", name)
        scales, _ = self._leaf("scales", name)
        return getattr(locs, leaf), getattr(scales, leaf)

    def _get_indices(self, name: str) -> torch.Tensor:
        module, leaf = self._leaf("indices", name)
        return getattr(module, leaf)

    def get_posterior(self, name: str) -> Distribution:
        """The variational distribution of one site.

        Returns a :class:`~pyro_ssvi.distributions.SparseNormal` for sparse
        sites and a (transformed) mean-field Normal for dense sites, with the
        same event shape as the model's site.
        """
        self._require_params()
        if name not in self._meta:
            raise KeyError(
                f"AutoSparseNormal has no site {name!r}; "
                f"sites are {sorted(self._meta)}."
            )
        meta = self._meta[name]
        loc, scale = self._get_loc_and_scale(name)
        if meta["sparse"]:
            return SparseNormal(loc, scale, self._get_indices(name), meta["shape"])
        base = dist.Normal(loc, scale).to_event(meta["event_dim"])
        support = self._support(name)
        if support is constraints.real or _base_support(support) is constraints.real:
            return base
        return dist.TransformedDistribution(base, biject_to(support).with_cache())

    def _support(self, name: str) -> constraints.Constraint:
        if self.prototype_trace is not None:
            return self.prototype_trace.nodes[name]["fn"].support
        support = _support_from_name(self._meta[name]["support"])
        if support is None:
            raise RuntimeError(
                f"AutoSparseNormal: the support of site {name!r} is not recorded in "
                "the loaded state; call the guide once with the model's arguments."
            )
        return support

    def forward(self, *args: Any, **kwargs: Any) -> dict[str, torch.Tensor]:
        """Sample every latent site; same ``*args, **kwargs`` as the model.

        Returns:
            A dict from site name to its sampled (constrained) value, full
            shape, with zeros off the active set at sparse sites.
        """
        if self.prototype_trace is None:
            self._setup_prototype(*args, **kwargs)
        plates = self._create_plates(*args, **kwargs)
        result = {}
        for name, site in self.prototype_trace.iter_stochastic_nodes():
            with ExitStack() as stack:
                for frame in site["cond_indep_stack"]:
                    if frame.vectorized:
                        stack.enter_context(plates[frame.name])
                posterior: Any = self.get_posterior(name)
                infer: Any = self._infer(name)
                value = pyro.sample(name, posterior, infer=infer)
            capture = self._grad_capture
            if capture is not None and self._meta[name]["sparse"]:
                if isinstance(value, LazyWeight):  # local reparameterisation
                    value.capture_gradient(capture)
                elif value.requires_grad:
                    value.register_hook(self._grad_hook(capture, name))
            result[name] = value
        return result

    def _infer(self, name: str) -> dict[str, Any]:
        """Weight sites (real, at least 2-D) may be locally reparameterised."""
        if name not in self._infer_cache:
            self._infer_cache[name] = self._infer_uncached(name)
        return dict(self._infer_cache[name])  # handlers may edit a site's copy

    def _infer_uncached(self, name: str) -> dict[str, Any]:
        meta = self._meta[name]
        weight = meta["sparse"] or (
            len(meta["shape"]) >= 2
            and meta["event_dim"] == len(meta["shape"])
            and _base_support(self._support(name)) is constraints.real
        )
        return {"lrt": True} if weight else {}

    @staticmethod
    def _grad_hook(
        capture: dict[str, torch.Tensor], name: str
    ) -> Callable[[torch.Tensor], None]:
        def hook(grad: torch.Tensor) -> None:
            previous = capture.get(name)
            g = grad.detach()
            capture[name] = g.clone() if previous is None else previous + g

        return hook

    # ----------------------------------------------------------- introspection
    def sparse_site_names(self) -> list[str]:
        """Names of the sparse sites, in model order."""
        self._require_params()
        return [n for n, m in self._meta.items() if m["sparse"]]

    def site_shape(self, name: str) -> torch.Size:
        """Full shape of a site's value."""
        self._require_params()
        return torch.Size(self._meta[name]["shape"])

    def active_indices(self) -> dict[str, torch.Tensor]:
        """Sorted flat indices of the active coordinates of every sparse site.

        Returns:
            ``{site: LongTensor of shape (k,)}``; a copy, safe to keep.
        """
        return {n: self._get_indices(n).clone() for n in self.sparse_site_names()}

    def num_active(self) -> dict[str, int]:
        """Number ``k`` of active coordinates of every sparse site."""
        return {n: int(self._get_indices(n).numel()) for n in self.sparse_site_names()}

    @property
    def density(self) -> float:
        """Achieved density over all sparse sites: active / total coordinates."""
        names = self.sparse_site_names()
        active = sum(self._get_indices(n).numel() for n in names)
        total = sum(self.site_shape(n).numel() for n in names)
        return active / total

    def num_variational_params(self) -> int:
        """Number of variational parameters (means plus scales) of all sites."""
        self._require_params()
        total = 0
        for name in self._meta:
            loc, scale = self._get_loc_and_scale(name)
            total += loc.numel() + scale.numel()
        return total

    @torch.no_grad()
    def median(self, *args: Any, **kwargs: Any) -> dict[str, torch.Tensor]:
        """Posterior median of every site: dense tensors, zero off the active set."""
        result = {}
        for name, _ in self._sites():
            post = self.get_posterior(name)
            if isinstance(post, SparseNormal):
                result[name] = post.mean.detach()
            else:
                loc, _scale = self._get_loc_and_scale(name)
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
        result = {}
        for name, _ in self._sites():
            loc, scale = self._get_loc_and_scale(name)
            q = torch.as_tensor(quantiles, dtype=loc.dtype, device=loc.device)
            q = q.reshape((-1,) + (1,) * loc.dim())
            values = dist.Normal(loc, scale).icdf(q)
            post = self.get_posterior(name)
            if isinstance(post, SparseNormal):
                result[name] = post.scatter(values)
            else:
                result[name] = biject_to(self._support(name))(values)
        return result

    # --------------------------------------------------------- serialisation
    def get_extra_state(self) -> dict[str, Any]:
        return {"version": 1, "sites": self._meta}

    def set_extra_state(self, state: Any) -> None:
        if not isinstance(state, dict) or "sites" not in state:
            raise ValueError("AutoSparseNormal: malformed state dict metadata.")

    def load_state_dict(  # type: ignore[override]
        self, state_dict: Mapping[str, Any], strict: bool = True, assign: bool = False
    ) -> Any:
        """Load a state dict, also into a guide that was never called.

        The state dict must come from :meth:`state_dict` of an
        ``AutoSparseNormal`` for the same model; shapes and site sets are
        checked with a clear error.
        """
        extra = state_dict.get(_META_KEY)
        if not isinstance(extra, dict) or "sites" not in extra:
            raise ValueError(
                "AutoSparseNormal.load_state_dict: the state dict has no "
                f"{_META_KEY!r} entry; was it saved from an AutoSparseNormal?"
            )
        sites = {k: dict(v) for k, v in extra["sites"].items()}
        if not self._meta:
            self._build_from_state(sites, state_dict)
        else:
            self._check_state(sites, state_dict)
        result = super().load_state_dict(state_dict, strict=strict, assign=assign)
        self._sync_param_store()
        return result

    def _check_state(
        self, sites: Mapping[str, Mapping[str, Any]], state_dict: Mapping[str, Any]
    ) -> None:
        mine = {k: (v["sparse"], list(v["shape"])) for k, v in self._meta.items()}
        theirs = {k: (v["sparse"], list(v["shape"])) for k, v in sites.items()}
        if mine != theirs:
            raise ValueError(
                "AutoSparseNormal.load_state_dict: the state dict's sites "
                f"{theirs} do not match this guide's {mine}."
            )
        for name in self.sparse_site_names():
            key = f"indices.{name}"
            k_saved = state_dict[key].numel() if key in state_dict else None
            if k_saved != self._get_indices(name).numel():
                raise ValueError(
                    f"AutoSparseNormal.load_state_dict: site {name!r} has "
                    f"{self._get_indices(name).numel()} active coordinates here but "
                    f"{k_saved} in the state dict (different density?)."
                )

    def _build_from_state(
        self, sites: Mapping[str, dict[str, Any]], state_dict: Mapping[str, Any]
    ) -> None:
        self.locs = PyroModule()
        self.scales = PyroModule()
        self.indices = PyroModule()
        self._leaves.clear()
        self._infer_cache.clear()
        for name, meta in sites.items():
            try:
                loc = state_dict[f"locs.{name}_unconstrained"]
                scale = state_dict[f"scales.{name}_unconstrained"]
            except KeyError as e:
                raise ValueError(
                    f"AutoSparseNormal.load_state_dict: missing entry {e.args[0]!r}."
                ) from None
            event_dim = 1 if meta["sparse"] else meta["event_dim"]
            if meta["sparse"]:
                idx = state_dict.get(f"indices.{name}")
                if idx is None or idx.shape != loc.shape:
                    raise ValueError(
                        f"AutoSparseNormal.load_state_dict: site {name!r} needs "
                        "indices of the same length as its loc."
                    )
                empty = torch.empty(idx.shape, dtype=torch.int64, device=idx.device)
                _deep_register_buffer(self.indices, name, empty)
            deep_setattr(
                self.locs,
                name,
                PyroParam(torch.zeros_like(loc), constraints.real, event_dim),
            )
            init_scale = torch.ones_like(scale)
            deep_setattr(
                self.scales,
                name,
                PyroParam(init_scale, self.scale_constraint, event_dim),
            )
        self._meta = {k: dict(v) for k, v in sites.items()}

    def _sync_param_store(self) -> None:
        """Make Pyro's global param store hold this guide's (just loaded) tensors."""
        if is_module_local_param_enabled():
            return
        store = pyro.get_param_store()
        for tree in ("locs", "scales"):
            for name in self._meta:
                fullname = f"{self._pyro_name}.{tree}.{name}"
                if fullname in store:
                    param = self._unconstrained(tree, name)
                    store._params[fullname] = param
                    store._param_to_name[param] = fullname

    # ------------------------------------------------------ subspace editing
    def unconstrained_params(
        self, name: str
    ) -> tuple[torch.nn.Parameter, torch.nn.Parameter]:
        """The trainable tensors ``(loc, unconstrained scale)`` of a site.

        These are the very ``Parameter`` objects Pyro's optimisers hold, so
        editing them in place keeps optimiser state attached.
        """
        return self._unconstrained("locs", name), self._unconstrained("scales", name)

    def _unconstrained(self, tree: str, name: str) -> torch.nn.Parameter:
        module, leaf = self._leaf(tree, name)
        return getattr(module, leaf + "_unconstrained")
