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

Nothing half-written: a run writes every file into a private staging directory inside ``--out``
(``.lowbit-run.<pid>.<random>.partial``, removed if the run fails or is interrupted, and, after a
kill -9, by the next run into the same directory). Only when all files are complete are they moved in:
first a marker file `INCOMPLETE_MARKER` is written and the old ``results.json`` removed, then the
new files are renamed in, ``results.json`` (with ``"status": "complete"`` and the list of the
run's ``files``) last, then the marker is removed. So a finished run is exactly: ``results.json``
present and no marker; an interruption before the move leaves the old run untouched, one during
the move leaves the marker (and no ``results.json`` that could pass for a finished run).
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import datetime as _dt
import importlib
import importlib.util
import io
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path
from types import ModuleType
from typing import Any, Mapping

from lowbit._process import pid_alive
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
    "run_summary",
    "INCOMPLETE_MARKER",
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
    "accumulation": "lowbit.experiments.accumulation",
}
FLAGSHIP = "weight-formats"
EXPERIMENTS_INSTALL = "pip install 'lowbit[experiments]'"
INCOMPLETE_MARKER = "RUN-INCOMPLETE.txt"  # present while (or if) a run's files are being moved in
_STAGING_PREFIX, _STAGING_SUFFIX = ".lowbit-run.", ".partial"  # .lowbit-run.<pid>.<random>.partial inside --out


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
            from rich.markup import escape

            self.console.print(f"[yellow]note:[/yellow] {escape(text)}")  # [pretrained] etc. stay visible


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
            TextColumn("{task.description}", markup=False), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
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
    _remove_stale_staging(out)
    staging = Path(tempfile.mkdtemp(prefix=f"{_STAGING_PREFIX}{os.getpid()}.", suffix=_STAGING_SUFFIX, dir=out))
    try:
        result = _run_into(staging, module, name, config, quick, seed, quiet, started)
        files = _move_in(staging, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return dataclasses.replace(result, out_dir=out, files=files)


def _run_into(staging: Path, module: ModuleType, name: str, config: "dict[str, Any]", quick: bool, seed: int,
              quiet: bool, started: "_dt.datetime") -> RunResult:
    """Run the experiment and write all its files into ``staging``."""
    t0 = time.perf_counter()
    with _Progress(quiet) as (progress, console):
        ctx = RunContext(out_dir=staging, progress=progress, console=console)
        rows = list(module.run(config, ctx))
    seconds = time.perf_counter() - t0
    ctx.progress = None
    module.plot(rows, config, ctx)
    out = staging
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
    csv_path.write_text(_csv_text(rows))
    body = module.report(rows, config, ctx)
    header = (
        f"# {record['title']}\n\n"
        f"`lowbit run {name}{' --quick' if quick else ''} --seed {seed}` · lowbit {record['versions']['lowbit']} · "
        f"torch {record['versions']['torch']} · {seconds:.0f} s\n\n"
    )
    notes = "".join(f"- {n}\n" for n in ctx.notes)
    md_path.write_text(header + body.rstrip() + "\n" + (f"\n## Notes\n\n{notes}" if notes else ""))
    others = sorted(p.name for p in out.iterdir() if p.name not in ("results.json", "results.csv", "report.md"))
    record["files"] = ["results.json", "results.csv", "report.md", *others]
    record["status"] = "complete"  # the last key: results.json is written whole, after everything else
    json_path.write_text(json.dumps(record, indent=2, sort_keys=False) + "\n")
    return RunResult(name, out, rows, [out / f for f in record["files"]], seconds, ctx.notes)


def _move_in(staging: Path, out: Path) -> "list[Path]":
    """Move the finished files of ``staging`` into ``out`` (see the module docstring); their new paths."""
    marker = out / INCOMPLETE_MARKER
    marker.write_text(
        "lowbit run was moving a run's files into this directory and did not finish: the files here may mix\n"
        "two runs. A finished run has results.json (\"status\": \"complete\") and no RUN-INCOMPLETE.txt.\n"
    )
    with contextlib.suppress(FileNotFoundError):
        (out / "results.json").unlink()
    names = sorted(p.name for p in staging.iterdir() if p.name != "results.json") + ["results.json"]
    for fname in names:
        target = out / fname
        if target.is_dir() and not target.is_symlink():
            shutil.rmtree(target)
        os.replace(staging / fname, target)
    _fsync_dir(out)
    marker.unlink()
    return [out / f for f in ("results.json", "results.csv", "report.md")] + [
        out / f for f in names if f not in ("results.json", "results.csv", "report.md")
    ]


def _fsync_dir(directory: Path) -> None:
    with contextlib.suppress(OSError, AttributeError):  # POSIX only; a no-op elsewhere
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _remove_stale_staging(out: Path) -> None:
    """Remove staging directories of earlier runs into ``out`` whose process is gone (kill -9)."""
    for entry in out.glob(f"{_STAGING_PREFIX}*{_STAGING_SUFFIX}"):
        pid = entry.name[len(_STAGING_PREFIX):].split(".", 1)[0]
        if entry.is_dir() and pid.isdigit() and not pid_alive(int(pid)):
            shutil.rmtree(entry, ignore_errors=True)


def run_summary(result: RunResult) -> str:
    """A few lines for the terminal after a run: what ran, its notes, where the files are.

    The full tables are in ``report.md``; its path is the last line.
    """
    lines = [f"{result.name}: {len(result.rows)} result rows in {result.seconds:.0f} s"]
    lines += [f"note: {n}" for n in result.notes]
    pngs = [p.name for p in result.files if p.suffix == ".png"]
    lines.append(f"wrote {result.out_dir}{os.sep}: results.json, results.csv, report.md"
                 + (f", {len(pngs)} PNG ({', '.join(pngs)})" if pngs else ""))
    lines.append(f"report: {result.out_dir / 'report.md'}")
    return "\n".join(lines)

