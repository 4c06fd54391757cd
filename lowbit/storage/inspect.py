"""What a lowbit checkpoint holds, tensor by tensor, read from its header alone.

The lead wires ``lowbit inspect PATH`` to `inspect_checkpoint`; each row says how a tensor is
stored and what it costs next to float32.
"""

from __future__ import annotations

import os
from typing import Any

from lowbit.storage._container import read_header

__all__ = ["inspect_checkpoint"]


def inspect_checkpoint(path: "str | os.PathLike[str]") -> "list[dict[str, Any]]":
    """One dict per stored tensor, in the saved order.

    Keys: ``name``, ``format`` (spec string, or None when stored as it is), ``dtype`` (of the
    loaded tensor), ``bits`` (per element as stored), ``shape``, ``numel``, ``stored_bytes``
    (packed codes + side parameters + scale), ``bits_per_element`` (``8 · stored_bytes / numel``:
    what each element really costs, side parameters included), ``scale`` (None, ``"tensor"``,
    ``"channel (axis k)"`` or ``"group g (axis k)"``: a float32 scale stored beside the codes),
    ``fp32_bytes`` (4 per element) and ``compression`` (``fp32_bytes / stored_bytes``; None for an
    empty tensor), ``alias_of`` (None, or the earlier name of a tied tensor stored only once: its
    ``stored_bytes`` and ``fp32_bytes`` are 0, so totals count the tensor once). Only the header
    is read (and validated); checksums are checked by `lowbit.load`.

    >>> import os, tempfile, torch, lowbit as lb
    >>> path = os.path.join(tempfile.mkdtemp(), "m.safetensors")
    >>> lb.save({"w": torch.randn(64, 16), "b": torch.zeros(64)}, path, formats={"w": "e2m1fn"})
    >>> [(r["name"], r["format"], r["bits"], r["stored_bytes"], r["compression"]) for r in inspect_checkpoint(path)]
    [('w', 'e2m1fn', 4, 512, 8.0), ('b', None, 32, 256, 1.0)]
    """
    header = read_header(path)
    rows = []
    for e in header.entries:
        stored = sum(header.extents[s.key][1] - header.extents[s.key][0] for s in e.stored)
        fp32 = 4 * e.numel if e.alias_of is None else 0
        rows.append(
            {
                "name": e.name,
                "format": e.format,
                "dtype": str(e.dtype).removeprefix("torch."),
                "bits": e.bits if e.bits is not None else 8 * e.data.nbytes // max(e.numel, 1),
                "shape": list(e.shape),
                "numel": e.numel,
                "stored_bytes": stored,
                "bits_per_element": 8 * stored / e.numel if e.numel and e.alias_of is None else None,
                "scale": _scale_kind(e),
                "fp32_bytes": fp32,
                "compression": fp32 / stored if stored else None,
                "alias_of": e.alias_of,
            }
        )
    return rows


def _scale_kind(e: Any) -> "str | None":
    if e.scale is None:
        return None
    if e.group_size is not None:
        return f"group {e.group_size} (axis {e.axis})"
    if e.axis is not None:
        return f"channel (axis {e.axis})"
    return "tensor"
