"""inspect_checkpoint: per-tensor rows read from the header alone."""

from __future__ import annotations

from pathlib import Path

import torch

import lowbit as lb
from lowbit.storage import PackedTensor, inspect_checkpoint


def test_rows(tmp_path: Path) -> None:
    path = tmp_path / "m.safetensors"
    sd = {
        "w": torch.randn(64, 48, dtype=torch.bfloat16),
        "s": PackedTensor.from_tensor(torch.randn(8, 10), "int4", scale=torch.ones(8, 1)),
        "b": torch.zeros(64, dtype=torch.float16),
        "n": torch.tensor(5),
    }
    lb.save(sd, path, formats={"w": "posit6_es1"})
    rows = inspect_checkpoint(path)
    assert [r["name"] for r in rows] == ["w", "s", "b", "n"]
    assert set(rows[0]) == {"name", "format", "dtype", "bits", "shape", "numel", "stored_bytes", "fp32_bytes",
                            "compression", "bits_per_element", "scale", "alias_of"}
    w, s, b, n = rows
    assert (w["format"], w["dtype"], w["bits"], w["shape"], w["numel"]) == ("posit6_es1", "bfloat16", 6, [64, 48], 3072)
    assert (w["stored_bytes"], w["fp32_bytes"], w["compression"]) == (2304, 12288, 12288 / 2304)
    assert (s["format"], s["bits"], s["stored_bytes"]) == ("int4", 4, 40 + 8 * 4)  # codes + float32 scales
    assert s["scale"] == "channel (axis 0)" and s["bits_per_element"] == 8 * 72 / 80
    assert w["scale"] is None and w["bits_per_element"] == 6.0 and w["alias_of"] is None
    assert (b["format"], b["bits"], b["stored_bytes"], b["compression"]) == (None, 16, 128, 2.0)
    assert (n["format"], n["dtype"], n["bits"], n["shape"]) == (None, "int64", 64, [])


def test_empty_tensor_has_no_ratio(tmp_path: Path) -> None:
    lb.save({"e": torch.zeros(0, 3)}, tmp_path / "m.safetensors", formats="posit8_es2")
    (row,) = inspect_checkpoint(tmp_path / "m.safetensors")
    assert row["stored_bytes"] == 0 and row["compression"] is None


def test_scale_kinds_and_real_bits_per_element(tmp_path: Path) -> None:
    path = tmp_path / "m.safetensors"
    x = torch.randn(4, 64)
    sd = {
        "g": PackedTensor.from_tensor(x, "int4", scale=torch.ones(4, 2), axis=1, group_size=32),
        "t": PackedTensor.from_tensor(x, "int8", scale=0.5),
        "mx": PackedTensor.from_tensor(x, "mxfp4_e2m1fn"),
    }
    lb.save(sd, path)
    g, t, mx = inspect_checkpoint(path)
    assert g["scale"] == "group 32 (axis 1)" and g["bits_per_element"] == 4 + 32 / 32
    assert t["scale"] == "tensor" and t["bits_per_element"] == 8 + 32 / 256
    assert mx["scale"] is None and mx["bits_per_element"] == 4 + 8 / 32  # one E8M0 byte per block of 32
