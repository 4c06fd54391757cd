"""Decode of posits wider than 16 bits: where the time goes, beside ``torch.add(x, 0, out=y)``.

    python benchmarks/bench_posit_decode.py [--size 24] [--repeats 9] [--formats posit17_es1 ...]

For each format (codes of 2^size float32 normals, the same as bench_formats' decode bar):

- ``decode / add``: ``fmt.decode(codes)`` (allocating, float32) timed alternately with
  ``torch.add(x, 0, out=y)``, medians; their rate ratio is the issue-16 bar (>= 0.25);
- ``kernel, warm output``: the decode kernel into an output written before (no page faults);
- ``element ns``: the per-code arithmetic alone, one thread, codes in the L1 cache (a serial
  loop, thread CPU time, best of the repeats): the 32-bit integer assembly the kernel uses
  (`lowbit.kernels.posit_bits_ir`) and, for comparison, the float64 value then a float32 cast.

Prints a table; writes nothing.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's lowbit, not an installed one
import lowbit as lb  # noqa: E402
from lowbit.kernels import dispatch, posit_decode_numba, runtime  # noqa: E402

FORMATS = ["posit17_es1", "posit24_es2", "posit32_es2"]


def _medians(fn: Callable[[], object], baseline: Callable[[], object], repeats: int) -> tuple[float, float]:
    fn(), baseline()
    times: tuple[list[float], list[float]] = ([], [])
    for _ in range(repeats):
        for f, kept in ((baseline, times[1]), (fn, times[0])):
            t0 = time.perf_counter()
            f()
            kept.append(time.perf_counter() - t0)
    return statistics.median(times[0]), statistics.median(times[1])


def _element_loops() -> tuple[Callable[..., None], Callable[..., None]]:
    from numba import njit

    from lowbit.kernels.posit_bits_ir import float32_bits
    from lowbit.kernels.posit_decode_numba import posit_decode_value

    @njit
    def int32_assembly(codes, n, es, scale, out, reps):
        for _ in range(reps):
            for j in range(codes.size):
                out[j] = float32_bits(codes[j], n, es, scale)[0]

    @njit
    def float64_then_cast(codes, n, es, scale, out, reps):
        for _ in range(reps):
            for j in range(codes.size):
                out[j] = np.float32(posit_decode_value(codes[j], n, es, scale)).view(np.int32)

    return int32_assembly, float64_then_cast


def _element_ns(loop: Callable[..., None], codes: np.ndarray, fmt: lb.Posit, repeats: int) -> float:
    out = np.empty(codes.size, np.int32)
    reps = 2000
    loop(codes, fmt.n, fmt.es, fmt.scale, out, 1)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.thread_time()
        loop(codes, fmt.n, fmt.es, fmt.scale, out, reps)
        best = min(best, time.thread_time() - t0)
    return 1e9 * best / (reps * codes.size)


def main(argv: "list[str] | None" = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=24, help="log2 of the number of codes (default 24)")
    ap.add_argument("--repeats", type=int, default=9)
    ap.add_argument("--formats", nargs="*", default=FORMATS)
    args = ap.parse_args(argv)
    n = 1 << args.size
    x = torch.randn(n, generator=torch.Generator().manual_seed(0))
    y = torch.empty_like(x)
    loops = _element_loops()
    print(f"2^{args.size} codes, {torch.get_num_threads()} threads; times are medians of {args.repeats}")
    print(f"{'format':12s} {'codes':6s} {'decode ms':>9s} {'add ms':>7s} {'decode/add':>10s} "
          f"{'warm-out kernel ms':>18s} {'int32 ns/el':>11s} {'f64+cast ns/el':>14s}")
    for spec in args.formats:
        fmt = lb.parse_format(spec)
        codes = fmt.encode(x)
        decode, add = _medians(lambda: fmt.decode(codes), lambda: torch.add(x, 0, out=y), args.repeats)
        kind = posit_decode_numba.OUT_F32_IN_RANGE if fmt.max <= torch.finfo(torch.float32).max and \
            fmt.min_positive >= torch.finfo(torch.float32).tiny else posit_decode_numba.OUT_F32
        kernel = posit_decode_numba.posit_decode(kind)
        wide = codes.dtype == torch.int64
        words = codes.numpy().view("uint32")
        out = torch.empty(n).numpy().view(np.int32)
        fmax, tiny = dispatch._limits(torch.float32)
        layout = (2 if wide else 1, int(sys.byteorder != "little"))  # words per code, index of the low word
        warm, _ = _medians(lambda: runtime.launch(kernel, words, *layout, fmt.n, fmt.es, fmt.scale, out, fmax, tiny),
                           lambda: None, args.repeats)
        cached = codes[:4096].to(torch.int64).numpy().astype(np.uint32)
        ns = [_element_ns(loop, cached, fmt, args.repeats) for loop in loops]
        print(f"{spec:12s} {str(codes.dtype).replace('torch.', ''):6s} {decode * 1e3:9.2f} {add * 1e3:7.2f} "
              f"{add / decode:10.3f} {warm * 1e3:18.2f} {ns[0]:11.3f} {ns[1]:14.3f}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
