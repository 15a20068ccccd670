"""SparseSVI versus dense Pyro SVI + AutoNormal: step time and guide size.

Bayesian MLP 784-400-400-10 on random data, batch 128, CPU. Variants run in
one process, alternating (A B C A B C ...) so that machine drift hits them all
alike; the report is the median step time of each and its ratio to the dense
baseline, plus the number of guide parameters.

Run::

    python benchmarks/bench_core.py [--reps 15] [--steps 5] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import pyro
import torch
from pyro.infer import SVI, Trace_ELBO, TraceMeanField_ELBO
from pyro.infer.autoguide import AutoNormal

from pyro_ssvi import AutoSparseNormal, SparseSVI
from pyro_ssvi.app.models import BayesianClassifier, mlp


def build(kind: str, x: torch.Tensor, y: torch.Tensor, density: float):
    pyro.clear_param_store()
    model = BayesianClassifier(mlp(784, [400, 400], 10), num_data=60000)
    optim = pyro.optim.Adam({"lr": 1e-3})
    if kind == "dense_trace_elbo":
        guide = AutoNormal(model)
        svi = SVI(model, guide, optim, Trace_ELBO())
    elif kind == "dense_mean_field":
        guide = AutoNormal(model)
        svi = SVI(model, guide, optim, TraceMeanField_ELBO())
    else:
        guide = AutoSparseNormal(model, density=density)
        svi = SparseSVI(model, guide, optim, num_steps=10**6)
    svi.step(x, y)  # materialise parameters and optimiser state
    return svi, sum(p.numel() for p in guide.parameters())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=15)
    parser.add_argument("--steps", type=int, default=5, help="steps per timing")
    parser.add_argument("--density", type=float, default=0.1)
    parser.add_argument("--json", help="write the results to this file")
    args = parser.parse_args()
    torch.manual_seed(0)
    x, y = torch.randn(128, 784), torch.randint(0, 10, (128,))
    kinds = ["dense_trace_elbo", "dense_mean_field", "ssvi"]
    built = {}
    for k in kinds:
        built[k] = build(k, x, y, args.density)
    times: dict[str, list[float]] = {k: [] for k in kinds}
    for _ in range(args.reps):
        for k in kinds:
            svi = built[k][0]
            start = time.perf_counter()
            for _ in range(args.steps):
                svi.step(x, y)
            times[k].append((time.perf_counter() - start) / args.steps)
    base = statistics.median(times["dense_trace_elbo"])
    rows = []
    for k in kinds:
        med = statistics.median(times[k])
        rows.append(
            {
                "variant": k,
                "median_step_ms": round(1e3 * med, 2),
                "ratio_to_dense": round(med / base, 3),
                "guide_params": built[k][1],
                "params_ratio": round(built[k][1] / built["dense_trace_elbo"][1], 4),
            }
        )
    print(
        f"torch {torch.__version__}, pyro {pyro.__version__}, "
        f"threads {torch.get_num_threads()}, density {args.density}"
    )
    print("| variant | median step (ms) | ratio | guide params | params ratio |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['variant']} | {r['median_step_ms']} | {r['ratio_to_dense']} | "
            f"{r['guide_params']} | {r['params_ratio']} |"
        )
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(rows, fh, indent=2)


if __name__ == "__main__":
    main()
