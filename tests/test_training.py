"""The training protocol of pyro_ssvi.app.training, shared by SSVI and dense VI.

Runs are built on slices of the embedded MNIST (and digits); each test checks
an exact answer: the same loss and gradients as the ELBO computed by hand,
the optimiser's groups, the learning rate of the resumed epoch.
"""

from __future__ import annotations

import json
import math

import pyro
import pytest
import torch
from common import TINY_REGRESSION, TINY_TRAINING

from pyro_ssvi.app.compare import compare
from pyro_ssvi.app.training import (
    ConfigError,
    FixedSubspace,
    TrainConfig,
    TrainingDiverged,
    build_run,
    evaluate_run,
    train,
    train_step,
)
from pyro_ssvi.app.training._loop import _check_finite
from pyro_ssvi.guides import AutoSparseNormal
from pyro_ssvi.poutine import scale_kl
from pyro_ssvi.reselection import SubspaceScheduler


@pytest.fixture
def module_local():
    with pyro.settings.context(module_local_params=True):
        yield


@pytest.mark.parametrize("guide", ["ssvi", "autonormal"])
@pytest.mark.parametrize("task", ["classification", "regression"])
def test_one_step_is_the_elbo_per_example_and_one_optimiser_step(
    module_local, guide, task
):
    """train_step = (negative ELBO / N).backward() and one Adam step, on the
    parameters of the ELBO module, with the same random numbers; a regressor's
    learned noise is one of them."""
    tiny = TINY_TRAINING if task == "classification" else TINY_REGRESSION
    config = TrainConfig(guide=guide, kl_weight=0.5, **tiny)
    run = build_run(config)
    noise = "model.noise_scale_unconstrained"
    assert (noise in dict(run.loss.named_parameters())) == (task == "regression")
    x, y = run.train_data.tensors[0][:64], run.train_data.tensors[1][:64]
    before = {n: p.detach().clone() for n, p in run.loss.named_parameters()}
    rng = torch.get_rng_state()
    with scale_kl(weight=0.5):
        expected = run.loss(x, y) / run.num_data
    expected.backward()
    grads = {
        n: p.grad.clone() for n, p in run.loss.named_parameters() if p.requires_grad
    }
    with torch.no_grad():
        for n, p in run.loss.named_parameters():
            p.copy_(before[n])
    torch.set_rng_state(rng)
    loss = train_step(run, x, y, kl_weight=0.5)
    assert loss == expected.item()
    moved = 0
    for name, p in run.loss.named_parameters():
        if not p.requires_grad:  # AutoSparseNormal's active indices
            assert torch.equal(p, before[name]) and name.startswith("guide.indices.")
            continue
        # Adam's first step moves every coordinate by lr * sign(grad) (up to eps).
        step = (before[name] - p.detach()) / config.lr
        active = grads[name].abs() > 1e-6
        assert torch.allclose(step[active], grads[name][active].sign(), atol=1e-2)
        moved += int(active.sum())
    assert moved > 0
    if task == "regression":  # the noise is trained with the guide
        assert not torch.equal(dict(run.loss.named_parameters())[noise], before[noise])


@pytest.mark.parametrize("guide", ["ssvi", "autonormal"])
def test_optimiser_groups_scales_without_decay_and_the_schedules(module_local, guide):
    config = TrainConfig(
        guide=guide, weight_decay=1e-3, optimizer="sgd", **TINY_TRAINING
    )
    run = build_run(config)
    decayed, scales = run.optimizer.param_groups
    assert (decayed["weight_decay"], scales["weight_decay"]) == (1e-3, 0.0)
    assert decayed["momentum"] == scales["momentum"] == config.momentum
    assert {id(p) for p in scales["params"]} == {
        id(p) for p in run.guide.scales.parameters()
    }
    trainable = [p for p in run.loss.parameters() if p.requires_grad]
    in_groups = [id(p) for g in run.optimizer.param_groups for p in g["params"]]
    assert sorted(in_groups) == sorted(id(p) for p in trainable)  # each once
    # Per-epoch cosine from lr towards 0: epoch e (0-based) at lr (1 + cos(pi e/E))/2.
    lrs = []
    for _ in range(config.epochs):
        lrs.append(run.optimizer.param_groups[0]["lr"])
        run.optimizer.step()  # (no gradients: nothing moves)
        run.lr_scheduler.step()
    assert lrs == [
        config.lr * 0.5 * (1 + math.cos(math.pi * e / 15)) for e in range(15)
    ]
    if guide == "ssvi":
        assert isinstance(run.subspace, SubspaceScheduler)
        assert run.subspace.optimizer is run.optimizer
        assert run.subspace.stop_updates_at == int(0.75 * run.total_steps)
    else:
        assert isinstance(run.subspace, FixedSubspace) and run.subspace.updates == []


