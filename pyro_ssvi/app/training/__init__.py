"""Training runs: configuration, the training loop, checkpoints and evaluation.

This is the library behind ``pyro-ssvi train``; it never sees command-line
flags. A run writes one directory::

    config.json            the resolved configuration (and versions)
    metrics.jsonl          one JSON line per epoch
    metrics.json           final metrics (written last: marks a finished run)
    checkpoint.pt          guide, model, optimiser, LR and subspace schedules,
                           RNG state
                           (written before the epoch's line in metrics.jsonl)
    subspace_updates.json  per-update record of swapped coordinates
    active_start.pt        the active sets at the start (packed masks)
    plots/*.png            training curves, reliability, OOD entropy, density,
                           swaps, active sets at start and end (regression:
                           calibration, predictions; PLOTS_BY_TASK)
    .pyro-ssvi.lock        the lock of the process that owns the directory
                           while it runs (empty; see RunDirInUse), and beside
                           it, while one runs, its record (.pyro-ssvi.lock.owner)

Example::

    from pyro_ssvi.app.training import TrainConfig, train
    metrics = train(TrainConfig(epochs=5, density=0.1), "runs/mnist-d0.1")
    metrics["test_accuracy"], metrics["ood_auroc"]

    # a regression data set: the UCI protocol's settings, metrics in target units
    metrics = train(TrainConfig.from_recipe("uci", dataset="diabetes"), "runs/diabetes")
    metrics["test_rmse"], metrics["test_log_likelihood"], metrics["test_coverage_90"]
"""

from ._choices import MODELS, dataset_tasks
from ._components import FixedSubspace, kl_weight_at, lr_factor
from ._config import TrainConfig
from ._errors import (
    ConfigError,
    RunDirError,
    RunInterrupted,
    RunStopped,
    TrainingDiverged,
)
from ._evaluate import (
    evaluate_predictions,
    evaluate_run,
    load_run,
    mi_auroc,
    num_variational_params,
)
from ._lock import LOCK_FILE, RunDirInUse, own_directory, own_output_file
from ._loop import train, train_step
from ._recipes import RECIPES
from ._run import Run, build_run, resolve_device
from ._rundir import (
    PLOTS,
    PLOTS_BY_TASK,
    RUN_FILES,
    prepare_run_dir,
    resume_config,
    saved_config,
)

__all__ = [
    "ConfigError",
    "FixedSubspace",
    "LOCK_FILE",
    "MODELS",
    "PLOTS",
    "PLOTS_BY_TASK",
    "RECIPES",
    "RUN_FILES",
    "Run",
    "RunDirError",
    "RunDirInUse",
    "RunInterrupted",
    "RunStopped",
    "TrainConfig",
    "TrainingDiverged",
    "build_run",
    "dataset_tasks",
    "evaluate_predictions",
    "evaluate_run",
    "kl_weight_at",
    "load_run",
    "lr_factor",
    "mi_auroc",
    "num_variational_params",
    "own_directory",
    "own_output_file",
    "prepare_run_dir",
    "resolve_device",
    "resume_config",
    "saved_config",
    "train",
    "train_step",
]
