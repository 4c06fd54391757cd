"""Layers and formats shared by the packed-layer tests (test_decode, test_packed_layers, test_pack)."""

from __future__ import annotations

import torch
from torch import nn

from lowbit.storage import (
    PackedConv1d,
    PackedConv2d,
    PackedConvTranspose2d,
    PackedEmbedding,
    PackedLayerMixin,
    PackedLinear,
)

FORMATS = ["posit8_es2", "e4m3fn", "int4", "mxfp4_e2m1fn", "codebook4", "ternary"]
MORE_FORMATS = ["posit6_es1", "e3m2fn", "binary", "mxint8", "posit16_es1", "bf16", "fp32", "int2", "codebook2"]


def make_layer(kind: str) -> "tuple[nn.Module, torch.Tensor, type]":
    g = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    if kind == "linear":
        return nn.Linear(40, 24), torch.randn(3, 40, generator=g), PackedLinear
    if kind == "conv1d":
        return nn.Conv1d(6, 8, 3, padding=1), torch.randn(2, 6, 17, generator=g), PackedConv1d
    if kind == "conv2d":
        return nn.Conv2d(4, 8, 3, stride=2, padding=1), torch.randn(2, 4, 9, 9, generator=g), PackedConv2d
    if kind == "depthwise":
        return nn.Conv2d(8, 8, 3, groups=8, bias=False), torch.randn(2, 8, 7, 7, generator=g), PackedConv2d
    if kind == "convtranspose2d":
        return nn.ConvTranspose2d(6, 4, 3, stride=2), torch.randn(2, 6, 5, 5, generator=g), PackedConvTranspose2d
    if kind == "embedding":
        return nn.Embedding(50, 16), torch.randint(0, 50, (4, 7), generator=g), PackedEmbedding
    raise AssertionError(kind)


LAYERS = ["linear", "conv1d", "conv2d", "depthwise", "convtranspose2d", "embedding"]


def packed_layers_of(model: nn.Module) -> "list[PackedLayerMixin]":
    return [m for m in model.modules() if isinstance(m, PackedLayerMixin)]
