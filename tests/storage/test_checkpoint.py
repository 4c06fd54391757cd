"""lowbit.save / lowbit.load: bit-exact round trips, sizes, atomic writes, and every way a file
can be wrong raising CheckpointError (never zero-filled, never unpickled)."""

from __future__ import annotations

import collections
import copy
import json
import os
import pickle
import struct
from pathlib import Path
from typing import Any, Callable

import pytest
import safetensors.torch
import torch
from safetensors import safe_open

import lowbit as lb
from lowbit.storage import PackedTensor, inspect_checkpoint
from lowbit.storage._container import header_metadata, read_header
from lowbit.testing import assert_same_bits


def state(dtype: torch.dtype = torch.float32, seed: int = 0) -> "dict[str, torch.Tensor]":
    g = torch.Generator().manual_seed(seed)
    return {
        "fc.weight": (torch.randn(16, 9, generator=g) * 3).to(dtype),
        "fc.bias": torch.randn(16, generator=g).to(dtype),
        "bn.running_var": torch.rand(16, generator=g).to(dtype),
        "bn.num_batches_tracked": torch.tensor(12, dtype=torch.int64),
        "mask": torch.tensor([True, False, True]),
    }


def rewrite(path: Path, mutate: Callable[[dict], Any]) -> None:
    """Re-save ``path`` with its lowbit JSON document changed by ``mutate`` (checksum recomputed),
    i.e. a well-formed file whose header says something else."""
    with safe_open(str(path), framework="pt") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}
        meta = f.metadata()
    doc = json.loads(meta["lowbit"])
    mutate(doc)
    text = json.dumps(doc)
    import hashlib

    meta = {"format": "pt", "lowbit": text, "lowbit_sha256": hashlib.sha256(text.encode()).hexdigest()}
    safetensors.torch.save_file(tensors, str(path), metadata=meta)


