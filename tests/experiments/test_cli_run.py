"""`lowbit run`: listing, errors (the run itself is covered by test_runner)."""

from __future__ import annotations

import subprocess
import sys

from lowbit.cli import main


def test_list(capsys):
    assert main(["run", "--list"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("weight-formats") and "default" in out


def test_unknown_name_is_a_clear_error(capsys):
    assert main(["run", "no-such-experiment"]) == 2
    err = capsys.readouterr().err
    assert "unknown experiment 'no-such-experiment'" in err and "weight-formats" in err


def test_unwritable_out(capsys, tmp_path):
    blocker = tmp_path / "f"
    blocker.write_text("")
    assert main(["run", "--quick", "--out", str(blocker / "x")]) == 2
    assert "choose a writable directory with --out" in capsys.readouterr().err


def test_python_dash_m():
    done = subprocess.run([sys.executable, "-m", "lowbit", "run", "--list"], capture_output=True, text=True, check=True)
    assert "weight-formats" in done.stdout
