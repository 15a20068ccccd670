r"""Reference-parity check: pyro_ssvi's subspace update against the reference's.

One command (not part of the test suite; ``tests/test_parity_script.py``
runs a small version)::

    python benchmarks/parity.py                  # MLP and LeNet on the embedded MNIST
    python benchmarks/parity.py --models mlp --json parity.json

The SSVI reference implementation (``ljb121002/SSVI``, ``rigl_torch/RigL.py``)
reselects a layer's active set with the update below. This script writes that
update from its published formulas (``docs/ssvi_algorithm.md`` sections 3-5
and Appendix A) on dense tensors with masks, in float32 as the reference
computes it:

1. ``sigma = softplus(rho) * [rho != 0]``; removal scores of every entry by
   the criterion's closed form, NaN set to 0;
2. ``r_t = alpha / 2 * (1 + cos(pi t / T_end))``, ``n_prune = int(n_active r_t)``;
   keep the ``n_active - n_prune`` entries with the highest scores;
3. grow the ``n_prune`` entries with the largest ``|grad|`` among those not
   kept (just-removed ones included);
4. new entries get ``mu = 0`` and ``rho`` = the mean of ``rho`` over the kept
   and re-grown entries; re-grown entries keep ``mu``, ``rho`` and momentum;
   everything outside the new mask is zeroed, momentum included.

It then runs :meth:`pyro_ssvi.SparseSVI.update_subspace` on identical tensors
(the same means, unconstrained scales, active sets, SGD momenta and
likelihood gradient) and prints, per criterion, how far the two agree: IoU of
the removed, added and active sets; the largest differences of the new means,
unconstrained scales and momenta; the removed sets' IoU with the reference's
criteria computed in float64; and the added sets' IoU with the reference's
growth score, which includes the KL gradient (its hook records the gradient
of the whole loss, in which the coordinates active at that step, the
just-removed ones among them, carry the annealed KL term; pyro_ssvi's growth
score is the likelihood gradient alone, unless ``growth_includes_kl=True``:
that run is compared too). It also compares the update steps,
drop fractions and per-layer swap counts over the whole 200-epoch CIFAR
schedule for every sparse ResNet-18 tensor, and the active counts per tensor.

The state compared is a guide trained for ``--warmup-steps`` SGD steps on the
embedded (real) MNIST with the reference's settings: initial sigma
``|N(6e-4, 5e-4^2)|`` per coordinate, prior ``N(0, 0.005^2)``, KL weight 0.01,
loss per example, SGD lr 0.01 with momentum 0.9, density 0.1. Means start at
the network's own initialisation: the reference's ``N(0, 0.01^2)`` is meant
for its batch-normalised ResNet-18, and these networks have no batch norm,
so from it they hardly learn, and their likelihood gradients stay tiny.
Updates are compared at steps 100, 29,300 and 50,000 of the reference's
CIFAR schedule (drop fractions 0.30, 0.15, 0.016).

Exit status 1 when a comparison that should be exact is not: every criterion
must agree exactly with the float64 reference, and with the float32 one
except ``SNR_exp_mean_abs`` (a share of the reference's float32 scores are
NaN) and ``E_exp_mean_abs`` (its float32 scores, about ``1 + |mu|``, tie at
the removal boundary now and then).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, NamedTuple

import pyro
import torch
import torch.nn.functional as F
from pyro import poutine
from torch import Tensor

from pyro_ssvi import AutoSparseNormal, SparseSVI, TraceSparseMeanField_ELBO
from pyro_ssvi._pyro_compat import pyro_optim_optimizers
from pyro_ssvi.app.data import load_dataset
from pyro_ssvi.app.models import BayesianClassifier, lenet, mlp, resnet18_cifar
from pyro_ssvi.poutine import scale_kl
from pyro_ssvi.reselection import likelihood_gradients
from pyro_ssvi.schedules import drop_fraction_at, update_due
from pyro_ssvi.selection import num_to_swap

# The reference CIFAR run: 200 epochs of 391 steps (batch 128), updates every
# 100 steps until 75% of training, alpha 0.3, density 0.1.
STEPS_PER_EPOCH, EPOCHS = 391, 200
NUM_STEPS = EPOCHS * STEPS_PER_EPOCH
UPDATE_EVERY = 100
ALPHA = 0.3
T_END = int(0.75 * NUM_STEPS)
DENSITY = 0.1
PRIOR_SCALE = 0.005
KL_SCALE = 0.01
INIT_SCALE = (6e-4, 5e-4)
LR, MOMENTUM = 0.01, 0.9
UPDATE_STEPS = (100, 29_300, 50_000)  # early, mid, late: r = 0.30, 0.15, 0.04

#: Reference criterion name (``--drop_criteria``) -> pyro_ssvi name.
CRITERIA = {
    "mean": "mean_abs",
    "snr": "snr",
    "E_mean_abs": "expected_abs",
    "SNR_mean_abs": "snr_abs",
    "E_exp_mean_abs": "expected_exp_abs",
    "SNR_exp_mean_abs": "snr_exp_abs",
}
#: Criteria whose float32 reference selections may differ from exact ones:
#: ``SNR_exp_mean_abs`` (E2 - E1^2 below float32 resolution: NaN scores) and
#: ``E_exp_mean_abs`` (scores ~ 1 + |mu| in steps of 1.2e-7: ties at the
#: removal boundary, which the reference's topk breaks arbitrarily).
FLOAT32_LIMITED = {"SNR_exp_mean_abs", "E_exp_mean_abs"}


# ------------------------------------------------------- the reference's maths
def _normal_cdf(x: Tensor) -> Tensor:
    return 0.5 * (1.0 + torch.erf(x / math.sqrt(2.0)))


def _folded_mean(mu: Tensor, sigma: Tensor) -> Tensor:
    """E|theta| = mu erf(r / sqrt 2) + sigma sqrt(2/pi) exp(-r^2 / 2), r = mu/sigma."""
    gauss = torch.exp(-(mu**2) / (2 * sigma**2)) / math.sqrt(2 * math.pi)
    return mu * torch.erf(mu / (sigma * math.sqrt(2.0))) + 2 * sigma * gauss


def _folded_mgf(mu: Tensor, sigma: Tensor, lam: float) -> Tensor:
    """E exp(lam |theta|) as the sum of two exp-times-Phi terms."""
    half_var = 0.5 * lam**2 * sigma**2
    return torch.exp(half_var + lam * mu) * _normal_cdf(
        mu / sigma + lam * sigma
    ) + torch.exp(half_var - lam * mu) * _normal_cdf(-mu / sigma + lam * sigma)


def reference_scores(name: str, mu: Tensor, sigma: Tensor, lam: float = 1.0) -> Tensor:
    """Removal scores as the reference computes them, in ``mu``'s dtype.

    Every entry is scored, inactive ones (``mu = sigma = 0``) too. NaN is
    returned as NaN here; the reference sets it to 0 before ranking.
    """
    if name == "mean":
        return mu.abs()
    if name == "snr":
        return mu.abs() / sigma
    if name == "E_mean_abs":
        return _folded_mean(mu, sigma)
    if name == "SNR_mean_abs":
        m1 = _folded_mean(mu, sigma)
        return m1 / torch.sqrt(sigma**2 + mu**2 - m1**2)
    if name == "E_exp_mean_abs":
        return _folded_mgf(mu, sigma, lam)
    if name == "SNR_exp_mean_abs":
        m1, m2 = _folded_mgf(mu, sigma, lam), _folded_mgf(mu, sigma, 2 * lam)
        return m1 / torch.sqrt(m2 - m1**2)
    raise ValueError(f"unknown reference criterion {name!r}; one of {list(CRITERIA)}")


def reference_kl_beta(step: int) -> float:
    """The reference's KL annealing at a 1-based step: min(2 e / E, 1), e the epoch."""
    epoch = (step - 1) // STEPS_PER_EPOCH + 1
    return min(2 * epoch / EPOCHS, 1.0)


