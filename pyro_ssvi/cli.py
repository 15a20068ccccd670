"""The ``pyro-ssvi`` command.

Usage::

    pyro-ssvi train [--density 0.1] [--epochs 30] [--seed 0]

``train`` fits a Bayesian MLP with :class:`~pyro_ssvi.AutoSparseNormal` and
:class:`~pyro_ssvi.SparseSVI` on scikit-learn's bundled 8x8 digits and prints
the test accuracy and the achieved density.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Sequence

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``pyro-ssvi``."""
    parser = argparse.ArgumentParser(
        prog="pyro-ssvi",
        description="Sparse Subspace Variational Inference for Bayesian networks.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    train = sub.add_parser("train", help="train a sparse Bayesian MLP on digits")
    train.add_argument("--density", type=float, default=0.1)
    train.add_argument("--epochs", type=int, default=30)
    train.add_argument("--seed", type=int, default=0)
    return parser


def _train(density: float, epochs: int, seed: int) -> int:
    import pyro
    import torch

    from . import AutoSparseNormal, SparseSVI
    from .data import load_digits_split
    from .models import BayesianClassifier, mlp
    from .predict import predict_proba

    pyro.clear_param_store()
    pyro.set_rng_seed(seed)
    x_train, y_train, x_test, y_test = load_digits_split(seed=seed)
    model = BayesianClassifier(mlp(64, [256], 10), num_data=len(x_train))
    guide = AutoSparseNormal(model, density=density)
    batch, steps_per_epoch = 128, -(-len(x_train) // 128)
    svi = SparseSVI(
        model,
        guide,
        pyro.optim.Adam({"lr": 1e-2}),
        num_steps=epochs * steps_per_epoch,
        update_every=50,
    )
    start = time.perf_counter()
    for epoch in range(1, epochs + 1):
        perm = torch.randperm(len(x_train))
        total = 0.0
        for i in range(0, len(x_train), batch):
            idx = perm[i : i + batch]
            total += svi.step(x_train[idx], y_train[idx])
        if epoch % 10 == 0 or epoch == epochs:
            print(f"epoch {epoch:3d}  loss {total / len(x_train):.4f}")
    probs = predict_proba(model, guide, x_test, num_samples=20)
    accuracy = (probs.argmax(-1) == y_test).float().mean().item()
    print(
        f"test accuracy {accuracy:.4f}  density {guide.density:.4f}  "
        f"variational params {guide.num_variational_params()}  "
        f"subspace updates {svi.num_updates}  "
        f"time {time.perf_counter() - start:.1f}s"
    )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``pyro-ssvi``; returns the process exit code."""
    args = build_parser().parse_args(argv)
    if args.command == "train":
        if not 0.0 < args.density <= 1.0:
            print(f"pyro-ssvi: error: --density must be in (0, 1], got {args.density}")
            return 2
        return _train(args.density, args.epochs, args.seed)
    return 2  # pragma: no cover - argparse enforces a command


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
