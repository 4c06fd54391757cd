"""Low-bit float weights with fixed-point activations, against fixed-point weights (Lai et al. 2017).

After Lai, Suda and Chandra, "Deep Convolutional Neural Network Inference with Floating-point
Weights and Fixed-point Activations" (arXiv:1703.03073): the FP32-trained models of the flagship
(LeNet-5 on MNIST, the CNN on Fashion-MNIST; same cache entry, no retraining) run with

- **activations** — every conv/linear layer's input — in signed fixed point ``fixed<n>_f<f>`` of
  n bits, the fraction bits f chosen per layer by least squared error on calibration inputs: a
  few seeded batches of the *training* set (never the test set), run through the FP32 model;
- **weights** in one of two families at every width w, each with a per-layer power-of-two scale
  chosen by least squared error on that layer's weights:
  ``float`` — minifloat ``e<E>m<M>b<k>fn_sat``: split E/M and exponent bias k per layer (the bias is
  the float counterpart of fixed point's fraction bits; saturating, as an offline weight converter
  clips); ``fixed`` — ``fixed<w>_f<f>``, f per layer.

Biases stay FP32. Everything is simulated with `lowbit.quantize_` (roles ``weight`` and ``input``)
and measured as top-1 on the test set. The headline is the paper's: the weight storage saved at
iso-accuracy — the smallest weight width within 1 point of FP32 for float weights vs for fixed
weights, savings = 1 − float_bits / fixed_bits — beside the paper's "up to 36 %".
"""

from __future__ import annotations

import copy
import math
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lowbit.experiments.data import Dataset
from lowbit.experiments.fp32_models import fp32_target, load_datasets, trained_model
from lowbit.experiments.models import quantizable_weights
from lowbit.experiments.train import evaluate, threads
from lowbit.experiments.weight_formats import _best_per_layer
from lowbit.formats import FixedPoint, Minifloat, ScalarFormat
from lowbit.quant import best_fraction_bits, dequantize_, quantize_
from lowbit.quant.sensitivity import layer_pattern

NAME = "hybrid"
TITLE = "Float weights with fixed-point activations vs fixed/fixed (Lai et al. 2017)"
SUMMARY = (
    "FP32-trained LeNet-5/MNIST (and CNN/Fashion-MNIST): minifloat vs fixed-point weights at 2-10 bits with "
    "fixed-point activations (8, 6 ... bits, calibrated on training data); weight storage saved at iso-accuracy"
)

FAMILIES = ("float", "fixed")
LABELS = {"float": "float weights (per-layer split, bias)", "fixed": "fixed-point weights (per-layer frac bits)",
          "fp32": "FP32 weights"}
FP32_ACT = 32  # act_bits value meaning "activations in FP32"
ISO_POINTS = 1.0  # iso-accuracy: within this many points of the reference
PAPER = ("Lai, Suda & Chandra, *Deep Convolutional Neural Network Inference with Floating-point Weights and "
         "Fixed-point Activations*, arXiv:1703.03073 (2017)")
PAPER_SAVINGS = 0.36
PAPER_CLAIM = ("floating-point weights are more efficient than fixed-point weights of the same width; with "
               "fixed-point activations they reduce the weight storage by up to 36 % (AlexNet, SqueezeNet, "
               "GoogLeNet, VGG-16 on ImageNet)")


def config(quick: bool = False, seed: int = 0) -> "dict[str, Any]":
    """The run's configuration. ``quick``: MNIST, activations 6 and 8 bits, weights 2-6 bits, 4000 test images."""
    return {
        "datasets": ["mnist"] if quick else ["mnist", "fashion-mnist"],
        "fallback": "digits",
        "weight_bits": [2, 3, 4, 5, 6] if quick else [2, 3, 4, 5, 6, 7, 8, 9, 10],
        "act_bits": [6, 8] if quick else [4, 5, 6, 7, 8, 10, FP32_ACT],
        "families": list(FAMILIES),
        "minifloat_bias_search": [-1, 3],  # biases k0-1 .. k0+3 around the no-clipping bias k0
        "minifloat_max_exp": 5,
        "calibration_batches": 4,
        "calibration_batch_size": 128,
        "calibration_values": 1 << 17,  # fraction bits searched on at most this many input values per layer
        "iso_points": [ISO_POINTS, 0.5],  # tolerances for iso-accuracy; the first is the headline (the paper's)
        "test_subset": 4000 if quick else None,
        "epochs": None,  # None: the flagship's (the cached models are shared with weight-formats)
        "train_subset": None,
        "threads": 1,
        "cache": True,
        "seed": seed,
    }


