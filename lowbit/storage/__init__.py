"""Real storage: n-bit codes packed into bytes, PackedTensor, packed layers and lowbit checkpoints.

- `pack_bits` / `unpack_bits`: codes of any width 1..32 <-> a dense little-endian bit stream;
- `PackedTensor`: packed codes + format + shape + side parameters (+ optional float32 scale);
- `pack_` / `unpack_`: layers that hold only packed weights and decode them on the fly
  (``PackedLinear`` … ``PackedEmbedding``), and back; `memory_footprint` of a model;
- `save` / `load` / `load_packed`: checksummed safetensors checkpoints of packed tensors (never pickle);
- `inspect_checkpoint`: per-tensor sizes from a checkpoint's header.
"""

from lowbit.storage.bitpack import BIT_ORDER, pack_bits, packed_nbytes, unpack_bits
from lowbit.storage.checkpoint import load, load_packed, save
from lowbit.storage.inspect import inspect_checkpoint
from lowbit.storage.pack import memory_footprint, pack_, packed_state_dict, unpack_
from lowbit.storage.packed_layers import (
    PACKED_CLASSES,
    PackedConv1d,
    PackedConv2d,
    PackedConvTranspose2d,
    PackedEmbedding,
    PackedLayerMixin,
    PackedLinear,
)
from lowbit.storage.packed import PackedTensor

__all__ = [
    "pack_bits",
    "unpack_bits",
    "packed_nbytes",
    "BIT_ORDER",
    "PackedTensor",
    "pack_",
    "unpack_",
    "PackedLayerMixin",
    "PackedLinear",
    "PackedConv1d",
    "PackedConv2d",
    "PackedConvTranspose2d",
    "PackedEmbedding",
    "PACKED_CLASSES",
    "packed_state_dict",
    "memory_footprint",
    "save",
    "load",
    "load_packed",
    "inspect_checkpoint",
]
