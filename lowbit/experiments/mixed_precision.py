"""Mixed precision: per-layer sensitivity and the allocator's accuracy–size Pareto front on LeNet-5.

The FP32-trained LeNet-5 of the flagship (MNIST; same cache entry, no retraining) gets one weight
format per layer:

1. **Sensitivity** (`lowbit.quant.sensitivity_scan`): every layer alone in every candidate —
   four families at each width n: ``posit<n>`` (es and a power-of-two scale per layer),
   ``float<n>`` (minifloat, split and exponent bias per layer), ``fixed<n>`` (fraction bits per
   layer) — each chosen by least weight squared error — and ``int<n>/ch`` (symmetric integers with
   a float scale per output channel: ``scaling="absmax", granularity="channel"``). The metric is
   the KL divergence of the quantized model's softmax from the FP32 model's on calibration images
   from the *training* set.
2. **Allocation** (`lowbit.quant.allocate`): for each budget in average bits per weight, the plan
   with the least summed KL (exact knapsack), verified by measuring the best candidate plans and
   every uniform plan that fits — again with KL on the training images — and keeping the best.
3. **Pareto front**: the plans and every uniform format measured on the test set (top-1, and the
   KL to the FP32 model); a point is on the front when nothing at most as large is at least as
   accurate (the rule of `lowbit.quant.pareto_front`).

4. **The bar across training seeds**: the plan at 5 bits/weight against every uniform 5-bit format,
   on this model and on ``bar_repeats`` more LeNet-5s trained from other seeds (each scanned and
   allocated the same way). Two comparators: the uniform format a user would pick *without* the
   test set (least KL on the training images, as the plan is picked) and, optimistically, the one
   that turns out best on the test set; per-seed rows, pooled discordant test images and an exact
   sign test say whether a difference is more than chance.

No test image is used to choose anything. Sizes count everything a layer's weight stores: element
codes, and for ``int<n>/ch`` one FP32 scale per output channel (`lowbit.quant.storage_bits` counts
them in the scan, so budgets include them; ``scale_bits`` in the rows). Power-of-two scales are
part of a format's spec and cost nothing per tensor.
"""

from __future__ import annotations

import copy
import math
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from lowbit.experiments.fp32_models import fp32_target, load_datasets, trained_model
from lowbit.experiments.hybrid import float_candidates
from lowbit.experiments.train import evaluate, threads
from lowbit.experiments.weight_formats import _best_per_layer
from lowbit.formats import FixedPoint, Posit, ScalarFormat
from lowbit.quant import allocate, best_fraction_bits, dequantize_, quantize_, sensitivity_scan, uniform_plan
from lowbit.quant.mixed import Plan
from lowbit.quant.sensitivity import SensitivityReport

NAME = "mixed-precision"
TITLE = "Mixed precision: per-layer sensitivity and the accuracy-size Pareto front (LeNet-5, MNIST)"
SUMMARY = ("per-layer weight-format sensitivity of the FP32 LeNet-5 and the allocator's accuracy-size Pareto front "
           "beside uniform posit, minifloat, fixed point and per-channel int at 3-8 bits")

FAMILIES = ("posit", "float", "fixed", "int/ch")
LABELS = {"posit": "posit (es, 2^k per layer)", "float": "minifloat (split, bias per layer)",
          "fixed": "fixed point (frac bits per layer)", "int/ch": "int, per-channel scale"}
MARKERS = {"posit": "o", "float": "^", "fixed": "s", "int/ch": "D"}
COLORS = {"posit": "tab:blue", "float": "tab:green", "fixed": "tab:orange", "int/ch": "tab:purple"}
BAR_BITS = 5  # the report compares the plan at this budget with the best uniform format of this width


def config(quick: bool = False, seed: int = 0) -> "dict[str, Any]":
    """The run's configuration. ``quick``: widths 3-6, budgets 3-6 bits, 4000 test images."""
    return {
        "datasets": ["mnist"],
        "fallback": "digits",
        "widths": [3, 4, 5, 6] if quick else [3, 4, 5, 6, 7, 8],
        "families": list(FAMILIES),
        "budgets": [3.0, 4.0, 5.0, 6.0] if quick else [3.0, 3.5, 4.0, 4.5, 5.0, 5.5, 6.0, 7.0, 8.0],
        "posit_es": [0, 1, 2],
        "posit_scale_window": 3,  # k = round(log2 rms|w|) - 3 ... + 3
        "minifloat_bias_search": [-1, 3],
        "minifloat_max_exp": 5,
        "calibration_images": 1024 if quick else 4096,  # training images for the KL scan and plan verification
        "verify": 4 if quick else 8,  # DP-frontier plans measured (KL, training images) per budget
        "bar_repeats": 0 if quick else 4,  # the bar again on LeNet-5s trained with seeds seed+1 ... seed+k
        "test_subset": 4000 if quick else None,
        "epochs": None,  # None: the flagship's (shared cache)
        "train_subset": None,
        "threads": 1,
        "cache": True,
        "seed": seed,
    }


