"""The guide's CPU softplus: the same function as torch's, to a few ulps."""

from __future__ import annotations

import pickle

import pytest
import torch
import torch.nn.functional as F
from torch.distributions import biject_to, transform_to

from pyro_ssvi import AutoSparseNormal
from pyro_ssvi._softplus import (
    MIN_NUMEL,
    FastSoftplusTransform,
    softplus,
    softplus_positive,
)


@pytest.mark.parametrize("dtype, max_ulps", [(torch.float32, 4), (torch.float64, 4)])
def test_values_within_a_few_ulps_of_the_float64_reference(dtype, max_ulps):
    # Normal range of the result only (tiny results are subnormal in float32);
    # for x > 20 torch's own softplus returns x, ours keeps log1p(exp(-x)).
    x = torch.linspace(-80.0, 20.0, 500_001, dtype=dtype)
    exact = torch.log1p(torch.exp(x.double()))  # accurate in float64 here
    rel = ((softplus(x).double() - exact).abs() / exact).max()
    assert rel <= max_ulps * torch.finfo(dtype).eps


def test_large_inputs_and_special_values():
    x = torch.tensor([30.0, 1e4, float("inf"), -float("inf"), float("nan")] * 1000)
    y = softplus(x)
    assert x.numel() >= MIN_NUMEL  # the fast path ran
    assert torch.equal(y[:3], x[:3]) and y[3] == 0 and torch.isnan(y[4])


def test_gradient_is_the_sigmoid_and_passes_gradcheck():
    x = torch.linspace(-30, 30, 4001, requires_grad=True)
    softplus(x).sum().backward()
    assert torch.equal(x.grad, torch.sigmoid(x.detach()))
    x64 = torch.randn(MIN_NUMEL, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(softplus, (x64,))


def test_small_tensors_use_torch_softplus_exactly():
    x = torch.randn(MIN_NUMEL - 1)
    assert torch.equal(softplus(x), F.softplus(x))


def test_constraint_transform_and_guide():
    t = transform_to(softplus_positive)
    assert isinstance(t, FastSoftplusTransform) and biject_to(softplus_positive) == t
    y = torch.rand(5000) * 3 + 1e-3
    assert torch.allclose(t(t.inv(y)), y, rtol=1e-5)
    x = torch.randn(5000)
    assert torch.allclose(t.log_abs_det_jacobian(x, t(x)), torch.log(torch.sigmoid(x)))
    assert AutoSparseNormal.scale_constraint is softplus_positive
    # the param store pickles constraints with its state
    assert isinstance(
        pickle.loads(pickle.dumps(softplus_positive)), type(softplus_positive)
    )
