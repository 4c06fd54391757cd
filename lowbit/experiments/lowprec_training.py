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

Step cost vs FP32 is measured apart from the training runs (`step_times`): every format first
takes a few warm-up steps (numba compilation, allocator and thread-pool start-up), then one
training step of each format in turn, repeated; the ratio is of the medians. Timing the whole
training runs one after another instead put every start-up cost on the first (FP32) run and made
simulated training look 2-3x faster than FP32.
"""

from __future__ import annotations

import copy
import statistics
import time
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

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
        "timing_warmup_steps": 3,
        "timing_steps": 15 if quick else 25,
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
    timing_models = {}
    for label, qcfg in cfg["configs"].items():
        timing_models[label] = copy.deepcopy(initial)
        if qcfg is not None:
            quantize_(timing_models[label], qcfg)
    batch = data.train_images[: cfg["batch_size"]], data.train_labels[: cfg["batch_size"]]
    with threads(cfg["threads"]):
        times = step_times(timing_models, batch, cfg.get("timing_steps", 15), cfg.get("timing_warmup_steps", 3))
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
            "step_ms_median": 1e3 * statistics.median(times[label]),
            "step_ms_min": 1e3 * min(times[label]),
            "step_ms_max": 1e3 * max(times[label]),
        })
    base = next((r["step_ms_median"] for r in rows if r["config"] == "fp32"), None)
    for r in rows:
        r["time_vs_fp32"] = None if base is None else r["step_ms_median"] / base
    ctx.info["timing"] = {"batch_size": cfg["batch_size"], "warmup_steps": cfg.get("timing_warmup_steps", 3),
                          "interleaved_steps": cfg.get("timing_steps", 15), "threads": cfg["threads"]}
    return rows


def step_times(models: "Mapping[str, nn.Module]", batch: "tuple[torch.Tensor, torch.Tensor]", steps: int,
               warmup: int = 3) -> "dict[str, list[float]]":
    """Seconds of one training step (forward, cross-entropy, backward, Adam step) of each model.

    Every model first takes ``warmup`` untimed steps; then the models take one timed step each in
    turn, ``steps`` times over, so a slow phase of the machine (another process, frequency
    scaling) falls on all of them alike. Compare medians. The models' weights change (they train
    on ``batch``): pass copies.

    >>> import torch
    >>> from torch import nn
    >>> batch = torch.randn(8, 4), torch.randint(0, 3, (8,))
    >>> times = step_times({"a": nn.Linear(4, 3), "b": nn.Linear(4, 3)}, batch, steps=5, warmup=1)
    >>> {k: len(v) for k, v in times.items()}
    {'a': 5, 'b': 5}
    """
    if steps < 1 or warmup < 0:
        raise ValueError(f"steps must be >= 1 and warmup >= 0, got steps={steps}, warmup={warmup}")
    images, labels = batch
    opts = {k: torch.optim.Adam(m.parameters(), lr=1e-4) for k, m in models.items()}

    def step(key: str) -> None:
        model, opt = models[key], opts[key]
        loss = nn.functional.cross_entropy(model(images), labels)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for m in models.values():
        m.train()
    for _ in range(warmup):
        for key in models:
            step(key)
    out: "dict[str, list[float]]" = {k: [] for k in models}
    for _ in range(steps):
        for key in models:
            start = time.perf_counter()
            step(key)
            out[key].append(time.perf_counter() - start)
    return out


def plot(rows: "list[dict[str, Any]]", cfg: "dict[str, Any]", ctx: Any) -> "list[Path]":
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.5))
    labels = [r["config"] for r in rows]
    top1 = [100 * r["top1"] for r in rows]
    # the bars start at 0, so their lengths are honest; a gap of a few tenths of a point is too small
    # to see at this scale, so every bar carries its value and its gap to FP32 in points
    bars = ax.barh(labels, top1, color=["#555"] + ["#3a7"] * (len(rows) - 1))
    for bar, r, acc in zip(bars, rows, top1):
        drop = r.get("drop_vs_fp32_points")
        gap = "" if r["config"] == "fp32" or drop is None else f"  ({-drop:+.2f} pt vs FP32)"
        ax.text(1, bar.get_y() + bar.get_height() / 2, f"{acc:.2f} %{gap}", va="center", ha="left",
                color="white", fontsize=8)
    ax.set_xlim(0, 100)
    ax.set_xlabel(f"top-1 on the {rows[0]['test_images']} test images (%); axis from 0, gaps written on the bars")
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
             "| training format | top-1 | drop vs FP32 (points) | train time | step (median) | × FP32 step |",
             "|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        drop = "" if r["config"] == "fp32" else f"{r['drop_vs_fp32_points']:+.2f}"
        ratio = "" if r.get("time_vs_fp32") is None else f"{r['time_vs_fp32']:.2f}"
        step = f"{r['step_ms_median']:.1f} ms" if "step_ms_median" in r else ""
        lines.append(f"| {r['config']} | {100 * r['top1']:.2f} % | {drop} | {r['train_seconds']:.1f} s | {step} | "
                     f"{ratio} |")
    timing = ctx.info.get("timing") if ctx is not None else None
    if timing:
        lines += ["", f"Step cost: median of {timing['interleaved_steps']} training steps (batch "
                  f"{timing['batch_size']}, {timing['threads']} thread(s)) per format, taken in turn after "
                  f"{timing['warmup_steps']} warm-up steps each. Train time is the whole run, evaluation included "
                  "(the first run also pays start-up costs), so compare speed by the step columns."]
    p8 = next((r for r in rows if r["config"] == "posit8_es2" and r["drop_vs_fp32_points"] is not None), None)
    if p8 is not None:
        verdict = "within" if p8["drop_vs_fp32_points"] <= 1.0 else "NOT within"
        lines += ["", f"posit8_es2 training is {verdict} 1 point of FP32 ({p8['drop_vs_fp32_points']:+.2f} points)."]
    return "\n".join(lines)
