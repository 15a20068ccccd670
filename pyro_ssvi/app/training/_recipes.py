"""Named sets of settings (``--recipe``) and the recipe a data set starts from."""

from __future__ import annotations

from typing import Any

from ._choices import dataset_tasks
from ._validation import _choice

#: Named sets of settings (``pyro-ssvi train --recipe NAME``,
#: :meth:`TrainConfig.from_recipe`); settings given explicitly override them.
#: ``reference-cifar`` is the SSVI reference implementation's CIFAR-10
#: ResNet-18 run; its KL warm-up is half the epochs (``beta = min(2 e / E, 1)``)
#: unless ``kl_anneal_epochs`` is given. ``uci`` is the training protocol of
#: Hernández-Lobato & Adams (2015) for regression (``benchmarks/uci.py``):
#: batch 32, Adam at a constant lr 0.01, 40 epochs, 100 posterior samples.
RECIPES: dict[str, dict[str, Any]] = {
    "reference-cifar": dict(
        model="resnet18",
        dataset="cifar10",
        guide="ssvi",
        density=0.1,
        epochs=200,
        batch_size=128,
        optimizer="sgd",
        lr=0.01,
        momentum=0.9,
        weight_decay=5e-4,
        lr_schedule="cosine",
        prior_scale=0.005,
        init_scale=6e-4,
        init_scale_std=5e-4,
        kl_weight=0.01,
        removal="snr_abs",
        addition="grad",
        growth_includes_kl=True,
        regrow_scale="mean",
        update_every=100,
        drop_fraction=0.3,
        drop_schedule="cosine",
        stop_updates_fraction=0.75,
        lrt=True,
        augment=True,
    ),
    "uci": dict(
        dataset="diabetes",
        model="mlp",
        batch_size=32,
        lr=0.01,
        lr_schedule="constant",
        epochs=40,
        num_samples=100,
    ),
}
#: The recipe a data set starts from on the command line when no ``--recipe``
#: is given: every regression data set takes ``uci``.
TASK_RECIPES = {"regression": "uci"}


def recipe_values(name: str, given: dict[str, Any]) -> dict[str, Any]:
    """The fields of recipe ``name`` with the ``given`` ones on top.

    Raises:
        ConfigError: For an unknown recipe.
    """
    _choice("recipe", name, RECIPES)
    values = {**RECIPES[name], **given}
    if name == "reference-cifar" and "kl_anneal_epochs" not in given:
        values["kl_anneal_epochs"] = max(1, values["epochs"] // 2)
    return values


def default_recipe(dataset: Any) -> str | None:
    """The recipe a data set starts from on the command line (:data:`TASK_RECIPES`)."""
    task = dataset_tasks().get(dataset) if isinstance(dataset, str) else None
    return None if task is None else TASK_RECIPES.get(task)
