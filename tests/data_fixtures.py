"""Writers of tiny data sets in the real on-disk formats, for tests/test_data.py.

Each writer produces the byte layout of the official files, independently of
``pyro_ssvi.app.data`` (so a reader bug cannot hide behind a matching writer bug):
IDX as in http://yann.lecun.com/exdb/mnist/, CIFAR batches as the Python 2
pickles of https://www.cs.toronto.edu/~kriz/cifar.html, SVHN as MATLAB v5.
"""

from __future__ import annotations

import gzip
import pickle
import struct
from pathlib import Path
from typing import Any

import numpy as np


def idx_bytes(array: np.ndarray) -> bytes:
    """Uncompressed IDX encoding of a uint8 array (magic 0x0800 | ndim)."""
    header = struct.pack(f">I{array.ndim}I", 0x800 | array.ndim, *array.shape)
    return header + array.astype(np.uint8).tobytes()


def write_mnist_layout(
    root: Path,
    folder: str,
    split: str,
    images: np.ndarray,
    labels: np.ndarray,
    *,
    gz: bool = False,
) -> tuple[Path, Path]:
    """Writes ``<root>/<folder>/raw/{train,t10k}-{images,labels}-...``."""
    raw = root / folder / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    prefix = "train" if split == "train" else "t10k"
    paths = []
    for stem, array in (("images-idx3", images), ("labels-idx1", labels)):
        data = idx_bytes(array)
        path = raw / f"{prefix}-{stem}-ubyte{'.gz' if gz else ''}"
        path.write_bytes(gzip.compress(data) if gz else data)
        paths.append(path)
    return paths[0], paths[1]


class _Py2Array:
    """Pickles like a numpy array did under Python 2: raw data as a str."""

    def __init__(self, array: np.ndarray) -> None:
        self.array = array

    def __reduce__(self) -> tuple[Any, ...]:
        reconstruct = np.empty(0).__reduce__()[0]
        data = self.array.tobytes().decode("latin1")
        state = (1, self.array.shape, self.array.dtype, False, data)
        return reconstruct, (np.ndarray, (0,), "b"), state


def write_cifar_pickle(path: Path, batch: dict[str, Any], *, py2: bool = True) -> None:
    """Pickles a CIFAR dict as the official files do (protocol 2).

    With ``py2`` (the official files), keys are text, array data is a latin-1
    string and the global is ``numpy.core.multiarray._reconstruct``; without,
    it is what Python 3 writes: bytes keys and ``_codecs.encode`` for bytes.
    """
    if py2:
        obj = {
            k: _Py2Array(v) if isinstance(v, np.ndarray) else v
            for k, v in batch.items()
        }
    else:
        obj = {k.encode(): v for k, v in batch.items()}
    blob = pickle.dumps(obj, protocol=2)
    if py2:
        blob = blob.replace(b"numpy._core.multiarray\n", b"numpy.core.multiarray\n")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(blob)


def cifar_batch(
    images: np.ndarray, labels: np.ndarray, label_key: str, name: str
) -> dict[str, Any]:
    """A batch dict with the official keys; ``images`` is ``(N, 3, 32, 32)``."""
    batch: dict[str, Any] = {
        "batch_label": name,
        label_key: [int(v) for v in labels],
        "data": images.reshape(len(images), -1),
        "filenames": [f"img_{i}.png" for i in range(len(images))],
    }
    if label_key == "fine_labels":
        batch["coarse_labels"] = [int(v) // 5 for v in labels]
    return batch


def write_svhn(path: Path, images: np.ndarray, labels: np.ndarray) -> None:
    """Writes ``images`` ``(N, 3, 32, 32)`` as SVHN's ``X`` (32, 32, 3, N), ``y``."""
    from scipy.io import savemat

    x = np.transpose(images, (2, 3, 1, 0)).astype(np.uint8)
    y = np.where(labels == 0, 10, labels).astype(np.uint8).reshape(-1, 1)
    savemat(path, {"X": x, "y": y})
