"""PNG figures of training runs, calibration, OOD detection, regression and sparsity.

Every function draws on its own :class:`matplotlib.figure.Figure` with the
Agg canvas (pyplot and the global backend are never touched), writes the PNG
atomically (a temporary file in the target directory, then
:func:`os.replace`) and returns the figure, whose artists hold exactly the
data drawn (tests read them back). Every calibration error says whether it
comes from Monte Carlo predictions or from the mean weights. matplotlib is
imported only when a function is called::

    from pyro_ssvi.app import plots

    plots.plot_reliability(pred.probs, pred.labels, "runs/reliability.png")
    fig = plots.plot_training_curves(history, "runs/curves.png")
    fig.axes[0].lines[0].get_ydata()   # the training losses
"""

from __future__ import annotations

from ._classification import plot_ood_entropy, plot_reliability
from ._comparison import METRIC_LABELS, plot_density_tradeoff  # noqa: F401
from ._figure import DPI  # noqa: F401 (constants, as before)
from ._regression import plot_predictions, plot_regression_calibration
from ._sparsity import plot_layer_density, plot_swap_fraction
from ._training import TRAINING_CURVES, plot_training_curves  # noqa: F401

__all__ = [
    "plot_density_tradeoff",
    "plot_layer_density",
    "plot_ood_entropy",
    "plot_predictions",
    "plot_regression_calibration",
    "plot_reliability",
    "plot_swap_fraction",
    "plot_training_curves",
]
