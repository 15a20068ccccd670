"""Layer-level computations for Bayesian networks: LRT moments, sparse kernels
(and, in :mod:`pyro_ssvi.layers.lazy`, what a layer makes of a lazy weight).

Example::

    from pyro_ssvi.layers import linear_moments, sample_moments
    out = sample_moments(*linear_moments(x, w_mean, w_var))
"""

from .lrt import CONV_FUNCTIONS, JITTER, conv_moments, linear_moments, sample_moments
from .sparse import SparseStructure, sparse_linear

__all__ = [
    "CONV_FUNCTIONS",
    "JITTER",
    "SparseStructure",
    "conv_moments",
    "linear_moments",
    "sample_moments",
    "sparse_linear",
]