def reference_drop_fraction(
    step: int, alpha: float = ALPHA, t_end: int = T_END
) -> float:
    """RigL's cosine decay, as the reference evaluates it."""
    return alpha / 2 * (1 + math.cos((step * math.pi) / t_end))


class LayerState(NamedTuple):
    """A layer in the reference's representation: dense tensors and a mask."""

    mu: Tensor
    rho: Tensor
    mask: Tensor  # bool
    momentum_mu: Tensor
    momentum_rho: Tensor


def reference_update(
    state: LayerState,
    grad: Tensor,
    criterion: str,
    drop_fraction: float,
    *,
    dtype: torch.dtype = torch.float32,
    kl_grad: Tensor | None = None,
) -> tuple[LayerState, int, int]:
    """One reference update of one layer.

    ``dtype`` is the precision of the removal scores (the reference's is
    float32); ``kl_grad`` is added to ``grad`` in the growth score.

    Returns:
        The new state (float32), the number of entries pruned (and grown),
        and the number of NaN removal scores (set to 0) of active entries.
    """
    mu, rho = state.mu.flatten(), state.rho.flatten()
    mask = state.mask.flatten()
    sigma = F.softplus(rho) * (rho != 0)  # float32 parameters, as the reference's
    raw = reference_scores(criterion, mu.to(dtype), sigma.to(dtype))
    num_nan = int((torch.isnan(raw) & mask).sum())
    score = torch.where(torch.isnan(raw), torch.zeros_like(raw), raw)
    n_active = int(mask.sum())
    n_prune = int(n_active * drop_fraction)
    keep = torch.zeros_like(mask)
    keep[torch.topk(score, n_active - n_prune).indices] = True
    growth = grad.flatten() if kl_grad is None else grad.flatten() + kl_grad.flatten()
    growth = growth.abs()
    lifted = torch.where(keep, growth.min() - 1, growth)
    grow = torch.zeros_like(mask)
    grow[torch.topk(lifted, n_prune).indices] = True
    new_mask = keep | grow
    new = grow & ~mask
    mu = torch.where(new, torch.zeros_like(mu), mu) * new_mask
    rho = rho * new_mask
    rho = torch.where(new, rho.sum() / (rho != 0).sum(), rho)  # mean over survivors
    shape = state.mu.shape
    result = LayerState(
        mu.reshape(shape),
        rho.reshape(shape),
        new_mask.reshape(shape),
        (state.momentum_mu.flatten() * new_mask).reshape(shape),
        (state.momentum_rho.flatten() * new_mask).reshape(shape),
    )
    return result, n_prune, num_nan


