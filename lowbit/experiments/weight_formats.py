"""The flagship experiment: FP32-trained weights rounded to 3–8-bit formats, without retraining.

After Langroudi, Pandit and Kudithipudi, "Deep Learning Inference on Embedded Devices: Fixed-Point
vs Posit" (EMC² 2018): LeNet-5 on MNIST and a small CNN on Fashion-MNIST are trained once in FP32
(cached, see `lowbit.experiments.train`); then the weights of every convolution and linear layer
are replaced by ``fmt.quantize(weight)`` and top-1 accuracy is measured on the full 10,000-image
test set. Activations and biases stay FP32 (integer inference engines keep biases in 32 bits too).

Families, each at every width n (3..8 bits):

- ``posit``: posit⟨n, es⟩, one es for the whole network; every es in 0..3 is evaluated (the sweep
  rows) and the headline uses the es with the least weight squared error.
- ``posit+scale``: per layer, posit⟨n, es⟩ with a power-of-two scale (spec ``_s<k>``); es and k
  chosen per layer by least squared error on that layer's weights.
- ``fixed``: two's complement fixed point ``fixed<n>_f<f>``, fraction bits chosen per layer by least
  squared error.
- ``fixed-global``: one ``fixed<n>_f<f>`` for the whole network (least total squared error) — the
  plain baseline, comparable to ``posit``'s one es per network.
- ``minifloat``: ``e<E>m<M>fn`` (finite, OCP-style), one split for the network; every split is
  evaluated and the headline uses the split with the least weight squared error.
- ``minifloat+scale``: per layer, the split and an exponent bias override (``b<k>``) by least
  squared error.
- ``int-per-channel``: symmetric integers ``int<n>n`` (−(2^(n−1)−1)..2^(n−1)−1) with one FP32 scale
  per output channel, max|w| / (2^(n−1)−1); the scales count in the memory.

Every choice is made on the weights alone — no test data is used to pick a format. The sweep rows
still show how the test accuracy varies with es and the split (and which one would have been best).
"""

from __future__ import annotations

import copy
import math
from pathlib import Path
from typing import Any, Callable, Iterable

import torch
from torch import nn

from lowbit.errors import DataUnavailableError
from lowbit.experiments.data import Dataset, load_dataset
from lowbit.experiments.models import quantizable_weights
from lowbit.experiments.train import TrainConfig, evaluate, threads, train
from lowbit.formats import FixedPoint, IntegerFormat, Minifloat, Posit, ScalarFormat

NAME = "weight-formats"
TITLE = "Weight formats without retraining: posit vs fixed point vs minifloat vs integer"
SUMMARY = (
    "the flagship: LeNet-5/MNIST and a CNN/Fashion-MNIST trained in FP32, weights rounded to posit, fixed point, "
    "minifloat and per-channel int at 3-8 bits; top-1 vs bits and memory (Langroudi et al. 2018)"
)

FAMILIES = ("posit", "posit+scale", "fixed-global", "fixed", "minifloat", "minifloat+scale", "int-per-channel")
MODELS = {"mnist": "lenet5", "fashion-mnist": "fashion-cnn", "digits": "digits-cnn"}
EPOCHS = {"mnist": 3, "fashion-mnist": 5, "digits": 40}
FP32_TARGET = {"mnist": 0.985, "fashion-mnist": 0.89}
LABELS = {
    "posit": "posit (es by MSE)",
    "posit+scale": "posit + per-layer 2^k scale",
    "fixed-global": "fixed point (one frac for all layers)",
    "fixed": "fixed point (per-layer frac bits)",
    "minifloat": "minifloat (split by MSE)",
    "minifloat+scale": "minifloat + per-layer bias",
    "int-per-channel": "int, per-channel scale",
}
PAPER = (
    "Langroudi, Pandit & Kudithipudi, *Deep Learning Inference on Embedded Devices: Fixed-Point vs Posit*, "
    "EMC² 2018 (arXiv:1805.08624)"
)
PAPER_CLAIM = (
    "posit weights, without retraining, give higher accuracy than fixed-point weights of the same width, "
    "and reach FP32-level accuracy with fewer bits (less memory)"
)

