"""The real data embedded in the package: MNIST (30k train, 10k test) and the
Fashion-MNIST test set, as uint8 ``.npz`` files loaded via importlib.resources.

See ``README.md`` in this folder for provenance and licences, and
``scripts/make_default_data.py`` for how the files are built.

Example::

    images, labels = load_embedded("mnist", "test")  # (10000, 1, 28, 28) uint8
"""

from __future__ import annotations

import functools
import importlib.resources
import zipfile

import numpy as np

__all__ = ["EMBEDDED_FILES", "load_embedded"]

EMBEDDED_FILES: dict[tuple[str, str], str] = {
    ("mnist", "train"): "mnist_train.npz",
    ("mnist", "test"): "mnist_test.npz",
    ("fashion_mnist", "test"): "fashion_mnist_test.npz",
}


@functools.lru_cache(maxsize=None)
def load_embedded(name: str, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Loads an embedded split once per process (later calls hit a cache).

    Args:
        name: ``"mnist"`` or ``"fashion_mnist"``.
        split: A split listed for ``name`` in :data:`EMBEDDED_FILES`.

    Returns:
        ``(images, labels)``: read-only uint8 ``(N, 1, 28, 28)`` and int64
        ``(N,)`` arrays, shared between callers.

    Raises:
        KeyError: If that split is not embedded.
        FileNotFoundError: If the package was installed without its data.
        ValueError: If the embedded file is corrupt.
    """
    filename = EMBEDDED_FILES[(name, split)]
    resource = importlib.resources.files(__package__).joinpath(filename)
    fix = "reinstall pyro_ssvi, or rebuild it with scripts/make_default_data.py"
    try:
        with resource.open("rb") as fh, np.load(fh, allow_pickle=False) as npz:
            images, labels = npz["images"], npz["labels"]
    except FileNotFoundError:
        raise FileNotFoundError(
            f"the embedded file {filename} is missing from {__package__}; {fix}."
        ) from None
    except (KeyError, ValueError, OSError, EOFError, zipfile.BadZipFile) as err:
        raise ValueError(
            f"the embedded file {filename} is corrupt ({err}); {fix}."
        ) from None
    images = images[:, None]
    labels = labels.astype(np.int64)
    images.flags.writeable = False
    labels.flags.writeable = False
    return images, labels