# ------------------------------------------------------------------------- candidates
def _posit_candidates(w: torch.Tensor, n: int, cfg: "dict[str, Any]") -> "list[ScalarFormat]":
    rms = float(w.detach().double().pow(2).mean().sqrt())
    k0 = round(math.log2(rms)) if rms > 0 else 0
    win = int(cfg["posit_scale_window"])
    return [Posit(n, es, k) for es in cfg["posit_es"] for k in range(k0 - win, k0 + win + 1)]


def family_candidate(family: str, n: int, w: torch.Tensor, cfg: "dict[str, Any]") -> "dict[str, Any]":
    """The ``weight`` role (with its ``label``) of ``family`` at ``n`` bits for a layer with weight ``w``."""
    label = family_label(family, n)
    if family == "int/ch":
        return {"format": f"int{n}n", "scaling": "absmax", "granularity": "channel", "label": label}
    if family == "posit":
        fmt = _best_per_layer({"w": w}, _posit_candidates(w, n, cfg))["w"]
    elif family == "float":
        fmt = _best_per_layer({"w": w}, float_candidates(w, n, cfg))["w"]
    elif family == "fixed":
        fmt = FixedPoint(n, min(64, max(0, int(best_fraction_bits(w.detach(), n, rule="mse")))))
    else:
        raise ValueError(f"unknown family {family!r}; known: {', '.join(FAMILIES)}")
    return {"format": str(fmt), "label": label}


def candidates_for(cfg: "dict[str, Any]") -> "Callable[[str, nn.Module], list[dict[str, Any]]]":
    """The ``candidates`` callable for `sensitivity_scan`: every family at every width, per layer."""
    def cands(name: str, module: nn.Module) -> "list[dict[str, Any]]":
        w = module.weight.detach()
        return [family_candidate(f, n, w, cfg) for n in cfg["widths"] for f in cfg["families"]]
    return cands


def _family(label: str) -> str:
    return "int/ch" if label.endswith("/ch") else label.rstrip("0123456789")


def _width(label: str) -> int:
    return int("".join(c for c in label if c.isdigit()))


# ------------------------------------------------------------------------- run
def run(cfg: "dict[str, Any]", ctx: Any) -> "list[dict[str, Any]]":
    unknown = set(cfg["families"]) - set(FAMILIES)
    if unknown or not cfg["families"]:
        raise ValueError(f"families must be a non-empty subset of {', '.join(FAMILIES)}; got {cfg['families']}")
    with threads(cfg["threads"]):
        data = load_datasets(cfg["datasets"], cfg.get("fallback"), ctx, NAME)[0]
        return _run(data, cfg, ctx)


