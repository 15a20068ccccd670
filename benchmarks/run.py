"""Benchmark suite: step time, memory and state size of SSVI versus dense VI.

One command (not part of the test suite)::

    python benchmarks/run.py                       # everything, CPU
    python benchmarks/run.py --models mlp --densities 0.1 --reps 5
    python benchmarks/run.py --device cuda --out benchmarks/results/gpu

For every model and density the variants of ``benchmarks/variants.py`` run in
ONE process, alternating A B C D E A B C D E ... (``--reps`` rounds of
``--steps`` steps each) so that drift of a shared machine hits them alike;
the report gives median step times and their ratios to dense Pyro
(``SVI`` + ``AutoNormal``) measured in the same rounds. Also reported: bytes of
variational parameters plus optimiser state (and index buffers or masks),
the peak memory of each variant run alone in a subprocess, and the cost of a
step with a subspace update relative to a plain step. Results go to
``<out>/results.json``, ``<out>/results.md`` and ``<out>/step_time.png``.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from variants import VARIANTS, available, build, network  # noqa: E402

DENSITIES = (1.0, 0.2, 0.1, 0.05, 0.02)
MODELS = {"mlp": 128, "mlp2048": 128, "wide_mlp": 128, "resnet18": 32}  # batch


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _data(model: str, batch: int, device: torch.device) -> tuple[torch.Tensor, ...]:
    _, shape = network(model)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, *shape, generator=g).to(device)
    y = torch.randint(0, 10, (batch,), generator=g).to(device)
    return x, y


def _timed(fn: Any, steps: int, device: torch.device) -> float:
    _sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        fn()
    _sync(device)
    return (time.perf_counter() - start) / steps


def bench_density(
    model: str, density: float, variants: list[str], args: argparse.Namespace
) -> list[dict[str, Any]]:
    """Alternating timing of all variants at one density."""
    device = torch.device(args.device)
    batch = args.batch or MODELS[model]
    x, y = _data(model, batch, device)
    torch.manual_seed(0)
    built = {}
    for name in variants:
        try:
            v = build(name, model, density, x, y)
            _timed(v.step, 2, device)  # warm-up (allocator, sparse-path timing)
        except Exception as e:  # one variant that fails here must not stop the rest
            first = f"{type(e).__name__}: {e}".splitlines()[0]
            print(f"{model} d={density:g}: {name} failed: {first}", file=sys.stderr)
            continue
        built[name] = v
    variants = list(built)
    times: dict[str, list[float]] = {n: [] for n in variants}
    updates: dict[str, list[float]] = {n: [] for n in variants}
    plain: dict[str, list[float]] = {n: [] for n in variants}
    reps = args.reps if model != "resnet18" else max(2, args.reps // 3)
    for _ in range(reps):
        for name, v in built.items():
            times[name].append(_timed(v.step, args.steps, device))
            if v.update_step is not None and args.update_cost:
                plain[name].append(_timed(v.step, 1, device))
                updates[name].append(_timed(v.update_step, 1, device))
    base = statistics.median(times["pyro_dense"]) if "pyro_dense" in times else None
    rows = []
    for name, v in built.items():
        med = statistics.median(times[name])
        row: dict[str, Any] = {
            "model": model,
            "density": density,
            "variant": name,
            "batch": batch,
            "median_step_ms": 1e3 * med,
            "ratio_to_pyro_dense": None if base is None else med / base,
            "state_bytes": v.state_bytes(),
        }
        if updates[name]:
            extra = statistics.median(updates[name]) - statistics.median(plain[name])
            row["update_extra_ms"] = 1e3 * extra
            row["update_fraction_at_100"] = max(extra, 0.0) / (100 * med)
        if v.info is not None:
            row.update(v.info())
        rows.append(row)
    for reference, key in (
        ("masked_lrt_torch", "ratio_to_masked_lrt"),
        ("bayesian_torch", "ratio_to_bayesian_torch"),
        ("floor", "ratio_to_floor"),
        ("torch_ssvi", "ratio_to_torch_ssvi"),
        ("ssvi", "ratio_to_ssvi"),
    ):
        ref = next((r for r in rows if r["variant"] == reference), None)
        for row in rows:
            if ref is not None:
                row[key] = row["median_step_ms"] / ref["median_step_ms"]
    del built
    return rows


def peak_memory_mb(model: str, variant: str, density: float, device: str) -> float:
    """Peak resident memory of the variant run alone, minus the process baseline.

    The child allocates large blocks with ``mmap`` (glibc's
    ``MALLOC_MMAP_THRESHOLD_=65536``), so memory the warm-up freed goes back to
    the system instead of being reused unseen by the measured steps.
    """
    cmd = [sys.executable, __file__, "--_peak", model, variant, str(density), device]
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, env=env)
    return float(out.stdout.strip().splitlines()[-1])


def _status_kb(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{key} not in /proc/self/status")


def _peak_child(model: str, variant: str, density: float, device: str) -> None:
    """Peak memory of the variant's training steps: its state plus a step.

    Everything the process holds before the variant is built (imports, the
    data) is subtracted; one-time set-up work (the guide's first trace, the
    fast path's check, sparse-path timing) runs before the high-water mark is
    reset, so the figure is the steady state the steps need.
    """
    dev = torch.device(device)
    x, y = _data(model, MODELS[model], dev)
    warm = build(variant, model, density, x, y)  # imports, lazy inits, caches
    _timed(warm.step, 2, dev)
    del warm
    gc.collect()
    if dev.type == "cuda":
        base = torch.cuda.memory_allocated(dev)
    else:
        base = _status_kb("VmRSS") * 1024
    v = build(variant, model, density, x, y)
    _timed(v.step, 2, dev)  # set-up steps
    gc.collect()
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    else:  # reset the high-water mark (Linux) to the current resident size
        Path("/proc/self/clear_refs").write_text("5")
    _timed(v.step, 3, dev)
    if dev.type == "cuda":
        peak = torch.cuda.max_memory_allocated(dev) - base
    else:
        peak = _status_kb("VmHWM") * 1024 - base
    print(peak / 2**20)


def markdown(rows: list[dict[str, Any]]) -> str:
    """The results as a Markdown table."""
    head = (
        "| model | density | variant | step (ms) | vs dense Pyro | vs bayesian-torch "
        "| vs floor | vs ssvi | vs masked LRT | state MB (params+opt) | index MB "
        "| peak MB | update cost @100 | paths |"
    )
    lines = [head, "|" + "---|" * 14]

    def fmt(value: Any, spec: str, unit: str = "") -> str:
        return "n/a" if value is None else format(value, spec) + unit

    for r in rows:
        sb = r["state_bytes"]
        paths = ",".join(sorted(set(r.get("paths", {}).values()))) or "-"
        paths += f" ({r['step']})" if "step" in r else ""
        lines.append(
            f"| {r['model']} | {r['density']:g} | {r['variant']} "
            f"| {r['median_step_ms']:.1f} "
            f"| {fmt(r.get('ratio_to_pyro_dense'), '.3f', 'x')} "
            f"| {fmt(r.get('ratio_to_bayesian_torch'), '.3f', 'x')} "
            f"| {fmt(r.get('ratio_to_floor'), '.2f', 'x')} "
            f"| {fmt(r.get('ratio_to_ssvi'), '.2f', 'x')} "
            f"| {fmt(r.get('ratio_to_masked_lrt'), '.3f', 'x')} "
            f"| {(sb['params'] + sb['optimizer']) / 2**20:.2f} "
            f"| {sb['indices'] / 2**20:.2f} | {fmt(r.get('peak_mb'), '.0f')} "
            f"| {fmt(r.get('update_fraction_at_100'), '.4f')} | {paths} |"
        )
    return "\n".join(lines) + "\n"


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    """Step time versus density, one panel per model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = sorted({r["model"] for r in rows}, key=list(MODELS).index)
    fig, axes = plt.subplots(
        1, len(models), figsize=(5 * len(models), 4), squeeze=False
    )
    for ax, model in zip(axes[0], models):
        for variant in VARIANTS:
            pts = sorted(
                (r["density"], r["median_step_ms"])
                for r in rows
                if r["model"] == model and r["variant"] == variant
            )
            if pts:
                ax.plot(*zip(*pts), marker="o", label=variant)
        ax.set(
            xscale="log",
            yscale="log",
            xlabel="density",
            ylabel="step time (ms)",
            title=model,
        )
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--_peak":
        _peak_child(sys.argv[2], sys.argv[3], float(sys.argv[4]), sys.argv[5])
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    parser.add_argument("--densities", nargs="+", type=float, default=DENSITIES)
    parser.add_argument(
        "--variants",
        nargs="+",
        choices=VARIANTS,
        help="default: all (on the CPU without ssvi_sparse, which is ssvi there)",
    )
    parser.add_argument(
        "--batch",
        type=int,
        help="minibatch size of every model (default: 128, ResNet-18 32)",
    )
    parser.add_argument("--reps", type=int, default=9, help="alternating rounds")
    parser.add_argument("--steps", type=int, default=3, help="steps per timing")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--no-memory", dest="memory", action="store_false")
    parser.add_argument("--no-update-cost", dest="update_cost", action="store_false")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/cpu"))
    parser.add_argument(
        "--append",
        action="store_true",
        help="keep the rows already in <out>/results.json (re-measured ones replaced)",
    )
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.variants is None:
        cpu = torch.device(args.device).type == "cpu"
        args.variants = [v for v in VARIANTS if not (cpu and v == "ssvi_sparse")]
    args.variants = [v for v in args.variants if available(v)]
    args.out.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, Any]] = []
    if args.append and (args.out / "results.json").is_file():
        rows = json.loads((args.out / "results.json").read_text())["rows"]
    for model in args.models:
        for density in args.densities:
            start = time.perf_counter()
            new = bench_density(model, density, list(args.variants), args)
            if args.memory:
                for row in new:
                    row["peak_mb"] = peak_memory_mb(
                        model, row["variant"], density, args.device
                    )
            done = {(r["model"], r["density"], r["variant"]) for r in new}
            rows = [
                r for r in rows if (r["model"], r["density"], r["variant"]) not in done
            ]
            rows += new
            _write(args, rows)  # after every density: a crash loses nothing
            print(
                f"{model} d={density:g}: {time.perf_counter() - start:.0f}s",
                file=sys.stderr,
            )
            print(markdown(new), file=sys.stderr)
    print(markdown(rows))


def _write(args: argparse.Namespace, rows: list[dict[str, Any]]) -> None:
    """Write results.json, results.md and the plot (rows sorted for reading)."""
    order = {m: i for i, m in enumerate(MODELS)}
    rows.sort(
        key=lambda r: (order[r["model"]], -r["density"], VARIANTS.index(r["variant"]))
    )
    meta = {
        "machine": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "device": args.device,
        "gpu": torch.cuda.get_device_name() if args.device.startswith("cuda") else None,
        "reps": args.reps,
        "steps": args.steps,
    }
    (args.out / "results.json").write_text(
        json.dumps({"meta": meta, "rows": rows}, indent=2)
    )
    (args.out / "results.md").write_text(markdown(rows))
    plot(rows, args.out / "step_time.png")


if __name__ == "__main__":
    main()
