"""The budget half of :class:`~pyro_ssvi.AutoSparseNormal` (a mixin).

``allocation`` and ``dense_below`` share the budget ``density * sum(n)`` of
active coordinates between the sparse-eligible sites
(:func:`~pyro_ssvi.initialization.allocate_densities`); a site they give
density 1 gets a dense posterior and is *charged* to the budget.
"""

from __future__ import annotations

from typing import Any, Callable

from ._sites import Site, is_sparse
from .initialization import ALLOCATIONS, allocate_densities

__all__ = ["BudgetAllocation"]


class BudgetAllocation:
    """Per-site densities and the sites made dense by the allocation."""

    _sites: dict[str, Site]
    _sparse_sites: Any
    dense_sites: frozenset[str]
    min_sparse_numel: int
    target_density: float
    _require_params: Callable[[], None]

    def _init_allocation(self, allocation: Any, dense_below: Any) -> None:
        """Check and keep ``allocation`` and ``dense_below``."""
        if allocation not in ALLOCATIONS:
            raise ValueError(
                f"AutoSparseNormal: allocation must be one of {ALLOCATIONS}, got "
                f"{allocation!r}."
            )
        if isinstance(dense_below, bool) or not isinstance(dense_below, int):
            raise TypeError(
                "AutoSparseNormal: dense_below must be an int >= 0 (a number of "
                f"elements), got {dense_below!r}."
            )
        if dense_below < 0:
            raise ValueError(
                f"AutoSparseNormal: dense_below must be >= 0, got {dense_below}."
            )
        self.allocation = allocation
        self.dense_below = dense_below
        self._site_density: dict[str, float] = {}
        self._charged: set[str] = set()
        self._sparse_names: set[str] = set()

    def _allocate(self, sites: dict[str, Any]) -> None:
        """Each sparse site's density under ``allocation`` and ``dense_below``;
        the sites it makes dense (density 1) are charged to the budget."""
        rule = self._sparse_sites
        shapes = {
            name: site["value"].shape
            for name, site in sites.items()
            if is_sparse(name, site, rule, self.dense_sites, self.min_sparse_numel)
        }
        small = [n for n, shape in shapes.items() if shape.numel() <= self.dense_below]
        self._site_density = allocate_densities(
            shapes, self.target_density, self.allocation, small
        )
        self._charged = set()
        if self.allocation != "uniform" or small:
            self._charged = {n for n, d in self._site_density.items() if d >= 1.0}
        # The sites that get a subspace (the sparse_sites rule asked once each).
        self._sparse_names = set(shapes) - self._charged

    def charged_site_names(self) -> list[str]:
        """Dense sites charged to the density budget (``allocation`` or
        ``dense_below`` made them dense). After loading a state dict into a
        never-called guide: its dense weight sites (at least two dimensions)
        not in ``dense_sites``, when either option is set."""
        self._require_params()
        if self._charged:
            return [n for n in self._sites if n in self._charged]
        if self.allocation == "uniform" and not self.dense_below:
            return []
        return [
            n
            for n, s in self._sites.items()
            if not s.sparse and len(s.shape) >= 2 and n not in self.dense_sites
        ]
