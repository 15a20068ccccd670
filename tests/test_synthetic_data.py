"""Tests of pyro_ssvi.app.data.write_synthetic_cifar: the files have the official
CIFAR python layout, and load_dataset reads back exactly what was written."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from pyro_ssvi.app.data import DATASETS, load_dataset, write_synthetic_cifar


def read_plain(path: Path) -> dict:
    """Reads a batch as torchvision does (plain pickle, latin-1), independently of
    pyro_ssvi's restricted reader."""
    with open(path, "rb") as fh:
        return pickle.load(fh, encoding="latin1")


def normalised(pixels: np.ndarray, name: str) -> torch.Tensor:
    """What load_dataset must return for uint8 ``(N, 3072)`` pixels."""
    info = DATASETS[name]
    mean = torch.tensor(info.mean, dtype=torch.float32).view(-1, 1, 1)
    std = torch.tensor(info.std, dtype=torch.float32).view(-1, 1, 1)
    images = torch.tensor(pixels.reshape(-1, 3, 32, 32)).to(torch.float32)
    return images.div_(255.0).sub_(mean).div_(std)


def test_cifar10_layout_and_exact_round_trip(tmp_path):
    root = write_synthetic_cifar(tmp_path, num_train_per_batch=7, num_test=13)
    assert root == tmp_path
    folder = tmp_path / "cifar-10-batches-py"
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    assert sorted(p.name for p in folder.iterdir()) == sorted(names + ["batches.meta"])
    batches = {name: read_plain(folder / name) for name in names}
    for name, batch in batches.items():
        count = 13 if name == "test_batch" else 7
        assert batch["data"].dtype == np.uint8 and batch["data"].shape == (count, 3072)
        assert isinstance(batch["labels"], list) and len(batch["labels"]) == count
        assert all(isinstance(v, int) and 0 <= v < 10 for v in batch["labels"])
        assert len(batch["filenames"]) == count and isinstance(
            batch["batch_label"], str
        )
    meta = read_plain(folder / "batches.meta")
    assert len(meta["label_names"]) == 10 and meta["num_vis"] == 3072

    for split, files in (("train", names[:5]), ("test", names[5:])):
        dataset = load_dataset("cifar10", split, data_dir=root)
        x, y = dataset.tensors
        pixels = np.concatenate([batches[f]["data"] for f in files])
        labels = sum((batches[f]["labels"] for f in files), [])
        assert torch.equal(y, torch.tensor(labels, dtype=torch.int64))
        assert torch.equal(x, normalised(pixels, "cifar10"))


def test_cifar100_layout_and_exact_round_trip(tmp_path):
    write_synthetic_cifar(
        tmp_path, num_train_per_batch=40, num_test=120, num_classes=100
    )
    folder = tmp_path / "cifar-100-python"
    assert sorted(p.name for p in folder.iterdir()) == ["meta", "test", "train"]
    meta = read_plain(folder / "meta")
    assert len(meta["fine_label_names"]) == 100
    assert len(meta["coarse_label_names"]) == 20
    for split, count in (("train", 200), ("test", 120)):
        batch = read_plain(folder / split)
        assert batch["data"].shape == (count, 3072)
        assert batch["coarse_labels"] == [v // 5 for v in batch["fine_labels"]]
        # Labels cycle through the classes: every class appears.
        assert set(batch["fine_labels"]) == set(range(100))
        x, y = load_dataset("cifar100", split, data_dir=tmp_path).tensors
        assert torch.equal(y, torch.tensor(batch["fine_labels"]))
        assert torch.equal(x, normalised(batch["data"], "cifar100"))


def test_same_seed_same_bytes_other_seed_other_images(tmp_path):
    a = write_synthetic_cifar(tmp_path / "a", num_train_per_batch=3, num_test=4)
    b = write_synthetic_cifar(tmp_path / "b", num_train_per_batch=3, num_test=4)
    c = write_synthetic_cifar(tmp_path / "c", num_train_per_batch=3, num_test=4, seed=1)
    for name in ("data_batch_1", "test_batch", "batches.meta"):
        file_a = (a / "cifar-10-batches-py" / name).read_bytes()
        assert file_a == (b / "cifar-10-batches-py" / name).read_bytes()
    x_a = load_dataset("cifar10", "test", data_dir=a).tensors[0]
    x_c = load_dataset("cifar10", "test", data_dir=c).tensors[0]
    assert not torch.equal(x_a, x_c)


def test_classes_are_learnable_patterns(tmp_path):
    # Images of one class share a pattern: class means differ far more than the
    # noise of a class mean (std 40 / sqrt(N) per pixel).
    write_synthetic_cifar(tmp_path, num_train_per_batch=40)
    x, y = load_dataset("cifar10", data_dir=tmp_path).tensors
    means = torch.stack([x[y == c].mean(0) for c in range(10)])
    within = (x - means[y]).pow(2).mean().sqrt()
    between = (means[:, None] - means[None]).pow(2).mean((2, 3, 4)).sqrt()
    off_diagonal = between[~torch.eye(10, dtype=torch.bool)]
    assert off_diagonal.min() > 0.5 * within


def test_augmented_loading_works(tmp_path):
    write_synthetic_cifar(tmp_path, num_train_per_batch=2, num_test=2)
    dataset = load_dataset("cifar10", data_dir=tmp_path, augment=True)
    image, label = dataset[0]
    assert image.shape == (3, 32, 32) and 0 <= int(label) < 10


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"num_classes": 20}, "num_classes must be 10"),
        ({"num_classes": True}, "num_classes must be 10"),
        ({"num_test": 0}, "num_test must be an int >= 1"),
        ({"num_train_per_batch": 2.5}, "num_train_per_batch must be an int >= 1"),
    ],
)
def test_bad_arguments_raise(tmp_path, kwargs, match):
    with pytest.raises(ValueError, match=match):
        write_synthetic_cifar(tmp_path, **kwargs)
    assert not any(tmp_path.iterdir())  # nothing written
