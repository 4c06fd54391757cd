"""Cost of the simulated layers' inference weight cache check against re-quantizing the weight.

In inference a simulated layer reuses its quantized weight while the float weight holds the same
bit patterns; the check compares the weight with a stored copy, bit for bit (writes through
``.data``, numpy views or under ``inference_mode`` change no version counter, so the values
themselves are the only safe key). This times, per weight read, that check (a cache hit) against
``fmt.quantize(w)`` (what every read would cost without a cache). Median CPU time of --repeats runs.

    python benchmarks/bench_weight_cache.py --size 1024 --threads 1
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch import nn

import lowbit as lb

FORMATS = ["posit8_es2", "posit4_es1", "e4m3fn", "int8"]


def _median_seconds(fn, repeats: int, threads: int, inner: int = 10) -> float:
    """Median CPU time of this thread per call (``--threads 1``: torch computes in this thread), so
    a loaded machine's waiting time is not counted."""
    fn()
    torch.set_num_threads(threads)  # the first numba call can change torch's thread count
    times = []
    for _ in range(repeats):
        t = time.thread_time()
        for _ in range(inner):
            fn()
        times.append((time.thread_time() - t) / inner)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=1024, help="the weight is size x size float32")
    parser.add_argument("--repeats", type=int, default=21)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"weight {args.size}x{args.size} float32, {args.threads} thread(s), median of {args.repeats}")
    print(f"{'format':<12} {'cache hit (check)':>18} {'re-quantize':>12} {'ratio':>7}")
    for spec in FORMATS:
        layer = lb.quantize_(nn.Linear(args.size, args.size), {"weight": spec}).eval()
        w = layer.lowbit_float_tensor("weight")
        fmt = lb.parse_format(spec)
        with torch.no_grad():
            hit = _median_seconds(lambda: layer.weight, args.repeats, args.threads)
            requant = _median_seconds(lambda: fmt.quantize(w.detach()), args.repeats, args.threads)
        print(f"{spec:<12} {hit * 1e3:>15.3f} ms {requant * 1e3:>9.3f} ms {requant / hit:>6.1f}x")


if __name__ == "__main__":
    main()
