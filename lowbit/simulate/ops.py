"""Op-level simulation: attention and activation × activation products inside a model's forward.

Layers (`lowbit.simulate.layers`) simulate the products with a weight. The other products of a
transformer — Q·Kᵀ and P·V in attention, or any ``x @ y`` of two activations — are torch
function calls made inside some module's forward. `OpSimulation` sees them with a
``torch.overrides.TorchFunctionMode`` that is active while the model runs (entered by the first
forward pre-hook of the model's modules, left by the matching forward hook, per thread), and
attributes every op to the innermost module whose forward runs it (a per-thread stack of module
names kept by hooks on every module). Each module has an `OpPlan`: role quantizers for
``attention`` (q, k, v, scores, probs, output) and ``matmul`` (a, b, output), and its ``grad``.

Attention, for every ``F.scaled_dot_product_attention`` call of a module with an attention plan::

    O = R_output( dropout( R_probs( softmax( R_scores( R_q(q) · R_k(k)ᵀ · scale ) + mask ) ) ) · R_v(v) )

in float32 arithmetic (float64 for float64 inputs), the result cast back to q's dtype. R_x is
the role's rounding (identity when the role is None). ``scale`` defaults to 1/√E; a boolean mask
(True = attend) or ``is_causal`` sets the masked scores to −inf before the softmax, a float mask
is added; a row with every key masked gives zeros (torch's rule); ``enable_gqa`` repeats each
key/value head for its group of query heads (after R_k/R_v); dropout (training only) is applied
to the rounded probabilities, as torch does (after softmax, before ·V). With only q/k/v roles
set, torch's own SDPA runs on the rounded operands. The output role's backward rounds the
incoming gradient to ``grad`` (straight through), as for layers.

Eager attention (transformers' ``eager`` BERT / GPT-2: ``s = matmul(q, kᵀ)``, scaled by ``*`` or
``/``, masked by ``+`` / ``where`` / ``masked_fill``, then ``softmax`` over the last axis,
optional dropout, ``matmul(p, v)``) is recognised inside one module's forward (steps run by its
child modules, e.g. ``nn.Dropout``, included): the product of two activations is remembered with
its operands; when the softmax of that chain arrives, the scores
are recomputed from R_q(q), R_k(k) with the same scale and mask steps (R_scores applied before the
first mask step), and the softmax returns R_probs(p); the next product with those probabilities
rounds the other operand with R_v and the result with R_output — the semantics above, so a config
gives the same result under ``sdpa`` and ``eager`` (to float32 round-off). Per-token roles act on
q, k and v with the head dimension last (kᵀ is transposed back for R_k).

Matmul, for ``torch.matmul`` / ``@`` / ``mm`` / ``bmm`` / ``baddbmm`` / two-operand ``einsum``
of two activations (no operand is a parameter with ≥ 2 dimensions, or a view of one — that is a
weight product, which layers simulate) in a module with a matmul plan that is not the
attention pattern above: ``R_output(R_a(a) ⋅ R_b(b))`` (``baddbmm``'s added input is not
rounded). Granularity acts on each operand as passed (its last axis).

Every op that ran in full precision is counted per module (`OpSimulation.fp32_ops`: products,
softmax, norms, attention, embeddings — elementwise ops are not listed), and products with a
weight matrix outside a supported simulated layer are counted apart (`escaped`).
"""

from __future__ import annotations

import math
import threading
import weakref
from typing import Any, Mapping

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

from lowbit.formats import NumberFormat, parse_format
from lowbit.simulate.layers import QuantLayerMixin, RoleQuantizer, _gradient_only, quant_class_for

__all__ = ["ATTENTION_ROLES", "MATMUL_ROLES", "OpPlan", "OpSimulation", "scaled_dot_product_attention",
           "as_role_quantizer"]

ATTENTION_ROLES = ("q", "k", "v", "scores", "probs", "output")
MATMUL_ROLES = ("a", "b", "output")

T = torch.Tensor


def _dynamo_disable(fn: Any) -> Any:
    """Keep torch.compile out of the hooks and the mode (it graph-breaks around them and runs them eagerly)."""
    try:
        return torch._dynamo.disable(fn)
    except Exception:  # pragma: no cover - torch without dynamo
        return fn


