"""The training loop and its per-epoch outputs."""

from __future__ import annotations

import json
import math
import os
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any, Iterator

import pyro
import torch
import torch.distributed as dist

from ..._pyro_compat import is_invalid_values_error
from ...distributed import (
    all_reduce_mean_,
    is_distributed,
    is_main_process,
    process_group,
    shard,
    world_size,
)
from ...poutine import LatentScaleMessenger
from ..checkpoint import (
    WriteError,
    atomic_write,
    save_checkpoint,
    signals_deferred,
    write_json,
)
from ._active import save_active_start, write_active_set_plot
from ._config import TrainConfig
from ._errors import RunInterrupted, RunStopped, TrainingDiverged
from ._evaluate import final_evaluation, quick_eval
from ._lock import own_on_rank_0
from ._rng import python_and_numpy_rng_kept
from ._run import (
    Run,
    build_run,
    checkpoint_state,
    density_of,
    progress_bar,
    restore,
)
from ._rundir import (
    RESUME_ADVICE,
    check_checkpoint_matches,
    load_run_state,
    owned_run_dir,
)


# ---------------------------------------------------------------- the loop
def _batches(
    run: Run, epoch: int
) -> tuple[Iterator[tuple[torch.Tensor, torch.Tensor]], int]:
    """Shuffled minibatches, ordered by a generator seeded from (seed, epoch).

    ``batch_size`` is the global batch: under ``torchrun`` each rank takes its
    block of every global batch (in-memory data, so that N processes solve the
    same problem as one) or a ``DistributedSampler`` shard (on-disk data).
    """
    c = run.config
    gen = torch.Generator().manual_seed(c.seed * 1_000_003 + epoch)
    data = run.train_data
    ranks = world_size()
    if isinstance(data, torch.utils.data.TensorDataset):
        x, y = data.tensors
        perm = torch.randperm(len(x), generator=gen)
        chunks = [i for i in perm.split(c.batch_size) if len(i) >= ranks]
        return ((x[shard(i)], y[shard(i)]) for i in chunks), len(chunks)
    sampler: Any = None
    if ranks > 1:
        sampler = torch.utils.data.DistributedSampler(data, seed=c.seed)
        sampler.set_epoch(epoch)
    loader = torch.utils.data.DataLoader(
        data,
        batch_size=max(1, c.batch_size // ranks),
        shuffle=sampler is None,
        sampler=sampler,
        generator=gen if sampler is None else None,
        num_workers=c.num_workers,
    )
    return iter(loader), len(loader)


def _train_epoch(run: Run, epoch: int, bar: Any) -> float:
    """One pass over the training data; returns the mean per-example loss."""
    batches, num_batches = _batches(run, epoch)
    total, count = 0.0, 0
    with progress_bar(
        bar is not None, total=num_batches, desc=f"epoch {epoch}", leave=False
    ) as inner:
        for i, (x, y) in enumerate(batches):
            total += _step(run, x, y, epoch, (epoch - 1) * run.steps_per_epoch + i + 1)
            count += 1
            inner.update()
            if inner.n % 20 == 0:
                inner.set_postfix(loss=f"{total / count:.4g}", refresh=False)
    return total / max(count, 1)


def _step(run: Run, x: torch.Tensor, y: torch.Tensor, epoch: int, step: int) -> float:
    """One training step on a minibatch; raises ``TrainingDiverged`` on a bad loss."""
    x, y = x.to(run.device, non_blocking=True), y.to(run.device)
    try:
        return train_step(run, x, y, run.kl_weight(step))
    except FloatingPointError as e:
        raise TrainingDiverged(
            f"training diverged in epoch {epoch}, step {step}: {e} {_kept(run)}"
        ) from e


def train_step(run: Run, x: torch.Tensor, y: torch.Tensor, kl_weight: float) -> float:
    """One step of the protocol shared by SSVI and dense VI; returns the loss.

    The loss optimised is the negative ELBO divided by the training-set size
    ``N``: the minibatch's mean cross-entropy plus ``kl_weight * KL(q || p) /
    N``, the reference implementation's objective, so its learning rates (SGD
    too) carry over. Under ``torchrun`` the returned loss is the mean over
    ranks, and gradients are averaged by ``DistributedDataParallel``.

    Raises:
        FloatingPointError: If the loss is NaN or infinite on any rank; then no
            parameter, moment or subspace has changed.
    """
    run.optimizer.zero_grad()
    with ExitStack() as handlers:
        handlers.enter_context(LatentScaleMessenger(kl_weight))
        if run.weight_sampling is not None:
            handlers.enter_context(run.weight_sampling)
        try:
            loss: torch.Tensor | None = run.loss(x, y) / run.num_data
        except ValueError as e:
            # Pyro's validation rejects NaN/inf distribution parameters before
            # a loss exists: a diverged run, like a non-finite loss.
            if not is_invalid_values_error(e):
                raise
            loss = None
    # Every rank learns whether any failed before anyone raises (or stalls).
    local = torch.tensor(math.nan if loss is None else loss.item())
    value = float(all_reduce_mean_(local.to(_reduce_device(run.device))))
    if not math.isfinite(value):
        raise FloatingPointError(f"the loss is {value}; lower --lr or --init-scale.")
    assert loss is not None
    loss.backward()
    run.optimizer.step()
    run.subspace.step(x, y)
    return value


def _reduce_device(device: torch.device) -> torch.device:
    """Where a collective runs: the GPU under ``nccl``, else the CPU."""
    return (
        device
        if is_distributed() and dist.get_backend() == "nccl"
        else torch.device("cpu")
    )


def _kept(run: Run) -> str:
    """Which checkpoint a stopped run keeps, and how to go on from there."""
    done = run.checkpoint_epoch
    if done == 0:
        return (
            "No epoch had finished, so there is no checkpoint: run the same "
            "command again to start over."
        )
    last = " (the last; --resume evaluates it)" if done == run.config.epochs else ""
    return f"The checkpoint after epoch {done}{last} is kept: continue with --resume."


def _check_finite(run: Run, epoch: int) -> None:
    """Refuse to evaluate or checkpoint parameters that have diverged.

    Every parameter of the guide must be finite, and every posterior scale
    must satisfy the guide's ``scale_constraint`` (a scale whose softplus
    underflowed to 0 counts as diverged too).
    """
    guide = run.guide
    with torch.no_grad():
        checks = [
            (name, bool(torch.isfinite(v).all()))
            for name, v in guide.named_pyro_params()
        ]
        checks += [
            (f"scales.{name}", bool(guide.scale_constraint.check(v).all()))
            for name, v in guide.scales.named_pyro_params()
        ]
    for name, ok in checks:
        if not ok:
            raise TrainingDiverged(
                f"training diverged in epoch {epoch}: guide parameter {name} left "
                f"its support; lower --lr or --init-scale. {_kept(run)}"
            )


def _headline(row: dict[str, Any]) -> dict[str, str]:
    """The epoch's main test metric for the progress bar: accuracy or RMSE."""
    if "test_accuracy" in row:
        return {"acc": f"{row['test_accuracy']:.4f}"}
    return {"rmse": f"{row['test_rmse']:.4g}"}


def _write_history(run: Run, out: Path) -> None:
    lines = "".join(json.dumps(row, sort_keys=True) + "\n" for row in run.history)
    atomic_write(out / "metrics.jsonl", lambda fh: fh.write(lines.encode()))


def _write_progress_files(run: Run, out: Path) -> None:
    """The epoch's checkpoint first, then the files that describe it.

    SIGINT and SIGTERM wait until all are written; after a kill in between,
    ``metrics.jsonl`` may lag the checkpoint by an epoch, and a resume
    rewrites it from the checkpoint's history.
    """
    if not is_main_process():  # one writer: rank 0
        run.checkpoint_epoch = run.epoch
        return
    with signals_deferred():
        save_checkpoint(out / "checkpoint.pt", checkpoint_state(run))
        run.checkpoint_epoch = run.epoch
        write_json(
            out / "subspace_updates.json",
            [u._asdict() for u in run.subspace.updates],
        )
        _write_history(run, out)


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
            configuration, and ``config.json``'s, must equal ``config`` apart
            from device, workers, evaluation batch size and download); a run
            that stopped before its first checkpoint starts again.
        progress: Show tqdm progress bars.
        stop_after_epoch: Stop (with the checkpoint written) after this epoch,
            as if killed; for tests and staged training.

    Returns:
        The final metrics (also in ``metrics.json``), or an empty dict when
        stopped early by ``stop_after_epoch``.

    Raises:
        RunDirInUse: If another process owns ``output_dir``.
        RunDirError, CheckpointError, ValueError: For unusable inputs.
        TrainingDiverged: If the loss becomes NaN or infinite.
        RunStopped: If a file cannot be written (e.g. a full disk).
        RunInterrupted: On Ctrl-C (a ``KeyboardInterrupt``).

    Each of these leaves the last good checkpoint, and its message says which
    one and how to continue. Stale temporary files of killed writes are
    removed when the run starts.

    The run owns ``output_dir`` from start to end: it holds the exclusive
    lock ``.pyro-ssvi.lock`` there (see
    :class:`~pyro_ssvi.app.training.RunDirInUse`), so a second run into the same
    directory is refused, changing nothing, while this one runs; a lock left
    by a killed process is free again at once.

    Under ``torchrun`` (``WORLD_SIZE`` > 1) every process calls this: each
    trains on its share of every global batch with ``DistributedDataParallel``
    (``gloo`` on CPUs, ``nccl`` on GPUs), evaluation is sharded and gathered,
    and only rank 0 writes files. Parameters are module-local during the run.
    """
    start = time.perf_counter()
    with (
        process_group(config.device),
        pyro.settings.context(module_local_params=True),
        ExitStack() as owned,
    ):
        # Rank 0 owns the directory (see _lock) until the run ends.
        run_dir = owned_run_dir(output_dir, overwrite=overwrite, resume=resume)
        own_on_rank_0(owned, run_dir)
        out = Path(output_dir)
        return _train(config, out, start, resume, progress, stop_after_epoch)


def _train(
    config: TrainConfig,
    out: Path,
    start: float,
    resume: bool,
    progress: bool,
    stop_after_epoch: int | None,
) -> dict[str, Any]:
    progress = progress and is_main_process()
    state = _resume_state(out, config) if resume else None
    run = build_run(config)
    if state is not None:
        restore(run, state, source=str(out / "checkpoint.pt"))
        if is_main_process():  # a kill may have left metrics.jsonl out of step
            _write_history(run, out)
    elif is_main_process():
        env = {**_environment(run), "world_size": world_size()}
        write_json(out / "config.json", {**config.to_dict(), "env": env})
    try:
        if state is None and is_main_process():  # a stop here is in epoch 1
            save_active_start(run.guide, out)
        return _epochs_and_evaluation(run, out, start, progress, stop_after_epoch)
    except KeyboardInterrupt as e:
        where = (
            "in the final evaluation"
            if run.epoch == config.epochs
            else f"in epoch {run.epoch + 1} of {config.epochs}"
        )
        raise RunInterrupted(f"training in {out} stopped {where}. {_kept(run)}") from e
    except WriteError as e:
        raise RunStopped(f"{e}. {_kept(run)}") from e


def _resume_state(out: Path, config: TrainConfig) -> dict[str, Any] | None:
    """The checkpoint to continue from (None: the run never wrote one)."""
    ckpt = out / "checkpoint.pt"
    if not ckpt.is_file():
        return None
    state, saved = load_run_state(ckpt, advice=RESUME_ADVICE)
    check_checkpoint_matches(out, saved, config)
    return state


def _epochs_and_evaluation(
    run: Run,
    out: Path,
    start: float,
    progress: bool,
    stop_after_epoch: int | None,
) -> dict[str, Any]:
    config = run.config
    elapsed0 = run.elapsed_s
    # Bars close (and end their line) on exceptions too, before any message.
    with progress_bar(
        progress, total=config.epochs, initial=run.epoch, desc="training"
    ) as bar:
        for epoch in range(run.epoch + 1, config.epochs + 1):
            lr = run.optimizer.param_groups[0]["lr"]
            epoch_start = time.perf_counter()
            train_loss = _train_epoch(run, epoch, bar if progress else None)
            run.lr_scheduler.step()
            _check_finite(run, epoch)
            row = {
                "epoch": epoch,
                "train_loss": train_loss,
                "lr": lr,
                "density": density_of(run),
                "epoch_time_s": 0.0,
            }
            # Evaluation must not shift the training noise (e.g. when evaluating a
            # shard per rank, or evaluating more often), nor the RNG states that
            # the checkpoint saves: fork the RNGs around it.
            cuda = [torch.cuda.current_device()] if run.device.type == "cuda" else []
            with torch.random.fork_rng(devices=cuda), python_and_numpy_rng_kept():
                row.update(quick_eval(run))
            row["epoch_time_s"] = time.perf_counter() - epoch_start
            row["num_updates"] = run.subspace.num_updates
            run.history.append(row)
            run.epoch = epoch
            run.elapsed_s = elapsed0 + time.perf_counter() - start
            _write_progress_files(run, out)
            bar.update()
            bar.set_postfix(
                loss=f"{train_loss:.4g}",
                **_headline(row),
                density=f"{row['density']:.3f}",
            )
            if stop_after_epoch is not None and epoch >= stop_after_epoch:
                return {}
    metrics = final_evaluation(run, out, progress=progress)
    metrics["wall_time_s"] = elapsed0 + time.perf_counter() - start
    metrics["world_size"] = world_size()
    if is_main_process():
        write_active_set_plot(run.guide, out)
        write_json(out / "metrics.json", metrics)
    return metrics
