"""Is FP32 accumulation a quire? Exact accumulation vs rounded running sums, per layer and end to end.

A trained FP32 model (LeNet-5 / MNIST; the full run adds the Fashion-MNIST CNN; scikit-learn
digits if neither is installed) runs with every conv / linear layer's input and weight quantized
to an operand format (posit8_es2, e4m3fn, int8 with per-channel absmax weights and a per-tensor
absmax input; the bias stays FP32), all through `lowbit.quantize_` configs, its products summed by:

- ``quire``: ``"accumulate": "quire"`` — the exact sum rounded once to FP32;
- ``fp32``: no ``accumulate`` key — torch's own FP32 convolution / matmul (what simulations, the
  posit GAN paper's included, do);
- ``bf16`` / ``fp16`` / the operand format itself: ``"accumulate": fmt, "accumulate_every": K`` — the
  running sum rounded to that format every K products (K = 1, 16, 64). lowbit's convolutions chunk
  whole input channels (max(1, K // kernel size) channels), so a conv rounds after
  ``kernel_size · channels`` products; each layer's actual products per rounding is in the rows.
  (int8 operands get no int8 accumulator: integer hardware sums into int32.)

Rows: per (model, operand format, accumulator, K): top-1 of the full forward, max / mean |logit
error| vs the quire model, and per layer (fed the quire model's input of that layer, so only that
layer's accumulation differs) the share of outputs whose final rounded value differs from the
quire's exact sum rounded once to the same format (FP32 for ``fp32``; bf16 for a bf16 accumulator:
``"accumulate": "quire", "output": "bf16"``) and the max / mean |error| vs the FP32-rounded quire.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lowbit.experiments.data import Dataset
from lowbit.experiments.fp32_models import load_datasets, trained_model

__all__ = ["NAME", "TITLE", "SUMMARY", "config", "run", "plot", "report", "operand_config", "variant_config",
           "compare"]

NAME = "accumulation"
TITLE = "Is FP32 accumulation a quire? Exact vs rounded accumulation of posit8 / FP8 / int8 products"
SUMMARY = ("LeNet-5/MNIST and the Fashion-MNIST CNN with posit8, e4m3fn and int8 operands: quire (exact, rounded "
           "once) vs FP32, bf16, fp16 and the operand format as accumulators: top-1, logit error, per-layer differences")

def config(quick: bool = False, seed: int = 0) -> "dict[str, Any]":
    """The run's configuration (JSON-able). ``quick``: MNIST only, the first 500 test images.

    >>> config(quick=True)["test_subset"], config()["datasets"]
    (500, ['mnist', 'fashion-mnist'])
    """
    return {
        "datasets": ["mnist"] if quick else ["mnist", "fashion-mnist"],
        "fallback": "digits",
        "operands": ["posit8_es2", "e4m3fn", "int8"],
        "accumulators": ["fp32", "bf16", "fp16", "operand"],
        "every": [1, 16, 64],
        "test_subset": 500 if quick else None,
        "epochs": {},  # per data set; empty: the flagship's (shares its cached models)
        "seed": seed,
        "cache": True,
    }


def operand_config(operand: str) -> "dict[str, Any]":
    """The quantize_ roles of an operand format (weight and input; the bias stays FP32).

    >>> operand_config("int8")["weight"]
    {'format': 'int8', 'scaling': 'absmax', 'granularity': 'channel'}
    """
    if operand.startswith("int"):
        return {"weight": {"format": operand, "scaling": "absmax", "granularity": "channel"},
                "input": {"format": operand, "scaling": "absmax"}}
    return {"weight": operand, "input": operand}


def variant_config(operand: str, accumulator: str, every: "int | None") -> "dict[str, Any]":
    """The quantize_ config of one variant: ``accumulator`` is "quire", "fp32", a format or "operand".

    >>> variant_config("e4m3fn", "operand", 16)
    {'weight': 'e4m3fn', 'input': 'e4m3fn', 'accumulate': 'e4m3fn', 'accumulate_every': 16}
    >>> variant_config("e4m3fn", "quire", None)["accumulate"]
    'quire'
    """
    cfg = operand_config(operand)
    if accumulator == "quire":
        cfg["accumulate"] = "quire"
    elif accumulator != "fp32":
        cfg["accumulate"] = operand if accumulator == "operand" else accumulator
        cfg["accumulate_every"] = every
    return cfg


def _variants(cfg: "dict[str, Any]", operand: str) -> "list[tuple[str, int | None]]":
    out: "list[tuple[str, int | None]]" = []
    for acc in cfg["accumulators"]:
        if acc == "fp32":
            out.append((acc, None))
        elif not (acc == "operand" and operand.startswith("int")):  # int8 MACs sum into int32
            out += [(acc, k) for k in cfg["every"]]
    return out


def _quantized(model: nn.Module, qcfg: "dict[str, Any]") -> nn.Module:
    import copy

    from lowbit.quant.quantize import quantize_

    m = copy.deepcopy(model).eval()
    quantize_(m, qcfg)
    return m


def _layers(model: nn.Module) -> "dict[str, nn.Module]":
    """The layers whose accumulation the configs change: the registry's chunked ones (each
    accumulates in the quire too)."""
    from lowbit.simulate.registry import layer_types

    kinds = layer_types(chunked=True)
    return {n: m for n, m in model.named_modules() if isinstance(m, kinds)}


def _products_per_rounding(layer: nn.Module, every: "int | None") -> int:
    """How many products lowbit's chunked accumulation sums before each rounding in this layer."""
    w = layer.weight
    reduction = int(w[0].numel())
    if every is None:
        return reduction
    if w.dim() == 2:
        return min(every, reduction)
    kernel = int(w[0, 0].numel())
    return min(reduction, max(1, every // kernel) * kernel)


def _recorded(model: nn.Module, images: torch.Tensor) -> "tuple[torch.Tensor, dict[str, torch.Tensor], dict[str, torch.Tensor]]":
    """The model's logits and every conv / linear layer's input and output."""
    ins: "dict[str, torch.Tensor]" = {}
    outs: "dict[str, torch.Tensor]" = {}
    hooks = []
    for name, layer in _layers(model).items():
        def hook(mod: nn.Module, args: Any, out: torch.Tensor, name: str = name) -> None:
            ins[name], outs[name] = args[0], out
        hooks.append(layer.register_forward_hook(hook))
    try:
        logits = model(images)
    finally:
        for h in hooks:
            h.remove()
    return logits, ins, outs


def compare(model: nn.Module, operand: str, variants: "list[tuple[str, int | None]]", images: torch.Tensor,
            labels: torch.Tensor) -> "list[dict[str, Any]]":
    """One row per variant (the quire first): top-1, logit errors vs the quire, per-layer differences.

    Each layer's per-layer numbers come from feeding it the quire model's input of that layer.
    """
    rows: "list[dict[str, Any]]" = []
    with torch.no_grad():
        quire = _quantized(model, variant_config(operand, "quire", None))
        ref_logits, feed, ref_out = _recorded(quire, images)
        once: "dict[str, dict[str, torch.Tensor]]" = {}  # the exact sum rounded once to each accumulator format
        for acc, every in variants:
            fmt = operand if acc == "operand" else acc
            if acc != "fp32" and fmt not in once:
                layers = _layers(_quantized(model, {**variant_config(operand, "quire", None), "output": fmt}))
                once[fmt] = {name: layer(feed[name]) for name, layer in layers.items()}
        for acc, every in [("quire", None)] + variants:
            start = time.perf_counter()
            fmt = operand if acc == "operand" else acc
            target = ref_out if acc in ("quire", "fp32") else once[fmt]
            m = quire if acc == "quire" else _quantized(model, variant_config(operand, acc, every))
            logits = ref_logits if acc == "quire" else m(images)
            per_layer: "dict[str, Any]" = {}
            for name, layer in _layers(m).items():
                out = ref_out[name] if acc == "quire" else layer(feed[name])
                err = (out - ref_out[name]).abs()
                per_layer[name] = {"differ_share": float((out != target[name]).float().mean()),
                                   "max_err": float(err.max()), "mean_err": float(err.mean()),
                                   "products_per_rounding": _products_per_rounding(layer, every)
                                   if acc not in ("quire", "fp32") else None}
            err = (logits - ref_logits).abs()
            rows.append({
                "operands": operand, "accumulator": operand if acc == "operand" else acc, "every": every,
                "variant": acc if every is None else f"{fmt}/{every}",
                "top1": float((logits.argmax(1) == labels).float().mean()), "test_images": int(labels.numel()),
                "logit_max_err": float(err.max()), "logit_mean_err": float(err.mean()),
                "logit_argmax_changed": float((logits.argmax(1) != ref_logits.argmax(1)).float().mean()),
                "differ_share": max(v["differ_share"] for v in per_layer.values()),
                "layers": per_layer, "seconds": round(time.perf_counter() - start, 2),
            })
    return rows


def run(cfg: "dict[str, Any]", ctx: Any) -> "list[dict[str, Any]]":
    rows: "list[dict[str, Any]]" = []
    for data in load_datasets(cfg["datasets"], cfg["fallback"], ctx, NAME):
        rows += _run_dataset(data, cfg, ctx)
    return rows


def _run_dataset(data: Dataset, cfg: "dict[str, Any]", ctx: Any) -> "list[dict[str, Any]]":
    trained = trained_model(data, {"seed": cfg["seed"], "cache": cfg["cache"], "epochs": cfg["epochs"]}, ctx)
    model = trained.model.eval()
    images, labels = data.test_images, data.test_labels
    if cfg["test_subset"]:
        images, labels = images[: cfg["test_subset"]], labels[: cfg["test_subset"]]
    rows = []
    for operand in cfg["operands"]:
        for row in compare(model, operand, _variants(cfg, operand), images, labels):
            rows.append({"dataset": data.name, "model": type(model).__name__, **row})
    return rows


def plot(rows: "list[dict[str, Any]]", cfg: "dict[str, Any]", ctx: Any) -> "list[Path]":
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = list(dict.fromkeys((r["dataset"], r["operands"]) for r in rows))
    fig, axes = plt.subplots(1, len(groups), figsize=(4.2 * len(groups), 4.5), squeeze=False)
    for ax, (ds, op) in zip(axes[0], groups):
        sub = [r for r in rows if r["dataset"] == ds and r["operands"] == op and r["accumulator"] != "quire"]
        ax.barh([r["variant"] for r in sub], [100 * r["differ_share"] for r in sub], color="#3a7")
        ax.set_xscale("symlog", linthresh=0.1)
        ax.set_xlabel("outputs ≠ quire (%, worst layer)")
        ax.set_title(f"{ds}: {op} operands", fontsize=10)
        ax.invert_yaxis()
    fig.tight_layout()
    path = ctx.out_dir / "accumulation_differ.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return [path]


def _fp32_verdict(rows: "list[dict[str, Any]]") -> "list[str]":
    lines = []
    for r in rows:
        if r["accumulator"] != "fp32":
            continue
        q = next(x for x in rows if x["dataset"] == r["dataset"] and x["operands"] == r["operands"]
                 and x["accumulator"] == "quire")
        worst = max(r["layers"].items(), key=lambda kv: kv[1]["differ_share"])
        lines.append(f"- {r['dataset']}, {r['operands']}: FP32 top-1 {100 * r['top1']:.2f}% vs quire "
                     f"{100 * q['top1']:.2f}%; {100 * r['logit_argmax_changed']:.2f}% of predictions change; "
                     f"max |logit error| {r['logit_max_err']:.3g}; worst layer {worst[0]}: "
                     f"{100 * worst[1]['differ_share']:.3f}% of outputs differ (max |error| {worst[1]['max_err']:.3g}).")
    return lines


def report(rows: "list[dict[str, Any]]", cfg: "dict[str, Any]", ctx: Any) -> str:
    lines = ["Every conv / linear layer: input and weight quantized to the operand format (int8: per-channel absmax "
             "weight, per-tensor absmax input), bias FP32. `quire`: exact sum rounded once to FP32; `fmt/K`: running "
             "sum rounded to fmt every K products (convolutions: whole input channels, see `products_per_rounding` "
             "in results.json). Per-layer columns (`layer ≠ quire`) feed each layer the quire model's input of that "
             "layer and count outputs that differ from the exact sum rounded once to the accumulator's format.", "",
             "**Is FP32 accumulation as good as a quire?**", ""] + _fp32_verdict(rows) + [""]
    for ds in dict.fromkeys(r["dataset"] for r in rows):
        sub = [r for r in rows if r["dataset"] == ds]
        names = list(sub[0]["layers"])
        lines += [f"### {ds} ({sub[0]['model']}, {sub[0]['test_images']} test images)", "",
                  "| operands | accumulator | top-1 | predictions ≠ quire | max / mean logit err | "
                  + " | ".join(f"{n} ≠ quire" for n in names) + " |",
                  "|---|---|---:|---:|---:|" + "---:|" * len(names)]
        for r in sub:
            cells = " | ".join(f"{100 * r['layers'][n]['differ_share']:.2f}%" for n in names)
            lines.append(f"| {r['operands']} | {r['variant']} | {100 * r['top1']:.2f}% | "
                         f"{100 * r['logit_argmax_changed']:.2f}% | {r['logit_max_err']:.3g} / "
                         f"{r['logit_mean_err']:.3g} | {cells} |")
        lines.append("")
    lines.append("The posit GAN's generator is not part of this experiment (training its FP32 generator takes "
                 "minutes): `lowbit run posit-gan` deploys it with FP32 accumulation.")
    return "\n".join(lines) + "\n"
