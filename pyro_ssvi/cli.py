"""The ``pyro-ssvi`` command (also ``python -m pyro_ssvi``).

Usage::

    pyro-ssvi train [--density 0.1] [--epochs 15] [--output-dir runs/x] ...
    pyro-ssvi evaluate RUN_DIR_OR_CHECKPOINT [--num-samples 50] [--dataset ...]
    pyro-ssvi compare [--densities 0.1 0.05] [--epochs 15] [--output-dir runs/c]

``train`` defaults to the embedded MNIST (Fashion-MNIST as the OOD set) and a
Bayesian MLP 784-400-400-10 at density 0.1. Every flag maps to a field of
:class:`pyro_ssvi.training.TrainConfig`; see ``pyro-ssvi train --help``.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time
from pathlib import Path
from typing import Any, Sequence

__all__ = ["build_parser", "main"]

# flag name -> (type, help); defaults come from TrainConfig.
_TRAIN_FLAGS: dict[str, tuple[Any, str]] = {
    "model": (str, "network: mlp, lenet or resnet18"),
    "dataset": (
        str,
        "mnist (embedded), fashion_mnist, cifar10, cifar100, svhn, digits",
    ),
    "data_dir": (str, "directory with data sets in torchvision's layout"),
    "ood_dataset": (str, "out-of-distribution set (default: the usual one; 'none')"),
    "guide": (str, "ssvi (sparse) or autonormal (Pyro's dense-VI baseline)"),
    "density": (float, "fraction of each weight tensor that is active, in (0, 1]"),
    "removal": (str, "removal criterion (see pyro_ssvi.criteria.CRITERIA)"),
    "addition": (str, "addition rule: grad or random"),
    "update_every": (int, "steps between subspace updates"),
    "drop_fraction": (float, "initial fraction of each active set replaced"),
    "drop_schedule": (str, "decay of the drop fraction: cosine, linear, constant"),
    "stop_updates_at": (float, "fraction of training after which updates stop"),
    "optimizer": (str, "adam or sgd"),
    "lr": (float, "learning rate"),
    "momentum": (float, "SGD momentum"),
    "weight_decay": (float, "weight decay"),
    "lr_schedule": (str, "cosine (per epoch) or constant"),
    "sparse_compute": (
        str,
        "sparse kernels for sparse linear layers (LRT moments, or weight samples "
        "without --lrt): off, on, auto (timed once per layer)",
    ),
    "prior_scale": (float, "standard deviation of the Normal weight prior"),
    "init_scale": (float, "initial posterior standard deviation"),
    "kl_weight": (float, "weight of the KL term (1 = the ELBO)"),
    "kl_anneal_epochs": (int, "linear KL warm-up over this many epochs (0: none)"),
    "epochs": (int, "training epochs"),
    "batch_size": (int, "minibatch size"),
    "num_samples": (int, "posterior samples for the Monte Carlo evaluation"),
    "eval_batch_size": (int, "inputs per forward pass in evaluation"),
    "train_limit": (int, "use only the first N training examples"),
    "test_limit": (int, "use only the first N test (and OOD) examples"),
    "num_workers": (int, "data-loader workers for on-disk data sets"),
    "device": (str, "auto, cpu, cuda or cuda:N"),
    "seed": (int, "random seed"),
}
_BOOL_FLAGS = {
    "download": "download missing data sets (needs internet)",
    "augment": "random crops (and flips where they keep the label)",
    "lrt": "local reparameterisation of linear and conv layers (SSVI guide)",
}


class CLIError(Exception):
    """A one-line error for the user (exit code 1)."""


def _add_train_flags(parser: argparse.ArgumentParser, skip: Sequence[str] = ()) -> None:
    from .training import TrainConfig

    defaults = TrainConfig()
    group = parser.add_argument_group("training configuration")
    for name, (kind, text) in _TRAIN_FLAGS.items():
        if name in skip:
            continue
        default = getattr(defaults, name)
        group.add_argument(
            "--" + name.replace("_", "-"),
            dest=name,
            type=kind,
            default=None,
            metavar=name.split("_")[-1].upper(),
            help=f"{text} (default: {default})",
        )
    for name, text in _BOOL_FLAGS.items():
        group.add_argument(
            "--" + name, dest=name, action="store_true", default=None, help=text
        )


def _add_run_flags(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument(
        "--output-dir", type=Path, default=None, help=f"{what} (default: under runs/)"
    )
    parser.add_argument(
        "--overwrite", action="store_true", help="replace an existing run there"
    )
    parser.add_argument(
        "--resume",
        action="store_true",
        help="continue the run there from its checkpoint",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``pyro-ssvi``."""
    parser = argparse.ArgumentParser(
        prog="pyro-ssvi",
        description="Sparse Subspace Variational Inference for Bayesian networks.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    train = sub.add_parser(
        "train",
        help="train and evaluate a sparse Bayesian network",
        description="Train a Bayesian network with SSVI (or dense VI), evaluate it "
        "(accuracy, NLL, ECE, OOD AUROC) and write a run directory with the "
        "config, per-epoch metrics, checkpoint and plots.",
    )
    _add_run_flags(train, "run directory")
    _add_train_flags(train)
    ev = sub.add_parser(
        "evaluate",
        help="re-evaluate a saved run",
        description="Evaluate a run directory or checkpoint, optionally on another "
        "data set or with another number of posterior samples.",
    )
    ev.add_argument("path", type=Path, help="run directory or checkpoint.pt")
    ev.add_argument("--dataset", default=None, help="evaluate on this data set")
    ev.add_argument("--ood-dataset", default=None, help="OOD set ('none' to skip)")
    ev.add_argument("--data-dir", default=None, help="directory with data sets")
    ev.add_argument("--num-samples", type=int, default=None, help="posterior samples")
    ev.add_argument("--device", default=None, help="auto, cpu, cuda or cuda:N")
    ev.add_argument("--test-limit", type=int, default=None, help="first N examples")
    ev.add_argument("--output", type=Path, default=None, help="also write JSON here")
    cmp_ = sub.add_parser(
        "compare",
        help="dense VI versus SSVI at several densities, same budget",
        description="Train dense VI (Pyro AutoNormal) and SSVI at each density with "
        "the same data, epochs and optimiser, then write comparison.md/.json.",
    )
    _add_run_flags(cmp_, "directory for all runs and the table")
    cmp_.add_argument(
        "--densities", type=float, nargs="+", default=[0.1], help="SSVI densities"
    )
    cmp_.add_argument(
        "--no-dense", action="store_true", help="skip the dense-VI (AutoNormal) run"
    )
    _add_train_flags(cmp_, skip=("guide", "density"))
    return parser


