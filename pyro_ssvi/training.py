"""Training runs: configuration, the training loop, checkpoints and evaluation.

This is the library behind ``pyro-ssvi train``; it never sees command-line
flags. A run writes one directory::

    config.json            the resolved configuration (and versions)
    metrics.jsonl          one JSON line per epoch
    metrics.json           final metrics (written last: marks a finished run)
    checkpoint.pt          guide, model, optimiser, schedule and RNG state
    subspace_updates.json  per-update record of swapped coordinates
    plots/*.png            training curves, reliability, OOD entropy, density

Example::

    from pyro_ssvi.training import TrainConfig, train
    metrics = train(TrainConfig(epochs=5, density=0.1), "runs/mnist-d0.1")
    metrics["test_accuracy"], metrics["ood_auroc"]
"""

from __future__ import annotations

import dataclasses
import math
import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import pyro
import torch

from .checkpoint import CheckpointError, load_checkpoint, save_checkpoint, write_json

__all__ = [
    "ConfigError",
    "MODELS",
    "PLOTS",
    "Run",
    "RunDirError",
    "TrainConfig",
    "TrainingDiverged",
    "build_run",
    "evaluate_predictions",
    "evaluate_run",
    "num_variational_params",
    "prepare_run_dir",
    "resolve_device",
    "train",
]

#: Files a run writes in its directory (``--overwrite`` removes only these).
RUN_FILES = (
    "config.json",
    "metrics.jsonl",
    "metrics.json",
    "checkpoint.pt",
    "subspace_updates.json",
)
PLOTS = (
    "training_curves.png",
    "reliability.png",
    "ood_entropy.png",
    "layer_density.png",
    "swap_fraction.png",
)


class ConfigError(ValueError):
    """A configuration value is invalid (the message names the flag)."""


class RunDirError(ValueError):
    """The output directory cannot be used for this run."""


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


def _mlp(info: Any) -> torch.nn.Module:
    from .models import mlp

    return mlp(math.prod(info.input_shape), [400, 400], info.num_classes)


def _lenet(info: Any) -> torch.nn.Module:
    from .models import lenet

    channels, size, _ = info.input_shape
    return lenet(channels, info.num_classes, size)


def _resnet18(info: Any) -> torch.nn.Module:
    from .models import resnet18_cifar

    return resnet18_cifar(info.num_classes)


