"""Run a named experiment and record it: results.json, results.csv, report.md and PNG plots.

An experiment is a module with

- ``NAME``, ``TITLE``, ``SUMMARY`` (one line, shown by ``lowbit run --list``);
- ``config(quick: bool, seed: int) -> dict``: its JSON-able configuration;
- ``run(config, context) -> list[dict]``: the result rows (flat dicts of JSON scalars, plus
  optional nested values that the CSV writes as JSON text);
- ``plot(rows, config, context) -> list[Path]``: PNG files written into ``context.out_dir``;
- ``report(rows, config, context) -> str``: the markdown body of report.md.

`run_experiment` checks the output directory and the plotting library before any work starts,
so a bad ``--out`` fails in a second, not after the training.
"""

from __future__ import annotations

import csv
import dataclasses
import datetime as _dt
import importlib
import importlib.util
import io
import json
import os
import platform
import sys
import time
from pathlib import Path
from types import ModuleType
from typing import Any, Mapping

from lowbit.errors import LowbitError

__all__ = [
    "EXPERIMENTS",
    "FLAGSHIP",
    "RunContext",
    "RunResult",
    "list_experiments",
    "get_experiment",
    "run_experiment",
    "default_out_dir",
]

# name -> module (imported only when the experiment runs or is listed)
EXPERIMENTS: "dict[str, str]" = {
    "weight-formats": "lowbit.experiments.weight_formats",
    "hybrid": "lowbit.experiments.hybrid",
    "mixed-precision": "lowbit.experiments.mixed_precision",
    "ptq": "lowbit.experiments.ptq",
    "pretrained": "lowbit.experiments.pretrained",
    "training": "lowbit.experiments.lowprec_training",
    "posit-gan": "lowbit.experiments.posit_gan",
    "transformers": "lowbit.experiments.transformer_formats",
}
FLAGSHIP = "weight-formats"
EXPERIMENTS_INSTALL = "pip install 'lowbit[experiments]'"


@dataclasses.dataclass
class RunContext:
    """What an experiment gets besides its config: where to write, a progress display, a notes list."""

    out_dir: Path
    progress: Any = None  # a rich.progress.Progress, or None
    notes: "list[str]" = dataclasses.field(default_factory=list)  # shown in report.md and results.json
    info: "dict[str, Any]" = dataclasses.field(default_factory=dict)  # extra facts for results.json
    console: Any = None  # a rich Console for messages (None: quiet)

    def note(self, text: str) -> None:
        self.notes.append(text)
        if self.console is not None:
            self.console.print(f"[yellow]note:[/yellow] {text}")


@dataclasses.dataclass
class RunResult:
    name: str
    out_dir: Path
    rows: "list[dict[str, Any]]"
    files: "list[Path]"
    seconds: float
    notes: "list[str]"


def list_experiments() -> "list[tuple[str, str]]":
    """(name, one-line summary) of every registered experiment; the flagship first."""
    out = []
    for name in sorted(EXPERIMENTS, key=lambda n: (n != FLAGSHIP, n)):
        module = get_experiment(name)
        out.append((name, getattr(module, "SUMMARY", "")))
    return out


def get_experiment(name: str) -> ModuleType:
    """The module of experiment ``name``; an unknown name raises LowbitError listing the known ones."""
    try:
        path = EXPERIMENTS[name]
    except (KeyError, TypeError):
        raise LowbitError(
            f"unknown experiment {name!r}; known experiments: {', '.join(sorted(EXPERIMENTS))} "
            "(`lowbit run --list` describes them)"
        ) from None
    return importlib.import_module(path)


def default_out_dir(name: str) -> Path:
    """``runs/NAME`` under the current directory."""
    return Path("runs") / name


def _check_out_dir(out_dir: Path) -> Path:
    """Create ``out_dir`` and make sure files can be written there, or explain how to fix it."""
    fix = "choose a writable directory with --out DIR (e.g. --out ./runs/NAME or --out /tmp/lowbit-run)"
    if out_dir.exists() and not out_dir.is_dir():
        raise LowbitError(f"--out {out_dir} exists and is not a directory; {fix}")
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        probe = out_dir / f".lowbit-write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as err:
        reason = err.strerror or str(err)
        raise LowbitError(f"cannot write to the output directory {out_dir} ({reason}); {fix}") from None
    return out_dir


