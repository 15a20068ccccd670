"""Bayesian networks from torch modules: sites, priors, init values, scaling."""

from __future__ import annotations

import pyro
import pytest
import torch
from pyro import poutine
from torch import nn

from pyro_ssvi import AutoSparseNormal
from pyro_ssvi.app.models import (
    BayesianClassifier,
    lenet,
    make_bayesian,
    mlp,
    resnet18_cifar,
)


def _latent_sites(model, *args):
    trace = poutine.trace(model).get_trace(*args)
    return {
        name: site
        for name, site in trace.nodes.items()
        if site["type"] == "sample" and not site["is_observed"]
    }


def test_make_bayesian_priors_and_initial_values():
    net = mlp(5, [4], 3, flatten=False)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    initial = make_bayesian(net, prior_scale=0.3, bayesian_bias=False)
    assert sorted(initial) == ["0.weight", "2.weight"]
    assert all(torch.equal(initial[k], before[k]) for k in initial)
    sites = _latent_sites(net, torch.zeros(2, 5))
    assert sorted(sites) == ["0.weight", "2.weight"]
    prior = sites["0.weight"]["fn"]
    assert prior.event_shape == (4, 5) and prior.batch_shape == ()
    assert torch.all(prior.base_dist.scale == 0.3)
    # Deterministic biases stay trainable parameters.
    assert isinstance(net[0].bias, nn.Parameter)


def test_make_bayesian_norm_layers_and_exclude():
    net = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2))
    initial = make_bayesian(net, bayesian_norm=True, exclude=["2"])
    assert sorted(initial) == ["0.bias", "0.weight", "1.bias", "1.weight"]
    with pytest.raises(ValueError, match="prior_scale must be > 0"):
        make_bayesian(mlp(2, [], 2), prior_scale=0.0)
    with pytest.raises(ValueError, match="unknown modules"):
        make_bayesian(mlp(2, [], 2), exclude=["fc9"])
    with pytest.raises(ValueError, match="no linear or conv"):
        make_bayesian(nn.Sequential(nn.ReLU()))


def test_classifier_scales_likelihood_to_data_set_size():
    model = BayesianClassifier(mlp(4, [3], 2, flatten=False), num_data=100)
    x, y = torch.randn(8, 4), torch.randint(0, 2, (8,))
    obs = poutine.trace(model).get_trace(x, y).nodes["obs"]
    assert obs["scale"] == pytest.approx(100 / 8)
    with pytest.raises(ValueError, match="num_data must be >= 1"):
        BayesianClassifier(mlp(4, [3], 2), num_data=0)


def test_init_loc_fn_starts_the_guide_at_the_network_weights():
    net = mlp(4, [3], 2, flatten=False)
    w0 = net[0].weight.detach().clone()
    model = BayesianClassifier(net, num_data=10)
    guide = AutoSparseNormal(model, density=1.0, init_loc_fn=model.init_loc_fn())
    guide.setup(torch.randn(2, 4), torch.tensor([0, 1]))
    assert torch.equal(guide.median()["net.0.weight"], w0)


def test_lenet_shapes_and_dense_stem():
    for channels, size in [(1, 28), (3, 32)]:
        net = lenet(channels, 10, size)
        assert net(torch.zeros(2, channels, size, size)).shape == (2, 10)
    model = BayesianClassifier(lenet(), num_data=10)
    assert model.dense_sites == ("net.0.weight",)
    guide = AutoSparseNormal(model, density=0.1, dense_sites=model.dense_sites)
    guide.setup(torch.zeros(2, 1, 28, 28), torch.tensor([0, 1]))
    assert "net.0.weight" not in guide.sparse_site_names()
    assert guide.site_shape("net.7.weight") == (120, 400)
    with pytest.raises(ValueError, match="input_size must be >= 8"):
        lenet(input_size=4)


def test_resnet18_cifar_matches_the_reference_architecture():
    net = resnet18_cifar(10)
    assert net.conv1.stride == (1, 1) and net.conv1.kernel_size == (3, 3)
    assert isinstance(net.maxpool, nn.Identity)
    weights = [
        p for n, p in net.named_parameters() if n.endswith("weight") and p.dim() > 1
    ]
    # 21 conv/linear weight tensors, 11,164,352 weights (SSVI spec, appendix C).
    assert len(weights) == 21
    assert sum(p.numel() for p in weights) == 11_164_352
    model = BayesianClassifier(net, num_data=50_000, bayesian_bias=False)
    assert model.dense_sites == ("net.conv1.weight",)
    pyro.clear_param_store()
    guide = AutoSparseNormal(model, density=0.1, dense_sites=model.dense_sites)
    guide.setup(torch.zeros(2, 3, 32, 32), torch.tensor([0, 1]))
    assert len(guide.sparse_site_names()) == 20
    active = sum(guide.num_active().values())
    assert active == sum(
        round(0.1 * guide.site_shape(n).numel()) for n in guide.sparse_site_names()
    )
    assert active + 1728 == pytest.approx(0.1 * 11_164_352, rel=2e-3)


def test_resnet18_cifar_fc_bias_is_deterministic_as_in_the_reference():
    """The reference's Bayesian weights are its 21 conv/linear weight tensors;
    its classifier bias is a point estimate (StoLinear), so no site and no KL."""
    model = BayesianClassifier(resnet18_cifar(10), num_data=50_000)
    x, y = torch.zeros(2, 3, 32, 32), torch.tensor([0, 1])
    sites = _latent_sites(model, x, y).keys() - {"data"}  # minus the plate
    assert len(sites) == 21 and all(name.endswith(".weight") for name in sites)
    assert "net.fc.bias" not in sites and "net.fc.weight" in sites
    assert isinstance(model.net.fc.bias, nn.Parameter)
    assert "net.fc.bias" in dict(model.named_parameters())
    assert "net.fc.bias" not in model.initial_values
    # Kept Bayesian on request, either way.
    for net, kwargs in (
        (resnet18_cifar(10, bayesian_fc_bias=True), {}),
        (resnet18_cifar(10), {"deterministic": ()}),
    ):
        model = BayesianClassifier(net, num_data=50_000, **kwargs)
        sites = _latent_sites(model, x, y).keys() - {"data"}
        assert len(sites) == 22 and "net.fc.bias" in sites


def test_deterministic_parameters_marker_and_argument():
    net = mlp(5, [4], 3, flatten=False)
    net.ssvi_deterministic_parameters = ("2.bias",)
    assert sorted(make_bayesian(net)) == ["0.bias", "0.weight", "2.weight"]
    assert isinstance(net[2].bias, nn.Parameter)
    net = mlp(5, [4], 3, flatten=False)
    assert sorted(make_bayesian(net, deterministic=["0.weight"])) == [
        "0.bias",
        "2.bias",
        "2.weight",
    ]
    with pytest.raises(ValueError, match=r"unknown parameters \['fc.bias'\]"):
        make_bayesian(mlp(2, [], 2), deterministic=["fc.bias"])
    with pytest.raises(TypeError, match=r"write \['1.bias'\]"):
        make_bayesian(mlp(2, [], 2), deterministic="1.bias")
