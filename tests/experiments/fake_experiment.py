"""A tiny experiment for the runner's tests: three rows, one PNG, a note with brackets.

``config["fail_in"]`` names a step ("run" / "plot" / "report") that raises KeyboardInterrupt
after writing part of its file, as a Ctrl-C would.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

NAME = "fake"
TITLE = "A fake experiment"
SUMMARY = "three rows and one PNG, for the runner's tests"

PNG_HEAD = b"\x89PNG\r\n\x1a\n"


def config(quick: bool, seed: int) -> "dict[str, Any]":
    return {"seed": seed, "label": "first", "fail_in": None}


def run(cfg: "dict[str, Any]", ctx: Any) -> "list[dict[str, Any]]":
    ctx.note("optional data missing: install it with `pip install 'lowbit[pretrained]'`")
    (ctx.out_dir / "samples.npz").write_bytes(cfg["label"].encode() * 10)
    if cfg["fail_in"] == "run":
        raise KeyboardInterrupt
    return [{"label": cfg["label"], "i": i, "nested": {"x": i}} for i in range(3)]


def plot(rows: "list[dict[str, Any]]", cfg: "dict[str, Any]", ctx: Any) -> "list[Path]":
    path = ctx.out_dir / "plot.png"
    body = PNG_HEAD + cfg["label"].encode() * 1000
    if cfg["fail_in"] == "plot":
        path.write_bytes(body[: len(body) // 3])  # a truncated PNG, then Ctrl-C
        raise KeyboardInterrupt
    path.write_bytes(body)
    return [path]


def report(rows: "list[dict[str, Any]]", cfg: "dict[str, Any]", ctx: Any) -> str:
    if cfg["fail_in"] == "report":
        raise KeyboardInterrupt
    return f"label {cfg['label']}: {len(rows)} rows\n"
