"""Chunk-aware SDPA, registered with transformers' AttentionInterface as ``viperbench_sdpa``.

Chunked prefill feeds a layer N queries whose keys are the cached prefix plus the chunk
itself, so the causal mask is aligned to the bottom right. transformers' SDPA path would
need an explicit [N x context] mask for that, which costs O(N x context) memory and
defeats chunking. This function is plain SDPA whenever queries and keys have the same
length (the library's own one-shot forward, unchanged), and otherwise computes
lower-right causal attention without a mask:

- CPU: two flash-attention calls, the chunk against the cached prefix (no mask) and
  against itself (causal), merged by their log-sum-exp;
- CUDA: PyTorch's ``causal_lower_right`` bias, which dispatches to the flash kernel.
"""

from __future__ import annotations

import torch
from torch.nn.functional import scaled_dot_product_attention
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import repeat_kv, sdpa_attention_forward

NAME = "viperbench_sdpa"


def _cpu_flash(query, key, value, causal: bool, scale):
    out, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(query, key, value, 0.0, causal, scale=scale)
    return out.float(), lse.float()


def lower_right_causal(query, key, value, scale=None, n_rep: int = 1) -> torch.Tensor:
    """Attention of ``q`` queries at the end of ``kv`` keys, each seeing its own and earlier keys.

    query [b, h, q, d]; key/value [b, h/n_rep, kv, d] with kv >= q. Returns [b, h, q, d].
    """
    q_len, kv_len = query.shape[2], key.shape[2]
    past = kv_len - q_len
    if past == 0:
        return scaled_dot_product_attention(query, key, value, is_causal=True, scale=scale, enable_gqa=n_rep > 1)
    if query.device.type != "cpu":
        from torch.nn.attention.bias import causal_lower_right

        return scaled_dot_product_attention(query, key, value, attn_mask=causal_lower_right(q_len, kv_len),
                                            scale=scale, enable_gqa=n_rep > 1)
    key, value = repeat_kv(key, n_rep), repeat_kv(value, n_rep)
    out_past, lse_past = _cpu_flash(query, key[:, :, :past], value[:, :, :past], False, scale)
    out_self, lse_self = _cpu_flash(query, key[:, :, past:], value[:, :, past:], True, scale)
    lse = torch.logaddexp(lse_past, lse_self)
    out = out_past * (lse_past - lse).exp_()[..., None] + out_self * (lse_self - lse).exp_()[..., None]
    return out.to(query.dtype)


def viperbench_sdpa(module, query, key, value, attention_mask, dropout: float = 0.0, scaling=None, **kwargs):
    q_len, kv_len = query.shape[2], key.shape[2]
    causal = getattr(module, "is_causal", True)
    if attention_mask is not None or q_len == 1 or q_len == kv_len or dropout or not causal:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      **kwargs)
    out = lower_right_causal(query, key, value, scale=scaling, n_rep=getattr(module, "num_key_value_groups", 1))
    return out.transpose(1, 2).contiguous(), None


AttentionInterface.register(NAME, viperbench_sdpa)


def allowed_mask(blocked: torch.Tensor) -> torch.Tensor:
    """An attention knockout's mask for a chunk: blocked rows [queries, keys] (True = may not read; the
    queries are the last ``queries`` of the keys) -> [1, 1, queries, keys] bool, True = may read (causal,
    aligned to the bottom right, and not blocked). Given to the layer as its attention mask, it takes the
    library's SDPA path with an explicit mask (``viperbench_sdpa``)."""
    queries, keys = blocked.shape
    causal = torch.ones(queries, keys, dtype=torch.bool, device=blocked.device).tril(keys - queries)
    return (causal & ~blocked)[None, None]