def _check_plotting() -> None:
    if importlib.util.find_spec("matplotlib") is None:
        raise LowbitError(f"experiments write PNG plots with matplotlib; install it with `{EXPERIMENTS_INSTALL}`")


def versions() -> "dict[str, str]":
    """Versions of the libraries a result depends on."""
    import numpy
    import torch

    from lowbit import __version__

    out = {
        "lowbit": __version__,
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
    }
    for mod in ("numba", "matplotlib", "sklearn"):
        if mod in sys.modules:
            out[mod] = getattr(sys.modules[mod], "__version__", "?")
    out["cpu_count"] = str(os.cpu_count())
    return out


def _csv_text(rows: "list[Mapping[str, Any]]") -> str:
    columns: "list[str]" = []
    for row in rows:
        for key in row:
            if key not in columns:
                columns.append(key)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: json.dumps(v, sort_keys=True) if isinstance(v, (dict, list)) else v for k, v in row.items()})
    return buf.getvalue()


@dataclasses.dataclass
class _Progress:
    """A rich progress display on stderr, or nothing when rich is quiet."""

    quiet: bool

    def __enter__(self) -> "tuple[Any, Any]":
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self.console = Console(stderr=True, quiet=self.quiet)
        self.progress = Progress(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
            console=self.console, transient=False, disable=self.quiet,
        )
        self.progress.__enter__()
        return self.progress, self.console

    def __exit__(self, *exc: object) -> None:
        self.progress.__exit__(*exc)  # type: ignore[arg-type]


def run_experiment(
    name: "str | None" = None,
    *,
    quick: bool = False,
    out_dir: "str | os.PathLike[str] | None" = None,
    seed: int = 0,
    overrides: "Mapping[str, Any] | None" = None,
    quiet: bool = False,
) -> RunResult:
    """Run experiment ``name`` (None: the flagship) and write its records into ``out_dir``.

    ``overrides`` replaces top-level keys of the experiment's config (unknown keys are refused).
    Writes ``results.json`` (config, library versions, seed, rows, notes), ``results.csv``,
    ``report.md`` and at least one PNG; returns a `RunResult`.
    """
    name = FLAGSHIP if name is None else name
    module = get_experiment(name)
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise LowbitError(f"seed must be an int, got {seed!r}")
    out = _check_out_dir(Path(out_dir) if out_dir is not None else default_out_dir(name))
    _check_plotting()
    config = dict(module.config(quick=quick, seed=seed))
    for key, value in (overrides or {}).items():
        if key not in config:
            raise LowbitError(f"unknown config key {key!r} for experiment {name}; keys: {', '.join(config)}")
        config[key] = value
    started = _dt.datetime.now(_dt.timezone.utc)
    t0 = time.perf_counter()
    with _Progress(quiet) as (progress, console):
        ctx = RunContext(out_dir=out, progress=progress, console=console)
        rows = list(module.run(config, ctx))
    seconds = time.perf_counter() - t0
    ctx.progress = None
    files = [Path(p) for p in module.plot(rows, config, ctx)]
    record = {
        "experiment": name,
        "title": getattr(module, "TITLE", name),
        "quick": quick,
        "seed": seed,
        "config": config,
        "versions": versions(),
        "started_utc": started.isoformat(timespec="seconds"),
        "seconds": round(seconds, 2),
        "notes": ctx.notes,
        "info": ctx.info,
        "rows": rows,
    }
    json_path, csv_path, md_path = out / "results.json", out / "results.csv", out / "report.md"
    json_path.write_text(json.dumps(record, indent=2, sort_keys=False) + "\n")
    csv_path.write_text(_csv_text(rows))
    body = module.report(rows, config, ctx)
    header = (
        f"# {record['title']}\n\n"
        f"`lowbit run {name}{' --quick' if quick else ''} --seed {seed}` · lowbit {record['versions']['lowbit']} · "
        f"torch {record['versions']['torch']} · {seconds:.0f} s\n\n"
    )
    notes = "".join(f"- {n}\n" for n in ctx.notes)
    md_path.write_text(header + body.rstrip() + "\n" + (f"\n## Notes\n\n{notes}" if notes else ""))
    return RunResult(name, out, rows, [json_path, csv_path, md_path, *files], seconds, ctx.notes)

