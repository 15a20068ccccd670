"""pyro_ssvi: Sparse Subspace Variational Inference for Bayesian networks in Pyro.

Swap :class:`~pyro.infer.autoguide.AutoNormal` for :class:`AutoSparseNormal`
and :class:`~pyro.infer.SVI` for :class:`SparseSVI`::

    from pyro_ssvi import AutoSparseNormal, SparseSVI

    guide = AutoSparseNormal(model, density=0.1)
    svi = SparseSVI(model, guide, pyro.optim.Adam({"lr": 1e-3}), Trace_ELBO())
    for step in range(5000):
        svi.step(x, y)

With your own optimiser loop (e.g. ``torch.optim`` over Pyro's ``ELBOModule``
parameters), step a :class:`SubspaceScheduler` after each optimiser step.

The posterior of every weight tensor lives on a fixed-size set of active
coordinates that is reselected during training (Li, Miao, Qiu, Zhang,
*Training Bayesian Neural Networks with Sparse Subspace Variational
Inference*, ICLR 2024).
"""

from . import kl  # noqa: F401 (registers kl_divergence(SparseNormal, ...))
from ._version import __version__
from .criteria import CRITERIA
from .distributions import SparseNormal
from .elbo import TraceSparseMeanField_ELBO
from .guides import AutoSparseNormal
from .initialization import init_to_kaiming
from .reselection import SubspaceScheduler, SubspaceUpdate
from .schedules import SCHEDULES
from .svi import ADDITIONS, SparseSVI

__all__ = [
    "ADDITIONS",
    "AutoSparseNormal",
    "CRITERIA",
    "SCHEDULES",
    "SparseNormal",
    "SparseSVI",
    "SubspaceScheduler",
    "SubspaceUpdate",
    "TraceSparseMeanField_ELBO",
    "__version__",
    "init_to_kaiming",
]
