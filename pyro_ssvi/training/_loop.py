"""The training loop, run directories and per-epoch outputs."""

from __future__ import annotations

import math
import os
import time
from pathlib import Path
from typing import Any, Iterator

import pyro
import torch

from ..checkpoint import load_checkpoint, save_checkpoint, write_json
from ..distributed import (
    broadcast_object,
    is_main_process,
    process_group,
    shard,
    world_size,
)
from ._config import PLOTS, RUN_FILES, RunDirError, TrainConfig, TrainingDiverged
from ._evaluate import final_evaluation, quick_eval
from ._run import (
    Run,
    build_run,
    check_same_run,
    checkpoint_state,
    density_of,
    lr_at,
    restore,
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


def _set_lr(run: Run, epoch: int) -> float:
    lr = lr_at(run.config, epoch)
    run.optim.pt_optim_args["lr"] = lr  # optimisers created later start here
    for optimizer in run.optim.optim_objs.values():
        for group in getattr(optimizer, "param_groups", []):
            group["lr"] = lr
    return lr


def _train_epoch(run: Run, epoch: int, bar: Any) -> float:
    """One pass over the training data; returns the mean per-example loss.

    Each step optimises the negative ELBO divided by the training-set size
    (``poutine.scale(1/N)`` on every site): the mean cross-entropy plus
    ``kl_weight * KL / N``, the reference implementation's objective, so its
    SGD learning rates carry over.
    """
    from pyro import poutine

    from ..poutine import LatentScaleMessenger

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


def _write_progress_files(run: Run, out: Path) -> None:
    import json

    if not is_main_process():  # one writer: rank 0
        return
    lines = "".join(json.dumps(row, sort_keys=True) + "\n" for row in run.history)
    from ..checkpoint import atomic_write

    atomic_write(out / "metrics.jsonl", lambda fh: fh.write(lines.encode()))
    if hasattr(run.svi, "updates"):
        write_json(
            out / "subspace_updates.json",
            [u._asdict() for u in run.svi.updates],
        )
    save_checkpoint(out / "checkpoint.pt", checkpoint_state(run))


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


def _prepare(out: str | os.PathLike, overwrite: bool, resume: bool) -> Path:
    """Rank 0 prepares the run directory; every rank gets its verdict."""
    error = None
    if is_main_process():
        try:
            prepare_run_dir(out, overwrite=overwrite, resume=resume)
        except RunDirError as e:
            error = str(e)
    error = broadcast_object(error)
    if error is not None:
        raise RunDirError(error)
    return Path(out)


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

    Under ``torchrun`` (``WORLD_SIZE`` > 1) every process calls this: each
    trains on its share of every global batch with ``DistributedDataParallel``
    (``gloo`` on CPUs, ``nccl`` on GPUs), evaluation is sharded and gathered,
    and only rank 0 writes files. Parameters are module-local during the run.
    """
    with process_group(config.device), pyro.settings.context(module_local_params=True):
        return _train(config, output_dir, overwrite, resume, progress, stop_after_epoch)


def _train(
    config: TrainConfig,
    output_dir: str | os.PathLike,
    overwrite: bool,
    resume: bool,
    progress: bool,
    stop_after_epoch: int | None,
) -> dict[str, Any]:
    start = time.perf_counter()
    out = _prepare(output_dir, overwrite, resume)
    progress = progress and is_main_process()
    state = None
    if resume:
        state = load_checkpoint(out / "checkpoint.pt", map_location="cpu")
        check_same_run(state["config"], config)
    run = build_run(config)
    if state is not None:
        restore(run, state)
    elif is_main_process():
        env = {**_environment(run), "world_size": world_size()}
        write_json(out / "config.json", {**config.to_dict(), "env": env})
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
            "density": density_of(run),
            "epoch_time_s": 0.0,
        }
        # Evaluation must not shift the training noise (e.g. when evaluating a
        # shard per rank, or evaluating more often): fork the RNG around it.
        cuda = [torch.cuda.current_device()] if run.device.type == "cuda" else []
        with torch.random.fork_rng(devices=cuda):
            row.update(quick_eval(run))
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
    metrics = final_evaluation(run, out)
    metrics["wall_time_s"] = elapsed0 + time.perf_counter() - start
    metrics["world_size"] = world_size()
    if is_main_process():
        write_json(out / "metrics.json", metrics)
    return metrics