# ------------------------------------------------------------------------- formats
def float_candidates(w: torch.Tensor, bits: int, cfg: "dict[str, Any]") -> "list[ScalarFormat]":
    """Minifloats ``e<E>m<M>b<k>fn_sat`` of ``bits`` bits for tensor ``w``: every split with E ≤
    ``minifloat_max_exp``, and per split the biases k0 + ``minifloat_bias_search`` (k0: the largest bias
    whose max covers max|w|). Saturating: weights are converted offline, so a bias that clips the few
    largest weights is a legitimate choice (a non-saturating ``fn`` format would turn them into NaN)."""
    amax = float(w.detach().abs().max())
    lo, hi = cfg["minifloat_bias_search"]
    out: "list[ScalarFormat]" = []
    for e in range(1, min(bits - 1, cfg["minifloat_max_exp"]) + 1):
        base = Minifloat(e, bits - 1 - e, policy="fn")
        k0 = int(base.bias) + (math.floor(math.log2(base.max / amax)) if amax > 0 else 0)
        out += [Minifloat(e, bits - 1 - e, policy="fn", bias=k, saturate=True) for k in range(k0 + lo, k0 + hi + 1)]
    return out


def weight_formats(weights: "dict[str, torch.Tensor]", family: str, bits: int,
                   cfg: "dict[str, Any]") -> "dict[str, ScalarFormat]":
    """Per layer (``{param name: tensor}``), the ``family`` format of ``bits`` bits with least weight MSE.

    ``float``: the best of `float_candidates`; ``fixed``: ``fixed<bits>_f<f>`` with f from
    `lowbit.quant.best_fraction_bits` (rule ``"mse"``: f_amax … f_amax + bits).
    """
    if family == "float":
        return {k: _best_per_layer({k: w}, float_candidates(w, bits, cfg))[k] for k, w in weights.items()}
    if family == "fixed":
        return {k: FixedPoint(bits, min(64, max(0, int(best_fraction_bits(w.detach(), bits, rule="mse")))))
                for k, w in weights.items()}
    raise ValueError(f"unknown weight family {family!r}; known: {', '.join(FAMILIES)}")


def calibration_inputs(model: nn.Module, data: Dataset, cfg: "dict[str, Any]") -> "dict[str, torch.Tensor]":
    """Each conv/linear layer's inputs on ``calibration_batches`` seeded random training batches."""
    layers = {n: m for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))}
    seen: "dict[str, list[torch.Tensor]]" = {n: [] for n in layers}
    hooks = [m.register_forward_pre_hook(lambda _m, args, n=n: seen[n].append(args[0].detach().clone()))
             for n, m in layers.items()]
    n_images = cfg["calibration_batches"] * cfg["calibration_batch_size"]
    order = torch.randperm(data.train_labels.numel(), generator=torch.Generator().manual_seed(cfg["seed"]))
    idx = order[:n_images]
    try:
        with torch.no_grad():
            model.eval()
            for i in range(0, idx.numel(), cfg["calibration_batch_size"]):
                model(data.train_images[idx[i : i + cfg["calibration_batch_size"]]])
    finally:
        for h in hooks:
            h.remove()
    return {n: torch.cat(v) for n, v in seen.items()}


