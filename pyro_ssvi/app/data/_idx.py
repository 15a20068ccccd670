"""Strict reader for the IDX format of MNIST and Fashion-MNIST, plain or gzipped.

The IDX format (http://yann.lecun.com/exdb/mnist/) is a big-endian header,
``0x00 0x00 <type> <ndim>`` followed by ``ndim`` uint32 sizes, then the raw
values. Only unsigned bytes (type ``0x08``) occur in the MNIST family, so only
they are accepted. Every inconsistency (bad magic number, wrong item shape,
truncated or over-long payload, broken gzip stream) is an error that names the
file, never a silently misread array.

Example::

    images = read_idx("MNIST/raw/t10k-images-idx3-ubyte", item_shape=(28, 28))
"""

from __future__ import annotations

import gzip
import math
import os
import struct
import zlib

import numpy as np

__all__ = ["read_idx"]

_UBYTE = 0x08
_GZIP_MAGIC = b"\x1f\x8b"


def _read_bytes(path: str | os.PathLike) -> bytes:
    with open(path, "rb") as fh:
        data = fh.read()
    if not data.startswith(_GZIP_MAGIC):
        return data
    try:
        return gzip.decompress(data)
    except (OSError, EOFError, zlib.error) as err:
        raise ValueError(
            f"{os.fspath(path)} is a corrupt gzip file ({err}); replace it with a "
            "fresh copy of the official file."
        ) from err


def read_idx(path: str | os.PathLike, item_shape: tuple[int, ...]) -> np.ndarray:
    """Reads a uint8 IDX file (optionally gzipped) and checks its header.

    Args:
        path: The file; gzip compression is detected from its first bytes.
        item_shape: Expected shape of one item, e.g. ``(28, 28)`` for images
            and ``()`` for labels. The number of items is read from the file.

    Returns:
        A read-only uint8 array of shape ``(N, *item_shape)``.

    Raises:
        FileNotFoundError: If ``path`` does not exist.
        ValueError: If the file is not a uint8 IDX file of that item shape, or
            its payload is shorter or longer than its header says.
    """
    name = os.fspath(path)
    data = _read_bytes(path)
    ndim = 1 + len(item_shape)
    header_size = 4 + 4 * ndim
    expected_magic = (_UBYTE << 8) | ndim
    fix = "the file is corrupt or of another kind; replace it with the official file"
    if len(data) < header_size:
        raise ValueError(
            f"{name} is truncated: {len(data)} bytes, shorter than the "
            f"{header_size}-byte IDX header; {fix}."
        )
    (magic,) = struct.unpack(">I", data[:4])
    if magic != expected_magic:
        raise ValueError(
            f"{name} has IDX magic number 0x{magic:08x}, expected "
            f"0x{expected_magic:08x} (uint8, {ndim} dimensions); {fix}."
        )
    shape = struct.unpack(f">{ndim}I", data[4:header_size])
    if tuple(shape[1:]) != tuple(item_shape):
        raise ValueError(
            f"{name} holds items of shape {tuple(shape[1:])}, expected "
            f"{tuple(item_shape)}; {fix}."
        )
    expected_size = header_size + math.prod(shape)
    if len(data) != expected_size:
        state = "truncated" if len(data) < expected_size else "over-long"
        raise ValueError(
            f"{name} is {state}: {len(data)} bytes, but its header {shape} needs "
            f"{expected_size}; {fix}."
        )
    return np.frombuffer(data, dtype=np.uint8, offset=header_size).reshape(shape)
