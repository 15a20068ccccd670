"""pyro_ssvi inside TyXe: ``tyxe.VariationalBNN`` with ``AutoSparseNormal`` as
its guide and ``SparseSVI`` in its ``fit``, under TyXe's own local
reparameterisation context (which wraps ``F.linear``).

TyXe is not a dependency: the test installs it with ``pip install --no-deps``
into a temporary directory, and is skipped, with the reason, where that fails.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import subprocess
import sys

import pyro
import pytest
import torch
from torch import nn

from pyro_ssvi import AutoSparseNormal, SparseSVI

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def tyxe(tmp_path_factory):
    if importlib.util.find_spec("tyxe") is None:
        target = tmp_path_factory.mktemp("tyxe")
        command = [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps"]
        try:
            subprocess.run(
                [*command, "--target", str(target), "tyxe==0.0.2"],
                check=True,
                capture_output=True,
                timeout=300,
            )
        except (subprocess.SubprocessError, OSError) as e:
            pytest.skip(f"tyxe could not be installed ({type(e).__name__})")
        sys.path.insert(0, str(target))
    return importlib.import_module("tyxe")


def test_a_tyxe_bnn_trains_with_our_guide_and_sparse_svi(tyxe, monkeypatch):
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    x = torch.randn(512, 6)
    y = (x[:, 0] > 0).long() + (x[:, 1] > 0).long()
    net = nn.Sequential(nn.Linear(6, 32), nn.ReLU(), nn.Linear(32, 3))
    bnn = tyxe.VariationalBNN(
        net,
        tyxe.priors.IIDPrior(pyro.distributions.Normal(0.0, 1.0)),
        tyxe.likelihoods.Categorical(len(x)),
        functools.partial(AutoSparseNormal, density=0.3),
    )
    loader = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(x, y), batch_size=64
    )
    sparse_svi = functools.partial(
        SparseSVI, update_every=8, local_reparameterization=True
    )
    monkeypatch.setattr(tyxe.bnn, "SVI", sparse_svi)  # TyXe's fit builds its SVI
    with tyxe.poutine.local_reparameterization():
        svi = bnn.fit(loader, pyro.optim.Adam({"lr": 0.02}), 12)
    assert isinstance(svi, SparseSVI) and svi.num_updates == 12 * 8 // 8
    guide = bnn.net_guide
    assert isinstance(guide, AutoSparseNormal)
    assert guide.density == pytest.approx(0.3, abs=0.02)
    # Chance is at most 0.5 (the middle class); the rule is learnt.
    errors, _ = bnn.evaluate(x, y, num_predictions=16)
    assert float(errors) / len(x) < 0.2