def _run(data: Any, cfg: "dict[str, Any]", ctx: Any) -> "list[dict[str, Any]]":
    trained = trained_model(data, cfg, ctx)
    model = copy.deepcopy(trained.model).eval().to(memory_format=torch.channels_last)
    images = data.test_images[: cfg["test_subset"]].contiguous(memory_format=torch.channels_last)
    labels = data.test_labels[: cfg["test_subset"]]
    order = torch.randperm(data.train_labels.numel(), generator=torch.Generator().manual_seed(cfg["seed"]))
    calib = data.train_images[order[: cfg["calibration_images"]]].contiguous(memory_format=torch.channels_last)

    base = {"dataset": data.name, "model": trained.config.model}
    progress = ctx.progress
    n_cands = len(cfg["widths"]) * len(cfg["families"])
    task = progress.add_task("sensitivity scan", total=1) if progress is not None else None
    report = sensitivity_scan(model, candidates_for(cfg), "kl", data=calib)
    if task is not None:
        progress.advance(task)
    fp32 = evaluate(model, images, labels)
    ctx.info["model"] = {
        "dataset": data.name, "model": trained.config.model, "fp32_accuracy": fp32, "test_images": int(labels.numel()),
        "calibration_images": int(calib.shape[0]), "cached": trained.cached,
        "train_seconds": round(trained.seconds, 1), "layers": {i.name: list(i.shape) for i in report.layers},
        "candidates_per_layer": n_cands,
    }
    target = fp32_target(data.name)
    if target is not None and fp32 < target and cfg["test_subset"] is None and cfg["train_subset"] is None:
        ctx.note(f"{data.name}: FP32 accuracy {fp32:.2%} is below the {target:.1%} target")
    rows: "list[dict[str, Any]]" = []
    for e in report.entries:
        rows.append({**base, "kind": "sensitivity", "layer": e.layer, "label": e.label, "family": _family(e.label),
                     "bits": _width(e.label), "format": e.weight if isinstance(e.weight, str) else e.weight["format"],
                     "numel": e.numel, "kl": e.value, "weight_error": e.weight_error,
                     "storage_bits": e.storage_bits})

    # plans: allocated (verified with KL on training images) for each budget, then uniform plans
    names: "list[tuple[str, str, float | None]]" = []
    plans: "list[Plan]" = []
    budgets = [float(b) for b in cfg["budgets"]]
    task = progress.add_task("allocate + verify", total=len(budgets)) if progress is not None else None
    for b in budgets:
        try:
            plan = allocate(report, avg_bits=b, model=model, metric="kl", data=calib, verify=int(cfg["verify"]))
        except ValueError as err:  # below the cheapest plan
            ctx.note(f"budget {b:g} bits/weight skipped: {err}")
        else:
            plans.append(plan)
            names.append(("plan", f"plan@{b:g}", b))
        if task is not None:
            progress.advance(task)
    for f in cfg["families"]:
        for n in cfg["widths"]:
            label = family_label(f, n)
            plans.append(uniform_plan(report, label))
            names.append(("uniform", label, None))
    reference = _logits(model, images)
    correct: "dict[str, torch.Tensor]" = {}  # per test image: right or wrong, for the significance of the bar
    task = progress.add_task("measure on test", total=len(plans)) if progress is not None else None
    for (kind, name, budget), plan in zip(names, plans):
        (logits,) = quantized_logits(model, plan, images)
        acc, kl = _top1_kl(logits, reference, labels)
        correct[name] = logits.argmax(1) == labels
        sbits = sum(layer.storage_bits - layer.numel * _width(layer.label) for layer in plan.layers)
        rows.append({
            **base, "kind": kind, "name": name, "family": _family(name) if kind == "uniform" else "mixed",
            "bits": _width(name) if kind == "uniform" else None, "budget_avg_bits": budget,
            "avg_bits": plan.avg_bits, "total_bits": plan.total_bits, "budget_bits": plan.budget_bits,
            "total_bytes": plan.total_bytes, "scale_bits": sbits,
            "predicted_kl": plan.predicted, "verified_kl": plan.measured, "plans_checked": plan.checked,
            "accuracy": acc, "test_kl": kl, "drop_points": round(100 * (fp32 - acc), 4), "pareto": False,
            "method": plan.method, "formats": plan.formats,
            "specs": {layer.name: layer.weight for layer in plan.layers},
        })
        if task is not None:
            progress.advance(task)
    numel = sum(i.numel for i in report.layers)
    rows.append({**base, "kind": "full", "name": "fp32", "family": "fp32", "bits": 32, "budget_avg_bits": None,
                 "avg_bits": 32.0, "total_bits": 32 * numel, "budget_bits": None, "total_bytes": 4 * numel,
                 "scale_bits": 0, "predicted_kl": 0.0, "verified_kl": None, "plans_checked": 0, "accuracy": fp32,
                 "test_kl": 0.0, "drop_points": 0.0, "pareto": False, "method": "", "formats": {}, "specs": {}})
    mark_pareto([r for r in rows if r["kind"] in ("plan", "uniform", "full")])
    rows.extend(bar_rows(rows, correct=correct))
    bar_plan = next((p for (kind, _, b), p in zip(names, plans) if kind == "plan" and b == BAR_BITS), None)
    trials = [bar_trial(model, report, calib, images, labels, cfg, seed=int(cfg["seed"]), fp32=fp32, plan=bar_plan)]
    repeats = int(cfg["bar_repeats"])
    task = progress.add_task("bar across seeds", total=repeats) if progress is not None and repeats else None
    for extra in range(1, repeats + 1):
        seed = int(cfg["seed"]) + extra
        other = trained_model(data, {**cfg, "seed": seed}, ctx)
        m = copy.deepcopy(other.model).eval().to(memory_format=torch.channels_last)
        rep = sensitivity_scan(m, candidates_for(cfg), "kl", data=calib)
        trials.append(bar_trial(m, rep, calib, images, labels, cfg, seed=seed, fp32=evaluate(m, images, labels)))
        if task is not None:
            progress.advance(task)
    rows.extend({**base, **t} for t in trials)
    rows.append({**base, **bar_summary(trials)})
    return rows


