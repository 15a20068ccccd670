"""Training-step variants compared by ``benchmarks/run.py``.

Each builder returns a :class:`Variant`: a ``step()`` callable that takes one
training step on a fixed minibatch, a ``state_bytes()`` callable (variational
parameters plus optimiser state, and index buffers), and optionally an
``update_step()`` that takes a step with a subspace update.

* ``pyro_dense``: Pyro's ``SVI`` + ``AutoNormal`` + ``Trace_ELBO`` (the dense
  VI a Pyro user writes).
* ``masked_lrt_torch``: the SSVI reference implementation's approach in plain
  PyTorch: dense mean and rho tensors, a mask multiplied in, LRT forward,
  masked KL, Adam, masks re-applied to parameters, gradients and moments.
* ``ssvi``: ``SparseSVI`` + ``AutoSparseNormal`` with default options (weight
  sampling; on the CPU ``sparse_compute="auto"``: sparse linear layers
  computed from their active coordinates where that is faster).
* ``ssvi_trace_elbo``, ``ssvi_mean_field_elbo``: ``SparseSVI`` with
  Pyro's ``Trace_ELBO()`` or ``TraceMeanField_ELBO()`` passed, as a Pyro
  user writes it (both take the direct step, like the default loss).
* ``ssvi_dense``: the same samples, every layer on dense kernels
  (``sparse_compute=False``).
* ``ssvi_sparse``: ``sparse_compute="auto"`` on every device (on the CPU the
  same as ``ssvi``; on a GPU, where the default is dense kernels, it measures
  whether the sparse ones pay there).
* ``ssvi_lrt``: local reparameterisation, dense kernels.
* ``ssvi_lrt_sparse``: local reparameterisation with ``sparse_compute="auto"``.
* ``torch_ssvi``: a hand-written SSVI step in plain PyTorch, the same maths
  (active means and scales, one weight draw, closed-form KL with the inactive
  zeros, likelihood scaled to the data set) and the kernels pyro_ssvi ships
  (``sparse_linear`` for sparse linear layers), one multi-tensor Adam.
* ``floor``: a deterministic network with the same active weights and the
  same kernels, one multi-tensor Adam: what any sparse training step costs.
* ``bayesian_torch``: IntelLabs' bayesian-torch mean-field layers
  (``dnn_to_bnn``, reparameterisation), the peer a user would pick; only
  when the package is installed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

import pyro
import torch
import torch.nn.functional as F
from pyro.infer import SVI, Trace_ELBO, TraceMeanField_ELBO
from pyro.infer.autoguide import AutoNormal
from torch import nn

from pyro_ssvi import AutoSparseNormal, SparseSVI
from pyro_ssvi._pyro_compat import pyro_optim_optimizers
from pyro_ssvi.app.models import BayesianClassifier, mlp, resnet18_cifar
from pyro_ssvi.layers.sparse import SparseStructure, sparse_linear

VARIANTS = (
    "pyro_dense",
    "masked_lrt_torch",
    "bayesian_torch",
    "ssvi",
    "ssvi_trace_elbo",
    "ssvi_mean_field_elbo",
    "ssvi_dense",
    "ssvi_sparse",
    "ssvi_lrt",
    "ssvi_lrt_sparse",
    "torch_ssvi",
    "floor",
)


def available(name: str) -> bool:
    """Whether a variant can run here (bayesian-torch is optional)."""
    if name != "bayesian_torch":
        return True
    try:
        import bayesian_torch  # noqa: F401
    except ImportError:
        return False
    return True


NUM_DATA = 50_000
#: The loss a SparseSVI variant passes (others: SparseSVI's default).
LOSSES = {"ssvi_trace_elbo": Trace_ELBO, "ssvi_mean_field_elbo": TraceMeanField_ELBO}


@dataclass
class Variant:
    """A benchmarked training step."""

    name: str
    step: Callable[[], Any]
    state_bytes: Callable[[], dict[str, int]]
    update_step: Callable[[], Any] | None = None
    info: Callable[[], dict[str, Any]] | None = None


def network(
    model: str, device: torch.device | str = "cpu"
) -> tuple[nn.Module, tuple[int, ...]]:
    """A fresh plain torch network on ``device`` and its input shape."""
    if model == "mlp":
        net, shape = mlp(784, [400, 400], 10), (784,)
    elif model == "mlp2048":
        net, shape = mlp(784, [2048, 2048], 10), (784,)
    elif model == "wide_mlp":
        net, shape = mlp(784, [4096, 4096], 10), (784,)
    elif model == "resnet18":
        net, shape = resnet18_cifar(10), (3, 32, 32)
    else:
        raise ValueError(f"unknown model {model!r}")
    return net.to(device), shape


def _tensor_bytes(tensors: Any) -> int:
    return sum(t.numel() * t.element_size() for t in tensors if torch.is_tensor(t))


def _pyro_state_bytes(guide: nn.Module, optim: Any) -> dict[str, int]:
    """Trained parameters, optimiser moments, and the rest (the active indices
    that ``AutoSparseNormal`` stores beside its parameters, and buffers)."""
    trained = [p for p in guide.parameters() if p.requires_grad]
    params = _tensor_bytes(trained)
    moments = 0
    for opt in pyro_optim_optimizers(optim).values():
        for state in opt.state.values():
            moments += _tensor_bytes(v for v in state.values() if v.dim() > 0)
    stored = guide.indices.parameters() if hasattr(guide, "indices") else []
    indices = _tensor_bytes(stored) + _tensor_bytes(guide.buffers())
    return {"params": params, "optimizer": moments, "indices": indices}


def pyro_variant(
    name: str, model_name: str, density: float, x: torch.Tensor, y: torch.Tensor
) -> Variant:
    """One of the Pyro-based variants on a fresh model.

    Variants share a process. The SSVI variants keep their parameters in
    their modules (module-local params); plain Pyro's ``SVI`` cannot train a
    model's plain parameters (batch norm) that way, so the dense baseline
    runs in the global param store, scoped to itself.
    """
    if name == "pyro_dense":
        return _scoped(lambda: _pyro_variant(name, model_name, density, x, y))
    pyro.settings.set(module_local_params=True)
    return _pyro_variant(name, model_name, density, x, y)


def _scoped(make: Callable[[], Variant]) -> Variant:
    """Run a variant's build and steps in its own global param store."""
    state: dict[str, Any] = {"params": {}, "constraints": {}}

    def scoped(fn: Callable[[], Any]) -> Callable[[], Any]:
        def run() -> Any:
            with pyro.settings.context(module_local_params=False):
                with pyro.get_param_store().scope(state):
                    return fn()

        return run

    v = scoped(make)()
    return Variant(v.name, scoped(v.step), v.state_bytes, None, v.info)


