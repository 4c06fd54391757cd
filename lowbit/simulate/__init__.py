"""Simulated low-precision training and inference: straight-through fake quantization."""

from lowbit.simulate.fake_quant import Quantizer, fake_quantize

__all__ = ["fake_quantize", "Quantizer"]
