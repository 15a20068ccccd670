"""Run configuration: ``TrainConfig``, its validation, models and errors."""

from __future__ import annotations

import dataclasses
import importlib.util
import math
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch

RUN_FILES = (
    "config.json",
    "metrics.jsonl",
    "metrics.json",
    "checkpoint.pt",
    "subspace_updates.json",
)
#: Files under ``plots/`` that a run writes, by task (``ood_entropy.png`` only
#: with an OOD set).
PLOTS_BY_TASK = {
    "classification": (
        "training_curves.png",
        "reliability.png",
        "ood_entropy.png",
        "layer_density.png",
        "swap_fraction.png",
    ),
    "regression": (
        "training_curves.png",
        "calibration.png",
        "predictions.png",
        "layer_density.png",
        "swap_fraction.png",
    ),
}
#: Every file under ``plots/`` that a run may write.
PLOTS = tuple(dict.fromkeys(name for v in PLOTS_BY_TASK.values() for name in v))


class ConfigError(ValueError):
    """A configuration value is invalid (the message names the flag)."""


class RunDirError(ValueError):
    """The output directory cannot be used for this run."""


class RunStopped(RuntimeError):
    """A run stopped before its end (e.g. a full disk).

    The message says why, which checkpoint is kept and how to continue.
    """


class TrainingDiverged(RunStopped):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


class RunInterrupted(KeyboardInterrupt):
    """Training was interrupted (Ctrl-C, SIGTERM under the CLI).

    A ``KeyboardInterrupt``, so code that handles Ctrl-C keeps working; the
    message says which checkpoint is kept and how to continue.
    """


def _mlp(info: Any, hidden: Sequence[int] = (400, 400)) -> torch.nn.Module:
    from ..models import mlp

    return mlp(math.prod(info.input_shape), list(hidden), info.num_classes)


def _lenet(info: Any) -> torch.nn.Module:
    from ..models import lenet

    channels, size, _ = info.input_shape
    return lenet(channels, info.num_classes, size)


def _resnet18(info: Any) -> torch.nn.Module:
    from ..models import resnet18_cifar

    return resnet18_cifar(info.num_classes)


#: Network builders of image classifiers by name: ``info`` is the data set's
#: ``DatasetInfo``; ``mlp`` also takes ``hidden``, the widths of its hidden
#: layers. On a regression data set, ``mlp`` is ``F -> hidden -> 1`` (2 outputs
#: when heteroscedastic), one hidden layer of 50 units by default (the UCI
#: protocol's network).
MODELS: dict[str, Callable[..., torch.nn.Module]] = {
    "lenet": _lenet,
    "mlp": _mlp,
    "resnet18": _resnet18,
}
GUIDES = ("ssvi", "autonormal")
#: Configuration keys of earlier versions and their current names.
RENAMED_KEYS = {"stop_updates_at": "stop_updates_fraction"}
#: Named sets of settings (``pyro-ssvi train --recipe NAME``,
#: :meth:`TrainConfig.from_recipe`); settings given explicitly override them.
#: ``reference-cifar`` is the SSVI reference implementation's CIFAR-10
#: ResNet-18 run; its KL warm-up is half the epochs (``beta = min(2 e / E, 1)``)
#: unless ``kl_anneal_epochs`` is given. ``uci`` is the training protocol of
#: Hernández-Lobato & Adams (2015) for regression (``benchmarks/uci.py``):
#: batch 32, Adam at a constant lr 0.01, 40 epochs, 100 posterior samples.
RECIPES: dict[str, dict[str, Any]] = {
    "reference-cifar": dict(
        model="resnet18",
        dataset="cifar10",
        guide="ssvi",
        density=0.1,
        epochs=200,
        batch_size=128,
        optimizer="sgd",
        lr=0.01,
        momentum=0.9,
        weight_decay=5e-4,
        lr_schedule="cosine",
        prior_scale=0.005,
        init_scale=6e-4,
        init_scale_std=5e-4,
        kl_weight=0.01,
        removal="snr_abs",
        addition="grad",
        growth_includes_kl=True,
        regrow_scale="mean",
        update_every=100,
        drop_fraction=0.3,
        drop_schedule="cosine",
        stop_updates_fraction=0.75,
        lrt=True,
        augment=True,
    ),
    "uci": dict(
        dataset="diabetes",
        model="mlp",
        batch_size=32,
        lr=0.01,
        lr_schedule="constant",
        epochs=40,
        num_samples=100,
    ),
}
#: The recipe a data set starts from on the command line when no ``--recipe``
#: is given: every regression data set takes ``uci``.
TASK_RECIPES = {"regression": "uci"}
#: Default widths of the hidden layers of ``mlp``, by task.
DEFAULT_HIDDEN = {"classification": (400, 400), "regression": (50,)}
OPTIMIZERS = ("adam", "sgd")
LR_SCHEDULES = ("cosine", "constant")
SPARSE_COMPUTE: dict[str, bool | str] = {"auto": "auto", "on": True, "off": False}