def _pyro_variant(
    name: str, model_name: str, density: float, x: torch.Tensor, y: torch.Tensor
) -> Variant:
    net, _ = network(model_name, x.device)
    model = BayesianClassifier(net, num_data=NUM_DATA)
    optim = pyro.optim.Adam({"lr": 1e-3})
    if name == "pyro_dense":
        guide: Any = AutoNormal(model, init_loc_fn=model.init_loc_fn())
        svi: Any = SVI(model, guide, optim, Trace_ELBO())
    else:
        guide = AutoSparseNormal(
            model,
            density=density,
            dense_sites=model.dense_sites,
            init_loc_fn=model.init_loc_fn(),
        )
        lrt = name.startswith("ssvi_lrt")
        sparse: Any = {"ssvi_dense": False, "ssvi_lrt": False}.get(name, "auto")
        if name in ("ssvi", "ssvi_trace_elbo", "ssvi_mean_field_elbo"):
            sparse = None  # the default
        loss = LOSSES[name]() if name in LOSSES else None
        svi = SparseSVI(
            model,
            guide,
            optim,
            loss,
            num_steps=10**9,
            update_every=10**9,
            local_reparameterization=lrt,
            sparse_compute=sparse,
        )
    svi.step(x, y)  # parameters and optimiser state exist from here on

    def update_step() -> Any:
        svi.subspace.update_every = 1
        try:
            return svi.step(x, y)
        finally:
            svi.subspace.update_every = 10**9

    def info() -> dict[str, Any]:
        lrt = getattr(svi, "lazy_weights", None)
        out = {"paths": dict(lrt.decisions)} if lrt is not None else {}
        if getattr(svi, "path", None) is not None:
            out["step"] = svi.path  # "direct" or "traced"
        return out

    return Variant(
        name,
        lambda: svi.step(x, y),
        lambda: _pyro_state_bytes(guide, optim),
        update_step if name != "pyro_dense" else None,
        info,
    )


