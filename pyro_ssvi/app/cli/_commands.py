"""The commands ``train``, ``evaluate`` and ``compare``."""

from __future__ import annotations

import argparse
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from ._control import CLIError
from ._parser import _given
from ._report import _fmt, _header, _is_reporter, _print_summary


def _default_dir(prefix: str) -> Path:
    return Path("runs") / f"{prefix}-{time.strftime('%Y%m%d-%H%M%S')}"


def _cmd_train(args: argparse.Namespace) -> int:
    from ..training import TrainConfig, resume_config

    given = _given(args, implicit=not args.resume)
    out = args.output_dir or _default_dir(
        f"{given.get('model', 'mlp')}-{given.get('dataset', 'mnist')}"
    )
    if args.resume and args.overwrite:
        raise CLIError("--resume and --overwrite exclude each other; pick one")
    if not args.resume:
        config = TrainConfig(**given)  # bad settings: refused before any file
    elif not out.is_dir():
        resume_config(out, given)  # raises: there is no run to resume
    with _owned(out):
        if args.resume:  # read while owning it: no run is writing it now
            config = resume_config(out, given)
        return _train_owned(args, config, out)


@contextmanager
def _owned(out: Path) -> Iterator[None]:
    """Own ``out`` before the first line is printed (rank 0 under torchrun).

    The library owns it too (:func:`~pyro_ssvi.app.training.train`); taking it
    here first makes a refusal the command's only output.
    """
    from ..training import own_directory

    if not _is_reporter():
        yield
        return
    with own_directory(out):
        yield


def _train_owned(args: argparse.Namespace, config: Any, out: Path) -> int:
    from ..training import train

    what = (
        f"{config.model} on {config.dataset}, {config.guide} guide at density "
        f"{config.density:g}, {config.epochs} epochs, seed {config.seed}"
    )
    if config.task == "regression":
        what += f"; regression, split seed {config.split_seed}"
    if args.resume:
        what += (
            "; resuming from its checkpoint"
            if (out / "checkpoint.pt").is_file()
            else "; it stopped before its first checkpoint, so it starts again"
        )
    _header("train", what, f"run directory {out}", device=config.device)
    metrics = train(
        config,
        out,
        overwrite=args.overwrite,
        resume=args.resume,
        progress=not args.no_progress,
    )
    if _is_reporter():
        _print_summary(metrics, out)
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from ..checkpoint import check_writable
    from ..training import own_output_file

    if args.output is None:
        return _evaluate(args)
    check_writable(args.output)  # before the evaluation, not after it
    with own_output_file(args.output):  # the lock .NAME.lock beside it
        return _evaluate(args)


def _evaluate(args: argparse.Namespace) -> int:
    from ..checkpoint import write_json
    from ..training import evaluate_run

    samples = "" if args.num_samples is None else f" with {args.num_samples} samples"
    _header("evaluate", f"{args.path}{samples}", device=args.device)
    metrics = evaluate_run(
        args.path,
        dataset=args.dataset,
        ood_dataset=args.ood_dataset,
        data_dir=args.data_dir,
        num_samples=args.num_samples,
        device=args.device,
        test_limit=args.test_limit,
        progress=not args.no_progress,
    )
    for key in sorted(metrics):
        print(f"{key}: {_fmt(metrics[key])}")
    if args.output is not None:
        write_json(args.output, metrics)
    return 0


def _cmd_compare(args: argparse.Namespace) -> int:
    from ..compare import compare, variant_configs

    given = _given(args)
    variant_configs(given, args.densities, dense=not args.no_dense)  # check first
    out = args.output_dir or _default_dir("compare")
    dense = "" if args.no_dense else "dense VI and "
    densities = ", ".join(f"{d:g}" for d in args.densities)
    what = f"{dense}SSVI at density {densities}"
    with _owned(out):
        _header("compare", what, f"directory {out}", device=given.get("device", "auto"))
        table = compare(
            given,
            args.densities,
            out,
            dense=not args.no_dense,
            overwrite=args.overwrite,
            resume=args.resume,
            progress=not args.no_progress,
        )
    if _is_reporter():
        print(table)
        print(f"written: {out / 'comparison.md'}, {out / 'comparison.json'}")
    return 0