class TestRoundTrip:
    """load(save(sd)) == fmt.quantize(sd) bit for bit, in the original dtype and order."""

    @pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64])
    @pytest.mark.parametrize("spec", ["posit8_es2", "posit6_es1", "e4m3fn", "e2m1fn", "fixed8_f4", "int4",
                                      "posit16_es1", "posit32_es2"])
    def test_one_spec_for_all_floats(self, tmp_path: Path, dtype: torch.dtype, spec: str) -> None:
        sd = state(dtype)
        fmt = lb.parse_format(spec)
        lb.save(sd, tmp_path / "m.safetensors", formats=spec)
        out = lb.load(tmp_path / "m.safetensors")
        assert isinstance(out, collections.OrderedDict)
        assert list(out) == list(sd)
        for name in ("fc.weight", "fc.bias", "bn.running_var"):
            assert_same_bits(out[name], fmt.quantize(sd[name]), what=name)
        assert out["bn.num_batches_tracked"].dtype == torch.int64
        assert out["bn.num_batches_tracked"].item() == 12
        assert torch.equal(out["mask"], sd["mask"])

    def test_mixed_formats_per_name(self, tmp_path: Path) -> None:
        sd = state(torch.bfloat16)
        formats = {"fc.weight": "e2m1fn", "fc.bias": "posit8_es2", "bn.running_var": None}
        lb.save(sd, tmp_path / "m.safetensors", formats=formats)
        out = lb.load(tmp_path / "m.safetensors")
        assert_same_bits(out["fc.weight"], lb.parse_format("e2m1fn").quantize(sd["fc.weight"]))
        assert_same_bits(out["fc.bias"], lb.parse_format("posit8_es2").quantize(sd["fc.bias"]))
        assert_same_bits(out["bn.running_var"], sd["bn.running_var"])  # not in formats: as it is
        rows = {r["name"]: r for r in inspect_checkpoint(tmp_path / "m.safetensors")}
        assert rows["fc.weight"]["format"] == "e2m1fn" and rows["fc.weight"]["stored_bytes"] == 16 * 9 // 2
        assert rows["bn.running_var"]["format"] is None and rows["bn.running_var"]["bits"] == 16

    def test_no_formats_stores_everything_as_is(self, tmp_path: Path) -> None:
        sd = state(torch.float16)
        lb.save(sd, tmp_path / "m.safetensors")
        out = lb.load(tmp_path / "m.safetensors")
        for k in sd:
            assert out[k].dtype == sd[k].dtype and torch.equal(out[k], sd[k])

    def test_special_values_and_odd_shapes(self, tmp_path: Path) -> None:
        sd = {
            "special": torch.tensor([0.0, -0.0, float("inf"), -float("inf"), float("nan"), 1e-30, -1e30]),
            "scalar": torch.tensor(0.3),
            "empty": torch.zeros(0, 5),
            "odd": torch.randn(3, 7, 5),
        }
        for spec in ("posit8_es2", "e4m3fn", "e5m2", "posit6_es1"):
            fmt = lb.parse_format(spec)
            lb.save(sd, tmp_path / "m.safetensors", formats=spec)
            out = lb.load(tmp_path / "m.safetensors")
            for k, v in sd.items():
                assert_same_bits(out[k], fmt.quantize(v), what=f"{spec} {k}")

    def test_packed_tensor_values_with_scales(self, tmp_path: Path) -> None:
        w = torch.randn(8, 32)
        scale = w.abs().amax(dim=1, keepdim=True) / 7
        p = PackedTensor.from_tensor(w, "int4", scale=scale)
        lb.save({"w": p, "b": torch.ones(8)}, tmp_path / "m.safetensors")
        out = lb.load(tmp_path / "m.safetensors")
        assert_same_bits(out["w"], p.decode())
        assert out["w"].abs().sub(w.abs()).abs().max() <= scale.max() / 2 + 1e-6
        assert torch.equal(out["b"], torch.ones(8))
        row = inspect_checkpoint(tmp_path / "m.safetensors")[0]
        assert row["stored_bytes"] == 8 * 32 // 2 + 8 * 4

    def test_tied_and_sliced_tensors(self, tmp_path: Path) -> None:
        base = torch.randn(10, 4)
        sd = {"a": base, "tied": base, "slice": base[2:5], "t": base.t()}
        lb.save(sd, tmp_path / "m.safetensors")
        out = lb.load(tmp_path / "m.safetensors")
        for k in sd:
            assert torch.equal(out[k], sd[k])

    def test_str_and_pathlike_paths(self, tmp_path: Path) -> None:
        lb.save({"x": torch.ones(2)}, str(tmp_path / "a.lowbit"), formats="e4m3fn")
        assert torch.equal(lb.load(tmp_path / "a.lowbit")["x"], torch.ones(2))

    def test_overwrites_an_existing_checkpoint(self, tmp_path: Path) -> None:
        path = tmp_path / "m.safetensors"
        lb.save({"x": torch.ones(2)}, path)
        lb.save({"y": torch.zeros(3)}, path)
        assert list(lb.load(path)) == ["y"]
        assert os.listdir(tmp_path) == ["m.safetensors"]


