"""``F.multi_head_attention_forward`` with its attention step replaced (op-level simulation).

`multi_head_attention_forward` does what torch's function does — input projections, bias_k /
bias_v, add_zero_attn, static keys / values, key padding and attention masks merged, output
projection, averaged attention weights — except that the attention itself,
``softmax(q·kᵀ/√E + mask)·v``, is computed by ``attend(q, k, v, mask, dropout_p, is_causal,
need_weights)`` (`lowbit.simulate.ops` passes its rounding attention). Shapes inside: q
``[batch, heads, L, E]``, k / v ``[batch, heads, S, E]``; ``attend`` returns the output
``[batch, heads, L, E]``, and with ``need_weights`` also the probabilities ``[batch, heads, L, S]``.
The projections are torch's own (``F.linear``): the module's weights are read as passed.
"""

from __future__ import annotations

import inspect
from typing import Any, Callable

import torch
import torch.nn.functional as F

__all__ = ["multi_head_attention_forward"]

_SIGNATURE = inspect.signature(F.multi_head_attention_forward)

Attend = Callable[..., Any]


def multi_head_attention_forward(attend: Attend, *args: Any, **kwargs: Any) -> "tuple[torch.Tensor, torch.Tensor | None]":
    """Torch's multi-head attention forward (same arguments) with ``attend`` as its attention."""
    a = _SIGNATURE.bind(*args, **kwargs)
    a.apply_defaults()
    p = a.arguments
    query, key, value = p["query"], p["key"], p["value"]
    num_heads, need_weights = p["num_heads"], p["need_weights"]
    key_padding_mask, attn_mask, is_causal = p["key_padding_mask"], p["attn_mask"], p["is_causal"]
    is_batched = F._mha_shape_check(query, key, value, key_padding_mask, attn_mask, num_heads)
    if not is_batched:
        query, key, value = query.unsqueeze(1), key.unsqueeze(1), value.unsqueeze(1)
        if key_padding_mask is not None:
            key_padding_mask = key_padding_mask.unsqueeze(0)
    tgt_len, bsz, embed_dim = query.shape
    key_padding_mask = F._canonical_mask(mask=key_padding_mask, mask_name="key_padding_mask",
                                         other_type=F._none_or_dtype(attn_mask), other_name="attn_mask",
                                         target_type=query.dtype)
    if is_causal and attn_mask is None:
        raise RuntimeError("Need attn_mask if specifying the is_causal hint (as torch)")
    if is_causal and key_padding_mask is None and not need_weights:
        attn_mask = None
    else:
        attn_mask = F._canonical_mask(mask=attn_mask, mask_name="attn_mask", other_type=None, other_name="",
                                      target_type=query.dtype, check_other=False)
        is_causal = False if key_padding_mask is not None or need_weights else is_causal
        if need_weights:
            is_causal = False
    if embed_dim != p["embed_dim_to_check"]:
        raise ValueError(f"was expecting embedding dimension of {p['embed_dim_to_check']}, but got {embed_dim}")
    head_dim = embed_dim // num_heads
    if head_dim * num_heads != embed_dim:
        raise ValueError(f"embed_dim {embed_dim} not divisible by num_heads {num_heads}")
    if not p["use_separate_proj_weight"]:
        q, k, v = F._in_projection_packed(query, key, value, p["in_proj_weight"], p["in_proj_bias"])
    else:
        b = p["in_proj_bias"]
        bq, bk, bv = (None, None, None) if b is None else b.chunk(3)
        q, k, v = F._in_projection(query, key, value, p["q_proj_weight"], p["k_proj_weight"], p["v_proj_weight"],
                                   bq, bk, bv)
    if attn_mask is not None and attn_mask.dim() == 2:
        if attn_mask.shape != (tgt_len, key.shape[0]):
            raise RuntimeError(f"The shape of the 2D attn_mask is {attn_mask.shape}, but should be "
                               f"{(tgt_len, key.shape[0])}.")
        attn_mask = attn_mask.unsqueeze(0)
    elif attn_mask is not None and attn_mask.dim() != 3:
        raise RuntimeError(f"attn_mask's dimension {attn_mask.dim()} is not supported")
    bias_k, bias_v = p["bias_k"], p["bias_v"]
    if bias_k is not None and bias_v is not None:
        k = torch.cat([k, bias_k.repeat(1, bsz, 1)])
        v = torch.cat([v, bias_v.repeat(1, bsz, 1)])
        if attn_mask is not None:
            attn_mask = F.pad(attn_mask, (0, 1))
        if key_padding_mask is not None:
            key_padding_mask = F.pad(key_padding_mask, (0, 1))
    q = q.view(tgt_len, bsz * num_heads, head_dim).transpose(0, 1)
    k = (k.view(k.shape[0], bsz * num_heads, head_dim).transpose(0, 1) if p["static_k"] is None else p["static_k"])
    v = (v.view(v.shape[0], bsz * num_heads, head_dim).transpose(0, 1) if p["static_v"] is None else p["static_v"])
    if p["add_zero_attn"]:
        zeros = (bsz * num_heads, 1, head_dim)
        k = torch.cat([k, torch.zeros(zeros, dtype=k.dtype, device=k.device)], dim=1)
        v = torch.cat([v, torch.zeros(zeros, dtype=v.dtype, device=v.device)], dim=1)
        if attn_mask is not None:
            attn_mask = F.pad(attn_mask, (0, 1))
        if key_padding_mask is not None:
            key_padding_mask = F.pad(key_padding_mask, (0, 1))
    src_len = k.size(1)
    if key_padding_mask is not None:
        key_padding_mask = (key_padding_mask.view(bsz, 1, 1, src_len).expand(-1, num_heads, -1, -1)
                            .reshape(bsz * num_heads, 1, src_len))
        attn_mask = key_padding_mask if attn_mask is None else attn_mask + key_padding_mask
    dropout_p = p["dropout_p"] if p["training"] else 0.0
    if attn_mask is not None:
        attn_mask = (attn_mask.unsqueeze(0) if attn_mask.size(0) == 1 and attn_mask.dim() == 3
                     else attn_mask.view(bsz, num_heads, -1, src_len))
    q = q.view(bsz, num_heads, tgt_len, head_dim)
    k = k.view(bsz, num_heads, src_len, head_dim)
    v = v.view(bsz, num_heads, src_len, head_dim)
    result = attend(q, k, v, attn_mask, dropout_p, is_causal, need_weights)
    out, weights = result if need_weights else (result, None)
    out = out.permute(2, 0, 1, 3).reshape(bsz * tgt_len, embed_dim)
    out = F.linear(out, p["out_proj_weight"], p["out_proj_bias"]).view(tgt_len, bsz, -1)
    if weights is not None and p["average_attn_weights"]:
        weights = weights.mean(dim=1)
    if not is_batched:
        out = out.squeeze(1)
        if weights is not None:
            weights = weights.squeeze(0)
    return out, weights
