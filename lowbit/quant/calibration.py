"""Calibration: run data through a model and record per-layer ranges with observers.

`calibration` is a context manager that attaches hooks to the model's Linear / Conv layers
(float or simulated by `lowbit.quantize_` — the simulated classes subclass the float ones, and a
forward pre-hook sees the input *before* the layer quantizes it), feeds one observer per layer
and role, and on exit removes the hooks and fixes the ranges::

    with calibration(model, roles=("input",)) as cal:
        for x in loader:
            model(x)
    cal.ranges            # {"features.0": {"input": (lo, hi)}, ...}

`calibrate` is the same as one call: it runs ``data`` through ``model`` in eval mode under
``torch.no_grad()`` and returns the ranges. Roles:

* ``"input"``: the layer's first positional argument (forward pre-hook);
* ``"output"``: the layer's output (forward hook);
* ``"weight"``: the layer's weight, observed once at exit (it does not depend on the data).

Ranges are ``(lo, hi)`` tensors as the observer returns them (0-d per tensor, `stat_shape`
per channel/group). Layers that never ran inside the block have no input/output ranges: they
are listed in ``cal.unseen`` with a `LowbitWarning`; if *no* layer ran, exiting the block raises
`CalibrationError` ("observer saw no data; run calibration first"). The module does not touch
`quantize_`'s internals: feeding the fixed ranges to role quantizers is the caller's step.

>>> import torch
>>> model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2))
>>> ranges = calibrate(model, [torch.ones(2, 3), -torch.ones(5, 3)], roles=("input",))
>>> [float(t) for t in ranges["0"]["input"]]
[-1.0, 1.0]
>>> sorted(ranges)
['0', '2']
"""

from __future__ import annotations

import warnings
from typing import Any, Callable, Iterable, Mapping

import torch
from torch import nn

from lowbit.errors import LowbitWarning
from lowbit.quant.observers import CalibrationError, MinMaxObserver, Observer
from lowbit.simulate.registry import layer_types

__all__ = ["CALIBRATION_ROLES", "CALIBRATED_LAYERS", "Calibration", "calibration", "calibrate", "call_model",
           "select_output"]

CALIBRATION_ROLES = ("input", "output", "weight")
#: layer types calibrated by default (simulated lowbit layers subclass these): the registry's
#: entries whose input and output are single tensors
CALIBRATED_LAYERS: "tuple[type[nn.Module], ...]" = layer_types(calibrated=True)

ObserverFactory = Callable[[], Observer]
#: ``(layer name, role) -> Observer``, or None to leave that role of that layer unobserved
LayerObserverFactory = Callable[[str, str], "Observer | None"]


def _check_roles(roles: "Iterable[str] | str") -> "tuple[str, ...]":
    if isinstance(roles, str):
        roles = (roles,)
    roles = tuple(roles)
    bad = [r for r in roles if r not in CALIBRATION_ROLES]
    if bad or not roles:
        raise ValueError(f"roles={roles!r}; allowed: a non-empty selection of {', '.join(CALIBRATION_ROLES)}")
    return roles


def _factories(observer: "ObserverFactory | Mapping[str, ObserverFactory]", roles: "tuple[str, ...]"
               ) -> "dict[str, ObserverFactory]":
    if isinstance(observer, Mapping):
        missing = [r for r in roles if r not in observer]
        if missing:
            raise ValueError(f"observer has no factory for role(s) {missing}; give one per role in {roles}")
        out = {r: observer[r] for r in roles}
    else:
        out = {r: observer for r in roles}
    for role, f in out.items():
        if not callable(f):
            raise TypeError(f"observer for role {role!r} must be a callable returning an Observer "
                            f"(e.g. MinMaxObserver or lambda: KLObserver()), got {type(f).__name__}")
    return out


