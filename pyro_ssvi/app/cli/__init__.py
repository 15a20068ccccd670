"""The ``pyro-ssvi`` command (also ``python -m pyro_ssvi``).

Usage::

    pyro-ssvi train [--density 0.1] [--epochs 15] [--output-dir runs/x] ...
    pyro-ssvi evaluate RUN_DIR_OR_CHECKPOINT [--num-samples 50] [--dataset ...]
    pyro-ssvi compare [--densities 0.1 0.05] [--epochs 15] [--output-dir runs/c]

``train`` defaults to the embedded MNIST (Fashion-MNIST as the OOD set) and a
Bayesian MLP 784-400-400-10 at density 0.1; ``--dataset diabetes`` (or
``boston``, ``concrete``) trains a Bayesian regressor, F-50-1 with a learned
noise, by the UCI protocol (``--recipe uci``). Every flag maps to a field of
:class:`pyro_ssvi.app.training.TrainConfig`; see ``pyro-ssvi train --help``.
"""

from __future__ import annotations

import os
import signal
from typing import Sequence

from ._commands import _cmd_compare, _cmd_evaluate, _cmd_train
from ._control import CLIError, _error, _one_line, _stop_signals, _threads
from ._parser import build_parser

__all__ = ["build_parser", "main"]


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``pyro-ssvi``; returns the process exit code.

    Expected failures (bad flags, unusable output directories, missing data,
    bad checkpoints, a diverging loss, a full disk) print one
    ``pyro-ssvi: error: ...`` line to stderr naming the problem and the fix,
    and return 1; usage errors return 2 (argparse). Ctrl-C and SIGTERM stop
    at once, keep the last checkpoint, say so in one line and return 130 or
    143.
    """
    args = build_parser().parse_args(argv)
    from ..checkpoint import CheckpointError
    from ..training import ConfigError, RunDirError, RunStopped

    expected = (CLIError, RunDirError, CheckpointError, RunStopped, ConfigError)
    commands = {"train": _cmd_train, "evaluate": _cmd_evaluate, "compare": _cmd_compare}
    received: list[str] = []
    try:
        with _stop_signals(received), _threads(args.threads):
            return commands[args.command](args)
    except (*expected, OSError) as e:  # OSError: missing files, full disks, ...
        _error(_one_line(e))
    except (ValueError, RuntimeError) as e:
        if os.environ.get("PYRO_SSVI_DEBUG"):
            raise
        _error(f"{_one_line(e)} (set PYRO_SSVI_DEBUG=1 for a traceback)")
    except KeyboardInterrupt as e:
        name = received[-1] if received else "SIGINT"
        detail = str(e) or "stopped; nothing was lost"
        _error(f"interrupted by {name}: {' '.join(detail.split())}")
        return 128 + getattr(signal, name)
    return 1
