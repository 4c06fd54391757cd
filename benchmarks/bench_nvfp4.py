"""NVFP4 in lowbit against torchao's reference: quantize time, agreement, checkpoint size, packed decode.

    python benchmarks/bench_nvfp4.py                 # a 1024 x 1024 float32 weight
    python benchmarks/bench_nvfp4.py --rows 4096 --repeats 3

Prints, per spec: the best of --repeats wall times of ``fmt.quantize`` (lowbit) and of
``NVFP4Tensor.to_nvfp4(...).dequantize`` (torchao, when installed), whether the two agree bit for
bit, the bytes per weight of a ``lowbit.save`` checkpoint of the weight, and one forward of a
packed ``nn.Linear`` (decoded on every call) next to ``mxfp4_e2m1fn``.
"""

from __future__ import annotations

import argparse
import copy
import os
import tempfile
import time
import warnings
from typing import Callable

import torch

import lowbit as lb


def best_ms(fn: Callable[[], object], repeats: int) -> float:
    fn()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best * 1e3


def torchao_reference(two_level: bool) -> "Callable[[torch.Tensor], torch.Tensor] | None":
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from torchao.prototype.mx_formats.nvfp4_tensor import NVFP4Tensor, per_tensor_amax_to_scale
    except ImportError:
        return None

    def run(x: torch.Tensor) -> torch.Tensor:
        pts = per_tensor_amax_to_scale(x.abs().max()) if two_level else None
        return NVFP4Tensor.to_nvfp4(x, per_tensor_scale=pts).dequantize(torch.float32)

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1024)
    parser.add_argument("--cols", type=int, default=1024)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    x = torch.randn(args.rows, args.cols, generator=torch.Generator().manual_seed(0))
    print(f"weight {tuple(x.shape)} float32, torch threads {torch.get_num_threads()}")
    y = torch.empty_like(x)
    copy_ms = best_ms(lambda: torch.add(x, 0, out=y), args.repeats)
    print(f"memory pass torch.add(x, 0, out=y) {copy_ms:8.1f} ms")
    linear = torch.nn.Linear(args.cols, args.rows)
    one = torch.randn(1, args.cols)
    with torch.no_grad():
        fp32_ms = best_ms(lambda: linear(one), args.repeats)
    print(f"FP32 Linear forward, batch 1 {fp32_ms:8.3f} ms")
    for spec in ("nvfp4", "nvfp4_1l", "mxfp4_e2m1fn"):
        fmt = lb.parse_format(spec)
        q_ms = best_ms(lambda f=fmt: f.quantize(x), args.repeats)
        line = f"{spec:13s} quantize {q_ms:8.1f} ms ({q_ms / copy_ms:.1f}x the memory pass)"
        ref = torchao_reference(spec == "nvfp4") if spec.startswith("nvfp4") else None
        if ref is not None:
            same = torch.equal(fmt.quantize(x), ref(x))
            line += f" | torchao {best_ms(lambda r=ref: r(x), args.repeats):8.1f} ms, bit-identical: {same}"
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "w.lb")
            lb.save({"w": x}, path, formats=spec)
            line += f" | checkpoint {os.path.getsize(path) / x.numel():.6f} B/weight"
        model = torch.nn.Sequential(torch.nn.Linear(args.cols, args.rows))
        packed = lb.pack_(copy.deepcopy(model), spec)
        with torch.no_grad():
            f_ms = best_ms(lambda p=packed: p(one), args.repeats)
        line += f" | packed Linear forward, batch 1 {f_ms:7.3f} ms ({f_ms / fp32_ms:.2f}x FP32)"
        print(line)


if __name__ == "__main__":
    main()
