"""Typed, validated, JSON-round-trippable configs for `lowbit.quantize_`.

A `QuantConfig` holds a default `LayerConfig` (a `RoleConfig` per tensor role), per-layer
overrides keyed by a name pattern, and exclusions. The plain dict form converts to it:

>>> cfg = QuantConfig.from_dict({"weight": "posit8_es2", "grad": "e5m2", "exclude": ["fc_out"]})
>>> str(cfg.default.weight.format), cfg.default.input is None, cfg.exclude
('posit8_es2', True, ('fc_out',))
>>> QuantConfig.from_json(cfg.to_json()) == cfg
True

Patterns: a module's qualified name matched with `fnmatch` (``"features.*"``, ``"fc_out"``) — a
pattern that matches a container covers every layer inside it (``"block"`` covers
``"block.0.conv"``) — or ``"type:Conv2d"`` for every module of that class. The last matching
``layers`` entry wins; its roles replace the default's role by role (roles it does not name keep
the default). `pattern_matches` is the rule.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import json
import math
from typing import Any, Iterable, Mapping

from lowbit.formats import LearnedFormat, NumberFormat, parse_format
from lowbit.formats.rounding import ROUNDING_MODES, check_rounding
from lowbit.quant.granularity import Granularity, as_granularity
from lowbit.schemes import Scheme

__all__ = ["pattern_matches", "module_matches", "ROLES", "SCALINGS", "STATIC_ROLES", "RoleConfig", "LayerConfig",
           "QuantConfig", "as_config", "CONFIG_VERSION", "OP_KEYS", "OpRoles"]


def pattern_matches(pattern: str, name: str, classes: Iterable[str]) -> bool:
    """Whether a layer pattern covers the module ``name`` whose class (and base classes) are named
    ``classes``: ``"type:<Class>"`` matches a class name; any other pattern is the qualified name,
    or an `fnmatch` pattern over it, of the module or of one of its ancestors.

    >>> pattern_matches("block", "block.0.conv", ["Conv2d"]), pattern_matches("block", "blocks.0", ["Linear"])
    (True, False)
    >>> pattern_matches("fc*", "fc2", ["Linear"]), pattern_matches("type:Linear", "fc2", ["Linear", "Module"])
    (True, True)
    """
    if pattern.startswith("type:"):
        return pattern[5:] in classes
    parts = name.split(".")
    prefixes = (".".join(parts[:i]) for i in range(len(parts), 0, -1))
    return any(p == pattern or fnmatch.fnmatchcase(p, pattern) for p in prefixes)


def module_matches(pattern: str, name: str, module: Any) -> bool:
    """`pattern_matches` for the module ``name``, by the classes of its float layer (a simulated
    layer's ``lowbit_float_class``, else its own)."""
    cls = getattr(module, "lowbit_float_class", type(module))
    return pattern_matches(pattern, name, [c.__name__ for c in cls.__mro__])


#: Tensor roles of a quantized layer: its weight and bias, its input activations, its output,
#: and the gradient flowing back into its output.
ROLES = ("weight", "bias", "input", "output", "grad")
#: Scale rules: per-tensor power-of-two scales (see lowbit.schemes.power_of_two), per-granule float
#: scales from the tensor itself ("absmax"), or a fixed calibrated range ("static").
SCALINGS = ("histogram", "amax", "absmax", "static")
#: roles that can take a calibrated ``range`` (activations; weights use "absmax" per granule)
STATIC_ROLES = ("input", "output")
CONFIG_VERSION = 1
#: ``accumulate`` value for exact accumulation (a Kulisch accumulator, rounded once)
QUIRE = "quire"
#: op-level keys (see `OpRoles`): attention inside the layer's forward, activation x activation products
OP_KEYS = {"attention": ("q", "k", "v", "scores", "probs", "output"), "matmul": ("a", "b", "output")}
#: ``accumulate_backward`` values: how a quire layer's backward accumulates its gradient matmuls
ACCUMULATE_BACKWARDS = ("fp32", QUIRE)
_LAYER_KEYS = ROLES + ("accumulate", "accumulate_every", "accumulate_backward") + tuple(OP_KEYS)
_TOP_KEYS = _LAYER_KEYS + ("exclude", "layers", "seed", "version", "rounding")
#: normalization layers (the registry entries with config_key "norm") take roles only from their own key, opt-in:
#: ``{"norm": {"weight": ..., "input": ...}}``; the plain roles never touch them
NORM_KEY = "norm"
_TOP_KEYS = _TOP_KEYS + (NORM_KEY,)


def _fail(where: str, message: str) -> ValueError:
    return ValueError(f"{where}: {message}")


@dataclasses.dataclass(frozen=True)
class RoleConfig:
    """How one tensor role is quantized.

    ``scaling``: None (no scale), ``"histogram"`` (2^-t with t the centre of the most populated
    log2|x| bin, moved onto the format's most accurate exponent), ``"amax"`` (largest |x| of the
    last ``history`` observations maps just under the format's max) or an int k (fixed scale 2^k:
    represented value = 2^k × format value). ``every``: refresh the scale every k calls (None:
    once, from the first call). Those three apply to posit and minifloat formats.
    ``"absmax"``: a float scale per granule, amax / fmt.max, so each granule's largest |x| maps
    onto the format's max (the usual symmetric per-channel int8 rule; any scalar format), with
    ``granularity`` ``"tensor"`` (default), ``"channel"`` (axis 0: output channels) or a
    `Granularity` / its dict (per group).
    Binary, ternary and codebook formats fit their levels per tensor, or, with no scaling, per
    channel (``granularity="channel"``: output channels, or any axis) or per group (e.g.
    ``{"kind": "group", "axis": 1, "group_size": 32}``, codebook levels for every 32 inputs).
    absmax and static put the largest value on ``fmt.max``: right for integers, fixed point and
    minifloats, whose relative precision is the same across their range, but a posit is most
    precise near 1 and coarse near its max — for posits prefer ``"histogram"`` (weights) and the
    ``"log2"`` observer for static activations (its range makes the scale a power of two that
    centres the bulk of the values).
    ``"static"``: a fixed per-tensor ``range`` ``(lo, hi)`` found by calibration (see
    `lowbit.calibrate_config`), the usual post-training rule for activations. Unsigned integer
    formats (``uint8`` …) use it asymmetrically: scale s = (hi − lo) / (2^b − 1) and zero point
    z = round(−lo / s), x̂ = s · (clamp(R(x / s) + z, 0, 2^b − 1) − z); every other scalar format
    symmetrically: s = max(|lo|, |hi|) / fmt.max, x̂ = s · fmt.quantize(x / s) (unsigned ones
    use s = hi / fmt.max). A zero range gives s = 0: the role quantizes to exactly 0.
    """

    format: NumberFormat
    rounding: str = "nearest_even"
    scaling: "str | int | None" = None
    every: "int | None" = None
    history: int = 16
    granularity: "Granularity | None" = None
    range: "tuple[float, float] | None" = None

    @property
    def scheme(self) -> "Scheme":
        """This role's `lowbit.schemes.Scheme`: element format + scale rule + rounding.

        >>> str(RoleConfig.parse({"format": "int4", "scaling": "absmax",
        ...                       "granularity": {"kind": "group", "axis": -1, "group_size": 128}}, "w").scheme)
        'int4+absmax_g128'
        """
        return Scheme.from_role(self.format, self.rounding, self.scaling, self.every, self.history,
                                self.granularity, self.range)

    def to_dict(self) -> "dict[str, Any]":
        d = {"format": str(self.format), "rounding": self.rounding, "scaling": self.scaling,
             "every": self.every, "history": self.history,
             "granularity": None if self.granularity is None else self.granularity.to_dict()}
        if self.range is not None:
            d["range"] = list(self.range)
        return d

    @classmethod
    def parse(cls, value: Any, where: str, rounding: str = "nearest_even") -> "RoleConfig | None":
        """A spec string, a NumberFormat, a dict with ``format`` and options, a RoleConfig or None."""
        if value is None or isinstance(value, RoleConfig):
            return value
        if isinstance(value, (str, NumberFormat)):
            value = {"format": value}
        if not isinstance(value, Mapping):
            raise TypeError(f"{where} must be a format spec string, a dict with 'format', or None; "
                            f"got {type(value).__name__}")
        unknown = set(value) - {"format", "rounding", "scaling", "every", "history", "granularity", "range"}
        if unknown:
            raise _fail(where, f"unknown key(s) {sorted(unknown)}; "
                        "allowed: format, rounding, scaling, every, history, granularity, range")
        if value.get("format") is None:
            raise _fail(where, "needs a 'format' (a spec string such as 'posit8_es2')")
        try:
            fmt = parse_format(value["format"])
        except ValueError as err:
            raise type(err)(f"{where}: {err}") from None
        mode = value.get("rounding", rounding)
        try:
            check_rounding(mode)
        except ValueError:
            raise _fail(where, f"rounding={mode!r} is not a rounding mode; allowed: {', '.join(ROUNDING_MODES)}") from None
        mode = str(getattr(mode, "value", mode))
        scaling = value.get("scaling")
        if isinstance(scaling, bool) or not (scaling is None or isinstance(scaling, int) or scaling in SCALINGS):
            raise _fail(where, f"scaling={scaling!r}; allowed: None, 'histogram', 'amax', 'absmax', 'static' "
                        f"or an int exponent k")
        if scaling is not None and scaling not in ("absmax", "static") and fmt.family not in ("posit", "minifloat"):
            raise _fail(where, f"scaling={scaling!r} applies to posit and minifloat formats, not {fmt} "
                        f"({fmt.family}); use scaling='absmax' for a per-tensor/channel float scale")
        if scaling in ("absmax", "static") and fmt.data_dependent:
            raise _fail(where, f"scaling={scaling!r} needs a scalar element format, not {fmt} (it fits its own scale)")
        range_ = _parse_range(value.get("range"), where)
        if range_ is not None and scaling != "static":
            raise _fail(where, f"range={list(range_)} needs scaling='static' (got scaling={scaling!r})")
        try:
            granularity = None if value.get("granularity") is None else as_granularity(value["granularity"])
        except (TypeError, ValueError) as err:
            raise type(err)(f"{where}: {err}") from None
        if granularity is not None and granularity.kind == "token":  # per-token scales are dynamic absmax
            if scaling not in (None, "absmax"):
                raise _fail(where, f"granularity 'token' is one dynamic absmax scale per row; "
                            f"scaling={scaling!r} is not allowed with it (use None or 'absmax')")
            if fmt.data_dependent:
                raise _fail(where, f"granularity 'token' needs a scalar element format, not {fmt}")
            scaling = "absmax"
        fitted = isinstance(fmt, LearnedFormat)  # fits its levels per tensor, channel or group
        if granularity is not None and granularity.kind != "tensor" and scaling != "absmax" and not (
                fitted and scaling is None):
            raise _fail(where, f"granularity {granularity.kind!r} needs scaling='absmax' (per-granule scales); "
                        f"scaling={scaling!r} is per tensor")
        every = value.get("every")
        if every is not None and (isinstance(every, bool) or not isinstance(every, int) or every < 1):
            raise _fail(where, f"every={every!r}; allowed: None (once) or an int >= 1")
        history = value.get("history", 16)
        if isinstance(history, bool) or not isinstance(history, int) or history < 1:
            raise _fail(where, f"history={history!r}; allowed: an int >= 1")
        return cls(fmt, mode, scaling, every, history, granularity, range_)


def _parse_range(value: Any, where: str) -> "tuple[float, float] | None":
    if value is None:
        return None
    if isinstance(value, (str, bytes)) or not hasattr(value, "__len__") or len(value) != 2:
        raise _fail(where, f"range={value!r}; allowed: None or two numbers [lo, hi] with lo <= hi")
    try:
        lo, hi = (float(v) for v in value)
    except (TypeError, ValueError):
        raise _fail(where, f"range={value!r}; allowed: None or two numbers [lo, hi] with lo <= hi") from None
    if not (math.isfinite(lo) and math.isfinite(hi)) or lo > hi:
        raise _fail(where, f"range={[lo, hi]}; allowed: finite numbers with lo <= hi")
    return (lo, hi)


@dataclasses.dataclass(frozen=True)
class LayerConfig:
    """Formats for one layer's tensor roles (None = full precision) and its accumulation.

    ``accumulate``: a format the running sum of products is rounded to every
    ``accumulate_every`` products (None: FP32 accumulation, torch's own), or ``"quire"``: the
    exact sum of the exact products and the bias, rounded once (to the ``output`` role's format
    when it is a plain nearest-even format, else to the layer's dtype) — `lowbit.exact_matmul`.
    ``accumulate_backward`` (quire layers): ``"fp32"`` (default) — the gradient matmuls in the
    operands' dtype, as torch does; ``"quire"`` — every element of grad_input / grad_weight /
    grad_bias one exact sum rounded once to float32 (the operands' dtype).
    """

    weight: "RoleConfig | None" = None
    bias: "RoleConfig | None" = None
    input: "RoleConfig | None" = None
    output: "RoleConfig | None" = None
    grad: "RoleConfig | None" = None
    accumulate: "NumberFormat | str | None" = None  # a format, "quire" or None
    accumulate_every: "int | None" = None
    accumulate_backward: str = "fp32"
    # op-level simulation (lowbit.simulate.ops): not layer roles, so is_identity ignores them
    attention: "OpRoles | None" = None
    matmul: "OpRoles | None" = None

    @property
    def is_identity(self) -> bool:
        return all(getattr(self, r) is None for r in ROLES) and self.accumulate is None

    def to_dict(self) -> "dict[str, Any]":
        d: dict[str, Any] = {r: (None if getattr(self, r) is None else getattr(self, r).to_dict()) for r in ROLES}
        d["accumulate"] = None if self.accumulate is None else str(self.accumulate)
        d["accumulate_every"] = self.accumulate_every
        if self.accumulate_backward != "fp32":
            d["accumulate_backward"] = self.accumulate_backward
        for key in OP_KEYS:
            if getattr(self, key) is not None:
                d[key] = getattr(self, key).to_dict()
        return d

    @classmethod
    def parse(cls, value: Any, where: str, base: "LayerConfig | None" = None,
              rounding: str = "nearest_even") -> "LayerConfig":
        """From a dict of roles (missing roles keep ``base``'s), or a LayerConfig."""
        if isinstance(value, LayerConfig):
            return value
        if not isinstance(value, Mapping):
            raise TypeError(f"{where} must be a dict of roles ({', '.join(ROLES)}), got {type(value).__name__}")
        unknown = set(value) - set(_LAYER_KEYS)
        if unknown:
            raise _fail(where, f"unknown role or key {sorted(unknown)}; allowed: {', '.join(_LAYER_KEYS)}")
        fields = {k: getattr(base, k) for k in _LAYER_KEYS} if base is not None else {}
        for role in ROLES:
            if role in value:
                fields[role] = RoleConfig.parse(value[role], f"{where}[{role!r}]", rounding)
                if fields[role] is not None and fields[role].granularity is not None and \
                        fields[role].granularity.kind == "token" and role in ("weight", "bias"):
                    raise _fail(f"{where}[{role!r}]", "granularity 'token' (per row of an activation) applies to "
                                "activation roles (input, output, attention, matmul); weights take 'channel' or a group")
                if fields[role] is not None and fields[role].scaling == "static" and role not in STATIC_ROLES:
                    raise _fail(f"{where}[{role!r}]", f"scaling='static' applies to the roles "
                                f"{', '.join(STATIC_ROLES)} (activations seen by calibration), not {role!r}; "
                                f"weights take scaling='absmax' with a granularity")
        if "accumulate" in value:
            acc = value["accumulate"]
            try:
                fields["accumulate"] = None if acc is None else QUIRE if acc == QUIRE else parse_format(acc)
            except ValueError as err:
                raise type(err)(f"{where}['accumulate']: {err}") from None
        if "accumulate_every" in value:
            fields["accumulate_every"] = value["accumulate_every"]
        if "accumulate_backward" in value:
            fields["accumulate_backward"] = value["accumulate_backward"]
        for key in OP_KEYS:
            if key in value:
                fields[key] = OpRoles.parse(key, value[key], f"{where}[{key!r}]", fields.get(key), rounding)
        every = fields.get("accumulate_every")
        if every is not None and (isinstance(every, bool) or not isinstance(every, int) or every < 1):
            raise _fail(where, f"accumulate_every={every!r}; allowed: None or an int >= 1")
        if every is not None and fields.get("accumulate") is None:
            raise _fail(where, "accumulate_every needs an 'accumulate' format")
        if every is not None and fields.get("accumulate") == QUIRE:
            raise _fail(where, "accumulate_every does not apply to accumulate='quire' (it sums exactly, rounds once)")
        backward = fields.get("accumulate_backward", "fp32")
        if not isinstance(backward, str) or backward not in ACCUMULATE_BACKWARDS:
            raise _fail(where, f"accumulate_backward={backward!r}; allowed: "
                        f"{', '.join(repr(b) for b in ACCUMULATE_BACKWARDS)}")
        if backward == QUIRE and fields.get("accumulate") != QUIRE:
            raise _fail(where, "accumulate_backward='quire' needs accumulate='quire' (the forward's exact sum)")
        return cls(**fields)


@dataclasses.dataclass(frozen=True)
class QuantConfig:
    """A whole-model plan: default roles, per-layer overrides, exclusions, stochastic seed.

    ``layers``: (pattern, LayerConfig) pairs, later ones win. ``exclude``: patterns of layers
    left in full precision. ``seed``: seeds every stochastic-rounding role (None: torch's global
    generator, itself reproducible under ``torch.manual_seed``).
    """

    default: LayerConfig = LayerConfig()
    layers: "tuple[tuple[str, LayerConfig], ...]" = ()
    exclude: "tuple[str, ...]" = ()
    seed: "int | None" = None
    version: int = CONFIG_VERSION
    #: roles of the normalization layers (the ``"norm"`` key; identity = left alone)
    norm: LayerConfig = LayerConfig()

    # ------------------------------------------------------------------ conversions
    @classmethod
    def from_dict(cls, d: "Mapping[str, Any]") -> "QuantConfig":
        """The typed form of the plain config dict (plus ``layers``, ``seed``, ``rounding``)."""
        if not isinstance(d, Mapping):
            raise TypeError(f"config must be a dict or a QuantConfig, got {type(d).__name__}")
        unknown = set(d) - set(_TOP_KEYS)
        if unknown:
            raise ValueError(f"config: unknown role or key {sorted(unknown)}; allowed: {', '.join(_TOP_KEYS)}")
        version = d.get("version", CONFIG_VERSION)
        if version != CONFIG_VERSION:
            raise ValueError(f"config: version={version!r}; this lowbit reads version {CONFIG_VERSION}")
        rounding = d.get("rounding", "nearest_even")
        try:
            rounding = check_rounding(rounding).value
        except ValueError:
            raise ValueError(f"config: rounding={rounding!r} is not a rounding mode; "
                             f"allowed: {', '.join(ROUNDING_MODES)}") from None
        default = LayerConfig.parse({k: d[k] for k in _LAYER_KEYS if k in d}, "config", rounding=rounding)
        layers_in = d.get("layers", {}) or {}
        if isinstance(layers_in, Mapping):
            layers_in = list(layers_in.items())
        layers = []
        for item in layers_in:
            if not (isinstance(item, (tuple, list)) and len(item) == 2 and isinstance(item[0], str)):
                raise TypeError("config['layers'] must map name patterns to role dicts")
            pattern, spec = item
            layers.append((pattern, LayerConfig.parse(spec, f"config['layers'][{pattern!r}]", default, rounding)))
        exclude = d.get("exclude", ()) or ()
        if isinstance(exclude, str):
            exclude = (exclude,)
        if not all(isinstance(p, str) for p in exclude):
            raise TypeError("config['exclude'] must be a list of module-name patterns")
        seed = d.get("seed")
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
            raise ValueError(f"config: seed={seed!r}; allowed: None or an int")
        norm = LayerConfig.parse(d.get(NORM_KEY) or {}, f"config[{NORM_KEY!r}]", rounding=rounding)
        return cls(default, tuple(layers), tuple(exclude), seed, norm=norm)

    def to_dict(self) -> "dict[str, Any]":
        d = self.default.to_dict()
        d["layers"] = {p: lc.to_dict() for p, lc in self.layers} if self._unique_patterns() else \
            [[p, lc.to_dict()] for p, lc in self.layers]
        d["exclude"] = list(self.exclude)
        d["seed"] = self.seed
        d["version"] = self.version
        if not self.norm.is_identity:
            d[NORM_KEY] = self.norm.to_dict()
        return d

    def _unique_patterns(self) -> bool:
        return len({p for p, _ in self.layers}) == len(self.layers)

    def to_json(self, **kwargs: Any) -> str:
        return json.dumps(self.to_dict(), **kwargs)

    @classmethod
    def from_json(cls, text: str) -> "QuantConfig":
        return cls.from_dict(json.loads(text))


def as_config(config: Any) -> QuantConfig:
    """A QuantConfig from a QuantConfig, a dict, a LayerConfig or a single format spec (weights)."""
    if isinstance(config, QuantConfig):
        return config
    if isinstance(config, LayerConfig):
        return QuantConfig(config)
    if isinstance(config, (str, NumberFormat)):
        return QuantConfig.from_dict({"weight": config})
    if isinstance(config, Mapping):
        return QuantConfig.from_dict(config)
    raise TypeError(f"config must be a QuantConfig, a dict of roles or a format spec, got {type(config).__name__}")


# ---------------------------------------------------------------------- op-level roles
@dataclasses.dataclass(frozen=True)
class OpRoles:
    """Role configs of one op kind (a key of `OP_KEYS`): ``"attention"`` (q, k, v, scores, probs,
    output) or ``"matmul"`` (a, b, output); a role left out (or None) stays in full precision.

    In a ``layers`` entry, a dict is merged role by role into the default's (``{"probs": None}``
    turns only the probabilities off); None turns the whole op kind off.

    >>> op = OpRoles.parse("attention", {"q": "e4m3fn", "probs": "posit8_es2"}, "config['attention']")
    >>> sorted(op.to_dict()), str(op.get("probs").format), op.get("k") is None
    (['probs', 'q'], 'posit8_es2', True)
    """

    kind: str
    roles: "tuple[tuple[str, RoleConfig], ...]" = ()

    def get(self, role: str) -> "RoleConfig | None":
        """The config of ``role`` (None: full precision)."""
        return dict(self.roles).get(role)

    @property
    def is_identity(self) -> bool:
        return not self.roles

    def to_dict(self) -> "dict[str, Any]":
        return {r: rc.to_dict() for r, rc in self.roles}

    @classmethod
    def parse(cls, kind: str, value: Any, where: str, base: "OpRoles | None" = None,
              rounding: str = "nearest_even") -> "OpRoles | None":
        """From a dict of roles (merged into ``base``), an OpRoles, or None (off)."""
        if value is None or isinstance(value, OpRoles):
            return value
        allowed = OP_KEYS[kind]
        if not isinstance(value, Mapping):
            raise TypeError(f"{where} must be a dict of roles ({', '.join(allowed)}) or None, "
                            f"got {type(value).__name__}")
        unknown = set(value) - set(allowed)
        if unknown:
            raise _fail(where, f"unknown role(s) {sorted(unknown)}; allowed: {', '.join(allowed)}")
        roles = dict(base.roles) if base is not None else {}
        for role in allowed:
            if role in value:
                rc = RoleConfig.parse(value[role], f"{where}[{role!r}]", rounding)
                if rc is not None and rc.scaling == "static":
                    raise _fail(f"{where}[{role!r}]", "scaling='static' is not available for op roles; "
                                "use a format alone, a power-of-two scaling, or granularity 'token'")
                if rc is None:
                    roles.pop(role, None)
                else:
                    roles[role] = rc
        return cls(kind, tuple((r, roles[r]) for r in allowed if r in roles))
