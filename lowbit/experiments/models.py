"""Small image classifiers the experiments train in FP32 and then quantize.

- `LeNet5`: LeCun et al.'s LeNet-5 for 28×28 MNIST (conv 6@5×5 with padding 2, pool, conv 16@5×5,
  pool, fully connected 120-84-10; ReLU and max pooling in place of the original's scaled tanh
  and subsampling, as in most modern reproductions). 61,706 parameters.
- `FashionCNN`: two 3×3 convolution blocks (16, 32 channels) and a 128-unit hidden layer for
  28×28 Fashion-MNIST. 206,922 parameters; a quarter of the convolution work of the common
  32/64-channel version, so the flagship trains in minutes on two CPU cores.
- `DigitsCNN`: a tiny network for scikit-learn's 8×8 digits (tests and ``--quick`` fallback).

``build_model(name)`` makes one by name; every model maps N×1×H×W float32 images to N×10 logits.

>>> import torch
>>> build_model("lenet5")(torch.zeros(2, 1, 28, 28)).shape
torch.Size([2, 10])
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["LeNet5", "FashionCNN", "DigitsCNN", "MODELS", "build_model", "quantizable_weights"]


class LeNet5(nn.Module):
    """LeNet-5 for 1×28×28 inputs (10 classes)."""

    input_shape = (1, 28, 28)

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 6, 5, padding=2)
        self.conv2 = nn.Conv2d(6, 16, 5)
        self.fc1 = nn.Linear(16 * 5 * 5, 120)
        self.fc2 = nn.Linear(120, 84)
        self.fc3 = nn.Linear(84, num_classes)
        self.pool = nn.MaxPool2d(2)
        self.act = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.act(self.conv1(x)))
        x = self.pool(self.act(self.conv2(x)))
        x = torch.flatten(x, 1)
        x = self.act(self.fc1(x))
        x = self.act(self.fc2(x))
        return self.fc3(x)


class FashionCNN(nn.Module):
    """Two conv blocks (16, 32 channels, 3×3, ReLU, 2×2 max pool) and FC 1568-128-10."""

    input_shape = (1, 28, 28)

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, 3, padding=1)
        self.conv2 = nn.Conv2d(16, 32, 3, padding=1)
        self.fc1 = nn.Linear(32 * 7 * 7, 128)
        self.fc2 = nn.Linear(128, num_classes)
        self.pool = nn.MaxPool2d(2)
        self.act = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.act(self.conv1(x)))
        x = self.pool(self.act(self.conv2(x)))
        x = torch.flatten(x, 1)
        x = self.act(self.fc1(x))
        return self.fc2(x)


class DigitsCNN(nn.Module):
    """A tiny CNN for 1×8×8 digits: conv 16@3×3, pool, conv 32@3×3, pool, FC 128-10."""

    input_shape = (1, 8, 8)

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, 3, padding=1)
        self.conv2 = nn.Conv2d(16, 32, 3, padding=1)
        self.fc1 = nn.Linear(32 * 2 * 2, num_classes)
        self.pool = nn.MaxPool2d(2)
        self.act = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.act(self.conv1(x)))
        x = self.pool(self.act(self.conv2(x)))
        return self.fc1(torch.flatten(x, 1))


MODELS: "dict[str, type[nn.Module]]" = {"lenet5": LeNet5, "fashion-cnn": FashionCNN, "digits-cnn": DigitsCNN}


def build_model(name: str, num_classes: int = 10) -> nn.Module:
    """A freshly initialized model by name (initialize under ``torch.manual_seed`` for repeatability)."""
    try:
        cls = MODELS[name]
    except KeyError:
        raise ValueError(f"unknown model {name!r}; known: {', '.join(MODELS)}") from None
    return cls(num_classes)


def quantizable_weights(model: nn.Module) -> "dict[str, torch.Tensor]":
    """The weight tensors of the model's Conv2d and Linear layers, by parameter name (biases excluded).

    >>> sorted(quantizable_weights(build_model("digits-cnn")))
    ['conv1.weight', 'conv2.weight', 'fc1.weight']
    """
    return {
        f"{name}.weight": module.weight
        for name, module in model.named_modules()
        if isinstance(module, (nn.Conv2d, nn.Linear))
    }
