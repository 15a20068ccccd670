"""Tests of pyro_ssvi.app.data against exact answers: the embedded real data, and tiny
fixtures written in the real on-disk formats (IDX, CIFAR pickles, SVHN .mat)."""

from __future__ import annotations

import codecs
import dataclasses
import gzip
import hashlib
import importlib.resources
import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from data_fixtures import (
    cifar_batch,
    idx_bytes,
    write_cifar_pickle,
    write_mnist_layout,
    write_svhn,
)
from torch.utils.data import TensorDataset

from pyro_ssvi.app.data import (
    DATASETS,
    DatasetInfo,
    default_ood,
    load_dataset,
    load_digits_split,
)
from pyro_ssvi.app.data._download import fetch
from pyro_ssvi.app.data._safe_pickle import restricted_load

MNIST_TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
# Half of each official training class count (5923, 6742, 5958, 6131, 5842,
# 5421, 5918, 6265, 5851, 5949); the 3 places left over go to the lowest of
# the classes with a remainder of 1/2 (0, 3, 5).
MNIST_TRAIN_SUBSET_COUNTS = [2962, 3371, 2979, 3066, 2921, 2711, 2959, 3132, 2925, 2974]
OFFICIAL_MD5 = {  # uncompressed IDX files, docs/data.md section 2
    ("mnist_test.npz", "images"): "2646ac647ad5339dbf082846283269ea",
    ("mnist_test.npz", "labels"): "27ae3e4e09519cfbb04c329615203637",
    ("fashion_mnist_test.npz", "images"): "8181f5470baa50b63fa0f6fddb340f0a",
    ("fashion_mnist_test.npz", "labels"): "15d484375f8d13e6eb1aabb0c3f46965",
}
# The subset as IDX files, pinned when it was built: a rebuild by
# scripts/make_default_data.py must reproduce exactly these bytes.
SUBSET_MD5 = {
    ("mnist_train.npz", "images"): "d5408754cf64fe09f20204169b02302f",
    ("mnist_train.npz", "labels"): "507fbd39165c8ad08278dd2b3e406e47",
}


def shipped(filename: str) -> dict[str, np.ndarray]:
    """Reads an embedded file directly, bypassing the package's loader."""
    resource = importlib.resources.files("pyro_ssvi.app.data").joinpath(filename)
    with resource.open("rb") as fh, np.load(fh, allow_pickle=False) as npz:
        return {key: npz[key] for key in npz.files}


def normalised(pixels: np.ndarray, mean, std, scale: float = 255.0) -> np.ndarray:
    """Hand-computed normalisation in float64; ``pixels`` is ``(N, C, H, W)``."""
    mean = np.asarray(mean, dtype=np.float64).reshape(-1, 1, 1)
    std = np.asarray(std, dtype=np.float64).reshape(-1, 1, 1)
    return (pixels.astype(np.float64) / scale - mean) / std


def assert_matches(dataset, pixels, labels, name: str, scale: float = 255.0) -> None:
    """The dataset holds exactly these pixels (normalised) and labels."""
    info = DATASETS[name]
    images, targets = dataset.tensors
    assert images.dtype == torch.float32 and targets.dtype == torch.int64
    assert tuple(images.shape) == (len(pixels), *info.input_shape)
    expected = normalised(pixels, info.mean, info.std, scale)
    np.testing.assert_allclose(images.numpy(), expected, rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(targets.numpy(), labels)
    image, label = dataset[len(dataset) - 1]
    np.testing.assert_allclose(image.numpy(), expected[-1], rtol=1e-6, atol=1e-6)
    assert label.item() == labels[-1]


def random_pixels(seed: int, shape: tuple[int, ...]) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=shape, dtype=np.uint8)


# --- registry ---