def as_role_quantizer(value: "RoleQuantizer | NumberFormat | str | None", where: str) -> "RoleQuantizer | None":
    """A `RoleQuantizer` from itself, a format or a spec string (None stays None)."""
    if value is None or isinstance(value, RoleQuantizer):
        return value
    if isinstance(value, (str, NumberFormat)):
        return RoleQuantizer(parse_format(value))
    raise TypeError(f"{where} must be a RoleQuantizer, a format spec string, a NumberFormat or None, "
                    f"got {type(value).__name__}")


class OpPlan:
    """The op-level role quantizers of one module: ``attention`` and ``matmul`` dicts and ``grad``."""

    def __init__(self, attention: "Mapping[str, RoleQuantizer] | None" = None,
                 matmul: "Mapping[str, RoleQuantizer] | None" = None, grad: "RoleQuantizer | None" = None):
        self.attention = dict(attention) if attention is not None else None
        self.matmul = dict(matmul) if matmul is not None else None
        self.grad = grad
        for roles, allowed, kind in ((self.attention, ATTENTION_ROLES, "attention"), (self.matmul, MATMUL_ROLES, "matmul")):
            bad = set(roles or ()) - set(allowed)
            if bad:
                raise ValueError(f"{kind} roles {sorted(bad)}; allowed: {', '.join(allowed)}")

    def __repr__(self) -> str:
        return f"OpPlan(attention={self.attention}, matmul={self.matmul}, grad={self.grad})"


# ---------------------------------------------------------------------- rounding helpers
def _r(q: "RoleQuantizer | None", x: T) -> T:
    return x if q is None else q(x)


def _finish(y: T, out: "RoleQuantizer | None", grad: "RoleQuantizer | None") -> T:
    if out is not None:
        return out(y, backward=grad)
    if grad is not None:
        return _gradient_only(y, grad)
    return y


def _r_key_t(q: "RoleQuantizer | None", kt: T) -> T:
    """R_k on kᵀ: rounded with the head dimension last (matters for per-token scales)."""
    if q is None:
        return kt
    return q(kt.transpose(-1, -2)).transpose(-1, -2)


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


_safe_softmax = getattr(torch, "_safe_softmax", None)


def _softmax_rows(s: T) -> T:
    """softmax over the last axis; a row with every score −inf gives zeros (torch's SDPA rule)."""
    if _safe_softmax is not None:
        return _safe_softmax(s, -1)
    p = torch.softmax(s, dim=-1)
    return torch.where(torch.isnan(p), torch.zeros_like(p), p)


def scaled_dot_product_attention(query: T, key: T, value: T, attn_mask: "T | None" = None, dropout_p: float = 0.0,
                                 is_causal: bool = False, scale: "float | None" = None, enable_gqa: bool = False,
                                 *, roles: "Mapping[str, Any] | None" = None, grad: Any = None) -> T:
    """``F.scaled_dot_product_attention`` with ``roles`` rounded at the points of the module docstring.

    ``roles``: ``{"q", "k", "v", "scores", "probs", "output"}`` → a format spec, a `NumberFormat`,
    a `RoleQuantizer` or None (full precision); ``grad``: the format of the gradient flowing
    back into the output (straight through).

    >>> import torch, lowbit as lb
    >>> q = k = v = torch.tensor([[[0.3, 1.1], [0.7, -0.2]]])
    >>> out = scaled_dot_product_attention(q, k, v, roles={"probs": "e4m3fn"})
    >>> p = lb.parse_format("e4m3fn").quantize(torch.softmax(q @ k.transpose(-1, -2) / 2 ** 0.5, -1))
    >>> torch.allclose(out, p @ v)
    True
    """
    roles = dict(roles or {})
    bad = set(roles) - set(ATTENTION_ROLES)
    if bad:
        raise ValueError(f"roles {sorted(bad)}; allowed: {', '.join(ATTENTION_ROLES)}")
    rq = {r: as_role_quantizer(v, f"roles[{r!r}]") for r, v in roles.items()}
    return _attention(query, key, value, attn_mask, dropout_p, is_causal, scale, enable_gqa, rq,
                      as_role_quantizer(grad, "grad"))


