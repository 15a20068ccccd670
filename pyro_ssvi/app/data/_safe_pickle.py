"""A restricted unpickler for data files: rebuilds numpy arrays, executes nothing.

CIFAR's ``*-python`` batches (and the ``mnist.pkl.gz`` that the maintainer
script converts) are Python pickles. A plain :func:`pickle.load` calls any
global a file names, so a crafted file can run ``os.system``. This unpickler
resolves only the few globals that numpy arrays need (``_reconstruct``,
``ndarray``, ``dtype``, ``scalar``) plus a latin-1-only ``_codecs.encode`` for
bytes written by Python 3 at protocol 2; dicts, lists, strings and numbers need
no globals. Anything else raises :class:`pickle.UnpicklingError` before it is
called.

Example::

    with open("cifar-10-batches-py/test_batch", "rb") as fh:
        batch = restricted_load(fh)
"""

from __future__ import annotations

import codecs
import pickle
from typing import Any, Callable, Protocol, cast

import numpy as np

__all__ = ["restricted_load"]


def _latin1_encode(text: str, encoding: str = "latin1") -> bytes:
    """What protocol-2 pickles call as ``_codecs.encode``, latin-1 only."""
    if not isinstance(text, str) or codecs.lookup(encoding).name != "iso8859-1":
        raise pickle.UnpicklingError(
            f"forbidden call _codecs.encode(<{type(text).__name__}>, {encoding!r}):"
            " data files may only encode text as latin-1."
        )
    return text.encode("latin1")


# The functions numpy's own __reduce__ names, found without importing the
# deprecated numpy.core alias (numpy 2 moved it to numpy._core).
_RECONSTRUCT = cast(Callable[..., Any], np.empty(0).__reduce__()[0])
_SCALAR = cast(Callable[..., Any], np.uint8(0).__reduce__()[0])

_ALLOWED: dict[tuple[str, str], Callable[..., Any]] = {
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("_codecs", "encode"): _latin1_encode,
}
for _module in ("numpy.core.multiarray", "numpy._core.multiarray"):
    _ALLOWED[(_module, "_reconstruct")] = _RECONSTRUCT
    _ALLOWED[(_module, "scalar")] = _SCALAR


class BinaryReader(Protocol):
    """What :class:`pickle.Unpickler` reads from: a binary file object."""

    def read(self, size: int, /) -> bytes: ...

    def readline(self) -> bytes: ...


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Callable[..., Any]:
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(
                f"forbidden global {module}.{name}: a data file may only rebuild "
                "numpy arrays, so it was rejected without running anything."
            ) from None


def restricted_load(fh: BinaryReader) -> Any:
    """Unpickles a data file, allowing only the globals numpy arrays need.

    Python 2 strings are decoded as latin-1, as numpy's array pickles need.

    Args:
        fh: A binary file object positioned at the start of the pickle.

    Returns:
        The unpickled object (typically a dict or tuple of arrays and lists).

    Raises:
        pickle.UnpicklingError: If the pickle names any other global (nothing
            is executed), or is malformed.
        EOFError: If the pickle is truncated.
    """
    return _RestrictedUnpickler(fh, encoding="latin1").load()