Formats = "dict[str, ScalarFormat]"


def config(quick: bool = False, seed: int = 0) -> "dict[str, Any]":
    """The run's configuration (JSON-able). ``quick``: MNIST only, widths 4, 6, 8."""
    return {
        "datasets": ["mnist"] if quick else ["mnist", "fashion-mnist"],
        "fallback": "digits",  # used when none of the data sets above is installed
        "widths": [4, 6, 8] if quick else [3, 4, 5, 6, 7, 8],
        "families": list(FAMILIES),
        "posit_es": [0, 1, 2, 3],
        "posit_scales": list(range(-12, 5)),
        "fixed_frac_bits": list(range(0, 24)),
        "minifloat_bias_offsets": list(range(-2, 14)),
        "epochs": dict(EPOCHS),
        "batch_size": 128,
        "max_lr": 3e-3,
        "train_subset": None,
        "test_subset": None,
        # torch threads. Training: fixed, so the weights do not depend on the machine's cores.
        # Inference: one thread too — on two cores, oneDNN's threaded kernels for these small
        # models lose more than they gain as soon as anything else runs (measured: 5x slower).
        "train_threads": 1,
        "threads": 1,
        "cache": True,
        "seed": seed,
    }


# ------------------------------------------------------------------------- format candidates
def _posits(n: int, es_list: Iterable[int], scales: Iterable[int] = (0,)) -> "list[ScalarFormat]":
    return [Posit(n, es, k) for es in es_list for k in scales]


def _minifloats(n: int, bias_offsets: Iterable[int] = (0,), max_exp: int = 7) -> "list[ScalarFormat]":
    out: "list[ScalarFormat]" = []
    for e in range(1, min(n - 1, max_exp) + 1):
        m = n - 1 - e
        base = Minifloat(e, m, policy="fn")
        for off in bias_offsets:
            try:
                out.append(Minifloat(e, m, policy="fn", bias=int(base.bias) + off))  # type: ignore[arg-type]
            except ValueError:
                continue
    return out


def _sse(fmt: ScalarFormat, w: torch.Tensor) -> float:
    return float(((fmt.quantize(w) - w).double() ** 2).sum())


def _best_per_layer(weights: "dict[str, torch.Tensor]", candidates: "list[ScalarFormat]") -> Formats:
    """For each layer, the candidate with the least squared error on that layer's weights (first on ties)."""
    chosen: Formats = {}
    for name, w in weights.items():
        errors = [_sse(fmt, w) for fmt in candidates]
        chosen[name] = candidates[min(range(len(candidates)), key=errors.__getitem__)]
    return chosen


Quantized = "tuple[dict[str, torch.Tensor], dict[str, str], int]"  # weights, spec per layer, extra bytes


def _with_formats(weights: "dict[str, torch.Tensor]", formats: Formats) -> Quantized:
    """Each layer's weights rounded by its format (``fmt.quantize``); no side data."""
    return ({name: formats[name].quantize(w) for name, w in weights.items()},
            {name: str(formats[name]) for name in weights}, 0)


def _per_channel_int(weights: "dict[str, torch.Tensor]", n: int) -> Quantized:
    """Symmetric per-output-channel integers; the extra bytes are the FP32 scales."""
    fmt = IntegerFormat(n, narrow=True)
    qmax = fmt.max
    out, scale_bytes = {}, 0
    for name, w in weights.items():
        amax = w.abs().reshape(w.shape[0], -1).amax(dim=1)
        scale = torch.where(amax > 0, amax / qmax, torch.ones_like(amax))
        scale = scale.reshape(-1, *([1] * (w.dim() - 1)))
        out[name] = fmt.quantize(w / scale) * scale
        scale_bytes += 4 * w.shape[0]
    return out, {name: str(fmt) for name in weights}, scale_bytes