class MaskedLRTNet(nn.Module):
    """The reference code's masked Bayesian layers, in plain PyTorch."""

    def __init__(self, net: nn.Module, density: float, prior_std: float = 1.0):
        super().__init__()
        self.net = net
        self.prior_std = prior_std
        self.layers = [
            m for m in net.modules() if isinstance(m, (nn.Linear, nn.Conv2d))
        ]
        self.rho = nn.ParameterList()
        self.masks = []
        for i, layer in enumerate(self.layers):
            rho = torch.full_like(layer.weight, math.log(math.expm1(0.01)))
            mask = torch.ones_like(layer.weight, dtype=torch.bool)
            if i > 0 or isinstance(layer, nn.Linear):  # dense stem, as the reference
                n = layer.weight.numel()
                off = torch.randperm(n, device=mask.device)
                off = off[: n - max(1, round(density * n))]
                mask.view(-1)[off] = False
            self.rho.append(nn.Parameter(rho))
            self.masks.append(mask)
            layer.weight.data.mul_(mask)
            layer.forward = self._lrt_forward(i, layer)  # one pass per layer

    def _lrt_forward(self, i: int, layer: nn.Module) -> Callable[..., torch.Tensor]:
        def forward(x: torch.Tensor) -> torch.Tensor:
            mask = self.masks[i]
            var_w = F.softplus(self.rho[i]) ** 2 * mask
            if isinstance(layer, nn.Linear):
                mean = F.linear(x, layer.weight * mask, layer.bias)
                var = F.linear(x * x, var_w)
            else:
                kw = dict(
                    stride=layer.stride,
                    padding=layer.padding,
                    dilation=layer.dilation,
                    groups=layer.groups,
                )
                mean = F.conv2d(x, layer.weight * mask, layer.bias, **kw)
                var = F.conv2d(x * x, var_w, None, **kw)
            return mean + torch.sqrt(var + 1e-8) * torch.randn_like(mean)

        return forward

    def kl(self) -> torch.Tensor:
        total = 0.0
        for i, layer in enumerate(self.layers):
            mask = self.masks[i]
            sigma = F.softplus(self.rho[i])
            kl = (
                math.log(self.prior_std)
                - torch.log(sigma)
                + (sigma**2 + layer.weight**2) / (2 * self.prior_std**2)
                - 0.5
            )
            total = total + (kl * mask).sum()
        return total

    def apply_masks(self, optimizer: torch.optim.Optimizer) -> None:
        with torch.no_grad():
            for i, layer in enumerate(self.layers):
                mask = self.masks[i]
                for p in (layer.weight, self.rho[i]):
                    p.mul_(mask)
                    for v in optimizer.state.get(p, {}).values():
                        if torch.is_tensor(v) and v.shape == p.shape:
                            v.mul_(mask)


def masked_lrt_variant(
    model_name: str, density: float, x: torch.Tensor, y: torch.Tensor
) -> Variant:
    """The reference approach: dense tensors, masks, LRT, Adam."""
    net, _ = network(model_name, x.device)
    bnn = MaskedLRTNet(net, density)
    optimizer = torch.optim.Adam(bnn.parameters(), lr=1e-3)

    def step() -> float:
        loss = F.cross_entropy(bnn.net(x), y) + bnn.kl() / NUM_DATA
        optimizer.zero_grad()
        loss.backward()
        for i, layer in enumerate(bnn.layers):
            layer.weight.grad.mul_(bnn.masks[i])
            bnn.rho[i].grad.mul_(bnn.masks[i])
        optimizer.step()
        bnn.apply_masks(optimizer)
        return float(loss.detach())

    step()

    def state_bytes() -> dict[str, int]:
        weights = [layer.weight for layer in bnn.layers]
        params = _tensor_bytes(weights) + _tensor_bytes(bnn.rho)
        variational = {id(p) for p in weights} | {id(r) for r in bnn.rho}
        moments = sum(
            _tensor_bytes(v for v in s.values() if v.dim() > 0)
            for p, s in optimizer.state.items()
            if id(p) in variational
        )
        return {
            "params": params,
            "optimizer": moments,
            "indices": _tensor_bytes(bnn.masks),
        }

    return Variant("masked_lrt_torch", step, state_bytes)


