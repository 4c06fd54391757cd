"""Quantize / encode / decode throughput of lowbit against its peers, in one run.

Baselines timed in the same process: the memory-bandwidth ceiling ``torch.add(x, 0, out=y)``,
an allocating copy ``x.clone()``, torch's float8/float16/bfloat16 round-trip casts, ml_dtypes'
round trip, SoftPosit (per element, sampled) and QPyTorch / qtorch-plus when installed (never a
dependency). Every figure is elements per second (median of --repeats runs) and its ratio to
``torch.add(out=)``.

    python benchmarks/bench_formats.py                     # 2^24 float32, torch's thread count
    python benchmarks/bench_formats.py --size 20 --threads 2 --out benchmarks/results
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch

import lowbit as lb

FORMATS = ["posit8_es2", "posit16_es1", "posit32_es2", "e4m3fn", "e5m2", "e2m1fn", "e5m10", "fixed8_f4", "int8"]


def rate(fn: Callable[[], object], n: int, repeats: int) -> float:
    fn()  # warm up (compiles numba kernels, faults pages in)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return n / statistics.median(times)


def main(argv: "list[str] | None" = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=24, help="log2 of the number of float32 elements (default 24)")
    ap.add_argument("--threads", type=int, default=None, help="torch/numba threads (default: torch's)")
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--formats", nargs="*", default=FORMATS)
    ap.add_argument("--out", type=Path, default=None, help="directory for results.json and results.md")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    n = 1 << args.size
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, generator=g)
    y = torch.empty_like(x)
    rows: list[dict[str, object]] = []

    def add(name: str, what: str, fn: Callable[[], object], count: int = n, repeats: int = args.repeats) -> None:
        r = rate(fn, count, repeats)
        rows.append({"name": name, "operation": what, "elements_per_s": r})
        print(f"{name:28s} {what:28s} {r:10.3e}", flush=True)

    add("torch.add(x, 0, out=y)", "memory-bandwidth baseline", lambda: torch.add(x, 0, out=y))
    add("x.clone()", "allocating copy", lambda: x.clone())
    for name, dt in (("float8_e4m3fn", torch.float8_e4m3fn), ("float8_e5m2", torch.float8_e5m2),
                     ("float16", torch.float16), ("bfloat16", torch.bfloat16)):
        add(f"torch {name}", "x.to(dt).float()", lambda dt=dt: x.to(dt).float())
    if importlib.util.find_spec("ml_dtypes"):
        import ml_dtypes

        xn = x.numpy()
        add("ml_dtypes float8_e4m3fn", "astype round trip", lambda: xn.astype(ml_dtypes.float8_e4m3fn).astype(np.float32))
    if importlib.util.find_spec("softposit"):
        import softposit

        sample = x[: 1 << 14].tolist()
        add("softposit posit8 (es0)", "per element", lambda: [float(softposit.posit8(v)) for v in sample],
            count=len(sample), repeats=3)
    if importlib.util.find_spec("qtorch"):
        try:
            from qtorch.quant import float_quantize

            add("qtorch float_quantize e4m3", "quantize", lambda: float_quantize(x, exp=4, man=3, rounding="nearest"))
        except Exception as err:  # noqa: BLE001 - a peer that fails to build is reported, not fatal
            print(f"qtorch present but unusable: {err}")

    for spec in args.formats:
        fmt = lb.parse_format(spec)
        codes = fmt.encode(x)
        sg = torch.Generator().manual_seed(1)
        add(f"lowbit {spec}", "quantize(out=y)", lambda fmt=fmt: fmt.quantize(x, out=y))
        add(f"lowbit {spec}", "quantize (allocating)", lambda fmt=fmt: fmt.quantize(x))
        add(f"lowbit {spec}", "quantize stochastic (out=y)",
            lambda fmt=fmt, sg=sg: fmt.quantize(x, "stochastic", sg, out=y))
        add(f"lowbit {spec}", "encode", lambda fmt=fmt: fmt.encode(x))
        add(f"lowbit {spec}", "decode", lambda fmt=fmt, codes=codes: fmt.decode(codes))
    small = x[: 1 << 20]
    add("lowbit posit8_es2", "quantize backend=reference",
        lambda: lb.parse_format("posit8_es2").quantize(small, backend="reference"), count=small.numel(), repeats=3)
    add("lowbit e4m3fn", "quantize backend=reference",
        lambda: lb.parse_format("e4m3fn").quantize(small, backend="reference"), count=small.numel(), repeats=3)

    base = rows[0]["elements_per_s"]
    f8 = next(r["elements_per_s"] for r in rows if r["name"] == "torch float8_e4m3fn")
    for r in rows:
        r["vs_add"] = r["elements_per_s"] / base  # type: ignore[operator]
        r["vs_torch_e4m3fn"] = r["elements_per_s"] / f8  # type: ignore[operator]
    meta = {
        "elements": n, "dtype": "float32", "threads": torch.get_num_threads(), "torch": torch.__version__,
        "lowbit": lb.__version__, "python": sys.version.split()[0], "machine": platform.machine(),
        "processor": platform.processor(),
    }
    table = ["| implementation | operation | elements/s | × torch.add(out=) | × torch e4m3fn cast |",
             "|---|---|---:|---:|---:|"]
    table += [f"| {r['name']} | {r['operation']} | {r['elements_per_s']:.2e} | {r['vs_add']:.1%} | "
              f"{r['vs_torch_e4m3fn']:.2f}× |" for r in rows]
    print("\n" + "\n".join(table))
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "results.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
        (args.out / "results.md").write_text(
            f"{n} float32 values, {meta['threads']} threads, torch {meta['torch']}\n\n" + "\n".join(table) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
