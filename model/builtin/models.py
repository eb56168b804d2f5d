"""The template's example models, named in `arch.type` (yours go in model/model.py and are found first).
`TorchvisionClassifier` (torchvision_model.py) serves torchvision's classifiers."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from model.builtin.activation import Swish

__all__ = ["DigitsCNN", "MLP", "MnistModel"]

_ACTIVATIONS = {"relu": lambda: nn.ReLU(inplace=True), "swish": Swish}


def _check_activation(activation: str) -> None:
    if activation not in _ACTIVATIONS:
        raise ValueError(f"activation must be one of {', '.join(_ACTIVATIONS)}, got {activation!r}.")


def _conv_block(in_channels: int, out_channels: int, batch_norm: bool, activation: str) -> list[nn.Module]:
    norm = nn.BatchNorm2d(out_channels) if batch_norm else nn.Identity()
    return [nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=not batch_norm), norm, _ACTIVATIONS[activation]()]


class DigitsCNN(nn.Module):
    """A small CNN for the bundled 8x8 digits. BatchNorm layers carry running statistics (buffers) that
    checkpoints must save along with the weights; `batch_norm: false` leaves them out. `activation: swish`
    uses the custom autograd Function of model/activation.py instead of ReLU."""

    def __init__(self, num_classes: int = 10, in_channels: int = 1, width: int = 32, dropout: float = 0.2,
                 batch_norm: bool = True, activation: str = "relu"):
        super().__init__()
        _check_activation(activation)
        for key, value in (("num_classes", num_classes), ("in_channels", in_channels), ("width", width)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{key} must be a whole number >= 1, got {value!r}.")
        self.features = nn.Sequential(
            *_conv_block(in_channels, width, batch_norm, activation),
            *_conv_block(width, 2 * width, batch_norm, activation),
            nn.MaxPool2d(2),
            *_conv_block(2 * width, 4 * width, batch_norm, activation),
            nn.AdaptiveAvgPool2d(1),
        )
        self.classifier = nn.Sequential(nn.Flatten(), nn.Dropout(dropout), nn.Linear(4 * width, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


class MLP(nn.Module):
    """A multilayer perceptron for tabular data (TableDataLoader): `in_features` inputs, one linear layer per entry
    of `hidden` followed by `activation` and dropout, and a linear output of `out_features` (1 for one regression
    target, the shape of TableDataLoader's targets)."""

    def __init__(self, in_features: int, hidden: list[int] | tuple[int, ...] = (64, 64), out_features: int = 1,
                 dropout: float = 0.0, activation: str = "relu"):
        super().__init__()
        _check_activation(activation)
        self.in_features = in_features
        layers: list[nn.Module] = []
        sizes = [in_features, *hidden]
        for size_in, size_out in zip(sizes, sizes[1:]):
            layers += [nn.Linear(size_in, size_out), _ACTIVATIONS[activation](), nn.Dropout(dropout)]
        self.layers = nn.Sequential(*layers)
        self.output = nn.Linear(sizes[-1], out_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.in_features:  # else torch's "mat1 and mat2 shapes cannot be multiplied"
            raise ValueError(f"MLP: the data has {x.shape[-1]} feature columns but in_features is {self.in_features}. "
                             "Set the model's in_features to the number of features (TableDataLoader logs them at "
                             "start).")
        return self.output(self.layers(x))


class MnistModel(nn.Module):
    """The classic template's MNIST model (2 conv + 2 linear layers); returns log-probabilities for nll_loss."""

    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 10, kernel_size=5)
        self.conv2 = nn.Conv2d(10, 20, kernel_size=5)
        self.conv2_drop = nn.Dropout2d()
        self.fc1 = nn.Linear(320, 50)
        self.fc2 = nn.Linear(50, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(F.max_pool2d(self.conv1(x), 2))
        x = F.relu(F.max_pool2d(self.conv2_drop(self.conv2(x)), 2))
        x = F.dropout(F.relu(self.fc1(x.flatten(1))), training=self.training)
        return F.log_softmax(self.fc2(x), dim=1)
