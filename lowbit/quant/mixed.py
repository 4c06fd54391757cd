"""Mixed precision: one weight format per layer, chosen under a memory budget.

`allocate` turns a `SensitivityReport` (lowbit.quant.sensitivity) into a `Plan`: for every scanned
layer one of its scanned candidates, so that the weights fit a budget in bytes or in average bits
per weight, with the best predicted metric. `Plan.to_config` is a config `lowbit.quantize_` and
`lowbit.save` accept; `pareto_front` compares predicted and measured accuracy–size points of plans
over a sweep of budgets with the uniform formats.

**The proxy.** The scan measures each layer alone; a plan's predicted loss is the *sum* of its
layers' drops (the independence assumption behind the integer programs of sensitivity-based mixed
precision, e.g. HAWQ-V3). It is a proxy: quantization noise from several layers can compound or
cancel, and a metric like accuracy on a few hundred samples moves in steps. Hence the option to
verify plans by measurement (below).

**The budget** counts the weights of the model's quantizable layers: scanned layers at their chosen
format's exact storage (element codes plus fitted side parameters, see
`lowbit.quant.sensitivity.storage_bits`), ``keep_full`` layers and — by default
(``count_unscanned=True``) — quantizable layers the scan did not cover at their full dtype size
(the plan keeps them in full precision). Biases and other parameters are not counted.
``avg_bits`` means a budget of ``avg_bits × (number of counted weights)`` bits. Costs are integers
in bits, so "fits" is decided exactly; the plan never exceeds the budget.

**Methods.** ``"knapsack"``: the exact multiple-choice knapsack, by dynamic programming over total
bits. The DP keeps, after each layer, only the non-dominated cells of the bit grid — the Pareto
frontier of (bits used, summed drop) — which is exact and far smaller than the grid; past
``max_states`` frontier points it warns and falls back to greedy. ``"greedy"``: per layer the lower
convex hull of its (bits, drop) options; upgrades in order of drop saved per bit while they fit,
then single-layer swaps that still fit. Both methods also try every *uniform* plan (one label on
every layer) that fits and return the best predicted plan, so, in predicted loss,
knapsack ≤ greedy ≤ any uniform plan that fits. Keeping the first or last layer wider is one of the
choices; no layer is special-cased. Ties are broken towards spending the budget: a layer moves to a
wider candidate whose drop is no larger and whose weight error (‖q(w) − w‖²/‖w‖²) is no larger while
the budget allows — a small evaluation set often scores several widths of a layer exactly alike.
Drops below zero (the metric improved) are taken at face value: with a noisy metric such as
accuracy on a few hundred samples, scan with a smooth one (``"kl"``, ``"sqnr"``) and verify with
the accuracy (below).

**Verification.** With ``model=`` and ``metric=``, `allocate` measures the ``verify`` best plans of
the DP frontier, the greedy plan and every uniform plan that fits, and returns the best *measured*
one. The returned plan is then at least as good, by that metric, as every uniform plan (one
candidate label on every allocated layer) within the budget — which the proxy alone cannot promise.
It costs one metric evaluation per plan measured (``Plan.checked``).

>>> import torch, lowbit as lb
>>> from lowbit.quant.sensitivity import sensitivity_scan
>>> torch.manual_seed(0) and None
>>> model = torch.nn.Sequential(torch.nn.Linear(16, 16), torch.nn.ReLU(), torch.nn.Linear(16, 4))
>>> x = torch.randn(128, 16)
>>> report = sensitivity_scan(model, ["posit4_es1", "posit6_es1", "posit8_es1"], "sqnr", data=x)
>>> plan = allocate(report, avg_bits=6)
>>> plan.total_bits <= plan.budget_bits == 6 * (16 * 16 + 16 * 4)
True
>>> plan.predicted >= uniform_plan(report, "posit6_es1").predicted     # SQNR in dB
True
>>> _ = lb.quantize_(model, plan.to_config())
>>> sorted(map(str, lb.tensor_formats(model).values())) == sorted(plan.formats.values())
True
"""

from __future__ import annotations

import dataclasses
import json
import math
import numbers
import warnings
from fractions import Fraction
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
from torch import nn

from lowbit.errors import LowbitWarning
from lowbit.quant.config import as_config, pattern_matches
from lowbit.quant.sensitivity import (
    FULL,
    SensitivityEntry,
    SensitivityReport,
    _check_float_model,
    _Evaluator,
    layer_pattern,
    predict_value,
)