def bar_trial(model: nn.Module, report: SensitivityReport, calib: torch.Tensor, images: torch.Tensor,
              labels: torch.Tensor, cfg: "dict[str, Any]", *, seed: int, fp32: float,
              plan: "Plan | None" = None) -> "dict[str, Any]":
    """The bar on one trained model: its plan at `BAR_BITS` bits/weight (allocated here unless given)
    against every uniform `BAR_BITS`-bit format, on the test set (top-1, KL) and on the calibration
    images (KL: how the plan was chosen, and how a user would choose a uniform format)."""
    if plan is None:
        plan = allocate(report, avg_bits=BAR_BITS, model=model, metric="kl", data=calib, verify=int(cfg["verify"]))
    uniform = [family_label(f, BAR_BITS) for f in cfg["families"]]
    candidates = {"plan": plan, **{lab: uniform_plan(report, lab) for lab in uniform}}
    test_ref, calib_ref = _logits(model, images), _logits(model, calib)
    measured: "dict[str, dict[str, Any]]" = {}
    correct: "dict[str, torch.Tensor]" = {}
    for name, p in candidates.items():
        logits, calib_logits = quantized_logits(model, p, images, calib)
        acc, kl = _top1_kl(logits, test_ref, labels)
        calib_kl = _top1_kl(calib_logits, calib_ref, calib_ref.argmax(1))[1]
        correct[name] = logits.argmax(1) == labels
        measured[name] = {"accuracy": acc, "test_kl": kl, "calib_kl": calib_kl, "avg_bits": p.avg_bits,
                          "within_budget": p.total_bits <= plan.budget_bits}
    chosen = min(uniform, key=lambda lab: (measured[lab]["calib_kl"], lab))
    best = max(uniform, key=lambda lab: (measured[lab]["accuracy"], -measured[lab]["avg_bits"]))

    def split(other: str) -> "tuple[int, int]":
        return int((correct["plan"] & ~correct[other]).sum()), int((correct[other] & ~correct["plan"]).sum())

    (a1, b1), (a2, b2) = split(chosen), split(best)
    fp32_right = test_ref.argmax(1) == labels  # the unquantized model against the same optimistic comparator
    a3, b3 = int((fp32_right & ~correct[best]).sum()), int((correct[best] & ~fp32_right).sum())
    return {"kind": "bar_trial", "name": f"seed {seed}", "seed": seed, "budget_avg_bits": BAR_BITS,
            "fp32_accuracy": fp32, "plan_accuracy": measured["plan"]["accuracy"], "plan": measured["plan"],
            "plan_formats": plan.formats, "uniform": {lab: measured[lab] for lab in uniform},
            "chosen_uniform": chosen, "chosen_accuracy": measured[chosen]["accuracy"],
            "best_uniform": best, "best_accuracy": measured[best]["accuracy"],
            "only_plan_right_vs_chosen": a1, "only_chosen_right": b1,
            "only_plan_right_vs_best": a2, "only_best_right": b2,
            "only_fp32_right_vs_best": a3, "only_best_right_vs_fp32": b3}


def bar_summary(trials: "list[dict[str, Any]]") -> "dict[str, Any]":
    """The bar over all `bar_trial` rows: mean accuracies, per-seed wins / ties / losses of the plan,
    and the pooled discordant test images with their sign-test p-value, against both comparators.

    >>> t = [{"seed": s, "plan_accuracy": p, "chosen_accuracy": c, "best_accuracy": b, "fp32_accuracy": f,
    ...       "only_plan_right_vs_chosen": a1, "only_chosen_right": b1, "only_plan_right_vs_best": a2,
    ...       "only_best_right": b2} for s, p, c, b, f, a1, b1, a2, b2 in
    ...      [(0, .99, .98, .99, .99, 12, 2, 3, 3), (1, .97, .98, .98, .98, 1, 11, 1, 11)]]
    >>> r = bar_summary(t); r["wins_vs_chosen"], r["ties_vs_chosen"], r["losses_vs_chosen"], r["pooled_vs_chosen"]
    (1, 0, 1, [13, 13])
    >>> r["sign_test_p_vs_chosen"], r["ties_vs_best"], r["mean_plan_accuracy"]
    (1.0, 1, 0.98)
    >>> r["fp32_wins_vs_best"], r["fp32_ties_vs_best"], r["fp32_losses_vs_best"]
    (0, 2, 0)
    """
    out: "dict[str, Any]" = {"kind": "bar_summary", "name": f"plan@{BAR_BITS} over {len(trials)} seed(s)",
                             "budget_avg_bits": BAR_BITS, "seeds": [t["seed"] for t in trials]}
    for key in ("fp32", "plan", "chosen", "best"):
        out[f"mean_{key}_accuracy"] = round(sum(t[f"{key}_accuracy"] for t in trials) / len(trials), 6)
    for who in ("chosen", "best"):
        diffs = [t["plan_accuracy"] - t[f"{who}_accuracy"] for t in trials]
        out[f"wins_vs_{who}"] = sum(d > 0 for d in diffs)
        out[f"ties_vs_{who}"] = sum(d == 0 for d in diffs)
        out[f"losses_vs_{who}"] = sum(d < 0 for d in diffs)
        a = sum(t[f"only_plan_right_vs_{who}"] for t in trials)
        b = sum(t[f"only_{who}_right"] for t in trials)
        out[f"pooled_vs_{who}"] = [a, b]
        out[f"sign_test_p_vs_{who}"] = sign_test(a, b)
    # the same optimistic comparator against the unquantized model: how often it beats FP32 itself
    diffs = [t["fp32_accuracy"] - t["best_accuracy"] for t in trials]
    out["fp32_wins_vs_best"] = sum(d > 0 for d in diffs)
    out["fp32_ties_vs_best"] = sum(d == 0 for d in diffs)
    out["fp32_losses_vs_best"] = sum(d < 0 for d in diffs)
    if all("only_fp32_right_vs_best" in t for t in trials):
        out["fp32_pooled_vs_best"] = [sum(t["only_fp32_right_vs_best"] for t in trials),
                                      sum(t["only_best_right_vs_fp32"] for t in trials)]
    return out


def family_label(family: str, n: int) -> str:
    """The label of ``family`` at ``n`` bits: ``posit5``, ``float5``, ``fixed5``, ``int5/ch``."""
    return f"int{n}/ch" if family == "int/ch" else f"{family}{n}"


