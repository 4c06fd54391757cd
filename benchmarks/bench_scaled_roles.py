"""Inference cost of scaled roles against the FP32 forward (issue 16, item 3).

A stack of ``--pairs`` × (Linear(384, 1536), GELU, Linear(1536, 384)) — MiniLM's feed-forward
shape — run in eval mode under ``torch.no_grad()`` at batch 1 (one 384-vector) and at 8 tokens ×
batch 8, FP32 against the same stack with scaled roles:

- ``posit8 weights``: unscaled posit8_es2 weights (what an unscaled quantized weight costs);
- ``histogram / amax / fixed / absmax weights``: posit8_es2 "histogram", e4m3fn "amax",
  posit8_es2 with scale exponent -2, int8 "absmax" per channel;
- ``amax inputs``: e4m3fn inputs with "amax" scaling (frozen after the first call), and with
  ``every=1`` (measured on every call).

Variants are timed interleaved (each repeat runs every variant once), and each ratio is the
median time over the FP32 median. Run from the repository root::

    PYTHONPATH=. python benchmarks/bench_scaled_roles.py --threads 1 [--out benchmarks/results]
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's lowbit, not an installed one
import lowbit as lb  # noqa: E402

VARIANTS = {
    "FP32": None,
    "posit8 weights": {"weight": "posit8_es2"},
    "histogram weights": {"weight": {"format": "posit8_es2", "scaling": "histogram"}},
    "amax weights": {"weight": {"format": "e4m3fn", "scaling": "amax"}},
    "fixed-scale weights": {"weight": {"format": "posit8_es2", "scaling": -2}},
    "absmax weights": {"weight": {"format": "int8", "scaling": "absmax", "granularity": "channel"}},
    "amax inputs": {"input": {"format": "e4m3fn", "scaling": "amax"}},
    "amax inputs every=1": {"input": {"format": "e4m3fn", "scaling": "amax", "every": 1}},
}


def _stack(pairs: int) -> nn.Sequential:
    torch.manual_seed(0)
    layers: list[nn.Module] = []
    for _ in range(pairs):
        layers += [nn.Linear(384, 1536), nn.GELU(), nn.Linear(1536, 384)]
    return nn.Sequential(*layers).eval()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=41)
    parser.add_argument("--inner", type=int, default=5, help="forwards per timed sample")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--out", type=Path, default=None, help="directory for scaled_roles.md")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    base = _stack(args.pairs)
    models = {name: base if cfg is None else lb.quantize_(copy.deepcopy(base), cfg).eval()
              for name, cfg in VARIANTS.items()}
    load = os.getloadavg()[0]
    lines = [f"# Scaled roles at inference, × the FP32 forward (load average {load:.1f} at the start)", "",
             f"`benchmarks/bench_scaled_roles.py`: {args.pairs} × (Linear(384, 1536), GELU, Linear(1536, 384)), eval, "
             f"no_grad, {args.threads} thread(s), median of {args.repeats} × {args.inner} forwards, variants "
             "interleaved."]
    print(f"lowbit from {lb.__file__}")
    print(lines[2])
    for shape in ((1, 384), (8, 8, 384)):
        x = torch.randn(shape)
        times: dict[str, list[float]] = {name: [] for name in models}
        with torch.no_grad():
            for model in models.values():  # warm-up: compile kernels, fill caches
                model(x)
                model(x)
            for _ in range(args.repeats):
                for name, model in models.items():
                    t = time.perf_counter()
                    for _ in range(args.inner):
                        model(x)
                    times[name].append((time.perf_counter() - t) / args.inner)
        fp32 = statistics.median(times["FP32"])
        print(f"\ninput {tuple(shape)}")
        print(f"{'variant':<22} {'median':>10} {'vs FP32':>8}")
        lines += ["", f"## input {tuple(shape)}", "", "| variant | ms | × FP32 |", "|---|---:|---:|"]
        for name, ts in times.items():
            m = statistics.median(ts)
            print(f"{name:<22} {m * 1e3:>7.3f} ms {m / fp32:>7.2f}x")
            lines.append(f"| {name} | {m * 1e3:.3f} | {m / fp32:.2f} |")
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "scaled_roles.md").write_text("\n".join(lines) + "\n")

if __name__ == "__main__":
    main()
