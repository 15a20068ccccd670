"""The parts of a run, each from its configuration: data, model, guide, ELBO,
optimiser, learning-rate and subspace schedules, and the weight-sampling handler."""

from __future__ import annotations

import math
from typing import Any

import torch

from . import _regression as regression
from ._choices import MODELS, SPARSE_COMPUTE
from ._config import TrainConfig, initial_scale, input_shape, ood_name, schedule_options


def kl_weight_at(c: TrainConfig, step: int, steps_per_epoch: int) -> float:
    """KL weight at a 1-based step: ``kl_weight * min(1, epoch / anneal)``,
    ``epoch = (step - 1) // steps_per_epoch + 1``."""
    if not c.kl_anneal_epochs:
        return c.kl_weight
    epoch = (step - 1) // steps_per_epoch + 1
    return c.kl_weight * min(1.0, epoch / c.kl_anneal_epochs)


class FixedSubspace:
    """Dense VI's stand-in for a :class:`~pyro_ssvi.SubspaceScheduler`.

    Every coordinate is active, so there is nothing to reselect: ``step``
    does nothing, and there are never any updates.
    """

    def __init__(self) -> None:
        self.updates: list[Any] = []

    @property
    def num_updates(self) -> int:
        """Always 0."""
        return 0

    def step(self, *args: Any, **kwargs: Any) -> None:
        """Nothing to do."""

    def state_dict(self) -> dict[str, Any]:
        """No state: ``{}``."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Accept the empty state of :meth:`state_dict`.

        Raises:
            ValueError: If ``state`` holds a subspace schedule (an SSVI run's).
        """
        if state:
            raise ValueError(
                f"dense VI has no subspace schedule, but the state has {sorted(state)}"
            )


def _load_data(c: TrainConfig, train: bool) -> tuple[Any, Any, Any]:
    from ..data import DATASETS, load_dataset

    opts: dict[str, Any] = dict(data_dir=c.data_dir, download=c.download)
    train_data = (
        load_dataset(c.dataset, "train", augment=c.augment, limit=c.train_limit, **opts)
        if train
        else None
    )
    test_data = load_dataset(c.dataset, "test", limit=c.test_limit, **opts)
    ood = ood_name(c)
    ood_data = None
    if ood not in (None, "none"):
        info, ood_info = DATASETS[c.dataset], DATASETS[ood]
        if info.input_shape != ood_info.input_shape:
            raise ValueError(
                f"--ood-dataset {ood} has inputs {ood_info.input_shape}, "
                f"but {c.dataset} has {info.input_shape}"
            )
        try:
            ood_data = load_dataset(
                ood, "test", limit=c.test_limit, normalize_like=c.dataset, **opts
            )
        except (FileNotFoundError, RuntimeError):
            if c.ood_dataset is not None:  # asked for explicitly: an error
                raise
            ood_data = None  # the default OOD set is optional
    return train_data, test_data, ood_data


