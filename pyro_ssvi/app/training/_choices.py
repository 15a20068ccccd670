"""What each setting of a run may be: networks, guides, optimisers, data sets."""

from __future__ import annotations

import math
from typing import Any, Callable, Sequence

import torch


def _mlp(info: Any, hidden: Sequence[int] = (400, 400)) -> torch.nn.Module:
    from ..models import mlp

    return mlp(math.prod(info.input_shape), list(hidden), info.num_classes)


def _lenet(info: Any) -> torch.nn.Module:
    from ..models import lenet

    channels, size, _ = info.input_shape
    return lenet(channels, info.num_classes, size)


def _resnet18(info: Any) -> torch.nn.Module:
    from ..models import resnet18_cifar

    return resnet18_cifar(info.num_classes)


#: Network builders of image classifiers by name: ``info`` is the data set's
#: ``DatasetInfo``; ``mlp`` also takes ``hidden``, the widths of its hidden
#: layers. On a regression data set, ``mlp`` is ``F -> hidden -> 1`` (2 outputs
#: when heteroscedastic), one hidden layer of 50 units by default (the UCI
#: protocol's network).
MODELS: dict[str, Callable[..., torch.nn.Module]] = {
    "lenet": _lenet,
    "mlp": _mlp,
    "resnet18": _resnet18,
}
GUIDES = ("ssvi", "autonormal")
#: Default widths of the hidden layers of ``mlp``, by task.
DEFAULT_HIDDEN = {"classification": (400, 400), "regression": (50,)}
OPTIMIZERS = ("adam", "sgd")
LR_SCHEDULES = ("cosine", "constant")
SPARSE_COMPUTE: dict[str, bool | str] = {"auto": "auto", "on": True, "off": False}


def dataset_tasks() -> dict[str, str]:
    """``{data set name: "classification" | "regression"}`` of every data set.

    The image sets of :data:`pyro_ssvi.app.data.DATASETS` are for classification,
    those of :data:`pyro_ssvi.app.regression.REGRESSION_DATASETS` for regression.
    """
    from ..data import DATASETS
    from ..regression import REGRESSION_DATASETS

    tasks = dict.fromkeys(DATASETS, "classification")
    tasks.update(dict.fromkeys(REGRESSION_DATASETS, "regression"))
    return tasks
