"""scikit-learn's bundled 8x8 digits, split into train and test (no download).

Example::

    x_train, y_train, x_test, y_test = load_digits_split(seed=0)
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["load_digits_split"]


def load_digits_split(
    test_fraction: float = 0.2, seed: int | None = 0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """scikit-learn's bundled 8x8 digits (1797 images, 10 classes), split.

    Args:
        test_fraction: Fraction of each class held out for testing, in (0, 1).
        seed: Seed of the stratified shuffle.

    Returns:
        ``(x_train, y_train, x_test, y_test)``; images as float32 in [0, 1]
        of shape ``(N, 1, 8, 8)``, labels as int64.

    Raises:
        ValueError: If ``test_fraction`` is not in (0, 1).
    """
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction!r}.")
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    rng = np.random.default_rng(seed)
    test_mask = np.zeros(len(y), dtype=bool)
    for c in np.unique(y):
        members = rng.permutation(np.flatnonzero(y == c))
        test_mask[members[: int(round(test_fraction * len(members)))]] = True
    images = torch.as_tensor(x / 16.0, dtype=torch.float32).reshape(-1, 1, 8, 8)
    labels = torch.as_tensor(y, dtype=torch.int64)
    train, test = torch.as_tensor(~test_mask), torch.as_tensor(test_mask)
    return images[train], labels[train], images[test], labels[test]
