"""Post-training calibration of a config: fill every ``scaling="static"`` role with an observed range.

The usual PTQ flow — weights with per-channel scales from the weights themselves, activations
with one range per tensor fixed on calibration data — in three lines::

    cfg = {"weight": {"format": "int8", "scaling": "absmax", "granularity": "channel"},
           "input":  {"format": "int8", "scaling": "static"}}
    cfg = lb.calibrate_config(model, cfg, calibration_batches, observer="kl")
    lb.quantize_(model, cfg)           # activations now use the calibrated, fixed ranges

`calibrate_config` resolves ``config`` against ``model`` exactly as `quantize_` would, runs the
data through the model as it is (eval mode, no grad; simulated layers are observed *before*
they quantize their input), feeds one observer per layer and static role, and returns a new
`QuantConfig` with one exact-name ``layers`` entry per calibrated layer whose static roles carry
``range = (lo, hi)``. The result is plain data: it round-trips through JSON and `lowbit save`.

Observers by name (`OBSERVERS`), each built for the role's format:
``"minmax"`` (default), ``"ema"``, ``"percentile"`` (99.99 %), ``"mse"`` (least squared error
for the role's format), ``"kl"`` (TensorRT entropy rule; ``quant_bins`` = the integer format's
magnitudes, 128 otherwise), ``"log2"`` (posit-GAN rule). Or a callable ``fmt -> Observer``.

>>> import torch, lowbit as lb
>>> model = torch.nn.Sequential(torch.nn.Linear(2, 2))
>>> cfg = calibrate_config(model, {"input": {"format": "int8", "scaling": "static"}},
...                        [torch.tensor([[0.5, -3.0]]), torch.tensor([[2.0, 1.0]])])
>>> cfg.layers[0][0], cfg.layers[0][1].input.range
('0', (-3.0, 2.0))
"""

from __future__ import annotations

import dataclasses
import glob
import math
from typing import Any, Callable, Iterable, Mapping

import torch
from torch import nn

from lowbit.formats import IntegerFormat, NumberFormat
from lowbit.quant.calibration import Calibration, check_max_batches, run_calibration
from lowbit.quant.config import STATIC_ROLES, LayerConfig, QuantConfig, as_config
from lowbit.quant.observers import (
    OBSERVERS,
    CalibrationError,
    EMAMinMaxObserver,
    KLObserver,
    Log2HistogramObserver,
    MinMaxObserver,
    MSEObserver,
    Observer,
    PercentileObserver,
)
from lowbit.quant.quantize import resolve_layers
from lowbit.simulate.layers import INAPPLICABLE_ROLES
from lowbit.simulate.registry import layer_types

__all__ = ["calibrate_config", "observer_for", "AffineRangeObserver"]


class AffineRangeObserver(Observer):
    """A symmetric rule made fit for an asymmetric (zero-point) range: the inner observer's (−t, t),
    with the low end raised to 0 when nothing negative was observed.

    `calibrate_config` uses it for the ``mse`` and ``kl`` rules of unsigned integer roles (which
    the static rule quantizes with a zero point, so negative inputs stay representable): the
    error / divergence is measured for the signed grid of the same width, and post-ReLU inputs
    keep their whole code range for [0, t].

    >>> obs = AffineRangeObserver(MinMaxObserver())
    >>> obs.observe(torch.tensor([0.0, 2.0])); [float(v) for v in obs.range()]
    [0.0, 2.0]
    """

    def __init__(self, inner: Observer) -> None:
        self.inner = inner
        super().__init__()

    def reset(self) -> None:  # noqa: D102
        self._count = 0
        self._min = math.inf
        self.inner.reset()

    def _observe(self, x: torch.Tensor) -> None:
        self.inner.observe(x)
        finite = x[torch.isfinite(x)]
        self._min = min(self._min, float(finite.min()))

    def _range(self) -> "tuple[torch.Tensor, torch.Tensor]":
        lo, hi = self.inner.range()
        if self._min >= 0:
            lo = torch.zeros_like(lo)
        return lo, hi

    def _params(self) -> str:
        return f"{self.inner!r}, "


def observer_for(name: str, fmt: NumberFormat) -> Observer:
    """A fresh observer of kind ``name`` (a key of `OBSERVERS`) set up for format ``fmt``.

    For unsigned integer formats (quantized with a zero point by ``scaling="static"``) the
    symmetric ``mse`` and ``kl`` rules run on the signed grid of the same width inside an
    `AffineRangeObserver`.

    >>> from lowbit.formats import parse_format
    >>> observer_for("mse", parse_format("int4")).format
    parse_format('int4')
    """
    if name == "minmax":
        return MinMaxObserver()
    if name == "ema":
        return EMAMinMaxObserver()
    if name == "percentile":
        return PercentileObserver()
    if isinstance(fmt, IntegerFormat) and not fmt.signed and name in ("mse", "kl"):
        return AffineRangeObserver(observer_for(name, IntegerFormat(fmt.word_bits, signed=True)))
    if name == "mse":
        return MSEObserver(fmt)
    if name == "kl":
        levels = int(fmt.max) + 1 if isinstance(fmt, IntegerFormat) else 128
        return KLObserver(quant_bins=max(2, min(levels, 1024)))
    if name == "log2":
        return Log2HistogramObserver(fmt)
    raise ValueError(f"observer={name!r}; allowed: {', '.join(OBSERVERS)} or a callable fmt -> Observer")


