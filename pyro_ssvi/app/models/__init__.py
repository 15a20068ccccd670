"""Bayesian versions of ordinary torch networks, ready for ``AutoSparseNormal``.

:func:`make_bayesian` turns any ``nn.Module`` into a :class:`~pyro.nn.PyroModule`
whose linear and convolution weights carry ``Normal(0, prior_scale)`` priors;
:class:`BayesianClassifier` adds a categorical likelihood scaled to the data
set size (:class:`BayesianRegressor` a Gaussian one), and remembers the
network's own initial weights for the guide::

    model = BayesianClassifier(mlp(64, [100], 10), num_data=len(x_train))
    guide = AutoSparseNormal(model, density=0.1, init_loc_fn=model.init_loc_fn())
"""

from __future__ import annotations

from ._bayesian import (
    DENSE_PARAMETERS_ATTR,
    DETERMINISTIC_PARAMETERS_ATTR,
    make_bayesian,
)
from ._likelihoods import BayesianClassifier, BayesianRegressor
from ._networks import lenet, mlp, resnet18_cifar

__all__ = [
    "BayesianClassifier",
    "BayesianRegressor",
    "DENSE_PARAMETERS_ATTR",
    "DETERMINISTIC_PARAMETERS_ATTR",
    "lenet",
    "make_bayesian",
    "mlp",
    "resnet18_cifar",
]
