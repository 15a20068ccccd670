"""Where :class:`~pyro_ssvi.AutoSparseNormal` keeps its tensors, and how it reads them.

Trees ``locs.<site>`` and ``scales.<site>`` hold the ``PyroParam`` s;
``indices.<site>`` the sorted flat indices of a sparse site's ``k`` active
coordinates, never trained: a float64 ``PyroParam`` of exact integers in
Pyro's param store (so every way of saving or restoring it keeps them), an
int64 buffer under ``module_local_params``. They are not in
``guide.parameters()`` nor any optimiser, and go into a state dict as int32
where they fit. Memory: 8 bytes per active coordinate (plus a cached int64
copy of float64 storage).
"""

from __future__ import annotations

from operator import attrgetter
from typing import Any, Callable, Iterator, NamedTuple

import pyro
import torch
from pyro.distributions import constraints
from pyro.nn import PyroModule, PyroParam
from torch.distributions import Distribution

from ._pyro_compat import (
    deep_setattr,
    is_module_local_param_enabled,
    module_context,
    param_store_name,
    tensor_version,
    unconstrained_name,
)
from ._sites import Site, posterior

#: The guide's trees of per-site tensors.
TREES = ("locs", "scales", "indices")


class SubspaceParams(NamedTuple):
    """The stored tensors of one sparse site, as the optimisers hold them: the
    active ``loc`` and unconstrained ``scale`` (``(k,)`` leaves) and ``indices``."""

    loc: torch.nn.Parameter
    scale: torch.nn.Parameter
    indices: torch.Tensor


