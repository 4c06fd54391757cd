"""``lowbit.save`` / ``lowbit.load``: packed n-bit checkpoints in a safetensors container.

``save`` quantizes each floating tensor that has a format, packs its codes ``bits`` bits each,
and writes them with the format's side parameters, the spec strings and per-tensor sha256
checksums (layout: `lowbit.storage._container`). Tensors without a format, and non-floating
ones (e.g. BatchNorm's ``num_batches_tracked``), are stored as they are. Writes are atomic: a
temporary file in the same directory (created with the umask's permissions, like any new
file), fsynced, then ``os.replace``-d onto the final name; a temporary left behind by a killed
save of the same target is removed by the next save. Everything that can be refused (names,
formats, tensors, tied tensors stored differently) is refused before the destination is touched;
an I/O failure (full disk, unwritable directory) is an ``OSError`` naming the path, and the old
file stays as it was. A tensor that is the same as an earlier one (tied weights) is stored once.

``load`` gives back a state dict (``OrderedDict``, in the saved order) whose tensors equal
``fmt.quantize(original)`` bit for bit, in the original dtype; anything wrong with the file
raises `lowbit.CheckpointError` and nothing is ever filled in.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import os
import re
import secrets
from typing import Any, Mapping

import torch

from lowbit._process import pid_alive
from lowbit.errors import CheckpointError
from lowbit.formats._float64 import FLOAT_DTYPES
from lowbit.formats.base import NumberFormat
from lowbit.formats.spec import parse_format
from lowbit.storage._container import (
    RESERVED_NAMES,
    Entry,
    Stored,
    checkpoint_path,
    dtype_name,
    header_metadata,
    param_key,
    read_header,
    scale_key,
    entry_digest,
)
from lowbit.storage.packed import PackedTensor, pack_for_role

__all__ = ["save", "load", "load_packed"]


def save(obj: Any, path: "str | os.PathLike[str]", formats: Any = None) -> None:
    """Save a model or state dict as a lowbit checkpoint at ``path`` (atomically).

    ``obj``: an ``nn.Module`` quantized with `lowbit.quantize_` (its weight formats are used;
    ``formats=`` overrides them) or packed with `lowbit.pack_` (its packed codes are stored as
    they are, under ``"<layer>.weight"``), or a state dict ``{name: tensor or PackedTensor}``.
    ``formats``: None (a module: its lowbit formats; a state dict: every tensor as it is,
    PackedTensor values stay packed), one spec for every float16/bfloat16/float32/float64 tensor,
    or ``{name: spec or None}`` (names not listed are stored as they are).

    >>> import os, tempfile, torch, lowbit as lb
    >>> sd = {"w": torch.tensor([0.3, 100.0]), "steps": torch.tensor(7)}
    >>> path = os.path.join(tempfile.mkdtemp(), "model.safetensors")
    >>> lb.save(sd, path, formats="posit8_es2")
    >>> dict(lb.load(path))
    {'w': tensor([ 0.3125, 96.0000]), 'steps': tensor(7)}
    """
    where = checkpoint_path(path)
    state, fmt_map = _resolve(obj, formats)
    _check_names_and_tensors(state)
    ties = _tied_names(state)
    entries: list[Entry] = []
    tensors: dict[str, torch.Tensor] = {}
    seen_storage: set[int] = set()
    by_name: dict[str, "tuple[Entry, list[torch.Tensor]]"] = {}
    for name, value in state.items():
        fmt = fmt_map.get(name)
        entry, stored = _store_one(name, value, fmt)
        first = ties.get(name)
        if first is not None:
            _check_tie(first, by_name[first], name, entry, stored)
            entries.append(dataclasses.replace(by_name[first][0], name=name, alias_of=first))
            continue
        by_name[name] = entry, stored
        for s, t in zip(entry.stored, stored):
            if s.key in tensors:
                raise ValueError(f"tensor name {name!r} collides with the stored name {s.key!r} of another tensor")
            tensors[s.key] = _own_storage(t, seen_storage)
        entries.append(entry)
    from lowbit import __version__

    _atomic_save_file(tensors, where, header_metadata(entries, __version__))


def load(path: "str | os.PathLike[str]", *, packed: bool = False) -> "collections.OrderedDict[str, Any]":
    """Load a lowbit checkpoint: ``{name: tensor}`` in the saved order, on the CPU.

    Quantized tensors come back as their quantized values in the original dtype (equal to
    ``fmt.quantize(original)`` bit for bit); the others exactly as saved. With ``packed=True``
    (= `load_packed`) quantized tensors come back as `PackedTensor` s instead, not decoded. Raises
    `lowbit.CheckpointError` (naming the tensor where there is one) for a corrupt, truncated,
    foreign or too-new file.

    >>> import os, tempfile, torch, lowbit as lb
    >>> path = os.path.join(tempfile.mkdtemp(), "w.safetensors")
    >>> lb.save({"w": torch.tensor([1.0, 2.5, -7.0])}, path, formats={"w": "int4"})
    >>> lb.load(path)["w"].tolist()
    [1.0, 2.0, -7.0]
    """
    where = checkpoint_path(path)
    header = read_header(where)
    out: "collections.OrderedDict[str, torch.Tensor]" = collections.OrderedDict()
    with _open_tensors(where) as f:
        for entry in header.entries:
            if entry.alias_of is not None:  # tied: the same tensor as an earlier entry
                out[entry.name] = out[entry.alias_of]
                continue
            fmt = _entry_format(entry, where)
            stored = [_get(f, s, entry, where) for s in entry.stored]
            if entry_digest(entry, stored) != entry.sha256:
                raise CheckpointError(f"{where}: tensor {entry.name!r} is corrupt (its sha256 checksum does not match)")
            out[entry.name] = stored[0] if fmt is None else _restore(entry, fmt, stored, where, decode=not packed)
    return out


def load_packed(path: "str | os.PathLike[str]") -> "collections.OrderedDict[str, Any]":
    """Load a lowbit checkpoint without decoding: ``{name: PackedTensor or tensor}``, in the saved order.

    Checksums are checked as by `load`. Rebuild a packed model from it with
    ``lowbit.pack_(model, lowbit.load_packed(path))`` (``model``: the architecture, float or
    simulated), or load it into a model packed already with ``model.load_state_dict(...)``.

    >>> import os, tempfile, torch, lowbit as lb
    >>> path = os.path.join(tempfile.mkdtemp(), "w.safetensors")
    >>> lb.save({"w": torch.tensor([1.0, 2.5, -7.0]), "b": torch.zeros(2)}, path, formats={"w": "int4"})
    >>> sd = lb.load_packed(path)
    >>> sd["w"], sd["w"].decode().tolist(), sd["b"].tolist()
    (PackedTensor(int4, shape=(3,), nbytes=2), [1.0, 2.0, -7.0], [0.0, 0.0])
    """
    return load(path, packed=True)


# ------------------------------------------------------------------------------ saving
def _resolve(obj: Any, formats: Any) -> "tuple[Mapping[str, Any], dict[str, NumberFormat]]":
    """The state dict to store and ``{name: format}`` for the tensors to pack."""
    if isinstance(obj, torch.nn.Module):
        from lowbit.storage.pack import packed_state_dict

        state: Mapping[str, Any] = packed_state_dict(obj)
        if formats is None:
            has_packed = any(isinstance(v, PackedTensor) for v in state.values())
            formats = _module_formats(obj, required=not has_packed)
            state = _with_role_packing(obj, state, formats)
    elif isinstance(obj, Mapping):
        state = obj
        for name, value in state.items():
            if not isinstance(name, str):
                raise TypeError(f"state dict keys must be str, got {name!r}")
            if not isinstance(value, (torch.Tensor, PackedTensor)):
                raise TypeError(f"state dict value {name!r} must be a torch.Tensor or PackedTensor, got {type(value).__name__}")
    else:
        raise TypeError(f"obj must be an nn.Module or a state dict (mapping of str to tensors), got {type(obj).__name__}")

    if formats is None:
        return state, {}
    if isinstance(formats, (str, NumberFormat)):
        fmt = parse_format(formats)
        return state, {
            n: fmt for n, v in state.items() if isinstance(v, torch.Tensor) and v.dtype in FLOAT_DTYPES
        }
    if not isinstance(formats, Mapping):
        raise TypeError(
            "formats must be None, a spec string (e.g. 'posit8_es2') or a {name: spec or None} dict, "
            f"got {type(formats).__name__}"
        )
    fmt_map: dict[str, NumberFormat] = {}
    for name, spec in formats.items():
        if name not in state:
            raise ValueError(f"formats names {name!r}, which is not in the state dict")
        if spec is None:
            continue
        value = state[name]
        if isinstance(value, PackedTensor):
            raise ValueError(f"formats names {name!r}, which is already a PackedTensor ({value.format}); drop it from formats")
        if value.dtype not in FLOAT_DTYPES:
            raise ValueError(
                f"formats names {name!r}, a {value.dtype} tensor; only float16, bfloat16, float32 and float64 "
                "tensors can take a format"
            )
        fmt_map[name] = parse_format(spec)
    return state, fmt_map


def _with_role_packing(model: torch.nn.Module, state: "Mapping[str, Any]",
                         formats: "dict[str, NumberFormat | None]") -> "dict[str, Any]":
    """Weights simulated with float scales (per tensor / channel / group) or with levels fitted per
    channel become PackedTensors that reproduce the simulation."""
    from lowbit.simulate.layers import QuantLayerMixin

    state = dict(state)
    for module_name, module in model.named_modules():
        if not isinstance(module, QuantLayerMixin):
            continue
        # every quantized tensor attribute (weight, bias, MultiheadAttention's in_proj_weight …)
        tensor_roles = module.__dict__.get("lowbit_tensor_roles")
        if tensor_roles is None:
            tensor_roles = {r: q for r, q in module.lowbit_roles.items() if r in ("weight", "bias")}
        for attr, q in tensor_roles.items():
            name = f"{module_name}.{attr}" if module_name else attr
            if name not in state or state[name] is None:
                continue
            packed = pack_for_role(q, state[name])
            if packed is not None:
                formats.pop(name, None)
                state[name] = packed
    return state


def _module_formats(model: torch.nn.Module, required: bool = True) -> "dict[str, NumberFormat | None]":
    try:
        from lowbit.quant import tensor_formats
    except ImportError:  # pragma: no cover - lowbit.quant ships with lowbit
        tensor_formats = None
    found = tensor_formats(model) if tensor_formats is not None else {}
    if required and not any(f is not None for f in found.values()):
        raise TypeError(
            f"save() got a {type(model).__name__} with no lowbit weight formats (no layer has a 'weight' "
            "format from lowbit.quantize_, and none is packed with lowbit.pack_; input, output and grad "
            "formats are not stored); pass formats= (one spec such as 'posit8_es2', or {name: spec}) to store it"
        )
    return dict(found)


def _check_names_and_tensors(state: "Mapping[str, Any]") -> None:
    """Refuse, before anything is written, names the container cannot hold and tensors without data."""
    for name, value in state.items():
        if not isinstance(name, str):
            raise TypeError(f"state dict keys must be str, got {name!r}")
        if name in RESERVED_NAMES:
            raise ValueError(
                f"tensor name {name!r} is reserved by the safetensors container (its metadata key); rename the tensor"
            )
        try:
            name.encode("utf-8")
        except UnicodeEncodeError:
            raise ValueError(
                f"tensor name {name!r} is not valid Unicode text (it holds a lone surrogate); "
                "checkpoint names are stored as UTF-8"
            ) from None
        t = value.data if isinstance(value, PackedTensor) else value
        if not isinstance(t, torch.Tensor):
            continue
        if t.is_meta:
            raise ValueError(f"tensor {name!r} is on the meta device (it has no data to save); materialize it first")
        if t.layout != torch.strided:
            raise ValueError(
                f"tensor {name!r} has layout {t.layout}; only dense (strided) tensors can be saved: "
                "convert it with .to_dense() first"
            )


def _tensor_identity(value: Any) -> "tuple[Any, ...] | None":
    """Equal for two state-dict values that are the very same tensor (tied weights), else None / unequal."""
    if isinstance(value, PackedTensor):
        return ("packed", id(value))
    if not isinstance(value, torch.Tensor) or value.numel() == 0:
        return None
    return (
        str(value.device), value.untyped_storage().data_ptr(), value.storage_offset(),
        tuple(value.shape), tuple(value.stride()), value.dtype,
    )


def _tied_names(state: "Mapping[str, Any]") -> "dict[str, str]":
    """``{later name: first name}`` for values that are the same tensor as an earlier one."""
    first: dict[Any, str] = {}
    ties: dict[str, str] = {}
    for name, value in state.items():
        key = _tensor_identity(value)
        if key is None:
            continue
        if key in first:
            ties[name] = first[key]
        else:
            first[key] = name
    return ties


def _check_tie(first: str, stored_first: "tuple[Entry, list[torch.Tensor]]", name: str, entry: Entry,
               stored: "list[torch.Tensor]") -> None:
    """A tied name is stored once: refuse when it would be stored differently from its first name."""
    a, b = stored_first[0].to_json(), entry.to_json()
    for doc in (a, b):
        doc.pop("name"), doc.pop("sha256")
    if a == b and len(stored) == len(stored_first[1]) and all(
        torch.equal(x.reshape(-1).view(torch.uint8), y.reshape(-1).view(torch.uint8))
        for x, y in zip(stored_first[1], stored)
    ):
        return
    how = lambda e: e.format or f"as is ({dtype_name(e.dtype)})"  # noqa: E731
    detail = f"{how(stored_first[0])} vs {how(entry)}" if a.get("format") != b.get("format") else "different scales"
    raise ValueError(
        f"tensors {first!r} and {name!r} are one tied parameter but would be stored differently ({detail}); "
        "a checkpoint stores a tied parameter once, so give both names the same format (or untie them)"
    )


def _store_one(name: str, value: Any, fmt: "NumberFormat | None") -> "tuple[Entry, list[torch.Tensor]]":
    """The header entry of one state-dict value and the tensors to write for it."""
    if isinstance(value, torch.Tensor) and fmt is not None:
        value = PackedTensor.from_tensor(value.detach(), fmt)
    if not isinstance(value, PackedTensor):
        t = value.detach().to("cpu").contiguous()
        _check_storable(name, t.dtype)
        entry = Entry(name, t.dtype, tuple(t.shape), None, None, (), None, None, "")
        return dataclasses.replace(entry, sha256=entry_digest(entry, [t])), [t]
    params = [(p, t.detach().to("cpu").contiguous()) for p, t in value.params.items()]
    stored = [value.data.detach().to("cpu"), *(t for _, t in params)]
    for _, t in params:
        _check_storable(name, t.dtype)
    scale = None
    if value.scale is not None:
        stored.append(value.scale.detach().to("cpu").contiguous())
        scale = Stored(scale_key(name), value.scale.dtype, tuple(value.scale.shape))
    entry = Entry(
        name=name,
        dtype=value.dtype,
        shape=tuple(value.shape),
        format=str(value.format),
        bits=value.bits,
        params=tuple(Stored(param_key(name, p), t.dtype, tuple(t.shape)) for p, t in params),
        scale=scale,
        axis=value.axis,
        sha256="",
        group_size=value.group_size,
    )
    return dataclasses.replace(entry, sha256=entry_digest(entry, stored)), stored


def _check_storable(name: str, dtype: torch.dtype) -> None:
    try:
        dtype_name(dtype)
    except ValueError as err:
        raise ValueError(f"tensor {name!r}: {err}") from None


def _own_storage(t: torch.Tensor, seen: set[int]) -> torch.Tensor:
    """``t``, copied if it shares memory with a tensor already stored or is a view of a larger
    buffer (safetensors refuses shared tensors, e.g. tied weights)."""
    storage = t.untyped_storage()
    ptr = storage.data_ptr()
    if t.numel() and (ptr in seen or storage.nbytes() != t.numel() * t.element_size()):
        t = t.clone()
        ptr = t.untyped_storage().data_ptr()
    if t.numel():
        seen.add(ptr)
    return t


_TMP_SUFFIX = ".lowbit-tmp"
_CHUNK = 1 << 24  # bytes per os.write call


def _temp_name(path: str, pid: int) -> str:
    """The temporary file a save of ``path`` by process ``pid`` writes first (same directory)."""
    directory, base = os.path.split(os.path.abspath(path))
    return os.path.join(directory, f".{base}.{pid}.{secrets.token_hex(6)}{_TMP_SUFFIX}")


def _remove_stale_temps(path: str) -> None:
    """Delete temporaries of earlier saves of ``path`` whose process is gone (e.g. killed by kill -9).

    Only files named like `_temp_name` for this very target are touched, and only when the pid in
    the name is not a live process of this machine."""
    directory, base = os.path.split(os.path.abspath(path))
    pattern = re.compile(re.escape(f".{base}.") + r"(\d+)\.[0-9a-f]{12}" + re.escape(_TMP_SUFFIX))
    try:
        names = os.listdir(directory)
    except OSError:
        return
    for fname in names:
        m = pattern.fullmatch(fname)
        if m is None or pid_alive(int(m.group(1))):
            continue
        with contextlib.suppress(OSError):
            os.unlink(os.path.join(directory, fname))


def _atomic_save_file(tensors: dict[str, torch.Tensor], path: str, metadata: dict[str, str]) -> None:
    """Write ``tensors`` as a safetensors file at ``path``: a temporary file of our own (created with
    the umask's permissions, as any new file), written, fsynced, then renamed onto ``path``. A
    failure leaves ``path`` as it was and no temporary; an I/O error is an OSError naming ``path``."""
    from safetensors.torch import save as serialize

    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"cannot save {path}: the directory {directory} does not exist")
    if os.path.isdir(path):
        raise IsADirectoryError(f"cannot save {path}: it is a directory; give a file name")
    data = memoryview(serialize(tensors, metadata=metadata))
    _remove_stale_temps(path)
    tmp = _temp_name(path, os.getpid())
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    except OSError as err:
        raise OSError(err.errno, f"cannot save {path}: cannot create a file in {directory} ({err.strerror})") from None
    try:
        try:
            for start in range(0, len(data), _CHUNK):
                chunk = data[start:start + _CHUNK]
                while chunk:
                    chunk = chunk[os.write(fd, chunk):]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException as err:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(err, OSError) and err.errno is not None:
            raise OSError(err.errno, f"cannot save {path}: {err.strerror or err}; the old file (if any) is intact") from None
        raise
    with contextlib.suppress(OSError):  # make the rename durable (POSIX; a no-op elsewhere)
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


# ------------------------------------------------------------------------------ loading
@contextlib.contextmanager
def _open_tensors(where: str):  # type: ignore[no-untyped-def]
    from safetensors import safe_open

    try:
        handle = safe_open(where, framework="pt", device="cpu")
    except Exception as err:  # safetensors' own error type lives in its compiled module
        raise CheckpointError(f"{where}: corrupt checkpoint (safetensors cannot open it: {err})") from None
    with handle as f:
        yield f


def _get(f: Any, s: Stored, entry: Entry, where: str) -> torch.Tensor:
    try:
        t = f.get_tensor(s.key)
    except Exception as err:
        raise CheckpointError(f"{where}: tensor {entry.name!r}: cannot read stored tensor {s.key!r}: {err}") from None
    if t.dtype != s.dtype or tuple(t.shape) != s.shape:
        raise CheckpointError(f"{where}: tensor {entry.name!r}: stored tensor {s.key!r} does not match the header")
    return t


def _entry_format(entry: Entry, where: str) -> "NumberFormat | None":
    if entry.format is None:
        return None
    try:
        fmt = parse_format(entry.format)
    except ValueError as err:
        raise CheckpointError(
            f"{where}: tensor {entry.name!r}: unknown format {entry.format!r} (written by a newer lowbit?): {err}"
        ) from None
    if fmt.bits != entry.bits:
        raise CheckpointError(f"{where}: tensor {entry.name!r}: packing bits {entry.bits} != {fmt}'s {fmt.bits}")
    return fmt


def _restore(
    entry: Entry, fmt: NumberFormat, stored: list[torch.Tensor], where: str, decode: bool = True
) -> "torch.Tensor | PackedTensor":
    params = {s.key.split(":param:", 1)[1]: t for s, t in zip(entry.params, stored[1:])}
    scale = stored[-1] if entry.scale is not None else None
    try:
        packed = PackedTensor(stored[0], fmt, entry.shape, params, scale, entry.axis, entry.dtype, entry.group_size)
        return packed.decode() if decode else packed
    except (ValueError, TypeError, RuntimeError) as err:
        raise CheckpointError(f"{where}: tensor {entry.name!r}: cannot decode: {err}") from None