#: Network builders by name: ``info`` is the data set's ``DatasetInfo``.
MODELS: dict[str, Callable[[Any], torch.nn.Module]] = {
    "lenet": _lenet,
    "mlp": _mlp,
    "resnet18": _resnet18,
}
GUIDES = ("ssvi", "autonormal")
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
    the posterior scales. The defaults train the embedded MNIST to about
    97.5% test accuracy at density 0.1 in a few minutes on 2 CPU cores.

    Attributes:
        model: Network, a key of :data:`MODELS`.
        dataset: Data set name (see :data:`pyro_ssvi.data.DATASETS`); the
            embedded MNIST by default.
        data_dir: Directory with data sets in torchvision's layout.
        download: Download missing data sets into ``data_dir``.
        ood_dataset: Out-of-distribution set; default: the data set's usual
            one (Fashion-MNIST for MNIST); ``"none"`` to skip.
        guide: ``"ssvi"`` (:class:`~pyro_ssvi.AutoSparseNormal` +
            :class:`~pyro_ssvi.SparseSVI`) or ``"autonormal"`` (Pyro's
            ``AutoNormal`` + ``SVI``, the dense-VI baseline).
        density: Active fraction per sparse site; 1.0 runs SSVI densely.
        removal, addition, update_every, drop_fraction, drop_schedule:
            Subspace reselection, as in :class:`~pyro_ssvi.SparseSVI`.
        stop_updates_at: Fraction of the training steps after which the
            subspace is frozen.
        optimizer: ``"adam"`` or ``"sgd"`` (momentum ``momentum``).
        lr, momentum, weight_decay: Optimiser settings.
        lr_schedule: ``"cosine"`` (per epoch, to 0) or ``"constant"``.
        lrt: Local reparameterisation of linear and convolution layers.
        sparse_compute: With ``lrt``, sparse kernels for sparse linear layers:
            ``"auto"`` (timed once per layer), ``"on"`` or ``"off"``.
        prior_scale: Standard deviation of the Normal weight prior.
        init_scale: Initial posterior standard deviation.
        kl_weight: Weight of the KL term (1 = the ELBO).
        kl_anneal_epochs: Linear KL warm-up over this many epochs (0: none).
        epochs, batch_size: Training length and minibatch size.
        num_samples: Posterior samples for the final Monte Carlo evaluation.
        eval_batch_size: Inputs per forward pass in evaluation.
        train_limit, test_limit: Use only the first N examples (smoke runs).
        augment: Random crops (and flips where they preserve the label).
        num_workers: Data-loader workers for on-disk data sets.
        device: ``"auto"``, ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.
        seed: Seed of every random choice of the run.
    """

    model: str = "mlp"
    dataset: str = "mnist"
    data_dir: str | None = None
    download: bool = False
    ood_dataset: str | None = None
    guide: str = "ssvi"
    density: float = 0.1
    removal: str = "snr_abs"
    addition: str = "grad"
    update_every: int = 100
    drop_fraction: float = 0.3
    drop_schedule: str = "cosine"
    stop_updates_at: float = 0.75
    optimizer: str = "adam"
    lr: float = 3e-3
    momentum: float = 0.9
    weight_decay: float = 0.0
    lr_schedule: str = "cosine"
    lrt: bool = False
    sparse_compute: str = "auto"
    prior_scale: float = 1.0
    init_scale: float = 0.01
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
        _validate(self)

    def to_dict(self) -> dict[str, Any]:
        """The configuration as a JSON-serialisable dict."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "TrainConfig":
        """Rebuild a configuration, refusing unknown keys."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(f"unknown configuration keys {unknown}")
        return cls(**values)


def _choice(name: str, value: Any, options: Any) -> None:
    if value not in options:
        raise ConfigError(f"--{name} must be one of {sorted(options)}, got {value!r}")


def _positive(name: str, value: Any, *, minimum: float = 1) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"--{name} must be a number, got {value!r}")
    if not (math.isfinite(value) and value >= minimum):
        raise ConfigError(f"--{name} must be >= {minimum}, got {value!r}")


def _validate(c: TrainConfig) -> None:
    from .criteria import CRITERIA
    from .data import DATASETS
    from .schedules import SCHEDULES
    from .svi import ADDITIONS

    _choice("model", c.model, MODELS)
    _choice("dataset", c.dataset, DATASETS)
    if c.ood_dataset not in (None, "none"):
        _choice("ood-dataset", c.ood_dataset, DATASETS)
    _choice("guide", c.guide, GUIDES)
    _choice("removal", c.removal, CRITERIA)
    _choice("addition", c.addition, ADDITIONS)
    _choice("drop-schedule", c.drop_schedule, SCHEDULES)
    _choice("optimizer", c.optimizer, OPTIMIZERS)
    _choice("lr-schedule", c.lr_schedule, LR_SCHEDULES)
    _choice("sparse-compute", c.sparse_compute, SPARSE_COMPUTE)
    if not (isinstance(c.density, (int, float)) and 0.0 < c.density <= 1.0):
        raise ConfigError(
            f"--density must be in (0, 1], got {c.density!r}; e.g. 0.1 keeps 10% "
            "of each weight tensor, 1.0 trains densely"
        )
    if not 0.0 <= c.drop_fraction < 1.0:
        raise ConfigError(f"--drop-fraction must be in [0, 1), got {c.drop_fraction}")
    if not 0.0 <= c.stop_updates_at <= 1.0:
        raise ConfigError(
            f"--stop-updates-at is a fraction of training in [0, 1], "
            f"got {c.stop_updates_at}"
        )
    for name in ("epochs", "batch_size", "num_samples", "eval_batch_size"):
        _positive(name.replace("_", "-"), getattr(c, name))
    _positive("update-every", c.update_every)
    for name in ("lr", "prior_scale", "init_scale"):
        _positive(name.replace("_", "-"), getattr(c, name), minimum=1e-30)
    for name in ("kl_weight", "weight_decay", "momentum", "kl_anneal_epochs"):
        _positive(name.replace("_", "-"), getattr(c, name), minimum=0)
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
    """``"auto"`` is CUDA when available, else CPU; CUDA must exist if asked."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(
            f"--device {name}: CUDA is not available on this machine "
            "(use --device cpu or auto)"
        )
    return device


