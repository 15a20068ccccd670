"""Atomic, safe checkpoints and run-directory files.

Every file is written to a temporary file in the target directory, flushed to
disk and renamed over the target (:func:`os.replace` is atomic on POSIX and
Windows), so a crash or a kill leaves either the old file or the new one, never
a torn file; SIGINT and SIGTERM wait until the write is done. A write that
fails (a full disk, a missing directory) raises :class:`WriteError` naming the
file and the cause. Checkpoints are loaded with
``torch.load(..., weights_only=True)``, which refuses to execute code from the
file, and every refusal is one line saying what the file is and what to do.

Example::

    save_checkpoint(path, {"epoch": 3, "guide": guide.state_dict(), ...})
    state = load_checkpoint(path, map_location="cpu")
"""

from __future__ import annotations

import errno
import glob
import io
import json
import os
import re
import signal
import sys
import tempfile
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any, Callable, Iterable, Iterator

import torch

__all__ = [
    "CHECKPOINT_FORMAT",
    "CHECKPOINT_VERSION",
    "CheckpointError",
    "READABLE_VERSIONS",
    "WriteError",
    "atomic_write",
    "check_writable",
    "load_checkpoint",
    "remove_stale_temp_files",
    "save_checkpoint",
    "signals_deferred",
    "write_json",
]

#: Value of the ``"format"`` key of every pyro_ssvi checkpoint.
CHECKPOINT_FORMAT = "pyro_ssvi.checkpoint"
#: Version of the checkpoint layout that :func:`save_checkpoint` writes;
#: bumped on incompatible changes.
CHECKPOINT_VERSION = 2
#: Layout versions that :func:`load_checkpoint` reads (1, never released, is
#: no longer read).
READABLE_VERSIONS = (2,)

_ZIP_MAGIC = b"PK\x03\x04"  # torch.save writes zip archives
GIVE_A_RUN = "pass a run directory or the checkpoint.pt that pyro-ssvi train wrote"


class CheckpointError(ValueError):
    """A checkpoint file is missing, corrupt, unsafe or from another run."""


class WriteError(OSError):
    """A file could not be written; an older version of it is left unchanged.

    ``str()`` is one line naming the file (never the temporary file) and the
    cause; ``errno`` is the operating system's error number.
    """

    _HINTS = {
        errno.ENOSPC: "; free some space there",
        errno.EFBIG: " (a file size limit, see `ulimit -f`)",
        errno.ENOENT: " (its directory does not exist)",
        errno.ENOTDIR: " (a part of its path is not a directory)",
        errno.EISDIR: " (it is a directory; give a file name)",
        errno.EACCES: "; choose a location you may write to",
        errno.EROFS: "; choose another location",  # strerror names it already
    }

    def __str__(self) -> str:
        reason = (self.strerror or "unknown error").lower()
        hint = self._HINTS.get(self.errno or 0, "")
        return f"cannot write {self.filename}: {reason}{hint}"


def _write_error(path: Path, error: OSError) -> WriteError:
    return WriteError(error.errno, error.strerror or str(error), str(path))


