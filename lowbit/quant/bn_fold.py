"""Fold BatchNorm into the preceding convolution / linear layer (before weight quantization).

In eval mode a BatchNorm is an affine map per channel, y = γ (z − μ) / √(σ² + ε) + β, so after
a layer z = W x + b it can be absorbed into that layer:

    W' = W · γ / √(σ² + ε)   (per output channel)      b' = (b − μ) · γ / √(σ² + ε) + β

and the BatchNorm replaced by ``nn.Identity``. Deployment quantizes W', so folding must come
before weight quantization.

**Not exact.** The folded layer rounds W' and b' to the parameter dtype and then computes one
convolution, where the unfolded model rounds the convolution's output and then the BN's
subtraction, division and multiply-add. The two differ by a few ulps of the values involved: in
float32, a relative error of order 1e-6 of the output magnitude (tests check 1e-5 relative to
max |y|; in float64 the same check holds at 1e-12). The folded parameters are computed in
float64 and rounded once.

Which pairs are folded (`find_foldable`):

1. inside every ``nn.Sequential``, a BatchNorm1d/2d/3d directly after a Linear / Conv1d / Conv2d /
   Conv3d (float or simulated by `lowbit.quantize_`) with matching channel count;
2. then, for models that are not plain Sequentials, pairs found by ``torch.fx`` symbolic tracing
   (Linear/Conv/BN treated as leaves): a BN ``call_module`` whose only input is a conv/linear
   ``call_module`` whose output has no other user.

Limits: a model that ``torch.fx`` cannot trace (data-dependent control flow) only gets the
Sequential pairs; ConvTranspose layers, BNs without running statistics
(``track_running_stats=False``), layers or BNs shared between several call sites, and a
conv output that also feeds something else are left alone. ``strict=True`` raises if any
BatchNorm is left unfolded. The folded model matches the *eval-mode* model; folding does not
change ``model.training``.

>>> import torch
>>> from torch import nn
>>> torch.manual_seed(0)  # doctest: +ELLIPSIS
<torch._C.Generator object at ...>
>>> model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU()).eval()
>>> model[1].running_mean.uniform_(-1, 1); model[1].running_var.uniform_(0.5, 2)  # doctest: +ELLIPSIS
tensor(...)
tensor(...)
>>> x = torch.randn(2, 3, 8, 8)
>>> folded = fold_batchnorm(model)
>>> [type(m).__name__ for m in folded], [type(m).__name__ for m in model]
(['Conv2d', 'Identity', 'ReLU'], ['Conv2d', 'BatchNorm2d', 'ReLU'])
>>> bool((folded(x) - model(x)).abs().max() <= 1e-5 * model(x).abs().max())
True
"""

from __future__ import annotations

import copy

import torch
import torch.fx
from torch import nn

__all__ = ["FOLDABLE_LAYERS", "find_foldable", "fold_batchnorm", "fold_bn_into"]

#: layer types a following BatchNorm can be folded into, with the BN class that matches each
FOLDABLE_LAYERS: "tuple[tuple[type[nn.Module], tuple[type[nn.Module], ...]], ...]" = (
    (nn.Linear, (nn.BatchNorm1d,)),
    (nn.Conv1d, (nn.BatchNorm1d,)),
    (nn.Conv2d, (nn.BatchNorm2d,)),
    (nn.Conv3d, (nn.BatchNorm3d,)),
)
_BN = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


def _out_channels(layer: nn.Module) -> int:
    return layer.out_features if isinstance(layer, nn.Linear) else layer.out_channels  # type: ignore[return-value]


def _compatible(layer: nn.Module, bn: nn.Module) -> bool:
    if not isinstance(bn, _BN) or bn.running_mean is None or bn.running_var is None:
        return False
    for cls, bns in FOLDABLE_LAYERS:
        if isinstance(layer, cls):
            return isinstance(bn, bns) and bn.num_features == _out_channels(layer)
    return False


def fold_bn_into(layer: nn.Module, bn: nn.Module) -> None:
    """Fold ``bn``'s eval-mode affine map into ``layer``'s weight and bias, in place.

    The weight keeps its Parameter object (its values are overwritten); a missing bias becomes
    a new Parameter. ``bn`` itself is not modified (replace it with ``nn.Identity``).
    """
    if not _compatible(layer, bn):
        raise ValueError(f"cannot fold {type(bn).__name__} into {type(layer).__name__}: need a Linear/Conv1d/2d/3d "
                         f"followed by the matching BatchNorm with running statistics and "
                         f"num_features == output channels")
    assert isinstance(bn, _BN) and bn.running_mean is not None and bn.running_var is not None
    # a simulated layer's .weight / .bias are the quantized values: fold into the Parameters themselves
    params = layer._parameters
    w = params["weight"]
    dtype = w.dtype
    mean = bn.running_mean.detach().to(torch.float64)
    inv_std = torch.rsqrt(bn.running_var.detach().to(torch.float64) + bn.eps)
    gamma = bn.weight.detach().to(torch.float64) if bn.weight is not None else torch.ones_like(mean)
    beta = bn.bias.detach().to(torch.float64) if bn.bias is not None else torch.zeros_like(mean)
    factor = gamma * inv_std
    shape = (-1,) + (1,) * (w.dim() - 1)
    bias = params.get("bias")
    b = bias.detach().to(torch.float64) if bias is not None else torch.zeros_like(mean)
    with torch.no_grad():
        w.copy_((w.detach().to(torch.float64) * factor.reshape(shape)).to(dtype))
        new_b = ((b - mean) * factor + beta).to(dtype=dtype, device=w.device)
        if bias is not None:
            bias.copy_(new_b)
        else:
            layer.bias = nn.Parameter(new_b)


