"""Simulated posit8 training reaches FP32 accuracy (scikit-learn digits, a LeNet-class CNN)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import lowbit as lb

sklearn_datasets = pytest.importorskip("sklearn.datasets")


def _digits() -> "tuple[torch.Tensor, ...]":
    d = sklearn_datasets.load_digits()
    x = torch.tensor(d.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(d.target, dtype=torch.int64)
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
    x, y = x[perm], y[perm]
    return x[:1400], y[:1400], x[1400:], y[1400:]


def _lenet() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(16 * 4 * 4, 64), nn.ReLU(), nn.Linear(64, 10))


def _train(config: "dict | None") -> float:
    xtr, ytr, xte, yte = _digits()
    torch.manual_seed(0)
    model = _lenet()
    if config is not None:
        lb.quantize_(model, config)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(1)
    for _ in range(12):
        perm = torch.randperm(len(ytr), generator=g)
        for i in range(0, len(ytr), 64):
            idx = perm[i:i + 64]
            opt.zero_grad()
            nn.functional.cross_entropy(model(xtr[idx]), ytr[idx]).backward()
            opt.step()
    with torch.no_grad():
        return float((model(xte).argmax(1) == yte).float().mean()) * 100


def test_posit8_weights_inputs_and_gradients_train_to_within_one_point_of_fp32():
    fp32 = _train(None)
    posit8 = _train({"weight": "posit8_es2", "input": "posit8_es2", "grad": "posit8_es2"})
    assert fp32 > 95.0
    assert posit8 >= fp32 - 1.0, (fp32, posit8)


def test_fp8_e4m3fn_forward_with_unscaled_e5m2_gradients_trains():
    acc = _train({"weight": "e4m3fn", "input": "e4m3fn", "grad": "e5m2"})
    assert acc > 90.0
