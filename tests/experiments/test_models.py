"""Experiment models: forward shapes, parameter counts, which weights get quantized."""

from __future__ import annotations

import pytest
import torch

from lowbit.experiments.models import MODELS, build_model, quantizable_weights


@pytest.mark.parametrize(
    "name, shape, params",
    [("lenet5", (1, 28, 28), 61706), ("fashion-cnn", (1, 28, 28), 206922), ("digits-cnn", (1, 8, 8), 6090)],
)
def test_forward_shape_and_size(name, shape, params):
    model = build_model(name)
    assert model.input_shape == shape
    assert model(torch.zeros(3, *shape)).shape == (3, 10)
    assert sum(p.numel() for p in model.parameters()) == params


def test_lenet5_layers_are_the_classic_ones():
    weights = quantizable_weights(build_model("lenet5"))
    assert {k: tuple(v.shape) for k, v in weights.items()} == {
        "conv1.weight": (6, 1, 5, 5),
        "conv2.weight": (16, 6, 5, 5),
        "fc1.weight": (120, 400),
        "fc2.weight": (84, 120),
        "fc3.weight": (10, 84),
    }


def test_quantizable_weights_are_the_parameters_themselves():
    model = build_model("digits-cnn")
    params = dict(model.named_parameters())
    for name, w in quantizable_weights(model).items():
        assert w is params[name]


def test_seeded_initialization_repeats():
    torch.manual_seed(3)
    a = build_model("lenet5").state_dict()
    torch.manual_seed(3)
    b = build_model("lenet5").state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_unknown_model():
    with pytest.raises(ValueError, match=", ".join(MODELS)):
        build_model("resnet50")