def test_a_scale_that_underflowed_to_zero_counts_as_diverged(module_local):
    run = build_run(TrainConfig(**TINY_TRAINING))
    _check_finite(run, 1)  # a fresh run is fine
    name = run.guide.sparse_site_names()[0]
    with torch.no_grad():
        run.guide.subspace_params(name).scale[0] = -200.0  # softplus(-200) == 0.0
    with pytest.raises(TrainingDiverged, match=f"guide parameter scales.{name} left"):
        _check_finite(run, 1)


def test_no_subspace_update_when_updates_stop_at_once(tmp_path):
    config = TrainConfig(epochs=1, stop_updates_fraction=0.0, **TINY_TRAINING)
    metrics = train(config, tmp_path / "run", progress=False)
    assert metrics["num_updates"] == 0
    assert json.loads((tmp_path / "run" / "subspace_updates.json").read_text()) == []


def test_settings_are_checked_before_any_run_starts(tmp_path):
    # The guide's own check, at the boundary: compare trains nothing.
    with pytest.raises(ConfigError, match=r"density must be in \(0, 1\], got 0"):
        compare(TINY_TRAINING, [0.1, 0.0], tmp_path / "cmp", progress=False)
    assert not (tmp_path / "cmp").exists()
    # The library's checks are the only ones: the same message as from the object.
    with pytest.raises(ValueError) as direct:
        AutoSparseNormal(lambda: None, density=1.5)
    with pytest.raises(ConfigError) as config:
        TrainConfig(density=1.5)
    assert str(config.value) == str(direct.value)


def test_evaluate_checks_the_number_of_samples(tmp_path):
    out = tmp_path / "run"
    train(TrainConfig(epochs=1, **TINY_TRAINING), out, progress=False)
    with pytest.raises(ValueError, match="num_samples must be a positive int, got 0"):
        evaluate_run(out, num_samples=0)


# ------------------------------------------- the reference's optional rules
def test_init_scale_std_draws_each_initial_scale_from_the_folded_normal(module_local):
    """--init-scale-std s: sigma_j = |m + s z_j|, as in
    AutoSparseNormal(init_scale=(m, s))."""
    m, s = 6e-4, 5e-4
    drawn = build_run(TrainConfig(init_scale=m, init_scale_std=s, **TINY_TRAINING))
    fixed = build_run(TrainConfig(init_scale=m, **TINY_TRAINING))
    x, y = drawn.train_data.tensors[0][:8], drawn.train_data.tensors[1][:8]
    drawn.guide.setup(x, y)
    fixed.guide.setup(x, y)
    name = drawn.guide.sparse_site_names()[0]
    sigma = drawn.guide.site_posterior(name).scale.detach().double()
    const = fixed.guide.site_posterior(name).scale.detach().double()
    assert torch.allclose(const, torch.full_like(const, m), rtol=1e-5)
    # Folded normal: E = s sqrt(2/pi) exp(-m^2/2s^2) + m (1 - 2 Phi(-m/s)).
    z = torch.tensor(m / s, dtype=torch.float64)
    phi = 0.5 * (1 + torch.erf(-z / math.sqrt(2)))
    mean = s * math.sqrt(2 / math.pi) * torch.exp(-(z**2) / 2) + m * (1 - 2 * phi)
    se = math.sqrt((m**2 + s**2 - mean.item() ** 2) / sigma.numel())
    assert abs(sigma.mean().item() - mean.item()) < 4 * se
    assert sigma.min() >= 0
    with pytest.raises(ConfigError, match="--init-scale-std needs --guide ssvi"):
        TrainConfig(guide="autonormal", init_scale_std=s)


def test_regrow_scale_and_growth_with_the_kl_reach_the_scheduler(module_local):
    config = TrainConfig(
        regrow_scale=0.123,
        growth_includes_kl=True,
        kl_weight=0.5,
        kl_anneal_epochs=4,
        **TINY_TRAINING,
    )
    run = build_run(config)
    assert run.subspace.regrow_scale == 0.123
    x, y = run.train_data.tensors[0][:64], run.train_data.tensors[1][:64]
    name = run.guide.sparse_site_names()[0]
    for step in range(1, config.update_every + 1):
        before = run.guide.active_indices()[name].clone()
        train_step(run, x, y, run.kl_weight(step))
        # Epoch 1 of a 4-epoch warm-up: the growth score's KL weight is 0.5 / 4.
        assert run.subspace.growth_kl_weight() == 0.5 / 4
    assert run.subspace.num_updates == 1
    after = run.guide.active_indices()[name]
    new = ~torch.isin(after, before)
    assert new.any()
    scale = run.guide.site_posterior(name).scale.detach()
    assert torch.allclose(scale[new], torch.full_like(scale[new], 0.123), rtol=1e-5)
    assert build_run(TrainConfig(**TINY_TRAINING)).subspace.growth_kl_weight() == 0.0
