"""Downloads with torchvision's md5-checked fetchers, without its unpickling.

torchvision's ``CIFAR10(download=True)`` would also ``pickle.load`` the batches
unrestricted, so only its download helpers and the URLs and md5s its data set
classes declare are used; the files are then read by :mod:`._readers`.

Example::

    download("cifar10", "/data", "train")  # /data/cifar-10-batches-py/...
"""

from __future__ import annotations

import os
from pathlib import Path
from urllib.error import URLError

from ._readers import SOURCES

__all__ = ["download", "fetch"]


def fetch(
    urls: list[str],
    folder: str | os.PathLike,
    filename: str,
    md5: str | None,
    *,
    extract: bool,
    layout: str,
    source: str,
) -> None:
    """Downloads one file from the first mirror that works, checking its md5.

    Args:
        urls: Mirrors of the file, tried in order.
        folder: Where the file goes (created if needed).
        filename: Its name in ``folder``.
        md5: Expected md5 of the download, or ``None`` to skip the check.
        extract: Whether to unpack it (tar or gz) into ``folder`` afterwards.
        layout: The expected layout, for the error message.
        source: Where to get the files by hand, for the error message.

    Raises:
        RuntimeError: If every mirror fails (no network, bad md5); the message
            gives each reason and says where to put the files by hand.
    """
    from torchvision.datasets.utils import download_url, extract_archive

    folder = os.fspath(folder)
    reasons = []
    for url in urls:
        try:
            download_url(url, folder, filename, md5)
        except (URLError, OSError, RuntimeError) as err:
            reasons.append(f"{url}: {err}")
            continue
        if extract:
            extract_archive(os.path.join(folder, filename), folder)
        return
    raise RuntimeError(
        f"download failed: {'; '.join(reasons)}; on a machine without internet, "
        f"get the files from {source} yourself and place them in {layout}."
    )


def download(name: str, data_dir: str | os.PathLike, split: str) -> None:
    """Fetches what ``read_from_dir(name, data_dir, split)`` needs.

    Args:
        name: A key of :data:`._readers.SOURCES`.
        data_dir: The root folder; files go into torchvision's layout under it.
        split: ``"train"`` or ``"test"`` (only SVHN downloads per split).

    Raises:
        RuntimeError: If the download fails.
    """
    from torchvision import datasets

    root = Path(data_dir)
    source = SOURCES[name]
    hint = {
        "layout": source.layout.replace("<data_dir>", os.fspath(root)),
        "source": source.url,
    }
    if name in ("mnist", "fashion_mnist"):
        cls = datasets.MNIST if name == "mnist" else datasets.FashionMNIST
        for filename, md5 in cls.resources:
            urls = [mirror + filename for mirror in cls.mirrors]
            fetch(urls, root / source.folder, filename, md5, extract=True, **hint)
    elif name in ("cifar10", "cifar100"):
        cls = datasets.CIFAR10 if name == "cifar10" else datasets.CIFAR100
        fetch([cls.url], root, cls.filename, cls.tgz_md5, extract=True, **hint)
    else:
        url, filename, md5 = datasets.SVHN.split_list[split]
        fetch([url], root, filename, md5, extract=False, **hint)
