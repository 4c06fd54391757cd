"""The PTQ bar on real data: per-channel int8 post-training quantization of a trained LeNet-5.

Weights int8 with one absmax scale per output channel, every layer's input int8 with one range
fixed by calibration on 2048 training images; accuracy on the full 10k MNIST test set must stay
within 0.5 points of FP32. Trains its own model (2 epochs on one thread, the share of a core each `make test` worker has)
so the check never depends on a cache.
"""

from __future__ import annotations

import copy

import pytest

import lowbit as lb
from lowbit.experiments import data as datasets
from lowbit.experiments.train import TrainConfig, evaluate, train

PER_CHANNEL_INT8 = {"weight": {"format": "int8", "scaling": "absmax", "granularity": "channel"},
                    "input": {"format": "int8", "scaling": "static"}}


@pytest.fixture(scope="module")
def mnist_lenet():
    try:
        ds = datasets.load_mnist()
    except datasets.DataUnavailableError:
        pytest.skip(f"MNIST not installed here (`{datasets.MNIST_INSTALL}`; `make test` installs it)")
    trained = train(TrainConfig("lenet5", "mnist", seed=0, epochs=2, threads=1), ds, cache=False)
    model = trained.model
    return model, ds, evaluate(model, ds.test_images, ds.test_labels)


def _accuracy(model, ds, config):
    return evaluate(lb.quantize_(copy.deepcopy(model), config), ds.test_images, ds.test_labels)


def test_the_float_model_is_really_trained(mnist_lenet):
    assert mnist_lenet[2] >= 0.985


@pytest.mark.parametrize("observer", ["minmax", "percentile", "mse", "kl"])
def test_per_channel_int8_ptq_loses_under_half_a_point(mnist_lenet, observer):
    model, ds, fp32 = mnist_lenet
    calibration_batches = [ds.train_images[i:i + 256] for i in range(0, 2048, 256)]
    cfg = lb.calibrate_config(model, PER_CHANNEL_INT8, calibration_batches, observer=observer)
    assert len(cfg.layers) == 5  # every conv / linear layer has its own calibrated input range
    acc = _accuracy(model, ds, cfg)
    assert fp32 - acc < 0.005, (observer, fp32, acc)


def test_weights_only_per_channel_int8_loses_under_a_tenth_of_a_point(mnist_lenet):
    model, ds, fp32 = mnist_lenet
    acc = _accuracy(model, ds, {"weight": PER_CHANNEL_INT8["weight"]})
    assert fp32 - acc < 0.001, (fp32, acc)
