"""The device-dependent code paths, run without a GPU.

Wherever pyro_ssvi picks a kernel, a dtype or a code path by device, these
tests run the branch a CUDA device takes on the CPU: with torch's ``meta``
device (tensors with shape, dtype and device but no data, so that a tensor
created on the CPU by mistake meets them and raises), with the device check
mocked, or on the pure function the branch uses. ``pytest -m gpu`` and
``benchmarks/gpu_check.py`` run the real thing on a GPU.
"""

from __future__ import annotations

import pyro
import pytest
import torch
import torch.distributed as torch_dist
import torch.nn.functional as F
from pyro import poutine
from torch.distributions import kl_divergence, transform_to

import pyro_ssvi.distributed as ssvi_distributed
import pyro_ssvi.layers.lazy as ssvi_lazy
from pyro_ssvi import AutoSparseNormal, SparseNormal
from pyro_ssvi._softplus import MIN_NUMEL, softplus, softplus_positive
from pyro_ssvi.app.flops import layer_costs
from pyro_ssvi.app.models import BayesianClassifier, lenet, mlp
from pyro_ssvi.app.training import resolve_device
from pyro_ssvi.layers import SparseStructure
from pyro_ssvi.poutine import (
    LazyWeight,
    LocalReparameterizationMessenger,
    local_reparameterization,
    sparse_weight_sampling,
)
from pyro_ssvi.reselection import likelihood_gradients
from pyro_ssvi.selection import move

META = torch.device("meta")


def _classifier(kind: str) -> tuple[BayesianClassifier, torch.Tensor, torch.Tensor]:
    """A model (dense hidden layer of 4096 units: a sparse site above the
    fast-softplus threshold) and a batch of its inputs."""
    if kind == "lenet":
        net, x = lenet(1, 10, 28), torch.randn(4, 1, 28, 28)
    else:
        net, x = mlp(20, [4096], 10, flatten=False), torch.randn(4, 20)
    return BayesianClassifier(net, num_data=100), x, torch.tensor([0, 1, 2, 3])


@pytest.fixture
def on_meta():
    """Model and guide built on the CPU, then moved to the meta device.

    Module-local parameters, as in ``pyro_ssvi.app.training`` (with Pyro's global
    param store see ``test_guide_to_moves_every_site_...``);
    validation off (its checks read values, which meta tensors do not have).
    """

    def build(kind: str):
        model, x, y = _classifier(kind)
        guide = AutoSparseNormal(model, density=0.1).setup(x, y)
        return model.to(META), guide.to(META), x.to(META), y.to(META)

    with pyro.settings.context(module_local_params=True), pyro.validation_enabled(
        False
    ):
        yield build


# ------------------------------------------------------ whole model and guide
@pytest.mark.parametrize("kind", ["mlp", "lenet"])
@pytest.mark.parametrize("handler", ["sampling", "lrt", "sparse_sampling"])
def test_model_guide_and_kl_run_on_a_non_cpu_device(on_meta, kind, handler):
    """Every tensor the guide, the LRT or weight-sampling layers and the KL
    create follows the parameters' device (dense kernels: CSR building needs
    data, see the structure test below)."""
    model, guide, x, y = on_meta(kind)
    context = {
        "sampling": poutine.block(hide=[]),
        "lrt": local_reparameterization(sparse=False),
        "sparse_sampling": sparse_weight_sampling(sparse=False),
    }[handler]
    with context:
        guide_trace = poutine.trace(guide).get_trace(x, y)
        model_trace = poutine.trace(poutine.replay(model, guide_trace)).get_trace(x, y)
    assert model_trace.nodes["_RETURN"]["value"].shape == (4, 10)
    assert model_trace.nodes["_RETURN"]["value"].device == META
    for name in guide.site_names():
        q, p = guide_trace.nodes[name]["fn"], model_trace.nodes[name]["fn"]
        value = guide_trace.nodes[name]["value"]
        assert value.device == META and value.shape == guide.site_shape(name)
        kl = kl_divergence(q, p)
        assert kl.device == META and kl.shape == ()
    for name in guide.sparse_site_names():
        params = guide.subspace_params(name)
        assert all(t.device == META for t in params)
        # module-local parameters: the indices are an int64 buffer (issue 18)
        assert params.indices.dtype == torch.int64
        assert guide.active_indices()[name].dtype == torch.int64
        assert guide.active_indices()[name].device == META


