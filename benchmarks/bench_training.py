"""Cost of simulated low-precision training: one LeNet-5 step at batch 256, FP32 vs simulated.

    python benchmarks/bench_training.py [--batch 256] [--threads 2] [--repeats 30] [--out DIR]

Each configuration quantizes weights, layer inputs and the gradients flowing into layer outputs
(``lb.quantize_``); FP32 runs the same model unquantized, in the same process, interleaved, so
the ratio is measured under the same machine load. Medians over the repeats.

``--busy N`` (default 2) then measures the same steps again with N other CPU-bound processes
(``python -c "while True: pass"``, started and killed by this script) on the same cores, and
reports both ratios side by side (the bars: posit8 w+in+grad ≤ 1.3× FP32 quiet, ≤ 2× under
contention). The load average (``os.getloadavg``) is reported with each run.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
from torch import nn

import lowbit as lb

CONFIGS = {
    "fp32": None,
    "posit8_es2 (w+in+grad)": {"weight": "posit8_es2", "input": "posit8_es2", "grad": "posit8_es2"},
    "e4m3fn/e5m2 (w+in, grad e5m2)": {"weight": "e4m3fn", "input": "e4m3fn", "grad": "e5m2"},
    "posit8_es2 weights only": {"weight": "posit8_es2"},
    "posit8_es2 stochastic grads": {"weight": "posit8_es2", "input": "posit8_es2",
                                    "grad": {"format": "posit8_es2", "rounding": "stochastic"}, "seed": 0},
}


def lenet5() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 6, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(6, 16, 5), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
        nn.Linear(16 * 5 * 5, 120), nn.ReLU(), nn.Linear(120, 84), nn.ReLU(), nn.Linear(84, 10))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--busy", type=int, default=2, help="CPU-bound processes of the contention run (0: none)")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    x, y = torch.randn(args.batch, 1, 28, 28), torch.randint(0, 10, (args.batch,))
    setups = {}
    for name, cfg in CONFIGS.items():
        torch.manual_seed(0)
        model = lenet5()
        if cfg is not None:
            lb.quantize_(model, cfg)
        setups[name] = (model, torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9))

    def step(name: str) -> float:
        model, opt = setups[name]
        t = time.perf_counter()
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
        return time.perf_counter() - t

    def measure(label: str) -> "dict[str, object]":
        for name in setups:  # warm-up: compiles kernels, touches memory
            for _ in range(3):
                step(name)
        load = os.getloadavg()[0]
        times: dict[str, list[float]] = {n: [] for n in setups}
        for r in range(args.repeats):  # interleaved, order alternating
            for name in (list(setups) if r % 2 == 0 else list(setups)[::-1]):
                times[name].append(step(name))
        base = statistics.median(times["fp32"])
        rows = []
        print(f"LeNet-5 training step, batch {args.batch}, {args.threads} threads, median of {args.repeats}, "
              f"{label}, load average {load:.2f}")
        print(f"{'configuration':34s} {'ms/step':>9s} {'× fp32':>7s}")
        for name, ts in times.items():
            med = statistics.median(ts)
            rows.append({"config": name, "ms_per_step": med * 1e3, "ratio_to_fp32": med / base})
            print(f"{name:34s} {med * 1e3:9.2f} {med / base:7.2f}")
        return {"label": label, "loadavg": load, "rows": rows}

    runs = [measure("no added load")]
    if args.busy > 0:
        busy = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(args.busy)]
        try:
            time.sleep(1.0)  # let the scheduler see them
            runs.append(measure(f"contention: {args.busy} CPU-bound processes"))
        finally:
            for proc in busy:
                proc.kill()
                proc.wait()
    rows = runs[0]["rows"]
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "training.json").write_text(json.dumps(
            {"batch": args.batch, "threads": args.threads, "repeats": args.repeats, "torch": torch.__version__,
             "lowbit": lb.__version__, "rows": rows, "runs": runs}, indent=2))


if __name__ == "__main__":
    main()
