"""Dense VI versus SSVI at several densities, on the same data and budget.

Each variant is an ordinary run directory under the comparison directory
(``autonormal/``, ``ssvi-d0.1/``, ...); the table goes to ``comparison.md``
and ``comparison.json``, the trade-off plot (SSVI against density, dense VI
as a reference line) to ``density_tradeoff.png``. On a regression data set the
table holds RMSE, test log-likelihood, NLL, 90% coverage and calibration error
(:data:`REGRESSION_COLUMNS`) and the plot RMSE, test log-likelihood, coverage
and calibration error::

    table = compare({"epochs": 15}, [0.1, 0.05], "runs/compare")
"""

from __future__ import annotations

import json
import os
from contextlib import ExitStack
from pathlib import Path
from typing import Any, Sequence

from ..distributed import is_main_process, process_group
from .checkpoint import atomic_write, write_json

__all__ = [
    "COLUMNS",
    "REGRESSION_COLUMNS",
    "TRADEOFF_METRICS",
    "compare",
    "markdown_table",
    "variant_configs",
]

#: Columns of the comparison table: (metrics key, header, format).
COLUMNS = (
    ("test_accuracy", "accuracy", "{:.4f}"),
    ("test_nll", "NLL", "{:.4f}"),
    ("test_ece", "ECE", "{:.4f}"),
    ("ood_auroc", "OOD AUROC", "{:.4f}"),
    ("num_variational_params", "variational params", "{:,}"),
    ("checkpoint_bytes", "checkpoint (MB)", "{:.2f}"),
    ("wall_time_s", "wall time (s)", "{:.0f}"),
)
#: Columns of the table for a regression data set (Monte Carlo metrics in the
#: targets' original units; test LL is the mixture log-likelihood).
REGRESSION_COLUMNS = (
    ("test_rmse", "RMSE", "{:.4g}"),
    ("test_log_likelihood", "test LL", "{:.4f}"),
    ("test_nll", "NLL", "{:.4f}"),
    ("test_coverage_90", "90% coverage", "{:.3f}"),
    ("test_calibration_error", "calibration error", "{:.4f}"),
    ("num_variational_params", "variational params", "{:,}"),
    ("checkpoint_bytes", "checkpoint (MB)", "{:.3f}"),
    ("wall_time_s", "wall time (s)", "{:.1f}"),
)
#: Metrics of the trade-off plot (``density_tradeoff.png``), by task.
TRADEOFF_METRICS = {
    "classification": ("test_accuracy", "test_nll", "test_ece", "ood_auroc"),
    "regression": (
        "test_rmse",
        "test_log_likelihood",
        "test_coverage_90",
        "test_calibration_error",
    ),
}


def _is_regression(rows: list[dict[str, Any]]) -> bool:
    return bool(rows) and rows[0].get("task") == "regression"


def _cell(key: str, fmt: str, row: dict[str, Any]) -> str:
    value = row.get(key)
    if value is None:
        return "n/a"
    if key == "checkpoint_bytes":
        value = value / 1e6
    return fmt.format(value)


def markdown_table(rows: list[dict[str, Any]]) -> str:
    """A Markdown table of comparison rows (``variant`` plus :data:`COLUMNS`).

    Rows of a regression data set (``task == "regression"``) get
    :data:`REGRESSION_COLUMNS` instead. A ``params vs dense`` column gives
    each row's variational parameters as a fraction of the dense-VI row's,
    when there is one.
    """
    columns = REGRESSION_COLUMNS if _is_regression(rows) else COLUMNS
    dense = next((r for r in rows if r["variant"] == "dense VI (AutoNormal)"), None)
    headers = ["method", "density"] + [h for _, h, _ in columns]
    if dense:
        headers.append("params vs dense")
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    for row in rows:
        cells = [row["variant"], f"{row['density']:.2f}"]
        cells += [_cell(k, f, row) for k, _, f in columns]
        if dense:
            ratio = row["num_variational_params"] / dense["num_variational_params"]
            cells.append(f"{ratio:.3f}x")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _variants(
    densities: Sequence[float], dense: bool
) -> list[tuple[str, str, dict[str, Any]]]:
    out: list[tuple[str, str, dict[str, Any]]] = []
    if dense:
        out.append(("autonormal", "dense VI (AutoNormal)", {"guide": "autonormal"}))
    for d in densities:
        out.append((f"ssvi-d{d:g}", f"SSVI d={d:g}", {"guide": "ssvi", "density": d}))
    return out