@pytest.mark.parametrize("lrt", [False, True])
def test_addition_gradients_on_a_non_cpu_device(on_meta, lrt):
    """The scheduler's extra pass: zero probes created on the site's device."""
    model, guide, x, y = on_meta("lenet")
    context = local_reparameterization(sparse=False) if lrt else poutine.block()
    with context:
        grads = likelihood_gradients(model, guide, x, y)
    assert set(grads) == set(guide.sparse_site_names())
    for name, grad in grads.items():
        assert grad.device == META and grad.shape == guide.site_shape(name)


def test_cpu_scalars_meet_device_tensors():
    """``move`` fills new coordinates from a CPU scalar, and the addition pass
    starts its sum of log-likelihoods at a CPU zero: 0-dim CPU tensors combine
    with tensors on any device, and the result keeps the values' dtype."""
    source = torch.tensor([1, -1, 0, -1], device=META)
    for dtype in (torch.float32, torch.float64):
        values = torch.empty(4, 3, dtype=dtype, device=META)
        moved = move(values, source, 0.0)
        assert moved.device == META and moved.dtype == dtype and moved.shape == (4, 3)
    total = sum([torch.empty((), device=META)], torch.zeros(()))
    assert total.device == META


# ------------------------------------------------------------ softplus
def test_softplus_off_the_cpu_is_torchs_own():
    """Off the CPU the guide's scales use ``F.softplus``; on the CPU, above
    MIN_NUMEL elements, the fast path (a custom autograd function)."""
    x = torch.linspace(-5, 5, MIN_NUMEL, requires_grad=True)
    on_cpu = softplus(x)
    assert type(on_cpu.grad_fn).__name__ == "_SoftplusBackward"
    off_cpu = softplus(x.detach().to(META).requires_grad_())
    assert off_cpu.device == META
    assert type(off_cpu.grad_fn).__name__ == "SoftplusBackward0"
    scale = transform_to(softplus_positive)(torch.empty(MIN_NUMEL, device=META))
    assert scale.device == META


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_both_softplus_branches_agree_in_value_and_gradient(dtype):
    """A guide's scales on a GPU equal those on the CPU to a few ulps, except
    above ``F.softplus``'s threshold 20, where it returns ``x`` (gradient 1)
    and the fast path ``x + exp(-x)`` (gradient ``sigmoid(x)``): relative
    differences below ``exp(-20) / 20 = 1e-10``, visible in float64 only."""
    x = torch.linspace(-40, 40, 20_001, dtype=dtype, requires_grad=True)
    fast, exact = softplus(x), F.softplus(x)
    (g_fast,) = torch.autograd.grad(fast.sum(), x)
    (g_exact,) = torch.autograd.grad(exact.sum(), x)
    eps = torch.finfo(dtype).eps
    low = x.detach() <= 20
    torch.testing.assert_close(fast[low], exact[low], rtol=4 * eps, atol=0)
    torch.testing.assert_close(g_fast[low], g_exact[low], rtol=4 * eps, atol=0)
    high = x.detach()[~low]
    bound = torch.exp(-high) + 4 * eps * high  # plus rounding at x's ulp
    assert bool(((fast - exact)[~low].abs() <= bound).all())
    assert bool(((g_fast - g_exact)[~low].abs() <= bound).all())


# ------------------------------------------------------- sparse compute path
def _lazy_weight(handler, shape=(64, 48), k=300):
    idx = torch.randperm(shape[0] * shape[1])[:k].sort().values
    post = SparseNormal(torch.randn(k), torch.rand(k) + 0.1, idx, shape)
    return LazyWeight(post, "w", handler), post