def _first_batch(data: Any, size: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    items = [data[i] for i in range(min(size, len(data)))]
    return torch.stack([x for x, _ in items]), torch.stack(
        [torch.as_tensor(y) for _, y in items]
    )


def _model(c: TrainConfig, num_data: int) -> Any:
    """The Bayesian classifier or regressor of the configured network."""
    from ..data import DATASETS
    from ..models import BayesianClassifier

    if c.task == "regression":
        return regression.build_model(c, input_shape(c)[0], num_data)
    hidden = {} if c.hidden is None else {"hidden": c.hidden}
    net = MODELS[c.model](DATASETS[c.dataset], **hidden)
    return BayesianClassifier(net, num_data=num_data, prior_scale=c.prior_scale)


def _guide(c: TrainConfig, model: Any) -> Any:
    from pyro.infer.autoguide import AutoNormal

    from ...guides import AutoSparseNormal

    if c.guide == "ssvi":
        return AutoSparseNormal(
            model,
            density=c.density,
            init_scale=initial_scale(c),
            dense_sites=model.dense_sites,
            init_loc_fn=model.init_loc_fn(),
            init_active="random",  # a fresh network: the paper's random subset
        )
    return AutoNormal(model, init_loc_fn=model.init_loc_fn(), init_scale=c.init_scale)


def _elbo(c: TrainConfig) -> Any:
    """SSVI's ELBO (closed-form KL on the active sets, no per-step tracing for
    the standard case), or Pyro's ``TraceMeanField_ELBO`` for dense VI."""
    from pyro.infer import TraceMeanField_ELBO

    from ...elbo import TraceSparseMeanField_ELBO

    return TraceSparseMeanField_ELBO() if c.guide == "ssvi" else TraceMeanField_ELBO()


def _optimizer(c: TrainConfig, loss: Any, guide: Any) -> torch.optim.Optimizer:
    """Adam or SGD over the trainable parameters of ``loss``, in two groups.

    Weight decay applies to means and deterministic parameters, never to the
    unconstrained posterior scales (it would pull every sigma towards
    softplus(0) = 0.69), as in the reference implementation. Both guides keep
    their scales in ``guide.scales``; the active indices of ``AutoSparseNormal``
    are parameters without gradient, left out.
    """
    scales = {id(p) for p in guide.scales.parameters()}
    trainable = [p for p in loss.parameters() if p.requires_grad]
    groups = [
        {
            "params": [p for p in trainable if id(p) not in scales],
            "weight_decay": c.weight_decay,
        },
        {"params": [p for p in trainable if id(p) in scales], "weight_decay": 0.0},
    ]
    groups = [g for g in groups if g["params"]]
    if c.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=c.lr, momentum=c.momentum)
    return torch.optim.Adam(groups, lr=c.lr)


def lr_factor(c: TrainConfig, epoch: int) -> float:
    """Learning-rate multiplier of a 0-based epoch (cosine: from 1 towards 0)."""
    if c.lr_schedule == "cosine":
        return 0.5 * (1 + math.cos(math.pi * epoch / c.epochs))
    return 1.0


def lr_scheduler(
    c: TrainConfig, optimizer: torch.optim.Optimizer, last_epoch: int = -1
) -> torch.optim.lr_scheduler.LambdaLR:
    """The per-epoch schedule: ``lr * lr_factor(c, epoch)``, stepped after each epoch.

    ``last_epoch`` is torch's: the 0-based epoch completed last (-1: none);
    with ``last_epoch >= 0`` the optimiser's groups must hold ``initial_lr``.
    """
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda epoch: lr_factor(c, epoch), last_epoch=last_epoch
    )


def _subspace(
    c: TrainConfig, model: Any, guide: Any, optimizer: Any, steps_per_epoch: int
) -> Any:
    from ...reselection import SubspaceScheduler

    if c.guide != "ssvi":
        return FixedSubspace()
    total_steps = c.epochs * steps_per_epoch
    options = schedule_options(c)
    stop = int(c.stop_updates_fraction * total_steps)
    if not stop:  # no update at all: no horizon for a decay, nor anything to decay
        options["drop_schedule"] = "constant"
    return SubspaceScheduler(
        model,
        guide,
        optimizer,
        stop_updates_at=stop,
        num_steps=total_steps,
        kl_weight=lambda step: kl_weight_at(c, step, steps_per_epoch),
        growth_includes_kl=c.growth_includes_kl,
        **options,
    )


def _weight_sampling(c: TrainConfig) -> Any:
    """The handler that computes weight layers: LRT, sparse sampling, or None."""
    from ...poutine import local_reparameterization, sparse_weight_sampling

    sparse = SPARSE_COMPUTE[c.sparse_compute]
    if c.lrt:
        return local_reparameterization(sparse=sparse)
    if sparse is not False:
        return sparse_weight_sampling(sparse=sparse)
    return None