# ------------------------------------------------------------ the setup
@dataclass
class Setup:
    """A guide trained briefly with SGD, and the minibatch of the updates."""

    name: str
    model: Any
    guide: AutoSparseNormal
    scaled_model: Callable[..., Any]
    scaled_guide: Callable[..., Any]
    optim: Any
    x: Tensor
    y: Tensor
    num_data: int


def _network(name: str) -> torch.nn.Module:
    if name == "mlp":
        return mlp(784, [400, 400], 10)
    if name == "lenet":
        return lenet(1, 10, 28)
    raise ValueError(f"unknown model {name!r}; use mlp or lenet")


def build(
    name: str, *, warmup_steps: int, batch_size: int = 128, seed: int = 0
) -> Setup:
    """Model, guide and SGD state after ``warmup_steps`` steps on MNIST."""
    pyro.clear_param_store()
    pyro.set_rng_seed(seed)
    data = load_dataset("mnist", "train")
    num_data = len(data)
    images, labels = data.tensors
    model = BayesianClassifier(
        _network(name), num_data=num_data, prior_scale=PRIOR_SCALE, bayesian_bias=False
    )
    guide = AutoSparseNormal(
        model,
        density=DENSITY,
        init_loc_fn=model.init_loc_fn(),
        init_scale=INIT_SCALE,
        dense_sites=model.dense_sites,
    )
    # The reference's loss per example: mean CE + KL_SCALE * KL / N.
    scaled_model = scale_kl(poutine.scale(model, scale=1.0 / num_data), KL_SCALE)
    scaled_guide = scale_kl(poutine.scale(guide, scale=1.0 / num_data), KL_SCALE)
    optim = pyro.optim.SGD({"lr": LR, "momentum": MOMENTUM})
    svi = pyro.infer.SVI(scaled_model, scaled_guide, optim, TraceSparseMeanField_ELBO())
    order = torch.randperm(num_data)
    for step in range(warmup_steps + 1):
        batch = order[(step * batch_size) % num_data :][:batch_size]
        x, y = images[batch], labels[batch]
        if step < warmup_steps:
            svi.step(x, y)
    return Setup(name, model, guide, scaled_model, scaled_guide, optim, x, y, num_data)


