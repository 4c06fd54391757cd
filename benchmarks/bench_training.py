"""Cost of simulated low-precision training: one LeNet-5 step at batch 256, FP32 vs simulated.

    python benchmarks/bench_training.py [--batch 256] [--threads 2] [--repeats 30] [--busy 2] [--out DIR]

Each configuration quantizes weights, layer inputs and the gradients flowing into layer outputs
(``lb.quantize_``); FP32 runs the same model unquantized, in the same process, interleaved, so
the ratio is measured under the same machine load. Medians over the repeats, of the wall time
and of the process's CPU time per step (all its threads: torch's, numba's workers, the caller),
which other processes' load disturbs less than the wall time.

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

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's lowbit, not an installed one
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

    def step(name: str) -> tuple[float, float]:
        model, opt = setups[name]
        t, c = time.perf_counter(), time.process_time()
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
        return time.perf_counter() - t, time.process_time() - c

    def measure(label: str) -> dict[str, object]:
        for name in setups:  # warm-up: compiles kernels, touches memory
            for _ in range(3):
                step(name)
        load = os.getloadavg()[0]
        times: dict[str, list[tuple[float, float]]] = {n: [] for n in setups}
        for r in range(args.repeats):  # interleaved, order alternating
            for name in (list(setups) if r % 2 == 0 else list(setups)[::-1]):
                times[name].append(step(name))
        load_after = os.getloadavg()[0]
        base_wall = statistics.median(w for w, _ in times["fp32"])
        base_cpu = statistics.median(c for _, c in times["fp32"])
        rows = []
        print(f"LeNet-5 training step, batch {args.batch}, {args.threads} threads, median of {args.repeats}, "
              f"{label}, load average {load:.2f} -> {load_after:.2f}")
        print(f"{'configuration':34s} {'ms/step':>9s} {'× fp32':>7s} {'CPU ms':>9s} {'× fp32':>7s}")
        for name, ts in times.items():
            wall = statistics.median(w for w, _ in ts)
            cpu = statistics.median(c for _, c in ts)
            rows.append({"config": name, "ms_per_step": wall * 1e3, "ratio_to_fp32": wall / base_wall,
                         "cpu_ms_per_step": cpu * 1e3, "cpu_ratio_to_fp32": cpu / base_cpu})
            print(f"{name:34s} {wall * 1e3:9.2f} {wall / base_wall:7.2f} {cpu * 1e3:9.2f} {cpu / base_cpu:7.2f}")
        return {"label": label, "loadavg": load, "loadavg_after": load_after, "rows": rows}

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
             "lowbit": lb.__version__, "cpus": os.cpu_count(), "rows": rows, "runs": runs}, indent=2))
        (args.out / "training.md").write_text(_markdown(args, runs))


def _markdown(args: argparse.Namespace, runs: list[dict[str, object]]) -> str:
    lines = [f"# LeNet-5 training step, batch {args.batch}, {args.threads} torch threads, {os.cpu_count()} CPUs",
             "", "`python benchmarks/bench_training.py --busy N --out benchmarks/results`: FP32 and each simulated",
             (f"configuration interleaved in one process; medians of {args.repeats} steps; wall time and "
              "process CPU time (every thread)."), ""]
    for run in runs:
        lines += [f"## {run['label']} (load average {run['loadavg']:.2f} → {run['loadavg_after']:.2f})", "",
                  "| configuration | ms / step | × FP32 | CPU ms / step | × FP32 |", "|---|---:|---:|---:|---:|"]
        lines += [f"| {r['config']} | {r['ms_per_step']:.2f} | {r['ratio_to_fp32']:.2f} | {r['cpu_ms_per_step']:.2f} "
                  f"| {r['cpu_ratio_to_fp32']:.2f} |" for r in run["rows"]]  # type: ignore[attr-defined]
        lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