class TestModules:
    def make(self) -> torch.nn.Module:
        torch.manual_seed(0)
        return torch.nn.Sequential(torch.nn.Linear(12, 8), torch.nn.BatchNorm1d(8), torch.nn.Linear(8, 3))

    def test_quantized_model_uses_its_formats(self, tmp_path: Path) -> None:
        model = self.make()
        lb.quantize_(model, {"weight": "posit8_es2"})
        formats = lb.tensor_formats(model)
        assert formats, "quantize_ should give the weights formats"
        lb.save(model, tmp_path / "m.safetensors")
        out = lb.load(tmp_path / "m.safetensors")
        sd = model.state_dict()
        assert list(out) == list(sd)
        for name, value in sd.items():
            fmt = formats.get(name)
            if fmt is not None:
                assert_same_bits(out[name], fmt.quantize(value), what=name)
            else:
                assert out[name].dtype == value.dtype and torch.equal(out[name], value), name
        fresh = self.make()
        fresh.load_state_dict(out)

    def test_unquantized_model_needs_formats(self, tmp_path: Path) -> None:
        with pytest.raises(TypeError, match="no layer has a 'weight' format from lowbit.quantize_.*pass formats="):
            lb.save(self.make(), tmp_path / "m.safetensors")
        assert not (tmp_path / "m.safetensors").exists()
        # activations only: nothing that save() stores, and the message says why
        model = lb.quantize_(self.make(), {"input": "posit8_es2", "grad": "e5m2"})
        with pytest.raises(TypeError, match="input, output and grad formats are not stored.*pass formats="):
            lb.save(model, tmp_path / "m.safetensors")

    def test_unquantized_model_with_one_spec(self, tmp_path: Path) -> None:
        model = self.make()
        lb.save(model, tmp_path / "m.safetensors", formats="posit8_es2")
        out = lb.load(tmp_path / "m.safetensors")
        fmt = lb.parse_format("posit8_es2")
        assert_same_bits(out["0.weight"], fmt.quantize(model[0].weight.detach()))
        assert out["1.num_batches_tracked"].dtype == torch.int64


class TestBadArguments:
    def test_formats_name_not_in_state_dict(self, tmp_path: Path) -> None:
        with pytest.raises(ValueError, match="'fc.wieght', which is not in the state dict"):
            lb.save(state(), tmp_path / "m.safetensors", formats={"fc.wieght": "posit8_es2"})
        assert list(tmp_path.iterdir()) == []

    def test_format_for_an_int_tensor(self, tmp_path: Path) -> None:
        with pytest.raises(ValueError, match="'bn.num_batches_tracked', a torch.int64 tensor"):
            lb.save(state(), tmp_path / "m.safetensors", formats={"bn.num_batches_tracked": "int8"})

    def test_bad_spec(self, tmp_path: Path) -> None:
        with pytest.raises(lb.FormatSpecError):
            lb.save(state(), tmp_path / "m.safetensors", formats="posit8")
        with pytest.raises(lb.FormatSpecError):
            lb.save(state(), tmp_path / "m.safetensors", formats={"fc.weight": "e9m9x"})
        assert list(tmp_path.iterdir()) == []

    @pytest.mark.parametrize("obj, match", [([torch.ones(2)], "obj must be an nn.Module or a state dict"),
                                            ({"a": [1.0]}, "'a' must be a torch.Tensor or PackedTensor"),
                                            ({1: torch.ones(1)}, "keys must be str")])
    def test_bad_obj(self, tmp_path: Path, obj: Any, match: str) -> None:
        with pytest.raises(TypeError, match=match):
            lb.save(obj, tmp_path / "m.safetensors")

    def test_bad_formats_type(self, tmp_path: Path) -> None:
        with pytest.raises(TypeError, match="formats must be None, a spec string"):
            lb.save(state(), tmp_path / "m.safetensors", formats=8)

    def test_name_collision_with_side_tensor(self, tmp_path: Path) -> None:
        p = PackedTensor.from_tensor(torch.ones(2, 1), "int4", scale=torch.ones(2, 1))
        with pytest.raises(ValueError, match="collides"):
            lb.save({"w": p, "w:scale": torch.ones(1)}, tmp_path / "m.safetensors")

    def test_unstorable_dtype(self, tmp_path: Path) -> None:
        with pytest.raises(ValueError, match="'z': dtype torch.complex64 cannot be stored"):
            lb.save({"z": torch.zeros(2, dtype=torch.complex64)}, tmp_path / "m.safetensors")