@dataclass(frozen=True)
class TrainConfig:
    """Everything that defines a training run (JSON-serialisable).

    The loss optimised per step is the negative ELBO divided by the training
    set size: mean cross-entropy of the minibatch plus
    ``kl_weight * KL(q || p) / N``, the SSVI reference code's objective, so
    its learning rates (SGD too) carry over. Weight decay never applies to
    the posterior scales.

    Settings that a library object takes are checked by that object, when the
    configuration is made (see :func:`_check_with_library`); invalid values
    raise :class:`ConfigError` with one line.

    The defaults train the embedded MNIST to about
    97.5% test accuracy at density 0.1 in a few minutes on 2 CPU cores.

    The task follows from the data set (:func:`dataset_tasks`): an image
    classification set (:data:`pyro_ssvi.app.data.DATASETS`) trains a
    :class:`~pyro_ssvi.app.models.BayesianClassifier`, a regression set
    (:data:`pyro_ssvi.app.regression.REGRESSION_DATASETS`) a
    :class:`~pyro_ssvi.app.models.BayesianRegressor` on one standardised random
    split, evaluated in the targets' original units; its loss is the
    Gaussian negative log-likelihood per example plus the KL term, as above.
    ``TrainConfig.from_recipe("uci", dataset=...)`` gives the regression
    protocol's settings (``pyro-ssvi train`` starts every regression data set
    from it).

    Attributes:
        model: Network, a key of :data:`MODELS`.
        hidden: Widths of the hidden layers of ``mlp``; None: 400, 400 for
            images, 50 for regression data (:data:`DEFAULT_HIDDEN`); ``()``
            is a linear model.
        dataset: Data set name (see :data:`pyro_ssvi.app.data.DATASETS` and
            :data:`pyro_ssvi.app.regression.REGRESSION_DATASETS`); the embedded
            MNIST by default.
        data_dir: Directory with data sets in torchvision's layout.
        download: Download missing data sets into ``data_dir``.
        ood_dataset: Out-of-distribution set; default: the data set's usual
            one (Fashion-MNIST for MNIST); ``"none"`` to skip. Regression
            data sets have none.
        noise: Regression: the Gaussian likelihood's noise standard
            deviation, ``"learned"`` (a point estimate trained with the
            guide, starting at 1) or a fixed value, in standardised target
            units.
        heteroscedastic: Regression: the network predicts the noise
            standard deviation of each input (its second output).
        split_seed: Regression: seed of the random train/test split.
        test_fraction: Regression: fraction of the data held out for testing.
        guide: ``"ssvi"`` (:class:`~pyro_ssvi.AutoSparseNormal` with a
            :class:`~pyro_ssvi.SubspaceScheduler`) or ``"autonormal"``
            (Pyro's ``AutoNormal``, the dense-VI baseline); both train by
            the same loop (:func:`~pyro_ssvi.app.training.train_step`).
        density: Active fraction per sparse site; 1.0 runs SSVI densely.
        allocation, dense_below, background, background_init: SSVI's
            posterior family, as in :class:`~pyro_ssvi.AutoSparseNormal`
            (``background="none"`` is None): the budget's allocation
            (``"uniform"`` or ``"erk"``), sites kept dense (and charged) up
            to this many elements, and a learnt background variance on the
            inactive coordinates (``"column"`` or ``"layer"``).
        removal, addition, update_every, drop_fraction, drop_schedule:
            Subspace reselection, as in :class:`~pyro_ssvi.SubspaceScheduler`.
        stop_updates_fraction: Fraction of the training steps after which the
            subspace is frozen (the scheduler gets the step count,
            ``stop_updates_at``). Saved configurations with the old name
            ``stop_updates_at`` load as this field.
        optimizer: ``"adam"`` or ``"sgd"`` (momentum ``momentum``).
        lr, momentum, weight_decay: Optimiser settings.
        lr_schedule: ``"cosine"`` (per epoch, to 0) or ``"constant"``.
        lrt: Local reparameterisation of linear and convolution layers.
        sparse_compute: Sparse kernels for sparse linear layers (for the LRT
            moments, or for exact weight samples without ``lrt``): ``"off"``,
            ``"on"``, or ``"auto"`` (timed once per layer; the choices are
            checkpointed, so a resumed run keeps them).
        prior_scale: Standard deviation of the Normal weight prior.
        init_scale: Initial posterior standard deviation.
        init_scale_std: With SSVI, > 0 draws each coordinate's initial
            standard deviation from ``|N(init_scale, init_scale_std^2)|``
            (the reference implementation's
            rule, ``AutoSparseNormal(init_scale=(m, s))``); 0 (default): every
            coordinate starts at ``init_scale``.
        regrow_scale: Initial standard deviation of re-grown coordinates:
            ``"mean"`` (the mean over the kept and re-grown coordinates, the
            reference's rule) or a positive number.
        growth_includes_kl: Add the current KL weight times the KL term's
            gradient to the ``"grad"`` addition score, as the reference does
            (default: the likelihood's gradient alone).
        kl_weight: Weight of the KL term (1 = the ELBO).
        kl_anneal_epochs: Linear KL warm-up over this many epochs (0: none).
        epochs, batch_size: Training length and minibatch size.
        num_samples: Posterior samples for the final Monte Carlo evaluation.
        eval_batch_size: Inputs per forward pass in evaluation.
        train_limit, test_limit: Use only the first N examples (smoke runs;
            a regression split is standardised with its whole training part).
        augment: Random crops (and flips where they preserve the label).
        num_workers: Data-loader workers for on-disk data sets.
        device: ``"auto"``, ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.
        seed: Seed of every random choice of the run.
    """

    model: str = "mlp"
    hidden: tuple[int, ...] | None = None
    dataset: str = "mnist"
    data_dir: str | None = None
    download: bool = False
    ood_dataset: str | None = None
    noise: str | float = "learned"
    heteroscedastic: bool = False
    split_seed: int = 0
    test_fraction: float = 0.1
    guide: str = "ssvi"
    density: float = 0.1
    allocation: str = "uniform"
    dense_below: int = 0
    background: str = "none"
    background_init: float = 0.01
    removal: str = "snr_abs"
    addition: str = "grad"
    update_every: int = 100
    drop_fraction: float = 0.3
    drop_schedule: str = "cosine"
    stop_updates_fraction: float = 0.75
    regrow_scale: str | float = "mean"
    growth_includes_kl: bool = False
    optimizer: str = "adam"
    lr: float = 3e-3
    momentum: float = 0.9
    weight_decay: float = 0.0
    lr_schedule: str = "cosine"
    lrt: bool = False
    sparse_compute: str = "off"
    prior_scale: float = 1.0
    init_scale: float = 0.01
    init_scale_std: float = 0.0
    kl_weight: float = 1.0
    kl_anneal_epochs: int = 0
    epochs: int = 15
    batch_size: int = 128
    num_samples: int = 10
    eval_batch_size: int = 1000
    train_limit: int | None = None
    test_limit: int | None = None
    augment: bool = False
    num_workers: int = 0
    device: str = "auto"
    seed: int = 0

    def __post_init__(self) -> None:
        if isinstance(self.hidden, list):  # from JSON
            object.__setattr__(self, "hidden", tuple(self.hidden))
        _validate(self)

    @property
    def task(self) -> str:
        """``"classification"`` or ``"regression"``: what the data set is for."""
        return dataset_tasks()[self.dataset]

    def to_dict(self) -> dict[str, Any]:
        """The configuration as a JSON-serialisable dict."""
        return dataclasses.asdict(self)

    @classmethod
    def from_recipe(cls, name: str, **overrides: Any) -> "TrainConfig":
        """A configuration from :data:`RECIPES`, with ``overrides`` on top.

        Example::

            TrainConfig.from_recipe("reference-cifar", data_dir="~/data", epochs=50)
        """
        return cls(**recipe_values(name, overrides))

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "TrainConfig":
        """Rebuild a configuration, refusing unknown keys.

        Keys of older versions are renamed (:data:`RENAMED_KEYS`), so their
        ``config.json`` files and checkpoints still load.
        """
        values = {RENAMED_KEYS.get(k, k): v for k, v in values.items()}
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(f"unknown configuration keys {unknown}")
        return cls(**values)


