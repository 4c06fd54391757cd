"""The ``lowbit`` command line: a thin layer over library calls.

    lowbit formats                 families, spec grammar and presets
    lowbit info FORMAT [--json]    a format's spec card
    lowbit explain VALUE FORMAT    a value's bit pattern, fields and rounding
    lowbit run [NAME] [--quick]    run an experiment (default: the flagship), write results into --out DIR
    lowbit run --list              the experiments
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Sequence

from lowbit.errors import LowbitError
from lowbit.formats import PRESETS, ROUNDING_MODES, VALID_FORMS, explain, format_card, parse_format
from lowbit.formats.base import ScalarFormat


def _scalar(spec: str) -> ScalarFormat:
    fmt = parse_format(spec)
    if not isinstance(fmt, ScalarFormat):
        raise LowbitError(f"{spec!r} is not a scalar element format; this command needs one")
    return fmt


def _cell(card: "dict[str, object]", key: str) -> str:
    value = card.get(key)
    if isinstance(value, float):
        return f"{value:.6g}"
    return "fitted" if value is None else str(value)


def cmd_formats(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    console = Console()
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
    print((result.out_dir / "report.md").read_text())
    print(f"wrote {', '.join(str(p) for p in result.files)}")
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
    return parser


def _protect_negative_value(argv: "list[str]") -> "list[str]":
    """Let ``lowbit explain -1e-3 fp16`` / ``-inf`` through: argparse would read them as options."""
    if argv and argv[0] == "explain" and len(argv) >= 2 and argv[1].startswith("-") and "--" not in argv:
        try:
            float(argv[1])
        except ValueError:
            return argv
        return [argv[0], "--", *argv[1:]]
    return argv


def main(argv: "Sequence[str] | None" = None) -> int:
    parser = build_parser()
    args = parser.parse_args(_protect_negative_value(list(sys.argv[1:] if argv is None else argv)))
    try:
        return int(args.func(args))
    except (LowbitError, ValueError, TypeError) as err:
        print(f"lowbit {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
