"""init_to_kaiming: fan-in scaled means for weights, fallback elsewhere."""

from __future__ import annotations

import math

import pyro.distributions as dist
import pytest
import torch

from pyro_ssvi import init_to_kaiming


def _site(fn, name="w"):
    return {"name": name, "fn": fn, "type": "sample", "is_observed": False}


def test_weight_draws_have_kaiming_variance():
    shape = (200, 50)
    value = init_to_kaiming(_site(dist.Normal(0.0, 1.0).expand(shape).to_event(2)))
    assert value.shape == shape
    n = value.numel()
    target = 2.0 / 50  # gain^2 / fan_in with gain sqrt(2)
    # Sample variance of n Normal draws has standard error target*sqrt(2/n).
    assert abs(value.var().item() - target) < 5 * target * math.sqrt(2 / n)
    assert abs(value.mean().item()) < 5 * math.sqrt(target / n)


def test_conv_fan_in_counts_kernel_and_custom_gain():
    init = init_to_kaiming(gain=1.0)
    value = init(_site(dist.Normal(0.0, 1.0).expand([64, 16, 3, 3]).to_event(4)))
    target = 1.0 / (16 * 9)
    n = value.numel()
    assert abs(value.var().item() - target) < 5 * target * math.sqrt(2 / n)


def test_vectors_and_constrained_sites_use_the_fallback():
    bias = init_to_kaiming(_site(dist.Normal(0.0, 1.0).expand([7]).to_event(1)))
    assert torch.equal(bias, torch.zeros(7))  # init_to_feasible
    scale = init_to_kaiming(_site(dist.LogNormal(0.0, 1.0).expand([3, 3]).to_event(2)))
    assert torch.all(scale > 0)
    with pytest.raises(ValueError, match="pass a fallback"):
        init_to_kaiming(_site(dist.Normal(0.0, 1.0)), fallback=None)
    with pytest.raises(ValueError, match="gain must be > 0"):
        init_to_kaiming(gain=0.0)
