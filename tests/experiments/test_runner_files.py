"""The runner's files: a reader can always tell a finished run; an interrupted one never passes for it."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from lowbit.cli import main
from lowbit.experiments import runner
from tests.experiments import fake_experiment  # noqa: F401  (importable: the runner loads it by name)


@pytest.fixture(autouse=True)
def fake(monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("matplotlib", reason="the runner checks for matplotlib first")
    monkeypatch.setitem(runner.EXPERIMENTS, "fake", "tests.experiments.fake_experiment")


def snapshot(directory: Path) -> "dict[str, bytes]":
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir()) if p.is_file()}


def finished(directory: Path) -> bool:
    """The reader's rule: results.json says complete and no marker is present."""
    path = directory / "results.json"
    return (path.exists() and json.loads(path.read_text()).get("status") == "complete"
            and not (directory / runner.INCOMPLETE_MARKER).exists())


def run(out: Path, **overrides: object) -> runner.RunResult:
    return runner.run_experiment("fake", out_dir=out, overrides=overrides, quiet=True)


class TestFinishedRun:
    def test_files_status_and_list(self, tmp_path: Path) -> None:
        result = run(tmp_path / "out")
        out = tmp_path / "out"
        assert sorted(os.listdir(out)) == ["plot.png", "report.md", "results.csv", "results.json", "samples.npz"]
        record = json.loads((out / "results.json").read_text())
        assert record["status"] == "complete" and list(record)[-1] == "status"
        assert record["files"] == ["results.json", "results.csv", "report.md", "plot.png", "samples.npz"]
        assert [p.name for p in result.files] == record["files"] and all(p.parent == out for p in result.files)
        assert result.out_dir == out and finished(out)

    def test_into_the_current_directory(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.chdir(tmp_path)
        (tmp_path / "mine.txt").write_text("the user's own file")
        run(Path("."))
        assert finished(tmp_path) and (tmp_path / "mine.txt").read_text() == "the user's own file"
        assert not [p for p in os.listdir(tmp_path) if p.startswith(".")]


class TestInterrupted:
    @pytest.mark.parametrize("step", ["run", "plot", "report"])
    def test_ctrl_c_while_writing_leaves_the_old_run_intact(self, tmp_path: Path, step: str) -> None:
        out = tmp_path / "out"
        run(out)
        before = snapshot(out)
        with pytest.raises(KeyboardInterrupt):
            run(out, label="second", fail_in=step)
        assert snapshot(out) == before  # byte for byte: no new JSON beside an old CSV, no truncated PNG
        assert sorted(os.listdir(out)) == sorted(before)  # no staging directory left
        assert finished(out)

    def test_ctrl_c_while_writing_json_leaves_the_old_run_intact(self, tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
        out = tmp_path / "out"
        run(out)
        before = snapshot(out)
        real = Path.write_text

        def write_text(self: Path, data: str, *args: object, **kwargs: object) -> int:
            if self.name == "results.json":
                real(self, data[:50])
                raise KeyboardInterrupt
            return real(self, data, *args, **kwargs)

        with monkeypatch.context() as m, pytest.raises(KeyboardInterrupt):
            m.setattr(Path, "write_text", write_text)
            run(out, label="second")
        assert snapshot(out) == before and sorted(os.listdir(out)) == sorted(before)

    def test_ctrl_c_while_moving_in_is_marked_incomplete(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        out = tmp_path / "out"
        run(out)
        real, calls = os.replace, []

        def replace(src: object, dst: object) -> None:
            calls.append(dst)
            if len(calls) == 2:
                raise KeyboardInterrupt
            real(src, dst)

        with monkeypatch.context() as m, pytest.raises(KeyboardInterrupt):
            m.setattr(os, "replace", replace)
            run(out, label="second")
        assert (out / runner.INCOMPLETE_MARKER).exists() and not (out / "results.json").exists()
        assert not finished(out)
        run(out, label="third")  # the next run finishes and clears the marker
        assert finished(out) and json.loads((out / "results.json").read_text())["rows"][0]["label"] == "third"

    def test_staging_of_a_killed_run_is_removed_by_the_next(self, tmp_path: Path) -> None:
        out = tmp_path / "out"
        out.mkdir()
        dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                              text=True, check=True)
        stale = out / f".lowbit-run.{int(dead.stdout)}.abc.partial"
        live = out / f".lowbit-run.{os.getppid()}.abc.partial"
        for d in (stale, live):
            d.mkdir()
            (d / "results.json").write_text("{}")
        run(out)
        assert not stale.exists() and live.exists()


class TestTerminal:
    def test_cli_prints_a_summary_and_the_report_path(self, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
        assert main(["run", "fake", "--out", str(tmp_path / "o")]) == 0
        out = capsys.readouterr().out
        lines = out.strip().splitlines()
        assert len(lines) <= 6, out
        assert lines[0].startswith("fake: 3 result rows in ")
        assert "note: optional data missing: install it with `pip install 'lowbit[pretrained]'`" in lines
        assert lines[-1] == f"report: {tmp_path / 'o' / 'report.md'}"
        assert "1 PNG (plot.png)" in out
        assert "label first: 3 rows" not in out  # the report body stays in report.md

    def test_notes_keep_their_brackets(self) -> None:
        from rich.console import Console

        buf = io.StringIO()
        ctx = runner.RunContext(out_dir=Path("."), console=Console(file=buf, width=200))
        ctx.note("install it with `pip install 'lowbit[pretrained]'`; see [/] and [bold]x[/bold]")
        assert "pip install 'lowbit[pretrained]'`; see [/] and [bold]x[/bold]" in buf.getvalue()