def quantized_logits(model: nn.Module, plan: Plan, *inputs: torch.Tensor) -> "list[torch.Tensor]":
    """``model``'s float64 logits on each of ``inputs`` with ``plan`` simulated (the model is restored)."""
    quantize_(model, plan.to_config())
    try:
        return [_logits(model, x) for x in inputs]
    finally:
        dequantize_(model)


def _logits(model: nn.Module, images: torch.Tensor, batch: int = 500) -> torch.Tensor:
    with torch.no_grad():
        return torch.cat([model(images[i : i + batch]) for i in range(0, images.shape[0], batch)]).double()


def _top1_kl(logits: torch.Tensor, reference: torch.Tensor, labels: torch.Tensor) -> "tuple[float, float]":
    """Top-1 accuracy and mean KL(softmax(reference) ‖ softmax(logits))."""
    acc = float((logits.argmax(1) == labels).double().mean())
    p = torch.log_softmax(reference, 1)
    kl = float((p.exp() * (p - torch.log_softmax(logits, 1))).sum(1).mean())
    return acc, max(kl, 0.0)


def mark_pareto(points: "list[dict[str, Any]]") -> None:
    """Set ``pareto`` on each point: True when no other is at most as large and at least as accurate, one
    of them strictly (the rule of `lowbit.quant.pareto_front`).

    >>> pts = [{"total_bits": b, "accuracy": a} for b, a in [(3, 0.9), (4, 0.8), (5, 0.95)]]
    >>> mark_pareto(pts); [p["pareto"] for p in pts]
    [True, False, True]
    """
    for p in points:
        p["pareto"] = not any(
            o is not p and o["total_bits"] <= p["total_bits"] and o["accuracy"] >= p["accuracy"]
            and (o["total_bits"] < p["total_bits"] or o["accuracy"] > p["accuracy"]) for o in points)


def sign_test(a: int, b: int) -> float:
    """Two-sided exact sign test (binomial, p = 1/2) for ``a`` vs ``b`` discordant pairs.

    >>> sign_test(5, 5), round(sign_test(10, 0), 4)
    (1.0, 0.002)
    """
    n = a + b
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, k) for k in range(min(a, b) + 1)) / 2 ** n
    return min(1.0, 2 * tail)


def bar_rows(rows: "list[dict[str, Any]]", bits: int = BAR_BITS,
             correct: "dict[str, torch.Tensor] | None" = None) -> "list[dict[str, Any]]":
    """The bar: the plan at ``bits`` bits/weight vs the most accurate uniform format of ``bits`` bits.

    With ``correct`` (per point, which test images it gets right) the row also counts the images
    only one of the two gets right and the sign test's p-value for that split.
    """
    plan = next((r for r in rows if r["kind"] == "plan" and r["budget_avg_bits"] == bits), None)
    uniform = [r for r in rows if r["kind"] == "uniform" and r["bits"] == bits]
    if plan is None or not uniform:
        return []
    best = max(uniform, key=lambda r: (r["accuracy"], -r["total_bits"]))
    fits = [r for r in uniform if r["total_bits"] <= plan["budget_bits"]] or uniform
    best_kl = min(fits, key=lambda r: (r["test_kl"], r["total_bits"]))
    row = {"dataset": plan["dataset"], "model": plan["model"], "kind": "bar", "name": f"plan@{bits} vs uniform",
           "budget_avg_bits": bits, "plan_avg_bits": plan["avg_bits"], "plan_accuracy": plan["accuracy"],
           "uniform": best["name"], "uniform_avg_bits": best["avg_bits"], "uniform_accuracy": best["accuracy"],
           "difference_points": round(100 * (plan["accuracy"] - best["accuracy"]), 4),
           "plan_ge_uniform": plan["accuracy"] >= best["accuracy"],
           "plan_test_kl": plan["test_kl"], "uniform_best_kl": best_kl["name"],
           "uniform_test_kl": best_kl["test_kl"], "plan_le_uniform_kl": plan["test_kl"] <= best_kl["test_kl"],
           "plan_within_budget": plan["total_bits"] <= plan["budget_bits"],
           "only_plan_right": None, "only_uniform_right": None, "sign_test_p": None}
    if correct is not None and plan["name"] in correct and best["name"] in correct:
        p, u = correct[plan["name"]], correct[best["name"]]
        a, b = int((p & ~u).sum()), int((u & ~p).sum())
        row.update(only_plan_right=a, only_uniform_right=b, sign_test_p=sign_test(a, b))
    return [row]


