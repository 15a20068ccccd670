"""Readers for data sets in torchvision's on-disk layouts; nothing is executed.

Each reader returns ``(images, labels)``: uint8 images of shape ``(N, C, H, W)``
and int64 labels of shape ``(N,)``, in the files' order. A missing file raises
:class:`FileNotFoundError` and a corrupt one :class:`ValueError`; both name the
file, the expected layout and the official source.

Example::

    images, labels = read_from_dir("cifar10", "/data", "test")
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path
from typing import Any, Callable, NamedTuple

import numpy as np

from ._idx import read_idx
from ._safe_pickle import restricted_load

__all__ = ["SOURCES", "missing_file_error", "read_from_dir"]

Arrays = tuple[np.ndarray, np.ndarray]


class Source(NamedTuple):
    """Where a data set's files go under ``data_dir``, and where they come from.

    Attributes:
        folder: Sub-folder of ``data_dir`` holding the files.
        layout: The expected files, for error messages.
        url: The official source.
    """

    folder: str
    layout: str
    url: str


_IDX_FILES = "{train,t10k}-{images-idx3,labels-idx1}-ubyte (or .gz)"
SOURCES: dict[str, Source] = {
    "mnist": Source(
        "MNIST/raw",
        f"<data_dir>/MNIST/raw/{_IDX_FILES}",
        "http://yann.lecun.com/exdb/mnist/",
    ),
    "fashion_mnist": Source(
        "FashionMNIST/raw",
        f"<data_dir>/FashionMNIST/raw/{_IDX_FILES}",
        "https://github.com/zalandoresearch/fashion-mnist",
    ),
    "cifar10": Source(
        "cifar-10-batches-py",
        "<data_dir>/cifar-10-batches-py/{data_batch_1..5,test_batch,batches.meta}",
        "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
    ),
    "cifar100": Source(
        "cifar-100-python",
        "<data_dir>/cifar-100-python/{train,test,meta}",
        "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
    ),
    "svhn": Source(
        "",
        "<data_dir>/{train,test}_32x32.mat",
        "http://ufldl.stanford.edu/housenumbers/",
    ),
}


def missing_file_error(
    name: str, path: Path, alternative: str = ""
) -> FileNotFoundError:
    """The error for a missing file: what, where it belongs, how to get it."""
    source = SOURCES[name]
    return FileNotFoundError(
        f"{name}: {path}{alternative} not found. Expected layout: {source.layout}. "
        f"Get the official files from {source.url} and extract them there, or "
        "pass download=True (CLI: --download) on a machine with internet access."
    )


def _corrupt(path: Path, problem: str) -> ValueError:
    return ValueError(
        f"{path} {problem}; the file is corrupt or not the official one, replace it."
    )


def _check_labels(labels: np.ndarray, count: int, num_classes: int, path: Path) -> None:
    if labels.shape != (count,) or labels.dtype.kind not in "iu":
        raise _corrupt(
            path, f"must hold {count} integer labels, not {labels.dtype} {labels.shape}"
        )
    if count and (labels.min() < 0 or labels.max() >= num_classes):
        raise _corrupt(path, f"holds labels outside 0..{num_classes - 1}")


def _read_idx_pair(name: str, data_dir: Path, split: str) -> Arrays:
    raw = data_dir / SOURCES[name].folder
    prefix = "train" if split == "train" else "t10k"
    found = []
    for stem in (f"{prefix}-images-idx3-ubyte", f"{prefix}-labels-idx1-ubyte"):
        path = raw / stem
        gz = raw / f"{stem}.gz"
        if not path.is_file() and not gz.is_file():
            raise missing_file_error(name, path, alternative=f" (or {gz.name})")
        found.append(path if path.is_file() else gz)
    images = read_idx(found[0], (28, 28))
    labels = read_idx(found[1], ())
    _check_labels(labels, len(images), 10, found[1])
    return images[:, None], labels.astype(np.int64)


# Errors a malformed pickle can raise while being rebuilt.
_PICKLE_ERRORS = (
    pickle.UnpicklingError,
    EOFError,
    ValueError,
    TypeError,
    AttributeError,
    IndexError,
    KeyError,
)
# Number of classes, label key and batch files per split.
_CIFAR = {
    "cifar10": (
        10,
        "labels",
        {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]},
    ),
    "cifar100": (100, "fine_labels", {"train": ["train"], "test": ["test"]}),
}


def _read_cifar_batch(name: str, path: Path, label_key: str) -> Arrays:
    if not path.is_file():
        raise missing_file_error(name, path)
    try:
        with open(path, "rb") as fh:
            batch: Any = restricted_load(fh)
    except _PICKLE_ERRORS as err:
        raise _corrupt(path, f"is not a valid CIFAR batch ({err})") from None
    if not isinstance(batch, dict):
        raise _corrupt(path, f"holds a {type(batch).__name__}, not a CIFAR batch dict")
    # Python 3 rewrites of the batches may have bytes keys.
    batch = {
        k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in batch.items()
    }
    data = batch.get("data")
    if not (
        isinstance(data, np.ndarray)
        and data.dtype == np.uint8
        and data.ndim == 2
        and data.shape[1] == 3 * 32 * 32
    ):
        raise _corrupt(path, "has no uint8 'data' array of shape (N, 3072)")
    return data, np.asarray(batch.get(label_key, ()))


def _read_cifar(name: str, data_dir: Path, split: str) -> Arrays:
    num_classes, label_key, files = _CIFAR[name]
    images, labels = [], []
    for filename in files[split]:
        path = data_dir / SOURCES[name].folder / filename
        data, batch_labels = _read_cifar_batch(name, path, label_key)
        _check_labels(batch_labels, len(data), num_classes, path)
        images.append(data.reshape(-1, 3, 32, 32))
        labels.append(batch_labels.astype(np.int64))
    return np.concatenate(images), np.concatenate(labels)


def _read_svhn(name: str, data_dir: Path, split: str) -> Arrays:
    path = data_dir / f"{split}_32x32.mat"
    if not path.is_file():
        raise missing_file_error(name, path)
    from scipy.io import loadmat
    from scipy.io.matlab import MatReadError

    try:
        mat = loadmat(path)
    except (MatReadError, ValueError, TypeError, OSError, EOFError) as err:
        raise _corrupt(path, f"is not a readable .mat file ({err})") from None
    x = mat.get("X")
    if not (
        isinstance(x, np.ndarray)
        and x.dtype == np.uint8
        and x.ndim == 4
        and x.shape[:3] == (32, 32, 3)
    ):
        raise _corrupt(path, "has no uint8 'X' array of shape (32, 32, 3, N)")
    y = np.asarray(mat.get("y", ())).reshape(-1)
    # Labels are 1..10, where 10 stands for the digit 0.
    _check_labels(y, x.shape[3], 11, path)
    images = np.ascontiguousarray(np.transpose(x, (3, 2, 0, 1)))
    return images, np.where(y == 10, 0, y).astype(np.int64)


_READERS: dict[str, Callable[[str, Path, str], Arrays]] = {
    "mnist": _read_idx_pair,
    "fashion_mnist": _read_idx_pair,
    "cifar10": _read_cifar,
    "cifar100": _read_cifar,
    "svhn": _read_svhn,
}


def read_from_dir(name: str, data_dir: str | os.PathLike, split: str) -> Arrays:
    """Reads one split of a data set from torchvision's layout under ``data_dir``.

    Args:
        name: A key of :data:`SOURCES`.
        data_dir: The root folder (torchvision's ``root``).
        split: ``"train"`` or ``"test"``.

    Returns:
        ``(images, labels)``: uint8 ``(N, C, H, W)`` and int64 ``(N,)``.

    Raises:
        FileNotFoundError: If a file is missing.
        ValueError: If a file is corrupt or names a forbidden pickle global.
    """
    return _READERS[name](name, Path(data_dir), split)
