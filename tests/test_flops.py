"""Tests for pyro_ssvi.app.flops: exact MAC counts, the spec's reference numbers,
Bayesian nets, and properties of the training-FLOPs accounting."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pyro.poutine
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from pyro_ssvi.app import flops
from pyro_ssvi.app.flops import LayerCost, flops_report, layer_costs
from pyro_ssvi.app.models import (
    DENSE_PARAMETERS_ATTR,
    BayesianClassifier,
    lenet,
    make_bayesian,
    mlp,
    resnet18_cifar,
)

# The reference CIFAR run (spec §7): 50k images, 200 epochs, batch 128, ΔT 100,
# stop at 75%.
CIFAR_RUN = dict(num_examples=50_000, epochs=200, batch_size=128)


def small_conv_net() -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=2, dilation=2, groups=4),
        nn.Conv2d(8, 4, (1, 3), stride=(1, 2), bias=False),
        nn.Flatten(start_dim=2),
        nn.Conv1d(4, 6, 3),
        nn.Conv1d(6, 6, 3, stride=3, padding=1, groups=6),
        nn.Flatten(),
        nn.Linear(18, 2),
    )


# Hand counts for small_conv_net on (3, 9, 9): MACs = weights x output positions.
SMALL_CONV_COSTS = {
    # 8*3*3*3 = 216 weights; (9 + 2 - 3) // 2 + 1 = 5 -> 5x5 = 25 positions
    "0.weight": ("conv", 216, 216 * 25),
    # 8*(8/4)*3*3 = 144; dilated kernel spans 5: (5 + 4 - 5) + 1 = 5 -> 25
    "2.weight": ("conv", 144, 144 * 25),
    # 4*8*1*3 = 96; H 5, W (5 - 3) // 2 + 1 = 2 -> 10
    "3.weight": ("conv", 96, 96 * 10),
    # 6*4*3 = 72; length 10 - 3 + 1 = 8
    "5.weight": ("conv", 72, 72 * 8),
    # depthwise 6*1*3 = 18; (8 + 2 - 3) // 3 + 1 = 3
    "6.weight": ("conv", 18, 18 * 3),
    # 6 channels x 3 positions = 18 features -> 2 units
    "8.weight": ("linear", 36, 36),
}


@pytest.fixture(scope="module")
def resnet_costs() -> dict[str, LayerCost]:
    return layer_costs(resnet18_cifar(10), (3, 32, 32))


def as_tuples(costs: dict[str, LayerCost]) -> dict[str, tuple[str, int, int]]:
    return {name: (c.kind, c.numel, c.macs) for name, c in costs.items()}


# --------------------------------------------------------------------------
# layer_costs: exact counts


def test_mlp_macs_are_exact():
    costs = layer_costs(mlp(12, [5], 3), (3, 2, 2))
    assert as_tuples(costs) == {
        "1.weight": ("linear", 60, 60),
        "3.weight": ("linear", 15, 15),
    }
    assert all(name == c.name for name, c in costs.items())


def test_linear_counts_every_position_of_a_sequence():
    # Linear(6, 2) applied to 4 positions: 12 weights x 4 = 48 MACs.
    assert as_tuples(layer_costs(nn.Linear(6, 2), (4, 6))) == {
        "weight": ("linear", 12, 48)
    }


def test_conv_macs_with_stride_padding_groups_dilation_and_conv1d():
    assert as_tuples(layer_costs(small_conv_net(), (3, 9, 9))) == SMALL_CONV_COSTS


def test_conv3d_macs():
    # 4*2*2*2*2 = 64 weights; (4 - 2) // 2 + 1 = 2 per axis -> 8 positions.
    net = nn.Sequential(nn.Conv3d(2, 4, 2, stride=2))
    assert as_tuples(layer_costs(net, (2, 4, 4, 4))) == {"0.weight": ("conv", 64, 512)}


def test_layer_called_twice_counts_twice_and_unused_layer_counts_zero():
    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.shared = nn.Linear(4, 4)
            self.unused = nn.Linear(4, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.shared(self.shared(x))

    assert as_tuples(layer_costs(Net(), (4,))) == {
        "shared.weight": ("linear", 16, 32),
        "unused.weight": ("linear", 4, 0),
    }


def test_layer_costs_leaves_no_trace_on_the_net():
    net = nn.Sequential(
        nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Dropout(), nn.Linear(4, 2)
    )
    net.train()
    net[2].eval()  # mixed modes must come back exactly
    stats = {k: v.clone() for k, v in net.state_dict().items()}
    # BatchNorm1d in train mode would reject a batch of 1: the pass runs in eval.
    layer_costs(net, (3,))
    assert [m.training for m in net] == [True, True, False, True]
    assert all(torch.equal(stats[k], v) for k, v in net.state_dict().items())
    assert all(not m._forward_hooks for m in net.modules())


def test_hooks_and_modes_are_restored_when_the_forward_fails():
    net = mlp(12, [5], 3)
    with pytest.raises(RuntimeError):
        layer_costs(net, (7,))
    assert net.training
    assert all(not m._forward_hooks for m in net.modules())


# --------------------------------------------------------------------------
# layer_costs: Bayesian networks


def test_bayesian_net_gives_identical_costs_hidden_and_without_rng_use():
    expected = layer_costs(small_conv_net(), (3, 9, 9))
    net = small_conv_net()
    make_bayesian(net)
    rng = torch.get_rng_state()
    with pyro.poutine.trace() as tracer:
        costs = layer_costs(net, (3, 9, 9))
    assert costs == expected
    assert torch.equal(torch.get_rng_state(), rng)
    assert not tracer.trace.nodes  # prior samples are blocked from outer handlers


def test_lenet_bayesian_classifier_names_carry_the_net_prefix():
    # Names are parameter paths relative to the module passed in, so inside a
    # BayesianClassifier they are its sample-site names ("net." + path).
    plain = layer_costs(lenet(), (1, 28, 28))
    model = BayesianClassifier(lenet(), num_data=100)
    wrapped = layer_costs(model, (1, 28, 28))
    assert list(wrapped) == [f"net.{name}" for name in plain]
    assert [(c.kind, c.numel, c.macs) for c in wrapped.values()] == list(
        as_tuples(plain).values()
    )
    assert layer_costs(model.net, (1, 28, 28)) == plain
    assert set(model.dense_sites) <= set(wrapped)


def test_resnet18_bayesian_costs_equal_plain(resnet_costs):
    model = BayesianClassifier(resnet18_cifar(10), num_data=10)
    wrapped = layer_costs(model, (3, 32, 32))
    assert {
        name.removeprefix("net."): (c.kind, c.numel, c.macs)
        for name, c in wrapped.items()
    } == as_tuples(resnet_costs)
    # the names are the model's (and so the guide's) weight site names
    assert list(wrapped) == [n for n in model.initial_values if n.endswith("weight")]


# --------------------------------------------------------------------------
# CIFAR ResNet-18: spec Appendix C and §8


def test_resnet18_counts_match_appendix_c(resnet_costs):
    assert len(resnet_costs) == 21
    assert [c.kind for c in resnet_costs.values()].count("linear") == 1
    total_macs = sum(c.macs for c in resnet_costs.values())
    assert total_macs == 555_422_720
    assert round(total_macs / 1e6, 2) == 555.42  # App. C "555.42M"
    stem = resnet_costs["conv1.weight"]
    assert (stem.numel, stem.macs) == (1_728, 1_769_472)
    assert round(stem.macs / 1e6, 2) == 1.77  # App. C "1.77M MACs"
    numels = [c.numel for c in resnet_costs.values()]
    assert sum(numels) == 11_164_352  # App. C
    # App. C active weights are 1,728 + d (11,164,352 - 1,728), rounded down
    # (§8 "Parameters"); the reference's per-layer n - floor((1 - d) n) gives
    # up to 1 more per sparse layer (1,118,000 at d = 0.1).
    for d, active, per_layer in [(0.1, 1_117_990, 1_118_000), (0.05, 559_859, 559_869)]:
        assert math.floor(1_728 + d * (sum(numels) - 1_728)) == active
        sparse = [n - math.floor((1 - d) * n) for n in numels[1:]]
        assert 1_728 + sum(sparse) == per_layer


def test_resnet18_cifar100_counts_match_appendix_c():
    costs = layer_costs(resnet18_cifar(100), (3, 32, 32))
    assert sum(c.numel for c in costs.values()) == 11_210_432
    assert round(sum(c.macs for c in costs.values()) / 1e6, 2) == 555.47


def test_resnet18_reference_flops_match_spec_section_8(resnet_costs):
    dense = set(getattr(resnet18_cifar(10), DENSE_PARAMETERS_ATTR))
    assert dense == {"conv1.weight"}
    r10 = flops_report(resnet_costs, 0.1, dense_layers=dense, **CIFAR_RUN)
    r05 = flops_report(resnet_costs, 0.05, dense_layers=dense, **CIFAR_RUN)
    # Spec §8 "Dense ResNet-18 forward: 555.4M MACs = 1.111 GFLOPs per image".
    assert r10.forward_macs_dense == 555_422_720
    assert round(r10.inference_flops_dense / 1e9, 3) == 1.111
    # §8 "dense VI (LRT) training ≈ 6.67e16"; "dense deterministic ≈ 3.33e16".
    assert round(r10.train_flops_dense_vi / 1e16, 2) == 6.67
    no_lrt = flops_report(resnet_costs, 0.1, dense_layers=dense, lrt=False, **CIFAR_RUN)
    assert round(no_lrt.train_flops_dense_vi / 1e16, 2) == 3.33
    # §8 "SSVI at d = 0.1: forward 57.1M MACs (9.72x fewer) ... training ≈ 7.0e15,
    # ≈ 9.5x less than dense VI".
    assert r10.forward_macs_sparse == 57_134_802
    assert round(r10.forward_macs_sparse / 1e6, 1) == 57.1
    assert round(r10.forward_macs_dense / r10.forward_macs_sparse, 2) == 9.72
    assert round(r10.train_flops_ssvi / 1e15, 1) == 7.0
    assert round(r10.train_ratio, 1) == 9.5
    # §8 "SSVI at d = 0.05: forward 29.5M MACs (18.9x fewer); training ≈ 3.7e15,
    # ≈ 18x less".
    assert r05.forward_macs_sparse == 29_452_137
    assert round(r05.forward_macs_sparse / 1e6, 1) == 29.5
    assert round(r05.forward_macs_dense / r05.forward_macs_sparse, 1) == 18.9
    assert round(r05.train_flops_ssvi / 1e15, 1) == 3.7
    assert round(r05.train_ratio) == 18
    # §8 "the paper's 20x probably counts FLOPs ∝ density".
    assert r10.train_ratio_proportional == pytest.approx(10.0, rel=1e-6)
    assert r05.train_ratio_proportional == pytest.approx(20.0, rel=1e-6)
    # §8 inference: one sparse deterministic forward, 2 FLOPs per MAC.
    assert r10.inference_flops_sparse == 2 * 57_134_802


def test_density_dict_of_active_fractions_counts_active_weights_exactly(
    resnet_costs,
):
    # What a guide reports: active / numel per layer; the sparse MACs are then
    # exactly active weights x output positions.
    active = {n: c.numel - math.floor(0.9 * c.numel) for n, c in resnet_costs.items()}
    active["conv1.weight"] = 1_728
    density = {n: active[n] / c.numel for n, c in resnet_costs.items()}
    report = flops_report(
        resnet_costs, density, dense_layers={"conv1.weight"}, **CIFAR_RUN
    )
    assert report.forward_macs_sparse == sum(
        active[n] * (c.macs // c.numel) for n, c in resnet_costs.items()
    )
    assert report.per_layer[0]["density"] == 1.0


# --------------------------------------------------------------------------
# flops_report: the accounting by hand


def test_training_flops_by_hand_with_short_last_batch():
    # 10 examples, batch 4: 3 steps per epoch (4, 4, 2 examples), 2 epochs, 6 steps.
    # stop 0.75 -> T_end = floor(4.5) = 4 steps, seeing 10 + 4 = 14 examples.
    costs = {
        "a": LayerCost("a", "linear", 100, 100),
        "b": LayerCost("b", "conv", 10, 40),
    }
    run = dict(num_examples=10, epochs=2, batch_size=4, update_every=3)
    report = flops_report(costs, 0.5, dense_layers=["b"], **run)
    assert [row["macs_sparse"] for row in report.per_layer] == [50, 40]
    f_d, f_s = 2 * 140, 2 * 90
    growing = (3 * f_s * 3 + 2 * f_s + f_d) / 4
    assert report.train_flops_dense_vi == 2 * 3 * f_d * 20
    # 14 examples in the growth phase, the remaining 20 - 14 = 6 after it
    assert report.train_flops_ssvi == pytest.approx(
        2 * (growing * 14 + 3 * f_s * 6), rel=1e-12
    )
    assert report.train_ratio_proportional == 2.0  # layer "a" only
    assert (report.inference_flops_dense, report.inference_flops_sparse) == (f_d, f_s)
    no_lrt = flops_report(costs, 0.5, dense_layers=["b"], lrt=False, **run)
    assert no_lrt.train_flops_ssvi == pytest.approx(report.train_flops_ssvi / 2)
    assert no_lrt.train_ratio == pytest.approx(report.train_ratio)


def test_mlp_report_and_json_round_trip():
    costs = layer_costs(mlp(784, [400, 400], 10), (1, 28, 28))
    report = flops_report(
        costs, 0.1, num_examples=30_000, epochs=15, batch_size=128, update_every=100
    )
    assert report.forward_macs_dense == 784 * 400 + 400 * 400 + 400 * 10
    assert report.forward_macs_sparse == 47_760
    assert report.train_flops_dense_vi == 2 * 3 * 2 * 477_600 * 15 * 30_000
    as_dict = report.to_dict()
    assert json.loads(json.dumps(as_dict, allow_nan=False)) == as_dict
    as_dict["per_layer"][0]["density"] = 0.5
    assert report.per_layer[0]["density"] == 0.1


def test_stop_fraction_zero_is_static_sparse():
    costs = {"w": LayerCost("w", "linear", 1000, 1000)}
    report = flops_report(
        costs, 0.25, num_examples=7, epochs=3, batch_size=2, stop_fraction=0
    )
    assert report.train_ratio == pytest.approx(4.0, rel=1e-12)


# --------------------------------------------------------------------------
# validation


@pytest.fixture
def tiny_costs() -> dict[str, LayerCost]:
    return {"w": LayerCost("w", "linear", 10, 10), "v": LayerCost("v", "conv", 4, 8)}


RUN = dict(num_examples=10, epochs=1, batch_size=2)


@pytest.mark.parametrize("density", [0, -0.1, 1.5, float("nan"), True, "0.1"])
def test_bad_density_raises(tiny_costs, density):
    with pytest.raises(ValueError, match="density"):
        flops_report(tiny_costs, density, **RUN)
    with pytest.raises(ValueError, match="density"):
        flops_report(tiny_costs, {"w": density}, **RUN)


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(density={"x": 0.1}),
        dict(density=0.1, dense_layers={"x"}),
    ],
)
def test_unknown_layer_names_raise(tiny_costs, kwargs):
    with pytest.raises(ValueError, match=r"unknown layer names \['x'\]"):
        flops_report(tiny_costs, **kwargs, **RUN)


def test_dense_layers_conflicts_and_strings_raise(tiny_costs):
    with pytest.raises(ValueError, match="in dense_layers but has density 0.5"):
        flops_report(tiny_costs, {"w": 0.5}, dense_layers={"w"}, **RUN)
    with pytest.raises(TypeError, match="collection of names"):
        flops_report(tiny_costs, 0.1, dense_layers="w", **RUN)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "name", ["num_examples", "epochs", "batch_size", "update_every"]
)
@pytest.mark.parametrize("value", [0, -3, 2.5, True])
def test_bad_counts_raise(tiny_costs, name, value):
    with pytest.raises(ValueError, match=f"{name} must be an int >= 1"):
        flops_report(tiny_costs, 0.1, **{**RUN, name: value})


@pytest.mark.parametrize("value", [-0.1, 1.01, float("nan")])
def test_bad_stop_fraction_raises(tiny_costs, value):
    with pytest.raises(ValueError, match="stop_fraction"):
        flops_report(tiny_costs, 0.1, stop_fraction=value, **RUN)


def test_empty_or_macless_costs_raise():
    with pytest.raises(ValueError, match="empty"):
        flops_report({}, 0.1, **RUN)
    with pytest.raises(ValueError, match="no layer has any MACs"):
        flops_report({"w": LayerCost("w", "linear", 4, 0)}, 0.1, **RUN)


@pytest.mark.parametrize("shape", [(), (0, 3), (3.0,), (-1,)])
def test_layer_costs_rejects_bad_shapes(shape):
    with pytest.raises(ValueError, match="input_shape"):
        layer_costs(mlp(3, [], 1), shape)


def test_layer_costs_rejects_nets_without_layers():
    with pytest.raises(ValueError, match="no linear or conv layer"):
        layer_costs(nn.Sequential(nn.ReLU()), (3,))


# --------------------------------------------------------------------------
# properties


@st.composite
def layer_tables(draw: st.DrawFn) -> dict[str, LayerCost]:
    sizes = draw(
        st.lists(
            st.tuples(st.integers(1, 10_000), st.integers(1, 1_000)),
            min_size=1,
            max_size=6,
        )
    )
    return {
        f"l{i}": LayerCost(f"l{i}", "conv", numel, numel * positions)
        for i, (numel, positions) in enumerate(sizes)
    }


runs = st.fixed_dictionaries(
    {
        "num_examples": st.integers(1, 100_000),
        "epochs": st.integers(1, 300),
        "batch_size": st.integers(1, 512),
        "update_every": st.integers(1, 1_000),
        "stop_fraction": st.floats(0, 1),
    }
)
densities = st.floats(0.001, 1.0)


@settings(max_examples=60, deadline=None)
@given(layer_tables(), runs, densities, densities, st.booleans())
def test_ssvi_flops_monotone_in_density(costs, run, d1, d2, stem_dense):
    low, high = sorted((d1, d2))
    dense = list(costs)[:1] if stem_dense else []
    r_low = flops_report(costs, low, dense_layers=dense, **run)
    r_high = flops_report(costs, high, dense_layers=dense, **run)
    assert r_low.forward_macs_sparse <= r_high.forward_macs_sparse
    assert r_low.train_flops_ssvi <= r_high.train_flops_ssvi * (1 + 1e-12)
    assert r_low.train_flops_dense_vi == r_high.train_flops_dense_vi
    # the growth overhead and the dense layers only ever lower the ratio
    assert r_low.train_ratio <= r_low.train_ratio_proportional * (1 + 1e-12)


@settings(max_examples=60, deadline=None)
@given(layer_tables(), runs, st.booleans())
def test_full_density_costs_exactly_dense_vi(costs, run, lrt):
    # At density 1 the growth step (2 f_S + f_D) costs 3 f_D like any other.
    report = flops_report(costs, 1.0, lrt=lrt, **run)
    assert report.train_flops_ssvi == pytest.approx(
        report.train_flops_dense_vi, rel=1e-12
    )
    assert report.train_ratio_proportional == 1.0


@settings(max_examples=60, deadline=None)
@given(layer_tables(), runs, densities)
def test_ratio_tends_to_one_over_density_as_updates_get_rare(costs, run, density):
    run = {k: v for k, v in run.items() if k != "update_every"}
    ratios = [
        flops_report(costs, density, update_every=every, **run).train_ratio
        for every in (1, 10, 1_000, 10**6, 10**12)
    ]
    assert all(a <= b * (1 + 1e-12) for a, b in zip(ratios, ratios[1:]))
    # f_S differs from density * f_D only by rounding: at most 1 MAC per layer.
    macs = sum(c.macs for c in costs.values())
    assert 1 / ratios[-1] == pytest.approx(density, abs=len(costs) / macs + 1e-9)


# --------------------------------------------------------------------------
# public API


def test_public_names_are_documented():
    assert flops.__doc__ and "flops_report(" in flops.__doc__
    assert flops.__all__ == sorted(flops.__all__)
    for name in flops.__all__:
        assert getattr(flops, name).__doc__
    assert flops.FlopsReport.to_dict.__doc__


def test_import_is_cheap():
    code = (
        "import sys, pyro_ssvi.app.flops; print([m for m in ('torchvision', "
        "'matplotlib') if m in sys.modules])"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "[]"
