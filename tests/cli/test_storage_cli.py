"""``lowbit pack`` and ``lowbit inspect``: a tiny model packed from a state dict, then inspected; errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

import lowbit as lb
from lowbit.cli import main
from lowbit.storage import PackedTensor


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def tiny() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 6 * 6, 10))


@pytest.fixture
def model_pt(tmp_path: Path) -> Path:
    path = tmp_path / "model.pt"
    torch.save(tiny().state_dict(), path)
    return path


def write_json(path: Path, obj: object) -> Path:
    path.write_text(json.dumps(obj))
    return path


class TestPack:
    def test_quantconfig_plan_then_inspect(self, capsys, monkeypatch, tmp_path: Path, model_pt: Path) -> None:
        monkeypatch.setenv("COLUMNS", "200")
        plan = write_json(tmp_path / "plan.json", {"weight": "posit8_es2", "layers": {"4": {"weight": "int4"}}})
        out_path = tmp_path / "model.lowbit"
        code, out, err = run(capsys, "pack", model_pt, "--config", plan, "-o", out_path)
        assert code == 0 and err == "" and "packed 2 of 9 tensors" in out
        sd, original = lb.load(out_path), tiny().state_dict()
        assert torch.equal(sd["0.weight"], lb.parse_format("posit8_es2").quantize(original["0.weight"]))
        assert torch.equal(sd["4.weight"], lb.parse_format("int4").quantize(original["4.weight"]))
        for key in ("0.bias", "1.weight", "1.running_var", "1.num_batches_tracked", "4.bias"):  # as they are
            assert torch.equal(sd[key], original[key])

        code, out, err = run(capsys, "inspect", out_path)
        assert code == 0 and err == ""
        lines = {line.split("│")[1].strip(): line for line in out.splitlines() if line.count("│") > 3}
        assert "posit8_es2" in lines["0.weight"] and "216" in lines["0.weight"] and "4.00x" in lines["0.weight"]
        assert "int4" in lines["4.weight"] and "1,440" in lines["4.weight"] and "8.00x" in lines["4.weight"]
        assert "as is (float32)" in lines["1.running_mean"] and "total" in lines
        assert f"file: {out_path.stat().st_size:,} bytes" in out

    def test_inspect_json_totals(self, capsys, tmp_path: Path, model_pt: Path) -> None:
        out_path = tmp_path / "m.lowbit"
        assert run(capsys, "pack", model_pt, "--format", "e4m3fn", "-o", out_path)[0] == 0
        code, out, _ = run(capsys, "inspect", out_path, "--json")
        doc = json.loads(out)
        assert code == 0 and doc["file_bytes"] == out_path.stat().st_size
        rows = {r["name"]: r for r in doc["tensors"]}
        assert rows["0.weight"]["format"] == "e4m3fn" and rows["1.weight"]["format"] is None  # 1-d: a BN scale
        assert doc["stored_bytes"] == sum(r["stored_bytes"] for r in doc["tensors"])

    def test_flat_plan(self, capsys, tmp_path: Path, model_pt: Path) -> None:
        plan = write_json(tmp_path / "plan.json", {"0": "posit6_es1", "4.bias": "bf16", "1.running_var": None})
        out_path = tmp_path / "m.lowbit"
        assert run(capsys, "pack", model_pt, "--config", plan, "-o", out_path)[0] == 0
        packed = lb.load_packed(out_path)
        assert str(packed["0.weight"].format) == "posit6_es1" and str(packed["4.bias"].format) == "e8m7"
        assert not isinstance(packed["4.weight"], PackedTensor)

    def test_scaled_roles_and_exclude(self, capsys, tmp_path: Path, model_pt: Path) -> None:
        plan = write_json(tmp_path / "plan.json", {
            "weight": {"format": "int4", "scaling": "absmax", "granularity": "channel"},
            "input": "e4m3fn",  # simulation only: ignored by storage
            "exclude": ["0"],
        })
        out_path = tmp_path / "m.lowbit"
        assert run(capsys, "pack", model_pt, "--config", plan, "-o", out_path)[0] == 0
        packed = lb.load_packed(out_path)
        assert not isinstance(packed["0.weight"], PackedTensor)
        w = packed["4.weight"]
        assert w.scale is not None and w.scale.shape == (10, 1)
        sim = lb.quantize_(tiny(), {"weight": {"format": "int4", "scaling": "absmax", "granularity": "channel"}})
        assert torch.equal(w.decode(), sim[4]._lowbit_weight())

    def test_safetensors_model_file(self, capsys, tmp_path: Path) -> None:
        from safetensors.torch import save_file

        path = tmp_path / "model.safetensors"
        save_file(tiny().state_dict(), path)
        assert run(capsys, "pack", path, "--format", "int8", "-o", tmp_path / "m.lowbit")[0] == 0

    def test_module_entry_point(self, tmp_path: Path, model_pt: Path) -> None:
        import subprocess
        import sys

        out_path = tmp_path / "m.lowbit"
        res = subprocess.run([sys.executable, "-m", "lowbit", "pack", str(model_pt), "--format", "posit8_es2",
                              "-o", str(out_path)], capture_output=True, text=True, check=False)
        assert res.returncode == 0, res.stderr
        assert out_path.is_file()


class TestErrors:
    @pytest.mark.parametrize(
        "plan, message",
        [
            ({"weight": "posit8"}, "bad plan: .*posit8"),
            ({"weight": "int4", "layers": {"nope": {"weight": "int8"}}}, "'nope' matches no layer"),
            ({"nope.*": "int4"}, "'nope.\\*' matches no tensor or layer"),
            ({"weight": "int4", "layers": {"type:Linear": {"weight": "int8"}}}, "no layer types"),
            ({"weight": "int4", "colour": "red"}, "bad plan: .*unknown"),
            ({"1.num_batches_tracked": "int4"}, "only float tensors take a format"),
        ],
    )
    def test_bad_plans(self, capsys, tmp_path: Path, model_pt: Path, plan: dict, message: str) -> None:
        path = write_json(tmp_path / "plan.json", plan)
        code, out, err = run(capsys, "pack", model_pt, "--config", path, "-o", tmp_path / "m.lowbit")
        assert code == 2 and out == ""
        assert err.startswith("lowbit pack: error:")
        import re

        assert re.search(message, err), err
        assert not (tmp_path / "m.lowbit").exists()

    def test_plan_not_json(self, capsys, tmp_path: Path, model_pt: Path) -> None:
        (tmp_path / "plan.json").write_text("{weight: int4")
        code, _, err = run(capsys, "pack", model_pt, "--config", tmp_path / "plan.json", "-o", tmp_path / "m.lowbit")
        assert code == 2 and "not valid JSON" in err

    def test_plan_not_an_object(self, capsys, tmp_path: Path, model_pt: Path) -> None:
        path = write_json(tmp_path / "plan.json", ["int4"])
        code, _, err = run(capsys, "pack", model_pt, "--config", path, "-o", tmp_path / "m.lowbit")
        assert code == 2 and "must be a JSON object" in err

    def test_missing_files(self, capsys, tmp_path: Path, model_pt: Path) -> None:
        code, _, err = run(capsys, "pack", tmp_path / "nope.pt", "--format", "int4", "-o", tmp_path / "m.lowbit")
        assert code == 2 and "nope.pt: no such file" in err
        code, _, err = run(capsys, "pack", model_pt, "--config", tmp_path / "plan.json", "-o", tmp_path / "m.lowbit")
        assert code == 2 and "plan.json: no such file" in err
        code, _, err = run(capsys, "inspect", tmp_path / "nope.lowbit")
        assert code == 2 and "nope.lowbit: no such file" in err

    def test_no_formats_given(self, capsys, tmp_path: Path, model_pt: Path) -> None:
        code, _, err = run(capsys, "pack", model_pt, "-o", tmp_path / "m.lowbit")
        assert code == 2 and "--config" in err

    def test_model_file_that_is_not_a_state_dict(self, capsys, tmp_path: Path) -> None:
        whole = tmp_path / "whole.pt"
        torch.save(tiny(), whole)  # the model object, not its state dict: weights-only loading refuses it
        code, _, err = run(capsys, "pack", whole, "--format", "int4", "-o", tmp_path / "m.lowbit")
        assert code == 2 and "weights-only torch state dict" in err
        listed = tmp_path / "list.pt"
        torch.save([torch.zeros(2)], listed)
        code, _, err = run(capsys, "pack", listed, "--format", "int4", "-o", tmp_path / "m.lowbit")
        assert code == 2 and "expected a state dict" in err
        junk = tmp_path / "junk.bin"
        junk.write_bytes(b"hello world, not a model")
        code, _, err = run(capsys, "pack", junk, "--format", "int4", "-o", tmp_path / "m.lowbit")
        assert code == 2 and "not a model file" in err

    def test_inspect_a_file_that_is_not_lowbit(self, capsys, tmp_path: Path, model_pt: Path) -> None:
        code, _, err = run(capsys, "inspect", model_pt)
        assert code == 2 and "not a lowbit checkpoint" in err
        text = tmp_path / "notes.txt"
        text.write_text("just text")
        code, _, err = run(capsys, "inspect", text)
        assert code == 2 and "not a lowbit checkpoint" in err

    def test_inspect_a_corrupt_file(self, capsys, tmp_path: Path, model_pt: Path) -> None:
        out_path = tmp_path / "m.lowbit"
        assert run(capsys, "pack", model_pt, "--format", "int4", "-o", out_path)[0] == 0
        data = out_path.read_bytes()
        out_path.write_bytes(data[: len(data) // 2])
        code, _, err = run(capsys, "inspect", out_path)
        assert code == 2 and "truncated" in err