class SparseLayers:
    """The active weights of a plain network's layers, as pyro_ssvi keeps them.

    Every linear and convolution layer but a dense stem (the first conv of a
    ResNet, as in SSVI) gets ``k = round(density * n)`` random active
    coordinates; linear layers at density < 1 run on ``sparse_linear``
    (the kernel of pyro_ssvi's sparse compute), convolutions on the weight
    scattered to its dense shape.
    """

    def __init__(self, net: nn.Module, density: float) -> None:
        self.layers = [
            m for m in net.modules() if isinstance(m, (nn.Linear, nn.Conv2d))
        ]
        self.indices, self.structures = [], []
        self.shapes = [layer.weight.shape for layer in self.layers]
        for i, layer in enumerate(self.layers):
            n = layer.weight.numel()
            dense = i == 0 and isinstance(layer, nn.Conv2d)
            k = n if dense else max(1, round(density * n))
            idx = torch.randperm(n, device=layer.weight.device)[:k].sort().values
            self.indices.append(idx)
            sparse = isinstance(layer, nn.Linear) and k < n
            self.structures.append(
                SparseStructure(idx, tuple(layer.weight.shape)) if sparse else None
            )

    def take_active(self) -> nn.ParameterList:
        """The layers' active weight values as parameters; each dense weight
        is dropped (an empty tensor is left for shape lookups)."""
        values = nn.ParameterList(
            nn.Parameter(layer.weight.detach().reshape(-1)[idx].clone())
            for layer, idx in zip(self.layers, self.indices)
        )
        for layer in self.layers:
            del layer.weight
            layer.weight = torch.empty(0)
        return values

    def patch(self, weights: Callable[[int], torch.Tensor]) -> None:
        """Make layer ``i`` compute with ``weights(i)`` (its active values)."""
        for i, layer in enumerate(self.layers):
            layer.forward = self._forward(i, layer, weights)

    def _forward(
        self, i: int, layer: nn.Module, weights: Callable[[int], torch.Tensor]
    ) -> Callable[[torch.Tensor], torch.Tensor]:
        structure, idx, shape = self.structures[i], self.indices[i], self.shapes[i]
        dense = idx.numel() == shape.numel()

        def forward(x: torch.Tensor) -> torch.Tensor:
            values = weights(i)
            if structure is not None:
                out = sparse_linear(x, values, structure)
                return out if layer.bias is None else out + layer.bias
            if dense:  # all active (in index order: a permutation of the tensor)
                w = values.new_empty(shape.numel()).index_copy(0, idx, values)
            else:
                w = values.new_zeros(shape.numel()).index_copy(0, idx, values)
            if isinstance(layer, nn.Conv2d):
                return layer._conv_forward(x, w.view(shape), layer.bias)
            return F.linear(x, w.view(shape), layer.bias)

        return forward


def floor_variant(
    model_name: str, density: float, x: torch.Tensor, y: torch.Tensor
) -> Variant:
    """A deterministic network on the same active weights and kernels."""
    net, _ = network(model_name, x.device)
    sparse = SparseLayers(net, density)
    values = sparse.take_active()
    sparse.patch(lambda i: values[i])
    params = list(values) + [p for p in net.parameters()]
    optimizer = torch.optim.Adam(params, lr=1e-3, foreach=True)
    step = _torch_step(lambda: F.cross_entropy(net(x), y), optimizer)
    return Variant("floor", step, lambda: _torch_state_bytes(params, optimizer, sparse))


