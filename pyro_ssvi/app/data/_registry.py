"""The data sets ``pyro_ssvi`` knows: shapes, normalisation and OOD partners.

Example::

    info = DATASETS["cifar10"]
    info.input_shape, info.mean, default_ood("cifar10")  # (3, 32, 32), ..., "svhn"
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["DATASETS", "DatasetInfo", "default_ood", "get_info"]


@dataclass(frozen=True)
class DatasetInfo:
    """Static facts about one image classification data set.

    Attributes:
        name: Key in :data:`DATASETS`, as passed to ``load_dataset``.
        num_classes: Number of labels; labels are ``0 .. num_classes - 1``.
        input_shape: Shape ``(C, H, W)`` of one image.
        mean: Per-channel mean of the pixels scaled to [0, 1], subtracted
            during normalisation.
        std: Per-channel standard deviation, divided by during normalisation.
        default_ood: Name of the data set used as out-of-distribution data
            for a model trained on this one, or ``None``.
        embedded: Whether at least one split loads without ``data_dir``: it
            ships inside ``pyro_ssvi`` (MNIST both splits, Fashion-MNIST the
            test split) or with a dependency (scikit-learn's digits).
    """

    name: str
    num_classes: int
    input_shape: tuple[int, int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    default_ood: str | None
    embedded: bool


#: The image data sets by name: classes, input shape, normalisation, usual
#: OOD set, and whether they ship with the package.
DATASETS: dict[str, DatasetInfo] = {
    info.name: info
    for info in (
        DatasetInfo(
            "mnist", 10, (1, 28, 28), (0.1307,), (0.3081,), "fashion_mnist", True
        ),
        DatasetInfo(
            "fashion_mnist", 10, (1, 28, 28), (0.2860,), (0.3530,), "mnist", True
        ),
        DatasetInfo(
            "cifar10",
            10,
            (3, 32, 32),
            (0.4914, 0.4822, 0.4465),
            (0.2023, 0.1994, 0.2010),
            "svhn",
            False,
        ),
        DatasetInfo(
            "cifar100",
            100,
            (3, 32, 32),
            (0.5071, 0.4865, 0.4409),
            (0.2673, 0.2564, 0.2762),
            "svhn",
            False,
        ),
        DatasetInfo(
            "svhn",
            10,
            (3, 32, 32),
            (0.4377, 0.4438, 0.4728),
            (0.1980, 0.2010, 0.1970),
            "cifar10",
            False,
        ),
        # Mean and std of all 1797 images scaled by 1/16.
        DatasetInfo("digits", 10, (1, 8, 8), (0.3053,), (0.3760,), None, True),
    )
}


def get_info(name: str) -> DatasetInfo:
    """Looks up a data set by name.

    Args:
        name: A key of :data:`DATASETS`.

    Returns:
        Its :class:`DatasetInfo`.

    Raises:
        ValueError: If the name is unknown; the message lists the valid names.
    """
    try:
        return DATASETS[name]
    except (KeyError, TypeError):
        raise ValueError(
            f"unknown data set {name!r}; choose one of {sorted(DATASETS)}."
        ) from None


def default_ood(name: str) -> str | None:
    """The out-of-distribution partner of a data set.

    ``mnist`` and ``fashion_mnist`` pair with each other, ``cifar10`` and
    ``cifar100`` with ``svhn``, ``svhn`` with ``cifar10``; ``digits`` has none.

    Args:
        name: A key of :data:`DATASETS`.

    Returns:
        The name of the OOD data set, or ``None``.

    Raises:
        ValueError: If the name is unknown.
    """
    return get_info(name).default_ood