class TestSizes:
    """About bits/8 bytes per weight plus a small header."""

    @pytest.mark.parametrize("spec, per_weight", [("posit8_es2", 1.0), ("e4m3fn", 1.0), ("posit6_es1", 0.75),
                                                  ("e3m2fn", 0.75), ("e2m1fn", 0.5), ("int4", 0.5),
                                                  ("posit16_es1", 2.0), ("int2", 0.25)])
    def test_bytes_per_weight(self, tmp_path: Path, spec: str, per_weight: float) -> None:
        n = 1_000_000
        lb.save({"w": torch.randn(1000, 1000)}, tmp_path / "m.safetensors", formats=spec)
        size = (tmp_path / "m.safetensors").stat().st_size
        assert n * per_weight <= size <= n * per_weight + 1024, size
        assert inspect_checkpoint(tmp_path / "m.safetensors")[0]["compression"] == pytest.approx(4 / per_weight)


class TestAtomicSave:
    """A failed save leaves no file under the final name, no temporary, and an old file intact."""

    def failing_write(self, exc: BaseException) -> Callable[[int, Any], int]:
        """os.write that writes a few bytes of the checkpoint, then fails."""
        real_write = os.write

        def write(fd: int, data: Any) -> int:
            real_write(fd, bytes(data[:17]))
            raise exc

        return write

    @pytest.mark.parametrize("exc", [OSError("disk full"), KeyboardInterrupt()])
    @pytest.mark.parametrize("existing", [False, True])
    def test_failure_mid_write(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, exc: BaseException,
                               existing: bool) -> None:
        path = tmp_path / "m.safetensors"
        if existing:
            lb.save({"old": torch.ones(3)}, path)
        before = path.read_bytes() if existing else None
        monkeypatch.setattr(os, "write", self.failing_write(exc))
        with pytest.raises(type(exc)):
            lb.save(state(), path, formats="posit8_es2")
        monkeypatch.undo()
        assert sorted(os.listdir(tmp_path)) == (["m.safetensors"] if existing else [])
        if existing:
            assert path.read_bytes() == before
            assert list(lb.load(path)) == ["old"]

    @pytest.mark.parametrize("target", ["fsync", "replace"])
    def test_failure_at_fsync_or_rename(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, target: str) -> None:
        path = tmp_path / "m.safetensors"
        lb.save({"old": torch.ones(3)}, path)
        before = path.read_bytes()

        def fail(*args: Any) -> None:
            raise OSError(f"{target} failed")

        monkeypatch.setattr(os, target, fail)
        with pytest.raises(OSError, match=f"{target} failed"):
            lb.save(state(), path, formats="posit8_es2")
        monkeypatch.undo()
        assert os.listdir(tmp_path) == ["m.safetensors"]
        assert path.read_bytes() == before


def small_checkpoint(path: Path) -> None:
    sd = state(torch.float32, seed=4)
    sd["scaled"] = PackedTensor.from_tensor(torch.randn(4, 6), "int4", scale=torch.rand(4, 1) + 0.5)
    lb.save(sd, path, formats={"fc.weight": "posit6_es1", "fc.bias": "e4m3fn", "bn.running_var": "e2m1fn"})