def activation_formats(inputs: "dict[str, torch.Tensor]", bits: int, max_values: "int | None" = None,
                       seed: int = 0) -> "dict[str, FixedPoint]":
    """Per layer, ``fixed<bits>_f<f>`` with f by least squared error on the calibration inputs (f ≥ 0).

    ``max_values``: search on a seeded random sample of at most this many input values per layer
    (None: all of them).
    """
    out = {}
    for i, (name, x) in enumerate(inputs.items()):
        flat = x.reshape(-1)
        if max_values is not None and flat.numel() > max_values:
            g = torch.Generator().manual_seed(seed * 1000 + i)
            flat = flat[torch.randperm(flat.numel(), generator=g)[:max_values]]
        out[name] = FixedPoint(bits, min(64, max(0, int(best_fraction_bits(flat, bits, rule="mse")))))
    return out


def iso_bits(points: "dict[int, float]", reference: float, tolerance: float = ISO_POINTS) -> "int | None":
    """The smallest width whose accuracy is within ``tolerance`` points of ``reference`` (None: none is).

    >>> iso_bits({3: 0.5, 4: 0.981, 5: 0.985}, 0.99)
    4
    >>> iso_bits({3: 0.5}, 0.99) is None
    True
    """
    for b in sorted(points):
        if 100 * (reference - points[b]) <= tolerance + 1e-9:
            return b
    return None


def savings(float_bits: "int | None", fixed_bits: "int | None") -> "float | None":
    """Weight storage saved by float over fixed weights at iso-accuracy: 1 − float_bits / fixed_bits.

    >>> savings(7, 11), savings(5, 5), savings(None, 8)
    (0.36363636363636365, 0.0, None)
    """
    if float_bits is None or fixed_bits is None:
        return None
    return 1.0 - float_bits / fixed_bits


# ------------------------------------------------------------------------- one data set
def _run_dataset(data: Dataset, cfg: "dict[str, Any]", ctx: Any) -> "list[dict[str, Any]]":
    trained = trained_model(data, cfg, ctx)
    fp_model = trained.model.eval()
    weights = {k: v.detach().clone() for k, v in quantizable_weights(fp_model).items()}
    layer_names = [k[: -len(".weight")] for k in weights]
    numel = sum(w.numel() for w in weights.values())
    model = copy.deepcopy(fp_model).to(memory_format=torch.channels_last)
    images = data.test_images[: cfg["test_subset"]].contiguous(memory_format=torch.channels_last)
    labels = data.test_labels[: cfg["test_subset"]]
    inputs = calibration_inputs(fp_model, data, cfg)
    norm2 = sum(float((w.double() ** 2).sum()) for w in weights.values())

    def measure(wfmts: "dict[str, ScalarFormat] | None", afmts: "dict[str, FixedPoint] | None") -> float:
        layers = {}
        for name in layer_names:
            w = None if wfmts is None else str(wfmts[f"{name}.weight"])
            a = None if afmts is None else str(afmts[name])
            layers[layer_pattern(name)] = {"weight": w, "input": a}
        quantize_(model, {"layers": layers})
        try:
            return evaluate(model, images, labels)
        finally:
            dequantize_(model)

    fp32 = measure(None, None)
    ctx.info.setdefault("models", {})[data.name] = {
        "model": trained.config.model, "epochs": trained.config.epochs, "fp32_accuracy": fp32,
        "test_images": int(labels.numel()), "quantized_weights": numel, "cached": trained.cached,
        "train_seconds": round(trained.seconds, 1), "calibration_images": int(next(iter(inputs.values())).shape[0]),
        "data_source": data.source,
    }
    target = fp32_target(data.name)
    if target is not None and fp32 < target and cfg["test_subset"] is None and cfg["train_subset"] is None:
        ctx.note(f"{data.name}: FP32 accuracy {fp32:.2%} is below the {target:.1%} target")
    base = {"kind": "eval", "dataset": data.name, "model": trained.config.model}

    def row(act: int, family: str, bits: int, acc: float, wf: "dict | None", af: "dict | None") -> "dict[str, Any]":
        nrmse = 0.0
        if wf is not None and norm2:
            sse = sum(float(((f.quantize(weights[k]) - weights[k]).double() ** 2).sum()) for k, f in wf.items())
            nrmse = math.sqrt(sse / norm2)
        return {**base, "act_bits": act, "weights": family, "weight_bits": bits, "accuracy": acc,
                "drop_points": round(100 * (fp32 - acc), 4), "weight_bytes": numel * bits / 8,
                "weight_nrmse": nrmse,
                "weight_formats": {} if wf is None else {k[: -len(".weight")]: str(f) for k, f in wf.items()},
                "act_formats": {} if af is None else {k: str(f) for k, f in af.items()}}

    chosen = {(fam, b): weight_formats(weights, fam, b, cfg) for fam in cfg["families"] for b in cfg["weight_bits"]}
    rows = [row(FP32_ACT, "fp32", 32, fp32, None, None)]
    acts = list(cfg["act_bits"])
    total = len(acts) * (len(chosen) + 1)
    task = ctx.progress.add_task(f"hybrid {data.name}", total=total) if ctx.progress is not None else None
    for act in acts:
        afmts = None if act == FP32_ACT else activation_formats(inputs, act, cfg["calibration_values"], cfg["seed"])
        if afmts is not None:  # FP32 weights with these activations: what the activations alone cost
            rows.append(row(act, "fp32", 32, measure(None, afmts), None, afmts))
        if task is not None:
            ctx.progress.advance(task)
        for (fam, b), wf in chosen.items():
            rows.append(row(act, fam, b, measure(wf, afmts), wf, afmts))
            if task is not None:
                ctx.progress.advance(task)
    return rows + iso_rows(rows, data.name, tuple(cfg["iso_points"]))