__all__ = ["METHODS", "PlanLayer", "Plan", "allocate", "uniform_plan", "pareto_front"]

#: Allocation methods.
METHODS = ("knapsack", "greedy")


# ------------------------------------------------------------------ the plan
@dataclasses.dataclass(frozen=True)
class PlanLayer:
    """One layer of a plan: its chosen candidate (label, ``weight`` config value), size and drop.

    ``source``: ``"allocated"`` (chosen by the allocator), ``"keep_full"`` (kept in full precision
    on request) or ``"unscanned"`` (not in the scan: full precision, counted in the budget).
    """

    name: str
    label: str
    weight: "str | dict[str, Any] | None"
    numel: int
    storage_bits: int
    drop: float
    types: "tuple[str, ...]" = ()
    source: str = "allocated"

    @property
    def bits(self) -> float:
        """Bits per weight."""
        return self.storage_bits / self.numel if self.numel else 0.0

    def to_dict(self) -> "dict[str, Any]":
        return {"name": self.name, "label": self.label, "weight": self.weight, "numel": self.numel,
                "storage_bits": self.storage_bits, "drop": self.drop, "types": list(self.types),
                "source": self.source}

    @classmethod
    def from_dict(cls, d: "Mapping[str, Any]") -> "PlanLayer":
        return cls(str(d["name"]), str(d["label"]), d["weight"], int(d["numel"]), int(d["storage_bits"]),
                   float(d["drop"]), tuple(d.get("types", ())), str(d.get("source", "allocated")))


def _matches(pattern: str, layer: PlanLayer) -> bool:
    return pattern_matches(pattern, layer.name, layer.types)  # the rule of quantize_


