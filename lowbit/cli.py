"""The ``lowbit`` command line: a thin layer over library calls.

    lowbit formats                 families, spec grammar and presets
    lowbit info FORMAT [--json]    a format's spec card
    lowbit explain VALUE FORMAT    a value's bit pattern, fields and rounding
    lowbit run [NAME] [--quick]    run an experiment (default: the flagship), write results into --out DIR
    lowbit run --list              the experiments
    lowbit pack MODEL.pt --config plan.json -o model.lowbit    store a state dict packed (lowbit checkpoint)
    lowbit inspect model.lowbit    per-tensor format, bits, size and compression of a checkpoint
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from typing import Any, Sequence

from lowbit.errors import LowbitError
from lowbit.formats import PRESETS, ROUNDING_MODES, VALID_FORMS, explain, format_card, parse_format
from lowbit.formats.base import ScalarFormat


def _scalar(spec: str) -> ScalarFormat:
    fmt = parse_format(spec)
    if not isinstance(fmt, ScalarFormat):
        raise LowbitError(f"{spec!r} is not a scalar element format; this command needs one")
    return fmt


def _printable(text: object) -> str:
    """``text`` with control characters (ANSI escapes, newlines, ...) shown as Python escapes, so a
    name from a file can never drive the terminal: ``"\\x1b[31m"`` prints as ``\\x1b[31m``."""
    s = str(text)
    if s.isprintable():
        return s
    return "".join(ch if ch.isprintable() else repr(ch)[1:-1] for ch in s)


def _plain(text: object) -> "Any":
    """A rich Text of ``text`` (printable; never read as markup, so ``[pretrained]`` stays)."""
    from rich.text import Text

    return Text(_printable(text))


def _console() -> "Any":
    """A rich Console for stdout: the terminal's width on a terminal; when piped, wide enough
    that no cell is cut (``posit6_es1_s-4`` stays whole at any width)."""
    from rich.console import Console

    if sys.stdout.isatty():
        return Console()
    return Console(width=100_000)


def _cell(card: "dict[str, object]", key: str) -> str:
    value = card.get(key)
    if isinstance(value, float):
        return f"{value:.6g}"
    return "fitted" if value is None else str(value)


def cmd_formats(args: argparse.Namespace) -> int:
    from rich.table import Table

    console = _console()
    table = Table(title="lowbit formats", show_lines=False)
    for col in ("family", "preset", "bits", "max", "min positive", "values"):
        table.add_column(col, justify="right" if col not in ("family", "preset") else "left")
    for family, presets in PRESETS.items():
        for i, spec in enumerate(presets):
            card = format_card(parse_format(spec))
            bits = card.get("bits_per_element", card["bits"])  # block formats: the shared scale included
            values = card.get("num_values", card.get("max_levels", "per block"))
            table.add_row(
                family if i == 0 else "", spec, f"{bits:g}", _cell(card, "max"), _cell(card, "min_positive"),
                f"≤ {values}" if "max_levels" in card else str(values),
            )
    console.print(table)
    print("Spec grammar:")
    for form in VALID_FORMS:
        print(f"  {form}")
    print(f"Rounding modes: {', '.join(ROUNDING_MODES)}")
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    card = format_card(parse_format(args.format))
    if args.json:
        print(json.dumps(card, indent=2))
        return 0
    width = max(len(k) for k in card)
    for key, value in card.items():
        if isinstance(value, dict):
            value = ", ".join(f"{k} = {v}" for k, v in value.items())
        elif isinstance(value, float):
            value = f"{value!r}"
        print(f"{key.replace('_', ' '):<{width}}  {value}")
    return 0


def cmd_explain(args: argparse.Namespace) -> int:
    try:
        value = float(args.value)
    except ValueError:
        raise LowbitError(f"VALUE must be a number (e.g. -5.75, 1e-3, nan, inf), got {args.value!r}") from None
    print(explain(value, _scalar(args.format), rounding=args.rounding))
    if repr(value) != args.value.strip() and args.value.strip().lower() not in ("nan", "inf", "-inf", "+inf"):
        print(f"  (VALUE read as the float64 {value!r})")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from lowbit.experiments import runner

    if args.list:
        for name, summary in runner.list_experiments():
            default = "  (default: `lowbit run`)" if name == runner.FLAGSHIP else ""
            print(f"{name}{default}\n    {summary}")
        return 0
    result = runner.run_experiment(args.name, quick=args.quick, out_dir=args.out, seed=args.seed)
    print("\n".join(_printable(line) for line in runner.run_summary(result).split("\n")))
    return 0


def _size(n: float) -> str:
    return f"{n / 1e6:.3f} MB" if n >= 1e5 else f"{n:,.0f} B"


def cmd_pack(args: argparse.Namespace) -> int:
    from lowbit.storage import PackedTensor, save
    from lowbit.storage.plan import pack_state_dict, read_plan, read_state_dict

    for what, other in (("the model file MODEL", args.model), ("the plan --config", args.config)):
        if other is not None and not args.force and _same_file(args.output, other):
            raise LowbitError(
                f"-o {_printable(args.output)} is {what} ({_printable(other)}); writing there would replace it "
                "with the packed (lossy) checkpoint: choose another -o, or pass --force to replace it"
            )
    state = read_state_dict(args.model)
    if args.config is not None:
        plan = read_plan(args.config)
    elif args.format is not None:
        plan = {"weight": args.format}
    else:
        raise LowbitError("give the formats: --config plan.json, or --format SPEC for every layer weight")
    packed = pack_state_dict(state, plan)
    save(packed, args.output)
    n_packed = sum(isinstance(v, PackedTensor) for v in packed.values())
    fp32 = 4 * sum(t.numel() for t in state.values() if t.is_floating_point())
    size = os.path.getsize(args.output)
    out = _printable(args.output)
    print(f"packed {n_packed} of {len(packed)} tensors into {out}: {_size(size)} "
          f"(float32: {_size(fp32)}, {fp32 / max(size, 1):.2f}x smaller); see `lowbit inspect {out}`")
    return 0


def _same_file(a: str, b: str) -> bool:
    """Whether paths ``a`` and ``b`` name one file (the same path, a symlink or a hard link to it)."""
    try:
        return os.path.samefile(a, b)
    except OSError:  # one of them does not exist (yet): compare the resolved spellings
        return os.path.realpath(a) == os.path.realpath(b)


def cmd_inspect(args: argparse.Namespace) -> int:
    from lowbit.storage import inspect_checkpoint

    if not os.path.isfile(args.path):
        what = "not a regular file" if os.path.exists(args.path) else "no such file"
        raise LowbitError(f"{_printable(args.path)}: {what}")
    rows = inspect_checkpoint(args.path)
    size = os.path.getsize(args.path)
    stored = sum(r["stored_bytes"] for r in rows)
    fp32 = sum(r["fp32_bytes"] for r in rows)
    if args.json:
        print(json.dumps({"file_bytes": size, "stored_bytes": stored, "fp32_bytes": fp32, "tensors": rows}, indent=2))
        return 0
    from rich.table import Table

    table = Table(title=_plain(f"{args.path}: {len(rows)} tensors"), show_footer=True)
    numbers = ("bits", "bits/elem", "stored bytes", "fp32 bytes", "ratio")
    footer = {"name": "total", "stored bytes": f"{stored:,}", "fp32 bytes": f"{fp32:,}",
              "ratio": f"{fp32 / stored:.2f}x" if stored else "-"}
    for col in ("name", "format", "bits", "bits/elem", "scale", "shape", "stored bytes", "fp32 bytes", "ratio"):
        table.add_column(col, footer=footer.get(col, ""), justify="right" if col in numbers else "left")
    for r in rows:
        ratio = "-" if r["compression"] is None else f"{r['compression']:.2f}x"
        shape = "×".join(map(str, r["shape"])) or "scalar"
        per = "-" if r["bits_per_element"] is None else f"{r['bits_per_element']:.2f}"
        how = r["format"] or f"as is ({r['dtype']})"
        if r.get("alias_of") is not None:
            how = f"tied: same tensor as {_printable(r['alias_of'])}"
        table.add_row(_plain(r["name"]), _plain(how), str(r["bits"]), per, r["scale"] or "",
                      shape, f"{r['stored_bytes']:,}", f"{r['fp32_bytes']:,}", ratio)
    _console().print(table)
    print(f"file: {size:,} bytes ({_size(size)}); tensors {stored:,} bytes + header {size - stored:,} bytes; "
          f"float32: {fp32:,} bytes ({fp32 / max(size, 1):.2f}x the file)")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from lowbit import __version__

    parser = argparse.ArgumentParser(prog="lowbit", description="Low-precision number formats for deep learning.")
    parser.add_argument("--version", action="version", version=f"lowbit {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    p = sub.add_parser("formats", help="list format families, presets and the spec grammar")
    p.set_defaults(func=cmd_formats)

    p = sub.add_parser("info", help="print a format's spec card")
    p.add_argument("format", metavar="FORMAT", help="a format spec, e.g. posit8_es2, e4m3fn, fixed8_f4, int8")
    p.add_argument("--json", action="store_true", help="print the card as JSON")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("explain", help="show a value's bit pattern, fields and rounding in a format")
    p.add_argument("value", metavar="VALUE", help="a number, e.g. -5.75")
    p.add_argument("format", metavar="FORMAT", help="a format spec, e.g. fp32, posit8_es2, int8")
    p.add_argument("--rounding", default="nearest_even", choices=ROUNDING_MODES)
    p.set_defaults(func=cmd_explain)

    p = sub.add_parser("run", help="run an experiment and write results.json, CSV, report.md and plots")
    p.add_argument("name", metavar="NAME", nargs="?", default=None,
                   help="experiment name (default: the flagship, weight-formats); see --list")
    p.add_argument("--quick", action="store_true", help="a smaller version that finishes in about a minute")
    p.add_argument("--out", metavar="DIR", default=None, help="output directory (default: runs/NAME)")
    p.add_argument("--seed", type=int, default=0, help="random seed for training (default: 0)")
    p.add_argument("--list", action="store_true", help="list the experiments and exit")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("pack", help="store a model's state dict as a packed lowbit checkpoint")
    p.add_argument("model", metavar="MODEL", help="a torch.save'd state dict (read weights-only) or a safetensors file")
    p.add_argument("--config", metavar="PLAN.json", default=None,
                   help='formats: a QuantConfig-style {"weight": spec, "layers": {name: {"weight": spec}}, '
                        '"exclude": [...]} or a flat {name: spec}')
    p.add_argument("--format", metavar="SPEC", default=None,
                   help="instead of --config: one format for every layer weight (2-d or more)")
    p.add_argument("-o", "--output", metavar="OUT", required=True, help="the checkpoint to write, e.g. model.lowbit")
    p.add_argument("--force", action="store_true",
                   help="allow OUT to be the model file itself (replacing it with the packed, lossy checkpoint)")
    p.set_defaults(func=cmd_pack)

    p = sub.add_parser("inspect", help="per-tensor formats, sizes and compression of a lowbit checkpoint")
    p.add_argument("path", metavar="CHECKPOINT", help="a file written by lowbit.save or `lowbit pack`")
    p.add_argument("--json", action="store_true", help="print the rows as JSON")
    p.set_defaults(func=cmd_inspect)
    return parser


#: options of ``lowbit explain`` that take a value (as separate words: ``--rounding floor``)
_EXPLAIN_VALUE_OPTIONS = ("--rounding",)


def _is_number(word: str) -> bool:
    try:
        float(word)
    except ValueError:
        return False
    return True


def _protect_negative_value(argv: "list[str]") -> "list[str]":
    """Let ``lowbit explain -1e-3 fp16 --rounding floor`` / ``-inf`` through: argparse would read a
    negative VALUE as an option. The options go first, then ``--``, then the positionals in order."""
    if not argv or argv[0] != "explain" or "--" in argv:
        return argv
    options: "list[str]" = []
    positionals: "list[str]" = []
    words = iter(argv[1:])
    for word in words:
        if word.startswith("-") and not _is_number(word):
            options.append(word)
            if word in _EXPLAIN_VALUE_OPTIONS:
                options.extend(w for w in [next(words, None)] if w is not None)
        else:
            positionals.append(word)
    if not any(w.startswith("-") for w in positionals):
        return argv
    return [argv[0], *options, "--", *positionals]


def main(argv: "Sequence[str] | None" = None) -> int:
    parser = build_parser()
    args = parser.parse_args(_protect_negative_value(list(sys.argv[1:] if argv is None else argv)))
    try:
        return int(args.func(args))
    except BrokenPipeError:  # `lowbit formats | head`: the reader has gone; nothing more to say
        with contextlib.suppress(OSError, AttributeError, ValueError):  # keep Python's exit flush quiet
            fd = sys.stdout.fileno()
            os.dup2(os.open(os.devnull, os.O_WRONLY), fd)
        return 0
    except (LowbitError, ValueError, TypeError, OSError) as err:
        message = "\n".join(_printable(line) for line in str(err).split("\n"))
        print(f"lowbit {args.command}: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