def iso_rows(rows: "list[dict[str, Any]]", dataset: str, tolerances: "tuple[float, ...]" = (ISO_POINTS,)
             ) -> "list[dict[str, Any]]":
    """Per activation width and tolerance: the iso-accuracy widths of float and fixed weights and the savings.

    Two references: FP32 (weights and activations), and FP32 weights with the same fixed-point
    activations (what the weights alone cost).
    """
    evals = [r for r in rows if r["kind"] == "eval" and r["dataset"] == dataset]
    fp32 = next(r for r in evals if r["weights"] == "fp32" and r["act_bits"] == FP32_ACT)
    out = []
    for tol in tolerances:
        for act in dict.fromkeys(r["act_bits"] for r in evals if r["weights"] in FAMILIES):
            same = [r for r in evals if r["act_bits"] == act]
            fp32w = next((r for r in same if r["weights"] == "fp32"), fp32)
            for ref_name, ref in (("fp32", fp32), ("fp32-weights", fp32w)):
                if ref_name == "fp32-weights" and act == FP32_ACT:
                    continue
                bits = {fam: iso_bits({r["weight_bits"]: r["accuracy"] for r in same if r["weights"] == fam},
                                      ref["accuracy"], tol) for fam in FAMILIES}
                out.append({"kind": "iso", "dataset": dataset, "model": fp32["model"], "act_bits": act,
                            "tolerance_points": tol, "reference": ref_name, "reference_accuracy": ref["accuracy"],
                            "max_weight_bits": max((r["weight_bits"] for r in same if r["weights"] in FAMILIES),
                                                   default=None),
                            "float_bits": bits["float"], "fixed_bits": bits["fixed"],
                            "savings": savings(bits["float"], bits["fixed"]), "paper_savings": PAPER_SAVINGS})
    return out


def run(cfg: "dict[str, Any]", ctx: Any) -> "list[dict[str, Any]]":
    """Evaluate every (activation width, weight family, weight width); then the iso-accuracy rows."""
    unknown = set(cfg["families"]) - set(FAMILIES)
    if unknown or not cfg["families"]:
        raise ValueError(f"families must be a non-empty subset of {', '.join(FAMILIES)}; got {cfg['families']}")
    bad = [a for a in cfg["act_bits"] if not (isinstance(a, int) and (2 <= a <= 24 or a == FP32_ACT))]
    if bad:
        raise ValueError(f"act_bits {bad}: each must be an int in 2..24, or {FP32_ACT} for FP32 activations")
    rows: "list[dict[str, Any]]" = []
    with threads(cfg["threads"]):
        for data in load_datasets(cfg["datasets"], cfg.get("fallback"), ctx, NAME):
            rows.extend(_run_dataset(data, cfg, ctx))
    return rows


