"""The quire's speed: exact MACs per second on LeNet-5's layers over the MNIST test images.

    python benchmarks/bench_quire.py [--images 10000] [--threads 2] [--out benchmarks/results]

A LeNet-5 (conv 1→6 5×5 pad 2, conv 6→16 5×5, fc 400→120→84→10; seeded random weights: speed
does not depend on training) runs in FP32 over the MNIST test images (scikit-learn's digits,
upscaled, if MNIST is not installed); each layer's input and weight are then quantized to the
operand format (posit8_es2, e4m3fn, int8 on a power-of-two scale) and the layer is timed (``--batch`` images per call):

- ``exact``: `exact_conv2d` / `exact_linear` (bias included, rounded once to float32), all
  of it: im2col, exponent scan, accumulation, rounding; the accumulation path the call chose;
- ``fp32``: the same layer with torch's FP32 `F.conv2d` / `F.linear` on the same operands;
- per accumulation path forced (``float64``: exact integer sums in float64 BLAS, ``int64``: the
  numba int64 kernel, ``limbs``: the numba Kulisch limb kernel), on fc1 and conv2.

MACs counted = products of the layer (bias excluded). Wall time with ``--threads`` threads (torch
and numba), best of ``--repeats``. Writes ``quire.json`` and ``quire.md`` under ``--out``.
The bar (issue 18): >= 1e8 exact MAC/s on 2 threads for posit8 / e4m3fn / int8 operands.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's lowbit, not an installed one
import lowbit as lb  # noqa: E402
from lowbit.experiments.models import LeNet5  # noqa: E402
from lowbit.kernels.quire import accumulator_plan, quire_matmul  # noqa: E402
from lowbit.simulate.exact import exact_conv2d, exact_linear  # noqa: E402

FORMATS = ("posit8_es2", "e4m3fn", "int8")


def mnist_images(n: int) -> "tuple[torch.Tensor, str]":
    try:
        from lowbit.experiments.data import load_mnist

        return load_mnist().test_images[:n].float(), "MNIST test set"
    except Exception:  # noqa: BLE001 - fall back to the bundled digits
        from lowbit.experiments.data import load_digits

        x = load_digits().test_images
        x = F.interpolate(x, size=(28, 28), mode="bilinear", align_corners=False)
        return x.repeat((n + len(x) - 1) // len(x), 1, 1, 1)[:n].float(), "scikit-learn digits (MNIST missing)"


def quantize(x: torch.Tensor, spec: str) -> torch.Tensor:
    fmt = lb.parse_format(spec)
    if spec == "int8":  # integers on a power-of-two scale (fixed point): int8 codes · 2^k
        scale = 2.0 ** torch.ceil(torch.log2(x.abs().max().clamp_min(1e-30) / 127)).item()
        return fmt.quantize(x / scale) * scale
    return fmt.quantize(x)


def best_time(fn: Callable[[], Any], repeats: int) -> "tuple[float, float]":
    """(best wall seconds, best process CPU seconds, all threads) over ``repeats`` runs after a warm-up."""
    fn()  # warm-up (compiles numba kernels on first use)
    wall = cpu = float("inf")
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        fn()
        wall, cpu = min(wall, time.perf_counter() - t0), min(cpu, time.process_time() - c0)
    return wall, cpu


def layer_inputs(model: LeNet5, images: torch.Tensor) -> "dict[str, torch.Tensor]":
    seen: "dict[str, torch.Tensor]" = {}
    hooks = [getattr(model, name).register_forward_hook(lambda m, i, o, name=name: seen.__setitem__(name, i[0]))
             for name in ("conv1", "conv2", "fc1", "fc2", "fc3")]
    with torch.no_grad():
        model(images)
    for h in hooks:
        h.remove()
    return seen


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--images", type=int, default=10000)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--batch", type=int, default=1000, help="images per layer call")
    ap.add_argument("--out", default="benchmarks/results")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = LeNet5().eval()
    images, source = mnist_images(args.images)
    parts = [layer_inputs(model, xb) for xb in images.split(args.batch)]
    inputs = {name: torch.cat([p[name] for p in parts]) for name in parts[0]}
    rows: "list[dict[str, Any]]" = []
    for spec in FORMATS:
        total_macs = total_exact = total_fp32 = total_cpu = 0.0
        for name, x in inputs.items():
            layer = getattr(model, name)
            xq, wq, bq = quantize(x, spec), quantize(layer.weight.detach(), spec), quantize(layer.bias.detach(), spec)
            if name.startswith("conv"):
                pad = layer.padding
                out_numel = F.conv2d(xq[:1], wq, None, 1, pad).numel() * len(xq)
                macs = out_numel * wq[0].numel()

                def exact(xq=xq, wq=wq, bq=bq, pad=pad):
                    return [exact_conv2d(xb, wq, bq, 1, pad) for xb in xq.split(args.batch)]

                def fp32(xq=xq, wq=wq, bq=bq, pad=pad):
                    return [F.conv2d(xb, wq, bq, 1, pad) for xb in xq.split(args.batch)]

                cols = F.unfold(xq[: args.batch], wq.shape[-2:], padding=pad)
                a3, b3 = wq.reshape(1, wq.shape[0], -1), cols.transpose(0, 1).reshape(1, cols.shape[1], -1)
            else:
                macs = xq.shape[0] * wq.numel()

                def exact(xq=xq, wq=wq, bq=bq):
                    return [exact_linear(xb, wq, bq) for xb in xq.split(args.batch)]

                def fp32(xq=xq, wq=wq, bq=bq):
                    return [F.linear(xb, wq, bq) for xb in xq.split(args.batch)]

                a3, b3 = xq[: args.batch][None], wq.t()[None]
            plan = accumulator_plan(a3.double(), b3.double())
            bits = plan["bits"] if plan else 0
            path = "float64" if bits <= 53 else "int64" if bits <= 62 else "limbs"
            (t_exact, c_exact), (t_fp32, c_fp32) = best_time(exact, args.repeats), best_time(fp32, args.repeats)
            rows.append({"format": spec, "layer": name, "macs": macs, "accumulator_bits": bits, "path": path,
                         "exact_s": t_exact, "fp32_s": t_fp32, "exact_cpu_s": c_exact, "fp32_cpu_s": c_fp32,
                         "exact_mac_per_s": macs / t_exact, "exact_mac_per_cpu_s": macs / c_exact,
                         "slowdown_vs_fp32": t_exact / t_fp32})
            total_macs += macs
            total_exact += t_exact
            total_fp32 += t_fp32
            total_cpu += c_exact
            print(f"{spec:11s} {name:5s} {path:7s} {bits:3d} bits  {macs / t_exact / 1e6:9.1f} M exact MAC/s wall,"
                  f" {macs / c_exact / 1e6:9.1f} M per CPU-s  ({t_exact / t_fp32:6.1f}x fp32 wall)", flush=True)
        rows.append({"format": spec, "layer": "all", "macs": total_macs, "path": "auto", "exact_s": total_exact,
                     "fp32_s": total_fp32, "exact_cpu_s": total_cpu, "exact_mac_per_s": total_macs / total_exact,
                     "exact_mac_per_cpu_s": total_macs / total_cpu, "slowdown_vs_fp32": total_exact / total_fp32})
        print(f"{spec:11s} all   {total_macs / total_exact / 1e6:9.1f} M exact MAC/s wall over {args.images} images,"
              f" {total_exact:.2f} s ({total_exact / total_fp32:.1f}x fp32); {total_macs / total_cpu / 1e6:.1f} M"
              f" per CPU-s", flush=True)
    # every accumulation path forced on fc1 and conv2 (posit8 operands), at the kernel level
    paths: "list[dict[str, Any]]" = []
    for name, n_img in (("fc1", args.batch), ("conv2", max(1, args.batch // 10))):
        x, layer = inputs[name][:n_img], getattr(model, name)
        xq, wq = quantize(x, "posit8_es2"), quantize(layer.weight.detach(), "posit8_es2")
        if name == "fc1":
            a3, b3 = xq[None], wq.t()[None]
        else:
            cols = F.unfold(xq, wq.shape[-2:])
            a3 = wq.reshape(1, wq.shape[0], -1)
            b3 = cols.transpose(0, 1).reshape(1, cols.shape[1], -1)
        for path in ("float64", "int64", "limbs"):
            sub = (a3, b3)
            if path == "limbs":  # ~10x slower: a tenth of the work
                sub = (a3[:, : max(1, a3.shape[1] // 10)], b3) if name == "fc1" else (a3, b3[:, :, : b3.shape[2] // 10])
            sub_macs = sub[0].shape[0] * sub[0].shape[1] * sub[0].shape[2] * sub[1].shape[2]
            try:
                t, c = best_time(lambda: quire_matmul(sub[0], sub[1], odd=True, path=path), args.repeats)
            except ValueError as err:  # the path cannot hold this layer exactly
                print(f"{name} {path}: {err}")
                continue
            paths.append({"layer": name, "path": path, "macs": sub_macs, "seconds": t, "cpu_seconds": c,
                          "mac_per_s": sub_macs / t, "mac_per_cpu_s": sub_macs / c})
            print(f"kernel {name:5s} {path:7s} {sub_macs / t / 1e6:9.1f} M exact MAC/s wall,"
                  f" {sub_macs / c / 1e6:9.1f} M per CPU-s", flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    meta = {"images": args.images, "source": source, "threads": args.threads, "repeats": args.repeats,
            "torch": torch.__version__, "lowbit": lb.__version__, "machine": platform.machine(),
            "python": platform.python_version(), "loadavg_at_end": os.getloadavg()}
    (out / "quire.json").write_text(json.dumps({"meta": meta, "layers": rows, "paths": paths}, indent=1))
    lines = [f"# Quire speed: LeNet-5 layers on {args.images} images ({source}), {args.threads} threads", "",
             f"(load average at the end: {os.getloadavg()[0]:.1f}; wall time counts other processes' load,"
             " CPU time is this process's threads together)", "",
             "| operands | layer | path | acc. bits | exact MAC/s (wall) | exact MAC per CPU-s | exact s | FP32 s |"
             " × FP32 (wall) |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['format']} | {r['layer']} | {r['path']} | {r.get('accumulator_bits', '')} |"
                     f" {r['exact_mac_per_s']:.3g} | {r['exact_mac_per_cpu_s']:.3g} | {r['exact_s']:.3f} |"
                     f" {r['fp32_s']:.4f} | {r['slowdown_vs_fp32']:.1f} |")
    lines += ["", "Accumulation paths forced (posit8_es2 operands, kernel level, round to odd):", "",
              "| layer | path | MACs | exact MAC/s (wall) | per CPU-s |", "|---|---|---:|---:|---:|"]
    lines += [f"| {p['layer']} | {p['path']} | {p['macs']:.3g} | {p['mac_per_s']:.3g} | {p['mac_per_cpu_s']:.3g} |"
              for p in paths]
    (out / "quire.md").write_text("\n".join(lines) + "\n")
    print(f"wrote {out / 'quire.json'} and {out / 'quire.md'}")


if __name__ == "__main__":
    main()