def _load_data(c: TrainConfig, train: bool) -> tuple[Any, Any, Any]:
    from .data import DATASETS, load_dataset

    opts: dict[str, Any] = dict(data_dir=c.data_dir, download=c.download)
    train_data = (
        load_dataset(c.dataset, "train", augment=c.augment, limit=c.train_limit, **opts)
        if train
        else None
    )
    test_data = load_dataset(c.dataset, "test", limit=c.test_limit, **opts)
    ood_name = _ood_name(c)
    ood_data = None
    if ood_name not in (None, "none"):
        info, ood_info = DATASETS[c.dataset], DATASETS[ood_name]
        if info.input_shape != ood_info.input_shape:
            raise ValueError(
                f"--ood-dataset {ood_name} has inputs {ood_info.input_shape}, "
                f"but {c.dataset} has {info.input_shape}"
            )
        try:
            ood_data = load_dataset(
                ood_name, "test", limit=c.test_limit, normalize_like=c.dataset, **opts
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

    from .data import DATASETS
    from .guides import AutoSparseNormal
    from .models import BayesianClassifier
    from .svi import SparseSVI

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
        )
    else:
        guide = AutoNormal(
            model, init_loc_fn=model.init_loc_fn(), init_scale=c.init_scale
        )
    x0, y0 = _first_batch(train_data if train_data is not None else test_data)
    with torch.no_grad():
        guide(x0.to(device), y0.to(device))  # materialise the parameters
    optim = _optimizer(c)
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
    loss = TraceMeanField_ELBO()
    if c.guide == "ssvi":
        run.svi = SparseSVI(
            model,
            guide,
            optim,
            loss,
            update_every=c.update_every,
            removal=c.removal,
            addition=c.addition,
            drop_fraction=c.drop_fraction,
            drop_schedule=c.drop_schedule,
            stop_updates_at=int(c.stop_updates_at * run.total_steps),
            num_steps=run.total_steps,
            kl_weight=run.kl_weight,
            local_reparameterization=c.lrt,
            sparse_compute=SPARSE_COMPUTE[c.sparse_compute],
        )
    else:
        run.svi = SVI(model, guide, optim, loss)
    return run


class _OptimArgs:
    """Per-parameter optimiser arguments (Pyro calls this with each name).

    Weight decay applies to means and deterministic parameters, never to the
    unconstrained posterior scales (it would pull every sigma towards
    softplus(0) = 0.69), as in the reference implementation. ``lr`` is
    mutable so that optimisers created later start at the current rate.
    """

    def __init__(self, config: TrainConfig) -> None:
        self.config = config
        self.lr = config.lr

    def __call__(self, param_name: str) -> dict[str, float]:
        c = self.config
        decay = 0.0 if ".scales." in f".{param_name}" else c.weight_decay
        args = {"lr": self.lr, "weight_decay": decay}
        if c.optimizer == "sgd":
            args["momentum"] = c.momentum
        return args


def _optimizer(c: TrainConfig) -> Any:
    args = _OptimArgs(c)
    if c.optimizer == "adam":
        return pyro.optim.Adam(args)  # type: ignore[attr-defined]
    return pyro.optim.SGD(args)  # type: ignore[attr-defined]


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


