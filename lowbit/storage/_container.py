"""The lowbit checkpoint container: a safetensors file with a checksummed lowbit header.

Layout (container version 1). The file is an ordinary safetensors file (8-byte little-endian
header length, JSON header, raw tensor bytes; never pickle). Its ``__metadata__`` holds:

- ``"lowbit"``: a JSON document (the schema below), as text;
- ``"lowbit_sha256"``: the sha256 of that text (UTF-8), hex. Every container version keeps these
  two keys, so a corrupt header is told apart from a header of a newer version;
- ``"format": "pt"`` (the safetensors convention for torch tensors).

The JSON document::

    {"lowbit_version": "0.1.0", "container_version": 1,
     "tensors": [                                  # in state-dict order
       {"name": "fc.weight",                       # state-dict key
        "dtype": "float32",                        # dtype load() returns (the original's)
        "shape": [64, 32],
        "format": "posit8_es2",                    # canonical spec, or null: stored as it is
        "packing": {"bits": 8, "bit_order": "lsb_first"},   # null when format is null
        "params": {"scale_exp": {"dtype": "uint8", "shape": [64, 1]}},  # EncodedTensor.params
        "scale": {"shape": [64, 1], "axis": 0},    # float32 per-channel scale, or null; per group:
                                                    # {"shape": [64, 4], "axis": 1, "group_size": 32}
        "sha256": "…"}]}                           # over this entry's fields + its stored bytes

Stored safetensors tensors, per entry: the packed codes (1-D uint8, ``ceil(numel*bits/8)``
bytes) or the raw tensor under the entry's own name; each param under ``"<name>:param:<p>"``;
the scale under ``"<name>:scale"``. Every stored tensor's dtype, shape and extent are checked
against this header (itself checksummed) before any byte is used.

Tied tensors (container version 2). A state-dict name that is the very same tensor as an earlier
one (tied weights, e.g. GPT-2's ``lm_head.weight`` and ``wte.weight``) is stored once; its entry is
only ``{"name": "lm_head.weight", "alias_of": "transformer.wte.weight"}`` (the target is an
earlier, non-alias entry) and ``load`` gives both names the same tensor. A file is written as
version 2 only when it holds an alias, so files without tied tensors stay readable by lowbit
versions that know only version 1; a version-1 reader refuses a version-2 file as "written by a
newer lowbit".

Compatibility rule (one rule for every level of the header): a reader accepts the container
versions up to its own `CONTAINER_VERSION` and refuses any field it does not know - in the
safetensors metadata, the document, an entry, its ``packing``, ``params`` or ``scale`` - with a
`CheckpointError` naming the field. A writer that adds a field therefore bumps the container
version (or accepts that older readers refuse the file): nothing a reader does not understand is
ever silently ignored.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import stat
import struct
from typing import Any, Iterable

import torch

from lowbit.errors import CheckpointError
from lowbit.storage.bitpack import BIT_ORDER, MAX_PACK_BITS, packed_nbytes

__all__ = [
    "CONTAINER_VERSION",
    "Entry",
    "Header",
    "read_header",
    "header_metadata",
    "entry_digest",
    "dtype_name",
    "RESERVED_NAMES",
    "checkpoint_path",
]

CONTAINER_VERSION = 2  # the newest version this lowbit reads; files without aliases are written as 1
RESERVED_NAMES = frozenset({"__metadata__"})  # safetensors' own header key: never a tensor name
# the fields each level of the header may hold (the compatibility rule in the module docstring)
_DOC_FIELDS = frozenset({"lowbit_version", "container_version", "tensors"})
_ENTRY_FIELDS = frozenset({"name", "dtype", "shape", "format", "packing", "params", "scale", "sha256"})
_ALIAS_FIELDS = frozenset({"name", "alias_of"})
_PACKING_FIELDS = frozenset({"bits", "bit_order"})
_PARAM_FIELDS = frozenset({"dtype", "shape"})
_SCALE_FIELDS = frozenset({"shape", "axis", "group_size", "dtype"})
META_KEY = "lowbit"
META_SHA_KEY = "lowbit_sha256"
_MAX_HEADER = 100_000_000  # safetensors' own limit on the JSON header

# torch dtype -> safetensors dtype code; the dtypes a checkpoint can hold
_ST_CODES: dict[torch.dtype, str] = {
    torch.float64: "F64",
    torch.float32: "F32",
    torch.float16: "F16",
    torch.bfloat16: "BF16",
    torch.int64: "I64",
    torch.int32: "I32",
    torch.int16: "I16",
    torch.int8: "I8",
    torch.uint8: "U8",
    torch.bool: "BOOL",
}
for _name, _code in (("float8_e4m3fn", "F8_E4M3"), ("float8_e5m2", "F8_E5M2")):
    if hasattr(torch, _name):
        _ST_CODES[getattr(torch, _name)] = _code
_DTYPES_BY_NAME: dict[str, torch.dtype] = {str(d).removeprefix("torch."): d for d in _ST_CODES}


def dtype_name(dtype: torch.dtype) -> str:
    """Header name of a storable dtype ("float32", ...); ValueError for one a checkpoint cannot hold."""
    if dtype not in _ST_CODES:
        raise ValueError(f"dtype {dtype} cannot be stored in a lowbit checkpoint; allowed: {', '.join(_DTYPES_BY_NAME)}")
    return str(dtype).removeprefix("torch.")


def param_key(name: str, param: str) -> str:
    return f"{name}:param:{param}"


def scale_key(name: str) -> str:
    return f"{name}:scale"


@dataclasses.dataclass(frozen=True)
class Stored:
    """One tensor of the safetensors file as the lowbit header expects it."""

    key: str
    dtype: torch.dtype
    shape: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        return _prod(self.shape) * _itemsize(self.dtype)


@dataclasses.dataclass(frozen=True)
class Entry:
    """One state-dict tensor: how it is stored and how to give it back."""

    name: str
    dtype: torch.dtype
    shape: tuple[int, ...]
    format: "str | None"
    bits: "int | None"
    params: tuple[Stored, ...]
    scale: "Stored | None"
    axis: "int | None"
    sha256: str
    group_size: "int | None" = None
    alias_of: "str | None" = None  # the earlier entry this one is the same tensor as (stored once)

    @property
    def numel(self) -> int:
        return _prod(self.shape)

    @property
    def data(self) -> Stored:
        if self.format is None:
            return Stored(self.name, self.dtype, self.shape)
        assert self.bits is not None
        return Stored(self.name, torch.uint8, (packed_nbytes(self.numel, self.bits),))

    @property
    def stored(self) -> tuple[Stored, ...]:
        """Every safetensors tensor of this entry, in checksum order: data, params, scale (none for an alias)."""
        if self.alias_of is not None:
            return ()
        return (self.data, *self.params, *(() if self.scale is None else (self.scale,)))

    def to_json(self) -> dict[str, Any]:
        if self.alias_of is not None:
            return {"name": self.name, "alias_of": self.alias_of}
        return {
            "name": self.name,
            "dtype": dtype_name(self.dtype),
            "shape": list(self.shape),
            "format": self.format,
            "packing": None if self.format is None else {"bits": self.bits, "bit_order": BIT_ORDER},
            "params": {
                s.key.split(":param:", 1)[1]: {"dtype": dtype_name(s.dtype), "shape": list(s.shape)} for s in self.params
            },
            "scale": None if self.scale is None else self._scale_json(),
            "sha256": self.sha256,
        }


    def _scale_json(self) -> "dict[str, Any]":
        assert self.scale is not None
        doc: dict[str, Any] = {"shape": list(self.scale.shape), "axis": self.axis}
        if self.group_size is not None:  # only when grouped: older entries keep their exact JSON (and digest)
            doc["group_size"] = self.group_size
        if self.scale.dtype != torch.float32:  # float64 scales of float64 tensors; float32 is implied
            doc["dtype"] = dtype_name(self.scale.dtype)
        return doc


@dataclasses.dataclass(frozen=True)
class Header:
    """A validated lowbit header plus where each stored tensor lies in the file."""

    lowbit_version: str
    container_version: int
    entries: tuple[Entry, ...]
    extents: dict[str, tuple[int, int]]  # safetensors key -> (begin, end) byte offsets in the data area


def header_metadata(entries: Iterable[Entry], lowbit_version: str) -> dict[str, str]:
    """The safetensors ``metadata`` for ``entries``: the JSON document and its checksum."""
    entries = list(entries)
    doc = {
        "lowbit_version": lowbit_version,
        "container_version": 2 if any(e.alias_of is not None for e in entries) else 1,
        "tensors": [e.to_json() for e in entries],
    }
    text = json.dumps(doc, separators=(",", ":"), ensure_ascii=True, allow_nan=False)
    return {"format": "pt", META_KEY: text, META_SHA_KEY: hashlib.sha256(text.encode()).hexdigest()}


def entry_digest(entry: Entry, tensors: Iterable[torch.Tensor]) -> str:
    """sha256 (hex) binding an entry's description to its bytes.

    Hashes the entry's header fields (all but ``sha256``, as canonical JSON), a NUL byte, then the
    raw bytes of its stored tensors in order (data, params, scale). A header that was rewritten
    to say another shape or format of the same size therefore fails the check as surely as a
    flipped data byte.
    """
    desc = entry.to_json()
    desc.pop("sha256")
    h = hashlib.sha256(json.dumps(desc, sort_keys=True, separators=(",", ":")).encode())
    h.update(b"\0")
    for t in tensors:
        t = t.detach().to("cpu").contiguous().reshape(-1)
        if t.numel():
            h.update(t.view(torch.uint8).numpy())
    return h.hexdigest()


# ------------------------------------------------------------------------------- reading
def checkpoint_path(path: "str | bytes | os.PathLike[Any]") -> str:
    """``path`` (str, bytes or os.PathLike) as a str; TypeError naming the argument otherwise."""
    try:
        return os.fsdecode(os.fspath(path))
    except TypeError:
        raise TypeError(f"path must be a str, bytes or os.PathLike, got {type(path).__name__}") from None


def read_header(path: "str | os.PathLike[str]") -> Header:
    """Read and validate the header of the checkpoint at ``path`` (no tensor data is read).

    Raises CheckpointError for anything that is not a complete lowbit checkpoint this version
    can read: not a safetensors file, no lowbit header, a corrupt or incomplete header, a newer
    container version, stored tensors that disagree with the header, a truncated data area.
    """
    where = checkpoint_path(path)
    try:
        if not stat.S_ISREG(os.stat(where).st_mode):  # a FIFO or device would block or never end
            raise CheckpointError(f"{where}: cannot read the checkpoint: not a regular file (a directory, FIFO or device)")
        with open(where, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            prefix = f.read(8)
            if len(prefix) < 8:
                raise CheckpointError(f"{where}: not a lowbit checkpoint, or truncated: the file has only {size} bytes")
            (n,) = struct.unpack("<Q", prefix)
            if n == 0 or n > _MAX_HEADER or 8 + n > size:
                raise CheckpointError(f"{where}: {_not_safetensors(prefix, n, size)}")
            raw = f.read(n)
    except OSError as err:
        raise CheckpointError(f"{where}: cannot read the checkpoint: {err}") from err
    try:
        st_header = json.loads(raw.decode("utf-8"))
    except RecursionError:
        raise CheckpointError(f"{where}: corrupt header (the safetensors header is nested too deeply)") from None
    except (UnicodeDecodeError, ValueError) as err:
        raise CheckpointError(f"{where}: corrupt header (the safetensors header is not valid JSON: {err})") from None
    if not isinstance(st_header, dict):
        raise CheckpointError(f"{where}: corrupt header (the safetensors header is not a JSON object)")
    meta = st_header.get("__metadata__")
    if not isinstance(meta, dict) or META_KEY not in meta:
        raise CheckpointError(
            f"{where}: not a lowbit checkpoint (a safetensors file without a lowbit header); "
            "write checkpoints with lowbit.save"
        )
    text, digest = meta.get(META_KEY), meta.get(META_SHA_KEY)
    if not isinstance(text, str) or not isinstance(digest, str):
        raise CheckpointError(f"{where}: corrupt header (lowbit header or its '{META_SHA_KEY}' is missing or not text)")
    if hashlib.sha256(text.encode()).hexdigest() != digest:
        raise CheckpointError(f"{where}: corrupt header (the lowbit header does not match its sha256 checksum)")
    try:
        doc = json.loads(text)
    except RecursionError:
        raise CheckpointError(f"{where}: corrupt header (the lowbit header is nested too deeply)") from None
    except ValueError as err:
        raise CheckpointError(f"{where}: corrupt header (the lowbit header is not valid JSON: {err})") from None
    header = _parse_doc(doc, where)
    # version 1 writes exactly these metadata entries; anything else is a corrupt header
    if set(meta) != {"format", META_KEY, META_SHA_KEY} or meta.get("format") != "pt":
        raise CheckpointError(f"{where}: corrupt header (unexpected safetensors metadata {sorted(meta)})")
    header = dataclasses.replace(header, extents=_check_layout(st_header, header.entries, size - 8 - n, where))
    return header


def _not_safetensors(prefix: bytes, n: int, size: int) -> str:
    if prefix[:1] == b"\x80" or prefix[:2] == b"PK":
        return (
            "not a lowbit checkpoint (it looks like a pickle / torch.save file; lowbit never unpickles: "
            "load it with torch.load if you trust it, then lowbit.save it)"
        )
    return f"not a lowbit checkpoint, or truncated (header length {n} does not fit in a file of {size} bytes)"


def _parse_doc(doc: object, where: str) -> Header:
    def bad(msg: str) -> CheckpointError:
        return CheckpointError(f"{where}: bad lowbit header: {msg}")

    if not isinstance(doc, dict):
        raise bad("not a JSON object")
    version = doc.get("container_version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise bad(f"field 'container_version' must be a positive int, got {version!r}")
    if version > CONTAINER_VERSION:
        raise CheckpointError(
            f"{where}: written by a newer lowbit: container version {version} > supported {CONTAINER_VERSION}; "
            "upgrade lowbit"
        )
    lowbit_version = doc.get("lowbit_version")
    if not isinstance(lowbit_version, str):
        raise bad(f"field 'lowbit_version' must be a string, got {lowbit_version!r}")
    _refuse_unknown(doc, _DOC_FIELDS, "the document", bad)
    tensors = doc.get("tensors")
    if not isinstance(tensors, list):
        raise bad(f"field 'tensors' must be a list, got {type(tensors).__name__}")
    entries = []
    seen: dict[str, Entry] = {}
    for i, item in enumerate(tensors):
        if isinstance(item, dict) and "alias_of" in item:
            entry = _parse_alias(item, i, version, seen, where)
        else:
            entry = _parse_entry(item, i, where)
        if entry.name in seen:
            raise bad(f"tensor {entry.name!r} is listed twice")
        seen[entry.name] = entry
        entries.append(entry)
    return Header(lowbit_version, version, tuple(entries), {})


def _refuse_unknown(obj: "dict[str, Any]", known: "frozenset[str]", what: str, bad: Any) -> None:
    unknown = sorted(set(obj) - known)
    if unknown:
        raise bad(
            f"{what} has unknown field(s) {unknown} (written by a newer lowbit? this version reads container "
            f"versions 1..{CONTAINER_VERSION} and refuses fields it does not know)"
        )


def _parse_alias(item: "dict[str, Any]", index: int, version: int, seen: "dict[str, Entry]", where: str) -> Entry:
    """An alias entry: a name for the same tensor as an earlier entry (tied weights)."""
    name = item.get("name")
    label = f"tensor {name!r}" if isinstance(name, str) else f"tensor #{index}"

    def bad(msg: str) -> CheckpointError:
        return CheckpointError(f"{where}: bad lowbit header: {label}: {msg}")

    if version < 2:
        raise bad("an 'alias_of' entry needs container version 2 or later")
    if not isinstance(name, str):
        raise bad(f"field 'name' must be a string, got {name!r}")
    _refuse_unknown(item, _ALIAS_FIELDS, "the alias entry", bad)
    target = seen.get(item["alias_of"]) if isinstance(item["alias_of"], str) else None
    if target is None or target.alias_of is not None:
        raise bad(f"'alias_of' must name an earlier stored (non-alias) tensor, got {item['alias_of']!r}")
    return dataclasses.replace(target, name=name, alias_of=target.name)


def _parse_entry(item: object, index: int, where: str) -> Entry:
    name = item.get("name") if isinstance(item, dict) else None
    label = f"tensor {name!r}" if isinstance(name, str) else f"tensor #{index}"

    def bad(msg: str) -> CheckpointError:
        return CheckpointError(f"{where}: bad lowbit header: {label}: {msg}")

    if not isinstance(item, dict):
        raise bad("entry is not a JSON object")
    if not isinstance(name, str):
        raise bad(f"field 'name' must be a string, got {name!r}")
    missing = [k for k in ("dtype", "shape", "format", "packing", "params", "scale", "sha256") if k not in item]
    if missing:
        raise bad(f"missing field(s) {', '.join(map(repr, missing))}")
    _refuse_unknown(item, _ENTRY_FIELDS, "the entry", bad)
    dtype = _parse_dtype(item["dtype"], "dtype", bad)
    shape = _parse_shape(item["shape"], "shape", bad)
    fmt, bits = item["format"], None
    packing = item["packing"]
    if fmt is None:
        if packing is not None or item["params"] or item["scale"] is not None:
            raise bad("a tensor without a format has no packing, params or scale")
    else:
        if not isinstance(fmt, str):
            raise bad(f"field 'format' must be a spec string or null, got {fmt!r}")
        if not isinstance(packing, dict):
            raise bad(f"field 'packing' must be an object, got {packing!r}")
        _refuse_unknown(packing, _PACKING_FIELDS, "packing", bad)
        bits = packing.get("bits")
        if not isinstance(bits, int) or isinstance(bits, bool) or not 1 <= bits <= MAX_PACK_BITS:
            raise bad(f"packing 'bits' must be an int in 1..{MAX_PACK_BITS}, got {bits!r}")
        if packing.get("bit_order") != BIT_ORDER:
            raise bad(f"packing 'bit_order' must be {BIT_ORDER!r}, got {packing.get('bit_order')!r}")
    params_doc = item["params"]
    if not isinstance(params_doc, dict):
        raise bad(f"field 'params' must be an object, got {type(params_doc).__name__}")
    params = []
    for pname, spec in params_doc.items():
        if not isinstance(spec, dict):
            raise bad(f"param {pname!r} must be an object with dtype and shape")
        _refuse_unknown(spec, _PARAM_FIELDS, f"param {pname!r}", bad)
        params.append(
            Stored(
                param_key(name, pname),
                _parse_dtype(spec.get("dtype"), f"param {pname!r} dtype", bad),
                _parse_shape(spec.get("shape"), f"param {pname!r} shape", bad),
            )
        )
    scale_doc, scale, axis, group_size = item["scale"], None, None, None
    if scale_doc is not None:
        if not isinstance(scale_doc, dict):
            raise bad(f"field 'scale' must be an object or null, got {scale_doc!r}")
        scale_dtype = torch.float32
        if "dtype" in scale_doc:
            scale_dtype = _parse_dtype(scale_doc["dtype"], "scale dtype", bad)
            if scale_dtype not in (torch.float32, torch.float64):
                raise bad(f"scale 'dtype' must be float32 or float64, got {scale_doc['dtype']!r}")
        scale = Stored(scale_key(name), scale_dtype, _parse_shape(scale_doc.get("shape"), "scale shape", bad))
        axis = scale_doc.get("axis")
        if axis is not None and (not isinstance(axis, int) or isinstance(axis, bool) or not 0 <= axis < max(len(shape), 1)):
            raise bad(f"scale 'axis' must be null or an int in [0, {len(shape)}), got {axis!r}")
        _refuse_unknown(scale_doc, _SCALE_FIELDS, "scale", bad)
        if "group_size" in scale_doc:
            group_size = scale_doc["group_size"]
            if not isinstance(group_size, int) or isinstance(group_size, bool) or group_size < 1 or axis is None:
                raise bad(f"scale 'group_size' must be an int >= 1 with an axis, got {group_size!r} (axis {axis!r})")
    sha = item["sha256"]
    if not isinstance(sha, str) or not re.fullmatch(r"[0-9a-f]{64}", sha):
        raise bad(f"field 'sha256' must be 64 lowercase hex digits, got {sha!r}")
    return Entry(name, dtype, shape, fmt, bits, tuple(params), scale, axis, sha, group_size)


def _parse_dtype(value: object, field: str, bad: Any) -> torch.dtype:
    if not isinstance(value, str) or value not in _DTYPES_BY_NAME:
        raise bad(f"field {field!r} must be one of {', '.join(_DTYPES_BY_NAME)}; got {value!r}")
    return _DTYPES_BY_NAME[value]


def _parse_shape(value: object, field: str, bad: Any) -> tuple[int, ...]:
    if not isinstance(value, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in value):
        raise bad(f"field {field!r} must be a list of non-negative ints, got {value!r}")
    return tuple(value)


def _check_layout(st_header: dict, entries: tuple[Entry, ...], data_size: int, where: str) -> dict[str, tuple[int, int]]:
    """Check every stored tensor against the lowbit header and the file size; return extents."""
    extents: dict[str, tuple[int, int]] = {}
    expected_keys = set()
    for entry in entries:
        for s in entry.stored:
            expected_keys.add(s.key)
            info = st_header.get(s.key)
            what = f"tensor {entry.name!r}"
            if not isinstance(info, dict):
                raise CheckpointError(f"{where}: {what}: stored tensor {s.key!r} is missing from the file")
            code, shape, offsets = info.get("dtype"), info.get("shape"), info.get("data_offsets")
            if code != _ST_CODES[s.dtype] or shape != list(s.shape):
                raise CheckpointError(
                    f"{where}: {what}: stored tensor {s.key!r} is {code} {shape}, the header says "
                    f"{_ST_CODES[s.dtype]} {list(s.shape)} (corrupt file)"
                )
            if (
                not isinstance(offsets, list)
                or len(offsets) != 2
                or not all(isinstance(o, int) and not isinstance(o, bool) for o in offsets)
                or not 0 <= offsets[0] <= offsets[1]
                or offsets[1] - offsets[0] != s.nbytes
            ):
                raise CheckpointError(f"{where}: {what}: stored tensor {s.key!r} has bad data offsets {offsets!r}")
            if offsets[1] > data_size:
                raise CheckpointError(
                    f"{where}: truncated: {what} needs bytes up to {offsets[1]} of the data area, "
                    f"which has only {data_size} bytes"
                )
            extents[s.key] = (offsets[0], offsets[1])
    extra = sorted(k for k in st_header if k != "__metadata__" and k not in expected_keys)
    if extra:
        raise CheckpointError(f"{where}: corrupt header: stored tensor(s) {extra[:3]} are not in the lowbit header")
    end = max((e for _, e in extents.values()), default=0)
    if end != data_size:
        raise CheckpointError(f"{where}: corrupt or truncated file: data area has {data_size} bytes, the header accounts for {end}")
    return extents


def _prod(shape: Iterable[int]) -> int:
    out = 1
    for d in shape:
        out *= d
    return out


def _itemsize(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()
