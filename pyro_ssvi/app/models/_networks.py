"""The experiments' networks in plain torch: MLP, LeNet-5, CIFAR ResNet-18."""

from __future__ import annotations

from typing import Sequence

from torch import nn

from ._bayesian import DENSE_PARAMETERS_ATTR, DETERMINISTIC_PARAMETERS_ATTR


def mlp(
    in_features: int, hidden: Sequence[int], out_features: int, *, flatten: bool = True
) -> nn.Sequential:
    """A ReLU multilayer perceptron ``in -> hidden... -> out`` (plain torch)."""
    sizes = [in_features, *hidden, out_features]
    layers: list[nn.Module] = [nn.Flatten()] if flatten else []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


def lenet(
    in_channels: int = 1, num_classes: int = 10, input_size: int = 28
) -> nn.Sequential:
    """A LeNet-5 style CNN (plain torch): two 5x5 convs with max-pooling, 3 FCs.

    ``conv(in, 6, 5, pad 2) -> pool -> conv(6, 16, 5) -> pool -> 120 -> 84 ->
    num_classes`` with ReLUs. The first convolution (150 weights for MNIST) is
    marked to stay dense under SSVI, as the reference keeps its stem dense.

    Args:
        in_channels: Input channels (1 for MNIST, 3 for CIFAR).
        num_classes: Number of output logits.
        input_size: Height and width of the (square) input, at least 8.

    Returns:
        The network; ``net.ssvi_dense_parameters == ("0.weight",)``.
    """
    if input_size < 8:
        raise ValueError(f"lenet: input_size must be >= 8, got {input_size}.")
    side = ((input_size // 2) - 4) // 2
    net = nn.Sequential(
        nn.Conv2d(in_channels, 6, 5, padding=2),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(6, 16, 5),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(16 * side * side, 120),
        nn.ReLU(),
        nn.Linear(120, 84),
        nn.ReLU(),
        nn.Linear(84, num_classes),
    )
    setattr(net, DENSE_PARAMETERS_ATTR, ("0.weight",))
    return net


def resnet18_cifar(
    num_classes: int = 10, *, bayesian_fc_bias: bool = False
) -> nn.Module:
    """The CIFAR variant of ResNet-18 used by the SSVI paper (plain torch).

    Built from :func:`torchvision.models.resnet18` with a 3x3 stride-1 stem and
    no max-pooling (11.17M conv and linear weights for 10 classes); the stem
    convolution is marked to stay dense under SSVI, as in the reference
    implementation. Batch norms stay deterministic under
    :func:`make_bayesian`'s defaults, as in the reference, and so does the
    classifier bias (marked in ``ssvi_deterministic_parameters``): the
    reference's ``StoLinear`` bias is a point estimate with weight decay. The
    Bayesian weights are then exactly the reference's 21 conv and linear
    weight tensors.

    Args:
        num_classes: Number of output logits.
        bayesian_fc_bias: Give the classifier bias a prior (and a KL term)
            like every other bias under :func:`make_bayesian`.

    Returns:
        The network; ``net.ssvi_dense_parameters == ("conv1.weight",)`` and
        ``net.ssvi_deterministic_parameters == ("fc.bias",)`` (``()`` with
        ``bayesian_fc_bias=True``).
    """
    from torchvision.models import resnet18

    net = resnet18(num_classes=num_classes)
    net.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
    nn.init.kaiming_normal_(net.conv1.weight, mode="fan_out", nonlinearity="relu")
    net.maxpool = nn.Identity()  # type: ignore[assignment]
    setattr(net, DENSE_PARAMETERS_ATTR, ("conv1.weight",))
    deterministic = () if bayesian_fc_bias else ("fc.bias",)
    setattr(net, DETERMINISTIC_PARAMETERS_ATTR, deterministic)
    return net
