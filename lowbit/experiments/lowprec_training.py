"""Training from scratch with simulated low-precision weights, activations and gradients.

LeNet-5 on MNIST (scikit-learn digits with a small CNN when MNIST is not installed) is trained
with the same seed, data order and schedule (`lowbit.experiments.train`: Adam, one-cycle) in
FP32 and with ``lb.quantize_`` simulating, in every conv and linear layer, the weight, the layer
input and the gradient flowing into the layer output in:

- ``posit8_es2`` (weights, inputs, gradients; round to nearest even) — the question of the
  simulation issue: does posit8 training reach FP32 accuracy (within 1 point)?
- ``posit8_es2`` with stochastically rounded gradients (seeded);
- FP8 ``e4m3fn`` weights/inputs with ``e5m2`` gradients (no scaling);
- FP16 ``e5m10`` everywhere.

Accumulation stays FP32 (torch's matmul/conv), as in the posit GAN paper's quire-free setup.
"""

from __future__ import annotations

import copy
import time
from pathlib import Path
from typing import Any

import torch

from lowbit.errors import DataUnavailableError
from lowbit.experiments.data import Dataset, load_dataset
from lowbit.experiments.models import build_model
from lowbit.experiments.train import TrainConfig, _fit, evaluate, threads
from lowbit.quant import quantize_

NAME = "training"
TITLE = "Training from scratch with simulated posit8 / FP8 / FP16 weights, activations and gradients"
SUMMARY = ("LeNet-5/MNIST trained in FP32 and with posit8, FP8 and FP16 simulated weights, layer inputs and "
           "gradients (lb.quantize_); top-1 and step cost vs FP32")

CONFIGS: "dict[str, dict[str, Any] | None]" = {
    "fp32": None,
    "posit8_es2": {"weight": "posit8_es2", "input": "posit8_es2", "grad": "posit8_es2"},
    "posit8_es2 (stochastic grads)": {"weight": "posit8_es2", "input": "posit8_es2",
                                      "grad": {"format": "posit8_es2", "rounding": "stochastic"}, "seed": 0},
    "e4m3fn / e5m2 grads": {"weight": "e4m3fn", "input": "e4m3fn", "grad": "e5m2"},
    "e5m10 (fp16)": {"weight": "e5m10", "input": "e5m10", "grad": "e5m10"},
}


def config(quick: bool = False, seed: int = 0) -> "dict[str, Any]":
    """MNIST, 3 epochs (quick: scikit-learn digits, 12 epochs, one thread)."""
    return {
        "dataset": "digits" if quick else "mnist",
        "model": "digits-cnn" if quick else "lenet5",
        "epochs": 12 if quick else 3,
        "batch_size": 64 if quick else 128,
        "seed": seed,
        "threads": 1 if quick else 2,
        "configs": {k: v for k, v in CONFIGS.items()},
    }


def _data(cfg: "dict[str, Any]", ctx: Any) -> "tuple[Dataset, str]":
    try:
        return load_dataset(cfg["dataset"]), cfg["model"]
    except DataUnavailableError as err:
        ctx.note(f"{cfg['dataset']} is not installed ({err}); trained on scikit-learn digits instead")
        return load_dataset("digits"), "digits-cnn"


def run(cfg: "dict[str, Any]", ctx: Any) -> "list[dict[str, Any]]":
    data, model_name = _data(cfg, ctx)
    tcfg = TrainConfig(model_name, data.name, cfg["seed"], cfg["epochs"], cfg["batch_size"], threads=cfg["threads"])
    torch.manual_seed(cfg["seed"])
    initial = build_model(model_name, data.num_classes)
    rows: list[dict[str, Any]] = []
    fp32_acc = None
    for label, qcfg in cfg["configs"].items():
        model = copy.deepcopy(initial)
        if qcfg is not None:
            quantize_(model, qcfg)
        torch.manual_seed(cfg["seed"])
        start = time.perf_counter()
        with threads(cfg["threads"]):
            _fit(model, data, tcfg, ctx.progress)
            acc = evaluate(model, data.test_images, data.test_labels)
        seconds = time.perf_counter() - start
        fp32_acc = acc if qcfg is None else fp32_acc
        rows.append({
            "dataset": data.name, "model": model_name, "config": label, "top1": acc,
            "drop_vs_fp32_points": None if fp32_acc is None else 100 * (fp32_acc - acc),
            "train_seconds": seconds, "epochs": cfg["epochs"], "test_images": int(data.test_labels.numel()),
        })
    fp32_s = rows[0]["train_seconds"]
    for r in rows:
        r["time_vs_fp32"] = r["train_seconds"] / fp32_s
    return rows


def plot(rows: "list[dict[str, Any]]", cfg: "dict[str, Any]", ctx: Any) -> "list[Path]":
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.5))
    labels = [r["config"] for r in rows]
    ax.barh(labels, [100 * r["top1"] for r in rows], color=["#555"] + ["#3a7"] * (len(rows) - 1))
    lo = min(100 * r["top1"] for r in rows)
    ax.set_xlim(max(0.0, lo - 5), 100)
    ax.set_xlabel(f"top-1 on the {rows[0]['test_images']} test images (%)")
    ax.set_title(f"{rows[0]['model']} on {rows[0]['dataset']}: trained with simulated formats")
    ax.invert_yaxis()
    fig.tight_layout()
    path = ctx.out_dir / "training_top1.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return [path]


def report(rows: "list[dict[str, Any]]", cfg: "dict[str, Any]", ctx: Any) -> str:
    r0 = rows[0]
    lines = [f"{r0['model']} on {r0['dataset']}, {r0['epochs']} epochs, seed {cfg['seed']}; weights, layer inputs and "
             "output gradients of every conv/linear layer simulated with `lb.quantize_`.", "",
             "| training format | top-1 | drop vs FP32 (points) | train time | × FP32 time |",
             "|---|---:|---:|---:|---:|"]
    for r in rows:
        drop = "" if r["config"] == "fp32" else f"{r['drop_vs_fp32_points']:+.2f}"
        lines.append(f"| {r['config']} | {100 * r['top1']:.2f} % | {drop} | {r['train_seconds']:.1f} s | "
                     f"{r['time_vs_fp32']:.2f} |")
    p8 = next(r for r in rows if r["config"] == "posit8_es2")
    verdict = "within" if p8["drop_vs_fp32_points"] <= 1.0 else "NOT within"
    lines += ["", f"posit8_es2 training is {verdict} 1 point of FP32 ({p8['drop_vs_fp32_points']:+.2f} points)."]
    return "\n".join(lines)
