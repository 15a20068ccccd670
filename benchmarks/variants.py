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
* ``ssvi``: ``SparseSVI`` + ``AutoSparseNormal`` (weight sampling).
* ``ssvi_sparse``: the same samples, sparse linear layers computed from their
  active coordinates (``sparse_compute="auto"``).
* ``ssvi_lrt``: the same with local reparameterisation, dense kernels.
* ``ssvi_lrt_sparse``: local reparameterisation with ``sparse_compute="auto"``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

import pyro
import torch
import torch.nn.functional as F
from pyro.infer import SVI, Trace_ELBO
from pyro.infer.autoguide import AutoNormal
from torch import nn

from pyro_ssvi import AutoSparseNormal, SparseSVI
from pyro_ssvi._pyro_compat import pyro_optim_optimizers
from pyro_ssvi.models import BayesianClassifier, mlp, resnet18_cifar

VARIANTS = (
    "pyro_dense",
    "masked_lrt_torch",
    "ssvi",
    "ssvi_sparse",
    "ssvi_lrt",
    "ssvi_lrt_sparse",
)
NUM_DATA = 50_000


@dataclass
class Variant:
    """A benchmarked training step."""

    name: str
    step: Callable[[], Any]
    state_bytes: Callable[[], dict[str, int]]
    update_step: Callable[[], Any] | None = None
    info: Callable[[], dict[str, Any]] | None = None


def network(model: str) -> tuple[nn.Module, tuple[int, ...]]:
    """A fresh plain torch network and its input shape."""
    if model == "mlp":
        return mlp(784, [400, 400], 10), (784,)
    if model == "wide_mlp":
        return mlp(784, [4096, 4096], 10), (784,)
    if model == "resnet18":
        return resnet18_cifar(10), (3, 32, 32)
    raise ValueError(f"unknown model {model!r}")


def _tensor_bytes(tensors: Any) -> int:
    return sum(t.numel() * t.element_size() for t in tensors if torch.is_tensor(t))


def _pyro_state_bytes(guide: nn.Module, optim: Any) -> dict[str, int]:
    """Trained parameters, optimiser moments, and the rest (active indices)."""
    trained = [p for p in guide.parameters() if p.requires_grad]
    params = _tensor_bytes(trained)
    moments = 0
    for opt in pyro_optim_optimizers(optim).values():
        for state in opt.state.values():
            moments += _tensor_bytes(v for v in state.values() if v.dim() > 0)
    untrained = [p for p in guide.parameters() if not p.requires_grad]
    indices = _tensor_bytes(untrained) + _tensor_bytes(guide.buffers())
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
    net, _ = network(model_name)
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
        sparse: Any = "auto" if name.endswith("_sparse") else (False if lrt else None)
        svi = SparseSVI(
            model,
            guide,
            optim,
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
        return {"paths": dict(lrt.decisions)} if lrt is not None else {}

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
                off = torch.randperm(n)[: n - max(1, round(density * n))]
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
    net, _ = network(model_name)
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


def build(
    name: str, model_name: str, density: float, x: torch.Tensor, y: torch.Tensor
) -> Variant:
    """Build a variant by name."""
    if name == "masked_lrt_torch":
        return masked_lrt_variant(model_name, density, x, y)
    return pyro_variant(name, model_name, density, x, y)
