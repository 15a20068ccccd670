"""The documentation: it builds with warnings as errors, documents every
public name, and the README stays short with working links into it."""

from __future__ import annotations

import importlib
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
sys.path.insert(0, str(DOCS / "_ext"))

import ssvi_docs  # noqa: E402


def test_every_public_module_has_an_api_page():
    pages = {p.stem for p in (DOCS / "api").glob("*.rst")}
    assert pages == set(ssvi_docs.public_modules())
    for module in pages:
        text = (DOCS / "api" / f"{module}.rst").read_text()
        assert f".. ssvi-api:: {module}\n" in text


def test_every_public_name_is_described_once_where_it_is_defined():
    homes = ssvi_docs.homes()
    for module in ssvi_docs.public_modules():
        for name in importlib.import_module(module).__all__:
            home = homes[(module, name)]
            assert name in importlib.import_module(home).__all__
            assert homes[(home, name)] == home
    # Re-exports are described where they are defined.
    assert homes[("pyro_ssvi", "AutoSparseNormal")] == "pyro_ssvi.guides"
    assert homes[("pyro_ssvi.layers", "JITTER")] == "pyro_ssvi.layers.lrt"
    assert homes[("pyro_ssvi", "__version__")] == "pyro_ssvi"


def test_an_undocumented_public_name_is_reported(tmp_path, monkeypatch):
    """The check behind the build's warning: a function without docstring and
    a constant without ``#:`` comment are reported, documented ones not."""
    (tmp_path / "docs_probe.py").write_text(textwrap.dedent('''\
            """A module with documented and undocumented public names."""
            __all__ = ["LIMIT", "SIZE", "f", "g"]
            #: A documented constant.
            LIMIT = 3
            SIZE = 4


            def f():
                """Documented."""


            def g():
                pass
            '''))
    monkeypatch.syspath_prepend(str(tmp_path))
    assert ssvi_docs.undocumented("docs_probe") == ["SIZE", "g"]
    assert ssvi_docs.undocumented("pyro_ssvi.guides") == []


def test_every_public_name_is_documented():
    """What the build reports as a warning, without the build."""
    missing = {m: ssvi_docs.undocumented(m) for m in ssvi_docs.public_modules()}
    assert {m: names for m, names in missing.items() if names} == {}


def test_cli_page_is_the_parsers_help():
    text = ssvi_docs.cli_help("train")
    assert text.startswith("usage: pyro-ssvi train")
    assert "--density DENSITY" in text


def test_readme_is_short_and_its_links_resolve():
    text = (ROOT / "README.md").read_text()
    assert text.count("\n") <= 250
    links = re.findall(r"\]\(((?:docs|notebooks)/[^)#]*)(?:#[^)]*)?\)", text)
    assert len(links) >= 10
    for link in links:
        assert (ROOT / link).exists(), f"README links to a missing file: {link}"


@pytest.mark.slow
def test_docs_build_with_warnings_as_errors(tmp_path):
    """``sphinx -W`` (about 35 s on 2 cores): every public name appears, as
    an anchor on the page of the module that describes it."""
    out = tmp_path / "html"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "sphinx",
            "-W",
            "--keep-going",
            "-q",
            "-b",
            "html",
            "-d",
            str(tmp_path / "doctrees"),
            str(DOCS),
            str(out),
        ],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr[-5000:]
    homes = ssvi_docs.homes()
    for (module, name), home in homes.items():
        page = (out / "api" / f"{home}.html").read_text()
        assert f'id="{home}.{name}"' in page, f"{home}.{name} missing"
    for notebook in (ROOT / "notebooks").glob("*.ipynb"):
        assert (out / "notebooks" / f"{notebook.stem}.html").exists()