class GuideStorage(PyroModule):
    """The storage half of :class:`~pyro_ssvi.AutoSparseNormal` (a mixin)."""

    _sites: dict[str, Site]
    scale_constraint: constraints.Constraint
    _scale_transform: Any

    def _reset_caches(self) -> None:
        # (tree, site) -> (leaf module, attribute): walking the static trees by
        # PyroModule.__getattr__ costs a third of a small network's step.
        self._leaves: dict[tuple[str, str], tuple[PyroModule, str]] = {}
        # site -> (loc read with it, float64 indices, their version, int64 indices)
        self._index_cache: dict[str, tuple[Any, torch.Tensor, int, torch.Tensor]] = {}

    def _new_trees(self) -> None:
        for tree in TREES:
            setattr(self, tree, PyroModule())
        self.meta = PyroModule()
        self._reset_caches()
        self._sites = {}
        self._index_buffers: set[str] = set()  # sites whose indices are buffers

    def _new_params(
        self,
        name: str,
        info: Site,
        loc: torch.Tensor,
        scale: torch.Tensor,
        indices: torch.Tensor | None,
        meta: torch.Tensor,
    ) -> None:
        """Create a site's tensors, reusing Pyro's param store entries (after
        ``pyro.get_param_store().load(path)``): all three trees, or none."""
        local = is_module_local_param_enabled()
        if not local:
            self._check_store_entries(name, TREES if indices is not None else TREES[:2])
        ed = info.event_dim
        deep_setattr(self.locs, name, PyroParam(loc, constraints.real, ed))
        deep_setattr(self.scales, name, PyroParam(scale, self.scale_constraint, ed))
        if indices is not None and local:
            _register_buffer(self.indices, name, indices.to(torch.int64))
            self._index_buffers.add(name)
        elif indices is not None:
            idx = PyroParam(indices.to(torch.float64), constraints.real, 1)
            deep_setattr(self.indices, name, idx)
            self._stored("indices", name).requires_grad_(False)
        _register_buffer(self.meta, name, meta.to(loc.device))
        self._sites[name] = info
        if info.sparse:
            _check_subspace(name, self.subspace_params(name), info.shape.numel())

    def _check_store_entries(self, name: str, trees: tuple[str, ...]) -> None:
        store = pyro.get_param_store()
        held = [t for t in trees if param_store_name(self, f"{t}.{name}") in store]
        if held and len(held) != len(trees):
            raise ValueError(
                f"AutoSparseNormal: Pyro's param store holds {held} but not all of "
                f"{list(trees)} for site {name!r} (left over from another guide or "
                "an old file?), so its parameters could not be paired with their "
                "indices. Call pyro.clear_param_store() before building the guide."
            )

    def _leaf(self, tree: str, name: str) -> tuple[PyroModule, str]:
        """The module holding a site's entry in ``tree``, and its attribute."""
        key = (tree, name)
        if key not in self._leaves:
            prefix, _, leaf = name.rpartition(".")
            module = getattr(self, tree)
            self._leaves[key] = (attrgetter(prefix)(module) if prefix else module, leaf)
        return self._leaves[key]

    def _stored(self, tree: str, name: str) -> torch.Tensor:
        """A site's stored (unconstrained) tensor in ``tree``, unsynchronised."""
        module, leaf = self._leaf(tree, name)
        if tree == "indices" and name in self._index_buffers:
            return getattr(module, leaf)  # module-local indices: a buffer
        return getattr(module, unconstrained_name(leaf))

    def _get_loc_and_scale(self, name: str) -> tuple[torch.Tensor, torch.Tensor]:
        """The site's ``(loc, scale)`` read as Pyro reads them (synchronised
        with the param store inside the module context)."""
        return tuple(getattr(*self._leaf(t, name)) for t in TREES[:2])  # type: ignore

    def _indices(self, name: str, loc: torch.Tensor | None = None) -> torch.Tensor:
        """The site's active indices as int64 (cached from float64 storage).

        The store replaces a site's tensors together, so while ``loc`` (as just
        read) and the stored indices are those of the last read, unedited, the
        cache is current and no ``pyro.param`` read is needed.
        """
        module, leaf = self._leaf("indices", name)
        if name in self._index_buffers:
            return getattr(module, leaf)
        if torch.jit.is_tracing():  # a traced graph must read its input
            return getattr(module, leaf).long()
        cached = self._index_cache.get(name)
        if (
            cached is not None
            and loc is not None
            and cached[0] is loc
            and cached[2] == tensor_version(cached[1])
        ):
            return cached[3]
        stored = getattr(module, leaf)
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

        Read through Pyro's param store (restored ones after ``set_state``);
        edit them in place under ``torch.no_grad()`` to keep optimiser state.
        """
        self._require_site(name)
        if not self._sites[name].sparse:
            raise ValueError(f"AutoSparseNormal: site {name!r} is dense.")
        with module_context(self):
            for tree in TREES:
                getattr(*self._leaf(tree, name))  # synchronise with the param store
            tensors = [self._stored(tree, name) for tree in TREES]
        return SubspaceParams(*tensors)  # type: ignore[arg-type]

    def unconstrained_params(
        self, name: str
    ) -> tuple[torch.nn.Parameter, torch.nn.Parameter]:
        """The trainable tensors ``(loc, unconstrained scale)`` of a site."""
        self._require_site(name)
        with module_context(self):
            self._get_loc_and_scale(name)  # synchronise with the param store
            loc, scale = self._stored("locs", name), self._stored("scales", name)
            return loc, scale  # type: ignore[return-value]

    def _require_params(self) -> None:
        if getattr(self, "prototype_trace", None) is None and not self._sites:
            raise RuntimeError(
                "AutoSparseNormal has no parameters yet: call guide.setup(*args) or "
                "the guide itself with the model's arguments, or load a state dict."
            )

    def _require_site(self, name: str) -> None:
        self._require_params()
        if name not in self._sites:
            raise KeyError(
                f"AutoSparseNormal has no site {name!r}; sites are "
                f"{sorted(self._sites)}."
            )

    def _posterior(
        self,
        name: str,
        loc: torch.Tensor | None = None,
        scale: torch.Tensor | None = None,
        detach: bool = False,
    ) -> Distribution:
        """A site's posterior, from its parameters (read now if not given)."""
        if loc is None or scale is None:
            loc, scale = self._get_loc_and_scale(name)
        info = self._sites[name]
        indices = self._indices(name, loc) if info.sparse else None
        if detach:
            loc, scale = loc.detach(), scale.detach()
        return posterior(info, loc, scale, indices)

    def _posteriors(
        self, detach: bool = False
    ) -> list[tuple[Distribution, tuple[torch.Tensor, torch.Tensor]]]:
        """Every site's posterior and its trained leaves ``(loc, raw scale)``,
        read without ``pyro.param`` statements (for the direct step)."""
        if not is_module_local_param_enabled():
            self._sync_with_store()
        out = []
        for name in self._sites:
            loc, scale_u = self._stored("locs", name), self._stored("scales", name)
            post = self._posterior(name, loc, self._scale_transform(scale_u), detach)
            out.append((post, (loc, scale_u)))
        return out

    def _sync_with_store(self) -> None:
        """Adopt tensors that Pyro's param store replaced (set_state, load)."""
        store = dict(pyro.get_param_store().named_parameters())
        for name in self._sites:
            for tree in TREES[:2]:
                module, leaf = self._leaf(tree, name)
                if store.get(param_store_name(module, leaf)) is not self._stored(
                    tree, name
                ):
                    with module_context(self):  # read as Pyro reads: synchronise
                        for site in self._sites:
                            self._get_loc_and_scale(site)
                    return

    def _is_full(self, name: str) -> bool:
        """Whether every coordinate of a sparse site is active (``k == n``)."""
        return self._stored("locs", name).numel() == self._sites[name].shape.numel()

    def named_parameters(  # type: ignore[override]
        self, prefix: str = "", recurse: bool = True, remove_duplicate: bool = True
    ) -> Iterator[tuple[str, torch.nn.Parameter]]:
        """The variational parameters: every site's loc and scale, no indices."""
        for name, param in super().named_parameters(prefix, recurse, remove_duplicate):
            if not name[len(prefix) :].lstrip(".").startswith("indices."):
                yield name, param

    def _apply(self, fn: Callable[..., Any], recurse: bool = True) -> Any:
        """``.to(...)``, ``.float()``...: float64 indices move but stay float64,
        and the module's moved tensors win over Pyro's param store."""
        sparse = [name for name, info in self._sites.items() if info.sparse]
        before = {name: self._stored("indices", name).data for name in sparse}
        result = super()._apply(fn, recurse)
        for name, data in before.items():
            stored = self._stored("indices", name)
            if stored.dtype != data.dtype:
                stored.data = data.to(device=stored.device)
        after_load(self, None)
        return result


