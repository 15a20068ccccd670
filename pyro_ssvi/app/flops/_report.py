"""The accounting: training and inference FLOPs of SSVI and dense VI."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Collection
from dataclasses import dataclass
from numbers import Integral, Real
from typing import Any

from ._costs import LayerCost


@dataclass(frozen=True)
class FlopsReport:
    """FLOPs of SSVI and dense VI, from :func:`flops_report`.

    MACs and inference FLOPs are per example; training FLOPs are for the whole
    run. 1 MAC = 2 FLOPs.

    Attributes:
        per_layer: One dict per layer, in the order of the costs: ``name``,
            ``kind``, ``numel``, ``density`` (1.0 for dense layers),
            ``macs_dense`` and ``macs_sparse`` (``round(density * macs_dense)``).
        forward_macs_dense: Dense forward MACs per example.
        forward_macs_sparse: Sparse forward MACs per example (dense layers
            count fully).
        train_flops_dense_vi: Dense VI training FLOPs.
        train_flops_ssvi: SSVI training FLOPs, reference accounting (sparse
            steps plus a dense gradient once per ``update_every`` steps until
            ``stop_fraction`` of training).
        train_ratio: ``train_flops_dense_vi / train_flops_ssvi``.
        train_ratio_proportional: The "FLOPs proportional to density" ratio:
            dense over sparse forward MACs of the sparse layers only, without
            the dense layers or the growth overhead (``1 / density`` for one
            density; 1.0 if no layer is sparse).
        inference_flops_dense: FLOPs of one deterministic (mean-weight) dense
            forward pass.
        inference_flops_sparse: The same for the sparse network.
    """

    per_layer: list[dict[str, Any]]
    forward_macs_dense: int
    forward_macs_sparse: int
    train_flops_dense_vi: float
    train_flops_ssvi: float
    train_ratio: float
    train_ratio_proportional: float
    inference_flops_dense: float
    inference_flops_sparse: float

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable copy: plain ints, floats, strings, lists, dicts."""
        return dataclasses.asdict(self)


def _check_count(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, Integral) or value < 1:
        raise ValueError(f"flops_report: {name} must be an int >= 1, got {value!r}.")


def _is_real(value: Any) -> bool:
    return isinstance(value, Real) and not isinstance(value, bool)


def _check_density(name: str, value: Any) -> float:
    if not (_is_real(value) and 0 < float(value) <= 1):
        raise ValueError(
            f"flops_report: density of {name} must be in (0, 1], got {value!r}."
        )
    return float(value)


def _layer_densities(
    costs: dict[str, LayerCost],
    density: float | dict[str, float],
    dense_layers: Collection[str],
) -> dict[str, float]:
    """Validated ``{name: density}`` for every layer; dense layers get 1.0."""
    if isinstance(dense_layers, str):
        raise TypeError(
            "flops_report: dense_layers must be a collection of names, got the "
            f"string {dense_layers!r}; wrap it, e.g. {{{dense_layers!r}}}."
        )
    unknown = set(dense_layers) - set(costs)
    if isinstance(density, dict):
        unknown |= set(density) - set(costs)
        densities = {n: _check_density(n, density.get(n, 1.0)) for n in costs}
    else:
        value = _check_density("every layer", density)
        densities = dict.fromkeys(costs, value)
    if unknown:
        raise ValueError(
            f"flops_report: unknown layer names {sorted(unknown)}; "
            f"known: {list(costs)}."
        )
    for name in dense_layers:
        if isinstance(density, dict) and densities[name] < 1.0:
            raise ValueError(
                f"flops_report: {name!r} is in dense_layers but has density "
                f"{densities[name]!r}."
            )
        densities[name] = 1.0
    return densities


def _sparse_macs(macs: int, density: float) -> int:
    """``round(density * macs)``, but at least 1 when ``macs > 0``.

    A sparse layer keeps at least one weight, as the reference's
    ``n - floor((1 - density) * n)`` active weights do.
    """
    return max(round(density * macs), min(macs, 1))


def _training_flops(
    f_dense: float,
    f_sparse: float,
    *,
    num_examples: int,
    epochs: int,
    batch_size: int,
    update_every: int,
    stop_fraction: float,
    passes: int,
) -> tuple[float, float]:
    """``(dense VI, SSVI)`` training FLOPs from forward FLOPs per example."""
    steps_per_epoch = math.ceil(num_examples / batch_size)
    growth_steps = math.floor(stop_fraction * epochs * steps_per_epoch)
    seen = epochs * num_examples
    epochs_growing, steps_growing = divmod(growth_steps, steps_per_epoch)
    seen_growing = epochs_growing * num_examples + steps_growing * batch_size
    growing = (3 * f_sparse * update_every + 2 * f_sparse + f_dense) / (
        update_every + 1
    )
    dense_vi = passes * 3 * f_dense * seen
    ssvi = passes * (growing * seen_growing + 3 * f_sparse * (seen - seen_growing))
    return dense_vi, ssvi