# ------------------------------------------------------------------------- plot and report
def _datasets(rows: "list[dict[str, Any]]") -> "list[str]":
    return list(dict.fromkeys(r["dataset"] for r in rows))


def _act_label(act: int) -> str:
    return "FP32 activations" if act == FP32_ACT else f"{act}-bit fixed-point activations"


def plot(rows: "list[dict[str, Any]]", cfg: "dict[str, Any]", ctx: Any) -> "list[Path]":
    """accuracy_vs_weight_bits.png (one panel per data set and activation width, zoomed near FP32) and
    iso_bits.png (iso-accuracy weight widths of float and fixed, with the savings)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    datasets = _datasets(rows)
    evals = [r for r in rows if r["kind"] == "eval"]
    acts = sorted({r["act_bits"] for r in evals if r["weights"] in FAMILIES})
    ncols = min(4, len(acts))
    per_ds = math.ceil(len(acts) / ncols)  # panel rows per data set
    fig, axes = plt.subplots(len(datasets) * per_ds, ncols, figsize=(3.8 * ncols, 3.5 * len(datasets) * per_ds),
                             squeeze=False)
    styles = {"float": dict(marker="o", color="tab:blue"), "fixed": dict(marker="s", color="tab:orange")}
    for i, ds in enumerate(datasets):
        mine = [r for r in evals if r["dataset"] == ds]
        fp32 = 100 * next(r["accuracy"] for r in mine if r["weights"] == "fp32" and r["act_bits"] == FP32_ACT)
        lo, hi = fp32 - 6, fp32 + 0.8
        for j, act in enumerate(acts):
            ax = axes[i * per_ds + j // ncols][j % ncols]
            same = [r for r in mine if r["act_bits"] == act]
            for fam in FAMILIES:
                pts = sorted((r["weight_bits"], 100 * r["accuracy"]) for r in same if r["weights"] == fam)
                if not pts:
                    continue
                xs, ys = zip(*pts)
                ax.plot(xs, [max(y, lo + 0.15) for y in ys], label=LABELS[fam], **styles[fam])
                for x, y in pts:
                    if y < lo:
                        ax.annotate(f"{y:.0f}", (x, lo + 0.15), textcoords="offset points", xytext=(0, 5),
                                    ha="center", fontsize=7, color=styles[fam]["color"])
            ax.axhline(fp32, color="k", ls="--", lw=1, label=f"FP32 {fp32:.2f} %")
            ax.axhspan(fp32 - ISO_POINTS, fp32, color="0.85", alpha=0.5, lw=0, label="within 1 point of FP32")
            ref = [r for r in same if r["weights"] == "fp32"]
            if ref and act != FP32_ACT:
                ax.axhline(100 * ref[0]["accuracy"], color="tab:green", ls=":", lw=1.2,
                           label="FP32 weights, these activations")
            ax.set_ylim(lo, hi)
            ax.set_title(f"{ds}: {_act_label(act)}", fontsize=9)
            ax.set_xlabel("bits per weight")
            if j % ncols == 0:
                ax.set_ylabel("top-1 accuracy (%)")
            ax.grid(alpha=0.3)
            widths = sorted({r["weight_bits"] for r in same if r["weights"] in FAMILIES})
            if widths:
                ax.set_xticks(widths)
        axes[i * per_ds][0].legend(fontsize=7, loc="lower right")
        for j in range(len(acts), per_ds * ncols):
            axes[i * per_ds + j // ncols][j % ncols].axis("off")
    fig.suptitle("Weights rounded to float or fixed point, activations in fixed point (no retraining)\n"
                 "points below the axis are drawn at its edge with their value", fontsize=10)
    fig.tight_layout()
    path = ctx.out_dir / "accuracy_vs_weight_bits.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)

    iso = [r for r in rows if r["kind"] == "iso" and r["reference"] == "fp32"]
    fig, axes = plt.subplots(1, len(datasets), figsize=(max(6.0, 0.9 * len(iso) / len(datasets) + 2) * len(datasets),
                                                        4.2), squeeze=False)
    for i, ds in enumerate(datasets):
        ax = axes[0][i]
        mine = [r for r in iso if r["dataset"] == ds]
        xs = range(len(mine))
        top = max([r["max_weight_bits"] or 0 for r in mine] + [1]) + 1
        for k, fam in enumerate(FAMILIES):
            vals = [r[f"{fam}_bits"] if r[f"{fam}_bits"] is not None else top for r in mine]
            bars = ax.bar([x + (k - 0.5) * 0.38 for x in xs], vals, width=0.38, label=LABELS[fam],
                          color=styles[fam]["color"], alpha=0.85)
            for bar, r in zip(bars, mine):
                text = str(r[f"{fam}_bits"]) if r[f"{fam}_bits"] is not None else f">{top - 1}"
                ax.annotate(text, (bar.get_x() + bar.get_width() / 2, bar.get_height()), ha="center",
                            va="bottom", fontsize=8)
        for x, r in zip(xs, mine):
            s = "n/a" if r["savings"] is None else f"{100 * r['savings']:.0f} %"
            ax.annotate(f"saved\n{s}", (x, 0.3), ha="center", fontsize=7, color="white", weight="bold")
        ax.set_xticks(list(xs))
        ax.set_xticklabels([("FP32 act." if r["act_bits"] == FP32_ACT else f"{r['act_bits']}-bit act.")
                            + f"\n≤ {r['tolerance_points']:g} pt drop" for r in mine], fontsize=8)
        ax.set_ylabel("fewest weight bits within tolerance of FP32")
        ax.set_ylim(0, top + 1.5)
        ax.set_title(f"{ds}: iso-accuracy weight width (paper: up to {PAPER_SAVINGS:.0%} saved)", fontsize=10)
        ax.legend(fontsize=8, loc="upper right")
        ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    path2 = ctx.out_dir / "iso_bits.png"
    fig.savefig(path2, dpi=110)
    plt.close(fig)
    return [path, path2]


def _pct(x: "float | None") -> str:
    return "–" if x is None else f"{100 * x:.2f}"


def _bits_text(b: "int | None", top: "int | None") -> str:
    return f"> {top}" if b is None else str(b)


def _savings_text(r: "dict[str, Any]") -> str:
    if r["savings"] is not None:
        return f"{100 * r['savings']:.0f} %"
    if r["float_bits"] is not None and r["fixed_bits"] is None and r["max_weight_bits"]:
        return f"≥ {100 * savings(r['float_bits'], r['max_weight_bits'] + 1):.0f} %"  # type: ignore[operator]
    return "–"


def report(rows: "list[dict[str, Any]]", cfg: "dict[str, Any]", ctx: Any) -> str:
    out = [
        f"Reproduces the setting of {PAPER} on small models, without retraining. Activations (every conv/linear "
        "layer's input) in signed fixed point, fraction bits per layer by least squared error on "
        f"{cfg['calibration_batches']}×{cfg['calibration_batch_size']} training images; weights in minifloat "
        "(`eEmMbKfn_sat`, split and exponent bias per layer by weight MSE, saturating) or fixed point "
        "(`fixedW_fF`, fraction bits per layer by weight MSE); biases FP32. Top-1 accuracy (%) on the test set. "
        f"Iso-accuracy = the fewest weight bits within {ISO_POINTS:g} point of FP32; "
        "savings = 1 − float bits / fixed bits.",
        "",
        "![accuracy vs weight bits](accuracy_vs_weight_bits.png)",
        "",
        "![iso-accuracy widths](iso_bits.png)",
        "",
    ]
    models = ctx.info.get("models", {})
    verdicts = []
    for ds in _datasets(rows):
        evals = [r for r in rows if r["kind"] == "eval" and r["dataset"] == ds]
        fp32 = next(r for r in evals if r["weights"] == "fp32" and r["act_bits"] == FP32_ACT)
        m = models.get(ds, {})
        acts = list(dict.fromkeys(r["act_bits"] for r in evals if r["weights"] in FAMILIES))
        widths = sorted({r["weight_bits"] for r in evals if r["weights"] in FAMILIES})
        get = {(r["act_bits"], r["weights"], r["weight_bits"]): r for r in evals}
        out += [
            f"## {ds}: {fp32['model']}",
            "",
            f"FP32: **{_pct(fp32['accuracy'])} %** on {m.get('test_images', '?')} test images "
            f"({m.get('quantized_weights', '?')} quantized weights; "
            + ("weights from the flagship's cache" if m.get("cached")
               else f"trained in {m.get('train_seconds', '?')} s")
            + ").",
            "",
            "Top-1 % — columns: activation width; each cell *float / fixed* weights.",
            "",
            "| weight bits | " + " | ".join(_act_label(a).replace(" fixed-point activations", " act.") for a in acts)
            + " |",
            "|---:|" + "---:|" * len(acts),
        ]
        fp32w = [get.get((a, "fp32", 32)) for a in acts]
        out.append("| FP32 weights | " + " | ".join(_pct(r["accuracy"]) if r else "–" for r in fp32w) + " |")
        for b in widths:
            cells = []
            for a in acts:
                fl, fx = get.get((a, "float", b)), get.get((a, "fixed", b))
                cells.append(f"{_pct(fl and fl['accuracy'])} / {_pct(fx and fx['accuracy'])}")
            out.append(f"| {b} | " + " | ".join(cells) + " |")
        out.append("")
        afmt = {a: next((r["act_formats"] for r in evals if r["act_bits"] == a and r["act_formats"]), {})
                for a in acts if a != FP32_ACT}
        if afmt:
            out.append("Activation formats chosen on the training batches: "
                       + "; ".join(f"{a} bits: " + ", ".join(f"{k} `{v}`" for k, v in f.items())
                                   for a, f in afmt.items()) + ".")
            out.append("")
        iso = [r for r in rows if r["kind"] == "iso" and r["dataset"] == ds]
        out += [
            "**Weight storage at iso-accuracy** (fewest weight bits within the tolerance of the reference; "
            f"the paper's headline: up to {PAPER_SAVINGS:.0%} saved)",
            "",
            "| activations | tolerance | reference | float weights | fixed weights | storage saved by float | paper |",
            "|---|---:|---|---:|---:|---:|---:|",
        ]
        for r in iso:
            ref = "FP32" if r["reference"] == "fp32" else "FP32 weights, same act."
            out.append(f"| {_act_label(r['act_bits'])} | {r['tolerance_points']:g} pt | {ref} "
                       f"({_pct(r['reference_accuracy'])} %) | {_bits_text(r['float_bits'], r['max_weight_bits'])} | "
                       f"{_bits_text(r['fixed_bits'], r['max_weight_bits'])} | {_savings_text(r)} | "
                       f"up to {PAPER_SAVINGS:.0%} |")
        out.append("")
        verdicts += _verdict(ds, iso, evals, float(cfg["iso_points"][0]))
    out += ["## Against the paper", "", f"Its claim: {PAPER_CLAIM}.", "", _summary(rows, float(cfg["iso_points"][0])),
            "", *verdicts, "",
            "Caveats: the paper's networks are large ImageNet CNNs whose fixed-point weights need 8 bits or more; "
            "LeNet-5 and the Fashion-MNIST CNN tolerate much narrower weights, and widths move in whole bits, so "
            "a saving here is one of a few discrete values (e.g. 1 − 4/5 = 20 %, 1 − 4/6 = 33 %)."]
    return "\n".join(out)


def _summary(rows: "list[dict[str, Any]]", tol: float) -> str:
    """One sentence: in how many (data set, activation width) cases float weights saved storage, tied, lost."""
    cases = [r for r in rows if r["kind"] == "iso" and r["reference"] == "fp32" and r["act_bits"] != FP32_ACT
             and r["tolerance_points"] == tol]
    saved = [r for r in cases if (r["savings"] or 0) > 0 or (r["float_bits"] is not None and r["fixed_bits"] is None)]
    tied = [r for r in cases if r["savings"] == 0]
    lost = [r for r in cases if (r["savings"] or 0) < 0 or (r["fixed_bits"] is not None and r["float_bits"] is None)]
    best = max((r["savings"] for r in cases if r["savings"] is not None), default=None)
    verdict = ("**agrees**" if saved and not lost else "**disagrees**" if lost and not saved
               else "**does not confirm** it" if not saved else "**partly agrees**")
    return (f"**Summary** (iso-accuracy within {tol:g} point of FP32, fixed-point activations): of {len(cases)} "
            f"(data set, activation width) cases, float weights saved storage in {len(saved)}, tied in {len(tied)} and "
            f"needed more bits than fixed point in {len(lost)}; the largest saving is "
            + ("–" if best is None else f"{100 * best:.0f} %") + f" against the paper's up to {PAPER_SAVINGS:.0%}. "
            f"Our verdict on the claim: {verdict}.")


def _verdict(ds: str, iso: "list[dict[str, Any]]", evals: "list[dict[str, Any]]",
             tol: float = ISO_POINTS) -> "list[str]":
    main = [r for r in iso if r["reference"] == "fp32" and r["act_bits"] != FP32_ACT and r["tolerance_points"] == tol]
    lines = []
    for r in main:
        s = r["savings"]
        act = f"{r['act_bits']}-bit activations"
        if r["float_bits"] is None and r["fixed_bits"] is None:
            line = (f"- {ds}, {act}: neither family comes within {tol:g} point of FP32 at any width "
                    "(the activations alone cost more) — no iso-accuracy comparison")
        elif s is None:
            ahead = "float" if r["float_bits"] is not None else "fixed"
            line = (f"- {ds}, {act}: only {ahead} weights reach {tol:g} point of FP32 within the sweep"
                    + (" — **agrees** in direction" if ahead == "float" else " — **disagrees**"))
        elif s > 0:
            size = "as large as" if abs(s - PAPER_SAVINGS) < 0.05 else ("larger than" if s > PAPER_SAVINGS
                                                                        else "smaller than")
            line = (f"- {ds}, {act}: float weights need {r['float_bits']} bits, fixed {r['fixed_bits']}: "
                    f"{100 * s:.0f} % less weight storage, {size} the paper's {PAPER_SAVINGS:.0%} — **agrees** "
                    "(float is more efficient)")
        elif s == 0:
            line = (f"- {ds}, {act}: both need {r['float_bits']} bits within {tol:g} point — **no saving**; "
                    "does not confirm the paper's advantage on this model")
        else:
            line = (f"- {ds}, {act}: fixed weights need fewer bits ({r['fixed_bits']}) than float "
                    f"({r['float_bits']}) — **disagrees**")
        others = [o for o in iso if o["reference"] == "fp32" and o["act_bits"] == r["act_bits"]
                  and o["tolerance_points"] != tol]
        for o in others:
            line += (f"; with a {o['tolerance_points']:g}-point tolerance: float "
                     f"{_bits_text(o['float_bits'], o['max_weight_bits'])}, fixed "
                     f"{_bits_text(o['fixed_bits'], o['max_weight_bits'])} bits ({_savings_text(o)} saved)")
        lines.append(line + ".")
    # same-width comparison (the paper's other claim): float vs fixed at each width, 8- and 6-bit activations
    for act in (8, 6):
        pairs = {}
        for r in evals:
            if r["act_bits"] == act and r["weights"] in FAMILIES:
                pairs.setdefault(r["weight_bits"], {})[r["weights"]] = r["accuracy"]
        diffs = {b: 100 * (p["float"] - p["fixed"]) for b, p in sorted(pairs.items()) if len(p) == 2}
        if diffs:
            lines.append(f"- {ds}, {act}-bit activations, same weight width (float − fixed, points): "
                         + ", ".join(f"{b} bits {d:+.2f}" for b, d in diffs.items()) + ".")
    return lines