def _describe(specs: "dict[str, str]") -> str:
    distinct = set(specs.values())
    return distinct.pop() if len(distinct) == 1 else "per-layer"


# ------------------------------------------------------------------------- one data set
class _Evaluator:
    """Swaps quantized weights into a copy of the FP32 model and measures test accuracy."""

    def __init__(self, model: nn.Module, data: Dataset, test_subset: "int | None") -> None:
        self.weights = {k: v.detach().clone() for k, v in quantizable_weights(model).items()}
        # channels_last: oneDNN's convolutions run about twice as fast on these small models
        self.model = copy.deepcopy(model).eval().to(memory_format=torch.channels_last)
        self.params = dict(self.model.named_parameters())
        self.images = data.test_images[:test_subset].contiguous(memory_format=torch.channels_last)
        self.labels = data.test_labels[:test_subset]
        self.numel = {k: v.numel() for k, v in self.weights.items()}
        self.norm2 = sum(float((w.double() ** 2).sum()) for w in self.weights.values())

    def accuracy(self, state: "dict[str, torch.Tensor]") -> float:
        with torch.no_grad():
            for name, w in state.items():
                self.params[name].copy_(w)
        try:
            return evaluate(self.model, self.images, self.labels)
        finally:
            with torch.no_grad():
                for name, w in self.weights.items():
                    self.params[name].copy_(w)

    def nrmse(self, state: "dict[str, torch.Tensor]") -> float:
        sse = sum(float(((state[k] - w).double() ** 2).sum()) for k, w in self.weights.items())
        return math.sqrt(sse / self.norm2) if self.norm2 else 0.0

    def weight_bytes(self, bits: int) -> int:
        return sum(self.numel.values()) * bits // 8


Plan = "list[tuple[str, int, str, bool, Callable[[], Quantized]]]"


def _plan(cfg: "dict[str, Any]", ev: _Evaluator) -> Plan:
    """Every (family, bits, variant, selected, make) to evaluate; ``make()`` rounds the weights."""
    plan: Plan = []
    w = ev.weights

    def network_best(cands: "list[ScalarFormat]") -> ScalarFormat:
        return min(cands, key=lambda f: sum(_sse(f, t) for t in w.values()))

    def same(fmt: ScalarFormat) -> "Callable[[], Quantized]":
        return lambda: _with_formats(w, {k: fmt for k in w})

    def per_layer(cands: "list[ScalarFormat]") -> "Callable[[], Quantized]":
        return lambda: _with_formats(w, _best_per_layer(w, cands))

    fams = cfg["families"]
    for n in cfg["widths"]:
        if "posit" in fams:
            cands = _posits(n, cfg["posit_es"])
            best = network_best(cands)
            plan += [("posit", n, f"es{f.es}", f == best, same(f)) for f in cands]  # type: ignore[attr-defined]
        if "posit+scale" in fams:
            plan.append(("posit+scale", n, "per-layer es, 2^k", True,
                         per_layer(_posits(n, cfg["posit_es"], cfg["posit_scales"]))))
        if "fixed-global" in fams:
            best = network_best([FixedPoint(n, f) for f in cfg["fixed_frac_bits"]])
            plan.append(("fixed-global", n, str(best), True, same(best)))
        if "fixed" in fams:
            plan.append(("fixed", n, "per-layer frac bits", True,
                         per_layer([FixedPoint(n, f) for f in cfg["fixed_frac_bits"]])))
        if "minifloat" in fams:
            cands = _minifloats(n)
            best = network_best(cands)
            plan += [("minifloat", n, str(f), f == best, same(f)) for f in cands]
        if "minifloat+scale" in fams:
            plan.append(("minifloat+scale", n, "per-layer split, bias", True,
                         per_layer(_minifloats(n, cfg["minifloat_bias_offsets"], 5))))
        if "int-per-channel" in fams:
            plan.append(("int-per-channel", n, f"int{n}n, FP32 scale per output channel", True,
                         lambda n=n: _per_channel_int(w, n)))
    return plan