@dataclasses.dataclass(frozen=True)
class Plan:
    """A per-layer weight-format plan with its size and predicted (and maybe measured) metric.

    ``predicted`` comes from the summed drops (module docstring); ``measured`` is set when the
    allocator measured the plan (``model=``/``metric=``); ``checked``: how many plans it measured.
    ``budget_bits``: the budget the plan was allocated under (None for a uniform reference plan).
    """

    layers: "tuple[PlanLayer, ...]"
    kind: str
    metric: str
    higher_is_better: bool
    baseline: float
    budget_bits: "int | None" = None
    method: str = ""
    measured: "float | None" = None
    checked: int = 0

    # -------------------------------------------------------------- facts
    @property
    def formats(self) -> "dict[str, str]":
        """``{layer name: candidate label}`` (``"full"`` = full precision)."""
        return {layer.name: layer.label for layer in self.layers}

    @property
    def total_bits(self) -> int:
        return sum(layer.storage_bits for layer in self.layers)

    @property
    def total_bytes(self) -> float:
        return self.total_bits / 8

    @property
    def numel(self) -> int:
        return sum(layer.numel for layer in self.layers)

    @property
    def avg_bits(self) -> float:
        """Average bits per counted weight."""
        return self.total_bits / self.numel if self.numel else 0.0

    @property
    def total_drop(self) -> float:
        return math.fsum(layer.drop for layer in self.layers)

    @property
    def predicted(self) -> float:
        """The metric predicted from the summed drops."""
        return predict_value(self.kind, self.baseline, self.total_drop)

    # -------------------------------------------------------------- config
    def to_config(self, base: Any = None) -> "dict[str, Any]":
        """A `lowbit.quantize_` config dict: ``{"layers": {escaped name: {"weight": spec}}}``.

        Every plan layer gets an entry (full-precision ones ``{"weight": None}``), its name escaped
        for fnmatch (`layer_pattern`). ``base``: a config (dict, QuantConfig or spec) whose other
        roles (inputs, outputs, accumulation …) and other layers are kept: each plan layer's
        entry starts from the roles ``base`` gives that layer and replaces the weight. A plan layer
        that ``base`` excludes but the plan quantizes is an error.

        >>> layer = PlanLayer("fc", "posit5_es1", "posit5_es1", 10, 50, 0.0, ("Linear",))
        >>> Plan((layer,), "metric", "acc", True, 1.0).to_config()
        {'layers': {'fc': {'weight': 'posit5_es1'}}}
        >>> Plan((layer,), "metric", "acc", True, 1.0).to_config({"input": "e4m3fn"})["layers"]["fc"]["input"]["format"]
        'e4m3fn'
        """
        if base is None:
            out: dict[str, Any] = {}
            entries = {}
            for layer in self.layers:
                if layer.name == "":
                    out["weight"] = layer.weight
                else:
                    entries[layer_pattern(layer.name)] = {"weight": layer.weight}
            if entries:
                out["layers"] = entries
            return out
        cfg = as_config(base)
        clash = [layer.name for layer in self.layers
                 if layer.weight is not None and any(_matches(p, layer) for p in cfg.exclude)]
        if clash:
            raise ValueError(f"base excludes layer(s) {', '.join(map(repr, clash))} that the plan quantizes; "
                             "allocate with keep_full= for them or drop them from base['exclude']")
        d = cfg.to_dict()
        ours: dict[str, Any] = {}
        for layer in self.layers:
            effective = cfg.default
            for pattern, override in cfg.layers:
                if _matches(pattern, layer):
                    effective = override
            entry = effective.to_dict()
            entry["weight"] = layer.weight
            if layer.name == "":
                d.update(entry)
            else:
                ours[layer_pattern(layer.name)] = entry
        pairs = [(p, lc.to_dict()) for p, lc in cfg.layers if p not in ours] + list(ours.items())
        unique = len({p for p, _ in pairs}) == len(pairs)
        d["layers"] = dict(pairs) if unique else [[p, e] for p, e in pairs]
        return d

    # -------------------------------------------------------------- JSON, display
    def to_dict(self) -> "dict[str, Any]":
        return {"layers": [layer.to_dict() for layer in self.layers], "kind": self.kind, "metric": self.metric,
                "higher_is_better": self.higher_is_better, "baseline": self.baseline,
                "budget_bits": self.budget_bits, "method": self.method, "measured": self.measured,
                "checked": self.checked, "predicted": self.predicted, "total_bits": self.total_bits,
                "avg_bits": self.avg_bits}

    @classmethod
    def from_dict(cls, d: "Mapping[str, Any]") -> "Plan":
        """From `to_dict` (derived fields such as ``predicted`` are recomputed, not read)."""
        budget = d.get("budget_bits")
        measured = d.get("measured")
        return cls(tuple(PlanLayer.from_dict(x) for x in d["layers"]), str(d["kind"]), str(d["metric"]),
                   bool(d["higher_is_better"]), float(d["baseline"]), None if budget is None else int(budget),
                   str(d.get("method", "")), None if measured is None else float(measured), int(d.get("checked", 0)))

    def to_json(self, **kwargs: Any) -> str:
        return json.dumps(self.to_dict(), **kwargs)

    @classmethod
    def from_json(cls, text: str) -> "Plan":
        return cls.from_dict(json.loads(text))

    def row(self) -> "dict[str, Any]":
        """A flat, JSON-able summary (for results tables)."""
        return {"method": self.method, "avg_bits": self.avg_bits, "total_bytes": self.total_bytes,
                "total_bits": self.total_bits, "budget_bits": self.budget_bits, "predicted": self.predicted,
                "measured": self.measured, "formats": self.formats}

    def __str__(self) -> str:
        head = (f"plan ({self.method}): {self.total_bytes:g} bytes, {self.avg_bits:.4g} bits/weight; "
                f"{self.metric} predicted {self.predicted:.6g}"
                + ("" if self.measured is None else f", measured {self.measured:.6g}"))
        lines = [head, f"{'layer':<20} {'format':<28} {'bits':>6} {'drop':>11}"]
        lines += [f"{x.name:<20} {x.label:<28} {x.bits:>6.3g} {x.drop:>11.4g}" for x in self.layers]
        return "\n".join(lines)


