"""Packed inference at batch 1 (issue 16, point 5): MiniLM's forward with every Linear packed, against FP32.

    python benchmarks/bench_packed_inference.py [--repeats 30] [--out benchmarks/results]

all-MiniLM-L6-v2 (`lowbit.experiments.text.load_minilm`, 36 Linear layers, 10.6 M weights) runs
one sentence (batch 1, 12 tokens) in FP32 and with every Linear weight packed (`lb.pack_`,
decoded on every forward into the per-thread staging buffer, no decoded cache), per format in
`FORMATS`, interleaved in one process with the order alternating, so every variant sees the same
machine load. One torch thread, timed in the thread's CPU time (time spent descheduled by other
processes does not count). Reports the median ratio to FP32 per format and the machine load
(``os.getloadavg``). The bar: every format ≤ 1.1× FP32. Writes ``packed_inference.json`` and
``packed_inference.md`` under ``--out``.
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
from typing import Any

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
}
SENTENCE = "A man is playing a guitar on the stage."


def packed_copy(model: nn.Module, spec: Any) -> nn.Module:
    """A deep copy of ``model`` with every Linear weight packed in ``spec`` (simulated first, then packed)."""
    m = copy.deepcopy(model)
    for module in list(m.modules()):
        if type(module) is nn.Linear:
            lb.quantize_(module, {"weight": spec})
    return lb.pack_(m)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--formats", nargs="+", default=list(FORMATS), choices=list(FORMATS))
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    from lowbit.experiments.text import load_minilm

    torch.set_num_threads(1)
    model, tokenizer = load_minilm()
    inputs = dict(tokenizer([SENTENCE], return_tensors="pt"))
    variants = {"fp32": model}
    variants.update({name: packed_copy(model, FORMATS[name]) for name in args.formats})
    times: "dict[str, list[float]]" = {k: [] for k in variants}
    load_before = os.getloadavg()
    with torch.inference_mode():
        for m in variants.values():  # warm up: compiles kernels, builds tables and staging plans
            m(**inputs)
            m(**inputs)
        for r in range(args.repeats):
            order = list(variants.items()) if r % 2 == 0 else list(variants.items())[::-1]
            for name, m in order:
                t = time.thread_time()
                m(**inputs)
                times[name].append(time.thread_time() - t)
    load_after = os.getloadavg()
    base = statistics.median(times["fp32"])
    rows = [{"format": k, "ms": statistics.median(v) * 1e3, "min_ms": min(v) * 1e3,
             "ratio_to_fp32": statistics.median(v) / base} for k, v in times.items()]
    tokens = int(inputs["input_ids"].shape[1])
    head = (f"MiniLM-L6 forward, batch 1 ({tokens} tokens), every Linear packed, 1 torch thread, thread CPU time, "
            f"median of {args.repeats}; load average {load_before[0]:.2f} -> {load_after[0]:.2f}")
    lines = [head, "", "| weights | ms | × FP32 |", "|---|---:|---:|"]
    lines += [f"| {r['format']} | {r['ms']:.2f} | {r['ratio_to_fp32']:.2f} |" for r in rows]
    print("\n".join(lines))
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "packed_inference.md").write_text("\n".join(lines) + "\n")
        (args.out / "packed_inference.json").write_text(json.dumps(
            {"model": "all-MiniLM-L6-v2", "batch": 1, "tokens": tokens, "threads": 1, "repeats": args.repeats,
             "loadavg_before": load_before, "loadavg_after": load_after, "torch": torch.__version__,
             "lowbit": lb.__version__, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