def _run_dataset(data: Dataset, cfg: "dict[str, Any]", ctx: Any) -> "list[dict[str, Any]]":
    name = data.name
    tcfg = TrainConfig(
        model=MODELS[name], dataset=name, seed=cfg["seed"], epochs=int(cfg["epochs"][name]),
        batch_size=cfg["batch_size"], max_lr=cfg["max_lr"], train_subset=cfg["train_subset"],
        threads=cfg["train_threads"],
    )
    trained = train(tcfg, data, cache=cfg["cache"], progress=ctx.progress)
    if trained.note:
        ctx.note(trained.note)
    ev = _Evaluator(trained.model, data, cfg["test_subset"])
    fp32 = ev.accuracy(ev.weights)
    n_params = sum(p.numel() for p in trained.model.parameters())
    ctx.info.setdefault("training", {})[name] = {
        "model": tcfg.model,
        "epochs": tcfg.epochs,
        "parameters": n_params,
        "quantized_weights": sum(ev.numel.values()),
        "fp32_accuracy": fp32,
        "train_seconds": round(trained.seconds, 1),
        "cached": trained.cached,
        "test_images": int(ev.labels.numel()),
        "data_source": data.source,
    }
    target = FP32_TARGET.get(name)
    if target is not None and cfg["test_subset"] is None and cfg["train_subset"] is None and fp32 < target:
        ctx.note(f"{name}: FP32 accuracy {fp32:.2%} is below the {target:.1%} target")
    base = {"dataset": name, "model": tcfg.model}
    rows = [{**base, "family": "fp32", "bits": 32, "variant": "e8m23", "format": "e8m23", "selected": True,
             "accuracy": fp32, "drop_points": 0.0, "weight_bytes": ev.weight_bytes(32), "weight_nrmse": 0.0,
             "formats": {}}]
    plan = _plan(cfg, ev)
    task = ctx.progress.add_task(f"quantize + test {name}", total=len(plan)) if ctx.progress is not None else None
    for family, bits, variant, selected, make in plan:
        state, specs, extra = make()
        acc = ev.accuracy(state)
        rows.append({
            **base, "family": family, "bits": bits, "variant": variant, "format": _describe(specs),
            "selected": selected, "accuracy": acc, "drop_points": round(100 * (fp32 - acc), 4),
            "weight_bytes": ev.weight_bytes(bits) + extra, "weight_nrmse": ev.nrmse(state), "formats": specs,
        })
        if task is not None:
            ctx.progress.advance(task)
    return rows


def _load(cfg: "dict[str, Any]", ctx: Any) -> "list[Dataset]":
    loaded, reasons = [], []
    for name in cfg["datasets"]:
        try:
            loaded.append(load_dataset(name))
        except DataUnavailableError as err:
            reasons.append(str(err))
            ctx.note(f"{name} skipped: {err}")
    if not loaded and cfg.get("fallback"):
        try:
            loaded.append(load_dataset(cfg["fallback"]))
        except DataUnavailableError as err:
            reasons.append(str(err))
        else:
            ctx.note(f"none of {', '.join(cfg['datasets'])} is installed: ran on {cfg['fallback']} instead")
    if not loaded:
        raise DataUnavailableError("no data set available for weight-formats:\n  " + "\n  ".join(reasons))
    return loaded


def run(cfg: "dict[str, Any]", ctx: Any) -> "list[dict[str, Any]]":
    """Train (or load) each model, then evaluate every weight format; one row per evaluation."""
    unknown = set(cfg["families"]) - set(FAMILIES)
    if unknown:
        raise ValueError(f"unknown families {sorted(unknown)}; known: {', '.join(FAMILIES)}")
    rows: "list[dict[str, Any]]" = []
    with threads(cfg["threads"]):
        for data in _load(cfg, ctx):
            rows.extend(_run_dataset(data, cfg, ctx))
    return rows


