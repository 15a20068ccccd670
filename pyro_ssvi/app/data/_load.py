"""``load_dataset``: one entry point for every data set, as normalised tensors.

Example::

    train = load_dataset("mnist")                   # embedded 30k subset
    x_test, y_test = load_dataset("mnist", "test").tensors
    ood = load_dataset(default_ood("mnist"), "test", normalize_like="mnist")
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, TensorDataset

from ._digits import load_digits_split
from ._download import download as download_files
from ._embedded import EMBEDDED_FILES, load_embedded
from ._readers import SOURCES, read_from_dir
from ._registry import DatasetInfo, get_info

__all__ = ["AugmentedDataset", "load_dataset"]

_SPLITS = ("train", "test")
# Random-crop padding and whether a horizontal flip keeps the label.
_AUGMENTATION = {
    "mnist": (2, False),
    "fashion_mnist": (2, True),
    "cifar10": (4, True),
    "cifar100": (4, True),
    "svhn": (4, False),
    "digits": (1, False),
}
# Pixel value that maps to 1.0 (digits are 0..16, the rest 0..255).
_SCALE = {"digits": 16.0}


def _normalise(images: torch.Tensor, info: DatasetInfo, scale: float) -> torch.Tensor:
    mean = torch.tensor(info.mean, dtype=torch.float32).view(-1, 1, 1)
    std = torch.tensor(info.std, dtype=torch.float32).view(-1, 1, 1)
    return images.to(torch.float32).div_(scale).sub_(mean).div_(std)


class AugmentedDataset(Dataset):
    """Images stored as uint8, randomly cropped and flipped on each access.

    Item ``i`` is ``(normalise(augment(images[i])), labels[i])`` where
    ``augment`` is ``RandomCrop(H, padding)`` (zero padding, as for the raw
    pixels) followed, when ``flip``, by ``RandomHorizontalFlip()``. The crops
    draw from torch's global RNG, so ``pyro.set_rng_seed`` makes them
    reproducible.

    Args:
        images: uint8 tensor of shape ``(N, C, H, W)``.
        labels: int64 tensor of shape ``(N,)``.
        info: Supplies the normalisation mean and std.
        scale: The pixel value that maps to 1.0 before normalisation.
        padding: Zero padding of the random crop, in pixels.
        flip: Whether to flip horizontally with probability 1/2.
    """

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        info: DatasetInfo,
        scale: float,
        padding: int,
        flip: bool,
    ) -> None:
        from torchvision import transforms

        steps: list[Any] = [transforms.RandomCrop(images.shape[-1], padding=padding)]
        if flip:
            steps.append(transforms.RandomHorizontalFlip())
        self._augment = transforms.Compose(steps)
        self._images, self._labels = images, labels
        self._info, self._scale = info, scale

    def __len__(self) -> int:
        return len(self._labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image = self._augment(self._images[index])
        return _normalise(image, self._info, self._scale), self._labels[index]

    @property
    def tensors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(images, labels)`` normalised but not augmented, for evaluation."""
        return _normalise(self._images, self._info, self._scale), self._labels


def _read_arrays(
    info: DatasetInfo,
    split: str,
    data_dir: str | os.PathLike | None,
    download: bool,
) -> tuple[np.ndarray, np.ndarray]:
    if info.name == "digits":  # bundled with scikit-learn; data_dir is unused
        x_train, y_train, x_test, y_test = load_digits_split(seed=0)
        images, labels = (x_train, y_train) if split == "train" else (x_test, y_test)
        return torch.round(images * 16).to(torch.uint8).numpy(), labels.numpy()
    if data_dir is None:
        if download:
            raise ValueError(
                "download=True needs data_dir, the folder to download into."
            )
        if (info.name, split) in EMBEDDED_FILES:
            return load_embedded(info.name, split)
        source = SOURCES[info.name]
        embedded = [s for (n, s) in EMBEDDED_FILES if n == info.name]
        only = f"only the {embedded[0]} split is" if embedded else "no split is"
        raise ValueError(
            f"{info.name}: {only} embedded in pyro_ssvi. Pass data_dir=<folder> "
            f"holding {source.layout} (official source: {source.url}), adding "
            "download=True (CLI: --download) to fetch the files there."
        )
    try:
        return read_from_dir(info.name, data_dir, split)
    except FileNotFoundError:
        if not download:
            raise
    download_files(info.name, data_dir, split)
    return read_from_dir(info.name, data_dir, split)


