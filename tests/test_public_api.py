"""Every public name exists, is documented, and importing stays cheap."""

from __future__ import annotations

import importlib
import subprocess
import sys

import pytest

MODULES = [
    "pyro_ssvi",
    "pyro_ssvi.app",
    "pyro_ssvi.app.checkpoint",
    "pyro_ssvi.app.cli",
    "pyro_ssvi.app.compare",
    "pyro_ssvi.background",
    "pyro_ssvi.criteria",
    "pyro_ssvi.app.data",
    "pyro_ssvi.distributed",
    "pyro_ssvi.distributions",
    "pyro_ssvi.elbo",
    "pyro_ssvi.growth",
    "pyro_ssvi.app.flops",
    "pyro_ssvi.guides",
    "pyro_ssvi.initialization",
    "pyro_ssvi.kl",
    "pyro_ssvi.layers",
    "pyro_ssvi.layers.lazy",
    "pyro_ssvi.layers.lrt",
    "pyro_ssvi.layers.sparse",
    "pyro_ssvi.app.metrics",
    "pyro_ssvi.app.models",
    "pyro_ssvi.app.plots",
    "pyro_ssvi.poutine",
    "pyro_ssvi.app.predict",
    "pyro_ssvi.app.regression",
    "pyro_ssvi.reselection",
    "pyro_ssvi.schedules",
    "pyro_ssvi.selection",
    "pyro_ssvi.svi",
    "pyro_ssvi.app.training",
]


@pytest.mark.parametrize("module_name", MODULES)
def test_all_names_exist_sorted_and_documented(module_name):
    module = importlib.import_module(module_name)
    assert module.__doc__, f"{module_name} has no module docstring"
    names = module.__all__
    assert list(names) == sorted(names)
    for name in names:
        obj = getattr(module, name)
        if callable(obj) and not isinstance(obj, (dict, tuple)):
            assert obj.__doc__, f"{module_name}.{name} has no docstring"


def test_import_does_not_pull_heavy_optional_modules():
    code = (
        "import sys, pyro_ssvi, pyro_ssvi.app.models, pyro_ssvi.svi; "
        "heavy = [m for m in ('torchvision', 'matplotlib', 'scipy', 'sklearn') "
        "if m in sys.modules]; print(heavy)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "[]"


def test_the_library_imports_only_torch_pyro_and_numpy():
    """``import pyro_ssvi`` loads no module of the application and none of the
    ``[app]`` extra's packages."""
    code = (
        "import sys, pyro_ssvi; "
        "print(sorted(m for m in sys.modules if m.startswith('pyro_ssvi.app') "
        "or m.split('.')[0] in ('torchvision', 'sklearn', 'matplotlib', "
        "'filelock')))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "[]"


def test_the_command_without_the_app_extra_says_so_in_one_line():
    """``pyro-ssvi`` where an ``[app]`` package is missing: one line naming it
    and the install command, exit status 2, no traceback."""
    code = (
        "import sys; sys.modules['sklearn'] = None; sys.modules['filelock'] = None; "
        "from pyro_ssvi.app import main; sys.exit(main(['train']))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 2 and out.stdout == ""
    assert out.stderr.count("\n") == 1
    assert "scikit-learn, filelock" in out.stderr
    assert "pip install 'pyro-ssvi[app]'" in out.stderr