# ------------------------------------------------------------------------- report and plots
def _headline(rows: "list[dict[str, Any]]", dataset: str) -> "dict[tuple[str, int], dict[str, Any]]":
    return {(r["family"], r["bits"]): r for r in rows if r["dataset"] == dataset and r["selected"]}


def _datasets(rows: "list[dict[str, Any]]") -> "list[str]":
    return list(dict.fromkeys(r["dataset"] for r in rows))


def _iso_bits(head: "dict[tuple[str, int], dict[str, Any]]", family: str, fp32: float, points: float = 1.0) -> "int | None":
    widths = sorted(b for f, b in head if f == family)
    for b in widths:
        if 100 * (fp32 - head[(family, b)]["accuracy"]) <= points:
            return b
    return None


def plot(rows: "list[dict[str, Any]]", cfg: "dict[str, Any]", ctx: Any) -> "list[Path]":
    """accuracy_vs_bits.png: per data set, top-1 vs bits (full scale, and zoomed near FP32 with the
    weight memory on the top axis), one line per family."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    datasets = _datasets(rows)
    fig, axes = plt.subplots(len(datasets), 2, figsize=(12, 4.4 * len(datasets)), squeeze=False)
    markers = dict(zip(FAMILIES, "osPD^vx"))
    colors = {fam: f"C{k}" for k, fam in enumerate(FAMILIES)}  # the same colour per family in both panels
    for i, ds in enumerate(datasets):
        head = _headline(rows, ds)
        fp32 = head[("fp32", 32)]
        top = 100 * fp32["accuracy"]
        best = max(100 * r["accuracy"] for r in head.values())
        floor = top - 3  # the zoom panel's lower edge
        widths = sorted({b for f, b in head if f != "fp32"})
        for j, ax in enumerate(axes[i]):
            below = False
            for fam in FAMILIES:
                pts = sorted((b, 100 * r["accuracy"]) for (f, b), r in head.items() if f == fam)
                if not pts:
                    continue
                if j == 0:
                    ax.plot(*zip(*pts), marker=markers[fam], color=colors[fam], label=LABELS[fam], alpha=0.85)
                    continue
                # zoom: points below the panel are drawn on its lower edge as hollow markers
                shown = [(b, max(a, floor)) for b, a in pts]
                ax.plot(*zip(*shown), color=colors[fam], alpha=0.85, label=LABELS[fam], marker=markers[fam], ls="-")
                low = [(b, floor) for b, a in pts if a < floor]
                if low:
                    below = True
                    ax.plot(*zip(*low), ls="none", marker=markers[fam], markersize=9, markerfacecolor="white",
                            color=colors[fam], clip_on=False, zorder=3)
            ax.axhline(top, color="k", ls="--", lw=1, label=f"FP32 {top:.2f} %")
            if j == 1 and below:
                ax.plot([], [], ls="none", marker="o", markerfacecolor="white", color="0.3",
                        label=f"hollow: below {floor:.2f} % (drawn on the edge)")
            ax.set_xticks(widths)
            ax.set_xlabel("bits per weight")
            ax.set_ylabel("top-1 accuracy (%)")
            ax.grid(alpha=0.3)
            if j == 0:
                ax.set_ylim(0, 100)
                ax.set_title(f"{ds} ({fp32['model']}): weights rounded, no retraining")
            else:
                ax.set_ylim(floor, max(top, best) + 0.3)
                ax.set_title(f"{ds}: zoom to FP32 − 3 points")
                ax.legend(fontsize=7, loc="lower right", framealpha=0.9)
                kib_per_bit = fp32["weight_bytes"] / 4 / 8192  # bound now: matplotlib calls these at draw time
                sec = ax.secondary_xaxis("top", functions=(lambda b, c=kib_per_bit: b * c, lambda k, c=kib_per_bit: k / c))
                sec.set_xlabel("weight memory (KiB)")
        axes[i][0].legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    path = ctx.out_dir / "accuracy_vs_bits.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return [path]


def _pct(x: float) -> str:
    return f"{100 * x:.2f}"


def report(rows: "list[dict[str, Any]]", cfg: "dict[str, Any]", ctx: Any) -> str:
    out = [
        f"Weights of each model rounded to every format with `fmt.quantize(weight)` (conv and linear weights; "
        f"biases and activations stay FP32), no retraining; top-1 accuracy (%) on the test set. Formats are "
        f"chosen on the weights alone (least squared error), never on test data. Reproduces the setting of {PAPER}.",
        "",
        "![accuracy vs bits](accuracy_vs_bits.png)",
        "",
    ]
    training = ctx.info.get("training", {})
    for ds in _datasets(rows):
        head = _headline(rows, ds)
        fp32 = head[("fp32", 32)]
        t = training.get(ds, {})
        fams = [f for f in FAMILIES if any(k[0] == f for k in head)]
        widths = sorted({b for f, b in head if f != "fp32"})
        out += [
            f"## {ds}: {fp32['model']}",
            "",
            f"FP32: **{_pct(fp32['accuracy'])} %** on {t.get('test_images', '?')} test images "
            f"({t.get('parameters', '?')} parameters, {t.get('quantized_weights', '?')} of them quantized; "
            f"{t.get('epochs', '?')} epochs, "
            + ("weights from the cache" if t.get("cached") else f"trained in {t.get('train_seconds', '?')} s")
            + f"); FP32 weights take {fp32['weight_bytes'] / 1024:.1f} KiB.",
            "",
            "| bits | " + " | ".join(LABELS[f] for f in fams) + " | weight KiB |",
            "|---:|" + "---:|" * len(fams) + "---:|",
        ]
        for b in widths:
            cells = []
            for f in fams:
                r = head.get((f, b))
                if r is None:
                    cells.append("–")
                    continue
                tag = f" ({r['variant']})" if f in ("posit", "minifloat", "fixed-global") else ""
                cells.append(f"{_pct(r['accuracy'])}{tag}")
            kib = t.get("quantized_weights", 0) * b / 8 / 1024
            out.append(f"| {b} | " + " | ".join(cells) + f" | {kib:.1f} |")
        overhead = _scale_overhead(head, widths[0])
        if overhead is not None:
            out.append("")
            out.append(f"Weight KiB = bits × weights / 8. Per-channel integers also store one FP32 scale per output "
                       f"channel (+{overhead} bytes, included in their `weight_bytes` in results.csv).")
        out.append("")
        out += _sweep_table(rows, ds, "posit", "posit es sweep (one es for all layers)", lambda v: v)
        out += _sweep_table(rows, ds, "minifloat", "minifloat split sweep (one `eEmMfn` for all layers; "
                            "columns: exponent bits E, mantissa M = bits − 1 − E)", lambda v: v.split("m")[0])
        out += _paper_section(head, ds)
    return "\n".join(out)


def _scale_overhead(head: "dict[tuple[str, int], dict[str, Any]]", b: int) -> "int | None":
    others = [f for f, bb in head if bb == b and f not in ("int-per-channel", "fp32")]
    if ("int-per-channel", b) not in head or not others:
        return None
    return int(head[("int-per-channel", b)]["weight_bytes"] - head[(others[0], b)]["weight_bytes"])


def _sweep_table(rows: "list[dict[str, Any]]", ds: str, family: str, title: str,
                 column: Callable[[str], str]) -> "list[str]":
    sweep = [r for r in rows if r["dataset"] == ds and r["family"] == family]
    if not sweep:
        return []
    cols = sorted({column(r["variant"]) for r in sweep}, key=lambda c: (len(c), c))
    widths = sorted({r["bits"] for r in sweep})
    out = [f"**{title}** — top-1 %; † = chosen by weight MSE (the headline), **bold** = best on test", "",
           "| bits | " + " | ".join(cols) + " |", "|---:|" + "---:|" * len(cols)]
    for b in widths:
        by_col = {column(r["variant"]): r for r in sweep if r["bits"] == b}
        best = max(r["accuracy"] for r in by_col.values())
        cells = []
        for c in cols:
            r = by_col.get(c)
            if r is None:
                cells.append("")
                continue
            text = _pct(r["accuracy"]) + ("†" if r["selected"] else "")
            cells.append(f"**{text}**" if r["accuracy"] == best else text)
        out.append(f"| {b} | " + " | ".join(cells) + " |")
    return out + [""]


TIE_POINTS = 0.2  # accuracy differences within ±0.2 points (20 of 10,000 test images) count as ties


def _compare(head: "dict[tuple[str, int], dict[str, Any]]", a: str, b: str, widths: "list[int]") -> "list[float]":
    return [round(100 * (head[(a, w)]["accuracy"] - head[(b, w)]["accuracy"]), 6) for w in widths]


def _paper_section(head: "dict[tuple[str, int], dict[str, Any]]", ds: str) -> "list[str]":
    fp32 = head[("fp32", 32)]["accuracy"]
    pairs = [("posit", "fixed-global", "one format for the whole network"),
             ("posit+scale", "fixed", "per-layer scale / fraction bits")]
    pairs = [(a, b, t) for a, b, t in pairs if any(k[0] == a for k in head) and any(k[0] == b for k in head)]
    if not pairs:
        return []
    widths = sorted({w for f, w in head if f == pairs[0][0]} & {w for f, w in head if f == pairs[0][1]})
    out = [f"**Against the paper** ({ds}). Its claim: {PAPER_CLAIM}.", ""]
    out.append("| posit − fixed point (points) | " + " | ".join(f"{b} bits" for b in widths) + " |")
    out.append("|---|" + "---:|" * len(widths))
    for a, b, text in pairs:
        out.append(f"| {text} | " + " | ".join(f"{d:+.2f}" for d in _compare(head, a, b, widths)) + " |")
    out.append("")
    iso = {f: _iso_bits(head, f, fp32) for f in FAMILIES if any(k[0] == f for k in head)}
    none = f"> {max(widths)}"
    out.append("Fewest bits within 1 point of FP32: "
               + "; ".join(f"{LABELS[f]} **{b if b is not None else none}**" for f, b in iso.items()) + ".")
    out.append("")
    verdicts = []
    for a, b, text in pairs:
        diffs = _compare(head, a, b, widths)
        wins = [w for w, d in zip(widths, diffs) if d > TIE_POINTS]
        losses = [w for w, d in zip(widths, diffs) if d < -TIE_POINTS]
        if wins and not losses:
            v = f"posit is ahead at {_bits(wins)} and within ±{TIE_POINTS} points elsewhere — **agrees**"
        elif losses and not wins:
            v = f"fixed point is ahead at {_bits(losses)} and within ±{TIE_POINTS} points elsewhere — **disagrees**"
        elif wins:
            v = f"posit is ahead at {_bits(wins)}, fixed point at {_bits(losses)} — **partly agrees**"
        else:
            v = f"they tie (±{TIE_POINTS} points) at every width — **does not confirm** the claimed advantage"
        ia, ib = iso.get(a), iso.get(b)
        if ia != ib:
            sa, sb = (f"{x if x is not None else none} bits" for x in (ia, ib))
            if (ia or 99) < (ib or 99):
                v += f"; to stay within 1 point of FP32 posit needs fewer bits ({sa}) than fixed point ({sb})"
            else:
                v += f"; to stay within 1 point of FP32 fixed point needs fewer bits ({sb}) than posit ({sa})"
        verdicts.append(f"- {text}: {v}.")
    return out + ["Our verdict on the claim:", "", *verdicts, ""]


def _bits(widths: "list[int]") -> str:
    return ", ".join(map(str, widths)) + " bits"