def _given(args: argparse.Namespace) -> dict[str, Any]:
    names = list(_TRAIN_FLAGS) + list(_BOOL_FLAGS)
    return {n: getattr(args, n) for n in names if getattr(args, n, None) is not None}


def _config(values: dict[str, Any]) -> Any:
    from .training import TrainConfig

    return TrainConfig(**values)


def _default_dir(prefix: str) -> Path:
    return Path("runs") / f"{prefix}-{time.strftime('%Y%m%d-%H%M%S')}"


def _resume_config(out: Path, given: dict[str, Any]) -> Any:
    """The saved configuration, with flags given now checked against it."""
    from .checkpoint import CheckpointError, load_checkpoint
    from .training import TrainConfig

    state = load_checkpoint(out / "checkpoint.pt", map_location="cpu")
    saved = TrainConfig.from_dict(state["config"])
    runtime = {"device", "num_workers", "eval_batch_size", "download"}
    for key, value in given.items():
        if key not in runtime and getattr(saved, key) != value:
            raise CheckpointError(
                f"--{key.replace('_', '-')} {value} differs from the run's saved "
                f"{getattr(saved, key)!r}; --resume continues with the saved settings"
            )
    return dataclasses.replace(
        saved, **{k: v for k, v in given.items() if k in runtime}
    )


def _fmt(value: Any) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)


