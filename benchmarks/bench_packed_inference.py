"""Packed inference at batch 1 (issue 16, point 5): every packed format against FP32, on two models.

    python benchmarks/bench_packed_inference.py [--repeats 30] [--models minilm efficientnet] [--out benchmarks/results]

- **minilm**: all-MiniLM-L6-v2 (`lowbit.experiments.text.load_minilm`, 36 Linear layers, 10.6 M
  weights) on one sentence (batch 1, 12 tokens), every Linear weight packed.
- **efficientnet**: a *stand-in* for EfficientNet-Lite0, whose trained weights are not installed
  here: the same layer stack (stem 3x3/2 conv, the 16 MBConv blocks of Lite0 — expansion,
  kernel size, stride, channels and repeats as published, no squeeze-excite, ReLU6 — the
  1x1 head conv to 1280 channels and the 1280 -> 1000 classifier; 4.6 M weights), built in torch
  with seeded random weights (no download), run in eval mode on one 224x224 image; every Conv2d
  and Linear weight packed. Same shapes and operations, so the same decode and compute costs;
  its outputs mean nothing.

Each packed model decodes its weights on every forward (`lb.pack_`: into the per-thread staging
buffer, a Linear larger than ``PackedLinear.tile_bytes`` a tile of rows at a time; no decoded
cache), per format in `FORMATS`; FP32 and the packed variants run interleaved in one process with
the order alternating, so every variant sees the same machine load. One torch thread, timed in
the thread's CPU time (time spent descheduled by other processes does not count). Reports the
median ratio to FP32 per format and model, and the machine load (``os.getloadavg``). The bar:
every format <= 1.1x FP32. ``int4/group32``: groups of 32 output channels, or of 16 / 8 where 32
does not divide a layer's output channels (EfficientNet's 16, 24, 40, 112). The bare block specs
put their blocks along each weight's last axis (a conv's kernel width: a 1x1 conv gets one scale per
element); the ``_r`` rows (conv model only) put them along each output channel's reduction. Writes
``packed_inference.json`` and ``packed_inference.md`` under ``--out``.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's lowbit, not an installed one
import lowbit as lb  # noqa: E402

#: label -> weight spec of every Linear
FORMATS: "dict[str, Any]" = {
    "posit8_es2": "posit8_es2",
    "e4m3fn": "e4m3fn",
    "int8/channel": {"format": "int8", "scaling": "absmax", "granularity": "channel"},
    "int4/group32": {"format": "int4", "scaling": "absmax", "granularity": {"kind": "group", "group_size": 32}},
    "codebook4": "codebook4",
    "mxfp4_e2m1fn": "mxfp4_e2m1fn",
    "mxfp8_e4m3fn": "mxfp8_e4m3fn",
    "nvfp4": "nvfp4",
    # blocks along each output channel's reduction (a conv weight's I/groups x kernel); on a Linear
    # weight the same blocks as the bare spec, so timed on the conv model only
    "mxfp4_e2m1fn_r": "mxfp4_e2m1fn_r",
    "mxfp8_e4m3fn_r": "mxfp8_e4m3fn_r",
    "nvfp4_r": "nvfp4_r",
}
CONV_ONLY = ("mxfp4_e2m1fn_r", "mxfp8_e4m3fn_r", "nvfp4_r")
SENTENCE = "A man is playing a guitar on the stage."


def _fit_groups(spec: Any, weight: torch.Tensor) -> Any:
    """``spec`` with its group size halved until it divides the grouped axis (32 -> 16 -> 8 ...)."""
    if not isinstance(spec, dict) or not isinstance(spec.get("granularity"), dict):
        return spec
    gran = dict(spec["granularity"])
    size = weight.shape[gran.get("axis", 0)]
    while size % gran["group_size"]:
        gran["group_size"] //= 2
    return {**spec, "granularity": gran}


def packed_copy(model: nn.Module, spec: Any, kinds: "tuple[type, ...]" = (nn.Linear,)) -> nn.Module:
    """A deep copy of ``model`` with the weight of every layer of ``kinds`` packed in ``spec``
    (simulated first, then packed)."""
    m = copy.deepcopy(model)
    for module in list(m.modules()):
        if type(module) in kinds:
            lb.quantize_(module, {"weight": _fit_groups(spec, module.weight)})
    return lb.pack_(m)


#: EfficientNet-Lite0's MBConv stages: (expansion, kernel, stride, output channels, repeats)
LITE0_STAGES = [(1, 3, 1, 16, 1), (6, 3, 2, 24, 2), (6, 5, 2, 40, 2), (6, 3, 2, 80, 3), (6, 5, 1, 112, 3),
                (6, 5, 2, 192, 4), (6, 3, 1, 320, 1)]


class _MBConv(nn.Module):
    def __init__(self, cin: int, cout: int, expand: int, kernel: int, stride: int) -> None:
        super().__init__()
        mid = cin * expand
        layers: "list[nn.Module]" = []
        if expand != 1:
            layers += [nn.Conv2d(cin, mid, 1, bias=False), nn.BatchNorm2d(mid), nn.ReLU6()]
        layers += [nn.Conv2d(mid, mid, kernel, stride, kernel // 2, groups=mid, bias=False), nn.BatchNorm2d(mid),
                   nn.ReLU6(), nn.Conv2d(mid, cout, 1, bias=False), nn.BatchNorm2d(cout)]
        self.block = nn.Sequential(*layers)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.block(x)
        return x + y if self.residual else y


def efficientnet_lite0_standin(seed: int = 0) -> nn.Module:
    """EfficientNet-Lite0's layer stack with seeded random weights (see the module docstring), eval mode."""
    torch.manual_seed(seed)
    layers: "list[nn.Module]" = [nn.Conv2d(3, 32, 3, 2, 1, bias=False), nn.BatchNorm2d(32), nn.ReLU6()]
    cin = 32
    for expand, kernel, stride, cout, repeats in LITE0_STAGES:
        for r in range(repeats):
            layers.append(_MBConv(cin, cout, expand, kernel, stride if r == 0 else 1))
            cin = cout
    layers += [nn.Conv2d(cin, 1280, 1, bias=False), nn.BatchNorm2d(1280), nn.ReLU6(), nn.AdaptiveAvgPool2d(1),
               nn.Flatten(), nn.Linear(1280, 1000)]
    model = nn.Sequential(*layers)
    with torch.no_grad():  # BN statistics of a trained net's scale, so activations stay O(1)
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_var.uniform_(0.5, 2.0)
                m.running_mean.normal_(0, 0.1)
    return model.eval()