def test_registry_facts():
    assert set(DATASETS) == {
        "mnist",
        "fashion_mnist",
        "cifar10",
        "cifar100",
        "svhn",
        "digits",
    }
    ood = {name: default_ood(name) for name in DATASETS}
    assert ood == {
        "mnist": "fashion_mnist",
        "fashion_mnist": "mnist",
        "cifar10": "svhn",
        "cifar100": "svhn",
        "svhn": "cifar10",
        "digits": None,
    }
    for name, info in DATASETS.items():
        assert info.name == name and info.default_ood == ood[name]
        assert len(info.mean) == len(info.std) == info.input_shape[0]
    assert DATASETS["cifar10"].mean == (0.4914, 0.4822, 0.4465)
    assert DATASETS["cifar100"].std == (0.2673, 0.2564, 0.2762)
    assert DATASETS["cifar100"].num_classes == 100
    assert [n for n, i in DATASETS.items() if i.embedded] == [
        "mnist",
        "fashion_mnist",
        "digits",
    ]
    with pytest.raises(dataclasses.FrozenInstanceError):
        DATASETS["mnist"].num_classes = 3
    assert isinstance(DATASETS["svhn"], DatasetInfo)


def test_digits_mean_std_are_those_of_the_data():
    from sklearn.datasets import load_digits

    x = load_digits().data / 16.0
    info = DATASETS["digits"]
    assert info.mean[0] == pytest.approx(x.mean(), abs=5e-5)
    assert info.std[0] == pytest.approx(x.std(), abs=5e-5)


@pytest.mark.parametrize(
    "call", [lambda: default_ood("imagenet"), lambda: load_dataset("MNIST")]
)
def test_unknown_name_lists_valid_names(call):
    with pytest.raises(
        ValueError, match=r"choose one of \['cifar10', 'cifar100', 'digits'"
    ):
        call()


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"split": "valid"}, "split must be one of"),
        ({"limit": 0}, "limit must be a positive int"),
        ({"limit": True}, "limit must be a positive int"),
        (
            {"split": "test", "augment": True},
            "augment=True applies to split='train' only",
        ),
        ({"download": True}, "download=True needs data_dir"),
        ({"normalize_like": "cifar10"}, r"input shape \(3, 32, 32\)"),
    ],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        load_dataset("mnist", **kwargs)


