"""How a tensor is scaled and quantized, as one frozen value: `Scheme` = element format + scale
rule (`NoScale`, `PowerOfTwo`, `Absmax`, `Static`, `Fitted`, `BlockScale`) + rounding.

Block-scaled formats (OCP MX, block floating point, NVFP4 and their research variants) are
instances of the one rule `BlockScale`; every rule delegates to the one implementation in
`lowbit.formats`. Layers above (role quantizers, configs, the storage and mixed-precision cost
models) use schemes; this package imports `lowbit.formats` only.

>>> import lowbit.schemes as ls
>>> str(ls.Scheme.preset("nvfp4").scale.scale), ls.Scheme.preset("nvfp4").scale.tensor_scale
('e4m3fn', True)
"""

from lowbit.schemes.rules import Absmax, BlockScale, Fitted, NoScale, PowerOfTwo, ScaleRule, Static, rule_from_dict
from lowbit.schemes.scheme import PRESETS, Scheme, SchemeCodes

__all__ = ["Scheme", "SchemeCodes", "PRESETS", "NoScale", "PowerOfTwo", "Absmax", "Static", "Fitted", "BlockScale",
           "ScaleRule", "rule_from_dict"]