def _duplicated(model: nn.Module) -> "set[int]":
    seen: dict[int, int] = {}
    for _, m in model.named_modules(remove_duplicate=False):
        seen[id(m)] = seen.get(id(m), 0) + 1
    return {k for k, v in seen.items() if v > 1}


def _sequential_pairs(model: nn.Module, shared: "set[int]") -> "list[tuple[str, str]]":
    pairs = []
    for prefix, seq in model.named_modules():
        if not isinstance(seq, nn.Sequential):
            continue
        names = list(seq._modules)
        for a, b in zip(names, names[1:]):
            layer, bn = seq._modules[a], seq._modules[b]
            if layer is None or bn is None or id(layer) in shared or id(bn) in shared:
                continue
            if _compatible(layer, bn):
                join = f"{prefix}." if prefix else ""
                pairs.append((join + a, join + b))
    return pairs


class _LeafTracer(torch.fx.Tracer):
    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        if isinstance(m, _BN) or any(isinstance(m, cls) for cls, _ in FOLDABLE_LAYERS):
            return True
        return super().is_leaf_module(m, qualname)


def _fx_pairs(model: nn.Module, shared: "set[int]", done: "set[str]") -> "list[tuple[str, str]]":
    try:
        graph = _LeafTracer().trace(model)
    except Exception:  # noqa: BLE001 - any tracing failure means: no fx pairs (documented limit)
        return []
    calls: dict[str, int] = {}
    for node in graph.nodes:
        if node.op == "call_module":
            calls[str(node.target)] = calls.get(str(node.target), 0) + 1
    pairs = []
    for node in graph.nodes:
        if node.op != "call_module" or len(node.all_input_nodes) != 1:
            continue
        src = node.all_input_nodes[0]
        if src.op != "call_module" or len(src.users) != 1 or len(node.args) != 1 or node.kwargs:
            continue
        bn_name, layer_name = str(node.target), str(src.target)
        if bn_name in done or layer_name in done or calls[bn_name] != 1 or calls[layer_name] != 1:
            continue
        bn, layer = model.get_submodule(bn_name), model.get_submodule(layer_name)
        if id(bn) in shared or id(layer) in shared or not _compatible(layer, bn):
            continue
        pairs.append((layer_name, bn_name))
    return pairs


def find_foldable(model: nn.Module, use_fx: bool = True) -> "list[tuple[str, str]]":
    """``[(layer name, batchnorm name), ...]`` that `fold_batchnorm` would fold (module docstring).

    >>> find_foldable(nn.Sequential(nn.Linear(2, 3), nn.BatchNorm1d(3), nn.Linear(3, 1)))
    [('0', '1')]
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    shared = _duplicated(model)
    pairs = _sequential_pairs(model, shared)
    if use_fx:
        done = {n for p in pairs for n in p}
        pairs += _fx_pairs(model, shared, done)
    return pairs


def _set_submodule(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)


def fold_batchnorm(model: nn.Module, inplace: bool = False, use_fx: bool = True, strict: bool = False) -> nn.Module:
    """Fold every foldable BatchNorm into its preceding layer; returns the folded model.

    ``inplace=False`` (default) folds a deep copy and leaves ``model`` untouched; ``inplace=True``
    modifies and returns ``model``. ``use_fx=False`` folds Sequential pairs only. ``strict=True``
    raises ValueError when some BatchNorm1d/2d/3d remains unfolded. See the module docstring for
    what is folded, and why the result matches the eval-mode model only to float rounding.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    target = model if inplace else copy.deepcopy(model)
    pairs = find_foldable(target, use_fx)
    for layer_name, bn_name in pairs:
        fold_bn_into(target.get_submodule(layer_name), target.get_submodule(bn_name))
        _set_submodule(target, bn_name, nn.Identity())
    if strict:
        left = [n for n, m in target.named_modules() if isinstance(m, _BN)]
        if left:
            raise ValueError(f"fold_batchnorm(strict=True): BatchNorm layer(s) left unfolded: {', '.join(left)} "
                             f"(each must directly follow a Linear/Conv1d/2d/3d whose output feeds only it)")
    return target
