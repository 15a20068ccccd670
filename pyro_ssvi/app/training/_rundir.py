"""Run directories: preparing one, and reading back its saved configuration.

A run directory is never left unusable: a run that stopped before its first
checkpoint (a divergence in epoch 1, Ctrl-C, a kill) has nothing to lose, so
the same command starts it again, and ``--resume`` does too. Temporary files
that a killed write left are removed on the next start, by the process that
owns the directory (see :mod:`._lock`): never under a running command.
``config.json`` is the run's configuration; a checkpoint of another
configuration is refused.
"""

from __future__ import annotations

import dataclasses
import json
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from ..checkpoint import (
    GIVE_A_RUN,
    CheckpointError,
    WriteError,
    check_writable,
    load_checkpoint,
    remove_stale_temp_files,
)
from ._config import TrainConfig
from ._errors import ConfigError, RunDirError
from ._lock import LOCK_FILE, LOCK_FILES, holds, own_directory

#: Files a run directory holds besides ``plots/`` (``metrics.json`` last).
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
#: Configuration fields that may differ when resuming or re-evaluating.
RUNTIME_FIELDS = frozenset({"device", "num_workers", "eval_batch_size", "download"})
_COMMON_KEYS = {"config", "epoch", "num_data", "history", "elapsed_s"}
#: Keys of every training checkpoint (see ``checkpoint_state``), by layout
#: version: 2 keeps the torch optimiser's and LR scheduler's own state dicts.
STATE_KEYS = {
    2: frozenset(
        _COMMON_KEYS
        | {"guide", "model", "optimizer", "lr_scheduler", "subspace"}
        | {"sparse_compute", "rng"}
    ),
}
#: The fix for an unusable checkpoint.pt inside a run directory (``--resume``).
RESUME_ADVICE = (
    "put the run's own checkpoint.pt back, or start the run anew with --overwrite"
)


def _only_run_files(out: Path) -> bool:
    """Whether ``out`` holds nothing but run files and a plots folder of plots.

    The lock files (:data:`~._lock.LOCK_FILES`) are a run's too.
    """
    for entry in out.iterdir():
        if entry.name == "plots" and entry.is_dir():
            if any(p.name not in PLOTS for p in entry.iterdir()):
                return False
        elif entry.name not in RUN_FILES and entry.name not in LOCK_FILES:
            return False
    return True


def _clear(out: Path) -> None:
    for name in RUN_FILES:
        (out / name).unlink(missing_ok=True)
    for name in PLOTS:
        (out / "plots" / name).unlink(missing_ok=True)


def _refuse_to_replace(out: Path, overwrite: bool) -> None:
    """Raise unless ``out`` may take a new run (empty, or nothing to lose)."""
    if overwrite or not out.is_dir() or not any(out.iterdir()):
        return
    if (out / "metrics.json").is_file():
        raise RunDirError(
            f"--output-dir {out} already holds a run that finished; pass "
            "--overwrite to replace it, or choose another directory"
        )
    if (out / "checkpoint.pt").is_file():
        raise RunDirError(
            f"--output-dir {out} already holds a run, stopped with a checkpoint; "
            "pass --resume to continue it, --overwrite to replace it, or choose "
            "another directory"
        )
    if not _only_run_files(out):
        raise RunDirError(
            f"--output-dir {out} holds other files; choose a new or empty "
            "directory (or pass --overwrite to write the run's files among them)"
        )


def _check_place(out: Path, resume: bool) -> None:
    """Refuse, before creating anything, a path that is no directory or no run."""
    if out.exists() and not out.is_dir():
        raise RunDirError(
            f"--output-dir {out} exists and is not a directory; choose another one"
        )
    if resume and not out.is_dir():
        raise RunDirError(_nothing_to_resume(out))


