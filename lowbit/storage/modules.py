"""The packed-layer API under its original module name; the code lives, by job, in
`lowbit.storage.packed_layers` (the layers), `lowbit.storage.decode` (codes -> weight) and
`lowbit.storage.pack` (`pack_` / `unpack_` over a model).

>>> from lowbit.storage import modules, packed_layers
>>> modules.PackedLinear is packed_layers.PackedLinear
True
"""

from lowbit.storage.decode import staging_nbytes
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

__all__ = [
    "PackedLayerMixin",
    "PackedLinear",
    "PackedConv1d",
    "PackedConv2d",
    "PackedConvTranspose2d",
    "PackedEmbedding",
    "PACKED_CLASSES",
    "pack_",
    "unpack_",
    "packed_state_dict",
    "memory_footprint",
    "staging_nbytes",
]
