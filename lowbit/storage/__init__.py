"""Real storage: n-bit codes packed into bytes, PackedTensor, and lowbit checkpoints.

- `pack_bits` / `unpack_bits`: codes of any width 1..32 <-> a dense little-endian bit stream;
- `PackedTensor`: packed codes + format + shape + side parameters (+ optional float32 scale);
- `save` / `load`: checksummed safetensors checkpoints of packed tensors (never pickle);
- `inspect_checkpoint`: per-tensor sizes from a checkpoint's header.
"""

from lowbit.storage.bitpack import BIT_ORDER, pack_bits, packed_nbytes, unpack_bits
from lowbit.storage.checkpoint import load, save
from lowbit.storage.inspect import inspect_checkpoint
from lowbit.storage.packed import PackedTensor

__all__ = [
    "pack_bits",
    "unpack_bits",
    "packed_nbytes",
    "BIT_ORDER",
    "PackedTensor",
    "save",
    "load",
    "inspect_checkpoint",
]
