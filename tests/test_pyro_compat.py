"""Every Pyro/torch internal that pyro_ssvi._pyro_compat reaches, checked.

If a Pyro or torch release changes one of them, the matching test fails here
(loudly, with the name) instead of the library misbehaving elsewhere.
"""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import pytest
import torch
from common import classification_data, tiny_classifier
from pyro.distributions import constraints
from pyro.infer import SVI, TraceMeanField_ELBO
from pyro.infer.autoguide import AutoGuideList, AutoNormal
from pyro.nn import PyroModule, PyroParam

from pyro_ssvi import _pyro_compat as compat

X, Y = classification_data()


def test_softplus_positive_class_is_the_constraint_class():
    assert isinstance(constraints.softplus_positive, compat.SoftplusPositive)
    assert compat.SoftplusPositive is not type(constraints.positive)


def test_module_local_switch_follows_pyro_settings():
    assert compat.is_module_local_param_enabled() is False
    with pyro.settings.context(module_local_params=True):
        assert compat.is_module_local_param_enabled() is True


def test_module_context_syncs_with_the_param_store():
    class M(PyroModule):
        def __init__(self):
            super().__init__()
            self.a = PyroParam(torch.zeros(2))

        def forward(self):
            return self.a

    m = M()
    m()  # registers M.a in the store
    assert compat.param_store_name(m, "a") == "a"  # a root module's name
    old = m.a_unconstrained
    pyro.get_param_store().set_state(
        {"params": {"a": torch.nn.Parameter(torch.ones(2))}, "constraints": {}}
    )
    assert torch.equal(m.a, torch.zeros(2))  # outside a call: stale
    with compat.module_context(m):
        assert torch.equal(m.a, torch.ones(2))  # inside: synchronised
    assert m.a_unconstrained is not old


def test_param_store_names_inside_a_guide_list():
    model = tiny_classifier()
    guide = AutoGuideList(model)
    guide.append(AutoNormal(model))
    guide(X, Y)
    part = guide[0]
    name = compat.param_store_name(part, "locs.net.0.bias")
    assert name == "AutoGuideList.0.locs.net.0.bias"
    assert name in pyro.get_param_store()


def test_pyro_optim_optimizers_maps_params_to_torch_optimizers():
    model = tiny_classifier()
    guide = AutoNormal(model)
    optim = pyro.optim.ExponentialLR(
        {"optimizer": torch.optim.Adam, "optim_args": {"lr": 0.01}, "gamma": 0.9}
    )
    SVI(model, guide, optim, TraceMeanField_ELBO()).step(X, Y)
    found = compat.pyro_optim_optimizers(optim)
    params = {p for p in guide.parameters()}
    assert set(found) == params
    assert all(isinstance(o, torch.optim.Adam) for o in found.values())
    for p, opt in found.items():
        assert "exp_avg" in opt.state[p]


def test_init_messenger_and_helpers():
    def model():
        return pyro.sample("x", dist.Normal(0.0, 1.0))

    fn = compat.InitMessenger(lambda site: torch.tensor(3.0))(model)
    assert fn() == 3.0
    root = PyroModule()
    compat.deep_setattr(root, "a.b.c", PyroParam(torch.ones(1)))
    assert isinstance(root.a.b, PyroModule) and torch.equal(root.a.b.c, torch.ones(1))
    site = {"name": "y", "fn": dist.Categorical(logits=torch.zeros(2)), "value": None}
    with pytest.raises(ValueError, match="Continuous inference cannot handle"):
        with compat.helpful_support_errors(site):
            raise NotImplementedError
    assert torch.equal(
        compat.periodic_repeat(torch.tensor([1, 2]), 5, 0),
        torch.tensor([1, 2, 1, 2, 1]),
    )


def test_mean_field_check_and_subsample_pruning_are_callable():
    model = tiny_classifier()
    guide = AutoNormal(model)
    guide(X, Y)
    from pyro import poutine

    guide_trace = poutine.trace(guide).get_trace(X, Y)
    model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(
        X, Y
    )
    assert "data" in model_trace.nodes
    pruned = compat.prune_subsample_sites(model_trace)
    assert "data" not in pruned.nodes
    compat.check_mean_field_requirement(model_trace, guide_trace)


def test_torch_internals():
    t = torch.zeros(3)
    v = compat.tensor_version(t)
    t.add_(1)
    assert compat.tensor_version(t) == v + 1

    class Sub(torch.Tensor):
        @classmethod
        def __torch_function__(cls, func, types, args=(), kwargs=None):
            raise AssertionError("subclass dispatch should be off")

    s = torch.ones(2).as_subclass(Sub)
    with compat.disable_torch_function_subclass():
        assert torch.add(s, 1).sum().item() == 4.0


def test_live_optimiser_dicts_of_a_pyro_optim():
    optim = pyro.optim.ClippedAdam({"lr": 0.01})
    p = torch.nn.Parameter(torch.zeros(2))
    p.grad = torch.ones(2)
    optim([p])
    assert compat.pyro_optim_objects(optim)[p] is compat.pyro_optim_optimizers(optim)[p]
    assert p in compat.pyro_optim_grad_clip(optim)