def variant_configs(
    settings: dict[str, Any], densities: Sequence[float], *, dense: bool = True
) -> list[Any]:
    """The :class:`~pyro_ssvi.app.training.TrainConfig` of each variant, checked.

    Dense VI first (if ``dense``), then SSVI at each density, as
    :func:`compare` runs them.

    Raises:
        ValueError: For bad settings or no variant at all.
    """
    from .training import TrainConfig

    variants = _variants(densities, dense)
    if not variants:
        raise ValueError("compare: nothing to run (no densities and --no-dense)")
    return [TrainConfig(**{**settings, **extra}) for _, _, extra in variants]


def compare(
    settings: dict[str, Any],
    densities: Sequence[float],
    output_dir: str | os.PathLike,
    *,
    dense: bool = True,
    overwrite: bool = False,
    resume: bool = False,
    progress: bool = True,
) -> str:
    """Train each variant with the same settings and tabulate the results.

    Args:
        settings: :class:`~pyro_ssvi.app.training.TrainConfig` fields shared by all
            variants (``guide`` and ``density`` are set per variant).
        densities: SSVI densities to run.
        output_dir: Directory of the comparison.
        dense: Include dense VI (Pyro's ``AutoNormal``).
        overwrite: Replace earlier runs in ``output_dir``.
        resume: Skip finished variants and resume unfinished ones.
        progress: Show progress bars.

    Returns:
        The Markdown table (also written to ``comparison.md``).

    The comparison owns ``output_dir`` while it runs (the lock
    ``.pyro-ssvi.lock`` there), and each variant's run its own directory: a
    second comparison or run into them is refused, changing nothing.

    Raises:
        ValueError: For bad settings or no variant at all.
        RunDirInUse: If another process owns ``output_dir`` (or a variant's
            directory).
        RunDirError: If ``output_dir`` holds runs of the variants and neither
            ``resume`` nor ``overwrite`` is set (the message says which are
            finished).
    """
    from .training import train
    from .training._lock import own_directory, own_on_rank_0

    variants = _variants(densities, dense)
    configs = variant_configs(settings, densities, dense=dense)
    out = Path(output_dir)
    # Under torchrun, join the process group once for all runs (re-joining a
    # group torchrun set up after leaving it hangs).
    with process_group(configs[0].device), ExitStack() as owned:
        own_on_rank_0(owned, own_directory(out))
        if not (resume or overwrite):
            _refuse_earlier_runs(out, [name for name, _, _ in variants])
        rows = []
        for (name, label, _), config in zip(variants, configs):
            run_dir = out / name
            done = run_dir / "metrics.json"
            if resume and done.is_file():
                metrics = json.loads(done.read_text())
            else:
                again = resume and (run_dir / "checkpoint.pt").is_file()
                metrics = train(
                    config,
                    run_dir,
                    overwrite=overwrite,
                    resume=again,
                    progress=progress,
                )
            row = {"variant": label, "run_dir": str(run_dir), **metrics}
            rows.append({**row, "config": config.to_dict()})
        table = markdown_table(rows)
        if is_main_process():
            _write_comparison(out, table, rows)
    return table


def _refuse_earlier_runs(out: Path, names: list[str]) -> None:
    """Refuse to start over a comparison that has runs, naming the right flag."""
    from .training import RunDirError

    finished = [n for n in names if (out / n / "metrics.json").is_file()]
    stopped = [
        n for n in names if n not in finished and (out / n / "checkpoint.pt").is_file()
    ]
    if not (finished or stopped):
        return
    held = []
    if finished:
        held.append(f"finished: {', '.join(finished)}")
    if stopped:
        held.append(f"stopped with a checkpoint: {', '.join(stopped)}")
    raise RunDirError(
        f"--output-dir {out} already holds runs of this comparison "
        f"({'; '.join(held)}); pass --resume to keep the finished runs and "
        "continue the others, --overwrite to train every variant anew, or "
        "choose another directory"
    )


def _write_comparison(out: Path, table: str, rows: list[dict[str, Any]]) -> None:
    from .plots import plot_density_tradeoff

    out.mkdir(parents=True, exist_ok=True)
    atomic_write(out / "comparison.md", lambda fh: fh.write(table.encode()))
    write_json(out / "comparison.json", rows)
    sparse = [r for r in rows if r.get("guide") == "ssvi"]
    dense = next((r for r in rows if r.get("guide") == "autonormal"), None)
    task = "regression" if _is_regression(rows) else "classification"
    plot_density_tradeoff(
        sparse or rows,
        out / "density_tradeoff.png",
        ys=TRADEOFF_METRICS[task],
        reference=dense if sparse else None,
    )