def _torch_step(
    loss_fn: Callable[[], torch.Tensor], optimizer: Any
) -> Callable[[], float]:
    """A plain torch training step on ``loss_fn()``, taken once (warm-up)."""

    def step() -> float:
        loss = loss_fn()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return float(loss.detach())

    step()
    return step


def torch_ssvi_variant(
    model_name: str, density: float, x: torch.Tensor, y: torch.Tensor
) -> Variant:
    """SSVI written by hand in plain PyTorch: the same maths and kernels."""
    net, _ = network(model_name, x.device)
    sparse = SparseLayers(net, density)
    locs = sparse.take_active()
    rho0 = math.log(math.expm1(0.01))
    rhos = nn.ParameterList(nn.Parameter(torch.full_like(loc, rho0)) for loc in locs)
    shapes = sparse.shapes
    draws: list[torch.Tensor] = []
    sparse.patch(lambda i: draws[i])
    params = list(locs) + list(rhos) + [p for p in net.parameters()]
    optimizer = torch.optim.Adam(params, lr=1e-3, foreach=True)
    half_log_2pi = 0.5 * math.log(2 * math.pi)

    def loss() -> torch.Tensor:
        draws.clear()
        kl = 0.0
        for loc, rho, shape in zip(locs, rhos, shapes):
            scale = F.softplus(rho)
            draws.append(loc + scale * torch.randn_like(loc))
            # KL(N(loc, scale^2) || N(0, 1)) on the active set, and -log N(0; 0, 1)
            # at the n - k inactive zeros (the prior's scale is 1).
            kl = kl + (0.5 * (scale**2 + loc**2 - 1) - scale.log()).sum()
            kl = kl + (shape.numel() - loc.numel()) * half_log_2pi
        nll = F.cross_entropy(net(x), y, reduction="sum") * (NUM_DATA / len(x))
        return nll + kl

    step = _torch_step(loss, optimizer)
    return Variant(
        "torch_ssvi", step, lambda: _torch_state_bytes(params, optimizer, sparse)
    )


def bayesian_torch_variant(
    model_name: str, density: float, x: torch.Tensor, y: torch.Tensor
) -> Variant:
    """bayesian-torch's dense mean-field layers (its documented recipe)."""
    from bayesian_torch.models.dnn_to_bnn import dnn_to_bnn, get_kl_loss

    net, _ = network(model_name, x.device)
    dnn_to_bnn(
        net,
        {
            "prior_mu": 0.0,
            "prior_sigma": 1.0,
            "posterior_mu_init": 0.0,
            "posterior_rho_init": -4.6,
            "type": "Reparameterization",
            "moped_enable": False,
        },
    )
    net.to(x.device)  # the converted layers' new parameters
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-3)
    step = _torch_step(
        lambda: F.cross_entropy(net(x), y) + get_kl_loss(net) / NUM_DATA, optimizer
    )
    params = list(net.parameters())
    return Variant(
        "bayesian_torch", step, lambda: _torch_state_bytes(params, optimizer, None)
    )


def _torch_state_bytes(
    params: list[torch.Tensor], optimizer: torch.optim.Optimizer, sparse: Any
) -> dict[str, int]:
    moments = sum(
        _tensor_bytes(v for v in s.values() if v.dim() > 0)
        for s in optimizer.state.values()
    )
    indices = _tensor_bytes(sparse.indices) if sparse is not None else 0
    return {"params": _tensor_bytes(params), "optimizer": moments, "indices": indices}


def build(
    name: str, model_name: str, density: float, x: torch.Tensor, y: torch.Tensor
) -> Variant:
    """Build a variant by name."""
    if name == "masked_lrt_torch":
        return masked_lrt_variant(model_name, density, x, y)
    if name == "floor":
        return floor_variant(model_name, density, x, y)
    if name == "torch_ssvi":
        return torch_ssvi_variant(model_name, density, x, y)
    if name == "bayesian_torch":
        return bayesian_torch_variant(model_name, density, x, y)
    return pyro_variant(name, model_name, density, x, y)
