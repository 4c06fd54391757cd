"""Post-training quantization of weights *and* activations, with calibrated activation ranges.

The FP32 models of the flagship (LeNet-5 on MNIST, the CNN on Fashion-MNIST; same cache entry)
and EfficientNet-Lite0 (ImageNet weights, BatchNorm folded into the convolutions first, as
deployment does) get, in every conv and linear layer, the weights and the layer input quantized
— no retraining — by the usual PTQ recipe (`lowbit.calibrate_config` → `lowbit.quantize_`):

- weights with one float scale per output channel (``scaling="absmax"``, ``granularity="channel"``)
  or per tensor, in int8 / int4 / e4m3fn / posit8;
- each layer input with one fixed range (``scaling="static"``) found by an observer on
  calibration data from the *training* side (MNIST/Fashion-MNIST training images; for
  EfficientNet, photo crops disjoint from the evaluation crops): min-max, the 99.99th
  percentile, least squared error (MSE) or KL divergence (TensorRT's entropy rule).

Measured: top-1 on the full test sets (drop vs FP32, in points) and, for EfficientNet-Lite0 on
crops of the photos scikit-learn ships, agreement with the FP32 model's top-1 / top-5 and the
mean KL of the class distributions. The test data never chooses anything.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Callable

import torch

from lowbit.errors import DataUnavailableError
from lowbit.experiments.data import Dataset
from lowbit.experiments.fp32_models import load_datasets, trained_model
from lowbit.experiments.train import evaluate, threads
from lowbit.quant import calibrate_config, fold_batchnorm, quantize_

NAME = "ptq"
TITLE = "Post-training quantization of weights and activations with calibrated ranges"
SUMMARY = ("LeNet-5/MNIST, CNN/Fashion-MNIST and EfficientNet-Lite0: per-channel int8/int4/FP8 and power-of-two "
           "scaled posit8 weights with calibrated int8/uint8/FP8/posit8 activations; min-max, percentile, MSE, KL, "
           "log2 observers")


def _w(fmt: str, granularity: str = "channel") -> "dict[str, Any]":
    return {"format": fmt, "scaling": "absmax", "granularity": granularity}


def _a(fmt: str) -> "dict[str, Any]":
    return {"format": fmt, "scaling": "static"}


#: label -> (weight role, input role, the observers that apply; None: every configured one).
#: Posits get power-of-two scales that put the bulk of the values near 1, where a posit is most
#: precise (the log2-histogram rule of the posit GAN paper, for weights and activations): the
#: absmax / static rules map the largest value onto the format's max, which suits integers,
#: fixed point and minifloats but sends a posit's values to its sparse far end.
SCHEMES: "dict[str, tuple[dict[str, Any], dict[str, Any], tuple[str, ...] | None]]" = {
    "int8 w/ch, int8 a": (_w("int8"), _a("int8"), None),
    "int8 w/ch, uint8 a": (_w("int8"), _a("uint8"), None),
    "int8 w/tensor, int8 a": (_w("int8", "tensor"), _a("int8"), None),
    "int4 w/ch, int8 a": (_w("int4"), _a("int8"), None),
    "e4m3fn w/ch, e4m3fn a": (_w("e4m3fn"), _a("e4m3fn"), None),
    "posit8 w/2^k, posit8 a/2^k": ({"format": "posit8_es2", "scaling": "histogram", "granularity": "tensor"},
                                   _a("posit8_es2"), ("log2",)),
}
OBSERVER_NAMES = ("minmax", "percentile", "mse", "kl", "log2")
COLORS = {"minmax": "tab:blue", "percentile": "tab:green", "mse": "tab:orange", "kl": "tab:red", "log2": "tab:purple"}
BAR_SCHEME, BAR_POINTS = "int8 w/ch, int8 a", 0.5


def config(quick: bool = False, seed: int = 0) -> "dict[str, Any]":
    """Full: both data sets and EfficientNet-Lite0; quick: MNIST only (4000 test images), 5 schemes."""
    return {
        "datasets": ["mnist"] if quick else ["mnist", "fashion-mnist"],
        "fallback": "digits",
        "schemes": ([s for s in SCHEMES if s != "int8 w/tensor, int8 a"] if quick else list(SCHEMES)),
        "observers": list(OBSERVER_NAMES),
        "calibration_images": 2048,
        "calibration_batch_size": 256,
        "test_subset": 4000 if quick else None,
        "efficientnet": not quick,
        "efficientnet_calibration_crops": 32,
        "efficientnet_eval_crops": 200,
        "epochs": None,  # None: the flagship's (shared cache)
        "train_subset": None,
        "threads": 2,
        "cache": True,
        "seed": seed,
    }


def _config(scheme: str) -> "dict[str, Any]":
    weight, act, _ = SCHEMES[scheme]
    return {"weight": weight, "input": act}


def _observers(scheme: str, cfg: "dict[str, Any]") -> "list[str]":
    """The observers run for ``scheme``: its own list, else the configured ones (log2 only where named)."""
    own = SCHEMES[scheme][2]
    return list(own) if own is not None else [o for o in cfg["observers"] if o != "log2"]


def _batches(images: torch.Tensor, n: int, batch: int) -> "list[torch.Tensor]":
    images = images[:n]
    return [images[i:i + batch] for i in range(0, images.shape[0], batch)]


def _small_models(cfg: "dict[str, Any]", ctx: Any) -> "list[dict[str, Any]]":
    rows: list[dict[str, Any]] = []
    for data in load_datasets(cfg["datasets"], cfg["fallback"], ctx, NAME):
        trained = trained_model(data, cfg, ctx)
        model = trained.model.eval()
        test = data if cfg["test_subset"] is None else data.subset(test=cfg["test_subset"])
        calib = _batches(data.train_images, cfg["calibration_images"], cfg["calibration_batch_size"])
        with threads(cfg["threads"]):
            fp32 = evaluate(model, test.test_images, test.test_labels)
            rows.append(_row(test, trained.config.model, "fp32", None, fp32, fp32, cfg["calibration_images"]))
            task = _task(ctx, f"{data.name}: PTQ schemes × observers",
                         sum(len(_observers(s, cfg)) for s in cfg["schemes"]))
            for scheme in cfg["schemes"]:
                for obs in _observers(scheme, cfg):
                    qcfg = calibrate_config(model, _config(scheme), calib, observer=obs)
                    acc = evaluate(quantize_(copy.deepcopy(model), qcfg), test.test_images, test.test_labels)
                    rows.append(_row(test, trained.config.model, scheme, obs, acc, fp32, cfg["calibration_images"]))
                    _advance(ctx, task)
    return rows


def _row(data: Dataset, model: str, scheme: str, observer: "str | None", acc: float, fp32: float,
         calibration_images: int) -> "dict[str, Any]":
    weight, act, _ = SCHEMES.get(scheme, (None, None, None))
    return {"model": model, "dataset": data.name, "scheme": scheme, "observer": observer,
            "weight": None if weight is None else weight["format"],
            "weight_granularity": None if weight is None else weight.get("granularity"),
            "activation": None if act is None else act["format"], "top1": acc,
            "drop_points": 100 * (fp32 - acc), "calibration_images": calibration_images,
            "test_images": int(data.test_labels.numel())}


def _task(ctx: Any, text: str, total: int) -> Any:
    return None if ctx.progress is None else ctx.progress.add_task(text, total=total)


def _advance(ctx: Any, task: Any) -> None:
    if task is not None:
        ctx.progress.advance(task)


def _efficientnet(cfg: "dict[str, Any]", ctx: Any) -> "list[dict[str, Any]]":
    from lowbit.experiments.pretrained import agreement, load_efficientnet, photo_crops

    try:
        model = load_efficientnet()
        crops = photo_crops(cfg["efficientnet_calibration_crops"] + cfg["efficientnet_eval_crops"], cfg["seed"])
    except DataUnavailableError as err:
        ctx.note(f"EfficientNet-Lite0 skipped: {err}")
        return []
    model = fold_batchnorm(model, inplace=True, strict=True)
    calib_crops = crops[: cfg["efficientnet_calibration_crops"]]
    evals = crops[cfg["efficientnet_calibration_crops"]:]
    calib = [calib_crops[i:i + 8] for i in range(0, calib_crops.shape[0], 8)]
    rows = []
    with threads(cfg["threads"]), torch.no_grad():
        reference = torch.cat([model(evals[i:i + 25]) for i in range(0, evals.shape[0], 25)])
        task = _task(ctx, "EfficientNet-Lite0: PTQ schemes × observers",
                     sum(len(_observers(s, cfg)) for s in cfg["schemes"]))
        for scheme in cfg["schemes"]:
            for obs in _observers(scheme, cfg):
                qcfg = calibrate_config(model, _config(scheme), calib, observer=obs)
                q = quantize_(copy.deepcopy(model), qcfg, on_unsupported="ignore")
                logits = torch.cat([q(evals[i:i + 25]) for i in range(0, evals.shape[0], 25)])
                weight, act, _ = SCHEMES[scheme]
                rows.append({"model": "efficientnet-lite0", "dataset": "photo crops", "scheme": scheme,
                             "observer": obs, "weight": weight["format"], "weight_granularity": weight.get("granularity"),
                             "activation": act["format"], **agreement(logits, reference),
                             "calibration_images": int(calib_crops.shape[0]), "test_images": int(evals.shape[0])})
                _advance(ctx, task)
    return rows


def run(cfg: "dict[str, Any]", ctx: Any) -> "list[dict[str, Any]]":
    rows = _small_models(cfg, ctx)
    if cfg["efficientnet"]:
        rows += _efficientnet(cfg, ctx)
    return rows


# ------------------------------------------------------------------------------- plot / report
def plot(rows: "list[dict[str, Any]]", cfg: "dict[str, Any]", ctx: Any) -> "list[Path]":
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = []
    for r in rows:
        key = (r["model"], r["dataset"])
        if key not in panels:
            panels.append(key)
    fig, axes = plt.subplots(1, len(panels), figsize=(5.2 * len(panels), 0.5 * len(cfg["schemes"]) * 1.3 + 1.6),
                             squeeze=False)
    observers = [o for o in cfg["observers"] if any(r["observer"] == o for r in rows)]
    for ax, (model, dataset) in zip(axes[0], panels):
        mine = [r for r in rows if r["model"] == model and r["dataset"] == dataset and r["observer"] is not None]
        schemes = [s for s in cfg["schemes"] if any(r["scheme"] == s for r in mine)]
        height = 0.8 / max(len(observers), 1)
        for j, obs in enumerate(observers):
            ys = [i + (j - (len(observers) - 1) / 2) * height for i in range(len(schemes))]
            key = "top1_agreement" if model == "efficientnet-lite0" else "drop_points"
            scale = 100 if model == "efficientnet-lite0" else 1
            found = [(y, next((scale * r[key] for r in mine if r["scheme"] == s and r["observer"] == obs), None))
                     for y, s in zip(ys, schemes)]
            found = [(y, v) for y, v in found if v is not None]
            if found:
                ax.barh([y for y, _ in found], [v for _, v in found], height=height, color=COLORS.get(obs, "gray"),
                        label=obs)
        ax.set_yticks(range(len(schemes)))
        ax.set_yticklabels(schemes, fontsize=8)
        ax.invert_yaxis()
        if model == "efficientnet-lite0":
            ax.set_xlabel("top-1 agreement with FP32 (%)")
            ax.set_xlim(0, 100)
        else:
            ax.set_xlabel("top-1 drop vs FP32 (points; lower is better)")
            ax.axvline(BAR_POINTS, color="gray", ls=":", lw=1)
        ax.set_title(f"{model} / {dataset}", fontsize=10)
        ax.grid(axis="x", alpha=0.3)
    axes[0][0].legend(title="observer", fontsize=8)
    fig.tight_layout()
    path = ctx.out_dir / "ptq.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return [path]


def _table(rows: "list[dict[str, Any]]", schemes: "list[str]", observers: "list[str]",
           cell: "Callable[[dict[str, Any]], str]") -> "list[str]":
    """A markdown table: one line per scheme, one column per observer ("–" where not run)."""
    lines = ["| scheme | " + " | ".join(observers) + " |", "|---|" + "---:|" * len(observers)]
    for s in schemes:
        found = [next((r for r in rows if r["scheme"] == s and r["observer"] == o), None) for o in observers]
        lines.append(f"| {s} | " + " | ".join("–" if r is None else cell(r) for r in found) + " |")
    return lines


def report(rows: "list[dict[str, Any]]", cfg: "dict[str, Any]", ctx: Any) -> str:
    lines = ["Weights and layer inputs of every conv/linear layer quantized after training (no retraining); "
             f"activation ranges calibrated on {cfg['calibration_images']} training images per data set "
             "(`lb.calibrate_config`), one range per layer input. Biases FP32, FP32 accumulation.", ""]
    observers = [o for o in cfg["observers"] if any(r["observer"] == o for r in rows)]
    for key in dict.fromkeys((r["model"], r["dataset"]) for r in rows):
        mine = [r for r in rows if (r["model"], r["dataset"]) == key]
        model, dataset = key
        if model == "efficientnet-lite0":
            lines += [f"### EfficientNet-Lite0 (ImageNet weights, BN folded) on {mine[0]['test_images']} photo crops",
                      "", "top-1 agreement with FP32 % (mean KL) — calibrated on "
                      f"{mine[0]['calibration_images']} other crops", ""]
            lines += _table(mine, cfg["schemes"], observers,
                            lambda r: f"{100 * r['top1_agreement']:.1f} ({r['mean_kl']:.3f})")
            lines.append("")
            continue
        fp32 = next(r for r in mine if r["scheme"] == "fp32")
        lines += [f"### {model} on {dataset}: FP32 {100 * fp32['top1']:.2f} % on {fp32['test_images']} test images",
                  "", "top-1 drop vs FP32 in points (lower is better)", ""]
        lines += _table(mine, cfg["schemes"], observers, lambda r: f"{r['drop_points']:+.2f}")
        bar = [r for r in mine if r["scheme"] == BAR_SCHEME and r["observer"] == "minmax"]
        if bar:
            d = bar[0]["drop_points"]
            lines += ["", f"Per-channel int8 PTQ ({BAR_SCHEME}, min-max ranges) loses {d:+.2f} points: "
                      f"{'within' if d < BAR_POINTS else 'NOT within'} the {BAR_POINTS}-point bar."]
        lines.append("")
    lines += ["Observers: `minmax` (running min and max), `percentile` (99.99th), `mse` (clipping threshold with "
              "the least squared quantization error for the activation format), `kl` (TensorRT's entropy rule on a "
              "2048-bin histogram of |x|, zero bin flattened as NVIDIA's calibrator does; symmetric), `log2` (the "
              "posit GAN paper's power-of-two scale from the most populated log2|x| bin — the posit scheme's rule: "
              "the max-based rules would send a posit's values to its sparse far end). "
              "`uint8` inputs get a zero point. The KL rule assumes bell-shaped activations: on a standardized "
              "image input (mostly background, a few bright strokes) it clips the strokes of the first layer's input, "
              "the likely cause of its larger drops on LeNet-5. Per-tensor weight scales and 4-bit weights are what "
              "break EfficientNet-Lite0 (its depthwise channels' ranges differ by up to 140×; see `pretrained`), not "
              "the activation ranges."]
    return "\n".join(lines)