def load_dataset(
    name: str,
    split: str = "train",
    *,
    data_dir: str | os.PathLike | None = None,
    download: bool = False,
    augment: bool = False,
    limit: int | None = None,
    normalize_like: str | None = None,
) -> Dataset:
    """Loads a split of an image classification data set as normalised tensors.

    Items are ``(image, label)``: a float32 ``(C, H, W)`` tensor
    ``(pixel / 255 - mean) / std`` with the data set's :class:`DatasetInfo`
    mean and std (digits scale by 1/16), and an int64 label.

    Where the data comes from:

    * ``mnist`` without ``data_dir``: embedded, ``train`` a stratified 30,000
      image subset of the official training set, ``test`` the official 10,000.
    * ``fashion_mnist`` without ``data_dir``: the embedded official test set;
      its train split needs ``data_dir``.
    * ``digits``: scikit-learn's 8x8 digits split by ``load_digits_split``
      (80/20, seed 0); ``data_dir`` and ``download`` are not used.
    * with ``data_dir``: torchvision's layout, i.e.
      ``<data_dir>/MNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte``
      (or ``.gz``), ``<data_dir>/FashionMNIST/raw/...``,
      ``<data_dir>/cifar-10-batches-py/``, ``<data_dir>/cifar-100-python/``
      (fine labels) and ``<data_dir>/{train,test}_32x32.mat`` (SVHN, label
      10 read as 0). CIFAR pickles are read with a restricted unpickler that
      only rebuilds numpy arrays.

    Args:
        name: A key of :data:`DATASETS`.
        split: ``"train"`` or ``"test"``.
        data_dir: Root folder of the files in torchvision's layout (``~`` is
            expanded); ``None`` uses the embedded data.
        download: Fetch missing files into ``data_dir`` first (md5-checked).
        augment: Train split only: random crop with zero padding (4 pixels at
            32x32, 2 at 28x28, 1 for digits) and, where it keeps the label
            (CIFAR, Fashion-MNIST), a random horizontal flip.
        limit: Keep only the first ``limit`` examples.
        normalize_like: Normalise with this data set's mean and std instead,
            e.g. OOD images as the in-distribution model sees them. Its
            ``input_shape`` must match.

    Returns:
        Without ``augment`` a :class:`~torch.utils.data.TensorDataset`
        holding ``(images (N, C, H, W) float32, labels (N,) int64)`` in
        ``.tensors``; with ``augment`` an :class:`AugmentedDataset`, whose
        ``.tensors`` are the un-augmented normalised images and labels.

    Raises:
        ValueError: For an unknown name or split, a bad ``limit``, ``augment``
            on the test split, data that is neither embedded nor given by
            ``data_dir``, or a corrupt file (the message names it).
        FileNotFoundError: If a file is missing under ``data_dir``; the
            message names it, the layout and the official source.
        RuntimeError: If ``download=True`` and the download fails.
    """
    info = get_info(name)
    target = info if normalize_like is None else get_info(normalize_like)
    if split not in _SPLITS:
        raise ValueError(f"split must be one of {_SPLITS}, got {split!r}.")
    if limit is not None and (
        isinstance(limit, bool) or not isinstance(limit, int) or limit < 1
    ):
        raise ValueError(f"limit must be a positive int or None, got {limit!r}.")
    if augment and split != "train":
        raise ValueError("augment=True applies to split='train' only; drop it here.")
    if target.input_shape != info.input_shape:
        raise ValueError(
            f"normalize_like={normalize_like!r} has input shape "
            f"{target.input_shape}, but {name} images are {info.input_shape}."
        )
    if data_dir is not None:
        data_dir = os.path.expanduser(data_dir)
    pixels, targets = _read_arrays(info, split, data_dir, download)
    images, labels = torch.tensor(pixels[:limit]), torch.tensor(targets[:limit])
    scale = _SCALE.get(name, 255.0)
    if augment:
        padding, flip = _AUGMENTATION[name]
        return AugmentedDataset(images, labels, target, scale, padding, flip)
    return TensorDataset(_normalise(images, target, scale), labels)
