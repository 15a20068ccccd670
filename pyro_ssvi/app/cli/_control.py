"""How a command runs in its process: stop signals, torch threads, error lines."""

from __future__ import annotations

import signal
import sys
import threading
from contextlib import contextmanager
from typing import Any, Iterator

_SIGNALS = ("SIGINT", "SIGTERM")


class CLIError(Exception):
    """A one-line error for the user (exit code 1)."""


@contextmanager
def _threads(count: int | None) -> Iterator[None]:
    """torch's CPU threads set to ``count`` for the command (None: unchanged)."""
    import torch

    if count is None:
        yield
        return
    if count < 1:
        raise CLIError(f"--threads must be >= 1, got {count}")
    before = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@contextmanager
def _stop_signals(received: list[str]) -> Iterator[None]:
    """SIGTERM (from ``timeout``, schedulers) stops the command like Ctrl-C.

    Either raises ``KeyboardInterrupt``, so training stops where it is and
    keeps its last checkpoint (file writes hold signals until they finish).
    The names of the signals received go to ``received``.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum: int, _frame: Any) -> None:
        received.append(signal.Signals(signum).name)
        raise KeyboardInterrupt

    kinds = [getattr(signal, name) for name in _SIGNALS]
    previous = {s: signal.signal(s, stop) for s in kinds}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, signal.SIG_DFL if handler is None else handler)


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split()) or type(error).__name__


def _error(text: str) -> None:
    print(f"pyro-ssvi: error: {text}", file=sys.stderr)
