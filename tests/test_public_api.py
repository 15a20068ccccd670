"""Every public name exists, is documented, and importing stays cheap."""

from __future__ import annotations

import importlib
import subprocess
import sys

import pytest

MODULES = [
    "pyro_ssvi",
    "pyro_ssvi.checkpoint",
    "pyro_ssvi.cli",
    "pyro_ssvi.compare",
    "pyro_ssvi.criteria",
    "pyro_ssvi.data",
    "pyro_ssvi.distributed",
    "pyro_ssvi.distributions",
    "pyro_ssvi.elbo",
    "pyro_ssvi.flops",
    "pyro_ssvi.guides",
    "pyro_ssvi.initialization",
    "pyro_ssvi.layers",
    "pyro_ssvi.layers.lrt",
    "pyro_ssvi.layers.sparse",
    "pyro_ssvi.metrics",
    "pyro_ssvi.models",
    "pyro_ssvi.plots",
    "pyro_ssvi.poutine",
    "pyro_ssvi.predict",
    "pyro_ssvi.regression",
    "pyro_ssvi.reselection",
    "pyro_ssvi.schedules",
    "pyro_ssvi.selection",
    "pyro_ssvi.svi",
    "pyro_ssvi.training",
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
        "import sys, pyro_ssvi, pyro_ssvi.models, pyro_ssvi.svi; "
        "heavy = [m for m in ('torchvision', 'matplotlib', 'scipy', 'sklearn') "
        "if m in sys.modules]; print(heavy)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "[]"
