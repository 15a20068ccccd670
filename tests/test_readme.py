"""The README's Python example and the user guide's examples run as written.

The fenced Python block of the README's "Usage in Python" (the drop-in
example, which ``docs/guide/python.md`` includes from the README) and the
blocks of the guide's sections "Your own optimiser loop", "Starting from a
pretrained network", "Saving and loading" and "Mixing sparse and dense parts"
are run, in that order, in one namespace (as a reader pasting them would),
with two edits that make it a smoke run: one epoch instead of five, and the
first 256 training images (``load_dataset``'s documented ``limit=``, which the
README's comment names). Each edit must match exactly once, so the examples
cannot drift from what runs here. The claims the README and the guide make
beside the code are checked on the objects the examples built.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Iterator

import pytest
import torch

from pyro_ssvi.elbo import TraceSparseMeanField_ELBO

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
GUIDE = ROOT / "docs" / "guide" / "python.md"
GUIDE_SECTIONS = (
    "Your own optimiser loop",
    "Starting from a pretrained network",
    "Saving and loading",
    "Mixing sparse and dense parts",
)
SMOKE = {
    'load_dataset("mnist", "train")': 'load_dataset("mnist", "train", limit=256)',
    "num_epochs = 5": "num_epochs = 1",
}


def _python_blocks(path: Path, title: str) -> list[str]:
    text = path.read_text()
    section = text.split(f"\n## {title}\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"^```python\n(.*?)^```$", section, re.M | re.S)


def _example_blocks() -> list[str]:
    """The README's drop-in example, then one block per guide section."""
    blocks = _python_blocks(README, "Usage in Python")
    assert len(blocks) == 1  # the drop-in example
    for title in GUIDE_SECTIONS:
        found = _python_blocks(GUIDE, title)
        assert len(found) == 1, f"docs/guide/python.md, {title}: {len(found)} blocks"
        blocks += found
    return blocks


def _run(blocks: list[str]) -> Iterator[dict]:
    """Run the blocks in one namespace, yielding it after each block.

    The caller checks each block's results before the next block runs (a
    later block builds new guides of the same names in Pyro's param store,
    which is what a reader pasting the blocks would have).
    """
    joined = "\n".join(blocks)
    for old in SMOKE:
        assert joined.count(old) == 1, f"the examples changed: {old!r}"
    ns: dict = {"__name__": "readme"}
    for i, block in enumerate(blocks, 1):
        for old, new in SMOKE.items():
            block = block.replace(old, new)
        where = (
            "README.md, Usage in Python"
            if i == 1
            else f"docs/guide/python.md, {GUIDE_SECTIONS[i - 2]}"
        )
        exec(compile(block, where, "exec"), ns)
        yield ns


def test_usage_in_python_runs_as_written(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the example saves guide.pt and params.pt here
    blocks = _example_blocks()
    assert len(blocks) == 5  # quick start, own loop, pretrained, saving, mixing
    run = _run(blocks)
    quick = next(run)
    guide, model, x, y = quick["guide"], quick["model"], quick["x"], quick["y"]
    assert len(quick["train_set"]) == 256 and quick["num_epochs"] == 1
    # The comments' values: 10% of each weight tensor, zeros off the active set.
    assert guide.num_active()["net.1.weight"] == 31360 and guide.density == 0.1
    median = guide.median()
    for name, idx in guide.active_indices().items():
        off = torch.ones(median[name].numel(), dtype=torch.bool)
        off[idx] = False
        assert torch.all(median[name].flatten()[off] == 0)
    # The loss scale: 477,600 weights; the inactive ones add (n - k) log(2 pi)/2
    # = 3.9e5, the active ones about 4.1 each (scale 0.01 against N(0, 1)).
    sizes = {n: guide.site_shape(n).numel() for n in guide.sparse_site_names()}
    assert sum(sizes.values()) == 477_600
    k = sum(guide.num_active().values())
    constant = (477_600 - k) * 0.5 * math.log(2 * math.pi)
    assert round(constant, -4) == 3.9e5
    with torch.no_grad():
        active_kl = sum(
            torch.distributions.kl_divergence(
                torch.distributions.Normal(post.loc, post.scale),
                torch.distributions.Normal(0.0, 1.0),
            ).sum()
            for post in map(guide.site_posterior, guide.sparse_site_names())
        )
    assert 4.0 < float(active_kl) / k < 4.2
    # svi.step's loss is the negative ELBO of the whole training set: the
    # closed-form ELBO on the same batch agrees up to the Monte Carlo noise of
    # Trace_ELBO's log q - log p, variance 1/2 per sampled coordinate (its
    # -eps^2/2 term), so within 5 standard deviations, 5 * sqrt(num_sampled / 2).
    sampled = k + sum(v.numel() for n, v in median.items() if n not in sizes)
    with torch.no_grad():
        estimate = quick["svi"].evaluate_loss(x, y)
        exact = TraceSparseMeanField_ELBO().loss(model, guide, x, y)
    assert estimate == pytest.approx(exact, abs=5 * math.sqrt(sampled / 2))
    assert exact > constant + float(active_kl)

    next(run), next(run)  # your own optimiser loop; a pretrained network
    # Saving and loading: the new guide holds the saved active sets.
    saving = next(run)
    saved = torch.load("guide.pt", weights_only=True)
    reloaded = saving["guide"].active_indices()
    assert len(reloaded) == 3
    for name, idx in reloaded.items():
        assert torch.equal(idx, saved[f"indices.{name}_unconstrained"].long())
    # Mixing: weights from the sparse part, biases from AutoDelta.
    mixing = next(run)
    samples = mixing["guide"](mixing["x0"], mixing["y0"])
    assert set(samples) == set(median)  # every latent site of the same MLP