@contextmanager
def signals_deferred() -> Iterator[None]:
    """Hold SIGINT and SIGTERM until the block ends, then deliver them.

    Files written inside the block are finished before a Ctrl-C, ``timeout``
    or a scheduler's SIGTERM takes effect. Outside the main thread (where
    Python cannot install handlers) the block runs unprotected.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[int] = []

    def hold(signum: int, _frame: Any) -> None:
        caught.append(signum)

    previous = {s: signal.signal(s, hold) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, signal.SIG_DFL if handler is None else handler)
        if caught:
            signal.raise_signal(caught[0])


def _temp_file(path: Path) -> tuple[int, str]:
    return tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)


def atomic_write(path: str | os.PathLike, write: Callable[[IO[bytes]], object]) -> Path:
    """Write a file atomically: ``write(fh)`` fills a temporary file, then rename.

    SIGINT and SIGTERM are held until the file is complete (see
    :func:`signals_deferred`).

    Args:
        path: Destination; its directory must exist.
        write: Callable that writes the content to a binary file handle.

    Returns:
        The destination path.

    Raises:
        WriteError: If the directory is missing or not writable or the disk
            is full; the destination is left untouched and no temporary file
            remains.
    """
    path = Path(path)
    with signals_deferred():
        try:
            fd, tmp = _temp_file(path)
        except OSError as e:
            raise _write_error(path, e) from e
        try:
            os.chmod(tmp, 0o666 & ~_umask())  # mkstemp's 0600 would hide results
            with os.fdopen(fd, "wb") as fh:
                write(fh)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        except BaseException as e:
            if os.path.exists(tmp):
                os.unlink(tmp)
            if isinstance(e, OSError) and not isinstance(e, WriteError):
                raise _write_error(path, e) from e
            raise
    return path


def check_writable(path: str | os.PathLike) -> Path:
    """Check now that ``path`` can be written, before work that ends in writing it.

    Creates and removes a temporary file beside it (permission bits alone do
    not tell, e.g. for root or on a read-only mount).

    Raises:
        WriteError: If ``path`` is a directory or its directory cannot take a
            new file.
    """
    path = Path(path)
    if path.is_dir():
        raise WriteError(errno.EISDIR, os.strerror(errno.EISDIR), str(path))
    try:
        fd, tmp = _temp_file(path)
    except OSError as e:
        raise _write_error(path, e) from e
    os.close(fd)
    os.unlink(tmp)
    return path


def remove_stale_temp_files(
    directory: str | os.PathLike, names: Iterable[str]
) -> list[Path]:
    """Remove temporary files that a killed :func:`atomic_write` of ``names`` left.

    Only files named like this module's temporary files of the given targets
    (``.<name>.<random>.tmp``) are touched.

    Returns:
        The removed paths.
    """
    directory = Path(directory)
    removed = []
    for name in names:
        for tmp in directory.glob(f".{glob.escape(name)}.*.tmp"):
            if tmp.is_file():
                tmp.unlink(missing_ok=True)
                removed.append(tmp)
    return removed


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
    It is serialised in memory first, so that a failing disk raises a
    :class:`WriteError` with the cause (torch's own writer reports only an
    offset). The bytes depend on the values alone, not on which Python
    objects hold them (see :func:`_canonical`): a resumed run writes a
    checkpoint of the same size as an uninterrupted one.

    Returns:
        The destination path.
    """
    payload = {"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, **state}
    buffer = io.BytesIO()
    torch.save(_canonical(payload), buffer)
    return atomic_write(path, lambda fh: fh.write(buffer.getbuffer()))


def _canonical(value: Any) -> Any:
    """``value`` with fresh containers and interned strings, tensors as they are.

    Pickle writes an object met before as a back-reference to its first copy,
    so the size of a file depends on which values are one object: the
    configuration of a fresh run holds the code's constant strings (its two
    ``"cosine"`` are one object), a resumed run's come from JSON (two
    objects). After this, equal strings are always one object and containers
    never are.
    """
    if isinstance(value, str):
        return sys.intern(value) if type(value) is str else value
    if isinstance(value, dict) and type(value) is dict:
        return {_canonical(k): _canonical(v) for k, v in value.items()}
    if type(value) in (list, tuple):
        return type(value)(_canonical(v) for v in value)
    return value


def load_checkpoint(
    path: str | os.PathLike,
    map_location: str | torch.device | None = None,
    *,
    advice: str = GIVE_A_RUN,
) -> dict[str, Any]:
    """Load a checkpoint written by :func:`save_checkpoint`, safely.

    Args:
        path: The checkpoint file.
        map_location: Passed to :func:`torch.load` (e.g. ``"cpu"``).
        advice: What to do instead, ending the error line when the file is
            missing, foreign or unsafe (the default suits a file the user
            named; ``--resume`` names the run directory's own fix).

    Returns:
        The checkpoint dict.

    Raises:
        CheckpointError: If the file is missing, not a torch file, truncated,
            would need to run code to load (``weights_only`` refuses it; the
            message names the object and never suggests loading it unsafely),
            or is not a pyro_ssvi checkpoint of a supported version.
    """
    path = Path(path)
    name = str(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {name} does not exist; {advice}")
    with open(path, "rb") as fh:
        if fh.read(4) != _ZIP_MAGIC:
            raise CheckpointError(
                f"{name} is not a pyro_ssvi checkpoint (not a file written by "
                f"torch.save); {advice}"
            )
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # torch.load raises many types on foreign bytes
        raise CheckpointError(_load_failure(name, e, advice)) from e
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(
            f"{name} is a torch file but not a pyro_ssvi checkpoint (it has no "
            f"'format': {CHECKPOINT_FORMAT!r} entry); {advice}"
        )
    if state.get("version") not in READABLE_VERSIONS:
        readable = " and ".join(str(v) for v in READABLE_VERSIONS)
        raise CheckpointError(
            f"checkpoint {name} has layout version {state.get('version')!r}; "
            f"this pyro_ssvi reads versions {readable}: use the pyro_ssvi "
            "version that wrote it"
        )
    return state


def _load_failure(name: str, error: Exception, advice: str) -> str:
    """One line for a failed safe load, without torch's advice to load unsafely."""
    found = re.search(r"GLOBAL ([\w.]+)", str(error))
    if found:
        return (
            f"checkpoint {name} was refused unread: it holds a Python object "
            f"({found.group(1)}) that loading would have to run, which no "
            "pyro_ssvi checkpoint does, so it is foreign or was tampered with; "
            f"do not load it; {advice}"
        )
    return (
        f"checkpoint {name} is truncated or corrupt (torch cannot read its "
        "archive); pyro_ssvi writes checkpoints whole, so it was damaged "
        "afterwards: restore it from a copy or use another checkpoint"
    )
