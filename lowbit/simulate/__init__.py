"""Simulated low-precision training and inference: straight-through fake quantization, posit activations."""

from lowbit.simulate.activations import PositSigmoid, PositTanh, posit_sigmoid, posit_tanh, sigmoid_codes
from lowbit.simulate.fake_quant import Quantizer, fake_quantize

__all__ = ["fake_quantize", "Quantizer", "posit_sigmoid", "posit_tanh", "PositSigmoid", "PositTanh", "sigmoid_codes"]