def _print_summary(metrics: dict[str, Any], out: Path) -> None:
    rows = [
        ("test accuracy", metrics["test_accuracy"]),
        ("test NLL", metrics["test_nll"]),
        ("test ECE (top-label, 15 bins)", metrics["test_ece"]),
        ("test marginal CE (reference ECE)", metrics.get("test_marginal_ce")),
        ("OOD AUROC (entropy)", metrics.get("ood_auroc")),
        ("accuracy with mean weights", metrics.get("test_accuracy_mean_weights")),
        ("density", metrics["density"]),
        ("variational parameters", metrics["num_variational_params"]),
        ("checkpoint size (MB)", metrics["checkpoint_bytes"] / 1e6),
        ("training FLOPs, dense VI / this run", metrics.get("train_flops_ratio")),
        ("subspace updates", metrics.get("num_updates")),
        ("wall time (s)", metrics["wall_time_s"]),
    ]
    width = max(len(k) for k, _ in rows)
    print(
        f"\n{metrics['model']} on {metrics['dataset']}, guide {metrics['guide']}, "
        f"{metrics['num_samples']} posterior samples"
    )
    for key, value in rows:
        print(f"  {key:<{width}}  {_fmt(value)}")
    print(f"run directory: {out}")


def _cmd_train(args: argparse.Namespace) -> int:
    from .training import train

    given = _given(args)
    out = args.output_dir or _default_dir(
        f"{given.get('model', 'mlp')}-{given.get('dataset', 'mnist')}"
    )
    if args.resume and args.overwrite:
        raise CLIError("--resume and --overwrite exclude each other")
    if args.resume:
        if not (out / "checkpoint.pt").is_file():
            raise CLIError(f"--resume: {out} has no checkpoint.pt to resume from")
        config = _resume_config(out, given)
    else:
        config = _config(given)
    metrics = train(
        config,
        out,
        overwrite=args.overwrite,
        resume=args.resume,
        progress=not args.no_progress,
    )
    if os.environ.get("RANK", "0") == "0":  # under torchrun, rank 0 reports
        _print_summary(metrics, out)
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from .checkpoint import write_json
    from .training import evaluate_run

    if args.num_samples is not None and args.num_samples < 1:
        raise CLIError(f"--num-samples must be >= 1, got {args.num_samples}")
    metrics = evaluate_run(
        args.path,
        dataset=args.dataset,
        ood_dataset=args.ood_dataset,
        data_dir=args.data_dir,
        num_samples=args.num_samples,
        device=args.device,
        test_limit=args.test_limit,
    )
    for key in sorted(metrics):
        print(f"{key}: {_fmt(metrics[key])}")
    if args.output is not None:
        write_json(args.output, metrics)
    return 0


def _cmd_compare(args: argparse.Namespace) -> int:
    from .compare import compare

    given = _given(args)
    out = args.output_dir or _default_dir("compare")
    if any(not 0.0 < d <= 1.0 for d in args.densities):
        raise CLIError(f"--densities must all be in (0, 1], got {args.densities}")
    table = compare(
        given,
        args.densities,
        out,
        dense=not args.no_dense,
        overwrite=args.overwrite,
        resume=args.resume,
        progress=not args.no_progress,
    )
    if os.environ.get("RANK", "0") == "0":  # under torchrun, rank 0 reports
        print(table)
        print(f"written: {out / 'comparison.md'}, {out / 'comparison.json'}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``pyro-ssvi``; returns the process exit code.

    Expected failures (bad flags, unusable output directories, missing data,
    bad checkpoints, a diverging loss) print one ``pyro-ssvi: error: ...``
    line to stderr and return 1; usage errors return 2 (argparse).
    """
    args = build_parser().parse_args(argv)
    from .checkpoint import CheckpointError
    from .training import ConfigError, RunDirError, TrainingDiverged

    expected = (CLIError, RunDirError, CheckpointError, TrainingDiverged, ConfigError)

    commands = {"train": _cmd_train, "evaluate": _cmd_evaluate, "compare": _cmd_compare}
    try:
        return commands[args.command](args)
    except (*expected, FileNotFoundError, PermissionError) as e:
        print(f"pyro-ssvi: error: {e}", file=sys.stderr)
    except (ValueError, OSError, RuntimeError) as e:
        if os.environ.get("PYRO_SSVI_DEBUG"):
            raise
        print(
            f"pyro-ssvi: error: {e} (set PYRO_SSVI_DEBUG=1 for a traceback)",
            file=sys.stderr,
        )
    except KeyboardInterrupt:
        print(
            "pyro-ssvi: interrupted; the last epoch's checkpoint is kept "
            "(continue with --resume)",
            file=sys.stderr,
        )
        return 130
    return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
