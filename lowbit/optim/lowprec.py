"""Low-precision optimizer wrapper: QPyTorch's ``OptimLP`` for any ``torch.optim`` optimizer.

One step of ``LowPrecisionOptimizer(opt, grad=G, weight=W, state=S)``:

1. each parameter's ``.grad`` is rounded to G (``grad_rounding``);
2. the wrapped optimizer steps (full precision arithmetic, as the hardware's update unit would);
3. each per-element state tensor is rounded to its format in S (``state_rounding``);
4. each updated parameter is rounded to W (``weight_rounding``, stochastic by default).

Only parameters that have a gradient take part (the wrapped optimizer skips the others too).
Rounding is in place (``fmt.quantize(t, rounding, generator, out=t)``); every stochastic rounding
draws from one ``generator`` in a fixed order (parameters in ``param_groups`` order: grad, then
state, then weight), so the same seed gives bit-identical training.

**State formats.** ``state`` is a format for *all per-element state tensors* — floating tensors
with the parameter's shape (``momentum_buffer``, ``exp_avg``, ``exp_avg_sq``, ``square_avg``,
…) — or a dict ``{state name: format or None}`` naming them. Step counters (``"step"``,
a float tensor in recent torch) and other scalars are never quantized; naming ``"step"`` is an
error. A dict name the wrapped optimizer does not have raises ValueError listing the names it
has; the check runs after the first step that creates optimizer state (torch optimizers create
their state lazily), before any state is rounded.

**Master weights** (``master_weights=True``, the posit GAN recipe): the wrapped optimizer
updates FP32 (FP64 for float64 parameters) master copies; the model's parameters hold
``W.quantize(master)``, refreshed after every step and once at construction. The model's
``.grad`` is copied into the master's ``.grad`` before rounding. ``param_groups`` and ``state``
are then those of the masters; `master_of` maps a model parameter to its master.

**Duck typing.** The wrapper subclasses ``torch.optim.Optimizer`` so LR schedulers and step
hooks accept it, but owns no parameters: ``param_groups``, ``state`` and ``defaults`` are the
wrapped optimizer's own objects (a scheduler that changes ``lr`` changes the wrapped optimizer).
``state_dict`` adds a ``"lowbit"`` entry (master weights, the generator state, the formats) to
the wrapped optimizer's dict. Optimizers that call their closure several times per step (LBFGS)
are not supported: the closure is evaluated once, before the gradients are rounded.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any

import torch

from lowbit.formats import NumberFormat
from lowbit.formats.rounding import Rounding, check_rounding
from lowbit.formats.spec import as_format

__all__ = ["LowPrecisionOptimizer", "COUNTER_STATE_NAMES"]

#: State entries that count steps; never quantized.
COUNTER_STATE_NAMES = frozenset({"step"})

FormatLike = "str | NumberFormat | None"


def _rounding(value: Any, name: str, generator: "torch.Generator | None") -> str:
    try:
        return check_rounding(value, generator).value
    except ValueError as err:
        raise ValueError(f"{name}: {err}") from None


def _master_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


class LowPrecisionOptimizer(torch.optim.Optimizer):
    """Round gradients, optimizer state and weights of any torch optimizer to number formats.

    Args:
        optimizer: the wrapped ``torch.optim.Optimizer`` (SGD, Adam, AdamW, RMSprop, …).
        grad: format of the gradients fed to the update (None: full precision).
        weight: format of the weights after each update (None: full precision).
        state: one format for every per-element state tensor, or ``{name: format}``.
        master_weights: keep full-precision master copies (see module docs).
        grad_rounding, weight_rounding, state_rounding: rounding modes (``lowbit.ROUNDING_MODES``).
        generator: ``torch.Generator`` for stochastic rounding (None: torch's default generator).

    >>> import torch, lowbit as lb
    >>> w = torch.nn.Parameter(torch.tensor([1.0, -2.0]))
    >>> opt = lb.LowPrecisionOptimizer(torch.optim.SGD([w], lr=0.1), weight="posit8_es2",
    ...                                weight_rounding="nearest_even")
    >>> w.grad = torch.tensor([2.0, 2.0])
    >>> opt.step()
    >>> w.tolist()  # 0.8 and -2.2, rounded to posit8_es2
    [0.8125, -2.25]
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        *,
        grad: FormatLike = None,
        weight: FormatLike = None,
        state: "FormatLike | Mapping[str, FormatLike]" = None,
        master_weights: bool = False,
        grad_rounding: "str | Rounding" = "nearest_even",
        weight_rounding: "str | Rounding" = "stochastic",
        state_rounding: "str | Rounding" = "nearest_even",
        generator: "torch.Generator | None" = None,
    ) -> None:
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise TypeError(f"optimizer must be a torch.optim.Optimizer, got {type(optimizer).__name__}")
        if isinstance(optimizer, LowPrecisionOptimizer):
            raise TypeError("optimizer is already a LowPrecisionOptimizer; wrap the torch optimizer once")
        if not isinstance(master_weights, bool):
            raise TypeError(f"master_weights must be a bool, got {type(master_weights).__name__}")
        self.optimizer = optimizer
        self.grad_format = as_format(grad, "grad", optional=True)
        self.weight_format = as_format(weight, "weight", optional=True)
        self.state_formats: "dict[str, NumberFormat | None] | None" = None
        self.state_format: "NumberFormat | None" = None
        if isinstance(state, Mapping):
            self.state_formats = {}
            for key, spec in state.items():
                if not isinstance(key, str):
                    raise TypeError(f"state dict keys must be state names (str), got {key!r}")
                if key in COUNTER_STATE_NAMES:
                    raise ValueError(f"state[{key!r}]: step counters are never quantized; remove {key!r} from state")
                self.state_formats[key] = as_format(spec, f"state[{key!r}]", optional=True)
        else:
            self.state_format = as_format(state, "state", optional=True)
        self.grad_rounding = _rounding(grad_rounding, "grad_rounding", generator)
        self.weight_rounding = _rounding(weight_rounding, "weight_rounding", generator)
        self.state_rounding = _rounding(state_rounding, "state_rounding", generator)
        self.generator = generator
        self.master_weights = master_weights
        self._state_names_checked = self.state_formats is None
        self._masters: dict[torch.Tensor, torch.Tensor] = {}  # model parameter -> master copy
        self._model_params: list[torch.Tensor] = []
        # torch.optim.Optimizer.__init__ would build param_groups of its own; __setstate__ is the
        # stable entry point (unpickling uses it) that sets up the hook registries without params.
        torch.optim.Optimizer.__setstate__(self, {})
        for group in self.optimizer.param_groups:
            group["params"] = self._adopt(group["params"])

    # ------------------------------------------------------------------ shared optimizer views
    @property
    def param_groups(self) -> list[dict[str, Any]]:  # type: ignore[override]
        """The wrapped optimizer's ``param_groups`` (masters' when ``master_weights``)."""
        return self.optimizer.param_groups

    @param_groups.setter
    def param_groups(self, value: list[dict[str, Any]]) -> None:
        self.optimizer.param_groups = value

    @property
    def state(self) -> Any:  # type: ignore[override]
        """The wrapped optimizer's ``state`` (keyed by masters when ``master_weights``)."""
        return self.optimizer.state

    @state.setter
    def state(self, value: Any) -> None:
        self.optimizer.state = value

    @property
    def defaults(self) -> dict[str, Any]:  # type: ignore[override]
        """The wrapped optimizer's ``defaults``."""
        return self.optimizer.defaults

    @defaults.setter
    def defaults(self, value: dict[str, Any]) -> None:
        self.optimizer.defaults = value

    @property
    def model_params(self) -> list[torch.Tensor]:
        """The model's parameters, whose ``.grad`` backward fills (in ``param_groups`` order)."""
        return list(self._model_params)

    def master_of(self, param: torch.Tensor) -> torch.Tensor:
        """The tensor the wrapped optimizer updates for model parameter ``param``."""
        for p in self._model_params:
            if p is param:
                return self._masters.get(p, p)
        raise KeyError("param is not one of this optimizer's parameters")

    def _adopt(self, params: list[torch.Tensor]) -> list[torch.Tensor]:
        """Register model parameters; in master mode return their masters (and set p = W(master))."""
        targets = []
        for p in params:
            if not isinstance(p, torch.Tensor) or not p.dtype.is_floating_point:
                raise TypeError("LowPrecisionOptimizer parameters must be floating-point tensors")
            self._model_params.append(p)
            if not self.master_weights:
                targets.append(p)
                continue
            master = p.detach().clone().to(_master_dtype(p.dtype)).requires_grad_(p.requires_grad)
            if p in self.optimizer.state:  # keep state the wrapped optimizer already had
                self.optimizer.state[master] = self.optimizer.state.pop(p)
            self._masters[p] = master
            self._write_weight(p, master)
            targets.append(master)
        return targets

    def _pairs(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for p in self._model_params:
            yield p, self._masters.get(p, p)

    # ------------------------------------------------------------------ the step
    def _quantize_(self, fmt: NumberFormat, t: torch.Tensor, rounding: str) -> None:
        fmt.quantize(t, rounding, self.generator, out=t)

    def _write_weight(self, p: torch.Tensor, master: torch.Tensor) -> None:
        with torch.no_grad():
            if self.weight_format is None:
                p.copy_(master)
            else:
                p.copy_(self.weight_format.quantize(master, self.weight_rounding, self.generator))

    @torch.no_grad()
    def step(self, closure: "Callable[[], Any] | None" = None, *, grad_scale: "float | None" = None) -> Any:
        """Round grads, step the wrapped optimizer, round state and weights; returns the closure's loss.

        ``grad_scale``: the gradients hold ``grad_scale`` × the true gradient (loss scaling). They
        are rounded to the grad format as they are — the scaler put them where the format is
        accurate — and then divided by ``grad_scale`` before the update. The loss scalers of
        `lowbit.optim` pass it.
        """
        if grad_scale is not None and not (isinstance(grad_scale, (int, float)) and grad_scale > 0):
            raise ValueError(f"grad_scale must be a positive number or None, got {grad_scale!r}")
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        updated: list[tuple[torch.Tensor, torch.Tensor]] = []
        for p, target in self._pairs():
            if p.grad is None:
                if target is not p:
                    target.grad = None
                continue
            if p.grad.is_sparse:
                raise TypeError("LowPrecisionOptimizer supports dense gradients only")
            if target is not p:
                target.grad = p.grad.detach().to(target.dtype, copy=True)
            g = target.grad
            if self.grad_format is not None:
                self._quantize_(self.grad_format, g, self.grad_rounding)
            if grad_scale is not None and grad_scale != 1:
                g.div_(grad_scale)
            updated.append((p, target))
        self.optimizer.step()
        if updated and (self.state_format is not None or self.state_formats):
            self._check_state_names()
            for _, target in updated:
                self._quantize_state(target)
        for p, target in updated:
            if target is not p:
                self._write_weight(p, target)
            elif self.weight_format is not None:
                self._quantize_(self.weight_format, p, self.weight_rounding)
        return loss

    def _state_names(self) -> list[str]:
        return sorted({name for st in self.optimizer.state.values() for name in st})

    def _check_state_names(self) -> None:
        if self._state_names_checked or not self.optimizer.state or self.state_formats is None:
            return
        have = self._state_names()
        unknown = sorted(set(self.state_formats) - set(have))
        if unknown:
            listing = ", ".join(repr(n) for n in have if n not in COUNTER_STATE_NAMES) or "(none)"
            raise ValueError(
                f"state names {unknown} are not state of {type(self.optimizer).__name__} as configured; "
                f"its state tensors are: {listing} (step counters are never quantized)"
            )
        self._state_names_checked = True

    def _quantize_state(self, target: torch.Tensor) -> None:
        st = self.optimizer.state.get(target)
        if not st:
            return
        for name, value in st.items():
            if name in COUNTER_STATE_NAMES or not isinstance(value, torch.Tensor):
                continue
            if not value.dtype.is_floating_point:
                continue
            if self.state_formats is not None:
                fmt = self.state_formats.get(name)
            else:
                fmt = self.state_format if value.shape == target.shape else None
            if fmt is not None:
                self._quantize_(fmt, value, self.state_rounding)

    # ------------------------------------------------------------------ delegation
    def zero_grad(self, set_to_none: bool = True) -> None:
        """Clear the model parameters' gradients (and the masters')."""
        for p, target in self._pairs():
            for t in (p, target) if target is not p else (p,):
                if t.grad is None:
                    continue
                if set_to_none:
                    t.grad = None
                else:
                    if t.grad.grad_fn is not None:
                        t.grad.detach_()
                    else:
                        t.grad.requires_grad_(False)
                    t.grad.zero_()

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a parameter group to the wrapped optimizer (with masters in master mode)."""
        if not isinstance(param_group, dict):
            raise TypeError(f"param_group must be a dict, got {type(param_group).__name__}")
        group = dict(param_group)
        params = group["params"]
        params = [params] if isinstance(params, torch.Tensor) else list(params)
        known = {id(p) for p in self._model_params}
        if any(id(p) in known for p in params):
            raise ValueError("some parameters appear in more than one parameter group")
        group["params"] = self._adopt(params)
        self.optimizer.add_param_group(group)

    def state_dict(self) -> dict[str, Any]:
        """The wrapped optimizer's state dict plus a ``"lowbit"`` entry (masters, generator state)."""
        sd = self.optimizer.state_dict()
        sd["lowbit"] = {
            "version": 1,
            "master_weights": [self._masters[p].detach().clone() for p in self._model_params]
            if self.master_weights else None,
            "generator_state": self.generator.get_state() if self.generator is not None else None,
            "formats": {
                "grad": None if self.grad_format is None else str(self.grad_format),
                "weight": None if self.weight_format is None else str(self.weight_format),
                "state": {k: None if v is None else str(v) for k, v in self.state_formats.items()}
                if self.state_formats is not None else (None if self.state_format is None else str(self.state_format)),
            },
        }
        return sd

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load a dict made by `state_dict` (or a plain dict of the wrapped optimizer's type)."""
        if not isinstance(state_dict, dict):
            raise TypeError(f"state_dict must be a dict, got {type(state_dict).__name__}")
        sd = dict(state_dict)
        extra = sd.pop("lowbit", None)
        masters = extra.get("master_weights") if extra else None
        if self.master_weights and masters is not None and len(masters) != len(self._model_params):
            raise ValueError(
                f"state_dict has {len(masters)} master weights; this optimizer has {len(self._model_params)} parameters"
            )
        self.optimizer.load_state_dict(sd)
        if self.master_weights and masters is not None:
            with torch.no_grad():
                for p, saved in zip(self._model_params, masters):
                    self._masters[p].copy_(saved)
        if extra and extra.get("generator_state") is not None and self.generator is not None:
            self.generator.set_state(extra["generator_state"])

    def __getstate__(self) -> dict[str, Any]:
        return self.__dict__.copy()

    def __repr__(self) -> str:
        if self.state_formats is not None:
            st: Any = {k: None if v is None else str(v) for k, v in self.state_formats.items()}
        else:
            st = self.state_format
        return (
            f"LowPrecisionOptimizer({self.optimizer!r}, grad={self.grad_format}, weight={self.weight_format}, "
            f"state={st}, master_weights={self.master_weights}, weight_rounding={self.weight_rounding})"
        )