class TestCorruption:
    """Every flipped byte and every truncation raises CheckpointError; data flips name the tensor."""

    def test_every_flipped_byte(self, tmp_path: Path) -> None:
        good_path = tmp_path / "good.safetensors"
        small_checkpoint(good_path)
        good = good_path.read_bytes()
        header = read_header(good_path)
        (n,) = struct.unpack("<Q", good[:8])
        owner = {}
        for entry in header.entries:
            for s in entry.stored:
                begin, end = header.extents[s.key]
                for i in range(8 + n + begin, 8 + n + end):
                    owner[i] = entry.name
        assert len(owner) == len(good) - 8 - n  # every data byte belongs to a tensor
        bad_path = tmp_path / "bad.safetensors"
        for i in range(len(good)):
            for mask in (0x01, 0xFF):
                corrupt = bytearray(good)
                corrupt[i] ^= mask
                bad_path.write_bytes(bytes(corrupt))
                with pytest.raises(lb.CheckpointError) as info:
                    lb.load(bad_path)
                if i in owner:
                    assert f"tensor {owner[i]!r}" in str(info.value), (i, str(info.value))
                    assert "checksum" in str(info.value)

    def test_every_truncation(self, tmp_path: Path) -> None:
        good_path = tmp_path / "good.safetensors"
        small_checkpoint(good_path)
        good = good_path.read_bytes()
        bad_path = tmp_path / "bad.safetensors"
        for cut in range(len(good)):
            bad_path.write_bytes(good[:cut])
            with pytest.raises(lb.CheckpointError):
                lb.load(bad_path)
            with pytest.raises(lb.CheckpointError):
                inspect_checkpoint(bad_path)

    def test_truncated_data_names_the_tensor(self, tmp_path: Path) -> None:
        path = tmp_path / "m.safetensors"
        lb.save({"only": torch.randn(100)}, path, formats="posit8_es2")
        path.write_bytes(path.read_bytes()[:-10])
        with pytest.raises(lb.CheckpointError, match="truncated: tensor 'only'"):
            lb.load(path)

    def test_trailing_garbage(self, tmp_path: Path) -> None:
        path = tmp_path / "m.safetensors"
        lb.save({"only": torch.randn(100)}, path, formats="posit8_es2")
        path.write_bytes(path.read_bytes() + b"\0")
        with pytest.raises(lb.CheckpointError, match="corrupt or truncated"):
            lb.load(path)


class TestNotALowbitFile:
    def test_plain_safetensors(self, tmp_path: Path) -> None:
        safetensors.torch.save_file({"w": torch.ones(2)}, str(tmp_path / "x.safetensors"))
        with pytest.raises(lb.CheckpointError, match="not a lowbit checkpoint"):
            lb.load(tmp_path / "x.safetensors")

    def test_torch_save_file(self, tmp_path: Path) -> None:
        torch.save({"w": torch.ones(2)}, tmp_path / "x.pt")
        with pytest.raises(lb.CheckpointError, match="never unpickles"):
            lb.load(tmp_path / "x.pt")

    def test_pickle_is_never_executed(self, tmp_path: Path) -> None:
        marker = tmp_path / "pwned"

        class Evil:
            def __reduce__(self) -> Any:
                return (open, (str(marker), "w"))

        (tmp_path / "evil.pkl").write_bytes(pickle.dumps(Evil(), protocol=2))
        with pytest.raises(lb.CheckpointError, match="not a lowbit checkpoint"):
            lb.load(tmp_path / "evil.pkl")
        assert not marker.exists()

    @pytest.mark.parametrize("content", [b"", b"abc", b"\0" * 8, b"hello world, not a checkpoint at all",
                                         struct.pack("<Q", 5) + b"[1,2]", struct.pack("<Q", 2) + b"{}"])
    def test_junk(self, tmp_path: Path, content: bytes) -> None:
        (tmp_path / "x").write_bytes(content)
        with pytest.raises(lb.CheckpointError):
            lb.load(tmp_path / "x")

    def test_missing_file_and_directory(self, tmp_path: Path) -> None:
        with pytest.raises(lb.CheckpointError, match="cannot read"):
            lb.load(tmp_path / "nope.safetensors")
        with pytest.raises(lb.CheckpointError, match="cannot read"):
            lb.load(tmp_path)


