"""Is FP32 accumulation a quire? Exact accumulation vs rounded running sums, per layer and end to end.

Trained FP32 models — LeNet-5 / MNIST (the full run adds the Fashion-MNIST CNN; scikit-learn digits
if neither is installed) and the posit GAN's conditional DCGAN generator (`posit_gan.Generator`,
trained in FP32 here by `posit_gan.trained_generator` on the first data set, weights cached) —
run with every Linear / Conv / ConvTranspose layer's input and weight quantized to an operand
format (posit8_es2, e4m3fn, int8 with per-channel absmax weights and a per-tensor absmax input;
the bias stays FP32), all through `lowbit.quantize_` configs, their products summed by:

- ``quire``: ``"accumulate": "quire"`` — the exact sum rounded once to FP32;
- ``fp32``: no ``accumulate`` key — torch's own FP32 convolution / matmul (what simulations, the
  posit GAN paper's included, do);
- ``bf16`` / ``fp16`` / the operand format itself: ``"accumulate": fmt, "accumulate_every": K`` — the
  running sum rounded to that format every K products (K = 1, 16, 64), products counted one by one
  in the layer's reduction order (a conv: input channel, kernel row, kernel column; a transposed
  conv: the taps landing on the output; `lowbit.simulate.chunked`). (int8 operands get no int8
  accumulator: integer hardware sums into int32.)

Classifier rows: per (model, operand format, accumulator, K): top-1 of the full forward, max / mean
|logit error| vs the quire model. Generator rows: the images' max / mean |error| vs the quire
generator's images (same z and labels), the share of pixels that differ, SSIM against them, and
two quality numbers of `posit-gan` — the classifier-feature FID against real test images and the
share of images the classifier assigns to their conditioning label. Both kinds, per layer (fed
the quire model's input of that layer, so only that layer's accumulation differs): the share of
outputs whose final rounded value differs from the quire's exact sum rounded once to the same
format (FP32 for ``fp32``; bf16 for a bf16 accumulator: ``"accumulate": "quire", "output":
"bf16"``) and the max / mean |error| vs the FP32-rounded quire. Everything runs in batches of
``batch`` inputs (memory stays flat on the full test set).
"""

from __future__ import annotations

import contextlib
import math
import time
from pathlib import Path
from typing import Any, Iterator

import torch
from torch import nn

from lowbit.experiments.data import Dataset
from lowbit.experiments.fp32_models import load_datasets, trained_model

__all__ = ["NAME", "TITLE", "SUMMARY", "config", "run", "plot", "report", "operand_config", "variant_config",
           "compare", "compare_generator", "products_per_rounding"]

NAME = "accumulation"
TITLE = "Is FP32 accumulation a quire? Exact vs rounded accumulation of posit8 / FP8 / int8 products"
SUMMARY = ("LeNet-5/MNIST, the Fashion-MNIST CNN and the posit GAN's generator with posit8, e4m3fn and int8 operands: "
           "quire (exact, rounded once) vs FP32, bf16, fp16 and the operand format as accumulators: top-1 / image "
           "error, per-layer differences")

