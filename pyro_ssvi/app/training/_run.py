"""A run: building it (data, model, guide, loss, optimiser, schedules) and its state."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import pyro
import torch

from ...distributed import is_distributed, wrap_ddp
from ..checkpoint import CheckpointError
from . import _regression as regression
from ._components import (
    _elbo,
    _first_batch,
    _guide,
    _load_data,
    _model,
    _optimizer,
    _subspace,
    _weight_sampling,
    kl_weight_at,
    lr_scheduler,
)
from ._config import TrainConfig
from ._rng import _rng_state, _set_rng_state


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
