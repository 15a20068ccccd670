"""Where a SparseSVI step spends its time: the top operators and Python calls.

Bayesian MLP 784-400-400-10 on random data, batch 128, CPU, no subspace
updates in the profiled steps::

    python benchmarks/profile_step.py [--density 0.1] [--steps 50] [--top 20]
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import time

import pyro
import torch
from torch.profiler import profile

from pyro_ssvi import AutoSparseNormal, SparseSVI
from pyro_ssvi.app.models import BayesianClassifier, mlp


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--density", type=float, default=0.1)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--top", type=int, default=20)
    parser.add_argument("--sparse-compute", choices=("off", "auto"), default="off")
    args = parser.parse_args()
    torch.manual_seed(0)
    x, y = torch.randn(128, 784), torch.randint(0, 10, (128,))
    pyro.settings.set(module_local_params=True)
    model = BayesianClassifier(mlp(784, [400, 400], 10), num_data=60000)
    guide = AutoSparseNormal(model, density=args.density)
    svi = SparseSVI(
        model,
        guide,
        pyro.optim.Adam({"lr": 1e-3}),
        update_every=10**9,
        num_steps=10**9,
        sparse_compute="auto" if args.sparse_compute == "auto" else None,
    )
    for _ in range(20):  # warm up (and let "auto" choose its paths)
        svi.step(x, y)
    start = time.perf_counter()
    for _ in range(args.steps):
        svi.step(x, y)
    ms = (time.perf_counter() - start) / args.steps * 1e3
    print(f"SparseSVI step, density {args.density}: {ms:.2f} ms\n")
    with profile() as prof:
        for _ in range(args.steps):
            svi.step(x, y)
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.top))
    calls = cProfile.Profile()
    calls.enable()
    for _ in range(args.steps):
        svi.step(x, y)
    calls.disable()
    pstats.Stats(calls).sort_stats("tottime").print_stats(args.top)


if __name__ == "__main__":
    main()