def _attention(query: T, key: T, value: T, attn_mask: "T | None", dropout_p: float, is_causal: bool,
               scale: "float | None", enable_gqa: bool, roles: "Mapping[str, RoleQuantizer | None]",
               grad: "RoleQuantizer | None", return_probs: bool = False) -> Any:
    """The attention of the module docstring; with ``return_probs``, (output, probabilities after
    R_probs and dropout) — the attention weights ``nn.MultiheadAttention`` returns."""
    g = roles.get
    if not isinstance(dropout_p, (int, float)) or not 0.0 <= float(dropout_p) <= 1.0:
        raise ValueError(f"dropout_p={dropout_p!r}; allowed: a number in [0, 1]")
    if is_causal and attn_mask is not None:
        raise ValueError("scaled_dot_product_attention: give either attn_mask or is_causal=True, not both "
                         "(as torch)")
    q, k, v = _r(g("q"), query), _r(g("k"), key), _r(g("v"), value)
    if g("scores") is None and g("probs") is None and not return_probs:  # operands only: torch's own SDPA on them
        kwargs = {"enable_gqa": True} if enable_gqa else {}
        y = F.scaled_dot_product_attention(q, k, v, attn_mask, dropout_p, is_causal, scale=scale, **kwargs)
        return _finish(y, g("output"), grad)
    cdt = _compute_dtype(query.dtype)
    q, k, v = q.to(cdt), k.to(cdt), v.to(cdt)
    if enable_gqa:
        hq, hk = q.size(-3), k.size(-3)
        if hq % hk or v.size(-3) != hk:
            raise ValueError(f"enable_gqa: query heads ({hq}) must be a multiple of key/value heads ({hk}, {v.size(-3)})")
        k = k.repeat_interleave(hq // hk, dim=-3)
        v = v.repeat_interleave(hq // hk, dim=-3)
    L, S = q.size(-2), k.size(-2)
    factor = 1.0 / math.sqrt(q.size(-1)) if scale is None else float(scale)
    s = _r(g("scores"), (q @ k.transpose(-2, -1)) * factor)
    if is_causal:
        keep = torch.ones(L, S, dtype=torch.bool, device=q.device).tril(diagonal=0)
        s = s.masked_fill(~keep, float("-inf"))
    elif attn_mask is not None:
        if attn_mask.dtype == torch.bool:
            s = s.masked_fill(~attn_mask, float("-inf"))
        else:
            s = s + attn_mask.to(cdt)
    p = _r(g("probs"), _softmax_rows(s))
    if dropout_p > 0.0:
        p = F.dropout(p, float(dropout_p), training=True)
    y = _finish((p @ v).to(query.dtype), g("output"), grad)
    return (y, p.to(query.dtype)) if return_probs else y


# ---------------------------------------------------------------------- op tables
def _names(pairs: "list[tuple[Any, str]]") -> "dict[Any, str]":
    return {f: n for f, n in pairs if f is not None}


_PRODUCTS = _names([(torch.matmul, "matmul"), (T.matmul, "matmul"), (T.__matmul__, "matmul"),
                    (T.__rmatmul__, "matmul"), (torch.mm, "mm"), (T.mm, "mm"), (torch.bmm, "bmm"),
                    (T.bmm, "bmm"), (torch.baddbmm, "baddbmm"), (T.baddbmm, "baddbmm"),
                    (torch.einsum, "einsum")])
#: products the eager-attention recogniser follows (plain two-operand products)
_ATTN_PRODUCTS = {torch.matmul, T.matmul, T.__matmul__, torch.bmm, T.bmm}
_LAYER_OPS = _names([(F.linear, "linear"), (torch.addmm, "addmm"), (T.addmm, "addmm"), (F.conv1d, "conv1d"),
                     (F.conv2d, "conv2d"), (F.conv3d, "conv3d"), (F.conv_transpose1d, "conv_transpose1d"),
                     (F.conv_transpose2d, "conv_transpose2d"), (F.conv_transpose3d, "conv_transpose3d"),
                     (F.embedding, "embedding")])
_SOFTMAX = {F.softmax, torch.softmax, T.softmax}
_COUNTED = _names([(F.softmax, "softmax"), (torch.softmax, "softmax"), (T.softmax, "softmax"),
                   (F.log_softmax, "log_softmax"), (torch.log_softmax, "log_softmax"), (T.log_softmax, "log_softmax"),
                   (F.layer_norm, "layer_norm"), (F.group_norm, "group_norm"), (F.batch_norm, "batch_norm"),
                   (getattr(F, "rms_norm", None), "rms_norm"), (F.instance_norm, "instance_norm")])
_SDPA = F.scaled_dot_product_attention
_MHA = F.multi_head_attention_forward
_SCALE_STEPS = {T.__mul__, T.__rmul__, T.mul, torch.mul, T.__truediv__, T.div, torch.div, T.__imul__, T.__itruediv__,
                T.mul_, T.div_}
_MASK_STEPS = {T.__add__, T.__radd__, T.add, torch.add, T.__iadd__, T.add_, T.__sub__, T.sub, torch.sub,
               torch.where, T.masked_fill, T.masked_fill_, T.where}
_NEUTRAL_STEPS = {T.to, T.type, T.float, T.contiguous, T.clone, T.type_as}
_DROPOUT = {F.dropout, torch.dropout}


def _is_weight(t: Any) -> bool:
    """A parameter with ≥ 2 dimensions, or a view of one (``w.t()``)."""
    if not isinstance(t, torch.Tensor) or t.dim() < 2:
        return False
    return isinstance(t, nn.Parameter) or isinstance(t._base, nn.Parameter)


def _operands(func: Any, args: "tuple[Any, ...]", kwargs: "dict[str, Any]") -> "tuple[Any, Any] | None":
    """The two multiplied operands of a product call (None when it is not a two-operand product)."""
    if func is torch.einsum:
        ops = args[1:]
        if len(ops) == 1 and isinstance(ops[0], (list, tuple)):
            ops = tuple(ops[0])
        return (ops[0], ops[1]) if len(ops) == 2 else None
    if func in (torch.baddbmm, T.baddbmm):
        a = args[1] if len(args) > 1 else kwargs.get("batch1")
        b = args[2] if len(args) > 2 else kwargs.get("batch2")
        return a, b
    if func is T.__rmatmul__:
        return args[1], args[0]
    a = args[0] if args else kwargs.get("input")
    b = args[1] if len(args) > 1 else kwargs.get("other", kwargs.get("mat2"))
    return a, b


def _call_product(func: Any, args: "tuple[Any, ...]", kwargs: "dict[str, Any]", a: T, b: T) -> T:
    """``func`` with its two operands replaced by ``a``, ``b``."""
    if func is torch.einsum:
        return torch.einsum(args[0], a, b)
    if func in (torch.baddbmm, T.baddbmm):
        rest = {k: v for k, v in kwargs.items() if k not in ("batch1", "batch2")}
        return torch.baddbmm(args[0] if args else kwargs["input"], a, b, **{k: v for k, v in rest.items() if k != "input"})
    return torch.matmul(a, b) if func in (torch.matmul, T.matmul, T.__matmul__, T.__rmatmul__) else \
        (torch.mm(a, b) if func in (torch.mm, T.mm) else torch.bmm(a, b))


# ---------------------------------------------------------------------- per-thread state
class _Chain:
    """An activation product that may be attention scores: its operands and the steps taken since."""

    __slots__ = ("a", "b", "steps", "probs", "resolved", "name", "matmul_done")

    def __init__(self, a: T, b: T, name: str, matmul_done: bool) -> None:
        self.a, self.b, self.name = a, b, name
        self.steps: list[tuple[Any, tuple[Any, ...], dict[str, Any], int]] = []
        self.probs = False
        self.resolved = False
        self.matmul_done = matmul_done  # already simulated by a matmul plan (not counted as FP32)

    def extend(self) -> "_Chain":
        c = _Chain(self.a, self.b, self.name, self.matmul_done)
        c.steps = list(self.steps)
        c.probs = self.probs
        return c


class _Frame:
    __slots__ = ("name", "module", "plan", "tags", "chains")

    def __init__(self, name: str, module: nn.Module, plan: "OpPlan | None") -> None:
        self.name, self.module, self.plan = name, module, plan
        self.tags: dict[int, tuple[Any, _Chain]] = {}
        self.chains: list[_Chain] = []

    def tag(self, t: Any, chain: _Chain) -> None:
        if isinstance(t, torch.Tensor):
            self.tags[id(t)] = (weakref.ref(t), chain)

    def chain_of(self, t: Any) -> "_Chain | None":
        if not isinstance(t, torch.Tensor):
            return None
        hit = self.tags.get(id(t))
        if hit is None or hit[0]() is not t:
            return None
        return hit[1]


def _owner(stack: "list[_Frame]", t: Any) -> "_Frame | None":
    """The innermost frame on the stack that tagged tensor ``t`` (None: not a tracked tensor)."""
    for frame in reversed(stack):
        if frame.tags and frame.chain_of(t) is not None:
            return frame
    return None


class _Mode(TorchFunctionMode):
    def __init__(self, sim: "OpSimulation", local: Any) -> None:
        super().__init__()
        self.sim, self.local = sim, local

    @_dynamo_disable
    def __torch_function__(self, func: Any, types: Any, args: "tuple[Any, ...]" = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        stack = self.local.stack
        if not stack:
            return func(*args, **kwargs)
        return self.sim._dispatch(stack, func, args, kwargs)


_SITE = "_lowbit_op_site"  # module attribute: (OpSimulation, module name); deep copies carry it along
_GLOBAL_HOOKS: "list[Any]" = []
_GLOBAL_LOCK = threading.Lock()
_LIVE: "weakref.WeakSet[OpSimulation]" = weakref.WeakSet()


@_dynamo_disable
def _pre_hook(module: nn.Module, args: Any) -> None:
    site = module.__dict__.get(_SITE)
    if site is not None:
        site[0]._enter(site[1], module)


@_dynamo_disable
def _post_hook(module: nn.Module, args: Any, output: Any) -> None:
    site = module.__dict__.get(_SITE)
    if site is not None:
        site[0]._leave(site[1])


def _ensure_global_hooks(sim: "OpSimulation") -> None:
    """One pair of global module hooks (torch's ``register_module_forward_*_hook``) serves every
    installed model: modules without a site attribute return at once; modules' own hook dicts stay
    untouched. The hooks go away when the last installed simulation is removed or collected."""
    with _GLOBAL_LOCK:
        _LIVE.add(sim)
        weakref.finalize(sim, _drop_global_hooks)
        if not _GLOBAL_HOOKS:
            from torch.nn.modules.module import register_module_forward_hook, register_module_forward_pre_hook

            _GLOBAL_HOOKS.append(register_module_forward_pre_hook(_pre_hook))
            _GLOBAL_HOOKS.append(register_module_forward_hook(_post_hook, always_call=True))


def _drop_global_hooks() -> None:
    with _GLOBAL_LOCK:
        if len(_LIVE) == 0:
            for h in _GLOBAL_HOOKS:
                h.remove()
            _GLOBAL_HOOKS.clear()


class OpSimulation:
    """Op-level simulation installed on a model (see the module docstring).

    ``plans``: ``{module name: OpPlan}`` (modules not listed run their ops in full precision and
    are only counted). `install` (model) marks the model's modules; `remove` (model) unmarks them. ``fp32_ops`` and
    ``escaped``: ``{module name: {op: count}}`` accumulated over the forwards since install.

    >>> import torch, lowbit as lb
    >>> class Scores(torch.nn.Module):
    ...     def forward(self, x):
    ...         return torch.softmax(x @ x.transpose(-1, -2), -1)
    >>> model = torch.nn.Sequential(Scores())
    >>> sim = OpSimulation({}).install(model)
    >>> _ = model(torch.ones(2, 3))
    >>> sim.fp32_ops
    {'0': {'matmul': 1, 'softmax': 1}}
    >>> sim.remove(model)
    """

    def __init__(self, plans: "Mapping[str, OpPlan]") -> None:
        self.plans = dict(plans)
        self.fp32_ops: dict[str, dict[str, int]] = {}
        self.escaped: dict[str, dict[str, int]] = {}
        self._lock = threading.Lock()
        self._local = threading.local()

    # -------------------------------------------------------------- pickling / deepcopy
    def __getstate__(self) -> "dict[str, Any]":
        state = dict(self.__dict__)
        for k in ("_local", "_lock"):
            state.pop(k)
        return state

    def __setstate__(self, state: "dict[str, Any]") -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()
        self._local = threading.local()
        _ensure_global_hooks(self)  # a copy (deepcopy, pickle) of an installed model simulates too

    # -------------------------------------------------------------- hooks
    def install(self, model: nn.Module) -> "OpSimulation":
        """Mark every module of ``model`` as a site of this simulation (the global forward hooks
        then keep the module stack and the mode for it); returns self."""
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        for name, module in model.named_modules():
            module.__dict__[_SITE] = (self, name)
        _ensure_global_hooks(self)
        return self

    def remove(self, model: nn.Module) -> None:
        """Unmark ``model``'s modules: their ops run untouched again."""
        for module in model.modules():
            site = module.__dict__.get(_SITE)
            if site is not None and site[0] is self:
                del module.__dict__[_SITE]
        with _GLOBAL_LOCK:
            _LIVE.discard(self)
        _drop_global_hooks()

    def _tls(self) -> Any:
        loc = self._local
        if not hasattr(loc, "stack"):
            loc.stack = []
            loc.mode = None
        return loc

    def _enter(self, name: str, module: nn.Module) -> None:
        loc = self._tls()
        if not loc.stack:
            mode = _Mode(self, loc)
            mode.__enter__()
            loc.mode = mode
        loc.stack.append(_Frame(name, module, self.plans.get(name)))

    def _leave(self, name: str) -> None:
        loc = self._tls()
        if not loc.stack:
            return
        frame = loc.stack.pop()
        for chain in frame.chains:  # products that did not turn out to be attention: full precision
            if not chain.resolved and not chain.matmul_done:
                self._count(self.fp32_ops, frame.name, chain.name)
        if not loc.stack and loc.mode is not None:
            mode, loc.mode = loc.mode, None
            mode.__exit__(None, None, None)

    # -------------------------------------------------------------- counting
    def _count(self, table: "dict[str, dict[str, int]]", name: str, op: str) -> None:
        key = name or "<model>"
        with self._lock:
            row = table.setdefault(key, {})
            row[op] = row.get(op, 0) + 1

    def _in_simulated_layer(self, frame: _Frame) -> bool:
        return isinstance(frame.module, QuantLayerMixin)

    def _weight_product(self, frame: _Frame, op: str) -> None:
        """A product with a weight matrix: a simulated layer's own op, or full precision (escaped
        unless the module is a supported layer type left in full precision on purpose)."""
        if self._in_simulated_layer(frame):
            return
        self._count(self.fp32_ops, frame.name, op)
        if quant_class_for(type(frame.module)) is None:
            self._count(self.escaped, frame.name, op)

    # -------------------------------------------------------------- dispatch
    def _dispatch(self, stack: "list[_Frame]", func: Any, args: "tuple[Any, ...]", kwargs: "dict[str, Any]") -> Any:
        frame = stack[-1]
        if func in _PRODUCTS:
            return self._product(stack, func, args, kwargs)
        if any(f.tags for f in stack):  # a step of a possible attention (also in a child: nn.Dropout, nn.Softmax)
            for i, a in enumerate(args):
                owner = _owner(stack, a)
                if owner is not None:
                    return self._chain_step(owner, frame, func, args, kwargs, i)
        if func is _SDPA:
            return self._sdpa(frame, args, kwargs)
        if func in _LAYER_OPS:
            name = _LAYER_OPS[func]
            w = args[1] if len(args) > 1 else kwargs.get("weight")
            if func in (torch.addmm, T.addmm):
                w = args[2] if len(args) > 2 else kwargs.get("mat2")
            if _is_weight(w) and name != "embedding":
                self._weight_product(frame, name)
            elif not self._in_simulated_layer(frame):
                self._count(self.fp32_ops, frame.name, name)
            return func(*args, **kwargs)
        if func is _MHA:
            return self._mha(frame, args, kwargs)
        if func in _COUNTED:
            self._count(self.fp32_ops, frame.name, _COUNTED[func])
        return func(*args, **kwargs)

    def _product(self, stack: "list[_Frame]", func: Any, args: "tuple[Any, ...]", kwargs: "dict[str, Any]") -> Any:
        frame = stack[-1]
        name = _PRODUCTS[func]
        ops = _operands(func, args, kwargs)
        if ops is None or not all(isinstance(t, torch.Tensor) for t in ops):
            self._count(self.fp32_ops, frame.name, name)
            return func(*args, **kwargs)
        a, b = ops
        if _is_weight(a) or _is_weight(b):
            self._weight_product(frame, name)
            return func(*args, **kwargs)
        plan = frame.plan
        attention = plan.attention if plan is not None else None
        owner = _owner(stack, a) if func in _ATTN_PRODUCTS else None
        probs = owner.chain_of(a) if owner is not None else None
        if owner is not None and owner.plan is not None and owner.plan.attention is not None and probs.probs:
            probs.resolved = True  # P · V of a recognised attention
            y = func(a, _r(owner.plan.attention.get("v"), b))
            return _finish(y, owner.plan.attention.get("output"), owner.plan.grad)
        matmul = plan.matmul if plan is not None else None
        if matmul is not None:
            y = _call_product(func, args, kwargs, _r(matmul.get("a"), a), _r(matmul.get("b"), b))
            y = _finish(y, matmul.get("output"), plan.grad)
        else:
            y = func(*args, **kwargs)
        if attention is not None and func in _ATTN_PRODUCTS and a.dim() >= 2 and b.dim() >= 2:
            chain = _Chain(a, b, name, matmul is not None)  # may be attention scores: decided at the softmax
            frame.chains.append(chain)
            frame.tag(y, chain)
        elif matmul is None:
            self._count(self.fp32_ops, frame.name, name)
        return y

    def _chain_step(self, frame: _Frame, current: _Frame, func: Any, args: "tuple[Any, ...]",
                    kwargs: "dict[str, Any]", pos: int) -> Any:
        """An op on a tracked tensor of ``frame`` (the module that made the product), run in ``current``."""
        chain = frame.chain_of(args[pos])
        assert chain is not None
        y = None
        if chain.probs:
            y = func(*args, **kwargs)
            if func in _DROPOUT or func in _NEUTRAL_STEPS:
                frame.tag(y, chain)
            return y
        if func in _SOFTMAX:
            dim = args[1] if len(args) > 1 else kwargs.get("dim")
            x = args[pos]
            if pos == 0 and dim is not None and dim in (-1, x.dim() - 1):
                return self._eager_attention(frame, chain, func, args, kwargs)
        if func in _SCALE_STEPS or func in _MASK_STEPS or func in _NEUTRAL_STEPS:
            y = func(*args, **kwargs)
            nxt = chain.extend()
            nxt.steps.append((func, args, kwargs, pos))
            frame.tag(y, nxt)
            frame.chains.append(nxt)
            chain.resolved = True  # its count moves to the extended chain
            return y
        return self._dispatch_untagged(current, func, args, kwargs)

    def _dispatch_untagged(self, frame: _Frame, func: Any, args: "tuple[Any, ...]", kwargs: "dict[str, Any]") -> Any:
        if func in _COUNTED:
            self._count(self.fp32_ops, frame.name, _COUNTED[func])
        return func(*args, **kwargs)

    def _eager_attention(self, frame: _Frame, chain: _Chain, func: Any, args: "tuple[Any, ...]",
                         kwargs: "dict[str, Any]") -> T:
        """Recompute a recognised score chain from rounded operands; the softmax returns R_probs(p)."""
        plan = frame.plan
        assert plan is not None and plan.attention is not None
        g = plan.attention.get
        chain.resolved = True
        s = torch.matmul(_r(g("q"), chain.a), _r_key_t(g("k"), chain.b))
        scored = False
        for step, sargs, skw, pos in chain.steps:
            if step in _MASK_STEPS and not scored:
                s, scored = _r(g("scores"), s), True
            new = list(sargs)
            new[pos] = s
            s = step(*new, **skw)
        if not scored:
            s = _r(g("scores"), s)
        new = list(args)
        new[0] = s
        p = _r(g("probs"), func(*new, **kwargs))
        probs = chain.extend()
        probs.probs, probs.resolved = True, True
        frame.tag(p, probs)
        return p

    def _sdpa(self, frame: _Frame, args: "tuple[Any, ...]", kwargs: "dict[str, Any]") -> Any:
        plan = frame.plan
        if plan is None or plan.attention is None:
            self._count(self.fp32_ops, frame.name, "scaled_dot_product_attention")
            return _SDPA(*args, **kwargs)
        names = ("query", "key", "value", "attn_mask", "dropout_p", "is_causal", "scale")
        bound = dict(zip(names, args))
        bound.update(kwargs)
        return _attention(bound["query"], bound["key"], bound["value"], bound.get("attn_mask"),
                          bound.get("dropout_p", 0.0), bound.get("is_causal", False), bound.get("scale"),
                          bound.get("enable_gqa", False), plan.attention, plan.grad)

    def _mha(self, frame: _Frame, args: "tuple[Any, ...]", kwargs: "dict[str, Any]") -> Any:
        plan = frame.plan
        if plan is None or plan.attention is None:
            self._count(self.fp32_ops, frame.name, "multi_head_attention_forward")
            return _MHA(*args, **kwargs)
        from lowbit.simulate.attention import multi_head_attention_forward

        def attend(q: T, k: T, v: T, mask: "T | None", dropout_p: float, is_causal: bool, need_weights: bool) -> Any:
            return _attention(q, k, v, mask, dropout_p, is_causal, None, False, plan.attention, plan.grad,
                              return_probs=need_weights)

        return multi_head_attention_forward(attend, *args, **kwargs)