class TestHeader:
    """Well-formed files whose lowbit header is wrong, missing fields, or from the future."""

    @pytest.fixture()
    def path(self, tmp_path: Path) -> Path:
        p = tmp_path / "m.safetensors"
        small_checkpoint(p)
        return p

    def test_newer_container_version(self, path: Path) -> None:
        rewrite(path, lambda d: d.update(container_version=3, tensors="a different layout"))
        with pytest.raises(
            lb.CheckpointError, match=r"written by a newer lowbit: container version 3 > supported 2; upgrade lowbit"
        ):
            lb.load(path)
        with pytest.raises(lb.CheckpointError, match="newer lowbit"):
            inspect_checkpoint(path)

    @pytest.mark.parametrize(
        "mutate, match",
        [
            (lambda d: d.pop("tensors"), "field 'tensors' must be a list"),
            (lambda d: d.pop("container_version"), "field 'container_version' must be a positive int"),
            (lambda d: d.update(container_version="1"), "field 'container_version' must be a positive int"),
            (lambda d: d.pop("lowbit_version"), "field 'lowbit_version' must be a string"),
            (lambda d: d["tensors"][0].pop("sha256"), "tensor 'fc.weight': missing field\\(s\\) 'sha256'"),
            (lambda d: d["tensors"][0].pop("name"), "tensor #0: field 'name' must be a string"),
            (lambda d: d["tensors"][0].update(dtype="float128"), "tensor 'fc.weight': field 'dtype' must be one of"),
            (lambda d: d["tensors"][0].update(shape=[16, -9]), "tensor 'fc.weight': field 'shape'"),
            (lambda d: d["tensors"][0].update(shape=[9, 16]), "tensor 'fc.weight' is corrupt \\(its sha256"),
            (lambda d: d["tensors"][0].update(shape=[16, 10]), "tensor 'fc.weight': stored tensor 'fc.weight' is U8"),
            (lambda d: d["tensors"][2].update(dtype="float16"), "tensor 'bn.running_var' is corrupt \\(its sha256"),
            (lambda d: d["tensors"][0]["packing"].update(bit_order="msb_first"), "'bit_order' must be 'lsb_first'"),
            (lambda d: d["tensors"][0]["packing"].update(bits=0), "packing 'bits' must be an int in 1..32"),
            (lambda d: d["tensors"][0].update(format="posit6_es9"), "tensor 'fc.weight': unknown format 'posit6_es9'"),
            (lambda d: d["tensors"][0].update(format="e3m2fn"), "tensor 'fc.weight' is corrupt \\(its sha256"),
            (lambda d: d["tensors"][1].update(sha256="0" * 64), "tensor 'fc.bias' is corrupt \\(its sha256"),
            (lambda d: d["tensors"][0].update(name="other"), "tensor 'other': stored tensor 'other' is missing"),
            (lambda d: d["tensors"].append(dict(d["tensors"][0])), "tensor 'fc.weight' is listed twice"),
            (lambda d: d["tensors"].pop(), "stored tensor\\(s\\) \\['scaled'"),
            (lambda d: d["tensors"][3].update(format="int8"), "tensor 'bn.num_batches_tracked': field 'packing' must be"),
            (lambda d: d["tensors"][3].update(params={"x": {}}), "tensor 'bn.num_batches_tracked': a tensor without"),
            (lambda d: d["tensors"][5]["scale"].update(axis=None), "tensor 'scaled' is corrupt \\(its sha256"),
            (lambda d: d["tensors"][5]["scale"].update(axis=7), "scale 'axis' must be null or an int in \\[0, 2\\)"),
            (lambda d: d["tensors"][5]["scale"].update(group_size=2), "tensor 'scaled' is corrupt \\(its sha256"),
            (lambda d: d["tensors"][5]["scale"].update(group_size=0), "scale 'group_size' must be an int >= 1"),
            (lambda d: d["tensors"][5]["scale"].update(zero_point=3), "scale has unknown field\\(s\\) \\['zero_point'\\]"),
            (lambda d: d.update(comment="hi"), "the document has unknown field\\(s\\) \\['comment'\\]"),
            (lambda d: d["tensors"][0].update(zero_point=3), "the entry has unknown field\\(s\\) \\['zero_point'\\]"),
            (lambda d: d["tensors"][0]["packing"].update(endian="big"), "packing has unknown field\\(s\\) \\['endian'\\]"),
            (lambda d: d["tensors"][1].update(alias_of="fc.weight"), "'alias_of' entry needs container version 2"),
        ],
    )
    def test_bad_header(self, path: Path, mutate: Callable[[dict], Any], match: str) -> None:
        rewrite(path, mutate)
        with pytest.raises(lb.CheckpointError, match=match):
            lb.load(path)

    def test_header_checksum(self, path: Path) -> None:
        with safe_open(str(path), framework="pt") as f:
            tensors = {k: f.get_tensor(k) for k in f.keys()}
            meta = f.metadata()
        meta["lowbit"] = meta["lowbit"].replace('"posit6_es1"', '"posit6_es2"')  # checksum left stale
        safetensors.torch.save_file(tensors, str(path), metadata=meta)
        with pytest.raises(lb.CheckpointError, match="does not match its sha256"):
            lb.load(path)
        del meta["lowbit_sha256"]
        safetensors.torch.save_file(tensors, str(path), metadata=meta)
        with pytest.raises(lb.CheckpointError, match="corrupt header"):
            lb.load(path)

    def test_header_metadata_is_one_json_document(self, path: Path) -> None:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata()
        assert set(meta) == {"format", "lowbit", "lowbit_sha256"}
        doc = json.loads(meta["lowbit"])
        assert doc["container_version"] == 1 and doc["lowbit_version"] == lb.__version__
        first = doc["tensors"][0]
        assert first["name"] == "fc.weight" and first["format"] == "posit6_es1" and first["shape"] == [16, 9]
        assert first["packing"] == {"bits": 6, "bit_order": "lsb_first"} and first["dtype"] == "float32"
        assert header_metadata([], "x")["format"] == "pt"


