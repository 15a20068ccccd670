"""Shared test hygiene: a clean param store, a fixed seed and Pyro validation."""

import pyro
import pytest
import torch


@pytest.fixture(autouse=True)
def _pyro_hygiene():
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    pyro.enable_validation(True)
    pyro.settings.set(module_local_params=False)
    yield
    pyro.clear_param_store()


@pytest.fixture
def float64():
    """Run a test in float64, restoring the default dtype afterwards."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)