def _factory(observer: Any) -> "Callable[[NumberFormat], Observer]":
    if isinstance(observer, str):
        if observer not in OBSERVERS:
            raise ValueError(f"observer={observer!r}; allowed: {', '.join(OBSERVERS)} or a callable fmt -> Observer")
        return lambda fmt: observer_for(observer, fmt)
    if callable(observer):
        def build(fmt: NumberFormat) -> Observer:
            obs = observer(fmt)
            if not isinstance(obs, Observer):
                raise TypeError(f"observer(fmt) returned {type(obs).__name__}, not a lowbit Observer")
            return obs
        return build
    raise TypeError(f"observer must be a name ({', '.join(OBSERVERS)}) or a callable fmt -> Observer, "
                    f"got {type(observer).__name__}")


def _static_roles(layer: LayerConfig) -> "dict[str, NumberFormat]":
    out = {}
    for role in STATIC_ROLES:
        rc = getattr(layer, role)
        if rc is not None and rc.scaling == "static":
            out[role] = rc.format
    return out


def calibrate_config(
    model: nn.Module,
    config: Any,
    data: "Iterable[Any]",
    observer: "str | Callable[[NumberFormat], Observer] | Mapping[str, Any]" = "minmax",
    *,
    max_batches: "int | None" = None,
    forward: "Callable[[nn.Module, Any], Any] | None" = None,
    recalibrate: bool = False,
) -> QuantConfig:
    """``config`` with a calibrated ``range`` in every ``scaling="static"`` role (module docstring).

    ``observer``: a name, a callable ``fmt -> Observer``, or ``{role: either}`` for different
    rules per role. ``data``: batches as in `lowbit.calibrate` (tensors, ``(x, y)`` tuples or
    keyword dicts; ``forward(model, batch)`` overrides); ``max_batches`` stops early. Roles that
    already carry a range keep it unless ``recalibrate``. The model is not changed (its training
    flag is restored). A static layer that never ran raises `CalibrationError` naming it. A static
    role that does not apply to its layer (an ``nn.Embedding``'s input is indices, which
    `quantize_` skips) is set to None for that layer in the result instead of being calibrated.
    """
    cfg = as_config(config)
    check_max_batches(max_batches)
    if isinstance(observer, Mapping):
        bad = set(observer) - set(STATIC_ROLES)
        if bad:
            raise ValueError(f"observer has unknown role(s) {sorted(bad)}; allowed: {', '.join(STATIC_ROLES)}")
        factories = {r: _factory(observer.get(r, "minmax")) for r in STATIC_ROLES}
    else:
        f = _factory(observer)
        factories = {r: f for r in STATIC_ROLES}
    resolved = resolve_layers(model, cfg)
    todo: dict[str, dict[str, NumberFormat]] = {}
    inapplicable: dict[str, tuple[str, ...]] = {}  # e.g. an Embedding's input (indices): no range, role dropped
    for name, (module, _, layer) in resolved.layers.items():
        skip = next((r for b, r in INAPPLICABLE_ROLES.items() if isinstance(module, b)), ())
        static = _static_roles(layer)
        if any(r in skip for r in static):
            inapplicable[name] = tuple(r for r in static if r in skip)
        roles = {r: fmt for r, fmt in static.items()
                 if r not in skip and (recalibrate or getattr(layer, r).range is None)}
        if roles:
            todo[name] = roles
    if not todo and not inapplicable:
        return cfg
    wanted = tuple(r for r in STATIC_ROLES if any(r in roles for roles in todo.values()))
    def layer_observer(name: str, role: str) -> "Observer | None":  # format-aware, only where needed
        fmt = todo[name].get(role)
        return None if fmt is None else factories[role](fmt)

    layers = list(cfg.layers)
    for name, roles in inapplicable.items():
        if name in todo:
            continue  # written below, with its calibrated roles
        layer = resolved.layers[name][2]
        layers.append((glob.escape(name), dataclasses.replace(layer, **{r: None for r in roles})))
    if not todo:
        return dataclasses.replace(cfg, layers=tuple(layers))
    # layers whose input is not a tensor to watch (an Embedding's indices) still have an output to calibrate
    outputs_only = tuple(c for c in layer_types(role="output") if c not in layer_types(role="input"))
    cal = Calibration(model, wanted, layers=layer_types(calibrated=True) + outputs_only, filter_fn=lambda n, m: n in todo,
                      layer_observer=layer_observer)
    run_calibration(model, cal, data, max_batches, forward)
    missing = [f"{n}.{r}" for n, roles in todo.items() for r in roles if r not in cal.ranges.get(n, {})]
    if missing:
        raise CalibrationError(f"calibration saw no finite data for {', '.join(missing[:10])}"
                               f"{' …' if len(missing) > 10 else ''}; feed batches that run through these layers")
    for name, roles in todo.items():
        layer = dataclasses.replace(resolved.layers[name][2], **{r: None for r in inapplicable.get(name, ())})
        updates = {}
        for role in roles:
            lo, hi = cal.ranges[name][role]
            updates[role] = dataclasses.replace(getattr(layer, role), range=(float(lo), float(hi)))
        layers.append((glob.escape(name), dataclasses.replace(layer, **updates)))
    return dataclasses.replace(cfg, layers=tuple(layers))
