"""Checking a configuration once, before any work, with one line per problem."""

from __future__ import annotations

import importlib.util
import math
from typing import TYPE_CHECKING, Any

import torch

from ...background import BACKGROUNDS
from ._choices import (
    GUIDES,
    LR_SCHEDULES,
    MODELS,
    OPTIMIZERS,
    SPARSE_COMPUTE,
    dataset_tasks,
)
from ._errors import ConfigError

if TYPE_CHECKING:
    from ._config import TrainConfig


def _choice(name: str, value: Any, options: Any) -> None:
    if value not in options:
        raise ConfigError(f"--{name} must be one of {sorted(options)}, got {value!r}")


def _positive(name: str, value: Any, *, minimum: float = 1) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"--{name} must be a number, got {value!r}")
    if not (math.isfinite(value) and value >= minimum):
        raise ConfigError(f"--{name} must be >= {minimum}, got {value!r}")


def _validate(c: TrainConfig) -> None:
    """Check a configuration once, at the boundary, before any work.

    Settings that a library object takes as an argument are checked by that
    object (see :func:`_check_with_library`), so each rule and its message
    live in one place; only what no library object owns is checked here.
    """
    from ..data import DATASETS

    _choice("model", c.model, MODELS)
    _choice("dataset", c.dataset, dataset_tasks())
    if c.ood_dataset not in (None, "none"):
        _choice("ood-dataset", c.ood_dataset, DATASETS)
    _check_hidden(c)
    if c.task == "regression":
        _check_regression(c)
    else:
        _check_classification(c)
    _choice("guide", c.guide, GUIDES)
    _choice("optimizer", c.optimizer, OPTIMIZERS)
    _choice("lr-schedule", c.lr_schedule, LR_SCHEDULES)
    _choice("sparse-compute", c.sparse_compute, SPARSE_COMPUTE)
    _choice("background", c.background, ("none", *BACKGROUNDS))
    stop = c.stop_updates_fraction
    if (
        isinstance(stop, bool)
        or not isinstance(stop, (int, float))
        or not 0 <= stop <= 1
    ):
        raise ConfigError(
            f"--stop-updates-fraction is a fraction of training in [0, 1], got {stop!r}"
        )
    for name in ("epochs", "batch_size", "num_samples", "eval_batch_size"):
        _positive(name.replace("_", "-"), getattr(c, name))
    # torch's optimisers accept lr=0 and word their errors without the fix.
    _positive("lr", c.lr, minimum=1e-30)
    for name in ("weight_decay", "momentum", "kl_anneal_epochs"):
        _positive(name.replace("_", "-"), getattr(c, name), minimum=0)
    # make_bayesian checks it only while converting a network (drawing weights).
    _positive("prior-scale", c.prior_scale, minimum=1e-30)
    if c.guide == "autonormal":  # Pyro's AutoNormal only asserts it
        _positive("init-scale", c.init_scale, minimum=1e-30)
        if c.init_scale_std:
            raise ConfigError(
                "--init-scale-std needs --guide ssvi (Pyro's AutoNormal starts "
                "every coordinate at --init-scale); drop --init-scale-std"
            )
    for name in ("train_limit", "test_limit"):
        if getattr(c, name) is not None:
            _positive(name.replace("_", "-"), getattr(c, name))
    _positive("num-workers", c.num_workers, minimum=0)
    if c.lrt and c.guide != "ssvi":
        raise ConfigError(
            "--lrt needs --guide ssvi (Pyro's AutoNormal samples auxiliary sites "
            "that cannot be locally reparameterised); for dense VI with LRT use "
            "--guide ssvi --density 1.0"
        )
    if not (c.device in ("auto", "cpu", "cuda") or c.device.startswith("cuda:")):
        raise ConfigError(f"--device must be auto, cpu or cuda[:N], got {c.device!r}")
    _check_with_library(c)


def _check_hidden(c: TrainConfig) -> None:
    if c.hidden is None:
        return
    if not isinstance(c.hidden, tuple) or not all(
        isinstance(h, int) and not isinstance(h, bool) and h >= 1 for h in c.hidden
    ):
        raise ConfigError(
            f"--hidden takes the widths of the hidden layers, ints >= 1 (none for "
            f"a linear model), got {c.hidden!r}"
        )
    if c.model != "mlp":
        raise ConfigError(
            f"--hidden sets the layers of --model mlp; drop it for {c.model}"
        )


