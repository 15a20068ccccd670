"""The release: a wheel and an sdist that ``twine check`` accepts, and a
wheel that, installed into a fresh virtual environment outside the checkout,
runs ``pyro-ssvi train`` on the data embedded in it."""

from __future__ import annotations

import os
import re
import site
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

import pyro_ssvi

ROOT = Path(__file__).resolve().parents[1]
EMBEDDED = sorted(p.name for p in (ROOT / "pyro_ssvi" / "app" / "data").glob("*.npz"))


def _run(argv: list, **kwargs) -> subprocess.CompletedProcess:
    result = subprocess.run(
        [str(a) for a in argv], capture_output=True, text=True, **kwargs
    )
    assert result.returncode == 0, (argv, result.stdout[-3000:], result.stderr[-3000:])
    return result


def _clean_env() -> dict:
    """This environment without the checkout on the path."""
    env = {
        k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")
    }
    env["MPLBACKEND"] = "Agg"
    return env


def test_the_version_is_a_release_with_its_changelog_entry():
    """``pyro_ssvi.__version__`` is a final release (no ``.dev``, ``a``, ``b``
    or ``rc``) and the newest dated section of CHANGELOG.md is its entry."""
    version = pyro_ssvi.__version__
    assert re.fullmatch(r"\d+\.\d+\.\d+", version), version
    changelog = (ROOT / "CHANGELOG.md").read_text()
    releases = re.findall(r"^## \[([^\]]+)\] - (\d{4}-\d\d-\d\d)$", changelog, re.M)
    assert releases and releases[0][0] == version, releases[:1]


@pytest.mark.slow
def test_wheel_and_sdist_install_into_a_fresh_venv_and_train(tmp_path):
    """About a minute: build, check, install the wheel with its ``[app]``
    extra into a fresh venv outside the checkout (its requirements resolved
    against this environment's packages, see below), and one epoch of a
    small MLP on the embedded MNIST with the installed command."""
    assert EMBEDDED == ["fashion_mnist_test.npz", "mnist_test.npz", "mnist_train.npz"]
    dist = tmp_path / "dist"
    _run([sys.executable, "-m", "build", "--outdir", dist, ROOT])
    version = pyro_ssvi.__version__
    wheel = dist / f"pyro_ssvi-{version}-py3-none-any.whl"
    sdist = dist / f"pyro_ssvi-{version}.tar.gz"
    assert sorted(p.name for p in dist.iterdir()) == sorted([wheel.name, sdist.name])
    _run([sys.executable, "-m", "twine", "check", "--strict", wheel, sdist])

    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
    for name in EMBEDDED:
        assert f"pyro_ssvi/app/data/{name}" in names
    assert "pyro_ssvi/py.typed" in names
    assert "pyro_ssvi/app/data/README.md" in names
    assert not any(n.startswith(("tests/", "docs/", "benchmarks/")) for n in names)
    with tarfile.open(sdist) as tf:
        members = set(tf.getnames())
    prefix = f"pyro_ssvi-{version}/"
    for name in EMBEDDED:
        assert f"{prefix}pyro_ssvi/app/data/{name}" in members

    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", venv])  # no system site packages
    python = venv / "bin" / "python"
    env = _clean_env()
    # The fresh venv sees this environment's packages (torch, Pyro, ...) by a
    # plain path line, so pip resolves the wheel's requirements against them
    # instead of downloading torch again. The checkout's editable pyro_ssvi
    # stays invisible: a path line does not run that directory's .pth hooks.
    purelib = _run(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        env=env,
    ).stdout.strip()
    Path(purelib, "_host_packages.pth").write_text("\n".join(site.getsitepackages()))
    _run(
        [python, "-m", "pip", "install", "--quiet", "--no-build-isolation"]
        + [f"{wheel}[app]"],
        env=env,
        cwd=tmp_path,
    )

    where = _run(
        [python, "-c", "import pyro_ssvi; print(pyro_ssvi.__file__)"],
        env=env,
        cwd=tmp_path,
    ).stdout.strip()
    assert Path(where).is_relative_to(venv), where
    out = tmp_path / "run"
    _run(
        [
            venv / "bin" / "pyro-ssvi",
            "train",
            "--epochs",
            "1",
            "--threads",
            "1",
            "--hidden",
            "32",
            "--train-limit",
            "512",
            "--test-limit",
            "256",
            "--num-samples",
            "2",
            "--no-progress",
            "--output-dir",
            out,
        ],
        env=env,
        cwd=tmp_path,
    )
    assert (out / "metrics.json").exists()
    assert (out / "checkpoint.pt").exists()
