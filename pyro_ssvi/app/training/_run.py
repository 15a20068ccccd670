"""Building a run (data, model, guide, loss, optimiser, schedules) and its state."""

from __future__ import annotations

import math
import random
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Iterator

import numpy as np
import pyro
import torch

from ...distributed import is_distributed, wrap_ddp
from ..checkpoint import CheckpointError
from . import _regression as regression
from ._choices import MODELS, SPARSE_COMPUTE
from ._config import (
    TrainConfig,
    family_options,
    initial_scale,
    input_shape,
    ood_name,
    schedule_options,
)


# --------------------------------------------------------------------- runs
@dataclass
class Run:
    """A built run: data, model, guide and what trains them (one protocol for both).

    A training step is the same for SSVI and dense VI (see
    :func:`~pyro_ssvi.app.training.train_step`)::

        optimizer.zero_grad()
        with scale_kl(weight=w), weight_sampling:   # weight_sampling may be None
            loss = loss_module(x, y) / num_data
        loss.backward()
        optimizer.step()
        subspace.step(x, y)

    and every epoch ends with ``lr_scheduler.step()``.

    Attributes:
        config: The configuration.
        device: Where the model and guide live.
        model: The Bayesian classifier or regressor (a ``PyroModule``; a
            regressor's learned noise is a parameter of the model).
        guide: ``AutoSparseNormal`` or Pyro's ``AutoNormal``.
        loss: Pyro's ``ELBOModule`` of model and guide
            (:class:`~pyro_ssvi.elbo.TraceSparseMeanField_ELBO` for SSVI,
            ``TraceMeanField_ELBO`` for dense VI): ``loss(x, y)`` is the
            negative ELBO of the training set estimated on the minibatch;
            wrapped in ``DistributedDataParallel`` under ``torchrun``.
        optimizer: ``torch.optim.Adam`` or ``SGD`` over the trainable
            parameters of ``loss``, in two groups: posterior scales (no weight
            decay) and everything else.
        lr_scheduler: ``torch.optim.lr_scheduler.LambdaLR``, stepped once per
            epoch (cosine or constant).
        subspace: A :class:`~pyro_ssvi.SubspaceScheduler` (SSVI), or
            :class:`FixedSubspace` (dense VI: nothing to reselect).
        weight_sampling: The local-reparameterisation or sparse
            weight-sampling handler around each loss, or None.
        train_data, test_data, ood_data: Datasets (``ood_data`` may be None).
        num_data: Size of the training set (scales the likelihood).
        steps_per_epoch: Minibatches per epoch.
        epoch: Epochs completed.
        checkpoint_epoch: Epoch of the last checkpoint written (or loaded).
        history: One metrics dict per completed epoch.
        elapsed_s: Wall time spent on this run so far (over resumes).
        statistics: Regression: the split's standardisation, float64
            ``x_mean``, ``x_std``, ``y_mean``, ``y_std`` (saved in the
            checkpoint); None for classification.
    """

    config: TrainConfig
    device: torch.device
    model: Any
    guide: Any
    loss: torch.nn.Module
    optimizer: torch.optim.Optimizer
    lr_scheduler: torch.optim.lr_scheduler.LRScheduler
    subspace: Any
    weight_sampling: Any
    train_data: Any
    test_data: Any
    ood_data: Any
    num_data: int
    steps_per_epoch: int
    epoch: int = 0
    checkpoint_epoch: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    elapsed_s: float = 0.0
    statistics: dict[str, torch.Tensor] | None = None

    @property
    def total_steps(self) -> int:
        """Planned number of training steps."""
        return self.config.epochs * self.steps_per_epoch

    def kl_weight(self, step: int) -> float:
        """KL weight at a 1-based step: ``kl_weight * min(1, epoch / anneal)``."""
        return kl_weight_at(self.config, step, self.steps_per_epoch)


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


def resolve_device(name: str) -> torch.device:
    """``"auto"`` is CUDA when available, else CPU; CUDA must exist if asked.

    Under ``torchrun`` on GPUs every process uses its ``LOCAL_RANK``'s GPU.
    """
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and is_distributed():
        return torch.device("cuda", torch.cuda.current_device())
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(
            f"--device {name}: CUDA is not available on this machine "
            "(use --device cpu or auto)"
        )
    return device


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


