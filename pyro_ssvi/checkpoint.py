"""Atomic, safe checkpoints and run-directory files.

Every file is written to a temporary file in the target directory, flushed to
disk and renamed over the target (:func:`os.replace` is atomic on POSIX and
Windows), so a crash or a kill leaves either the old file or the new one, never
a torn file. Checkpoints are loaded with ``torch.load(..., weights_only=True)``,
which refuses to execute code from the file.

Example::

    save_checkpoint(path, {"epoch": 3, "guide": guide.state_dict(), ...})
    state = load_checkpoint(path, map_location="cpu")
"""

from __future__ import annotations

import json
import os
import pickle
import tempfile
from pathlib import Path
from typing import IO, Any, Callable

import torch

__all__ = [
    "CHECKPOINT_FORMAT",
    "CHECKPOINT_VERSION",
    "CheckpointError",
    "atomic_write",
    "load_checkpoint",
    "save_checkpoint",
    "write_json",
]

#: Value of the ``"format"`` key of every pyro_ssvi checkpoint.
CHECKPOINT_FORMAT = "pyro_ssvi.checkpoint"
#: Version of the checkpoint layout; bumped on incompatible changes.
CHECKPOINT_VERSION = 1


class CheckpointError(ValueError):
    """A checkpoint file is missing, corrupt, unsafe or from another run."""


def atomic_write(path: str | os.PathLike, write: Callable[[IO[bytes]], object]) -> Path:
    """Write a file atomically: ``write(fh)`` fills a temporary file, then rename.

    Args:
        path: Destination; its directory must exist.
        write: Callable that writes the content to a binary file handle.

    Returns:
        The destination path.

    Raises:
        OSError: If the directory is missing or not writable; the destination
            is left untouched and no temporary file remains.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp's 0600 would hide results
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    """Write ``obj`` as indented JSON, atomically."""
    data = (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode()
    return atomic_write(path, lambda fh: fh.write(data))


def save_checkpoint(path: str | os.PathLike, state: dict[str, Any]) -> Path:
    """Save a checkpoint dict atomically, tagged with format and version.

    ``state`` must hold only tensors, numbers, strings, booleans, None, and
    lists/tuples/dicts of those, so that it loads with ``weights_only=True``.

    Returns:
        The destination path.
    """
    payload = {"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, **state}
    return atomic_write(path, lambda fh: torch.save(payload, fh))


def load_checkpoint(
    path: str | os.PathLike, map_location: str | torch.device | None = None
) -> dict[str, Any]:
    """Load a checkpoint written by :func:`save_checkpoint`, safely.

    Args:
        path: The checkpoint file.
        map_location: Passed to :func:`torch.load` (e.g. ``"cpu"``).

    Returns:
        The checkpoint dict.

    Raises:
        CheckpointError: If the file is missing, unreadable, would need to run
            code to load (``weights_only`` refuses it), or is not a pyro_ssvi
            checkpoint of a supported version.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {str(path)!r} does not exist")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        raise CheckpointError(
            f"checkpoint {str(path)!r} was refused by torch.load(weights_only=True) "
            f"(it would need to execute code to load, or it is corrupt): {e}"
        ) from e
    except (RuntimeError, EOFError, OSError) as e:
        raise CheckpointError(
            f"checkpoint {str(path)!r} is corrupt or truncated: {e}"
        ) from e
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{str(path)!r} is not a pyro_ssvi checkpoint")
    if state.get("version") != CHECKPOINT_VERSION:
        raise CheckpointError(
            f"checkpoint {str(path)!r} has layout version {state.get('version')!r}; "
            f"this pyro_ssvi reads version {CHECKPOINT_VERSION}"
        )
    return state
