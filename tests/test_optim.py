"""GroupedStep: one multi-tensor step equals PyroOptim's per-parameter steps."""

from __future__ import annotations

import pyro
import pytest
import torch

from pyro_ssvi._optim import GroupedStep
from pyro_ssvi._pyro_compat import pyro_optim_optimizers


def _params(seed=0, prefix=None):
    """Three tensors; named in Pyro's param store when ``prefix`` is given
    (callable optim_args look parameters up by name)."""
    g = torch.Generator().manual_seed(seed)
    values = [torch.randn(n, generator=g) for n in (5, 3, 7)]
    if prefix is None:
        return [torch.nn.Parameter(v) for v in values]
    return [pyro.param(f"{prefix}{i}", v).unconstrained() for i, v in enumerate(values)]


def _grads(params, step):
    g = torch.Generator().manual_seed(100 + step)
    for p in params:
        p.grad = torch.randn(p.shape, generator=g)


OPTIMS = {
    "adam": lambda: pyro.optim.Adam({"lr": 0.05}),
    "adamw": lambda: pyro.optim.AdamW({"lr": 0.05, "weight_decay": 0.1}),
    "sgd_momentum": lambda: pyro.optim.SGD({"lr": 0.05, "momentum": 0.9}),
    "per_param_lr": lambda: pyro.optim.Adam(
        lambda name: {"lr": 0.01 * int(name[1:]) + 0.01}
    ),
    "lr_scheduler": lambda: pyro.optim.ExponentialLR(
        {"optimizer": torch.optim.Adam, "optim_args": {"lr": 0.05}, "gamma": 0.5}
    ),
    "clipped_adam": lambda: pyro.optim.ClippedAdam({"lr": 0.05, "clip_norm": 0.5}),
    "clip_args": lambda: pyro.optim.Adam({"lr": 0.05}, {"clip_norm": 0.5}),
}


@pytest.mark.parametrize("name", sorted(OPTIMS))
def test_grouped_step_equals_pyro_optim(name):
    named = name == "per_param_lr"
    a, b = _params(prefix="a" if named else None), _params(
        prefix="b" if named else None
    )
    optim_a, optim_b = OPTIMS[name](), OPTIMS[name]()
    grouped = GroupedStep(optim_b)
    for step in range(6):
        _grads(a, step)
        _grads(b, step)
        optim_a(a)
        grouped(b)
        if name == "lr_scheduler" and step == 2:
            optim_a.step()
            optim_b.step()
    for p, q in zip(a, b):
        assert torch.allclose(p, q, rtol=1e-6, atol=1e-7)
    # Each parameter keeps its own optimiser and state (moment moves, saving).
    for p, q in zip(a, b):
        sa = pyro_optim_optimizers(optim_a)[p].state[p]
        sb = pyro_optim_optimizers(optim_b)[q].state[q]
        assert sa.keys() == sb.keys()
        for key in sa:
            assert torch.allclose(torch.as_tensor(sa[key]), torch.as_tensor(sb[key]))
    assert len(pyro_optim_optimizers(optim_b)) == 3


def test_parameters_without_gradient_are_left_alone():
    params = _params()
    optim = pyro.optim.Adam({"lr": 0.1})
    grouped = GroupedStep(optim)
    _grads(params, 0)
    grouped(params)
    frozen = params[1].detach().clone()
    params[1].grad = None
    _grads([params[0], params[2]], 1)
    grouped(params)
    assert torch.equal(params[1], frozen)
