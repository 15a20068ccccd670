"""Building a run (data, model, guide, optimiser, SVI) and its state."""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyro
import torch

from .._pyro_compat import create_optimizer
from ..checkpoint import CheckpointError
from ..distributed import is_distributed, wrap_ddp
from ._config import MODELS, SPARSE_COMPUTE, TrainConfig, ood_name


# --------------------------------------------------------------------- runs
@dataclass
class Run:
    """A built run: data, model, guide, optimiser and the SVI driver.

    Attributes:
        config: The configuration.
        device: Where the model and guide live.
        model: The Bayesian classifier (a ``PyroModule``).
        guide: ``AutoSparseNormal`` or ``AutoNormal``.
        optim: The Pyro optimiser.
        svi: ``SparseSVI`` or ``SVI``.
        train_data, test_data, ood_data: Datasets (``ood_data`` may be None).
        num_data: Size of the training set (scales the likelihood).
        steps_per_epoch: Minibatches per epoch.
        epoch: Epochs completed.
        checkpoint_epoch: Epoch of the last checkpoint written (or loaded).
        history: One metrics dict per completed epoch.
        elapsed_s: Wall time spent on this run so far (over resumes).
    """

    config: TrainConfig
    device: torch.device
    model: Any
    guide: Any
    optim: Any
    svi: Any
    train_data: Any
    test_data: Any
    ood_data: Any
    num_data: int
    steps_per_epoch: int
    epoch: int = 0
    checkpoint_epoch: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    elapsed_s: float = 0.0

    @property
    def total_steps(self) -> int:
        """Planned number of training steps."""
        return self.config.epochs * self.steps_per_epoch

    def kl_weight(self, step: int) -> float:
        """KL weight at a 1-based step: ``kl_weight * min(1, epoch / anneal)``."""
        c = self.config
        if not c.kl_anneal_epochs:
            return c.kl_weight
        epoch = (step - 1) // self.steps_per_epoch + 1
        return c.kl_weight * min(1.0, epoch / c.kl_anneal_epochs)


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
    """Load the data and build model, guide, optimiser and SVI for ``config``.

    Clears Pyro's param store and seeds every RNG with ``config.seed``.

    Args:
        config: The run's configuration.
        train: Load the training set (``False`` for evaluation only, then
            ``num_data`` must be given).
        num_data: Training-set size, when the training set is not loaded.

    Returns:
        The :class:`Run`, with parameters materialised on its device.
    """
    from pyro.infer import SVI, TraceMeanField_ELBO
    from pyro.infer.autoguide import AutoNormal

    from ..data import DATASETS
    from ..guides import AutoSparseNormal
    from ..models import BayesianClassifier
    from ..svi import SparseSVI

    c = config
    device = resolve_device(c.device)
    pyro.clear_param_store()
    pyro.set_rng_seed(c.seed)
    train_data, test_data, ood_data = _load_data(c, train)
    n = len(train_data) if train_data is not None else num_data
    if n is None:
        raise ValueError("build_run(train=False) needs num_data")
    net = MODELS[c.model](DATASETS[c.dataset])
    model = BayesianClassifier(net, num_data=n, prior_scale=c.prior_scale).to(device)
    if c.guide == "ssvi":
        guide: Any = AutoSparseNormal(
            model,
            density=c.density,
            init_scale=c.init_scale,
            dense_sites=model.dense_sites,
            init_loc_fn=model.init_loc_fn(),
            init_active="random",  # a fresh network: the paper's random subset
        )
    else:
        guide = AutoNormal(
            model, init_loc_fn=model.init_loc_fn(), init_scale=c.init_scale
        )
    x0, y0 = _first_batch(train_data if train_data is not None else test_data)
    with torch.no_grad():
        guide(x0.to(device), y0.to(device))  # materialise the parameters
    optim = _optimizer(c, model, guide)
    steps_per_epoch = max(1, math.ceil(n / c.batch_size))
    run = Run(
        c,
        device,
        model,
        guide,
        optim,
        None,
        train_data,
        test_data,
        ood_data,
        n,
        steps_per_epoch,
    )
    if c.guide == "ssvi":
        run.svi = SparseSVI(
            model,
            guide,
            optim,
            update_every=c.update_every,
            removal=c.removal,
            addition=c.addition,
            drop_fraction=c.drop_fraction,
            drop_schedule=c.drop_schedule,
            stop_updates_at=int(c.stop_updates_fraction * run.total_steps),
            num_steps=run.total_steps,
            kl_weight=run.kl_weight,
            local_reparameterization=c.lrt,
            sparse_compute=SPARSE_COMPUTE[c.sparse_compute],
        )
    elif is_distributed():
        # Pyro's SVI knows nothing of ranks: give it the ELBO module wrapped in
        # DistributedDataParallel as its loss, so gradients are averaged.
        ddp = wrap_ddp(TraceMeanField_ELBO()(model, guide))
        run.svi = SVI(model, guide, optim, lambda _m, _g, *a, **k: ddp(*a, **k))
    else:
        run.svi = SVI(model, guide, optim, TraceMeanField_ELBO())
    return run


