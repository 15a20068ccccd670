"""Worker for tests/test_distributed.py (not a test module).

``torchrun --standalone --nproc_per_node 2 tests/ddp_worker.py OUT`` trains a
small Bayesian classifier with SparseSVI under DistributedDataParallel (gloo,
loopback), each rank on its half of every global batch, and saves each rank's
final state to ``OUT/rank<r>.pt``; ``python tests/ddp_worker.py OUT --single``
runs the same training in one process on the whole batches. ``--mismatch``
seeds the ranks differently and adds coordinates at random, which must fail.
``ddp_worker.py OUT --train-stop-after 1`` runs the CLI's training (tiny
embedded MNIST) and stops after that epoch, as if killed.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pyro
import torch
from common import TINY_TRAINING, classification_data, tiny_classifier

from pyro_ssvi import AutoSparseNormal, SparseSVI
from pyro_ssvi.distributed import init_from_env, rank, shard, shutdown

STEPS, BATCH, N = 12, 32, 64


TINY = dict(TINY_TRAINING, epochs=2, device="cpu")


def main(out: Path, single: bool, mismatch: bool) -> None:
    if not single:
        init_from_env("cpu")
    pyro.settings.set(module_local_params=True)
    pyro.set_rng_seed(rank() if mismatch else 0)
    x, y = classification_data(n=N)
    model = tiny_classifier(num_data=N)
    guide = AutoSparseNormal(model, density=0.4)
    guide.setup(x[:2], y[:2])
    svi = SparseSVI(
        model,
        guide,
        pyro.optim.Adam({"lr": 0.05}),
        update_every=2,
        drop_fraction=0.5,
        drop_schedule="constant",
        addition="random" if mismatch else "grad",
    )
    losses = []
    for step in range(STEPS):
        batch = torch.arange(step * BATCH, (step + 1) * BATCH) % N
        xb, yb = x[batch], y[batch]
        if not single:
            xb, yb = shard(xb), shard(yb)
        losses.append(svi.step(xb, yb))
    state = {
        "params": {n: p.detach().clone() for n, p in guide.named_parameters()},
        "indices": guide.active_indices(),
        "updates": [u.num_swapped for u in svi.updates],
        "losses": losses,
        "fast_path": svi.elbo.fast_path(model, guide, xb, yb) is not None,
    }
    torch.save(state, out / ("single.pt" if single else f"rank{rank()}.pt"))
    shutdown()


if __name__ == "__main__":
    if "--train-stop-after" in sys.argv:
        from pyro_ssvi.app.training import TrainConfig, train

        stop = int(sys.argv[sys.argv.index("--train-stop-after") + 1])
        train(TrainConfig(**TINY), sys.argv[1], progress=False, stop_after_epoch=stop)
    else:
        main(Path(sys.argv[1]), "--single" in sys.argv, "--mismatch" in sys.argv)
