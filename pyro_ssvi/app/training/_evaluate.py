"""Evaluation of runs: metrics, FLOPs, plots, and re-evaluating saved runs."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from ...distributed import gather_rows, is_main_process, shard, world_size
from . import _regression as regression
from ._config import input_shape, ood_name
from ._run import Run, build_run, density_of, progress_bar, restore
from ._rundir import check_checkpoint_matches, load_run_state


# --------------------------------------------------------------- evaluation
def _num_active(guide: Any) -> dict[str, int]:
    """Active coordinates of every sparse site (none for dense VI)."""
    from ...guides import AutoSparseNormal

    return guide.num_active() if isinstance(guide, AutoSparseNormal) else {}


def _site_sizes(guide: Any) -> tuple[dict[str, int], dict[str, int]]:
    """``(num_active, numel)`` of every weight site (dense sites fully active).

    Weight sites are the sparse ones and those of at least two dimensions.
    """
    sparse = _num_active(guide)
    numel = {
        name: value.numel()
        for name, value in guide.median().items()
        if value.dim() >= 2 or name in sparse
    }
    return {n: sparse.get(n, size) for n, size in numel.items()}, numel


def num_variational_params(guide: Any) -> int:
    """Number of variational parameters (means and scales) of a guide.

    Counts the guide's trainable parameters: the active indices of an
    ``AutoSparseNormal`` are parameters without gradient, not counted.
    """
    return sum(p.numel() for p in guide.parameters() if p.requires_grad)


def evaluate_predictions(
    run: Run,
    data: Any,
    ood_data: Any = None,
    *,
    num_samples: int | None = None,
    progress: bool = False,
) -> tuple[dict[str, Any], Any, Any]:
    """Monte Carlo metrics on ``data`` (and OOD data) plus mean-weight metrics.

    Args:
        run: The built run.
        data: Labelled test data.
        ood_data: Out-of-distribution data, or None (always, for regression).
        num_samples: Posterior samples (default: the run's).
        progress: Show one progress bar over all passes.

    Returns:
        ``(metrics, prediction, ood_prediction)``; metric keys are prefixed
        ``test_`` (Monte Carlo), ``test_*_mean_weights`` and ``ood_`` (Monte
        Carlo) and ``ood_*_mean_weights``. For regression, the keys of
        :func:`~pyro_ssvi.app.regression.regression_metrics` (``test_rmse``,
        ``test_nll``, ``test_log_likelihood``, ``test_coverage_90``, ...) in
        the targets' original units, and the prediction is a
        :class:`~pyro_ssvi.app.regression.RegressionPrediction` in those units.
    """
    from ..metrics import classification_metrics

    k = run.config.num_samples if num_samples is None else num_samples
    sets = [data] if ood_data is None else [data, ood_data]
    # Counted in forward passes of one input: k per input, then 1 (mean weights).
    total = (k + 1) * sum(len(_sharded(d)) for d in sets)
    desc = f"final evaluation ({k} samples)"
    with progress_bar(progress, total=total, desc=desc, unit="pass") as bar:
        preds = [
            _predict(run, d, num_samples=k, on_batch=lambda n: bar.update(k * n))
            for d in sets
        ]
        means = [_predict(run, d, mean_weights=True, on_batch=bar.update) for d in sets]
    if run.statistics is not None:
        found, pred = regression.final_metrics(preds[0], means[0], run.statistics)
        return {"num_samples": k, **found}, pred, None
    pred, ood = preds[0], (preds[1] if ood_data is not None else None)
    if pred.labels is None:
        raise ValueError("evaluation data must carry labels")
    mc = classification_metrics(
        pred.probs,
        pred.labels,
        pred.mean_entropy,
        probs_ood=None if ood is None else ood.probs,
    )
    mw = classification_metrics(
        means[0].probs,
        pred.labels,
        probs_ood=means[1].probs if ood_data is not None else None,
    )
    metrics: dict[str, Any] = {"num_samples": k}
    for key, value in mc.items():
        metrics[key if key.startswith("ood_") else f"test_{key}"] = value
    for key, value in mw.items():
        name = key if key.startswith("ood_") else f"test_{key}"
        metrics[f"{name}_mean_weights"] = value
    metrics["ood_auroc_mi"] = None if ood is None else mi_auroc(pred, ood)
    metrics.setdefault("ood_auroc", None)
    metrics.setdefault("ood_auroc_mean_weights", None)
    return metrics, pred, ood


def mi_auroc(pred: Any, ood: Any) -> float:
    r"""OOD AUROC by mutual information, the epistemic score:
    :math:`I = H[\frac1S \sum_s p_s] - \frac1S \sum_s H[p_s]` of each input
    (:func:`~pyro_ssvi.app.metrics.mutual_information`), ranked by
    scikit-learn's ``roc_auc_score`` (:func:`~pyro_ssvi.app.metrics.auroc`;
    OOD positive, ties count one half).

    Args:
        pred, ood: :class:`~pyro_ssvi.app.predict.Prediction` s of the test
            and the OOD set (their ``probs`` and ``mean_entropy``).
    """
    from ..metrics import auroc, mutual_information

    return auroc(
        mutual_information(pred.probs, pred.mean_entropy),
        mutual_information(ood.probs, ood.mean_entropy),
    )


def _flops(run: Run, active: dict[str, int], numel: dict[str, int]) -> dict[str, float]:
    """Training and inference FLOPs of this run versus dense VI (spec §8)."""
    from ..flops import flops_report, layer_costs

    c = run.config
    costs = layer_costs(run.model, input_shape(c))
    report = flops_report(
        costs,
        {n: active[n] / numel[n] for n in active if n in costs},
        num_examples=run.num_data,
        epochs=c.epochs,
        batch_size=c.batch_size,
        update_every=c.update_every,
        stop_fraction=c.stop_updates_fraction,
        dense_layers=[n for n in run.model.dense_sites if n in costs],
        lrt=c.lrt,
    )
    return {
        "train_flops": report.train_flops_ssvi,
        "train_flops_dense_vi": report.train_flops_dense_vi,
        "train_flops_ratio": report.train_ratio,
        "train_flops_ratio_proportional": report.train_ratio_proportional,
        "inference_flops": report.inference_flops_sparse,
        "inference_flops_dense": report.inference_flops_dense,
    }


def final_evaluation(run: Run, out: Path, *, progress: bool = False) -> dict[str, Any]:
    from .. import plots
    from ..metrics import predictive_entropy

    metrics, pred, ood = evaluate_predictions(
        run, run.test_data, run.ood_data, progress=progress
    )
    active, numel = _site_sizes(run.guide)
    c = run.config
    metrics.update(
        {
            "model": c.model,
            "dataset": c.dataset,
            "task": c.task,
            "guide": c.guide,
            "ood_dataset": None if ood is None else ood_name(c),
            "density": density_of(run),
            "num_variational_params": num_variational_params(run.guide),
            "num_weights": sum(numel.values()),
            "num_active_weights": sum(active.values()),
            "checkpoint_bytes": (
                (out / "checkpoint.pt").stat().st_size if is_main_process() else None
            ),
            "epochs": run.epoch,
            "steps": run.epoch * run.steps_per_epoch,
            "num_updates": run.subspace.num_updates,
            "train_time_s": sum(r["epoch_time_s"] for r in run.history),
            "seed": c.seed,
            "device": str(run.device),
        }
    )
    metrics.update(_flops(run, active, numel))
    if run.statistics is not None:
        metrics.update(regression.run_facts(run.model, run.statistics))
    if run.weight_sampling is not None:
        metrics["lrt_paths"] = dict(run.weight_sampling.decisions)
    if not is_main_process():  # one writer: rank 0
        return metrics
    pdir = out / "plots"
    kind = f"MC, {metrics['num_samples']} samples"
    plots.plot_training_curves(run.history, pdir / "training_curves.png", final=metrics)
    if run.statistics is not None:
        regression.write_plots(pred, pdir, kind)
    else:
        plots.plot_reliability(
            pred.probs, pred.labels, pdir / "reliability.png", kind=kind
        )
    if ood is not None:
        plots.plot_ood_entropy(
            predictive_entropy(pred.probs),
            predictive_entropy(ood.probs),
            pdir / "ood_entropy.png",
            labels=(c.dataset, str(metrics["ood_dataset"])),
            kind=kind,
        )
    plots.plot_layer_density(active, numel, pdir / "layer_density.png")
    plots.plot_swap_fraction(
        run.subspace.updates, _num_active(run.guide), pdir / "swap_fraction.png"
    )
    return metrics


def load_run(
    path: str | os.PathLike,
    *,
    dataset: str | None = None,
    ood_dataset: str | None = None,
    data_dir: str | None = None,
    device: str | None = None,
    test_limit: int | None = None,
) -> tuple[Run, Path]:
    """A saved run's model, guide and test data, ready for analysis.

    Args:
        path: Run directory or checkpoint file.
        dataset: Load this data set's test split instead of the run's own
            (same input shape and number of classes; a regression run
            evaluates on its own split only).
        ood_dataset: OOD set (default: the run's, or the new data set's usual
            one when ``dataset`` is given; ``"none"`` to skip).
        data_dir: Directory with on-disk data sets.
        device: Device (default: the run's setting).
        test_limit: Use only the first N test examples.

    Returns:
        ``(run, checkpoint_path)``: the :class:`Run` with the checkpoint's
        guide, model, optimiser and schedule state (no training data loaded).

    Raises:
        CheckpointError: If the checkpoint is missing, corrupt or unsafe.
        ValueError: If the data set does not fit the model.

    Example::

        run, _ = load_run("runs/mnist-d0.1")
        run.guide.active_indices(), run.guide.median()
    """
    path = Path(path)
    ckpt = path / "checkpoint.pt" if path.is_dir() else path
    state, saved = load_run_state(ckpt)
    if path.is_dir():
        check_checkpoint_matches(path, saved)
    changes: dict[str, Any] = {}
    if dataset is not None and dataset != saved.dataset:
        _check_fits(saved, dataset)
        changes.update(dataset=dataset, ood_dataset=ood_dataset)
    elif ood_dataset is not None:
        changes["ood_dataset"] = ood_dataset
    for key, value in (
        ("data_dir", data_dir),
        ("device", device),
        ("test_limit", test_limit),
    ):
        if value is not None:
            changes[key] = value
    config = dataclasses.replace(saved, **changes)
    run = build_run(config, train=False, num_data=int(state["num_data"]))
    restore(run, state, source=str(ckpt))
    return run, ckpt


def _check_fits(saved: Any, dataset: str) -> None:
    """Refuse a data set whose inputs or labels the saved model does not take."""
    from ..data import DATASETS

    if saved.task == "regression":
        raise ValueError(
            f"--dataset {dataset} does not fit a model trained on {saved.dataset}: "
            "a regression run is evaluated on its own test split; drop --dataset"
        )
    a, b = DATASETS[saved.dataset], DATASETS.get(dataset)
    if b is None or (a.input_shape, a.num_classes) != (b.input_shape, b.num_classes):
        raise ValueError(
            f"--dataset {dataset} does not fit a model trained on "
            f"{saved.dataset} (inputs {a.input_shape}, {a.num_classes} classes)"
        )


def evaluate_run(
    path: str | os.PathLike,
    *,
    num_samples: int | None = None,
    progress: bool = False,
    **options: Any,
) -> dict[str, Any]:
    """Re-evaluate a saved run (a run directory or its ``checkpoint.pt``).

    Args:
        path: Run directory or checkpoint file.
        num_samples: Monte Carlo samples (default: the run's).
        progress: Show a progress bar.
        **options: ``dataset``, ``ood_dataset``, ``data_dir``, ``device``,
            ``test_limit``, as in :func:`load_run`.

    Returns:
        The metrics, as in ``metrics.json`` (``test_*``, ``ood_*``, ...; for
        regression also ``noise_std``, ``target_mean``, ``target_std``).

    Raises:
        CheckpointError: If the checkpoint is missing, corrupt or unsafe.
        ValueError: If the data set does not fit the model.
    """
    run, ckpt = load_run(path, **options)
    metrics, _, _ = evaluate_predictions(
        run, run.test_data, run.ood_data, num_samples=num_samples, progress=progress
    )
    metrics.update(dataset=run.config.dataset, checkpoint=str(ckpt), epoch=run.epoch)
    if run.statistics is not None:
        metrics.update(regression.run_facts(run.model, run.statistics))
    return metrics


def quick_eval(run: Run) -> dict[str, float]:
    """Mean-weight accuracy, NLL and ECE on the test set (per-epoch curves).

    For regression: mean-weight RMSE and Gaussian NLL, in target units.
    """
    from ..metrics import classification_metrics

    pred = _predict(run, run.test_data, mean_weights=True)
    if run.statistics is not None:
        return regression.epoch_metrics(pred, run.statistics)
    m = classification_metrics(pred.probs, pred.labels)
    return {"test_accuracy": m["accuracy"], "test_nll": m["nll"], "test_ece": m["ece"]}


def _sharded(data: Any) -> Any:
    """This rank's block of an evaluation set (all of it in one process)."""
    if world_size() == 1:
        return data
    if isinstance(data, torch.utils.data.TensorDataset):
        return torch.utils.data.TensorDataset(*(shard(t) for t in data.tensors))
    return torch.utils.data.Subset(data, shard(torch.arange(len(data))).tolist())


def _predict(run: Run, data: Any, **kwargs: Any) -> Any:
    """Streaming prediction on this rank's shard, gathered from every rank.

    A classifier's :class:`~pyro_ssvi.app.predict.Prediction`, or a regressor's
    :class:`~pyro_ssvi.app.regression.RegressionPrediction` (standardised units).
    """
    from ..predict import predict
    from ..regression import predict_regression

    kwargs.update(batch_size=run.config.eval_batch_size, device=run.device)
    method = predict if run.statistics is None else predict_regression
    pred = method(run.model, run.guide, _sharded(data), **kwargs)
    if world_size() == 1:
        return pred
    device = run.device if dist.get_backend() == "nccl" else torch.device("cpu")

    def gather(t: torch.Tensor | None) -> torch.Tensor | None:
        return None if t is None else gather_rows(t.to(device)).cpu()

    fields = [gather(t) for t in pred]
    return type(pred)(*fields)  # type: ignore[arg-type]
