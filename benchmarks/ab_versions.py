"""Step time of this checkout's SparseSVI against another checkout's, in one process.

Loads a second copy of ``pyro_ssvi`` from ``--base`` (e.g. a ``git worktree``
of an older commit) under the name ``pyro_ssvi_base`` and times the same
training step with both, alternating A B A B ... so that drift of a shared
machine hits both alike; prints the median step times and their ratio::

    git worktree add /tmp/base <commit>
    python benchmarks/ab_versions.py --base /tmp/base --threads 1

The step is ``benchmarks/run.py``'s ``ssvi`` variant: the MNIST MLP
784-400-400-10, batch 128, Adam, density 0.1, default ``SparseSVI`` options,
no subspace update inside the timed steps (``update_every`` huge). ``--paths``
times other paths a user takes too, each against the same path of the base:
``lrt`` (``local_reparameterization=True``), ``Trace_ELBO`` and
``TraceMeanField_ELBO`` (passed as the loss).
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable

import pyro
import torch


def load_base(path: Path) -> Any:
    """Import ``path/pyro_ssvi`` as the package ``pyro_ssvi_base``."""
    root = path / "pyro_ssvi"
    spec = importlib.util.spec_from_file_location(
        "pyro_ssvi_base", root / "__init__.py", submodule_search_locations=[str(root)]
    )
    if spec is None or spec.loader is None:
        raise SystemExit(f"ab_versions: no pyro_ssvi package under {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules["pyro_ssvi_base"] = module
    spec.loader.exec_module(module)
    return module


PATHS = ("default", "lrt", "Trace_ELBO", "TraceMeanField_ELBO")


def ssvi_step(
    pkg: Any, models: Any, density: float, x: Any, y: Any, path: str = "default"
) -> Callable[[], Any]:
    """One SparseSVI training step of a fresh MLP, built with ``pkg``, on
    ``path`` (one of :data:`PATHS`)."""
    net = models.mlp(784, [400, 400], 10)
    model = models.BayesianClassifier(net, num_data=50_000)
    guide = pkg.AutoSparseNormal(
        model, density=density, init_loc_fn=model.init_loc_fn()
    )
    loss = getattr(pyro.infer, path)() if path.startswith("Trace") else None
    svi = pkg.SparseSVI(
        *(model, guide, pyro.optim.Adam({"lr": 1e-3})),
        *([loss] if loss is not None else []),
        num_steps=10**9,
        update_every=10**9,
        local_reparameterization=path == "lrt",
    )
    svi.step(x, y)
    return lambda: svi.step(x, y)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base", type=Path, required=True)
    parser.add_argument("--density", type=float, default=0.1)
    parser.add_argument("--reps", type=int, default=15)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--paths", nargs="+", choices=PATHS, default=["default"])
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    pyro.settings.set(module_local_params=True)
    import pyro_ssvi
    import pyro_ssvi.app.models

    base = load_base(args.base)
    # The experiment models: pyro_ssvi.app.models (pyro_ssvi.models before 0.1.0).
    has_app = (args.base / "pyro_ssvi" / "app").is_dir()
    base_models = importlib.import_module(
        "pyro_ssvi_base.app.models" if has_app else "pyro_ssvi_base.models"
    )
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(128, 784, generator=g), torch.randint(0, 10, (128,), generator=g)
    print(f"threads {args.threads}, density {args.density}, ", end="")
    print(f"{args.reps} x {args.steps} steps")
    for path in args.paths:
        steps = {
            "base": ssvi_step(base, base_models, args.density, x, y, path),
            "this": ssvi_step(
                pyro_ssvi, pyro_ssvi.app.models, args.density, x, y, path
            ),
        }
        times: dict[str, list[float]] = {k: [] for k in steps}
        for _ in range(args.reps):
            for name, step in steps.items():
                start = time.perf_counter()
                for _ in range(args.steps):
                    step()
                times[name].append((time.perf_counter() - start) / args.steps)
        med = {k: statistics.median(v) * 1e3 for k, v in times.items()}
        print(f"{path}:")
        for k, v in med.items():
            print(f"  {k}: median {v:.2f} ms/step")
        print(f"  this / base: {med['this'] / med['base']:.3f}")


if __name__ == "__main__":
    main()
