"""Run configuration: ``TrainConfig`` and the library arguments it sets."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from ._choices import dataset_tasks
from ._errors import ConfigError
from ._recipes import recipe_values
from ._validation import _validate

#: Configuration keys of earlier versions and their current names.
RENAMED_KEYS = {"stop_updates_at": "stop_updates_fraction"}


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
        allocation, dense_below, background, background_init, background_sites:
            SSVI's posterior family, as in :class:`~pyro_ssvi.AutoSparseNormal`
            (``background="none"`` is None): the budget's allocation
            (``"uniform"`` or ``"erk"``), sites kept dense (and charged) up
            to this many elements, and a learnt background variance on the
            inactive coordinates (``"column"``, ``"layer"`` or ``"rowcol"``; on the
            named sites only, or all).
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
    background_sites: tuple[str, ...] | None = None
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
        for name in ("hidden", "background_sites"):
            if isinstance(getattr(self, name), list):  # from JSON
                object.__setattr__(self, name, tuple(getattr(self, name)))
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


def family_options(c: TrainConfig) -> dict[str, Any]:
    """The ``AutoSparseNormal`` arguments of the configured posterior family."""
    return dict(
        allocation=c.allocation,
        dense_below=c.dense_below,
        background=None if c.background == "none" else c.background,
        background_init=c.background_init,
        background_sites=c.background_sites,
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