def test_import_is_light():
    code = (
        "import sys, pyro_ssvi, pyro_ssvi.app.data; "
        "bad = [m for m in ('torchvision', 'scipy', 'sklearn', 'matplotlib') "
        "if m in sys.modules]; assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


# --- embedded real data ---


def test_embedded_files_are_small():
    folder = importlib.resources.files("pyro_ssvi.app.data")
    sizes = {
        name: len(folder.joinpath(name).read_bytes())
        for name in ("mnist_train.npz", "mnist_test.npz", "fashion_mnist_test.npz")
    }
    assert all(size < 5 * 2**20 for size in sizes.values()), sizes
    assert sum(sizes.values()) < 10 * 2**20, sizes


@pytest.mark.parametrize(
    "key", sorted(OFFICIAL_MD5.items()) + sorted(SUBSET_MD5.items())
)
def test_embedded_bytes_are_the_official_ones(key):
    (filename, member), expected = key
    array = shipped(filename)[member]
    assert array.dtype == np.uint8
    assert hashlib.md5(idx_bytes(array)).hexdigest() == expected


def test_embedded_mnist_train_is_a_stratified_subset_in_official_order():
    files = shipped("mnist_train.npz")
    assert files["images"].shape == (30000, 28, 28)
    indices = files["indices"]
    assert indices.shape == (30000,) and indices.min() >= 0 and indices.max() < 60000
    assert np.all(np.diff(indices) > 0)
    assert np.bincount(files["labels"]).tolist() == MNIST_TRAIN_SUBSET_COUNTS


@pytest.mark.parametrize(
    "name, split, filename, counts",
    [
        ("mnist", "train", "mnist_train.npz", MNIST_TRAIN_SUBSET_COUNTS),
        ("mnist", "test", "mnist_test.npz", MNIST_TEST_COUNTS),
        ("fashion_mnist", "test", "fashion_mnist_test.npz", [1000] * 10),
    ],
)
def test_load_embedded(name, split, filename, counts):
    dataset = load_dataset(name, split)
    assert isinstance(dataset, TensorDataset)
    assert torch.bincount(dataset.tensors[1]).tolist() == counts
    files = shipped(filename)
    assert_matches(dataset, files["images"][:, None], files["labels"], name)
    # Cached arrays are shared; the returned tensors are the caller's own.
    dataset.tensors[0].zero_()
    assert load_dataset(name, split).tensors[0].abs().sum() > 0


def test_limit_and_normalize_like():
    files = shipped("fashion_mnist_test.npz")
    ood = load_dataset("fashion_mnist", "test", limit=7, normalize_like="mnist")
    assert len(ood) == 7
    expected = normalised(files["images"][:7, None], (0.1307,), (0.3081,))
    np.testing.assert_allclose(ood.tensors[0].numpy(), expected, rtol=1e-6, atol=1e-6)


def test_fashion_train_is_not_embedded():
    with pytest.raises(ValueError, match="only the test split is embedded") as err:
        load_dataset("fashion_mnist", "train")
    assert "FashionMNIST/raw" in str(err.value) and "download=True" in str(err.value)


def test_cifar_without_data_dir_says_where_to_put_it():
    with pytest.raises(ValueError, match="no split is embedded") as err:
        load_dataset("cifar10")
    assert "cifar-10-batches-py" in str(err.value)
    assert "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz" in str(err.value)


# --- digits ---


def test_load_digits_split_is_stratified_and_disjoint():
    x_train, y_train, x_test, y_test = load_digits_split(test_fraction=0.2, seed=0)
    class_counts = [178, 182, 177, 183, 181, 182, 181, 179, 174, 180]
    assert torch.bincount(y_test).tolist() == [round(0.2 * c) for c in class_counts]
    assert len(x_train) + len(x_test) == 1797
    assert x_train.shape[1:] == (1, 8, 8) and x_train.dtype == torch.float32
    rows = {tuple(r) for r in x_train.flatten(1).tolist()}
    assert not rows & {tuple(r) for r in x_test.flatten(1).tolist()}
    with pytest.raises(ValueError, match=r"test_fraction must be in \(0, 1\)"):
        load_digits_split(test_fraction=1.0)


@pytest.mark.parametrize("split", ["train", "test"])
def test_load_dataset_digits(split):
    x_train, y_train, x_test, y_test = load_digits_split(seed=0)
    x, y = (x_train, y_train) if split == "train" else (x_test, y_test)
    dataset = load_dataset("digits", split)
    assert_matches(dataset, (x.numpy() * 16).round(), y.numpy(), "digits", 16.0)
    assert DATASETS["digits"].input_shape == (1, 8, 8)


# --- IDX (MNIST, Fashion-MNIST) from data_dir ---


@pytest.mark.parametrize("gz", [False, True])
@pytest.mark.parametrize(
    "name, folder", [("mnist", "MNIST"), ("fashion_mnist", "FashionMNIST")]
)
def test_idx_fixture_round_trip(tmp_path, name, folder, gz):
    written = {}
    for seed, (split, n) in enumerate([("train", 6), ("test", 4)]):
        pixels = random_pixels(seed, (n, 28, 28))
        labels = np.arange(n, dtype=np.uint8) * 3 % 10
        write_mnist_layout(tmp_path, folder, split, pixels, labels, gz=gz)
        written[split] = pixels, labels
    for split, (pixels, labels) in written.items():
        dataset = load_dataset(name, split, data_dir=tmp_path)
        assert_matches(dataset, pixels[:, None], labels, name)
    assert len(load_dataset(name, data_dir=str(tmp_path), limit=2)) == 2


def test_data_dir_expands_the_home_directory(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    pixels, labels = random_pixels(0, (4, 28, 28)), np.arange(4, dtype=np.uint8)
    write_mnist_layout(tmp_path / "data", "MNIST", "test", pixels, labels)
    assert_matches(
        load_dataset("mnist", "test", data_dir="~/data"),
        pixels[:, None],
        labels,
        "mnist",
    )


def _truncate(data: bytes) -> bytes:
    return data[:-1]


def _bad_magic(data: bytes) -> bytes:
    return b"\x00\x00\x08\x01" + data[4:]


def _extra_byte(data: bytes) -> bytes:
    return data + b"\x00"


def _wrong_item_shape(data: bytes) -> bytes:
    return data[:12] + (27).to_bytes(4, "big") + data[16:]


@pytest.mark.parametrize(
    "corrupt, match",
    [
        (_truncate, "is truncated"),
        (_bad_magic, "has IDX magic number 0x00000801, expected 0x00000803"),
        (_extra_byte, "is over-long"),
        (_wrong_item_shape, r"holds items of shape \(28, 27\), expected \(28, 28\)"),
        (lambda data: data[:10], "shorter than the 16-byte IDX header"),
    ],
)
@pytest.mark.parametrize("gz", [False, True])
def test_corrupt_idx_is_detected(tmp_path, corrupt, match, gz):
    images, _ = write_mnist_layout(
        tmp_path, "MNIST", "test", random_pixels(0, (3, 28, 28)), np.zeros(3, np.uint8)
    )
    bad = corrupt(images.read_bytes())
    if gz:
        images.unlink()
        images = images.with_name(images.name + ".gz")
        bad = gzip.compress(bad)
    images.write_bytes(bad)
    with pytest.raises(ValueError, match=match) as err:
        load_dataset("mnist", "test", data_dir=tmp_path)
    assert str(images) in str(err.value)


@pytest.mark.parametrize(
    "labels, match",
    [
        (np.array([1, 2], np.uint8), "must hold 3 integer labels"),
        (np.array([1, 10, 2], np.uint8), r"holds labels outside 0\.\.9"),
    ],
)
def test_inconsistent_labels_are_detected(tmp_path, labels, match):
    _, path = write_mnist_layout(
        tmp_path, "MNIST", "train", random_pixels(0, (3, 28, 28)), labels
    )
    with pytest.raises(ValueError, match=match) as err:
        load_dataset("mnist", data_dir=tmp_path)
    assert str(path) in str(err.value)


def test_corrupt_gzip_is_detected(tmp_path):
    images, _ = write_mnist_layout(
        tmp_path,
        "MNIST",
        "test",
        random_pixels(0, (3, 28, 28)),
        np.zeros(3, np.uint8),
        gz=True,
    )
    images.write_bytes(images.read_bytes()[:40])
    with pytest.raises(ValueError, match="is a corrupt gzip file"):
        load_dataset("mnist", "test", data_dir=tmp_path)


def test_missing_idx_file_names_it_and_the_source(tmp_path):
    write_mnist_layout(
        tmp_path, "MNIST", "test", random_pixels(0, (3, 28, 28)), np.zeros(3, np.uint8)
    )
    (tmp_path / "MNIST" / "raw" / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(FileNotFoundError) as err:
        load_dataset("mnist", "test", data_dir=tmp_path)
    message = str(err.value)
    assert (
        f"{tmp_path}/MNIST/raw/t10k-labels-idx1-ubyte (or t10k-labels-idx1-ubyte.gz)"
        in message
    )
    assert "http://yann.lecun.com/exdb/mnist/" in message and "download=True" in message


# --- CIFAR-10 / CIFAR-100 ---


def write_cifar10(
    root: Path, py2: bool = True
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Five train batches of 2 images, a test batch of 3 and batches.meta."""
    folder = root / "cifar-10-batches-py"
    splits = {"train": ([], []), "test": ([], [])}
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for seed, filename in enumerate(names):
        n = 3 if filename == "test_batch" else 2
        pixels = random_pixels(seed, (n, 3, 32, 32))
        labels = (np.arange(n) + seed) % 10
        batch = cifar_batch(pixels, labels, "labels", filename)
        write_cifar_pickle(folder / filename, batch, py2=py2)
        split = splits["test" if filename == "test_batch" else "train"]
        split[0].append(pixels)
        split[1].append(labels)
    meta = {
        "label_names": ["airplane"] * 10,
        "num_cases_per_batch": 10000,
        "num_vis": 3072,
    }
    write_cifar_pickle(folder / "batches.meta", meta, py2=py2)
    return {s: (np.concatenate(x), np.concatenate(y)) for s, (x, y) in splits.items()}


@pytest.mark.parametrize("py2", [True, False], ids=["python2-pickle", "python3-pickle"])
def test_cifar10_round_trip(tmp_path, py2):
    for split, (pixels, labels) in write_cifar10(tmp_path, py2).items():
        assert_matches(
            load_dataset("cifar10", split, data_dir=tmp_path), pixels, labels, "cifar10"
        )


def test_cifar100_round_trip_uses_fine_labels(tmp_path):
    folder = tmp_path / "cifar-100-python"
    for seed, split in enumerate(["train", "test"]):
        pixels = random_pixels(seed, (4, 3, 32, 32))
        labels = (np.array([99, 0, 42, 7]) + seed) % 100
        write_cifar_pickle(
            folder / split, cifar_batch(pixels, labels, "fine_labels", split)
        )
        dataset = load_dataset("cifar100", split, data_dir=tmp_path)
        assert_matches(dataset, pixels, labels, "cifar100")
    write_cifar_pickle(folder / "meta", {"fine_label_names": ["x"] * 100})


def test_augment_is_a_random_crop_and_flip_of_the_padded_image(tmp_path):
    pixels, labels = write_cifar10(tmp_path)["train"]
    dataset = load_dataset("cifar10", data_dir=tmp_path, augment=True)
    assert len(dataset) == 10
    info = DATASETS["cifar10"]
    padded = np.pad(pixels[3], ((0, 0), (4, 4), (4, 4)))
    candidates = np.stack(
        [
            crop[..., ::-1] if flip else crop
            for dy in range(9)
            for dx in range(9)
            for crop in [padded[:, dy : dy + 32, dx : dx + 32]]
            for flip in (False, True)
        ]
    )
    candidates = normalised(candidates, info.mean, info.std)
    seen = set()
    for _ in range(12):
        image, label = dataset[3]
        assert image.shape == (3, 32, 32) and image.dtype == torch.float32
        assert label.item() == labels[3]
        errors = np.abs(candidates - image.numpy()[None]).max(axis=(1, 2, 3))
        assert errors.min() < 1e-5  # exactly one of the 162 crops and flips
        seen.add(int(errors.argmin()))
    assert len(seen) > 1  # random: P(12 equal draws) = 162**-11
    plain = load_dataset("cifar10", data_dir=tmp_path)
    torch.testing.assert_close(dataset.tensors[0], plain.tensors[0])
    torch.testing.assert_close(dataset.tensors[1], plain.tensors[1])


def test_augment_never_flips_digits(tmp_path):
    pixels = np.zeros((1, 28, 28), np.uint8)
    pixels[0, 10:18, 20:22] = 255  # a bar right of the centre
    write_mnist_layout(tmp_path, "MNIST", "train", pixels, np.array([1], np.uint8))
    dataset = load_dataset("mnist", data_dir=tmp_path, augment=True)
    for _ in range(10):  # background normalises to -0.42, ink to 2.82
        columns = np.flatnonzero((dataset[0][0].numpy()[0] > 0).any(axis=0))
        assert columns.min() >= 18  # a flip would move it left of the centre


class _Reduce:
    """A pickle payload: unpickling it calls ``fn(*args)``."""

    def __init__(self, fn, *args) -> None:
        self.fn, self.args = fn, args

    def __reduce__(self):
        return self.fn, self.args


def test_malicious_cifar_pickle_is_rejected_without_running(tmp_path):
    write_cifar10(tmp_path)
    marker = tmp_path / "pwned"
    batch = {"data": _Reduce(os.system, f"touch '{marker}'"), "labels": [0]}
    path = tmp_path / "cifar-10-batches-py" / "test_batch"
    path.write_bytes(pickle.dumps(batch, protocol=2))
    with pytest.raises(ValueError, match=r"forbidden global posix\.system") as err:
        load_dataset("cifar10", "test", data_dir=tmp_path)
    assert str(path) in str(err.value)
    assert not marker.exists()
    # The payload is live: an unrestricted unpickler would have run it.
    pickle.loads(path.read_bytes())
    assert marker.exists()


@pytest.mark.parametrize(
    "payload, match",
    [
        (_Reduce(eval, "1 + 1"), "forbidden global __builtin__.eval"),
        (_Reduce(codecs.encode, "x", "rot13"), r"forbidden call _codecs\.encode"),
        (np.load, "forbidden global numpy.load"),
    ],
)
def test_restricted_unpickler_allows_only_array_globals(tmp_path, payload, match):
    path = tmp_path / "payload.pkl"
    path.write_bytes(pickle.dumps(payload, protocol=2))
    with open(path, "rb") as fh, pytest.raises(pickle.UnpicklingError, match=match):
        restricted_load(fh)


@pytest.mark.parametrize(
    "content, match",
    [
        (pickle.dumps({"labels": [0]}, protocol=2), r"has no uint8 'data' array"),
        (pickle.dumps([1, 2], protocol=2), "holds a list, not a CIFAR batch dict"),
        (
            pickle.dumps({"data": np.zeros((1, 3072), np.uint8), "labels": [0]})[:-30],
            "is not a valid CIFAR batch",
        ),
        (
            pickle.dumps({"data": np.zeros((1, 3072), np.uint8), "labels": [10]}),
            r"labels outside 0\.\.9",
        ),
    ],
)
def test_corrupt_cifar_batch_is_detected(tmp_path, content, match):
    write_cifar10(tmp_path)
    path = tmp_path / "cifar-10-batches-py" / "test_batch"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=match) as err:
        load_dataset("cifar10", "test", data_dir=tmp_path)
    assert str(path) in str(err.value)


def test_missing_cifar_batch_names_it(tmp_path):
    write_cifar10(tmp_path)
    (tmp_path / "cifar-10-batches-py" / "data_batch_4").unlink()
    with pytest.raises(
        FileNotFoundError, match="cifar-10-batches-py/data_batch_4 not found"
    ):
        load_dataset("cifar10", data_dir=tmp_path)


# --- SVHN ---


def test_svhn_round_trip_maps_label_10_to_0(tmp_path):
    pixels = random_pixels(0, (5, 3, 32, 32))
    labels = np.array([0, 1, 9, 0, 5])
    write_svhn(tmp_path / "test_32x32.mat", pixels, labels)
    from scipy.io import loadmat

    assert loadmat(tmp_path / "test_32x32.mat")["y"].ravel().tolist() == [
        10,
        1,
        9,
        10,
        5,
    ]
    assert_matches(
        load_dataset("svhn", "test", data_dir=tmp_path), pixels, labels, "svhn"
    )


def test_corrupt_and_missing_svhn(tmp_path):
    with pytest.raises(FileNotFoundError, match="train_32x32.mat not found") as err:
        load_dataset("svhn", data_dir=tmp_path)
    assert "http://ufldl.stanford.edu/housenumbers/" in str(err.value)
    (tmp_path / "train_32x32.mat").write_bytes(b"not a mat file" * 20)
    with pytest.raises(ValueError, match="train_32x32.mat is not a readable .mat file"):
        load_dataset("svhn", data_dir=tmp_path)


# --- download ---


def test_failed_download_is_one_clear_error(tmp_path):
    url = (tmp_path / "nowhere.tar.gz").as_uri()
    with pytest.raises(RuntimeError) as err:
        fetch(
            [url],
            tmp_path / "out",
            "x.tar.gz",
            None,
            extract=True,
            layout="L/",
            source="S",
        )
    message = str(err.value)
    assert message.startswith(f"download failed: {url}: ")
    assert message.endswith(
        "on a machine without internet, get the files from S yourself and place "
        "them in L/."
    )
