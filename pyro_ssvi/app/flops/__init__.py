r"""Training and inference FLOPs of SSVI versus dense variational inference.

Theoretical FLOPs in RigL's accounting (Evci et al. 2020, App. H), as
reconstructed in ``docs/ssvi_algorithm.md`` §8: only convolutions and linear
layers count (batch norms, activations, pooling and biases are ignored), one
multiply-accumulate (MAC) is 2 FLOPs, and a padded convolution counts its
padded positions. :func:`layer_costs` measures each layer's MACs with one
forward pass; :func:`flops_report` turns them into training and inference
FLOPs for given densities::

    from pyro_ssvi.app.flops import flops_report, layer_costs
    from pyro_ssvi.app.models import resnet18_cifar

    net = resnet18_cifar(10)
    costs = layer_costs(net, (3, 32, 32))  # 21 layers, 555.42M MACs
    report = flops_report(
        costs, 0.1, num_examples=50_000, epochs=200, batch_size=128,
        dense_layers=net.ssvi_dense_parameters,  # ("conv1.weight",)
    )
    print(report.train_ratio)  # 9.52 (1 / density = 10 without overheads)
    report.to_dict()  # JSON-serialisable, for the run report

With :math:`m_l` the MACs of layer :math:`l` per example and :math:`d_l` its
density (1 for ``dense_layers``), the forward FLOPs per example are

.. math::

    f_D = 2 \sum_l m_l, \qquad f_S = 2 \sum_l \operatorname{round}(d_l m_l)

(each sparse layer keeping at least 1 MAC).

A training step costs :math:`3f` per example (forward, and twice that for the
backward pass), times :math:`c = 2` under the local reparameterisation trick
(``lrt``: a mean and a variance pass). Over :math:`E` epochs of :math:`N`
examples, dense VI costs :math:`c \cdot 3 f_D \cdot E N`. SSVI's first
:math:`T_{end} = \lfloor \text{stop\_fraction} \cdot T \rfloor` of its
:math:`T = E \lceil N / B \rceil` steps, which see :math:`N_{grow}` examples,
also compute a dense gradient for growth once per :math:`\Delta T`
(``update_every``) steps:

.. math::

    F_{SSVI} = c \left( \frac{3 f_S \Delta T + 2 f_S + f_D}{\Delta T + 1}
    N_{grow} + 3 f_S (E N - N_{grow}) \right).

Each step is weighted by the examples it sees (the last batch of an epoch may
be short), so an epoch is exactly :math:`N` examples for both methods.
"""

from ._costs import LayerCost, layer_costs
from ._report import FlopsReport, flops_report

__all__ = ["FlopsReport", "LayerCost", "flops_report", "layer_costs"]