def _checkpoint_state(run: Run) -> dict[str, Any]:
    svi_state = run.svi.state_dict() if hasattr(run.svi, "update_subspace") else {}
    return {
        "config": run.config.to_dict(),
        "epoch": run.epoch,
        "num_data": run.num_data,
        "history": run.history,
        "elapsed_s": run.elapsed_s,
        "guide": run.guide.state_dict(),
        "model": run.model.state_dict(),
        "optimizer": run.optim.get_state(),
        "svi": svi_state,
        "rng": _rng_state(),
    }


def _restore(run: Run, state: dict[str, Any]) -> None:
    try:
        run.guide.load_state_dict(state["guide"])
        run.model.load_state_dict(state["model"])
    except (RuntimeError, ValueError) as e:
        raise CheckpointError(
            f"the checkpoint does not fit this model and guide: {e}"
        ) from e
    # Pyro restores each optimiser's param_groups, lr included, when it first
    # creates the optimiser: give them the lr of the epoch that comes next.
    next_lr = _lr_at(run.config, int(state["epoch"]) + 1)
    optimizer_state = state["optimizer"]
    for opt_state in optimizer_state.values():
        for group in opt_state.get("param_groups", []):
            group["lr"] = next_lr
    run.optim.set_state(optimizer_state)
    if state["svi"]:
        run.svi.load_state_dict(state["svi"])
    run.epoch = int(state["epoch"])
    run.history = list(state["history"])
    run.elapsed_s = float(state["elapsed_s"])
    _set_rng_state(state["rng"])


# Configuration fields that may differ when resuming or re-evaluating.
_RUNTIME_FIELDS = frozenset({"device", "num_workers", "eval_batch_size", "download"})


def _check_same_run(saved: dict[str, Any], config: TrainConfig) -> None:
    current = config.to_dict()
    diff = {
        k: (saved.get(k), v)
        for k, v in current.items()
        if k not in _RUNTIME_FIELDS and saved.get(k) != v
    }
    if diff:
        text = ", ".join(f"{k}: saved {a!r} vs now {b!r}" for k, (a, b) in diff.items())
        raise CheckpointError(
            f"the checkpoint is from a different run ({text}); resume with the "
            "saved settings or start a new --output-dir"
        )


# ---------------------------------------------------------------- the loop
def _batches(
    run: Run, epoch: int
) -> tuple[Iterator[tuple[torch.Tensor, torch.Tensor]], int]:
    """Shuffled minibatches, ordered by a generator seeded from (seed, epoch)."""
    c = run.config
    gen = torch.Generator().manual_seed(c.seed * 1_000_003 + epoch)
    data = run.train_data
    if isinstance(data, torch.utils.data.TensorDataset):
        x, y = data.tensors
        perm = torch.randperm(len(x), generator=gen)
        chunks = perm.split(c.batch_size)
        return ((x[i], y[i]) for i in chunks), len(chunks)
    loader = torch.utils.data.DataLoader(
        data,
        batch_size=c.batch_size,
        shuffle=True,
        generator=gen,
        num_workers=c.num_workers,
    )
    return iter(loader), len(loader)


def _lr_at(c: TrainConfig, epoch: int) -> float:
    """Learning rate of a 1-based epoch (cosine: from ``lr`` towards 0)."""
    if c.lr_schedule == "cosine":
        return c.lr * 0.5 * (1 + math.cos(math.pi * (epoch - 1) / c.epochs))
    return c.lr


def _set_lr(run: Run, epoch: int) -> float:
    lr = _lr_at(run.config, epoch)
    run.optim.pt_optim_args.lr = lr  # optimisers created later start here
    for optimizer in run.optim.optim_objs.values():
        for group in getattr(optimizer, "param_groups", []):
            group["lr"] = lr
    return lr


