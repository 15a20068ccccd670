"""Synthetic CIFAR-format files, for smoke tests and demos without the real data.

:func:`write_synthetic_cifar` writes small random images in the on-disk layout
of the official CIFAR-10 (or CIFAR-100) python version, so that every code
path that reads CIFAR from ``data_dir`` (``load_dataset``, ``pyro-ssvi train
--dataset cifar10 --data-dir ...``, the ResNet-18 notebook) runs end to end on
a laptop in seconds. The images are **not** CIFAR: each class is a random
smooth colour pattern plus pixel noise, learnable but meaningless; never report
numbers obtained on them.

Example::

    from pyro_ssvi.app.data import load_dataset, write_synthetic_cifar

    root = write_synthetic_cifar("/tmp/fake-cifar", num_train_per_batch=20)
    train = load_dataset("cifar10", "train", data_dir=root)   # 100 images
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["write_synthetic_cifar"]

_SIDE = 32
_PATTERN_SIDE = 4  # class patterns are 4x4 colour grids upsampled to 32x32
_NOISE_STD = 40.0  # pixel noise, in 0..255 units


def _check_count(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(
            f"write_synthetic_cifar: {name} must be an int >= 1, got {value!r}."
        )
    return value


def _images(
    rng: np.random.Generator, patterns: np.ndarray, labels: np.ndarray
) -> np.ndarray:
    """uint8 images ``(N, 3, 32, 32)``: the label's pattern plus Gaussian noise."""
    noise = rng.normal(0.0, _NOISE_STD, size=(len(labels), 3, _SIDE, _SIDE))
    return np.clip(patterns[labels] + noise, 0, 255).round().astype(np.uint8)


def _batch(images: np.ndarray, labels: np.ndarray, label_key: str, name: str) -> dict:
    """A batch dict with the official keys; data is ``(N, 3072)`` uint8, row-major
    over channel, row, column (the official layout)."""
    batch: dict[str, Any] = {
        "batch_label": name,
        label_key: [int(v) for v in labels],
        "data": np.ascontiguousarray(images.reshape(len(images), -1)),
        "filenames": [
            f"synthetic_{name.replace(' ', '_')}_{i}.png" for i in range(len(images))
        ],
    }
    if label_key == "fine_labels":
        batch["coarse_labels"] = [int(v) // 5 for v in labels]
    return batch


def _dump(path: Path, obj: dict) -> None:
    # Protocol 2 with text keys, as the official files; numpy arrays pickle
    # through numpy's own reduce, which pyro_ssvi's restricted unpickler allows.
    path.write_bytes(pickle.dumps(obj, protocol=2))


def write_synthetic_cifar(
    root: str | os.PathLike,
    *,
    num_train_per_batch: int = 100,
    num_test: int = 100,
    num_classes: int = 10,
    seed: int = 0,
) -> Path:
    """Write random CIFAR-format data under ``root`` (synthetic, for smoke tests).

    With ``num_classes=10`` this creates ``<root>/cifar-10-batches-py/`` with
    ``data_batch_1`` .. ``data_batch_5`` (``num_train_per_batch`` images each),
    ``test_batch`` (``num_test`` images) and ``batches.meta``, exactly the
    file names and pickled dict layout of the official CIFAR-10 python
    version (protocol-2 pickles of dicts with ``data``: uint8 ``(N, 3072)``,
    ``labels``: list of ints, ``batch_label``, ``filenames``). With
    ``num_classes=100`` it creates ``<root>/cifar-100-python/`` with
    ``train`` (``5 * num_train_per_batch`` images, the same total), ``test``
    and ``meta``, with ``fine_labels`` and ``coarse_labels`` (``fine // 5``,
    not CIFAR-100's real grouping).

    Labels cycle through the classes in a random order, so every class has
    (almost) the same count. Each image is its class's random smooth colour
    pattern plus Gaussian pixel noise: a network can learn the classes, which
    makes demo runs show non-trivial accuracy, but the images are not
    CIFAR. Existing files of the same names are overwritten; nothing else
    under ``root`` is touched.

    Args:
        root: The folder to pass as ``data_dir`` afterwards; created if needed.
        num_train_per_batch: Images in each of the five CIFAR-10 training
            batches, an int >= 1.
        num_test: Images in the test split, an int >= 1.
        num_classes: 10 (CIFAR-10 layout) or 100 (CIFAR-100 layout).
        seed: Seed of the images and labels; the same seed writes the same
            bytes.

    Returns:
        ``root`` as a :class:`~pathlib.Path`, ready for
        ``load_dataset("cifar10", data_dir=root)``.

    Raises:
        ValueError: For ``num_classes`` other than 10 or 100, or a count < 1.

    Example::

        root = write_synthetic_cifar(tmp_dir, num_train_per_batch=8, num_test=16)
        x, y = load_dataset("cifar10", "test", data_dir=root).tensors
    """
    _check_count("num_train_per_batch", num_train_per_batch)
    _check_count("num_test", num_test)
    if num_classes not in (10, 100) or isinstance(num_classes, bool):
        raise ValueError(
            f"write_synthetic_cifar: num_classes must be 10 (CIFAR-10) or 100 "
            f"(CIFAR-100), got {num_classes!r}."
        )
    rng = np.random.default_rng(seed)
    grid = rng.uniform(30, 225, size=(num_classes, 3, _PATTERN_SIDE, _PATTERN_SIDE))
    repeat = _SIDE // _PATTERN_SIDE
    patterns = grid.repeat(repeat, axis=2).repeat(repeat, axis=3)

    def labels(n: int) -> np.ndarray:
        return rng.permutation(np.arange(n) % num_classes)

    root = Path(root)
    if num_classes == 10:
        folder = root / "cifar-10-batches-py"
        folder.mkdir(parents=True, exist_ok=True)
        files = [
            (f"data_batch_{i}", num_train_per_batch, f"training batch {i} of 5")
            for i in range(1, 6)
        ]
        files.append(("test_batch", num_test, "testing batch 1 of 1"))
        for filename, count, batch_label in files:
            y = labels(count)
            _dump(
                folder / filename,
                _batch(_images(rng, patterns, y), y, "labels", batch_label),
            )
        meta = {
            "num_cases_per_batch": num_train_per_batch,
            "label_names": [f"class_{i}" for i in range(10)],
            "num_vis": 3 * _SIDE * _SIDE,
        }
        _dump(folder / "batches.meta", meta)
    else:
        folder = root / "cifar-100-python"
        folder.mkdir(parents=True, exist_ok=True)
        for filename, count in (("train", 5 * num_train_per_batch), ("test", num_test)):
            y = labels(count)
            _dump(
                folder / filename,
                _batch(_images(rng, patterns, y), y, "fine_labels", filename),
            )
        meta = {
            "fine_label_names": [f"class_{i}" for i in range(100)],
            "coarse_label_names": [f"superclass_{i}" for i in range(20)],
        }
        _dump(folder / "meta", meta)
    return root