# ------------------------------------------------------------------ the problem
@dataclasses.dataclass
class _Problem:
    report: SensitivityReport
    free: "list[str]"                              # layers the allocator chooses for
    options: "list[list[SensitivityEntry]]"        # their candidates
    fixed: "dict[str, PlanLayer]"                  # keep_full / unscanned layers
    budget: "int | None"                           # bits

    @property
    def fixed_bits(self) -> int:
        return sum(x.storage_bits for x in self.fixed.values())

    @property
    def numel(self) -> int:
        return sum(x.numel for x in self.fixed.values()) + sum(opts[0].numel for opts in self.options)

    def cost(self, choice: "Sequence[int]") -> int:
        return self.fixed_bits + sum(self.options[i][c].storage_bits for i, c in enumerate(choice))

    def loss(self, choice: "Sequence[int]") -> float:
        return math.fsum(self.options[i][c].drop for i, c in enumerate(choice))

    def key(self, choice: "Sequence[int]") -> "tuple[float, int]":
        # best predicted first; among equals the plan that uses more of the budget
        return (self.loss(choice), -self.cost(choice))

    def min_bits(self) -> int:
        return self.fixed_bits + sum(min(e.storage_bits for e in opts) for opts in self.options)

    def uniform(self) -> "dict[str, tuple[int, ...]]":
        """``{label: choice}`` for every label that every free layer has."""
        if not self.options:
            return {}
        labels = [e.label for e in self.options[0]]
        out = {}
        for label in labels:
            idx = [next((j for j, e in enumerate(opts) if e.label == label), None) for opts in self.options]
            if all(j is not None for j in idx):
                out[label] = tuple(int(j) for j in idx)  # type: ignore[arg-type]
        return out

    def plan(self, choice: "Sequence[int]", method: str, measured: "float | None" = None, checked: int = 0) -> Plan:
        chosen = {}
        for i, c in enumerate(choice):
            e = self.options[i][c]
            info = self.report.layer(e.layer)
            chosen[e.layer] = PlanLayer(e.layer, e.label, e.weight, e.numel, e.storage_bits, e.drop, info.types)
        layers = tuple(chosen.get(info.name) or self.fixed[info.name] for info in self.report.layers
                       if info.name in chosen or info.name in self.fixed)
        r = self.report
        return Plan(layers, r.kind, r.metric, r.higher_is_better, r.baseline, self.budget, method, measured, checked)


def _patterns(value: Any, where: str) -> "tuple[str, ...]":
    if isinstance(value, str):
        return (value,)
    if not isinstance(value, Iterable) or not all(isinstance(p, str) for p in value):
        raise TypeError(f"{where} must be a list of layer names or fnmatch patterns")
    return tuple(value)