def config(quick: bool = False, seed: int = 0) -> "dict[str, Any]":
    """The run's configuration (JSON-able): the first 2000 test images, 500 generated ones.

    ``quick``: MNIST only, the first 300 test images, 128 images of a smaller generator.
    ``generator``: None leaves it out; its other training settings are `posit_gan.config`'s (the
    full run's generator is `posit-gan`'s full run's FP32 one).

    >>> config(quick=True)["test_subset"], config()["datasets"], config()["generator"]["iterations"]
    (300, ['mnist', 'fashion-mnist'], 1200)
    """
    return {
        "datasets": ["mnist"] if quick else ["mnist", "fashion-mnist"],
        "fallback": "digits",
        "operands": ["posit8_es2", "e4m3fn", "int8"],
        "accumulators": ["fp32", "bf16", "fp16", "operand"],
        "every": [1, 16, 64],
        # test images per data set. Not all 10,000 in the full run: K = 1 rounds after every product
        # (LeNet's conv2: 150 roundings per output), ≈ 3 min per 1000 Fashion-MNIST images on 2 cores
        "test_subset": 300 if quick else 2000,
        "batch": 1000,  # inputs per forward pass
        # torch's threads (None: leave them). One: the low-precision accumulators run a few small
        # elementwise ops per product, which a second thread slowed 2-10x on two shared cores
        # (measured); the quire's numba kernels keep their threads
        "threads": 1,
        "epochs": {},  # per data set; empty: the flagship's (shares its cached models)
        # the posit GAN's generator on the first data set; "operands": None = all of the above
        "generator": {"samples": 128 if quick else 500, "operands": ["posit8_es2"] if quick else None,
                      "iterations": 200 if quick else 1200, "batch_size": 64, "channels": [32, 16] if quick else [64, 32]},
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
    if any(isinstance(x, nn.Embedding) for x in m.modules()):  # the generator's label embedding: a table
        qcfg = {**qcfg, "exclude": ["type:Embedding"]}  # lookup, no products (the next layer's input role rounds it)
    quantize_(m, qcfg)
    return m


def _layers(model: nn.Module) -> "dict[str, nn.Module]":
    """The layers whose accumulation the configs change: the registry's chunked ones (each
    accumulates in the quire too)."""
    from lowbit.simulate.registry import layer_types

    kinds = layer_types(chunked=True)
    return {n: m for n, m in model.named_modules() if isinstance(m, kinds)}


def products_per_rounding(layer: nn.Module, every: "int | None") -> "tuple[int, int]":
    """(products per output, products summed before each rounding) of a Linear / Conv / ConvTranspose2d
    layer when its running sum is rounded every ``every`` products (None: only at the end).

    >>> products_per_rounding(nn.Conv2d(6, 16, 5), 16), products_per_rounding(nn.ConvTranspose2d(64, 32, 4, 2, 1), 1)
    ((150, 16), (256, 1))
    """
    from lowbit.simulate.chunked import conv_transpose_taps

    w = layer.weight
    if isinstance(layer, nn.ConvTranspose2d):
        taps = 1
        for d in range(2):
            phases = conv_transpose_taps(1, layer.stride[d], w.shape[2 + d], layer.stride[d], layer.padding[d],
                                         layer.dilation[d])
            taps *= max(len(t) for _, t in phases)
        reduction = int(w.shape[0]) // layer.groups * taps
    else:
        reduction = int(w[0].numel())
    return reduction, reduction if every is None else min(every, reduction)


def _recorded(model: nn.Module, inputs: "tuple[torch.Tensor, ...]"
              ) -> "tuple[torch.Tensor, dict[str, torch.Tensor], dict[str, torch.Tensor]]":
    """The model's output and every accumulating layer's input and output."""
    ins: "dict[str, torch.Tensor]" = {}
    outs: "dict[str, torch.Tensor]" = {}
    hooks = []
    for name, layer in _layers(model).items():
        def hook(mod: nn.Module, args: Any, out: torch.Tensor, name: str = name) -> None:
            ins[name], outs[name] = args[0], out
        hooks.append(layer.register_forward_hook(hook))
    try:
        output = model(*inputs)
    finally:
        for h in hooks:
            h.remove()
    return output, ins, outs


def _measure(model: nn.Module, operand: str, variants: "list[tuple[str, int | None]]",
             inputs: "tuple[torch.Tensor, ...]", batch: int) -> "list[dict[str, Any]]":
    """Per variant (the quire first): the model's outputs on all inputs (run ``batch`` at a time),
    per-layer differences vs the quire, and the seconds spent."""
    if not isinstance(batch, int) or batch < 1:
        raise ValueError(f"batch={batch!r}; allowed: an int >= 1")
    keys = [("quire", None)] + list(variants)
    quire = _quantized(model, variant_config(operand, "quire", None))
    models = {key: quire if key[0] == "quire" else _quantized(model, variant_config(operand, *key)) for key in keys}
    fmts = list(dict.fromkeys(operand if acc == "operand" else acc for acc, _ in variants if acc != "fp32"))
    # the exact sum rounded once to each accumulator format
    once_layers = {fmt: _layers(_quantized(model, {**variant_config(operand, "quire", None), "output": fmt}))
                   for fmt in fmts}
    results = [{"key": key, "outputs": [], "seconds": 0.0, "layers": {}} for key in keys]
    n = inputs[0].shape[0]
    with torch.no_grad():
        for s in range(0, n, batch):
            xb = tuple(t[s:s + batch] for t in inputs)
            start = time.perf_counter()
            ref, feed, ref_out = _recorded(quire, xb)
            results[0]["seconds"] += time.perf_counter() - start
            once = {fmt: {name: layer(feed[name]) for name, layer in layers.items()}
                    for fmt, layers in once_layers.items()}
            for res in results:
                start = time.perf_counter()
                acc, every = res["key"]
                m = models[res["key"]]
                output, ins, outs = (ref, feed, ref_out) if acc == "quire" else _recorded(m, xb)
                res["outputs"].append(output)
                for name, layer in _layers(m).items():
                    # a layer that got the quire model's input already gave its output in the forward
                    out = outs[name] if torch.equal(ins[name], feed[name]) else layer(feed[name])
                    target = ref_out[name] if acc in ("quire", "fp32") else once[operand if acc == "operand" else acc][name]
                    err = (out - ref_out[name]).abs()
                    st = res["layers"].setdefault(name, {"differ": 0, "count": 0, "max_err": 0.0, "err_sum": 0.0,
                                                         "products": products_per_rounding(layer, every if acc not in
                                                                                           ("quire", "fp32") else None)})
                    st["differ"] += int((out != target).sum())
                    st["count"] += out.numel()
                    st["max_err"] = max(st["max_err"], float(err.max()))
                    st["err_sum"] += float(err.double().sum())
                res["seconds"] += time.perf_counter() - start
    for res in results:
        res["outputs"] = torch.cat(res["outputs"])
        acc = res["key"][0]
        res["layers"] = {name: {"differ_share": st["differ"] / st["count"], "max_err": st["max_err"],
                                "mean_err": st["err_sum"] / st["count"], "products": st["products"][0],
                                "products_per_rounding": None if acc in ("quire", "fp32") else st["products"][1]}
                         for name, st in res["layers"].items()}
    return results


def _variant_fields(operand: str, key: "tuple[str, int | None]") -> "dict[str, Any]":
    acc, every = key
    fmt = operand if acc == "operand" else acc
    return {"operands": operand, "accumulator": fmt, "every": every,
            "variant": acc if every is None else f"{fmt}/{every}"}


def compare(model: nn.Module, operand: str, variants: "list[tuple[str, int | None]]", images: torch.Tensor,
            labels: torch.Tensor, batch: int = 1000) -> "list[dict[str, Any]]":
    """One row per variant (the quire first): top-1, logit errors vs the quire, per-layer differences.

    Each layer's per-layer numbers come from feeding it the quire model's input of that layer.
    """
    rows: "list[dict[str, Any]]" = []
    results = _measure(model, operand, variants, (images,), batch)
    ref_logits = results[0]["outputs"]
    for res in results:
        logits = res["outputs"]
        err = (logits - ref_logits).abs()
        rows.append({
            **_variant_fields(operand, res["key"]),
            "top1": float((logits.argmax(1) == labels).float().mean()), "test_images": int(labels.numel()),
            "logit_max_err": float(err.max()), "logit_mean_err": float(err.mean()),
            "logit_argmax_changed": float((logits.argmax(1) != ref_logits.argmax(1)).float().mean()),
            "differ_share": max(v["differ_share"] for v in res["layers"].values()),
            "layers": res["layers"], "seconds": round(res["seconds"], 2),
        })
    return rows


def compare_generator(generator: nn.Module, operand: str, variants: "list[tuple[str, int | None]]",
                      z: torch.Tensor, labels: torch.Tensor, quality: Any = None,
                      batch: int = 1000) -> "tuple[list[dict[str, Any]], dict[str, torch.Tensor]]":
    """One row per variant (the quire first) of a generator ``generator(z, labels)`` with images in
    [−1, 1]: image errors, pixels ≠ quire, SSIM vs the quire's images, per-layer differences, and
    ``quality(images)`` (a dict, e.g. FID and class accuracy) when given. Also returns the images.
    """
    from lowbit.experiments.posit_gan import psnr, ssim

    rows: "list[dict[str, Any]]" = []
    images: "dict[str, torch.Tensor]" = {}
    results = _measure(generator.eval(), operand, variants, (z, labels), batch)
    ref = results[0]["outputs"]
    for res in results:
        out = res["outputs"]
        err = (out - ref).abs()
        fields = _variant_fields(operand, res["key"])
        images[fields["variant"]] = out
        p = psnr((out + 1) / 2, (ref + 1) / 2)
        rows.append({
            **fields, "samples": int(labels.numel()),
            "image_max_err": float(err.max()), "image_mean_err": float(err.mean()),
            "image_differ_share": float((out != ref).float().mean()),
            "ssim": float(ssim((out + 1) / 2, (ref + 1) / 2).mean()), "psnr": None if math.isinf(p) else p,
            **(quality(out) if quality is not None else {}),
            "differ_share": max(v["differ_share"] for v in res["layers"].values()),
            "layers": res["layers"], "seconds": round(res["seconds"], 2),
        })
    return rows, images


def run(cfg: "dict[str, Any]", ctx: Any) -> "list[dict[str, Any]]":
    datasets = load_datasets(cfg["datasets"], cfg["fallback"], ctx, NAME)
    # train (or load) every model before the first quire kernel starts numba's worker threads
    classifiers = {data.name: trained_model(data, {"seed": cfg["seed"], "cache": cfg["cache"],
                                                   "epochs": cfg["epochs"]}, ctx).model.eval() for data in datasets}
    generator = _generator(datasets[0], cfg, ctx) if cfg.get("generator") else None
    rows: "list[dict[str, Any]]" = []
    with _torch_threads(cfg.get("threads")):
        for data in datasets:
            rows += _run_dataset(data, classifiers[data.name], cfg)
        if generator is not None:
            rows += _run_generator(generator, datasets[0], classifiers[datasets[0].name], cfg, ctx)
    return rows


@contextlib.contextmanager
def _torch_threads(n: "int | None") -> Iterator[None]:
    before = torch.get_num_threads()
    if n is not None:
        torch.set_num_threads(max(1, int(n)))
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _generator_config(cfg: "dict[str, Any]") -> "dict[str, Any]":
    """posit-gan's config (full-run settings) with the generator's overrides and the run's seed."""
    from lowbit.experiments import posit_gan

    gen = {k: v for k, v in cfg["generator"].items() if k not in ("samples", "operands")}
    return {**posit_gan.config(seed=cfg["seed"]), **gen, "seed": cfg["seed"]}


def _generator(data: Dataset, cfg: "dict[str, Any]", ctx: Any) -> nn.Module:
    from lowbit.experiments import posit_gan

    gcfg = _generator_config(cfg)
    g, info = posit_gan.trained_generator(gcfg, data, cache=cfg["cache"], progress=ctx.progress)
    if info["note"]:
        ctx.note(info["note"])
    ctx.info["generator"] = {"dataset": data.name, **{k: gcfg[k] for k in posit_gan.GENERATOR_KEYS},
                             "cached": info["cached"], "train_seconds": info["train_seconds"]}
    return g


def _run_dataset(data: Dataset, model: nn.Module, cfg: "dict[str, Any]") -> "list[dict[str, Any]]":
    images, labels = data.test_images, data.test_labels
    if cfg["test_subset"]:
        images, labels = images[: cfg["test_subset"]], labels[: cfg["test_subset"]]
    rows = []
    for operand in cfg["operands"]:
        for row in compare(model, operand, _variants(cfg, operand), images, labels, cfg["batch"]):
            rows.append({"dataset": data.name, "model": type(model).__name__, **row})
    return rows


def _run_generator(generator: nn.Module, data: Dataset, classifier: nn.Module, cfg: "dict[str, Any]",
                   ctx: Any) -> "list[dict[str, Any]]":
    """The generator's rows; the quality numbers use ``classifier``'s features as `posit-gan` does."""
    import copy

    import numpy as np

    from lowbit.experiments.posit_gan import FeatureSpace, frechet_distance, gan_images

    n = int(cfg["generator"]["samples"])
    z = torch.randn(n, _generator_config(cfg)["z_dim"], generator=torch.Generator().manual_seed(cfg["seed"] + 100))
    labels = torch.arange(n) % 10
    features = FeatureSpace(copy.deepcopy(classifier), data)  # its hook stays on this copy
    real, _ = features(gan_images(data.test_images[:n], data))

    def quality(images: torch.Tensor) -> "dict[str, float]":
        feats, preds = features(images)
        return {"fid": frechet_distance(feats, real), "class_accuracy": float((preds == labels).float().mean())}

    rows: "list[dict[str, Any]]" = []
    shown: "dict[str, np.ndarray]" = {}
    for operand in cfg["generator"].get("operands") or cfg["operands"]:
        got, images = compare_generator(generator, operand, _variants(cfg, operand), z, labels, quality, cfg["batch"])
        worst = max(got[1:], key=lambda r: r["image_mean_err"], default=got[0])
        for r in (got[0], *(x for x in got if x["accumulator"] == "fp32"), worst):
            shown[f"{operand}|{r['variant']}"] = ((images[r["variant"]][:10].clamp(-1, 1) + 1) * 127.5).round().to(
                torch.uint8).squeeze(1).numpy()
        rows += [{"dataset": data.name, "model": type(generator).__name__, **r} for r in got]
    np.savez_compressed(ctx.out_dir / "generator_images.npz", **shown)
    return rows


def _is_generator(row: "dict[str, Any]") -> bool:
    return "samples" in row


def plot(rows: "list[dict[str, Any]]", cfg: "dict[str, Any]", ctx: Any) -> "list[Path]":
    """accumulation_differ.png (worst layer's outputs ≠ quire per variant), and
    accumulation_generator.png (the generator's images: quire, FP32, the worst accumulator)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = list(dict.fromkeys((r["dataset"], r["model"], r["operands"]) for r in rows))
    fig, axes = plt.subplots(1, len(groups), figsize=(4.2 * len(groups), 4.5), squeeze=False)
    for ax, (ds, model, op) in zip(axes[0], groups):
        sub = [r for r in rows if (r["dataset"], r["model"], r["operands"]) == (ds, model, op)
               and r["accumulator"] != "quire"]
        ax.barh([r["variant"] for r in sub], [100 * r["differ_share"] for r in sub], color="#3a7")
        ax.set_xscale("symlog", linthresh=0.1)
        ax.set_xlabel("outputs ≠ quire (%, worst layer)")
        ax.set_title(f"{ds} {model}: {op} operands", fontsize=9)
        ax.invert_yaxis()
    fig.tight_layout()
    path = ctx.out_dir / "accumulation_differ.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    out = [path]
    npz = ctx.out_dir / "generator_images.npz"
    if npz.is_file():
        import numpy as np

        shown = dict(np.load(npz))
        fig, axes = plt.subplots(len(shown), 1, figsize=(6, 0.9 * len(shown) + 0.3), squeeze=False)
        for ax, (key, imgs) in zip(axes[:, 0], shown.items()):
            ax.imshow(np.concatenate(list(imgs), axis=1), cmap="gray", vmin=0, vmax=255)
            ax.set_title(key.replace("|", ", accumulator "), fontsize=8)
            ax.axis("off")
        fig.tight_layout()
        path = ctx.out_dir / "accumulation_generator.png"
        fig.savefig(path, dpi=100)
        plt.close(fig)
        out.append(path)
    return out


def _fp32_verdict(rows: "list[dict[str, Any]]") -> "list[str]":
    lines = []
    for r in rows:
        if r["accumulator"] != "fp32":
            continue
        q = next(x for x in rows if (x["dataset"], x["model"], x["operands"]) == (r["dataset"], r["model"], r["operands"])
                 and x["accumulator"] == "quire")
        worst = max(r["layers"].items(), key=lambda kv: kv[1]["differ_share"])
        layer = (f"worst layer {worst[0]}: {100 * worst[1]['differ_share']:.3f}% of outputs differ (max |error| "
                 f"{worst[1]['max_err']:.3g}).")
        if _is_generator(r):
            lines.append(f"- {r['dataset']} {r['model']}, {r['operands']}: {100 * r['image_differ_share']:.2f}% of "
                         f"pixels differ from the quire's, max |error| {r['image_max_err']:.3g} (images in [−1, 1]), "
                         f"SSIM {r['ssim']:.4f}; FID {r['fid']:.3g} vs quire {q['fid']:.3g}; {layer}")
        else:
            lines.append(f"- {r['dataset']} {r['model']}, {r['operands']}: FP32 top-1 {100 * r['top1']:.2f}% vs quire "
                         f"{100 * q['top1']:.2f}%; {100 * r['logit_argmax_changed']:.2f}% of predictions change; "
                         f"max |logit error| {r['logit_max_err']:.3g}; {layer}")
    return lines


def report(rows: "list[dict[str, Any]]", cfg: "dict[str, Any]", ctx: Any) -> str:
    lines = ["Every Linear / Conv / ConvTranspose layer: input and weight quantized to the operand format (int8: "
             "per-channel absmax weight, per-tensor absmax input), bias FP32. `quire`: exact sum rounded once to FP32; "
             "`fmt/K`: running sum rounded to fmt every K products, counted one by one in the layer's reduction order "
             "(`products_per_rounding` per layer in results.json). Per-layer columns (`layer ≠ quire`) feed each "
             "layer the quire model's input of that layer and count outputs that differ from the exact sum rounded "
             "once to the accumulator's format.", "",
             "**Is FP32 accumulation as good as a quire?**", ""] + _fp32_verdict(rows) + [""]
    classifier = [r for r in rows if not _is_generator(r)]
    for ds in dict.fromkeys(r["dataset"] for r in classifier):
        sub = [r for r in classifier if r["dataset"] == ds]
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
    gen = [r for r in rows if _is_generator(r)]
    if gen:
        names = list(gen[0]["layers"])
        info = ctx.info.get("generator", {})
        lines += [f"### The posit GAN's generator ({gen[0]['dataset']}, channels {info.get('channels', '?')}, "
                  f"{info.get('iterations', '?')} FP32 training iterations, {gen[0]['samples']} samples)", "",
                  "Images in [−1, 1], compared with the quire generator's images for the same z and labels. FID: "
                  "`posit-gan`'s classifier-feature FID against as many real test images; class acc.: images the "
                  "classifier assigns to their conditioning label.", "",
                  "| operands | accumulator | pixels ≠ quire | max / mean image err | SSIM vs quire | FID | class acc. | "
                  + " | ".join(f"{n} ≠ quire" for n in names) + " |",
                  "|---|---|---:|---:|---:|---:|---:|" + "---:|" * len(names)]
        for r in gen:
            cells = " | ".join(f"{100 * r['layers'][n]['differ_share']:.2f}%" for n in names)
            lines.append(f"| {r['operands']} | {r['variant']} | {100 * r['image_differ_share']:.2f}% | "
                         f"{r['image_max_err']:.3g} / {r['image_mean_err']:.3g} | {r['ssim']:.4f} | {r['fid']:.3g} | "
                         f"{100 * r['class_accuracy']:.1f}% | {cells} |")
        lines += ["", "![generator images](accumulation_generator.png)", ""]
    return "\n".join(lines) + "\n"
