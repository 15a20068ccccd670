"""The layout's promises, checked on a running step.

One ``SparseSVI.step`` (with a subspace update) passes through the library's
modules top-down: the graph of calls between them has no cycle, so no module
is re-entered from one it called. And the library never calls into the
application (``pyro_ssvi.app``) except through the user's model.
"""

from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path

import pyro
import pytest
import torch
from common import classification_data, tiny_classifier
from pyro.infer import Trace_ELBO, TraceMeanField_ELBO

import pyro_ssvi
from pyro_ssvi import AutoSparseNormal, SparseSVI


def _module_calls(step) -> Counter:
    """``{(caller module, callee module): count}`` between library modules."""
    edges: Counter = Counter()

    def profile(frame, event, arg):
        if event != "call" or frame.f_back is None:
            return
        callee = frame.f_globals.get("__name__", "")
        caller = frame.f_back.f_globals.get("__name__", "")
        if callee != caller and all(
            m.startswith("pyro_ssvi") and not m.startswith("pyro_ssvi.app")
            for m in (caller, callee)
        ):
            edges[(caller, callee)] += 1

    sys.setprofile(profile)
    try:
        step()
    finally:
        sys.setprofile(None)
    return edges


def _cycle(edges) -> list[str] | None:
    """A cycle of the directed graph ``edges`` (depth-first search), or None."""
    graph: dict[str, set[str]] = {}
    for a, b in edges:
        graph.setdefault(a, set()).add(b)
    state: dict[str, int] = {}
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt) :] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        state[node] = 2
        path.pop()
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_cycle_finder_finds_a_cycle():
    assert _cycle({("a", "b"), ("b", "c"), ("c", "a")}) == ["a", "b", "c", "a"]
    assert _cycle({("a", "b"), ("a", "c"), ("b", "c")}) is None


@pytest.mark.parametrize(
    "loss, lrt",
    [
        (None, False),
        (None, True),
        (Trace_ELBO(), False),
        (TraceMeanField_ELBO(), False),
    ],
)
def test_a_step_with_an_update_calls_modules_top_down(loss, lrt):
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    x, y = classification_data()
    model = tiny_classifier()
    guide = AutoSparseNormal(model, density=0.5)
    optim = pyro.optim.Adam({"lr": 1e-2})
    args = (model, guide, optim) if loss is None else (model, guide, optim, loss)
    svi = SparseSVI(*args, update_every=2, local_reparameterization=lrt)
    svi.step(x, y)  # first use: set-up, the path's choice and its log line
    before = guide.active_indices()
    edges = _module_calls(lambda: svi.step(x, y))  # step 2 updates the subspace
    assert svi.subspace.num_updates == 1
    assert any(not torch.equal(before[k], v) for k, v in guide.active_indices().items())
    assert ("pyro_ssvi.svi", "pyro_ssvi.reselection") in edges
    assert _cycle(edges) is None, _cycle(edges)
    assert not any(a != "pyro_ssvi.svi" and b == "pyro_ssvi.svi" for a, b in edges)


def test_no_module_is_over_400_lines():
    """Each module does one thing: none in the package is over 400 lines."""
    package = Path(pyro_ssvi.__file__).parent
    lengths = {
        str(path.relative_to(package)): len(path.read_text().splitlines())
        for path in package.rglob("*.py")
    }
    assert len(lengths) > 50  # the library and the application
    assert {k: n for k, n in lengths.items() if n > 400} == {}