# ------------------------------------------------------------------------- plots
def plot(rows: "list[dict[str, Any]]", cfg: "dict[str, Any]", ctx: Any) -> "list[Path]":
    """pareto.png (test accuracy vs bits/weight: uniform formats, plans, the front) and sensitivity.png
    (per-layer KL vs bits, one panel per family)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = [r for r in rows if r["kind"] in ("plan", "uniform")]
    full = next(r for r in rows if r["kind"] == "full")
    top = 100 * full["accuracy"]
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.8))
    lo = max(min(100 * r["accuracy"] for r in points) - 0.3, top - 6) if points else top - 6
    kl_floor = min([r["test_kl"] for r in points if r["test_kl"] > 0] + [1e-6]) / 2
    for j, ax in enumerate(axes):
        def y(r: "dict[str, Any]") -> float:
            return max(100 * r["accuracy"], lo + 0.05) if j == 0 else max(r["test_kl"], kl_floor)

        for fam in FAMILIES:
            pts = sorted((r["avg_bits"], y(r)) for r in points if r["kind"] == "uniform" and r["family"] == fam)
            if pts:
                ax.plot(*zip(*pts), marker=MARKERS[fam], color=COLORS[fam], alpha=0.75, ls=":",
                        label=f"uniform {LABELS[fam]}")
        plans = sorted((r["avg_bits"], y(r)) for r in points if r["kind"] == "plan")
        if plans:
            ax.plot(*zip(*plans), marker="*", ms=12, color="k", ls="-", lw=1, label="mixed-precision plans")
        if j == 0:
            front = sorted((r["avg_bits"], y(r)) for r in points if r["pareto"])
        else:
            front = sorted((r["avg_bits"], y(r)) for r in points if not any(
                o is not r and o["total_bits"] <= r["total_bits"] and o["test_kl"] <= r["test_kl"]
                and (o["total_bits"] < r["total_bits"] or o["test_kl"] < r["test_kl"]) for o in points))
        if front:
            xs, ys = zip(*front)
            ax.step(xs, ys, where="post", color="red", lw=2, alpha=0.4)
            ax.scatter(xs, ys, s=170, facecolors="none", edgecolors="red", lw=1.8, label="Pareto front", zorder=5)
        ax.set_xlabel("average bits per weight (incl. per-channel scales)")
        ax.grid(alpha=0.3, which="both")
        if j == 0:
            ax.axhline(top, color="k", ls="--", lw=1, label=f"FP32 {top:.2f} %")
            ax.set_ylim(lo, top + 0.3)
            ax.set_ylabel("top-1 accuracy on test (%)")
            ax.set_title(f"{full['dataset']} {full['model']}: weights only, no retraining", fontsize=10)
            ax.legend(fontsize=7, loc="lower right")
        else:
            ax.set_yscale("log")
            ax.set_ylabel("KL(FP32 ‖ quantized) on test")
            ax.set_title("the same points by KL divergence to the FP32 model (lower is better)", fontsize=10)
    fig.tight_layout()
    p1 = ctx.out_dir / "pareto.png"
    fig.savefig(p1, dpi=110)
    plt.close(fig)

    sens = [r for r in rows if r["kind"] == "sensitivity"]
    fams = [f for f in FAMILIES if any(r["family"] == f for r in sens)]
    layers = list(dict.fromkeys(r["layer"] for r in sens))
    fig, axes = plt.subplots(1, len(fams), figsize=(3.6 * len(fams), 3.6), squeeze=False, sharey=True)
    floor = min([r["kl"] for r in sens if r["kl"] > 0] + [1e-6]) / 2
    for ax, fam in zip(axes[0], fams):
        for layer in layers:
            pts = sorted((r["bits"], max(r["kl"], floor)) for r in sens if r["family"] == fam and r["layer"] == layer)
            numel = next(r["numel"] for r in sens if r["layer"] == layer)
            if pts:
                ax.plot(*zip(*pts), marker="o", label=f"{layer} ({numel} w)")
        ax.set_yscale("log")
        ax.set_title(LABELS[fam], fontsize=9)
        ax.set_xlabel("bits per weight (this layer only)")
        ax.grid(alpha=0.3, which="both")
    axes[0][0].set_ylabel("KL(FP32 ‖ quantized), training images")
    axes[0][0].legend(fontsize=7)
    fig.suptitle("Per-layer sensitivity: one layer quantized at a time", fontsize=10)
    fig.tight_layout()
    p2 = ctx.out_dir / "sensitivity.png"
    fig.savefig(p2, dpi=110)
    plt.close(fig)
    return [p1, p2]


# ------------------------------------------------------------------------- report
def _pct(x: "float | None") -> str:
    return "–" if x is None else f"{100 * x:.2f}"


def _formats_text(formats: "dict[str, str]") -> str:
    return ", ".join(f"{k} {v}" for k, v in formats.items())


def report(rows: "list[dict[str, Any]]", cfg: "dict[str, Any]", ctx: Any) -> str:
    info = ctx.info.get("model", {})
    full = next(r for r in rows if r["kind"] == "full")
    sens = [r for r in rows if r["kind"] == "sensitivity"]
    layers = list(dict.fromkeys(r["layer"] for r in sens))
    numel = {r["layer"]: r["numel"] for r in sens}
    out = [
        f"FP32 {full['model']} on {full['dataset']}: **{_pct(full['accuracy'])} %** top-1 on "
        f"{info.get('test_images', '?')} test images "
        + ("(weights from the flagship's cache)." if info.get("cached") else
           f"(trained in {info.get('train_seconds', '?')} s).")
        + " Weights only (biases and activations FP32), no retraining. Sensitivity and plan choice use the KL "
        f"divergence to the FP32 model on {info.get('calibration_images', '?')} training images; the test set only "
        "measures. No paper gives numbers for this experiment: the bar is that the allocated plan is at least as "
        "accurate as the best uniform format of the same size.",
        "",
        "![Pareto front](pareto.png)",
        "",
        "![sensitivity](sensitivity.png)",
        "",
    ]
    bar = next((r for r in rows if r["kind"] == "bar"), None)
    if bar is not None:
        verdict = ("**met**" if bar["plan_ge_uniform"] else "**not met**")
        plan5 = next(r for r in rows if r["kind"] == "plan" and r["budget_avg_bits"] == bar["budget_avg_bits"])
        out += [
            f"## The bar at {bar['budget_avg_bits']:g} bits per weight",
            "",
            f"- plan@{bar['budget_avg_bits']:g}: **{_pct(bar['plan_accuracy'])} %** at {bar['plan_avg_bits']:.3f} "
            f"bits/weight — {_formats_text(plan5['formats'])}",
            f"- best uniform {bar['budget_avg_bits']:g}-bit format: `{bar['uniform']}` "
            f"**{_pct(bar['uniform_accuracy'])} %** at {bar['uniform_avg_bits']:.3f} bits/weight",
            f"- plan − uniform: {bar['difference_points']:+.2f} points; plan ≥ uniform: {verdict}; "
            f"plan within its budget: {'yes' if bar['plan_within_budget'] else 'NO'}.",
        ]
        if bar["sign_test_p"] is not None:
            out.append(f"- the two disagree on {bar['only_plan_right'] + bar['only_uniform_right']} test images: "
                       f"only the plan is right on {bar['only_plan_right']}, only `{bar['uniform']}` on "
                       f"{bar['only_uniform_right']} (sign test p = {bar['sign_test_p']:.2f}"
                       + ("; the difference is within chance)." if bar["sign_test_p"] >= 0.05 else ")."))
        out += [
            f"- the smoother test metric, KL to the FP32 model: plan {bar['plan_test_kl']:.2e}, best uniform "
            f"{bar['budget_avg_bits']:g}-bit format within the budget (`{bar['uniform_best_kl']}`) "
            f"{bar['uniform_test_kl']:.2e} — plan "
            + ("≤ uniform" if bar["plan_le_uniform_kl"] else "> uniform") + ".",
            "",
        ]
        if not bar["plan_ge_uniform"]:
            out += ["The allocator guarantees plan ≥ every uniform plan that fits *in the metric it verifies with* "
                    "(KL on training images); on test accuracy that ordering can flip by a few images.", ""]
    out += _seeds_section(rows)
    out += [
        "## Plans and uniform formats (test set)",
        "",
        "| plan / format | bits/weight | KiB | KL predicted | KL verified (train) | KL test | top-1 % | Pareto "
        "| layers |",
        "|---|---:|---:|---:|---:|---:|---:|:---:|---|",
    ]
    pts = sorted((r for r in rows if r["kind"] in ("plan", "uniform", "full")),
                 key=lambda r: (r["avg_bits"], r["kind"] != "plan", r["name"]))
    for r in pts:
        kl_v = "–" if r["verified_kl"] is None else f"{r['verified_kl']:.2e}"
        layers_text = _formats_text(r["formats"]) if r["kind"] == "plan" else ""
        out.append(f"| {r['name']} | {r['avg_bits']:.3f} | {r['total_bytes'] / 1024:.1f} | "
                   f"{r['predicted_kl']:.2e} | {kl_v} | {r['test_kl']:.2e} | {_pct(r['accuracy'])} | "
                   f"{'✓' if r['pareto'] else ''} | {layers_text} |")
    out += ["", "Bits/weight count the FP32 per-channel scales of `int<n>/ch` layers (" + _scale_overhead(rows)
            + "); *KL predicted*: the allocator's sum of per-layer KLs; *KL verified*: the plan measured on the "
            "training images while allocating.", ""]
    # sensitivity table: rows = candidates, columns = layers (KL)
    out += ["## Per-layer sensitivity (KL divergence with only that layer quantized; training images)", "",
            "| candidate | " + " | ".join(f"{layer} ({numel[layer]})" for layer in layers) + " |",
            "|---|" + "---:|" * len(layers)]
    labels = list(dict.fromkeys(r["label"] for r in sens))
    kl = {(r["layer"], r["label"]): r["kl"] for r in sens}
    for label in labels:
        out.append(f"| {label} | " + " | ".join(f"{kl.get((layer, label), math.nan):.2e}" for layer in layers) + " |")
    out.append("")
    most = max(layers, key=lambda layer: sum(kl.get((layer, lab), 0.0) / numel[layer] for lab in labels))
    least = min(layers, key=lambda layer: sum(kl.get((layer, lab), 0.0) / numel[layer] for lab in labels))
    out.append(f"Per weight (KL summed over the candidates, divided by the layer's weights), the most sensitive "
               f"layer is **{most}** and the least **{least}**.")
    plan = next((r for r in rows if r["kind"] == "plan" and r["budget_avg_bits"] == BAR_BITS), None)
    if plan is not None:
        widths = {k: _width(v) for k, v in plan["formats"].items()}
        out.append(f"plan@{BAR_BITS} gives " + ", ".join(f"{k} {b} bits" for k, b in widths.items())
                   + f" — {most} at {widths.get(most, '?')} bits, {least} at {widths.get(least, '?')}.")
    return "\n".join(out)


def _seeds_section(rows: "list[dict[str, Any]]") -> "list[str]":
    """The bar on every trained model (`bar_trial` rows) and over all of them (`bar_summary`)."""
    trials = [r for r in rows if r["kind"] == "bar_trial"]
    summary = next((r for r in rows if r["kind"] == "bar_summary"), None)
    if not trials or summary is None:
        return []
    labels = list(trials[0]["uniform"])
    bits = summary["budget_avg_bits"]
    out = [f"## The bar at {bits:g} bits per weight on {len(trials)} trained model(s)", "",
           f"Each LeNet-5 trained from its own seed, scanned and allocated as above. *chosen*: the uniform "
           f"{bits:g}-bit format with the least KL on the training images — the one a user would pick without "
           "the test set, by the rule that picks the plan; *best on test*: the uniform format that turns out most "
           "accurate on the test set (an optimistic comparator: the maximum of "
           f"{len(labels)} noisy accuracies). Top-1 % on the test set:", "",
           "| seed | FP32 | plan | " + " | ".join(labels) + " | chosen | plan − chosen | plan − best on test | FP32 − best on test |",
           "|---:|---:|---:|" + "---:|" * len(labels) + "---|---:|---:|---:|"]
    for t in trials:
        out.append(f"| {t['seed']} | {_pct(t['fp32_accuracy'])} | **{_pct(t['plan_accuracy'])}** | "
                   + " | ".join(_pct(t["uniform"][lab]["accuracy"]) for lab in labels)
                   + f" | {t['chosen_uniform']} | {100 * (t['plan_accuracy'] - t['chosen_accuracy']):+.2f} | "
                   f"{100 * (t['plan_accuracy'] - t['best_accuracy']):+.2f} | "
                   f"{100 * (t['fp32_accuracy'] - t['best_accuracy']):+.2f} |")
    out.append(f"| mean | {_pct(summary['mean_fp32_accuracy'])} | **{_pct(summary['mean_plan_accuracy'])}** | "
               + " | ".join(_pct(sum(t["uniform"][lab]["accuracy"] for t in trials) / len(trials)) for lab in labels)
               + f" | | {100 * (summary['mean_plan_accuracy'] - summary['mean_chosen_accuracy']):+.2f} | "
               f"{100 * (summary['mean_plan_accuracy'] - summary['mean_best_accuracy']):+.2f} | "
               f"{100 * (summary['mean_fp32_accuracy'] - summary['mean_best_accuracy']):+.2f} |")
    out.append("")
    for who, text in (("chosen", "the chosen uniform format"), ("best", "the best uniform format on test")):
        a, b = summary[f"pooled_vs_{who}"]
        out.append(f"- plan vs {text}: {summary[f'wins_vs_{who}']} seed(s) better, {summary[f'ties_vs_{who}']} "
                   f"equal, {summary[f'losses_vs_{who}']} worse; over all seeds the plan alone is right on {a} "
                   f"test images and {text} alone on {b} (sign test p = {summary[f'sign_test_p_vs_{who}']:.2f}"
                   + ("; this comparator is picked by looking at these same images, so the p-value overstates "
                      "the difference)." if who == "best" else ")."))
    if "fp32_losses_vs_best" in summary:
        pooled = summary.get("fp32_pooled_vs_best")
        out.append(f"- FP32 itself vs the best uniform format on test: {summary['fp32_wins_vs_best']} seed(s) better, "
                   f"{summary['fp32_ties_vs_best']} equal, {summary['fp32_losses_vs_best']} worse"
                   + (f"; pooled, FP32 alone is right on {pooled[0]} test images and the best uniform format alone on "
                      f"{pooled[1]}" if pooled else "")
                   + " — the yardstick the unquantized model would have to clear as well.")
    kl_wins = sum(t["plan"]["test_kl"] <= min(u["test_kl"] for u in t["uniform"].values()) for t in trials)
    out += [f"- test KL to the FP32 model: the plan is lowest of all on {kl_wins} of {len(trials)} seed(s).", ""]
    return out


def _scale_overhead(rows: "list[dict[str, Any]]") -> str:
    r = next((r for r in rows if r["kind"] == "uniform" and r["family"] == "int/ch"), None)
    if r is None:
        return "nothing here: no int/ch format was evaluated"
    return f"+{r['avg_bits'] - r['bits']:.3f} bits/weight for a uniform int/ch plan"