def flops_report(
    costs: dict[str, LayerCost],
    density: float | dict[str, float],
    *,
    num_examples: int,
    epochs: int,
    batch_size: int,
    update_every: int = 100,
    stop_fraction: float = 0.75,
    dense_layers: Collection[str] = (),
    lrt: bool = True,
) -> FlopsReport:
    r"""Training and inference FLOPs of SSVI versus dense VI (spec §8).

    See :mod:`pyro_ssvi.app.flops` for the formulas. A layer in
    ``dense_layers``, or with density 1.0, counts fully; every other layer
    costs ``round(density * macs)`` MACs per example (at least 1). The
    reference accounting charges the growth overhead over the whole first
    ``stop_fraction`` of the steps, whether or not an update falls in it.

    Args:
        costs: ``{name: LayerCost}`` from :func:`layer_costs`.
        density: One density in (0, 1] for every layer not in ``dense_layers``,
            or ``{name: density}``; layers missing from the dict are dense.
        num_examples: Training examples per epoch.
        epochs: Number of epochs.
        batch_size: Minibatch size; an epoch has ``ceil(num_examples /
            batch_size)`` steps.
        update_every: Steps between subspace updates, :math:`\Delta T`.
        stop_fraction: Fraction of the steps, in [0, 1], after which the
            subspace is fixed (no more dense gradients).
        dense_layers: Names of layers kept dense (Bayesian but not sparse),
            e.g. ``net.ssvi_dense_parameters``.
        lrt: Count a mean and a variance pass per layer (factor 2), as both
            SSVI and dense VI do with the local reparameterisation trick.

    Returns:
        The :class:`FlopsReport`.

    Raises:
        ValueError: If ``costs`` is empty; a density is outside (0, 1]; a name
            in ``density`` or ``dense_layers`` is not in ``costs``; a layer in
            ``dense_layers`` has a density dict entry below 1; a count is not
            an int >= 1; ``stop_fraction`` is outside [0, 1]; or no layer has
            any MACs.
        TypeError: If ``dense_layers`` is a single string.

    References:
        Evci, Gale, Menick, Castro, Elsen, *Rigging the Lottery: Making All
        Tickets Winners*, ICML 2020, Appendix H (FLOPs of dynamic sparse
        training).
    """
    if not costs:
        raise ValueError("flops_report: costs is empty.")
    counts = {
        "num_examples": num_examples,
        "epochs": epochs,
        "batch_size": batch_size,
        "update_every": update_every,
    }
    for name, value in counts.items():
        _check_count(name, value)
    if not (_is_real(stop_fraction) and 0 <= float(stop_fraction) <= 1):
        raise ValueError(
            f"flops_report: stop_fraction must be in [0, 1], got {stop_fraction!r}."
        )
    densities = _layer_densities(costs, density, dense_layers)
    sparse = {n: _sparse_macs(cost.macs, densities[n]) for n, cost in costs.items()}
    macs_dense = sum(cost.macs for cost in costs.values())
    macs_sparse = sum(sparse.values())
    if macs_dense == 0:
        raise ValueError("flops_report: no layer has any MACs.")
    sparse_names = [name for name in costs if densities[name] < 1.0]
    sparse_part = sum(sparse[name] for name in sparse_names)
    proportional = (
        sum(costs[name].macs for name in sparse_names) / sparse_part
        if sparse_part
        else 1.0
    )
    f_dense, f_sparse = 2.0 * macs_dense, 2.0 * macs_sparse
    dense_vi, ssvi = _training_flops(
        f_dense,
        f_sparse,
        num_examples=num_examples,
        epochs=epochs,
        batch_size=batch_size,
        update_every=update_every,
        stop_fraction=float(stop_fraction),
        passes=2 if lrt else 1,
    )
    per_layer = [
        {
            "name": name,
            "kind": cost.kind,
            "numel": cost.numel,
            "density": densities[name],
            "macs_dense": cost.macs,
            "macs_sparse": sparse[name],
        }
        for name, cost in costs.items()
    ]
    return FlopsReport(
        per_layer=per_layer,
        forward_macs_dense=macs_dense,
        forward_macs_sparse=macs_sparse,
        train_flops_dense_vi=dense_vi,
        train_flops_ssvi=ssvi,
        train_ratio=dense_vi / ssvi,
        train_ratio_proportional=proportional,
        inference_flops_dense=f_dense,
        inference_flops_sparse=f_sparse,
    )