# ------------------------------------------------------------ state access
def _momentum(setup: Setup, param: Tensor) -> Tensor:
    optimizer = pyro_optim_optimizers(setup.optim)[param]
    return optimizer.state[param]["momentum_buffer"]


def _dense(values: Tensor, indices: Tensor, shape: torch.Size) -> Tensor:
    out = torch.zeros(shape.numel(), dtype=values.dtype)
    out[indices.long()] = values.detach()
    return out.reshape(shape)


def layer_states(setup: Setup) -> dict[str, LayerState]:
    """Every sparse site in the reference's representation."""
    states = {}
    for site in setup.guide.sparse_site_names():
        loc, scale_u, idx = setup.guide.subspace_params(site)
        shape = setup.guide.site_shape(site)
        mask = torch.zeros(shape.numel(), dtype=torch.bool)
        mask[idx.long()] = True
        states[site] = LayerState(
            _dense(loc, idx, shape),
            _dense(scale_u, idx, shape),
            mask.reshape(shape),
            _dense(_momentum(setup, loc), idx, shape),
            _dense(_momentum(setup, scale_u), idx, shape),
        )
    return states


def snapshot(setup: Setup) -> dict[str, tuple[Tensor, ...]]:
    """Copies of the guide's subspace tensors and their momenta."""
    snap = {}
    for site in setup.guide.sparse_site_names():
        loc, scale_u, idx = setup.guide.subspace_params(site)
        snap[site] = tuple(
            t.detach().clone()
            for t in (
                loc,
                scale_u,
                idx,
                _momentum(setup, loc),
                _momentum(setup, scale_u),
            )
        )
    return snap


@torch.no_grad()
def restore(setup: Setup, snap: dict[str, tuple[Tensor, ...]]) -> None:
    """Put the tensors of :func:`snapshot` back, in place."""
    for site, saved in snap.items():
        loc, scale_u, idx = setup.guide.subspace_params(site)
        targets = (loc, scale_u, idx, _momentum(setup, loc), _momentum(setup, scale_u))
        for target, value in zip(targets, saved):
            target.copy_(value)


# ------------------------------------------------------------ comparison
@dataclass
class Row:
    """Agreement of one update, over all sparse layers of one model.

    IoUs pool the layers (summed intersections over summed unions). The
    ``*_float64`` fields and the value differences compare with the
    reference's update with its criterion computed in float64; the others with
    the float32 reference; ``added_iou_with_kl`` with the float32 reference
    whose growth score includes the KL gradient; ``added_iou_both_with_kl``
    compares that reference with our update run with
    ``growth_includes_kl=True``.
    """

    model: str
    criterion: str
    step: int
    drop_fraction: float
    drop_fraction_reference: float
    num_removed: int
    counts_equal: bool
    removed_iou: float
    added_iou: float
    active_iou: float
    removed_iou_float64: float
    active_iou_float64: float
    max_loc_diff: float
    max_rho_diff: float
    max_momentum_diff: float
    added_iou_with_kl: float
    added_iou_both_with_kl: float
    reference_nan_scores: int

    @property
    def exact(self) -> bool:
        """The float64 reference's sets and values (rho to float32 rounding)."""
        return (
            self.counts_equal
            and self.removed_iou_float64 == self.active_iou_float64 == 1.0
            and self.max_loc_diff == 0.0
            and self.max_rho_diff <= RHO_TOLERANCE
            and self.max_momentum_diff == 0.0
        )

    @property
    def agrees_float32(self) -> bool:
        """The float32 reference's sets, up to float32 near-ties."""
        return min(self.removed_iou, self.added_iou, self.active_iou) >= FLOAT32_IOU


#: New rho is a float32 mean over ~10^4 values, summed in another order.
RHO_TOLERANCE = 1e-5
#: Float32 scores that tie or swap at the removal boundary (about one pair
#: per 10^5 removals for the stable criteria) still count as agreeing.
FLOAT32_IOU = 0.999


