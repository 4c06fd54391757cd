"""Decode time of one packed conv weight in a block format: the bare spec against its ``_r`` layout.

    python benchmarks/bench_block_conv_decode.py [--repeats 300] [--formats mxfp4_e2m1fn nvfp4 mxfp8_e4m3fn]

A bare block spec puts its blocks along the weight's last axis: a 1x1 conv's (one scale per
element), a depthwise 5x5's (a block of 5); ``_r`` along each output channel's reduction. Per
format and layer (EfficientNet-Lite0's largest pointwise, 1152 -> 192, and depthwise, 1152
channels 5x5), this times what a packed forward without autograd spends on the weight: the
prepared staging decode (``_lowbit_weight`` under ``inference_mode``), median of ``--repeats``
calls in the thread's CPU time, one torch thread, with the weight and codes warm in cache (the
decode alone; `bench_packed_inference.py` times whole forwards). Prints a table of microseconds
and ns per weight.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's lowbit, not an installed one
import lowbit as lb  # noqa: E402

LAYERS = {
    "pointwise 1152->192": lambda: nn.Conv2d(1152, 192, 1, bias=False),
    "depthwise 1152 5x5": lambda: nn.Conv2d(1152, 1152, 5, padding=2, groups=1152, bias=False),
}


def decode_seconds(spec: str, make: "Callable[[], nn.Module]", repeats: int) -> float:
    """Median thread-CPU seconds of one staging decode of the layer ``make()`` packed in ``spec``."""
    torch.manual_seed(0)
    layer = lb.pack_(nn.Sequential(make()), spec)[0]
    times = []
    with torch.inference_mode():
        layer._lowbit_weight()  # builds the table and the staging plan (and compiles, the first time)
        layer._lowbit_weight()
        for _ in range(repeats):
            t = time.thread_time()
            layer._lowbit_weight()
            times.append(time.thread_time() - t)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=300)
    ap.add_argument("--formats", nargs="+", default=["mxfp4_e2m1fn", "nvfp4", "mxfp8_e4m3fn"])
    args = ap.parse_args()
    torch.set_num_threads(1)
    load = os.getloadavg()[0]
    lines = [f"staging decode of one packed conv weight, median of {args.repeats}, 1 thread; load average {load:.2f}",
             "", "| layer | format | bare us | bare ns/weight | _r us | _r ns/weight |",
             "|---|---|---:|---:|---:|---:|"]
    for name, make in LAYERS.items():
        n = make().weight.numel()
        for spec in args.formats:
            bare = decode_seconds(spec, make, args.repeats)
            rows = decode_seconds(spec + "_r", make, args.repeats)
            lines.append(f"| {name} | {spec} | {bare * 1e6:.1f} | {bare * 1e9 / n:.2f} | {rows * 1e6:.1f} | "
                         f"{rows * 1e9 / n:.2f} |")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