class TestDataDependentFormats:
    """MX / binary / ternary / codebook tensors store their side parameters next to the codes."""

    @pytest.mark.parametrize("spec", ["mxfp8_e4m3fn", "mxfp4_e2m1fn", "mxint8", "binary", "ternary", "codebook4"])
    @pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
    def test_round_trip_and_param_corruption(self, tmp_path: Path, spec: str, dtype: torch.dtype) -> None:
        try:
            fmt = lb.parse_format(spec)
        except lb.FormatSpecError:
            pytest.skip(f"parse_format does not know {spec!r} yet")
        g = torch.Generator().manual_seed(9)
        sd = {"w": (torch.randn(8, 64, generator=g) * 2).to(dtype), "b": torch.randn(8, generator=g).to(dtype)}
        path = tmp_path / "m.safetensors"
        lb.save(sd, path, formats={"w": spec})
        out = lb.load(path)
        assert_same_bits(out["w"], fmt.quantize(sd["w"]))
        assert_same_bits(out["b"], sd["b"])
        header = read_header(path)
        (entry,) = [e for e in header.entries if e.name == "w"]
        assert entry.params, f"{spec} should store side parameters"
        side = sum(s.nbytes for s in entry.params)
        assert inspect_checkpoint(path)[0]["stored_bytes"] == (8 * 64 * fmt.bits + 7) // 8 + side
        raw = bytearray(path.read_bytes())
        (n,) = struct.unpack("<Q", raw[:8])
        begin, _ = header.extents[entry.params[0].key]
        raw[8 + n + begin] ^= 0x04
        path.write_bytes(bytes(raw))
        with pytest.raises(lb.CheckpointError, match="tensor 'w' is corrupt"):
            lb.load(path)


