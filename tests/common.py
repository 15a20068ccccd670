"""Small real models shared by the tests (no mocks: real Pyro, real modules)."""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import torch
from pyro.nn import PyroModule, PyroSample
from torch import nn


class LinearRegression(PyroModule):
    """``y ~ Normal(x @ w.T + b, noise)`` with ``w ~ Normal(0, prior_scale)``.

    ``w`` has shape ``(1, d)`` so that it is a sparse site by default; the
    optional bias is a scalar (dense) site. With ``bias=False`` the exact
    posterior of ``w`` is Gaussian with precision ``X^T X / noise^2 + I /
    prior_scale^2`` (see :func:`exact_posterior`).
    """

    def __init__(
        self,
        d: int,
        *,
        prior_scale: float = 1.0,
        noise: float = 0.5,
        bias: bool = False,
    ) -> None:
        super().__init__()
        self.d, self.noise, self.prior_scale = d, noise, prior_scale
        self.w = PyroSample(dist.Normal(0.0, prior_scale).expand([1, d]).to_event(2))
        self.has_bias = bias
        if bias:
            self.b = PyroSample(dist.Normal(0.0, prior_scale))

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        mean = (x @ self.w.transpose(-1, -2)).squeeze(-1)
        if self.has_bias:
            mean = mean + self.b
        with pyro.plate("data", x.shape[0]):
            pyro.sample("obs", dist.Normal(mean, self.noise), obs=y)
        return mean


def exact_posterior(
    x: torch.Tensor,
    y: torch.Tensor,
    noise: float,
    prior_scale: float,
    active: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact Gaussian posterior of regression weights restricted to ``active``.

    Returns the posterior mean ``P_AA^{-1} X_A^T y / noise^2`` and the
    mean-field optimum of the standard deviations, ``1 / sqrt(diag P_AA)``
    (mean-field VI recovers the exact mean of a Gaussian posterior and the
    inverse diagonal precision as variances).
    """
    if active is not None:
        x = x[:, active]
    precision = x.T @ x / noise**2 + torch.eye(x.shape[1], dtype=x.dtype) / (
        prior_scale**2
    )
    mean = torch.linalg.solve(precision, x.T @ y / noise**2)
    return mean, precision.diagonal().rsqrt()


def tiny_classifier(
    in_features: int = 6, hidden: int = 8, classes: int = 3, num_data: int = 32
) -> nn.Module:
    """A Bayesian two-layer MLP classifier from :mod:`pyro_ssvi.app.models`."""
    from pyro_ssvi.app.models import BayesianClassifier, mlp

    return BayesianClassifier(
        mlp(in_features, [hidden], classes, flatten=False), num_data=num_data
    )


def classification_data(
    n: int = 32, in_features: int = 6, classes: int = 3, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Linearly separable-ish Gaussian blobs."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % classes
    centres = torch.randn(classes, in_features, generator=g) * 2
    x = centres[y] + torch.randn(n, in_features, generator=g)
    return x, y


#: A few seconds of real training on the embedded MNIST (TrainConfig fields):
#: 512 training and 256 test images, a few subspace updates per epoch.
TINY_TRAINING = dict(
    train_limit=512,
    test_limit=256,
    batch_size=64,
    update_every=3,
    num_samples=3,
    lr=0.01,
)


def as_flags(settings: dict) -> list[str]:
    """``TrainConfig`` fields as ``pyro-ssvi train`` flags."""
    return [
        a for k, v in settings.items() for a in (f"--{k.replace('_', '-')}", str(v))
    ]


#: A few seconds of real regression training on scikit-learn's diabetes set
#: (398 training and 44 test examples of split 0): 7 steps per epoch,
#: subspace updates at steps 3, 6, 9, ...
TINY_REGRESSION = dict(
    dataset="diabetes",
    epochs=2,
    batch_size=64,
    update_every=3,
    num_samples=3,
    lr=0.01,
)