def _ratio(pair: list[int]) -> float:
    return 1.0 if pair[1] == 0 else pair[0] / pair[1]


def _seeded_gradients(setup: Setup, seed: int) -> dict[str, Tensor]:
    """The likelihood gradient that the update's own pass will draw."""
    pyro.set_rng_seed(seed)
    grads = likelihood_gradients(
        setup.scaled_model, setup.scaled_guide, setup.x, setup.y
    )
    pyro.set_rng_seed(seed)
    again = likelihood_gradients(
        setup.scaled_model, setup.scaled_guide, setup.x, setup.y
    )
    if any(not torch.equal(grads[k], again[k]) for k in grads):
        raise RuntimeError("the seeded gradient pass is not reproducible")
    return grads


def _ours(
    setup: Setup, criterion: str, step: int, seed: int, with_kl: bool = False
) -> Any:
    """``SparseSVI.update_subspace`` at ``step``, drawing the seeded gradient.

    ``with_kl``: ``growth_includes_kl=True`` with the reference's KL annealing
    as the KL weight (the setup's handlers carry ``KL_SCALE / N``).
    """
    svi = SparseSVI(
        setup.scaled_model,
        setup.scaled_guide,
        setup.optim,
        TraceSparseMeanField_ELBO(),
        removal=CRITERIA[criterion],
        update_every=UPDATE_EVERY,
        drop_fraction=ALPHA,
        num_steps=NUM_STEPS,
        kl_weight=reference_kl_beta if with_kl else 1.0,
        growth_includes_kl=with_kl,
    )
    svi.subspace.load_state_dict({"step_count": step, "updates": []})
    pyro.set_rng_seed(seed)
    return svi.update_subspace(setup.x, setup.y)


def _max_diff(ours: LayerState, ref: LayerState) -> dict[str, float]:
    def diff(a: Tensor, b: Tensor) -> float:
        return float((a - b).abs().max())

    return {
        "loc": diff(ours.mu, ref.mu),
        "rho": diff(ours.rho, ref.rho),
        "momentum": max(
            diff(ours.momentum_mu, ref.momentum_mu),
            diff(ours.momentum_rho, ref.momentum_rho),
        ),
    }


def compare_update(setup: Setup, criterion: str, step: int, seed: int = 0) -> Row:
    """Run both updates from the same state at ``step``; the guide is changed."""
    snap = snapshot(setup)
    before = layer_states(setup)
    grads = _seeded_gradients(setup, seed)
    _ours(setup, criterion, step, seed, with_kl=True)
    after_kl = layer_states(setup)
    restore(setup, snap)
    record = _ours(setup, criterion, step, seed)
    after = layer_states(setup)
    r_ref = reference_drop_fraction(step)
    keys = ("removed", "added", "active", "removed64", "active64")
    keys += ("added_kl", "added_both_kl")
    sums: dict[str, list[int]] = {k: [0, 0] for k in keys}
    diffs = {"loc": 0.0, "rho": 0.0, "momentum": 0.0}
    counts_equal, num_nan = True, 0
    for site, old in before.items():
        ref, n_prune, nan = reference_update(old, grads[site], criterion, r_ref)
        ref64, _, _ = reference_update(
            old, grads[site], criterion, r_ref, dtype=torch.float64
        )
        # d/dmu of KL_SCALE * beta * KL / N for the coordinates active at the
        # training step (mu = 0 elsewhere), as in the reference's dense gradient.
        kl_grad = KL_SCALE * reference_kl_beta(step) / setup.num_data
        ref_kl, _, _ = reference_update(
            old,
            grads[site],
            criterion,
            r_ref,
            kl_grad=kl_grad * old.mu / PRIOR_SCALE**2,
        )
        ours = after[site]
        num_nan += nan
        counts_equal &= n_prune == record.num_dropped[site]
        pairs = {
            "removed": (old.mask & ~ours.mask, old.mask & ~ref.mask),
            "added": (ours.mask & ~old.mask, ref.mask & ~old.mask),
            "active": (ours.mask, ref.mask),
            "removed64": (old.mask & ~ours.mask, old.mask & ~ref64.mask),
            "active64": (ours.mask, ref64.mask),
            "added_kl": (ours.mask & ~old.mask, ref_kl.mask & ~old.mask),
            "added_both_kl": (
                after_kl[site].mask & ~old.mask,
                ref_kl.mask & ~old.mask,
            ),
        }
        for key, (a, b) in pairs.items():
            sums[key][0] += int((a & b).sum())
            sums[key][1] += int((a | b).sum())
        for key, value in _max_diff(ours, ref64).items():
            diffs[key] = max(diffs[key], value)
    return Row(
        setup.name,
        criterion,
        step,
        record.drop_fraction,
        r_ref,
        sum(record.num_dropped.values()),
        counts_equal,
        *(_ratio(sums[k]) for k in keys[:5]),
        diffs["loc"],
        diffs["rho"],
        diffs["momentum"],
        _ratio(sums["added_kl"]),
        _ratio(sums["added_both_kl"]),
        num_nan,
    )