class TestGroupScales:
    """Per-group float scales are stored one per group (not expanded to the tensor's shape)."""

    GROUP = {"format": "int4", "scaling": "absmax", "granularity": {"kind": "group", "axis": 1, "group_size": 32}}

    @pytest.mark.parametrize("layer", ["linear", "conv"])
    def test_round_trip_is_exact_and_small(self, tmp_path: Path, layer: str) -> None:
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(256, 96) if layer == "linear" else torch.nn.Conv2d(64, 48, 3))
        w = model[0].weight
        w.data[3] = 0.0  # an all-zero row: its groups' scales are 0 in simulation, stored as 1, decoded as 0
        lb.quantize_(model, {"weight": self.GROUP})
        with torch.no_grad():
            simulated = model[0]._lowbit_weight().clone()
        path = tmp_path / "g.lowbit"
        lb.save(model, path)
        loaded = lb.load(path)
        assert_same_bits(loaded["0.weight"], simulated)
        groups = w.numel() // 32
        codes = w.numel() // 2
        entry = next(e for e in read_header(path).entries if e.name == "0.weight")
        assert entry.group_size == 32 and entry.axis == 1 and entry.scale.nbytes == 4 * groups
        # codes + one float32 per group + the float32 bias + the header: far below 4 bytes per weight
        assert path.stat().st_size < codes + 4 * groups + 4 * model[0].bias.numel() + 4096

    def test_packed_model_from_a_group_checkpoint(self, tmp_path: Path) -> None:
        torch.manual_seed(1)
        model = torch.nn.Sequential(torch.nn.Linear(128, 40))
        lb.quantize_(model, {"weight": self.GROUP})
        x = torch.randn(5, 128)
        with torch.no_grad():
            want = model(x)
        path = tmp_path / "g.lowbit"
        lb.save(model, path)
        packed = lb.pack_(copy.deepcopy(model))
        assert packed[0].packed_weight.group_size == 32
        assert packed[0].packed_nbytes == 128 * 40 // 2 + 4 * 40 * 4
        with torch.no_grad():
            assert torch.equal(packed(x), want)
        rebuilt = lb.pack_(torch.nn.Sequential(torch.nn.Linear(128, 40)), lb.load_packed(path))
        with torch.no_grad():
            assert torch.equal(rebuilt(x), want)
        again = lb.pack_(torch.nn.Sequential(torch.nn.Linear(128, 40)), "int4")
        again.load_state_dict(packed.state_dict())  # the physical state dict carries group_size
        assert again[0].packed_weight.group_size == 32
        with torch.no_grad():
            assert torch.equal(again(x), want)


class TestGroupScaledPackedTensor:
    def test_decode_equals_the_expanded_rule(self) -> None:
        g = torch.Generator().manual_seed(3)
        x = torch.randn(6, 12, 2, generator=g)
        scale = torch.rand(6, 3, 2, generator=g) + 0.1
        p = PackedTensor.from_tensor(x, "e2m1fn", scale=scale, axis=1, group_size=4)
        full = scale.repeat_interleave(4, dim=1)
        want = lb.parse_format("e2m1fn").quantize(x / full) * full
        assert torch.equal(p.decode(), want)
        assert p.nbytes == 6 * 12 * 2 // 2 + 4 * scale.numel()

    @pytest.mark.parametrize("kwargs, match", [
        ({"scale": torch.ones(4, 3), "axis": 1, "group_size": 5}, "does not divide the size 12"),
        ({"scale": torch.ones(4, 3), "group_size": 4}, "needs the grouped axis"),
        ({"scale": torch.ones(4, 12), "axis": 1, "group_size": 4}, "grouped shape"),
        ({"scale": None, "group_size": 4}, "needs a scale"),
        ({"scale": torch.ones(4, 3), "axis": 1, "group_size": 0}, "group_size=0"),
    ])
    def test_bad_group_arguments(self, kwargs: "dict[str, Any]", match: str) -> None:
        with pytest.raises(ValueError, match=match):
            PackedTensor.from_tensor(torch.ones(4, 12), "int4", **kwargs)


def test_packed_conv_with_groups_along_input_channels() -> None:
    torch.manual_seed(2)
    model = torch.nn.Sequential(torch.nn.Conv2d(64, 8, 3))
    lb.quantize_(model, {"weight": TestGroupScales.GROUP})
    x = torch.randn(2, 64, 6, 6)
    with torch.no_grad():
        want = model(x)
        packed = lb.pack_(copy.deepcopy(model))
        assert packed[0].packed_weight.scale.shape == (8, 2, 3, 3)  # one scale per group of 32 input channels
        assert torch.equal(packed(x), want)