def _models(names: "list[str]") -> "dict[str, tuple[nn.Module, Callable[[nn.Module], Any], tuple[type, ...], str]]":
    """name -> (FP32 model, forward, packed layer kinds, description)."""
    out: "dict[str, Any]" = {}
    if "minilm" in names:
        from lowbit.experiments.text import load_minilm

        model, tokenizer = load_minilm()
        inputs = dict(tokenizer([SENTENCE], return_tensors="pt"))
        tokens = int(inputs["input_ids"].shape[1])
        out["minilm"] = (model, lambda m: m(**inputs), (nn.Linear,),
                         f"all-MiniLM-L6-v2 forward, batch 1 ({tokens} tokens), every Linear packed")
    if "efficientnet" in names:
        image = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(1))
        out["efficientnet"] = (efficientnet_lite0_standin(), lambda m: m(image), (nn.Conv2d, nn.Linear),
                               "EfficientNet-Lite0 stand-in (random weights) forward, batch 1 (224x224), every Conv2d "
                               "and Linear packed")
    return out


def run(model: nn.Module, forward: "Callable[[nn.Module], Any]", kinds: "tuple[type, ...]", formats: "list[str]",
        repeats: int) -> "list[dict[str, Any]]":
    """Median thread-CPU time of FP32 and every packed variant, interleaved; rows with the ratio."""
    variants = {"fp32": model}
    variants.update({name: packed_copy(model, FORMATS[name], kinds) for name in formats})
    times: "dict[str, list[float]]" = {k: [] for k in variants}
    with torch.inference_mode():
        for m in variants.values():  # warm up: compiles kernels, builds tables, staging and tile plans
            forward(m)
            forward(m)
        for r in range(repeats):
            order = list(variants.items()) if r % 2 == 0 else list(variants.items())[::-1]
            for name, m in order:
                t = time.thread_time()
                forward(m)
                times[name].append(time.thread_time() - t)
    base = statistics.median(times["fp32"])
    return [{"format": k, "ms": statistics.median(v) * 1e3, "min_ms": min(v) * 1e3,
             "ratio_to_fp32": statistics.median(v) / base} for k, v in times.items()]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--formats", nargs="+", default=list(FORMATS), choices=list(FORMATS))
    ap.add_argument("--models", nargs="+", default=["minilm", "efficientnet"], choices=["minilm", "efficientnet"])
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    torch.set_num_threads(1)
    results: "dict[str, Any]" = {}
    lines: "list[str]" = []
    for name, (model, forward, kinds, what) in _models(args.models).items():
        load_before = os.getloadavg()
        formats = [f for f in args.formats if f not in CONV_ONLY or nn.Conv2d in kinds]
        rows = run(model, forward, kinds, formats, args.repeats)
        load_after = os.getloadavg()
        results[name] = {"description": what, "loadavg_before": load_before, "loadavg_after": load_after, "rows": rows}
        lines += [f"{what}, 1 torch thread, thread CPU time, median of {args.repeats}; "
                  f"load average {load_before[0]:.2f} -> {load_after[0]:.2f}", "",
                  "| weights | ms | × FP32 |", "|---|---:|---:|"]
        lines += [f"| {r['format']} | {r['ms']:.2f} | {r['ratio_to_fp32']:.2f} |" for r in rows]
        lines.append("")
    print("\n".join(lines))
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "packed_inference.md").write_text("\n".join(lines))
        (args.out / "packed_inference.json").write_text(json.dumps(
            {"batch": 1, "threads": 1, "repeats": args.repeats, "torch": torch.__version__, "lowbit": lb.__version__,
             "models": results}, indent=2))


if __name__ == "__main__":
    main()
