"""What the commands print: a header, metrics and a run's summary table."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any


def _is_reporter() -> bool:
    return os.environ.get("RANK", "0") == "0"  # under torchrun, rank 0 reports


def _fmt(value: Any) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)


def _header(
    command: str, what: str, place: str = "", device: str | None = None
) -> None:
    """The first lines of a command: what runs where, with how many threads."""
    import torch

    from ..training import resolve_device

    if not _is_reporter():
        return
    where = "" if device is None else f"device {resolve_device(device)}, "
    place = f"; {place}" if place else ""
    print(f"pyro-ssvi {command}: {what}")
    threads = torch.get_num_threads()
    plural = "s" if threads != 1 else ""
    print(f"  {where}{threads} torch thread{plural}{place}")


# Metrics shown for Monte Carlo and mean-weight predictions side by side.
_PAIRED = {
    "classification": (
        ("test accuracy", "test_accuracy"),
        ("test NLL", "test_nll"),
        ("test ECE (top-label, 15 bins)", "test_ece"),
        ("test marginal CE (reference ECE)", "test_marginal_ce"),
        ("OOD AUROC (entropy)", "ood_auroc"),
        ("OOD AUROC (mutual information)", "ood_auroc_mi"),
    ),
    "regression": (
        ("test RMSE", "test_rmse"),
        ("test log-likelihood (mixture)", "test_log_likelihood"),
        ("test NLL (Gaussian)", "test_nll"),
        ("50% interval coverage", "test_coverage_50"),
        ("90% interval coverage", "test_coverage_90"),
        ("95% interval coverage", "test_coverage_95"),
        ("calibration error (19 levels)", "test_calibration_error"),
        ("aleatoric variance (mean)", "test_aleatoric_var"),
        ("epistemic variance (mean)", "test_epistemic_var"),
    ),
}


def _print_summary(metrics: dict[str, Any], out: Path) -> None:
    task = metrics.get("task", "classification")
    single = [
        ("density", metrics["density"]),
        ("variational parameters", metrics["num_variational_params"]),
        ("checkpoint size (MB)", metrics["checkpoint_bytes"] / 1e6),
        ("training FLOPs, dense VI / this run", metrics.get("train_flops_ratio")),
        ("subspace updates", metrics.get("num_updates")),
        ("wall time (s)", metrics["wall_time_s"]),
    ]
    if task == "regression":
        single.insert(2, ("noise std (learned or fixed)", metrics.get("noise_std")))
    paired = _PAIRED[task]
    width = max(len(k) for k, _ in (*paired, *single))
    mc = f"MC, {metrics['num_samples']} samples"
    units = " (metrics in target units)" if task == "regression" else ""
    print(
        f"\n{metrics['model']} on {metrics['dataset']}, guide {metrics['guide']}"
        + units
    )
    print(f"  {'':<{width}}  {mc:>15}  {'mean weights':>12}")
    for label, key in paired:
        both = _fmt(metrics.get(key)), _fmt(metrics.get(f"{key}_mean_weights"))
        print(f"  {label:<{width}}  {both[0]:>15}  {both[1]:>12}")
    for label, value in single:
        print(f"  {label:<{width}}  {_fmt(value):>15}")
    print(f"run directory: {out}")