def _check_classification(c: TrainConfig) -> None:
    """Refuse regression settings on an image data set."""
    regression = {
        "noise": c.noise != "learned",
        "heteroscedastic": c.heteroscedastic,
        "split-seed": c.split_seed != 0,
        "test-fraction": c.test_fraction != 0.1,
    }
    given = [f"--{name}" for name, value in regression.items() if value]
    if given:
        names = ", ".join(_regression_sets())
        raise ConfigError(
            f"{_flags(given)} to regression data sets ({names}); {c.dataset} is "
            f"an image classification set: drop {'it' if len(given) == 1 else 'them'}"
        )


def _flags(given: list[str]) -> str:
    """``"--a applies"`` or ``"--a and --b apply"``."""
    return " and ".join(given) + (" applies" if len(given) == 1 else " apply")


def _regression_sets() -> list[str]:
    return [name for name, task in dataset_tasks().items() if task == "regression"]


def _check_regression(c: TrainConfig) -> None:
    """What a regression data set cannot take, and whether its data can be read."""
    from ..regression import REGRESSION_DATASETS

    if c.model != "mlp":
        raise ConfigError(
            f"--model {c.model} is a network for images; the regression data set "
            f"{c.dataset} takes --model mlp"
        )
    images = {
        "--ood-dataset": c.ood_dataset not in (None, "none"),
        "--augment": c.augment,
        "--data-dir": c.data_dir is not None,
        "--download": c.download,
    }
    given = [name for name, value in images.items() if value]
    if given:
        raise ConfigError(
            f"{_flags(given)} to image data sets (regression data sets have no "
            f"OOD set and load without files); drop "
            f"{'it' if len(given) == 1 else 'them'} for {c.dataset}"
        )
    if isinstance(c.split_seed, bool) or not isinstance(c.split_seed, int):
        raise ConfigError(f"--split-seed must be an int, got {c.split_seed!r}")
    _positive("split-seed", c.split_seed, minimum=0)
    info = REGRESSION_DATASETS[c.dataset]
    if info.requires is not None and importlib.util.find_spec(info.requires) is None:
        raise ConfigError(
            f"--dataset {c.dataset} is read from the optional {info.requires} "
            f"package, which is not installed: {info.install}"
        )


def _no_model(*args: Any, **kwargs: Any) -> None:
    """Stands in for the network while the guide and scheduler check arguments."""


def _check_with_library(c: TrainConfig) -> None:
    """Let the guide, the subspace scheduler and ``scale_kl`` check their settings.

    They validate their own arguments when constructed; both are lazy (nothing
    runs the model, nothing draws random numbers), so constructing them here
    around a stand-in model checks density, initial scale, removal, addition,
    update interval, drop fraction and schedule, and KL weight before any data
    is loaded, with the library's own messages. For a regression data set the
    likelihood (:class:`~pyro_ssvi.app.models.BayesianRegressor`, around an
    uninitialised one-unit layer) checks the noise settings, and the split
    (:func:`~pyro_ssvi.app.regression.split_and_standardize` of zeros of the data
    set's size) the test fraction.

    Raises:
        ConfigError: With the library's one-line message.
    """
    from ...guides import AutoSparseNormal
    from ...poutine import scale_kl
    from ...reselection import SubspaceScheduler
    from ._config import (  # imports this module
        family_options,
        initial_scale,
        schedule_options,
    )

    try:
        guide = AutoSparseNormal(
            _no_model,
            density=c.density,
            init_scale=initial_scale(c),
            **family_options(c),
        )
        # The run's own stop step depends on the data size.
        SubspaceScheduler(_no_model, guide, stop_updates_at=1, **schedule_options(c))
        scale_kl(weight=c.kl_weight)
        if c.task == "regression":
            _check_regression_with_library(c)
    except (ValueError, TypeError) as e:
        raise ConfigError(" ".join(str(e).split())) from e


def _check_regression_with_library(c: TrainConfig) -> None:
    import numpy as np

    from ..models import BayesianRegressor
    from ..regression import REGRESSION_DATASETS, split_and_standardize

    layer = torch.nn.utils.skip_init(torch.nn.Linear, 1, 1)  # draws nothing
    BayesianRegressor(layer, 1, noise=c.noise, heteroscedastic=c.heteroscedastic)
    size = REGRESSION_DATASETS[c.dataset].num_examples
    split_and_standardize(
        np.zeros((size, 1)),
        np.zeros(size),
        seed=c.split_seed,
        test_fraction=c.test_fraction,
    )