def test_auto_sparse_compute_is_timed_once_per_device(monkeypatch):
    """``sparse="auto"`` keys its timing by device (and dtype, shapes): a
    choice made on the CPU is not reused on a GPU, and is checkpointed."""
    timed = []

    def fake_time_paths(handler, post, x, lrt):
        timed.append(x.device.type)
        return (1.0, 0.5) if x.device.type == "cpu" else (1.0, 0.9)

    monkeypatch.setattr(ssvi_lazy, "_time_paths", fake_time_paths)
    handler = LocalReparameterizationMessenger(sparse="auto")
    weight, _ = _lazy_weight(handler, shape=(256, 192), k=4800)  # timed: large
    x = torch.randn(8, 192)
    assert handler._use_sparse(weight, x) is True  # 0.5 < 0.8 * 1.0
    assert handler._use_sparse(weight, x.to(META)) is False  # 0.9 >= 0.8
    assert handler._use_sparse(weight, x) and timed == ["cpu", "meta"]
    again = LocalReparameterizationMessenger(sparse="auto")
    again.load_state_dict(handler.state_dict())
    assert again._use_sparse(weight, x.to(META)) is False and timed == ["cpu", "meta"]


@pytest.mark.parametrize("lrt", [False, True])
def test_timing_synchronises_the_gpu_around_every_run(monkeypatch, lrt):
    """On CUDA, kernels are asynchronous: each timed run is bracketed by
    ``torch.cuda.synchronize(x.device)`` (3 runs of each of the 2 paths)."""
    handler = LocalReparameterizationMessenger(sparse="auto")
    _, post = _lazy_weight(handler)
    x = torch.randn(8, 48)
    synced = []
    with monkeypatch.context() as m:
        m.setattr(torch.Tensor, "is_cuda", property(lambda self: True))
        m.setattr(torch.cuda, "synchronize", lambda device=None: synced.append(device))
        dense, sparse = ssvi_lazy._time_paths(handler, post, x, lrt)
    assert dense > 0 and sparse > 0
    assert synced == [x.device] * 12


@pytest.mark.parametrize("index_dtype", [torch.int32, torch.int64, torch.float64])
def test_csr_structure_is_torchs_layout_with_int64_indices(index_dtype):
    """The CSR pointers and columns (and the transpose's) equal torch's own
    conversion of the dense matrix, in one index dtype (int32 on the CPU, to
    save memory; int64 elsewhere, as torch converts); the guide's stored
    float64 indices convert exactly."""
    shape = (7, 13)
    idx = torch.randperm(7 * 13)[:20].sort().values
    structure = SparseStructure(idx.to(index_dtype).long(), shape)
    for dtype in (torch.float32, torch.float64):
        values = torch.randn(20, dtype=dtype)
        dense = torch.zeros(7 * 13, dtype=dtype).index_put_((idx,), values)
        dense = dense.reshape(shape)
        for got, want in (
            (structure.matrix(values), dense.to_sparse_csr()),
            (structure.matrix_t(values), dense.T.contiguous().to_sparse_csr()),
        ):
            assert got.crow_indices().dtype == got.col_indices().dtype == torch.int32
            assert torch.equal(got.crow_indices().long(), want.crow_indices())
            assert torch.equal(got.col_indices().long(), want.col_indices())
            assert torch.equal(got.values(), want.values())
            assert got.values().dtype == dtype and got.device == idx.device


# ------------------------------------------------------------ indices
@pytest.mark.parametrize(
    "module_local, index_dtype", [(True, torch.int64), (False, torch.float64)]
)
def test_guide_indices_stay_exact_through_moves_and_casts(module_local, index_dtype):
    """``guide.to(device, dtype)``, ``.half()``, ``.float()``: the active
    indices stay exact integers wherever the guide goes: int64 buffers of the
    module in module-local mode, float64 params in Pyro's param store (which
    keeps only floating tensors)."""
    pyro.clear_param_store()
    with pyro.settings.context(module_local_params=module_local):
        model, x, y = _classifier("mlp")
        guide = AutoSparseNormal(model, density=0.1).setup(x, y)
        before = {k: v.clone() for k, v in guide.active_indices().items()}
        for move_guide in (
            lambda g: g.half(),
            lambda g: g.to(torch.float64),
            lambda g: g.float(),
        ):
            move_guide(guide)
            for name in guide.sparse_site_names():
                assert guide.subspace_params(name).indices.dtype == index_dtype
            assert all(
                torch.equal(guide.active_indices()[k], v) for k, v in before.items()
            )
        if not module_local:
            return  # a param-store guide's parameters live in the store
        guide.to(META, torch.float32)
        for name in guide.sparse_site_names():
            loc, _, indices = guide.subspace_params(name)
            assert indices.dtype == index_dtype and indices.device == META
            assert loc.dtype == torch.float32 and loc.device == META