def _density(run: Run) -> float:
    return float(run.guide.density) if hasattr(run.guide, "density") else 1.0


def _train_epoch(run: Run, epoch: int, bar: Any) -> float:
    """One pass over the training data; returns the mean per-example loss.

    Each step optimises the negative ELBO divided by the training-set size
    (``poutine.scale(1/N)`` on every site): the mean cross-entropy plus
    ``kl_weight * KL / N``, the reference implementation's objective, so its
    SGD learning rates carry over.
    """
    from pyro import poutine

    from .poutine import LatentScaleMessenger

    batches, num_batches = _batches(run, epoch)
    per_example = poutine.scale(scale=1.0 / run.num_data)
    total, count = 0.0, 0
    inner = _progress(
        bar is not None, total=num_batches, desc=f"epoch {epoch}", leave=False
    )
    sparse = hasattr(run.svi, "update_subspace")  # SparseSVI weights its own KL
    for i, (x, y) in enumerate(batches):
        x, y = x.to(run.device, non_blocking=True), y.to(run.device)
        step = (epoch - 1) * run.steps_per_epoch + i + 1
        kl = LatentScaleMessenger(1.0 if sparse else run.kl_weight(step))
        try:
            with per_example, kl:
                loss = run.svi.step(x, y)
            if not math.isfinite(loss):  # SparseSVI raises; plain SVI returns it
                raise FloatingPointError(f"the loss is {loss} at step {step}.")
            total += loss
        except FloatingPointError as e:
            raise TrainingDiverged(
                f"training diverged in epoch {epoch}: {e} {_kept(run)}"
            ) from e
        count += 1
        inner.update()
        if inner.n % 20 == 0:
            inner.set_postfix(loss=f"{total / count:.4g}", refresh=False)
    inner.close()
    return total / max(count, 1)


def _kept(run: Run) -> str:
    if run.epoch == 0:
        return "No epoch had finished, so no checkpoint was written."
    return f"The last good checkpoint (after epoch {run.epoch}) is kept."


def _check_finite(run: Run, epoch: int) -> None:
    """Refuse to evaluate or checkpoint parameters that have diverged.

    Checks each Pyro parameter's constrained value against its constraint, so
    a scale whose softplus underflowed to 0 counts as diverged too.
    """
    for path, module in run.guide.named_modules():
        for name, (constraint, _) in getattr(module, "_pyro_params", {}).items():
            with torch.no_grad():
                value = getattr(module, name)
                ok = torch.isfinite(value).all() and constraint.check(value).all()
            if not bool(ok):
                raise TrainingDiverged(
                    f"training diverged in epoch {epoch}: guide parameter "
                    f"{path}.{name} left its support; lower --lr or --init-scale. "
                    + _kept(run)
                )


def _progress(enabled: bool, **kwargs: Any) -> Any:
    from tqdm.auto import tqdm

    return tqdm(disable=not enabled, dynamic_ncols=True, **kwargs)


def _quick_eval(run: Run) -> dict[str, float]:
    from .predict import evaluate

    m = evaluate(
        run.model,
        run.guide,
        run.test_data,
        mean_weights=True,
        batch_size=run.config.eval_batch_size,
        device=run.device,
    )
    return {"test_accuracy": m["accuracy"], "test_nll": m["nll"], "test_ece": m["ece"]}


def _write_progress_files(run: Run, out: Path) -> None:
    import json

    lines = "".join(json.dumps(row, sort_keys=True) + "\n" for row in run.history)
    from .checkpoint import atomic_write

    atomic_write(out / "metrics.jsonl", lambda fh: fh.write(lines.encode()))
    if hasattr(run.svi, "updates"):
        write_json(
            out / "subspace_updates.json",
            [u._asdict() for u in run.svi.updates],
        )
    save_checkpoint(out / "checkpoint.pt", _checkpoint_state(run))