# ------------------------------------------------ schedule and layer counts
def schedule_agreement(layer_sizes: list[int]) -> dict[str, Any]:
    """Update steps, drop fractions and swap counts over the whole schedule."""
    ours = [
        t
        for t in range(1, NUM_STEPS + 1)
        if update_due(t, update_every=UPDATE_EVERY, stop_at=T_END)
    ]
    ref = [t for t in range(1, NUM_STEPS + 1) if t % UPDATE_EVERY == 0 and t < T_END]
    max_diff, count_mismatches = 0.0, 0
    for t in ref:
        r = drop_fraction_at(
            t, alpha=ALPHA, schedule="cosine", update_every=UPDATE_EVERY, stop_at=T_END
        )
        r_ref = reference_drop_fraction(t)
        max_diff = max(max_diff, abs(r - r_ref))
        count_mismatches += sum(
            num_to_swap(k, r) != int(k * r_ref) for k in layer_sizes
        )
    return {
        "num_updates": len(ours),
        "num_updates_reference": len(ref),
        "same_update_steps": ours == ref,
        "max_drop_fraction_diff": max_diff,
        "swap_count_mismatches": count_mismatches,
        "swap_counts_compared": len(ref) * len(layer_sizes),
    }


def resnet18_active_counts(density: float = DENSITY) -> dict[str, Any]:
    """Active weights per sparse ResNet-18 tensor: pyro_ssvi's rule and the reference's.

    pyro_ssvi keeps ``max(1, round(d n))``; the reference zeroes
    ``int((1 - d) n)`` entries and keeps the rest.
    """
    net = resnet18_cifar(10)
    dense = set(net.ssvi_dense_parameters)
    sizes = {
        n: p.numel()
        for n, p in net.named_parameters()
        if p.dim() > 1 and n not in dense
    }
    ours = {n: max(1, round(density * s)) for n, s in sizes.items()}
    ref = {n: s - int((1 - density) * s) for n, s in sizes.items()}
    diff = {n: ours[n] - ref[n] for n in sizes if ours[n] != ref[n]}
    return {
        "sizes": sizes,
        "ours_total": sum(ours.values()),
        "reference_total": sum(ref.values()),
        "layers_differing": len(diff),
        "max_abs_layer_diff": max((abs(v) for v in diff.values()), default=0),
        "active_ours": list(ours.values()),
    }


# ------------------------------------------------------------ report
def run(
    models: list[str], *, warmup_steps: int, steps: tuple[int, ...], seed: int = 0
) -> dict[str, Any]:
    """Every comparison; returns the rows and the schedule checks."""
    rows = []
    for name in models:
        setup = build(name, warmup_steps=warmup_steps, seed=seed)
        snap = snapshot(setup)
        for criterion in CRITERIA:
            for step in steps:
                restore(setup, snap)
                rows.append(compare_update(setup, criterion, step, seed=seed + step))
    counts = resnet18_active_counts()
    return {
        "rows": [
            asdict(r) | {"exact": r.exact, "agrees_float32": r.agrees_float32}
            for r in rows
        ],
        "schedule": schedule_agreement(counts["active_ours"]),
        "resnet18_active_counts": {
            k: v for k, v in counts.items() if k != "active_ours"
        },
        "failures": [
            f"{r.model} {r.criterion} step {r.step}"
            + ("" if r.exact else " (float64 reference)")
            + ("" if r.agrees_float32 else " (float32 reference)")
            for r in rows
            if not r.exact
            or (not r.agrees_float32 and r.criterion not in FLOAT32_LIMITED)
        ],
        "float32_differing": sorted(
            {r.criterion for r in rows if not r.agrees_float32}
        ),
        "float32_inexact": sorted(
            {r.criterion for r in rows if min(r.removed_iou, r.active_iou) < 1.0}
        ),
    }


