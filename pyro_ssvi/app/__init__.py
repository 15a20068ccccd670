"""The ``pyro-ssvi`` application: training runs, evaluation, comparison, plots.

Built on the library (``pyro_ssvi``) and kept apart from it: the library needs
only torch, Pyro and NumPy; the application also needs the ``[app]`` extra
(torchvision, scikit-learn, matplotlib, tqdm, filelock)::

    pip install "pyro-ssvi[app]"

Modules: :mod:`~pyro_ssvi.app.cli` (the command), :mod:`~pyro_ssvi.app.training`
(the runner), :mod:`~pyro_ssvi.app.compare`, :mod:`~pyro_ssvi.app.models`,
:mod:`~pyro_ssvi.app.data`, :mod:`~pyro_ssvi.app.metrics`,
:mod:`~pyro_ssvi.app.predict`, :mod:`~pyro_ssvi.app.plots`,
:mod:`~pyro_ssvi.app.flops`, :mod:`~pyro_ssvi.app.regression` and
:mod:`~pyro_ssvi.app.checkpoint`.
"""

from __future__ import annotations

import importlib.util
import sys

__all__ = ["APP_REQUIREMENTS", "main", "missing_requirements"]

#: The ``[app]`` extra: ``{import name: distribution name}``.
APP_REQUIREMENTS = {
    "torchvision": "torchvision",
    "sklearn": "scikit-learn",
    "matplotlib": "matplotlib",
    "tqdm": "tqdm",
    "filelock": "filelock",
}


def missing_requirements() -> list[str]:
    """Distributions of the ``[app]`` extra that cannot be imported here."""
    return [
        dist
        for module, dist in APP_REQUIREMENTS.items()
        if importlib.util.find_spec(module) is None
    ]


def main(argv: list[str] | None = None) -> int:
    """The ``pyro-ssvi`` console script: one line and exit status 2 when the
    ``[app]`` extra is missing, else :func:`pyro_ssvi.app.cli.main`."""
    missing = missing_requirements()
    if missing:
        print(
            f"pyro-ssvi: the application needs {', '.join(missing)}, which "
            "this Python cannot import; install them with "
            "pip install 'pyro-ssvi[app]'",
            file=sys.stderr,
        )
        return 2
    from .cli import main as cli_main

    return cli_main(argv)