def prepare_run_dir(out: str | os.PathLike, *, overwrite: bool, resume: bool) -> Path:
    """Check that ``out`` can hold this run, clearing an old run if asked.

    Raises:
        RunDirError: If ``out`` holds another run (or other files) and neither
            ``overwrite`` nor ``resume`` is set, if ``resume`` finds no
            checkpoint, or if the directory cannot be created or written.
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise RunDirError(f"--output-dir {out} exists and is not a directory")
    if resume:
        if not (out / "checkpoint.pt").is_file():
            raise RunDirError(f"--resume: {out} has no checkpoint.pt to resume from")
        return out
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            what = "a run" if (out / "config.json").exists() else "other files"
            raise RunDirError(
                f"--output-dir {out} already holds {what}; pass --overwrite to "
                "replace it, --resume to continue it, or choose another directory"
            )
        for name in RUN_FILES:
            (out / name).unlink(missing_ok=True)
        for name in PLOTS:
            (out / "plots" / name).unlink(missing_ok=True)
    try:
        (out / "plots").mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise RunDirError(f"cannot create --output-dir {out}: {e.strerror}") from e
    if not os.access(out, os.W_OK):
        raise RunDirError(f"--output-dir {out} is not writable")
    return out


def _environment(run: Run) -> dict[str, Any]:
    return {
        "pyro_ssvi": __import__("pyro_ssvi").__version__,
        "torch": torch.__version__,
        "pyro": pyro.__version__,
        "device": str(run.device),
        "num_threads": torch.get_num_threads(),
    }


def train(
    config: TrainConfig,
    output_dir: str | os.PathLike,
    *,
    overwrite: bool = False,
    resume: bool = False,
    progress: bool = True,
    stop_after_epoch: int | None = None,
) -> dict[str, Any]:
    """Train, evaluate and write a run directory; returns the final metrics.

    Args:
        config: The run's configuration.
        output_dir: The run directory.
        overwrite: Replace a run already in ``output_dir``.
        resume: Continue the run in ``output_dir`` from its checkpoint (its
            configuration must equal ``config`` apart from device, workers and
            evaluation batch size).
        progress: Show tqdm progress bars.
        stop_after_epoch: Stop (with the checkpoint written) after this epoch,
            as if killed; for tests and staged training.

    Returns:
        The final metrics (also in ``metrics.json``), or an empty dict when
        stopped early by ``stop_after_epoch``.

    Raises:
        RunDirError, CheckpointError, ValueError: For unusable inputs.
        TrainingDiverged: If the loss becomes NaN or infinite.
    """
    start = time.perf_counter()
    out = prepare_run_dir(output_dir, overwrite=overwrite, resume=resume)
    state = None
    if resume:
        state = load_checkpoint(out / "checkpoint.pt", map_location="cpu")
        _check_same_run(state["config"], config)
    run = build_run(config)
    if state is not None:
        _restore(run, state)
    else:
        write_json(out / "config.json", {**config.to_dict(), "env": _environment(run)})
    elapsed0 = run.elapsed_s
    bar = _progress(progress, total=config.epochs, initial=run.epoch, desc="training")
    for epoch in range(run.epoch + 1, config.epochs + 1):
        lr = _set_lr(run, epoch)
        epoch_start = time.perf_counter()
        train_loss = _train_epoch(run, epoch, bar if progress else None)
        _check_finite(run, epoch)
        row = {
            "epoch": epoch,
            "train_loss": train_loss,
            "lr": lr,
            "density": _density(run),
            "epoch_time_s": 0.0,
        }
        row.update(_quick_eval(run))
        row["epoch_time_s"] = time.perf_counter() - epoch_start
        if hasattr(run.svi, "num_updates"):
            row["num_updates"] = run.svi.num_updates
        run.history.append(row)
        run.epoch = epoch
        run.elapsed_s = elapsed0 + time.perf_counter() - start
        _write_progress_files(run, out)
        bar.update()
        bar.set_postfix(
            loss=f"{train_loss:.4g}",
            acc=f"{row['test_accuracy']:.4f}",
            density=f"{row['density']:.3f}",
        )
        if stop_after_epoch is not None and epoch >= stop_after_epoch:
            bar.close()
            return {}
    bar.close()
    metrics = _final_evaluation(run, out)
    metrics["wall_time_s"] = elapsed0 + time.perf_counter() - start
    write_json(out / "metrics.json", metrics)
    return metrics


# --------------------------------------------------------------- evaluation
def _site_sizes(guide: Any) -> tuple[dict[str, int], dict[str, int]]:
    """``(num_active, numel)`` of every weight site (dense sites fully active)."""
    if hasattr(guide, "num_active"):
        active = guide.num_active()
        numel = {n: guide.site_shape(n).numel() for n in active}
        for name in guide._meta:
            if name not in active and len(guide.site_shape(name)) >= 2:
                active[name] = numel[name] = guide.site_shape(name).numel()
        return active, numel
    sizes = {
        name: value.numel()
        for name, value in guide.median().items()
        if value.dim() >= 2
    }
    return dict(sizes), dict(sizes)


def num_variational_params(guide: Any) -> int:
    """Number of variational parameters (means and scales) of a guide."""
    return sum(p.numel() for p in guide.parameters())


def evaluate_predictions(
    run: Run, data: Any, ood_data: Any = None, *, num_samples: int | None = None
) -> tuple[dict[str, Any], Any, Any]:
    """Monte Carlo metrics on ``data`` (and OOD data) plus mean-weight metrics.

    Returns:
        ``(metrics, prediction, ood_prediction)``; metric keys are prefixed
        ``test_`` (Monte Carlo), ``test_*_mean_weights`` and ``ood_``.
    """
    from .metrics import classification_metrics
    from .predict import predict

    k = num_samples or run.config.num_samples
    opts: dict[str, Any] = dict(
        batch_size=run.config.eval_batch_size, device=run.device
    )
    pred = predict(run.model, run.guide, data, num_samples=k, **opts)
    ood = (
        None
        if ood_data is None
        else predict(run.model, run.guide, ood_data, num_samples=k, **opts)
    )
    if pred.labels is None:
        raise ValueError("evaluation data must carry labels")
    mc = classification_metrics(
        pred.probs,
        pred.labels,
        pred.mean_entropy,
        probs_ood=None if ood is None else ood.probs,
    )
    mean = predict(run.model, run.guide, data, mean_weights=True, **opts)
    mw = classification_metrics(mean.probs, pred.labels)
    metrics: dict[str, Any] = {"num_samples": k}
    for key, value in mc.items():
        metrics[key if key.startswith("ood_") else f"test_{key}"] = value
    for key in ("accuracy", "nll", "ece", "brier", "marginal_ce"):
        metrics[f"test_{key}_mean_weights"] = mw[key]
    metrics.setdefault("ood_auroc", None)
    return metrics, pred, ood


def _flops(run: Run, active: dict[str, int], numel: dict[str, int]) -> dict[str, float]:
    """Training and inference FLOPs of this run versus dense VI (spec §8)."""
    from .data import DATASETS
    from .flops import flops_report, layer_costs

    c = run.config
    costs = layer_costs(run.model, DATASETS[c.dataset].input_shape)
    report = flops_report(
        costs,
        {n: active[n] / numel[n] for n in active if n in costs},
        num_examples=run.num_data,
        epochs=c.epochs,
        batch_size=c.batch_size,
        update_every=c.update_every,
        stop_fraction=c.stop_updates_at,
        dense_layers=[n for n in getattr(run.model, "dense_sites", ()) if n in costs],
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


def _ood_name(c: TrainConfig) -> str | None:
    from .data import default_ood

    return default_ood(c.dataset) if c.ood_dataset is None else c.ood_dataset


def _final_evaluation(run: Run, out: Path) -> dict[str, Any]:
    from . import plots
    from .metrics import predictive_entropy

    metrics, pred, ood = evaluate_predictions(run, run.test_data, run.ood_data)
    active, numel = _site_sizes(run.guide)
    c = run.config
    metrics.update(
        {
            "model": c.model,
            "dataset": c.dataset,
            "guide": c.guide,
            "ood_dataset": None if ood is None else _ood_name(c),
            "density": _density(run),
            "num_variational_params": num_variational_params(run.guide),
            "num_weights": sum(numel.values()),
            "num_active_weights": sum(active.values()),
            "checkpoint_bytes": (out / "checkpoint.pt").stat().st_size,
            "epochs": run.epoch,
            "steps": run.epoch * run.steps_per_epoch,
            "num_updates": getattr(run.svi, "num_updates", 0),
            "train_time_s": sum(r["epoch_time_s"] for r in run.history),
            "seed": c.seed,
            "device": str(run.device),
        }
    )
    metrics.update(_flops(run, active, numel))
    lrt = getattr(run.svi, "lrt", None)
    if lrt is not None:
        metrics["lrt_paths"] = dict(lrt.decisions)
    pdir = out / "plots"
    plots.plot_training_curves(run.history, pdir / "training_curves.png")
    plots.plot_reliability(pred.probs, pred.labels, pdir / "reliability.png")
    if ood is not None:
        plots.plot_ood_entropy(
            predictive_entropy(pred.probs),
            predictive_entropy(ood.probs),
            pdir / "ood_entropy.png",
            labels=(c.dataset, str(metrics["ood_dataset"])),
        )
    plots.plot_layer_density(active, numel, pdir / "layer_density.png")
    sparse_active = run.guide.num_active() if hasattr(run.guide, "num_active") else {}
    plots.plot_swap_fraction(
        getattr(run.svi, "updates", []), sparse_active, pdir / "swap_fraction.png"
    )
    return metrics


def evaluate_run(
    path: str | os.PathLike,
    *,
    dataset: str | None = None,
    ood_dataset: str | None = None,
    data_dir: str | None = None,
    num_samples: int | None = None,
    device: str | None = None,
    test_limit: int | None = None,
) -> dict[str, Any]:
    """Re-evaluate a saved run (a run directory or its ``checkpoint.pt``).

    Args:
        path: Run directory or checkpoint file.
        dataset: Evaluate on this data set instead of the run's own (same
            input shape and number of classes).
        ood_dataset: OOD set (default: the run's, or the new data set's usual
            one when ``dataset`` is given; ``"none"`` to skip).
        data_dir: Directory with on-disk data sets.
        num_samples: Monte Carlo samples (default: the run's).
        device: Device (default: the run's setting).
        test_limit: Use only the first N test examples.

    Returns:
        The metrics, as in ``metrics.json`` (``test_*``, ``ood_*``, ...).

    Raises:
        CheckpointError: If the checkpoint is missing, corrupt or unsafe.
        ValueError: If the data set does not fit the model.
    """
    from .data import DATASETS

    path = Path(path)
    ckpt = path / "checkpoint.pt" if path.is_dir() else path
    state = load_checkpoint(ckpt, map_location="cpu")
    saved = TrainConfig.from_dict(state["config"])
    changes: dict[str, Any] = {}
    if dataset is not None and dataset != saved.dataset:
        a, b = DATASETS[saved.dataset], DATASETS.get(dataset)
        if b is None or (a.input_shape, a.num_classes) != (
            b.input_shape,
            b.num_classes,
        ):
            raise ValueError(
                f"--dataset {dataset} does not fit a model trained on "
                f"{saved.dataset} (inputs {a.input_shape}, {a.num_classes} classes)"
            )
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
    _restore(run, state)
    metrics, _, _ = evaluate_predictions(
        run, run.test_data, run.ood_data, num_samples=num_samples
    )
    metrics.update(dataset=config.dataset, checkpoint=str(ckpt), epoch=run.epoch)
    return metrics