def markdown(result: dict[str, Any]) -> str:
    """The per-criterion table and the schedule lines."""
    lines = [
        "| model | criterion | step | r_t (ours / ref) | removed | removed IoU "
        "| added IoU | active IoU | active IoU vs f64 ref | max dloc | max drho "
        "| max dmom | added IoU vs growth with KL | same, ours with KL "
        "| ref NaN scores |",
        "|" + "---|" * 15,
    ]
    for r in result["rows"]:
        lines.append(
            f"| {r['model']} | {r['criterion']} | {r['step']} "
            f"| {r['drop_fraction']:.6f} / {r['drop_fraction_reference']:.6f} "
            f"| {r['num_removed']} | {r['removed_iou']:.4f} | {r['added_iou']:.4f} "
            f"| {r['active_iou']:.4f} | {r['active_iou_float64']:.4f} "
            f"| {r['max_loc_diff']:.1e} | {r['max_rho_diff']:.1e} "
            f"| {r['max_momentum_diff']:.1e} | {r['added_iou_with_kl']:.4f} "
            f"| {r['added_iou_both_with_kl']:.4f} | {r['reference_nan_scores']} |"
        )
    s = result["schedule"]
    c = result["resnet18_active_counts"]
    lines += [
        "",
        f"schedule ({EPOCHS} epochs x {STEPS_PER_EPOCH} steps, update every "
        f"{UPDATE_EVERY}, stop at {T_END}): {s['num_updates']} updates "
        f"(reference {s['num_updates_reference']}), "
        f"same steps: {s['same_update_steps']}, max |r_t - r_t ref| = "
        f"{s['max_drop_fraction_diff']:.1e}, swap counts differing: "
        f"{s['swap_count_mismatches']} of {s['swap_counts_compared']} "
        "(every update x every sparse ResNet-18 tensor)",
        f"ResNet-18 active weights at density {DENSITY} (20 sparse tensors): "
        f"pyro_ssvi {c['ours_total']:,} (round(d n) per tensor), reference "
        f"{c['reference_total']:,} (n - int((1 - d) n)); {c['layers_differing']} "
        f"tensors differ, by at most {c['max_abs_layer_diff']}",
    ]
    if result["failures"]:
        lines.append("NOT AS EXPECTED: " + "; ".join(result["failures"]))
    else:
        differing = result["float32_differing"]
        inexact = sorted(set(result["float32_inexact"]) - set(differing))
        lines.append(
            "every criterion: the float64 reference's sets, values and momenta; "
            "the float32 reference's sets"
            + (f" except {', '.join(differing)}" if differing else "")
            + (
                f" (float32 near-ties at the boundary: {', '.join(inexact)})"
                if inexact
                else ""
            )
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["mlp", "lenet"])
    parser.add_argument("--warmup-steps", type=int, default=200)
    parser.add_argument("--steps", nargs="+", type=int, default=list(UPDATE_STEPS))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=None, help="also write JSON here")
    args = parser.parse_args(argv)
    bad = [
        t
        for t in args.steps
        if not update_due(t, update_every=UPDATE_EVERY, stop_at=T_END)
    ]
    if bad:
        parser.error(
            f"--steps {bad} are not update steps (multiples of 100 below {T_END})"
        )
    start = time.perf_counter()
    result = run(
        args.models,
        warmup_steps=args.warmup_steps,
        steps=tuple(args.steps),
        seed=args.seed,
    )
    result["seconds"] = time.perf_counter() - start
    print(markdown(result))
    versions = f"torch {torch.__version__}, pyro-ppl {pyro.__version__}"
    print(f"({result['seconds']:.0f} s, {versions})")
    if args.json is not None:
        args.json.write_text(json.dumps(result, indent=2))
    return 1 if result["failures"] else 0


if __name__ == "__main__":
    sys.exit(main())