def recipe_values(name: str, given: dict[str, Any]) -> dict[str, Any]:
    """The fields of recipe ``name`` with the ``given`` ones on top.

    Raises:
        ConfigError: For an unknown recipe.
    """
    _choice("recipe", name, RECIPES)
    values = {**RECIPES[name], **given}
    if name == "reference-cifar" and "kl_anneal_epochs" not in given:
        values["kl_anneal_epochs"] = max(1, values["epochs"] // 2)
    return values


def dataset_tasks() -> dict[str, str]:
    """``{data set name: "classification" | "regression"}`` of every data set.

    The image sets of :data:`pyro_ssvi.app.data.DATASETS` are for classification,
    those of :data:`pyro_ssvi.app.regression.REGRESSION_DATASETS` for regression.
    """
    from ..data import DATASETS
    from ..regression import REGRESSION_DATASETS

    tasks = dict.fromkeys(DATASETS, "classification")
    tasks.update(dict.fromkeys(REGRESSION_DATASETS, "regression"))
    return tasks


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


def schedule_options(c: TrainConfig) -> dict[str, Any]:
    """The :class:`~pyro_ssvi.SubspaceScheduler` arguments a configuration sets."""
    return dict(
        update_every=c.update_every,
        removal=c.removal,
        addition=c.addition,
        drop_fraction=c.drop_fraction,
        drop_schedule=c.drop_schedule,
        regrow_scale=c.regrow_scale,
    )


def initial_scale(c: TrainConfig) -> float | tuple[float, float]:
    """``AutoSparseNormal``'s ``init_scale``: a value, or ``(mean, std)`` to draw."""
    return (c.init_scale, c.init_scale_std) if c.init_scale_std else c.init_scale


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


def family_options(c: TrainConfig) -> dict[str, Any]:
    """The ``AutoSparseNormal`` arguments of the configured posterior family."""
    return dict(
        allocation=c.allocation,
        dense_below=c.dense_below,
        background=None if c.background == "none" else c.background,
        background_init=c.background_init,
    )


def ood_name(c: TrainConfig) -> str | None:
    """The run's OOD set: the given one, the data set's usual one, or None."""
    from ..data import default_ood

    if c.task == "regression":
        return None
    return default_ood(c.dataset) if c.ood_dataset is None else c.ood_dataset


def input_shape(c: TrainConfig) -> tuple[int, ...]:
    """Shape of one input: ``(C, H, W)`` of an image, ``(F,)`` of a table row."""
    from ..data import DATASETS
    from ..regression import REGRESSION_DATASETS

    if c.task == "regression":
        return (REGRESSION_DATASETS[c.dataset].num_features,)
    return DATASETS[c.dataset].input_shape


def default_recipe(dataset: Any) -> str | None:
    """The recipe a data set starts from on the command line (:data:`TASK_RECIPES`)."""
    task = dataset_tasks().get(dataset) if isinstance(dataset, str) else None
    return None if task is None else TASK_RECIPES.get(task)
