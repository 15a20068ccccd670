"""Data-parallel SSVI: 2 CPU processes (gloo, loopback) launched by torchrun."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from ddp_worker import TINY

from pyro_ssvi.app.checkpoint import load_checkpoint

pytestmark = pytest.mark.slow

HERE = Path(__file__).parent
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
TINY_ARGS = [
    "--train-limit", "512", "--test-limit", "256", "--batch-size", "64",
    "--update-every", "3", "--num-samples", "3", "--lr", "0.01",
    "--epochs", "2", "--device", "cpu", "--no-progress",
]  # fmt: skip


def _run(args, ok=True, timeout=300):
    """Run a command in tests/ (bounded in time); return the completed process."""
    proc = subprocess.run(
        args, cwd=HERE, capture_output=True, text=True, timeout=timeout
    )
    if ok:
        assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def test_two_ranks_agree_and_match_one_process(tmp_path):
    _run([*TORCHRUN, "--nproc_per_node", "2", "ddp_worker.py", str(tmp_path)])
    _run([sys.executable, "ddp_worker.py", str(tmp_path), "--single"])
    r0, r1, single = (
        torch.load(tmp_path / f"{n}.pt") for n in ("rank0", "rank1", "single")
    )
    assert len(r0["updates"]) == 6 and r0["updates"] == r1["updates"]
    # the loss took the ELBO's fast path, inside DistributedDataParallel too
    assert r0["fast_path"] and r1["fast_path"] and single["fast_path"]
    for name in r0["indices"]:  # identical subspaces on both ranks, and as in 1
        assert torch.equal(r0["indices"][name], r1["indices"][name])
        assert torch.equal(r0["indices"][name], single["indices"][name])
    for name in r0["params"]:  # identical parameters; as 1 process up to floats
        assert torch.equal(r0["params"][name], r1["params"][name])
        assert torch.allclose(r0["params"][name], single["params"][name], atol=1e-5)
    assert r0["losses"] == pytest.approx(single["losses"], rel=1e-5)


def test_diverging_subspaces_fail_loudly(tmp_path):
    args = [*TORCHRUN, "--nproc_per_node", "2", "ddp_worker.py", str(tmp_path)]
    proc = _run([*args, "--mismatch"], ok=False)
    assert proc.returncode != 0
    assert "differ from rank 0's after the subspace update at step 2" in proc.stderr


def test_cli_under_torchrun_matches_one_process_and_resumes(tmp_path):
    two, one, cut = tmp_path / "two", tmp_path / "one", tmp_path / "cut"
    cli = ["-m", "pyro_ssvi", "train"]
    _run(
        [*TORCHRUN, "--nproc_per_node", "2", *cli, *TINY_ARGS, "--output-dir", str(two)]
    )
    _run([sys.executable, *cli, *TINY_ARGS, "--output-dir", str(one)])
    m2, m1 = (json.loads((d / "metrics.json").read_text()) for d in (two, one))
    assert m2["world_size"] == 2 and m1["world_size"] == 1
    # Same problem, same noise: the same model up to float summation order.
    for key in ("test_accuracy_mean_weights", "test_nll_mean_weights", "density"):
        assert m2[key] == pytest.approx(m1[key], rel=1e-3, abs=1e-3), key
    g2, g1 = (load_checkpoint(d / "checkpoint.pt")["guide"] for d in (two, one))
    for key, value in g2.items():
        if not torch.is_tensor(value) or not value.is_floating_point():
            assert torch.equal(value, g1[key]), key  # the same active sets
            continue
        # Adam's step is lr * m / sqrt(v): where the gradient is ~0, float
        # summation order can change a step by up to lr (0.01). Nearly all
        # coordinates agree to float rounding; none by more than lr / 10.
        diff = (value - g1[key]).abs()
        assert diff.max() <= 1e-3 and diff.median() <= 1e-6, key
    # A run killed after epoch 1 under torchrun resumes there to the same end.
    worker = ["ddp_worker.py", str(cut), "--train-stop-after", "1"]
    _run([*TORCHRUN, "--nproc_per_node", "2", *worker])
    assert load_checkpoint(cut / "checkpoint.pt")["epoch"] == 1
    resume = [*cli, "--output-dir", str(cut), "--resume", "--no-progress"]
    _run([*TORCHRUN, "--nproc_per_node", "2", *resume])
    mc = json.loads((cut / "metrics.json").read_text())
    for key in ("test_accuracy_mean_weights", "test_nll_mean_weights"):
        assert mc[key] == pytest.approx(m2[key], abs=1e-6), key
    assert sorted(p.name for p in cut.iterdir()) == sorted(
        p.name for p in two.iterdir()
    )
    assert TINY["epochs"] == 2


def test_compare_under_torchrun_trains_dense_vi_data_parallel_too(tmp_path):
    """Both the dense VI baseline (Pyro's SVI) and SSVI average gradients over
    ranks, so 2 processes give the 1-process models; one group for all runs.
    SGD, because Adam turns float noise in near-zero gradients into lr-sized
    steps on a million dense coordinates (unsynchronised ranks would differ
    by far more: each would fit only half of every batch)."""
    two, one = tmp_path / "two", tmp_path / "one"
    cli = ["-m", "pyro_ssvi", "compare", "--densities", "0.2", *TINY_ARGS]
    cli += ["--optimizer", "sgd", "--lr", "0.1"]
    proc = _run([*TORCHRUN, "--nproc_per_node", "2", *cli, "--output-dir", str(two)])
    _run([sys.executable, *cli, "--output-dir", str(one)])
    assert proc.stdout.count("written:") == 1  # rank 0 reports
    for variant in ("autonormal", "ssvi-d0.2"):
        m2, m1 = (
            json.loads((d / variant / "metrics.json").read_text()) for d in (two, one)
        )
        assert (m2["world_size"], m1["world_size"]) == (2, 1)
        for key in ("test_accuracy_mean_weights", "test_nll_mean_weights"):
            assert m2[key] == pytest.approx(m1[key], rel=1e-5), (variant, key)
    assert (two / "comparison.md").is_file() and (
        two / "density_tradeoff.png"
    ).is_file()