def _number(value: Any, where: str) -> Fraction:
    """An exact positive number (a float is taken at its exact binary value)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{where} must be a number, got {type(value).__name__}")
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{where}={value!r}; allowed: a finite number > 0")
    return Fraction(value) if isinstance(value, numbers.Rational) else Fraction(float(value))


def _problem(report: SensitivityReport, budget_bytes: Any, avg_bits: Any, keep_full: Any,
             count_unscanned: bool, need_budget: bool = True) -> _Problem:
    if not isinstance(report, SensitivityReport):
        raise TypeError(f"report must be a SensitivityReport (from sensitivity_scan), got {type(report).__name__}")
    keep = _patterns(keep_full, "keep_full")
    names = [info.name for info in report.layers]
    for p in keep:
        if not any(pattern_matches(p, info.name, info.types) for info in report.layers):
            raise ValueError(f"keep_full: {p!r} matches no layer of the report; layers: {', '.join(names)}")
    fixed: dict[str, PlanLayer] = {}
    free, options = [], []
    for info in report.layers:
        kept = any(pattern_matches(p, info.name, info.types) for p in keep)
        entries = report.candidates(info.name)
        if kept or (not entries and count_unscanned):
            fixed[info.name] = PlanLayer(info.name, FULL, None, info.numel, info.full_storage_bits, 0.0, info.types,
                                         "keep_full" if kept else "unscanned")
        elif entries:
            for e in entries:
                if math.isnan(e.drop) or e.drop == -math.inf:
                    raise ValueError(f"report entry ({e.layer!r}, {e.label!r}) has drop {e.drop}; allowed: a number "
                                     "or +inf")
            free.append(info.name)
            options.append(entries)
    problem = _Problem(report, free, options, fixed, None)
    if (budget_bytes is None) == (avg_bits is None):
        if need_budget or budget_bytes is not None:
            raise ValueError("give exactly one of budget_bytes= (total weight bytes) or avg_bits= (bits per weight)")
        return problem
    if budget_bytes is not None:
        problem.budget = math.floor(_number(budget_bytes, "budget_bytes") * 8)
    else:
        problem.budget = math.floor(_number(avg_bits, "avg_bits") * problem.numel)
    need = problem.min_bits()
    if problem.budget < need:
        n = max(problem.numel, 1)
        raise ValueError(
            f"budget of {problem.budget} bits ({problem.budget / 8:g} bytes, {problem.budget / n:.4g} bits/weight) is "
            f"below the cheapest plan: the minimum achievable budget is {need / 8:g} bytes "
            f"({need / n:.4g} bits/weight, every layer at its cheapest candidate"
            + (", keep_full and unscanned layers at full precision)" if problem.fixed else ")"))
    return problem


# ------------------------------------------------------------------ solvers
def _pareto(costs: "Sequence[int]", losses: "Sequence[float]") -> "list[int]":
    """Indices of the non-dominated options, by increasing cost (and strictly decreasing loss)."""
    out: list[int] = []
    for j in sorted(range(len(costs)), key=lambda j: (costs[j], losses[j], j)):
        if not out or losses[j] < losses[out[-1]]:
            out.append(j)
    return out


def _knapsack(problem: _Problem, max_states: int, top: int = 1) -> "list[tuple[int, ...]] | None":
    """Exact DP: the ``top`` best plans of the final frontier, best first (None: over max_states).

    The frontier is sorted by cost with strictly falling summed drop, so its best plans are its
    last points; each is the optimum for its own cost.
    """
    assert problem.budget is not None
    # costs are shifted so that every layer's cheapest option costs 0: a partial plan fits if and
    # only if its shifted cost is <= the shifted capacity (later layers add >= 0)
    lows = [min(e.storage_bits for e in opts) for opts in problem.options]
    capacity = problem.budget - problem.fixed_bits - sum(lows)
    cost = np.zeros(1, dtype=np.int64)
    loss = np.zeros(1, dtype=np.float64)
    back: list[tuple[np.ndarray, np.ndarray]] = []
    keeps: list[list[int]] = []
    for opts, low in zip(problem.options, lows):
        c = [e.storage_bits for e in opts]
        keep = _pareto(c, [e.drop for e in opts])
        keeps.append(keep)
        oc = np.array([c[j] - low for j in keep], dtype=np.int64)
        ol = np.array([opts[j].drop for j in keep], dtype=np.float64)
        total = (cost[:, None] + oc[None, :]).ravel()
        summed = (loss[:, None] + ol[None, :]).ravel()
        parent = np.repeat(np.arange(cost.size), oc.size)
        option = np.tile(np.arange(oc.size), cost.size)
        fits = total <= capacity
        total, summed, parent, option = total[fits], summed[fits], parent[fits], option[fits]
        order = np.lexsort((summed, total))
        total, summed, parent, option = total[order], summed[order], parent[order], option[order]
        before = np.minimum.accumulate(np.concatenate(([np.inf], summed[:-1])))
        keep_mask = summed < before
        keep_mask[0] = True
        cost, loss = total[keep_mask], summed[keep_mask]
        back.append((parent[keep_mask], option[keep_mask]))
        if cost.size > max_states:
            return None
    plans = []
    for idx in range(cost.size - 1, max(cost.size - 1 - top, -1), -1):
        choice: list[int] = []
        i = idx
        for (parent, option), keep in zip(reversed(back), reversed(keeps)):
            choice.append(keep[int(option[i])])
            i = int(parent[i])
        plans.append(tuple(reversed(choice)))
    return plans


def _greedy(problem: _Problem) -> "tuple[int, ...]":
    """Convex-hull greedy, then single-layer improving swaps that fit."""
    assert problem.budget is not None
    hulls = []
    for opts in problem.options:
        c = [e.storage_bits for e in opts]
        d = [e.drop for e in opts]
        hull: list[int] = []
        for j in _pareto(c, d):
            while len(hull) >= 2:
                a, b = hull[-2], hull[-1]
                # b is not on the lower convex hull if the slope a→b is not steeper than b→j
                if (d[b] - d[a]) * (c[j] - c[b]) >= (d[j] - d[b]) * (c[b] - c[a]):
                    hull.pop()
                else:
                    break
            hull.append(j)
        hulls.append(hull)
    current = [h[0] for h in hulls]
    remaining = problem.budget - problem.cost(current)
    segments = []
    for i, h in enumerate(hulls):
        opts = problem.options[i]
        for k in range(1, len(h)):
            saved = opts[h[k - 1]].drop - opts[h[k]].drop
            dc = opts[h[k]].storage_bits - opts[h[k - 1]].storage_bits
            segments.append((-(saved / dc), i, k))
    segments.sort()
    stuck: set[int] = set()
    for _, i, k in segments:
        h, opts = hulls[i], problem.options[i]
        if i in stuck or current[i] != h[k - 1]:
            continue
        dc = opts[h[k]].storage_bits - opts[h[k - 1]].storage_bits
        if dc <= remaining:
            current[i], remaining = h[k], remaining - dc
        else:
            stuck.add(i)
    while True:  # swaps: every one lowers the summed drop, so this ends
        best = None
        for i, opts in enumerate(problem.options):
            cur = opts[current[i]]
            for j, e in enumerate(opts):
                dc = e.storage_bits - cur.storage_bits
                if dc <= remaining and e.drop < cur.drop:
                    gain = (cur.drop - e.drop, -dc)
                    if best is None or gain > best[0]:
                        best = (gain, i, j, dc)
        if best is None:
            break
        _, i, j, dc = best
        current[i], remaining = j, remaining - dc
    return tuple(current)


def _fill(problem: _Problem, choice: "tuple[int, ...]") -> "tuple[int, ...]":
    """Spend the budget left over on ties: move layers to wider candidates whose drop is not larger.

    The summed drop cannot tell such plans apart (a small evaluation set often gives many layers a
    drop of exactly 0 at several widths); the move must also not increase the layer's weight error
    (when known), and the one saving most squared weight error per extra bit goes first.
    """
    assert problem.budget is not None
    current = list(choice)
    remaining = problem.budget - problem.cost(current)
    while True:
        best = None
        for i, opts in enumerate(problem.options):
            cur = opts[current[i]]
            for j, e in enumerate(opts):
                dc = e.storage_bits - cur.storage_bits
                if not (0 < dc <= remaining and e.drop <= cur.drop) or e.weight_error > cur.weight_error:
                    continue
                saved = (cur.weight_error - e.weight_error) * e.numel
                score = (cur.drop - e.drop, saved / dc if math.isfinite(saved) else 0.0, dc)
                if best is None or score > best[0]:
                    best = (score, i, j, dc)
        if best is None:
            return tuple(current)
        _, i, j, dc = best
        current[i], remaining = j, remaining - dc


def _best(problem: _Problem, choices: "Iterable[tuple[int, ...]]") -> "tuple[int, ...]":
    return min(choices, key=problem.key)


# ------------------------------------------------------------------ allocate
def allocate(report: SensitivityReport, budget_bytes: "float | None" = None, avg_bits: "float | None" = None, *,
             keep_full: "Sequence[str]" = (), count_unscanned: bool = True, method: str = "knapsack",
             model: "nn.Module | None" = None, metric: Any = None, data: Any = None, verify: int = 8,
             max_states: int = 100_000) -> Plan:
    """Choose one scanned candidate per layer: best predicted metric within the budget.

    ``budget_bytes`` (total weight bytes) or ``avg_bits`` (bits per counted weight): exactly one.
    ``keep_full``: names or fnmatch patterns of layers kept in full precision (counted at their
    dtype's size). ``count_unscanned``: count quantizable layers the scan skipped at full size
    (True) or leave them out of the budget and the plan (False: the plan's config does not
    mention them). ``method``: ``"knapsack"`` (exact) or ``"greedy"``. ``model`` + ``metric``
    (+ ``data`` for ``"sqnr"``/``"kl"``): measure the ``verify`` best DP plans, the greedy plan and
    every uniform plan that fits, and return the best measured (module docstring).

    Raises ValueError naming the minimum achievable budget when the budget is below it.

    >>> from lowbit.quant.sensitivity import LayerInfo, SensitivityEntry, SensitivityReport
    >>> layers = (LayerInfo("a", ("Linear",), (10,), 32, True), LayerInfo("b", ("Linear",), (30,), 32, True))
    >>> entries = tuple(SensitivityEntry(n, f"int{b}", f"int{b}", 0.9, d, k, k * b, 0.0)
    ...                 for n, k, opts in [("a", 10, [(4, 0.30), (8, 0.0)]), ("b", 30, [(4, 0.02), (8, 0.0)])]
    ...                 for b, d in opts)
    >>> report = SensitivityReport("metric", "acc", True, 0.9, layers, entries)
    >>> allocate(report, avg_bits=5).formats     # the small, sensitive layer gets 8 bits
    {'a': 'int8', 'b': 'int4'}
    >>> allocate(report, avg_bits=3)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ValueError: budget of 120 bits (15 bytes, 3 bits/weight) is below the cheapest plan: the minimum achievable ...
    """
    if method not in METHODS:
        raise ValueError(f"method={method!r}; allowed: {', '.join(repr(m) for m in METHODS)}")
    if isinstance(verify, bool) or not isinstance(verify, int) or verify < 0:
        raise ValueError(f"verify={verify!r}; allowed: an int >= 0 (plans of the DP frontier to measure)")
    if isinstance(max_states, bool) or not isinstance(max_states, int) or max_states < 1:
        raise ValueError(f"max_states={max_states!r}; allowed: an int >= 1")
    if (model is None) != (metric is None):
        raise ValueError("verification needs both model= and metric= (or neither)")
    problem = _problem(report, budget_bytes, avg_bits, keep_full, count_unscanned)
    assert problem.budget is not None
    fitting = [c for c in problem.uniform().values() if problem.cost(c) <= problem.budget]
    # each result is the best of its candidates (so knapsack <= greedy <= uniform in predicted loss,
    # exactly, whatever the floating-point summation order inside the solvers), then tie-filled
    greedy = _fill(problem, _best(problem, [_greedy(problem)] + fitting))
    frontier: "list[tuple[int, ...]]" = []
    used, best = method, greedy
    if method == "knapsack":
        found = _knapsack(problem, max_states, max(1, verify if model is not None else 1))
        if found is None:
            warnings.warn(f"allocate: the knapsack frontier passed max_states={max_states}; used the greedy method "
                          "(raise max_states for the exact optimum)", LowbitWarning, stacklevel=2)
            used = "greedy (knapsack fallback)"
        else:
            frontier = found
            best = _fill(problem, _best(problem, frontier[:1] + [greedy] + fitting))
    if model is None:
        return problem.plan(best, used)
    _check_float_model(model)
    evaluator = _Evaluator(model, metric, data)
    tried: list[tuple[int, ...]] = []
    for c in [best] + [_fill(problem, c) for c in frontier[:verify]] + [greedy] + fitting:
        if c not in tried:
            tried.append(c)
    sign = -1.0 if evaluator.higher_is_better else 1.0
    scored = []
    for c in tried:
        value = evaluator.measure(problem.plan(c, used).to_config())[0]
        scored.append(((sign * value,) + problem.key(c), c, value))
    _, choice, value = min(scored, key=lambda s: s[0])
    return problem.plan(choice, f"{used}, verified", value, len(tried))


def uniform_plan(report: SensitivityReport, label: str, *, keep_full: "Sequence[str]" = (),
                 count_unscanned: bool = True) -> Plan:
    """The plan with candidate ``label`` on every scanned layer (a reference point for `allocate`).

    >>> from lowbit.quant.sensitivity import LayerInfo, SensitivityEntry, SensitivityReport
    >>> r = SensitivityReport("kl", "kl", False, 0.0, (LayerInfo("a", ("Linear",), (4,), 32, True),),
    ...                       (SensitivityEntry("a", "int8", "int8", 0.1, 0.1, 4, 32, 0.0),))
    >>> p = uniform_plan(r, "int8"); p.formats, p.avg_bits, p.predicted
    ({'a': 'int8'}, 8.0, 0.1)
    """
    problem = _problem(report, None, None, keep_full, count_unscanned, need_budget=False)
    uniform = problem.uniform()
    if label not in uniform:
        raise ValueError(f"label {label!r} is not a candidate of every allocated layer; uniform labels: "
                         f"{', '.join(uniform) or 'none'}")
    return problem.plan(uniform[label], "uniform")


# ------------------------------------------------------------------ Pareto front
def _default_budgets(problem: _Problem) -> "list[Fraction]":
    """The cheapest plan's bits per weight (exact), then every whole number up to the widest plan's."""
    n = max(problem.numel, 1)
    lo = Fraction(problem.min_bits(), n)
    hi = Fraction(problem.fixed_bits + sum(max(e.storage_bits for e in opts) for opts in problem.options), n)
    return [lo] + [Fraction(b) for b in range(math.floor(lo) + 1, math.floor(hi) + 1)]


def pareto_front(source: "SensitivityReport | Sequence[Plan]", model: nn.Module, metric: Any, *, data: Any = None,
                 avg_bits: "Sequence[float] | None" = None, uniform: "bool | Sequence[str] | None" = None,
                 keep_full: "Sequence[str]" = (), count_unscanned: bool = True, method: str = "knapsack",
                 verify: int = 0) -> "list[dict[str, Any]]":
    """Predicted and measured metric vs size for a sweep of budgets, with uniform formats and full precision.

    ``source``: a `SensitivityReport` (plans are allocated for each of ``avg_bits``; default: every
    whole number of bits per weight from the cheapest plan's to the widest) or a list of `Plan`s.
    Each plan is applied with `quantize_` and measured with ``metric`` (a callable, or
    ``"sqnr"``/``"kl"`` with ``data``); the model is restored. ``uniform``: labels of uniform plans
    to add (default, for a report: every label that all layers have; False: none). ``verify`` is
    passed to `allocate` (0: the proxy's plan, so predicted and measured can be compared).

    Returns rows sorted by size: ``kind`` (``"plan"``, ``"uniform"``, ``"full"``), ``name``,
    ``budget_avg_bits``, ``avg_bits``, ``total_bytes``, ``predicted`` (in the scan's metric,
    ``predicted_metric``), ``measured`` (in ``metric``, ``measured_metric``), ``pareto`` (True when
    no other row is at most as large and measures at least as well, one of them strictly),
    ``formats`` and ``method``.

    >>> import torch
    >>> from lowbit.quant.sensitivity import sensitivity_scan
    >>> torch.manual_seed(0) and None
    >>> model = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.ReLU(), torch.nn.Linear(8, 4))
    >>> x = torch.randn(32, 8)
    >>> report = sensitivity_scan(model, ["posit4_es1", "posit8_es1"], "sqnr", data=x)
    >>> rows = pareto_front(report, model, "sqnr", data=x)
    >>> [(r["name"], round(r["avg_bits"], 2)) for r in rows]  # doctest: +NORMALIZE_WHITESPACE
    [('posit4_es1', 4.0), ('plan@4', 4.0), ('plan@5', 4.0), ('plan@6', 5.33), ('plan@7', 5.33),
     ('posit8_es1', 8.0), ('plan@8', 8.0), ('full', 32.0)]
    >>> all(r["measured"] <= later["measured"] for r, later in zip(rows, rows[1:]))  # SQNR grows with size
    True
    """
    _check_float_model(model)
    evaluator = _Evaluator(model, metric, data)
    items: list[tuple[str, str, "float | None", Plan]] = []
    if isinstance(source, SensitivityReport):
        problem = _problem(source, None, None, keep_full, count_unscanned, need_budget=False)
        budgets = list(avg_bits) if avg_bits is not None else _default_budgets(problem)
        for b in budgets:
            plan = allocate(source, avg_bits=b, keep_full=keep_full, count_unscanned=count_unscanned, method=method,
                            model=model if verify else None, metric=metric if verify else None,
                            data=data if verify else None, verify=verify)
            items.append(("plan", f"plan@{float(b):.4g}", float(b), plan))
        labels = list(problem.uniform()) if uniform is None or uniform is True else list(uniform or [])
        for label in labels:
            items.append(("uniform", label, None, uniform_plan(source, label, keep_full=keep_full,
                                                             count_unscanned=count_unscanned)))
        full_bits = problem.fixed_bits + sum(source.layer(n).full_storage_bits for n in problem.free)
        full_numel = problem.numel
    else:
        plans = list(source)
        if not plans or not all(isinstance(p, Plan) for p in plans):
            raise TypeError("source must be a SensitivityReport or a non-empty list of Plans")
        if uniform not in (None, False) and list(uniform or []):  # type: ignore[arg-type]
            raise ValueError("uniform= needs a SensitivityReport source; add uniform plans (uniform_plan) to the list")
        for k, plan in enumerate(plans):
            items.append(("plan", f"plan{k}", plan.budget_bits / plan.numel if plan.budget_bits else None, plan))
        full_bits = full_numel = 0
    rows: list[dict[str, Any]] = []
    for kind, name, budget, plan in items:
        # a plan verified above was measured with this very metric; others are measured here
        reuse = kind == "plan" and verify > 0 and isinstance(source, SensitivityReport) and plan.measured is not None
        measured = plan.measured if reuse else evaluator.measure(plan.to_config())[0]
        rows.append({"kind": kind, "name": name, "budget_avg_bits": budget, "avg_bits": plan.avg_bits,
                     "total_bytes": plan.total_bytes, "predicted": plan.predicted, "predicted_metric": plan.metric,
                     "measured": measured, "measured_metric": evaluator.name, "formats": plan.formats,
                     "method": plan.method})
    if full_numel:
        assert isinstance(source, SensitivityReport)
        rows.append({"kind": "full", "name": FULL, "budget_avg_bits": None, "avg_bits": full_bits / full_numel,
                     "total_bytes": full_bits / 8, "predicted": source.baseline, "predicted_metric": source.metric,
                     "measured": evaluator.baseline, "measured_metric": evaluator.name, "formats": {},
                     "method": ""})
    sign = 1.0 if evaluator.higher_is_better else -1.0
    for row in rows:
        better = [o for o in rows if o is not row and o["total_bytes"] <= row["total_bytes"]
                  and sign * o["measured"] >= sign * row["measured"]
                  and (o["total_bytes"] < row["total_bytes"] or sign * o["measured"] > sign * row["measured"])]
        row["pareto"] = not better
    rows.sort(key=lambda r: (r["total_bytes"], ("full", "uniform", "plan").index(r["kind"]), r["name"]))
    return rows
