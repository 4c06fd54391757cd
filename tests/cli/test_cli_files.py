"""The command line never replaces the user's input, and never lets a name or path drive the terminal."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import lowbit as lb
from lowbit.cli import main
from lowbit.formats import PRESETS


def run(capsys: pytest.CaptureFixture[str], *argv: object) -> "tuple[int, str, str]":
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def model_pt(tmp_path: Path) -> Path:
    torch.manual_seed(0)
    path = tmp_path / "model.pt"
    torch.save({"fc.weight": torch.randn(6, 8), "fc.bias": torch.randn(6)}, path)
    return path


class TestPackNeverReplacesItsInput:
    @pytest.mark.parametrize("spelling", ["same", "relative", "dotted", "symlink", "hardlink"])
    def test_output_naming_the_input_is_refused(self, capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch, model_pt: Path,
                                                spelling: str) -> None:
        monkeypatch.chdir(tmp_path)
        output = {"same": model_pt, "relative": Path("model.pt"), "dotted": Path("sub/../model.pt"),
                  "symlink": tmp_path / "link.pt", "hardlink": tmp_path / "hard.pt"}[spelling]
        (tmp_path / "sub").mkdir()
        if spelling == "symlink":
            os.symlink(model_pt, output)
        if spelling == "hardlink":
            os.link(model_pt, output)
        before = model_pt.read_bytes()
        code, out, err = run(capsys, "pack", model_pt, "--format", "int4", "-o", output)
        assert code == 2 and out == ""
        assert "is the model file MODEL" in err and "--force" in err and "Traceback" not in err
        assert model_pt.read_bytes() == before
        assert torch.load(model_pt, weights_only=True)["fc.weight"].dtype == torch.float32

    def test_output_naming_the_plan_is_refused(self, capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                               model_pt: Path) -> None:
        plan = tmp_path / "plan.json"
        plan.write_text(json.dumps({"weight": "int4"}))
        code, _, err = run(capsys, "pack", model_pt, "--config", plan, "-o", plan)
        assert code == 2 and "is the plan --config" in err
        assert json.loads(plan.read_text()) == {"weight": "int4"}

    def test_force_replaces_the_input(self, capsys: pytest.CaptureFixture[str], model_pt: Path) -> None:
        original = torch.load(model_pt, weights_only=True)
        code, out, _ = run(capsys, "pack", model_pt, "--format", "int4", "-o", model_pt, "--force")
        assert code == 0 and "packed 1 of 2 tensors" in out
        assert torch.equal(lb.load(model_pt)["fc.weight"], lb.parse_format("int4").quantize(original["fc.weight"]))


def odd_checkpoint(path: Path) -> "list[str]":
    names = ["layer[0].weight", "[bold]loud[/bold]", "[/]", "\x1b[31mred\x1b[0m", "new\nline", "[link=http://x]y"]
    lb.save({n: torch.ones(4, 4) for n in names}, path, formats="int4")
    return names


class TestInspectShowsNamesAsTheyAre:
    def test_markup_and_escapes_in_names(self, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
        path = tmp_path / "m.lowbit"
        odd_checkpoint(path)
        code, out, err = run(capsys, "inspect", path)
        assert code == 0, err
        for shown in ["layer[0].weight", "[bold]loud[/bold]", "[/]", "\\x1b[31mred\\x1b[0m", "new\\nline",
                      "[link=http://x]y"]:
            assert shown in out, shown
        assert "\x1b" not in out

    def test_tied_tensor_is_shown_as_tied(self, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
        w = torch.randn(4, 4)
        lb.save({"emb.weight": w, "head.weight": w}, tmp_path / "m.lowbit", formats="int8")
        code, out, _ = run(capsys, "inspect", tmp_path / "m.lowbit")
        assert code == 0 and "tied: same tensor as emb.weight" in out

    def test_escapes_in_error_messages(self, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
        code, out, err = run(capsys, "inspect", tmp_path / "\x1b[2Jgone.lowbit")
        assert code == 2 and "\x1b" not in err and "\\x1b[2Jgone.lowbit: no such file" in err
        bad = tmp_path / "\x1b[2Jbad.lowbit"
        bad.write_bytes(b"not a checkpoint at all")
        code, out, err = run(capsys, "inspect", bad)
        assert code == 2 and "\x1b" not in err and "not a lowbit checkpoint" in err


@pytest.mark.parametrize("kind", ["directory", "fifo"])
def test_non_regular_files_are_named_as_such(capsys: pytest.CaptureFixture[str], tmp_path: Path, model_pt: Path,
                                             kind: str) -> None:
    odd = tmp_path / "odd"
    odd.mkdir() if kind == "directory" else os.mkfifo(odd)
    for argv in (["inspect", odd], ["pack", odd, "--format", "int4", "-o", tmp_path / "o.lowbit"],
                 ["pack", model_pt, "--config", odd, "-o", tmp_path / "o.lowbit"]):
        code, _, err = run(capsys, *argv)
        assert code == 2 and f"{odd}: not a regular file" in err, err


class TestFormatsWhenPiped:
    def every_preset_whole(self, out: str) -> None:
        cells = {cell.strip() for line in out.splitlines() for cell in line.split("│")}
        for presets in PRESETS.values():
            for spec in presets:
                assert spec in cells, spec

    def test_captured(self, capsys: pytest.CaptureFixture[str]) -> None:
        code, out, _ = run(capsys, "formats")
        assert code == 0
        self.every_preset_whole(out)

    def test_through_a_real_pipe_at_any_columns(self) -> None:
        env = {**os.environ, "COLUMNS": "40"}
        done = subprocess.run([sys.executable, "-m", "lowbit", "formats"], capture_output=True, text=True,
                              check=True, env=env)
        self.every_preset_whole(done.stdout)
        assert "…" not in done.stdout

    def test_reader_closing_the_pipe_early_is_quiet(self, monkeypatch: pytest.MonkeyPatch,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
        class HeadPipe:
            """stdout of `lowbit formats | head -3`: the table fits in the pipe's buffer, then head has
            exited and the next lines meet a closed pipe."""

            closed = False

            def write(self, text: str) -> int:
                self.closed = self.closed or "Spec grammar" in text
                if self.closed:
                    raise BrokenPipeError(32, "Broken pipe")
                return len(text)

            def flush(self) -> None:
                if self.closed:
                    raise BrokenPipeError(32, "Broken pipe")

            def isatty(self) -> bool:
                return False

        monkeypatch.setattr(sys, "stdout", HeadPipe())
        assert main(["formats"]) == 0
        assert capsys.readouterr().err == ""