def named_parameters(run_or_modules: Any) -> dict[str, torch.nn.Parameter]:
    """``{"guide.<name>" | "model.<name>": parameter}`` of a run's modules."""
    model, guide = (
        (run_or_modules.model, run_or_modules.guide)
        if isinstance(run_or_modules, Run)
        else run_or_modules
    )
    named = {f"guide.{n}": p for n, p in guide.named_parameters()}
    named.update({f"model.{n}": p for n, p in model.named_parameters()})
    return named


def _optimizer(c: TrainConfig, model: Any, guide: Any) -> Any:
    """A Pyro optimiser with one torch optimiser per parameter, created now.

    Weight decay applies to means and deterministic parameters, never to the
    unconstrained posterior scales (it would pull every sigma towards
    softplus(0) = 0.69), as in the reference implementation. Creating the
    optimisers here (not lazily, by Pyro's param-store names) keeps this
    right under module-local parameters and makes their state resumable.
    """
    args: dict[str, float] = {"lr": c.lr}
    if c.optimizer == "sgd":
        args["momentum"] = c.momentum
    kind = "Adam" if c.optimizer == "adam" else "SGD"
    optim = getattr(pyro.optim, kind)(dict(args, weight_decay=c.weight_decay))
    for name, param in named_parameters((model, guide)).items():
        scale = name.startswith("guide.scales.")
        decay = 0.0 if scale else c.weight_decay
        create_optimizer(optim, param, dict(args, weight_decay=decay))
    return optim


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


def checkpoint_state(run: Run) -> dict[str, Any]:
    svi_state = run.svi.state_dict() if hasattr(run.svi, "update_subspace") else {}
    return {
        "config": run.config.to_dict(),
        "epoch": run.epoch,
        "num_data": run.num_data,
        "history": run.history,
        "elapsed_s": run.elapsed_s,
        "guide": run.guide.state_dict(),
        "model": run.model.state_dict(),
        "optimizer": {
            name: run.optim.optim_objs[p].state_dict()
            for name, p in named_parameters(run).items()
            if p in run.optim.optim_objs
        },
        "svi": svi_state,
        "rng": _rng_state(),
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
    # The saved param_groups carry the last epoch's lr; resume at the next's.
    next_lr = lr_at(run.config, int(state["epoch"]) + 1)
    saved = state["optimizer"]
    for name, param in named_parameters(run).items():
        if name in saved:
            for group in saved[name].get("param_groups", []):
                group["lr"] = next_lr
            run.optim.optim_objs[param].load_state_dict(saved[name])
    if state["svi"]:
        run.svi.load_state_dict(state["svi"])
    run.epoch = run.checkpoint_epoch = int(state["epoch"])
    run.history = list(state["history"])
    run.elapsed_s = float(state["elapsed_s"])
    _set_rng_state(state["rng"])


def lr_at(c: TrainConfig, epoch: int) -> float:
    """Learning rate of a 1-based epoch (cosine: from ``lr`` towards 0)."""
    if c.lr_schedule == "cosine":
        return c.lr * 0.5 * (1 + math.cos(math.pi * (epoch - 1) / c.epochs))
    return c.lr


def progress_bar(enabled: bool, **kwargs: Any) -> Any:
    """A tqdm bar (a no-op one when not ``enabled``)."""
    from tqdm.auto import tqdm

    return tqdm(disable=not enabled, dynamic_ncols=True, **kwargs)


def density_of(run: Run) -> float:
    return float(run.guide.density) if hasattr(run.guide, "density") else 1.0