def after_load(module: GuideStorage, incompatible: Any) -> None:
    """Let the module's (loaded, moved) tensors win over Pyro's param store, by
    dropping its entries (the next call puts the module's tensors there)."""
    module._index_cache.clear()
    if is_module_local_param_enabled():
        return
    store = pyro.get_param_store()
    for name in module._sites:
        for tree in TREES:
            fullname = param_store_name(module, f"{tree}.{name}")
            if fullname in store:
                del store[fullname]


def compact_indices(
    module: torch.nn.Module, state_dict: dict[str, Any], prefix: str, local: Any
) -> None:
    """State-dict hook: indices are ``indices.<site>_unconstrained`` integers,
    int32 when they fit (half the bytes), whichever the storage."""
    for key in [k for k in state_dict if k.startswith(prefix + "indices.")]:
        value = state_dict.pop(key)
        small = value.numel() == 0 or float(value.max()) < 2**31
        name = key if key.endswith(unconstrained_name("")) else unconstrained_name(key)
        state_dict[name] = value.detach().to(torch.int32 if small else torch.int64)


def _register_buffer(root: PyroModule, name: str, tensor: torch.Tensor) -> None:
    module = root
    *prefix, leaf = name.split(".")
    for part in prefix:
        if getattr(module, part, None) is None:
            setattr(module, part, PyroModule())
        module = getattr(module, part)
    module.register_buffer(leaf, tensor, persistent=True)


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