@contextmanager
def owned_run_dir(
    out: str | os.PathLike, *, overwrite: bool, resume: bool
) -> Iterator[Path]:
    """Own ``out`` for the block (see :mod:`._lock`), prepared for the run.

    Raises:
        RunDirInUse: If another process owns it; nothing is changed.
        RunDirError: As :func:`prepare_run_dir`.
    """
    out = Path(out)
    _check_place(out, resume)
    with own_directory(out):
        yield prepare_run_dir(out, overwrite=overwrite, resume=resume)


def prepare_run_dir(out: str | os.PathLike, *, overwrite: bool, resume: bool) -> Path:
    """Check that ``out`` can hold this run, clearing an old run if allowed.

    A directory whose run stopped before its first checkpoint is reused by a
    new run and by ``resume`` alike (there is nothing to continue); stale
    temporary files of killed writes are removed in every case. All this
    happens while this process owns ``out``: called outside
    :func:`owned_run_dir` (which :func:`~pyro_ssvi.app.training.train` uses), it
    owns ``out`` for the call.

    Raises:
        RunDirInUse: If another process owns ``out``; nothing is changed.
        RunDirError: If ``out`` holds a run with a checkpoint (or other files)
            and neither ``overwrite`` nor ``resume`` is set, if ``resume``
            finds no run at all, or if the directory cannot be created or
            written.
    """
    out = Path(out)
    _check_place(out, resume)
    if not holds(out / LOCK_FILE):
        with own_directory(out):
            return _prepare_owned(out, overwrite, resume)
    return _prepare_owned(out, overwrite, resume)


def _prepare_owned(out: Path, overwrite: bool, resume: bool) -> Path:
    remove_stale_temp_files(out, RUN_FILES)
    remove_stale_temp_files(out / "plots", PLOTS)
    if resume:
        if not (out / "checkpoint.pt").is_file():
            if not (out / "config.json").is_file():
                raise RunDirError(_nothing_to_resume(out))
            _clear(out)  # stopped before its first checkpoint: start again
    else:
        _refuse_to_replace(out, overwrite)
        _clear(out)
    try:
        (out / "plots").mkdir(exist_ok=True)
        check_writable(out / "config.json")
    except WriteError as e:
        raise RunDirError(f"--output-dir {out} is not writable: {e}") from e
    except OSError as e:
        raise RunDirError(f"cannot create --output-dir {out}: {e.strerror}") from e
    return out


def _nothing_to_resume(out: Path) -> str:
    return (
        f"--resume: {out} holds no run to resume (no checkpoint.pt or "
        "config.json); run the same command without --resume to start one"
    )


# ------------------------------------------------------------- saved configs
def read_config_json(out: str | os.PathLike) -> TrainConfig | None:
    """The configuration in ``out/config.json``, or None if there is none.

    Raises:
        RunDirError: If the file is not JSON or not a valid configuration.
    """
    path = Path(out) / "config.json"
    if not path.is_file():
        return None
    try:
        values = json.loads(path.read_text())
        if not isinstance(values, dict):
            raise ValueError("it is not a JSON object")
        values.pop("env", None)
        return TrainConfig.from_dict(values)
    except (OSError, ValueError, TypeError) as e:
        raise RunDirError(
            f"{path} is not a valid run configuration ({e}); restore it, or delete "
            "it to resume from the checkpoint's own configuration"
        ) from e


def load_run_state(
    path: str | os.PathLike, *, advice: str = GIVE_A_RUN
) -> tuple[dict[str, Any], TrainConfig]:
    """A training checkpoint, checked, on the CPU, and its configuration.

    ``advice`` ends the error line of an unusable file (see
    :func:`~pyro_ssvi.app.checkpoint.load_checkpoint`).

    Raises:
        CheckpointError: If the file is not a safe pyro_ssvi checkpoint (see
            :func:`~pyro_ssvi.app.checkpoint.load_checkpoint`), lacks a training
            run's entries, or holds an invalid configuration.
    """
    state = load_checkpoint(path, map_location="cpu", advice=advice)
    missing = sorted(STATE_KEYS[state["version"]] - set(state))
    if missing:
        raise CheckpointError(
            f"checkpoint {path} lacks {missing}, so it is not from a training "
            f"run; {advice}"
        )
    try:
        if not isinstance(state["config"], dict):
            raise TypeError("it is not a dict")
        config = TrainConfig.from_dict(state["config"])
    except (ConfigError, TypeError) as e:
        raise CheckpointError(
            f"checkpoint {path} holds an invalid configuration ({e}); {advice}"
        ) from e
    return state, config


