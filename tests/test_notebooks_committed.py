"""Every committed notebook carries the outputs of a full run.

Readers see the committed files (on a code host, and rendered by the
documentation, which never executes them), so a notebook committed without
outputs shows only code. Each notebook in ``notebooks/`` must have every code
cell executed, no error output, at least one figure (an ``image/png``
output), and stay small enough to read and diff (about 1 MB).

CI executes the notebooks in smoke mode (``nbmake``) without writing them
back, so this test reads the files as committed.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("*.ipynb"))
#: "About 1 MB" per notebook, with some slack for a figure more.
MAX_BYTES = 1_500_000


def _code_cells(path: Path) -> list[dict]:
    notebook = json.loads(path.read_text())
    return [
        c
        for c in notebook["cells"]
        if c["cell_type"] == "code" and "".join(c["source"]).strip()
    ]


def test_there_are_notebooks():
    assert len(NOTEBOOKS) >= 7, [p.name for p in NOTEBOOKS]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_is_committed_with_its_outputs_and_a_figure(path):
    cells = _code_cells(path)
    not_run = [i for i, c in enumerate(cells) if c.get("execution_count") is None]
    assert not not_run, (
        f"{path.name}: code cells {not_run} were not executed; run the notebook "
        "in full and commit it with its outputs"
    )
    outputs = [o for c in cells for o in c.get("outputs", [])]
    assert outputs, f"{path.name} has no outputs; commit it after a full run"
    errors = [o.get("ename") for o in outputs if o["output_type"] == "error"]
    assert not errors, f"{path.name} was committed with errors: {errors}"
    figures = [o for o in outputs if "image/png" in o.get("data", {})]
    assert figures, f"{path.name} shows no figure (no image/png output)"
    size = path.stat().st_size
    assert size <= MAX_BYTES, f"{path.name} is {size:,} bytes (at most {MAX_BYTES:,})"
