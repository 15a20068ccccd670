"""Run Pyro's own autoguide tests with ``AutoNormal`` replaced by ``AutoSparseNormal``.

Pyro's test files are not in its wheel, so this needs a checkout of
pyro-ppl/pyro (any commit whose tests match the installed Pyro)::

    python scripts/pyro_autoguide_tests.py ~/src/pyro [--workdir /tmp/pyro-tests]

It copies ``tests/common.py``, ``tests/conftest.py``, Pyro's pytest settings
and ``tests/infer/test_autoguide.py`` into the work directory, writes a second
copy of the test file in which every use of ``AutoNormal`` (not its import)
is ``AutoSparseNormal(model, density=1.0)`` and nothing else changes, runs
both files with ``-W ignore::FutureWarning`` (torch >= 2.10 deprecates
``torch.jit.trace``, and Pyro's ``filterwarnings = error`` turns that into a
failure for every guide alike), and prints the pass counts: over the whole
file, and over the tests parametrised by the guide itself.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
from pathlib import Path

SHIM = '''

from pyro_ssvi import AutoSparseNormal


class AutoSparseNormalD1(AutoSparseNormal):
    """AutoSparseNormal(model, density=1.0), nothing else changed."""

    def __init__(self, model, **kwargs):
        kwargs.setdefault("density", 1.0)
        super().__init__(model, **kwargs)
'''
#: Test ids parametrised by the guide itself (Messenger guides are others).
GUIDE_ID = re.compile(r"(\[|-)AutoNormal(_?[01])?(\]|-)")


def substituted(source: str) -> str:
    """The test file with every use of ``AutoNormal`` after the imports replaced."""
    head, sep, body = source.partition("\nfrom tests.common import")
    if not sep:
        raise SystemExit("unexpected test file: no 'from tests.common import' line")
    body = re.sub(r"\bAutoNormal\b", "AutoSparseNormalD1", body)
    out = head + sep + body
    start = out.index("\nfrom tests.common import")
    end = out.index("\n", start + 1)
    while out[start:end].count("(") > out[start:end].count(")"):
        end = out.index("\n", end + 1)
    return out[:end] + SHIM + out[end:]


def outcomes(workdir: Path, name: str) -> dict[str, str]:
    """``{test id: PASSED | FAILED | ...}`` of one test file."""
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", f"tests/infer/{name}.py", "-q", "-rA",
         "-p", "no:cacheprovider", "-W", "ignore::FutureWarning"],
        cwd=workdir, capture_output=True, text=True,
    )  # fmt: skip
    result = {}
    for line in proc.stdout.splitlines():
        parts = line.split(" ", 1)
        if parts[0] in ("PASSED", "FAILED", "XFAIL", "XPASS") and len(parts) == 2:
            test = parts[1].split(" - ")[0].split("::", 1)[-1]
            result[test.replace("AutoSparseNormalD1", "AutoNormal")] = parts[0]
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("pyro_checkout", type=Path)
    parser.add_argument("--workdir", type=Path, default=Path("pyro-autoguide-tests"))
    args = parser.parse_args(argv)
    src, work = args.pyro_checkout / "tests", args.workdir
    (work / "tests" / "infer").mkdir(parents=True, exist_ok=True)
    for rel in ("common.py", "conftest.py"):
        shutil.copyfile(src / rel, work / "tests" / rel)
    for pkg in ("tests", "tests/infer"):
        (work / pkg / "__init__.py").touch()
    cfg = (args.pyro_checkout / "setup.cfg").read_text()
    pytest_cfg = cfg[cfg.index("[tool:pytest]") :]
    pytest_cfg = pytest_cfg[: pytest_cfg.index("\n[", 1) + 1]
    (work / "setup.cfg").write_text(pytest_cfg)
    source = (src / "infer" / "test_autoguide.py").read_text()
    (work / "tests" / "infer" / "test_autoguide.py").write_text(source)
    (work / "tests" / "infer" / "test_autoguide_sparse.py").write_text(
        substituted(source)
    )
    for label, name in (
        ("AutoNormal (Pyro's file)", "test_autoguide"),
        ("AutoSparseNormal(density=1.0)", "test_autoguide_sparse"),
    ):
        res = outcomes(work, name)
        own = {k: v for k, v in res.items() if GUIDE_ID.search(k)}
        passed = sum(v == "PASSED" for v in res.values())
        ran = sum(v in ("PASSED", "FAILED") for v in res.values())
        own_passed = sum(v == "PASSED" for v in own.values())
        own_ran = sum(v in ("PASSED", "FAILED") for v in own.values())
        print(
            f"{label}: {passed}/{ran} tests of the file pass; "
            f"{own_passed}/{own_ran} of those parametrised by the guide"
        )
        failed = sorted(k for k, v in own.items() if v == "FAILED")
        if failed:
            print("  failing:", ", ".join(failed))
    return 0


if __name__ == "__main__":
    sys.exit(main())