def test_guide_to_moves_every_site_when_torch_replaces_parameters():
    """With Pyro's global param store, when torch replaces the Parameter objects
    on .to()/.double() (overwrite_module_params_on_conversion, or a device such
    as meta), the moved tensors win over the store's old ones (the sparse
    sites used to stay behind)."""
    model, x, y = _classifier("mlp")
    guide = AutoSparseNormal(model, density=0.1).setup(x, y)
    old = torch.__future__.get_overwrite_module_params_on_conversion()
    torch.__future__.set_overwrite_module_params_on_conversion(True)
    try:
        guide.double()
        with pyro.validation_enabled(False):
            trace = poutine.trace(guide).get_trace(x.double(), y)
    finally:
        torch.__future__.set_overwrite_module_params_on_conversion(old)
    dtypes = {trace.nodes[n]["value"].dtype for n in guide.site_names()}
    assert dtypes == {torch.float64}


# ------------------------------------------------------------ elsewhere
def test_flops_counts_on_a_non_cpu_device_fork_that_devices_rng(monkeypatch):
    """``layer_costs`` runs one forward pass on the network's device, with that
    device's RNG forked (the CPU's alone on the CPU): same counts anywhere."""
    forked = []
    real_fork_rng = torch.random.fork_rng

    def spy(devices=None, *args, **kwargs):
        forked.append((list(devices or []), kwargs.get("device_type")))
        return real_fork_rng(devices, *args, **kwargs)

    monkeypatch.setattr(torch.random, "fork_rng", spy)
    on_cpu = layer_costs(lenet(1, 10, 28), (1, 28, 28))
    on_meta = layer_costs(lenet(1, 10, 28).to(META), (1, 28, 28))
    assert on_meta == on_cpu
    assert forked == [([], None), ([META], "meta")]  # cuda: ([cuda:0], "cuda")


def test_priors_and_initial_values_follow_the_model_to_its_device():
    model, x, y = _classifier("lenet")
    model.to(META)
    with pyro.validation_enabled(False):
        trace = poutine.trace(model).get_trace(x.to(META), y.to(META))
    init = model.init_loc_fn()
    for name in list(model.initial_values):  # each is released once used
        site = trace.nodes[name]
        assert site["fn"].mean.device == META
        value = init(site)
        assert value.device == META and value.shape == site["fn"].event_shape


def test_device_choice_with_and_without_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("auto") == torch.device("cuda")
    assert resolve_device("cuda:1") == torch.device("cuda", 1)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")
    with pytest.raises(ValueError, match="--device cuda: CUDA is not available"):
        resolve_device("cuda")


@pytest.mark.parametrize("backend", ["nccl", "gloo"])
def test_index_checksums_go_to_the_gpu_for_nccl_only(monkeypatch, backend):
    """NCCL all-gathers CUDA tensors only; gloo takes CPU tensors."""
    moved = []
    monkeypatch.setattr(ssvi_distributed, "is_distributed", lambda: True)
    monkeypatch.setattr(torch_dist, "get_backend", lambda group=None: backend)
    monkeypatch.setattr(torch_dist, "get_world_size", lambda group=None: 2)

    def all_gather(parts, tensor, group=None):
        for part in parts:
            part.copy_(tensor)

    monkeypatch.setattr(torch_dist, "all_gather", all_gather)
    monkeypatch.setattr(torch.Tensor, "cuda", lambda self: moved.append(1) or self)
    model, x, y = _classifier("mlp")
    guide = AutoSparseNormal(model, density=0.1).setup(x, y)
    ssvi_distributed.check_indices_agree([guide], step=100)
    assert moved == ([1] if backend == "nccl" else [])