def saved_config(out: str | os.PathLike) -> TrainConfig:
    """The configuration of the run in ``out``: ``config.json``, else the checkpoint's.

    Raises:
        RunDirError: If ``out`` holds neither, or ``config.json`` is invalid.
        CheckpointError: If only the checkpoint is there and it is unusable.
    """
    out = Path(out)
    config = read_config_json(out)
    if config is not None:
        return config
    if (out / "checkpoint.pt").is_file():
        return load_run_state(out / "checkpoint.pt", advice=RESUME_ADVICE)[1]
    raise RunDirError(_nothing_to_resume(out))


def resume_config(out: str | os.PathLike, given: dict[str, Any]) -> TrainConfig:
    """The saved configuration of ``out``, with settings given now checked against it.

    Args:
        out: The run directory.
        given: ``TrainConfig`` fields set explicitly now (e.g. by flags); the
            runtime ones (device, workers, evaluation batch size, download)
            replace the saved values, every other one must equal it.

    Raises:
        ConfigError: If a given setting differs from the saved one.
        RunDirError, CheckpointError: As :func:`saved_config`.
    """
    saved = saved_config(out)
    for key, value in given.items():
        if key not in RUNTIME_FIELDS and getattr(saved, key) != value:
            raise ConfigError(
                f"--{key.replace('_', '-')} {value} differs from the run's saved "
                f"{getattr(saved, key)!r}; --resume continues with the saved "
                "settings: drop the flag, or start a new run in another --output-dir"
            )
    runtime = {k: v for k, v in given.items() if k in RUNTIME_FIELDS}
    return dataclasses.replace(saved, **runtime)


def differences(a: TrainConfig, b: TrainConfig) -> list[tuple[str, Any, Any]]:
    """``(field, value in a, value in b)`` for fields that define the run."""
    return [
        (f.name, getattr(a, f.name), getattr(b, f.name))
        for f in dataclasses.fields(TrainConfig)
        if f.name not in RUNTIME_FIELDS and getattr(a, f.name) != getattr(b, f.name)
    ]


def check_checkpoint_matches(
    out: Path, saved: TrainConfig, config: TrainConfig | None = None
) -> None:
    """Refuse a checkpoint whose configuration is not the run's.

    Compares the checkpoint's configuration ``saved`` with ``out/config.json``
    (if present) and with ``config``, the configuration asked for now.

    Raises:
        CheckpointError: Naming both sources and the differing fields.
    """
    ckpt = out / "checkpoint.pt"
    on_disk = read_config_json(out)
    if on_disk is not None:
        diff = differences(saved, on_disk)
        if diff:
            text = _listing(diff, "checkpoint.pt", "config.json")
            raise CheckpointError(
                f"{ckpt} does not belong to the run in {out / 'config.json'} "
                f"({text}); put that run's own checkpoint back, or start the run "
                "anew with --overwrite"
            )
    diff = [] if config is None else differences(saved, config)
    if diff:
        raise CheckpointError(
            f"{ckpt} is from another configuration "
            f"({_listing(diff, 'checkpoint.pt', 'given')}); "
            "resume with the saved settings or choose another output directory"
        )


def _listing(diff: list[tuple[str, Any, Any]], first: str, second: str) -> str:
    return ", ".join(f"{k}: {a!r} in {first}, {b!r} in {second}" for k, a, b in diff)
