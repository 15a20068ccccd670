"""One owner per run directory: an exclusive lock held for the whole command.

``train``, ``compare`` and ``evaluate --output`` own what they write while
they run: the run (or comparison) directory, through the lock file
:data:`LOCK_FILE` inside it, or for ``evaluate --output FILE`` the file,
through ``.FILE.lock`` beside it. The lock is the operating system's
(:mod:`filelock`: ``flock`` on POSIX), so the kernel releases it when the
process ends, however it ends: a lock left by a killed process is free
again at once. A second command is refused in one line that names the
running one, read from the owner record (:data:`OWNER_SUFFIX`) that the
holder writes atomically beside the lock, and changes nothing.

The lock file stays (empty) when the run ends: removing it would let a
process that opened the old file and one that creates a new file both hold
"the" lock. The owner record is removed before the lock is released.

Example::

    with own_directory(out, "--output-dir"):
        prepare_run_dir(out, overwrite=False, resume=False)
        ...  # train
"""

from __future__ import annotations

import datetime
import json
import os
import shlex
import socket
import sys
import time
from contextlib import AbstractContextManager, ExitStack, contextmanager
from pathlib import Path
from typing import Any, Iterator

from ...distributed import broadcast_object, is_main_process
from ..checkpoint import WriteError, remove_stale_temp_files, write_json
from ._errors import RunDirError

#: The lock file of a run or comparison directory (empty; never removed).
LOCK_FILE = ".pyro-ssvi.lock"
#: Appended to a lock file's name: the JSON record of the process holding it.
OWNER_SUFFIX = ".owner"
#: Files of the lock inside a run directory (not foreign files of a run).
LOCK_FILES = (LOCK_FILE, LOCK_FILE + OWNER_SUFFIX)

# Locks this process holds, by resolved lock path: a nested owner (train
# inside compare, prepare_run_dir inside train) finds its own lock here.
_HELD: set[str] = set()
# How long a refused command waits for the holder's record to appear.
_RECORD_WAIT_S = 2.0


class RunDirInUse(RunDirError):
    """Another process owns the directory (or output file): nothing was changed."""


def command_line() -> str:
    """This process's command, as a user would type it (at most 200 characters)."""
    argv = list(sys.argv) or ["python"]
    program = Path(argv[0])
    if program.name == "__main__.py":  # python -m package
        name = program.parent.name
        argv[0] = "pyro-ssvi" if name == "pyro_ssvi" else f"python -m {name}"
    else:
        argv[0] = program.name
    text = argv[0] + (" " + shlex.join(argv[1:]) if len(argv) > 1 else "")
    return text if len(text) <= 200 else text[:197] + "..."


def _owner_record() -> dict[str, Any]:
    now = datetime.datetime.now().astimezone()
    return {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "command": command_line(),
        "started": now.isoformat(timespec="seconds"),
    }


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True
    return True


def _read_owner(path: Path) -> dict[str, Any] | None:
    """The holder's record, once written (a killed holder's stale one is skipped)."""
    deadline = time.monotonic() + _RECORD_WAIT_S
    while True:
        try:
            record = json.loads(path.read_text())
            pid = int(record["pid"])
            if record.get("host") != socket.gethostname() or _alive(pid):
                return record
        except (OSError, ValueError, KeyError, TypeError):
            pass  # not written yet (the holder has just taken the lock)
        if time.monotonic() > deadline:
            return None
        time.sleep(0.05)


def _describe(record: dict[str, Any] | None) -> str:
    if record is None:
        return "another process (it has not said which yet)"
    host = record.get("host")
    where = "" if host == socket.gethostname() else f" on host {host}"
    return (
        f"another pyro-ssvi process (pid {record.get('pid')}{where}, "
        f"`{record.get('command')}`, started {record.get('started')})"
    )


@contextmanager
def hold_lock(lock: Path, what: str, fix: str) -> Iterator[None]:
    """Hold the exclusive lock ``lock`` for the block, with an owner record beside it.

    Args:
        lock: The lock file; its directory must exist.
        what: What the lock guards, for the refusal (e.g. ``"--output-dir D"``).
        fix: What to do instead, ending the refusal.

    Raises:
        RunDirInUse: If another process (or another lock in this one) holds it.
        RunDirError: If the lock file cannot be created (a read-only directory).
    """
    import filelock

    key = str(lock.resolve())
    if key in _HELD:  # this process owns it already (nested)
        yield
        return
    owner = lock.with_name(lock.name + OWNER_SUFFIX)
    handle = filelock.FileLock(str(lock), timeout=0)
    try:
        handle.acquire()
    except filelock.Timeout:
        raise RunDirInUse(
            f"{what} is in use by {_describe(_read_owner(owner))}; nothing was "
            f"changed: {fix}"
        ) from None
    except OSError as e:  # e.g. a read-only file system
        error = WriteError(e.errno, e.strerror or str(e), str(lock))
        raise RunDirError(f"{what} is not writable: {error}") from e
    _HELD.add(key)
    try:
        remove_stale_temp_files(lock.parent, [owner.name])
        write_json(owner, _owner_record())
        yield
    finally:
        try:
            owner.unlink(missing_ok=True)
        finally:
            _HELD.discard(key)
            handle.release()


def own_on_rank_0(owned: ExitStack, owner: AbstractContextManager[Any]) -> None:
    """Rank 0 enters ``owner`` (e.g. :func:`own_directory`) until ``owned`` closes.

    Under ``torchrun`` one process owns the directory (the others would be
    refused); its refusal reaches every rank, so that all stop together.

    Raises:
        RunDirError: On every rank, if rank 0 was refused.
    """
    error: RunDirError | None = None
    if is_main_process():
        try:
            owned.enter_context(owner)
        except RunDirError as e:
            error = e
    message = broadcast_object(None if error is None else str(error))
    if error is not None:
        raise error
    if message is not None:
        raise RunDirError(message)


def holds(lock: Path) -> bool:
    """Whether this process holds ``lock`` (see :func:`hold_lock`)."""
    return str(lock.resolve()) in _HELD


@contextmanager
def own_directory(
    directory: str | os.PathLike, flag: str = "--output-dir"
) -> Iterator[Path]:
    """Own a run or comparison directory for the block (created if need be).

    Args:
        directory: The directory; created with its parents if missing.
        flag: How the user named it, for messages.

    Raises:
        RunDirInUse: If another process owns it.
        RunDirError: If it is not a directory or cannot be created or written.
    """
    out = Path(directory)
    if out.exists() and not out.is_dir():
        raise RunDirError(
            f"{flag} {out} exists and is not a directory; choose another one"
        )
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise RunDirError(f"cannot create {flag} {out}: {e.strerror}") from e
    with hold_lock(
        out / LOCK_FILE,
        f"{flag} {out}",
        "wait for it to end (or stop it), or choose another directory",
    ):
        yield out


@contextmanager
def own_output_file(path: str | os.PathLike) -> Iterator[Path]:
    """Own the output file of ``evaluate --output`` (lock ``.NAME.lock`` beside it).

    Raises:
        RunDirInUse: If another process is writing the same file.
        RunDirError: If the lock cannot be created beside it.
    """
    path = Path(path)
    with hold_lock(
        path.with_name(f".{path.name}.lock"),
        f"--output {path}",
        "wait for it to end (or stop it), or write to another file",
    ):
        yield path