def build_run(
    config: TrainConfig, *, train: bool = True, num_data: int | None = None
) -> Run:
    """Load the data and build model, guide and what trains them for ``config``.

    Clears Pyro's param store and seeds every RNG with ``config.seed``. Call
    it under ``pyro.settings.context(module_local_params=True)`` to train
    (as :func:`~pyro_ssvi.app.training.train` does): the optimiser holds the
    modules' own parameters.

    Args:
        config: The run's configuration.
        train: Load the training set (``False`` for evaluation only, then
            ``num_data`` must be given).
        num_data: Training-set size, when the training set is not loaded.

    Returns:
        The :class:`Run`, with parameters materialised on its device.
    """
    c = config
    device = resolve_device(c.device)
    pyro.clear_param_store()
    pyro.set_rng_seed(c.seed)
    statistics = None
    if c.task == "regression":
        train_data, test_data, statistics = regression.load_data(c, train)
        ood_data = None
    else:
        train_data, test_data, ood_data = _load_data(c, train)
    n = len(train_data) if train_data is not None else num_data
    if n is None:
        raise ValueError("build_run(train=False) needs num_data")
    model = _model(c, n).to(device)
    guide = _guide(c, model)
    x0, y0 = _first_batch(train_data if train_data is not None else test_data)
    with torch.no_grad():
        guide(x0.to(device), y0.to(device))  # materialise the parameters
    loss = _elbo(c)(model, guide)
    optimizer = _optimizer(c, loss, guide)
    steps_per_epoch = max(1, math.ceil(n / c.batch_size))
    return Run(
        c,
        device,
        model,
        guide,
        wrap_ddp(loss) if is_distributed() else loss,
        optimizer,
        lr_scheduler(c, optimizer),
        _subspace(c, model, guide, optimizer, steps_per_epoch),
        _weight_sampling(c),
        train_data,
        test_data,
        ood_data,
        n,
        steps_per_epoch,
        statistics=statistics,
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
            **family_options(c),
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


# ------------------------------------------------------------ state capture
def _rng_state() -> dict[str, Any]:
    np_state: Any = np.random.get_state()
    name, keys, pos, has_gauss, cached = np_state
    state = {
        "torch": torch.get_rng_state(),
        "numpy": [
            name,
            torch.from_numpy(keys.astype(np.int64)),
            pos,
            has_gauss,
            cached,
        ],
        "python": random.getstate(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


@contextmanager
def python_and_numpy_rng_kept() -> Iterator[None]:
    """Python's and numpy's global RNG states, restored after the block.

    A module imported for the first time may draw from them (``rich``, which
    scikit-learn's metrics import, draws a style id from Python's), so when
    a process first evaluates would otherwise change the RNG state that the
    next checkpoint saves: a resumed run's checkpoint would differ from an
    uninterrupted run's (in size too) with every tensor equal.
    """
    python, numpy = random.getstate(), np.random.get_state()
    try:
        yield
    finally:
        random.setstate(python)
        np.random.set_state(numpy)


def checkpoint_state(run: Run) -> dict[str, Any]:
    """Everything a resumed run needs (layout version 2 of the checkpoint).

    ``statistics`` (a regression split's standardisation; empty for
    classification) is optional in layout version 2: earlier checkpoints lack it.
    """
    sampling = run.weight_sampling
    return {
        "config": run.config.to_dict(),
        "epoch": run.epoch,
        "num_data": run.num_data,
        "history": run.history,
        "elapsed_s": run.elapsed_s,
        "guide": run.guide.state_dict(),
        "model": run.model.state_dict(),
        "optimizer": run.optimizer.state_dict(),
        "lr_scheduler": run.lr_scheduler.state_dict(),
        "subspace": run.subspace.state_dict(),
        "sparse_compute": {} if sampling is None else sampling.state_dict(),
        "rng": _rng_state(),
        "statistics": run.statistics or {},
    }


def restore(run: Run, state: dict[str, Any], source: str = "the checkpoint") -> None:
    """Load a checkpoint's state into a built run (its guide already set up).

    :func:`build_run` has run the guide on a batch, so its sites have the
    shapes of the configured model before the saved state is loaded; a state
    of another model is refused here with one line.

    Raises:
        CheckpointError: If the saved guide or model does not fit the run's.
    """
    try:
        run.guide.load_state_dict(state["guide"])
        run.model.load_state_dict(state["model"])
    except (RuntimeError, ValueError, KeyError) as e:
        c = run.config
        detail = " ".join(str(e).split())  # torch's messages span lines
        raise CheckpointError(
            f"{source} does not fit the {c.model} for {c.dataset} with the "
            f"{c.guide} guide that its configuration describes ({detail}); it "
            "was edited or assembled from another run: use that run's own "
            "checkpoint"
        ) from e
    if run.statistics is not None:
        c = run.config
        saved = state.get("statistics")
        regression.check_statistics(saved, run.statistics, source, c.dataset)
    epoch = int(state["epoch"])
    run.optimizer.load_state_dict(state["optimizer"])
    run.lr_scheduler.load_state_dict(state["lr_scheduler"])
    run.subspace.load_state_dict(state["subspace"])
    if run.weight_sampling is not None and state["sparse_compute"]:
        run.weight_sampling.load_state_dict(state["sparse_compute"])
    run.epoch = run.checkpoint_epoch = epoch
    run.history = list(state["history"])
    run.elapsed_s = float(state["elapsed_s"])
    _set_rng_state(state["rng"])


def progress_bar(enabled: bool, **kwargs: Any) -> Any:
    """A tqdm bar (a no-op one when not ``enabled``)."""
    from tqdm.auto import tqdm

    return tqdm(disable=not enabled, dynamic_ncols=True, **kwargs)


def density_of(run: Run) -> float:
    """The run's density: the guide's achieved density (dense VI: 1).

    A guide without sparse sites is dense too: 1 (its ``density`` is NaN).
    """
    from ...guides import AutoSparseNormal

    guide = run.guide
    if not isinstance(guide, AutoSparseNormal) or not guide.sparse_site_names():
        return 1.0
    return float(guide.density)