class Calibration:
    """The state of one calibration pass (see the module docstring); use via `calibration`.

    Attributes: ``observers`` ``{layer: {role: Observer}}``; after exit, ``ranges``
    ``{layer: {role: (lo, hi)}}`` and ``unseen`` (layers that never ran).
    """

    def __init__(
        self,
        model: nn.Module,
        roles: "Iterable[str] | str" = ("input",),
        observer: "ObserverFactory | Mapping[str, ObserverFactory]" = MinMaxObserver,
        layers: "tuple[type[nn.Module], ...]" = CALIBRATED_LAYERS,
        filter_fn: "Callable[[str, nn.Module], bool] | None" = None,
        *,
        layer_observer: "LayerObserverFactory | None" = None,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        self.model = model
        self.roles = _check_roles(roles)
        factories = _factories(observer, self.roles)
        if layers is CALIBRATED_LAYERS:  # the default: also the types registered since (transformers' Conv1D)
            layers = layer_types(calibrated=True)
        self.layers: dict[str, nn.Module] = {
            name: m for name, m in model.named_modules()
            if isinstance(m, layers) and (filter_fn is None or filter_fn(name, m))
        }
        if not self.layers:
            raise ValueError(f"model has no layer to calibrate (types {', '.join(t.__name__ for t in layers)}"
                             f"{', filtered by filter_fn' if filter_fn is not None else ''})")
        if layer_observer is not None and not callable(layer_observer):
            raise TypeError(f"layer_observer must be a callable (layer name, role) -> Observer | None, "
                            f"got {type(layer_observer).__name__}")
        self.observers: dict[str, dict[str, Observer]] = {}
        for name in self.layers:
            self.observers[name] = {}
            for role in self.roles:
                obs = factories[role]() if layer_observer is None else layer_observer(name, role)
                if obs is None and layer_observer is not None:
                    continue  # this role of this layer is not observed
                if not isinstance(obs, Observer):
                    raise TypeError(f"observer factory for layer {name!r}, role {role!r} returned "
                                    f"{type(obs).__name__}, not an Observer")
                self.observers[name][role] = obs
        self.ranges: dict[str, dict[str, tuple[torch.Tensor, torch.Tensor]]] = {}
        self.unseen: list[str] = []
        self._calls: dict[str, int] = {name: 0 for name in self.layers}
        self._handles: list[Any] = []
        self._active = False

    # ------------------------------------------------------------------ hooks
    def _pre_hook(self, name: str) -> Callable[..., None]:
        def hook(module: nn.Module, args: "tuple[Any, ...]") -> None:
            self._calls[name] += 1
            obs = self.observers[name].get("input")
            if obs is not None and args and isinstance(args[0], torch.Tensor) and args[0].dtype.is_floating_point:
                obs.observe(args[0])
        return hook

    def _post_hook(self, name: str) -> Callable[..., None]:
        def hook(module: nn.Module, args: "tuple[Any, ...]", output: Any) -> None:
            obs = self.observers[name].get("output")
            if obs is not None and isinstance(output, torch.Tensor) and output.dtype.is_floating_point:
                obs.observe(output)
        return hook

    def __enter__(self) -> "Calibration":
        if self._active:
            raise CalibrationError("this calibration is already active")
        self._active = True
        for name, m in self.layers.items():
            self._handles.append(m.register_forward_pre_hook(self._pre_hook(name)))
            if "output" in self.roles:
                self._handles.append(m.register_forward_hook(self._post_hook(name)))
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()
        self._active = False
        if exc_type is None:
            self._finish()

    def _finish(self) -> None:
        ran = [n for n, c in self._calls.items() if c > 0]
        self.unseen = [n for n, c in self._calls.items() if c == 0]
        data_roles = [r for r in self.roles if r != "weight"]
        if data_roles and not ran:
            raise CalibrationError("observer saw no data; run calibration first: no calibrated layer ran "
                                   "inside the `with calibration(...)` block (call model(x) on some batches)")
        if data_roles and self.unseen:
            warnings.warn(f"calibration: {len(self.unseen)} layer(s) never ran and have no "
                          f"{'/'.join(data_roles)} range: {', '.join(self.unseen[:10])}"
                          f"{' …' if len(self.unseen) > 10 else ''}", LowbitWarning, stacklevel=3)
        ranges: dict[str, dict[str, tuple[torch.Tensor, torch.Tensor]]] = {}
        for name, module in self.layers.items():
            per_role: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
            for role, obs in self.observers[name].items():
                if role == "weight":
                    w = getattr(module, "weight", None)
                    if not isinstance(w, torch.Tensor):
                        continue
                    obs.observe(w.detach())
                elif name in self.unseen:
                    continue
                if obs.count == 0:  # ran, but only non-float or non-finite data reached it
                    continue
                per_role[role] = obs.range()
            if per_role:
                ranges[name] = per_role
        self.ranges = ranges


def calibration(
    model: nn.Module,
    roles: "Iterable[str] | str" = ("input",),
    observer: "ObserverFactory | Mapping[str, ObserverFactory]" = MinMaxObserver,
    layers: "tuple[type[nn.Module], ...]" = CALIBRATED_LAYERS,
    filter_fn: "Callable[[str, nn.Module], bool] | None" = None,
    *,
    layer_observer: "LayerObserverFactory | None" = None,
) -> Calibration:
    """A context manager that records per-layer ranges (see the module docstring).

    ``observer``: a factory (an `Observer` class or a zero-argument callable) used for every
    role, or ``{role: factory}``. ``layer_observer(name, role)``, if given, makes each layer's
    observer instead (None: that role of that layer is not observed), e.g. one that knows the
    layer's format. ``layers``: layer types to hook; ``filter_fn(name, module)`` narrows them
    further. The block does not change the model's mode or grad state.

    >>> import torch
    >>> model = torch.nn.Sequential(torch.nn.Linear(2, 2))
    >>> with calibration(model, roles=("input", "weight")) as cal:
    ...     _ = model(torch.tensor([[0.5, -3.0]]))
    >>> float(cal.ranges["0"]["input"][0])
    -3.0
    """
    return Calibration(model, roles, observer, layers, filter_fn, layer_observer=layer_observer)


def call_model(model: nn.Module, batch: Any, forward: "Callable[[nn.Module, Any], Any] | None" = None,
               what: str = "batch") -> Any:
    """Run one batch the way calibration and the sensitivity scan do, and return the model's output.

    ``forward(model, batch)`` when given; else a dict batch (a tokenizer's ``BatchEncoding`` too)
    is passed as keyword inputs, ``model(**batch)``; a tuple/list as a DataLoader's ``(x, y)``,
    ``model(batch[0])``; a tensor ``model(batch)``. Anything else raises TypeError (``what`` names
    the batch in the message).

    >>> lin = torch.nn.Linear(2, 1)
    >>> call_model(lin, {"input": torch.ones(1, 2)}).shape, call_model(lin, (torch.ones(3, 2), None)).shape
    (torch.Size([1, 1]), torch.Size([3, 1]))
    """
    if forward is not None:
        if not callable(forward):
            raise TypeError(f"forward must be a callable forward(model, batch), got {type(forward).__name__}")
        return forward(model, batch)
    if isinstance(batch, Mapping):
        return model(**batch)
    if isinstance(batch, (tuple, list)) and batch and isinstance(batch[0], torch.Tensor):
        return model(batch[0])
    if isinstance(batch, torch.Tensor):
        return model(batch)
    raise TypeError(f"{what} must be a tensor, a (inputs, ...) tuple/list or a dict of keyword inputs; "
                    f"got {type(batch).__name__} (pass forward=... for other shapes)")


def select_output(output: Any, output_key: "str | int | Callable[[Any], Any] | None" = None) -> torch.Tensor:
    """The tensor a metric compares, from a model's output.

    ``output_key``: None (the output itself when it is a tensor, else the first tensor of a
    dict / ``ModelOutput`` — ``logits``, ``last_hidden_state`` — or of a tuple), a key or
    attribute name, an index, or a callable ``output -> tensor``.

    >>> select_output({"loss": None, "logits": torch.ones(1)}).tolist(), select_output((torch.zeros(1),), 0).tolist()
    ([1.0], [0.0])
    """
    if callable(output_key):
        y = output_key(output)
    elif output_key is None:
        y = output
        if isinstance(output, Mapping):
            y = next((v for v in output.values() if isinstance(v, torch.Tensor)), None)
        elif isinstance(output, (tuple, list)):
            y = next((v for v in output if isinstance(v, torch.Tensor)), None)
    elif isinstance(output_key, str):
        if isinstance(output, Mapping) and output_key in output:
            y = output[output_key]
        elif not isinstance(output, Mapping) and hasattr(output, output_key):
            y = getattr(output, output_key)
        else:
            keys = list(output) if isinstance(output, Mapping) else []
            raise KeyError(f"output_key={output_key!r} is not in the model's output "
                           f"({type(output).__name__}{'; keys: ' + ', '.join(map(str, keys)) if keys else ''})")
    elif isinstance(output_key, int) and not isinstance(output_key, bool) and isinstance(output, (tuple, list)):
        y = output[output_key]
    else:
        raise TypeError(f"output_key={output_key!r}; allowed: None, a key / attribute name, an index into a "
                        f"tuple output, or a callable output -> tensor")
    if not isinstance(y, torch.Tensor):
        raise TypeError(f"the model's output gives no tensor to compare ({type(output).__name__}"
                        f"{'' if output_key is None else f', output_key={output_key!r}'}); pass output_key= "
                        f"(a key such as 'logits', or a callable output -> tensor)")
    return y


def _run_batch(model: nn.Module, batch: Any) -> None:
    call_model(model, batch, what="calibration batch")


def calibrate(
    model: nn.Module,
    data: "Iterable[Any]",
    roles: "Iterable[str] | str" = ("input",),
    observer: "ObserverFactory | Mapping[str, ObserverFactory]" = MinMaxObserver,
    *,
    layers: "tuple[type[nn.Module], ...]" = CALIBRATED_LAYERS,
    filter_fn: "Callable[[str, nn.Module], bool] | None" = None,
    max_batches: "int | None" = None,
    forward: "Callable[[nn.Module, Any], Any] | None" = None,
) -> "dict[str, dict[str, tuple[torch.Tensor, torch.Tensor]]]":
    """Run ``data`` through ``model`` (eval mode, no grad) and return ``{layer: {role: (lo, hi)}}``.

    A batch is a tensor (``model(batch)``), a tuple/list whose first element is the input (a
    DataLoader's ``(x, y)``) or a dict of keyword inputs; ``forward(model, batch)`` overrides that.
    ``max_batches`` stops early. The model's training flag is restored afterwards.
    """
    check_max_batches(max_batches)
    cal = Calibration(model, roles, observer, layers, filter_fn)
    run_calibration(model, cal, data, max_batches, forward)
    return cal.ranges


def check_max_batches(max_batches: "int | None") -> None:
    """ValueError unless ``max_batches`` is None or an int >= 1."""
    if max_batches is not None and (isinstance(max_batches, bool) or not isinstance(max_batches, int)
                                    or max_batches < 1):
        raise ValueError(f"max_batches={max_batches!r}; allowed: None or an int >= 1")


def run_calibration(
    model: nn.Module,
    cal: Calibration,
    data: "Iterable[Any]",
    max_batches: "int | None" = None,
    forward: "Callable[[nn.Module, Any], Any] | None" = None,
) -> None:
    """Feed ``data`` through ``model`` inside ``cal`` (eval mode, no grad; training flag restored)."""
    run = forward if forward is not None else _run_batch
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), cal:
            for i, batch in enumerate(data):
                if max_batches is not None and i >= max_batches:
                    break
                run(model, batch)
    finally:
        model.train(was_training)
