"""The chunk-aware SDPA: lower-right causal attention without a mask, and plain SDPA otherwise."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn.functional import scaled_dot_product_attention
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

from architectures.attention import NAME, lower_right_causal, viperbench_sdpa

BATCH, HEADS, DIM = 2, 4, 16


def _qkv(q_len, kv_len, n_rep, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(BATCH, HEADS, q_len, DIM, generator=g)
    k = torch.randn(BATCH, HEADS // n_rep, kv_len, DIM, generator=g)
    v = torch.randn(BATCH, HEADS // n_rep, kv_len, DIM, generator=g)
    return q.to(dtype), k.to(dtype), v.to(dtype)


def _lower_right_mask(q_len, kv_len):
    """Key j visible to query i iff j <= past + i (the queries are the last q_len of kv_len positions)."""
    past = kv_len - q_len
    i = torch.arange(q_len)[:, None]
    j = torch.arange(kv_len)[None, :]
    return j <= past + i


def _reference(q, k, v, n_rep, scale=None):
    """Explicit-mask SDPA in float32 on float32 copies of the inputs."""
    k = k.float().repeat_interleave(n_rep, dim=1)
    v = v.float().repeat_interleave(n_rep, dim=1)
    mask = _lower_right_mask(q.shape[2], k.shape[2])
    return scaled_dot_product_attention(q.float(), k, v, attn_mask=mask, scale=scale)


def _naive(q, k, v, n_rep, scale=None):
    """Softmax(QK^T) V written out, as an independent check of the reference itself."""
    k = k.float().repeat_interleave(n_rep, dim=1)
    v = v.float().repeat_interleave(n_rep, dim=1)
    scale = scale if scale is not None else q.shape[-1] ** -0.5
    scores = (q.float() @ k.transpose(-1, -2)) * scale
    scores = scores.masked_fill(~_lower_right_mask(q.shape[2], k.shape[2]), float("-inf"))
    return scores.softmax(-1) @ v


SHAPES = [(1, 2), (1, 50), (5, 6), (7, 50), (33, 100), (64, 128), (100, 300), (37, 301)]


@pytest.mark.parametrize("n_rep", [1, 2])
@pytest.mark.parametrize("q_len,kv_len", SHAPES)
def test_lower_right_causal_float32(q_len, kv_len, n_rep):
    q, k, v = _qkv(q_len, kv_len, n_rep, seed=q_len * 1000 + kv_len)
    out = lower_right_causal(q, k, v, n_rep=n_rep)
    ref = _reference(q, k, v, n_rep)
    assert out.shape == (BATCH, HEADS, q_len, DIM) and out.dtype == torch.float32
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ref, _naive(q, k, v, n_rep), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("n_rep", [1, 2])
@pytest.mark.parametrize("q_len,kv_len", [(7, 50), (64, 128)])
def test_lower_right_causal_explicit_scale(q_len, kv_len, n_rep):
    q, k, v = _qkv(q_len, kv_len, n_rep, seed=3)
    out = lower_right_causal(q, k, v, scale=0.37, n_rep=n_rep)
    torch.testing.assert_close(out, _reference(q, k, v, n_rep, scale=0.37), atol=1e-5, rtol=1e-5)
    # the scale really is used
    assert not torch.allclose(out, _reference(q, k, v, n_rep), atol=1e-3)


@pytest.mark.parametrize("n_rep", [1, 2])
@pytest.mark.parametrize("q_len,kv_len", [(1, 50), (7, 50), (33, 100), (64, 128)])
def test_lower_right_causal_bfloat16(q_len, kv_len, n_rep):
    q, k, v = _qkv(q_len, kv_len, n_rep, dtype=torch.bfloat16, seed=q_len + kv_len)
    out = lower_right_causal(q, k, v, n_rep=n_rep)
    assert out.dtype == torch.bfloat16 and out.shape == (BATCH, HEADS, q_len, DIM)
    ref = _reference(q, k, v, n_rep)
    torch.testing.assert_close(out.float(), ref, atol=2e-2, rtol=2e-2)
    # and as close as bf16 SDPA with the explicit mask gets
    stock = scaled_dot_product_attention(q, k.repeat_interleave(n_rep, 1), v.repeat_interleave(n_rep, 1),
                                         attn_mask=_lower_right_mask(q_len, kv_len))
    assert (out.float() - ref).abs().max() <= 2 * (stock.float() - ref).abs().max() + 1e-2


def test_lower_right_causal_differs_from_upper_left():
    """Sanity: the oracle is not trivially satisfied: upper-left alignment gives other numbers."""
    q, k, v = _qkv(7, 50, 1)
    upper_left = scaled_dot_product_attention(q, k, v, attn_mask=torch.ones(7, 50, dtype=torch.bool).tril())
    assert not torch.allclose(lower_right_causal(q, k, v), upper_left, atol=1e-3)


# --- viperbench_sdpa --------------------------------------------------------------------------


class _Attn(nn.Module):
    """The attributes transformers' SDPA reads from an attention module."""

    def __init__(self, n_rep):
        super().__init__()
        self.num_key_value_groups = n_rep
        self.is_causal = True
        self.layer_idx = 0


def test_registered():
    assert ALL_ATTENTION_FUNCTIONS[NAME] is viperbench_sdpa


@pytest.mark.parametrize("n_rep", [1, 2])
@pytest.mark.parametrize("length", [1, 9, 64])
@pytest.mark.parametrize("scaling", [None, 0.25])
def test_viperbench_sdpa_equals_stock_when_q_equals_kv(length, n_rep, scaling):
    q, k, v = _qkv(length, length, n_rep, seed=length)
    module = _Attn(n_rep)
    ours, w1 = viperbench_sdpa(module, q, k, v, None, dropout=0.0, scaling=scaling)
    stock, w2 = sdpa_attention_forward(module, q, k, v, None, dropout=0.0, scaling=scaling)
    assert w1 is None and w2 is None
    assert torch.equal(ours, stock)


@pytest.mark.parametrize("n_rep", [1, 2])
def test_viperbench_sdpa_with_mask_equals_stock(n_rep):
    """With an explicit mask (e.g. padding in generate()) the stock path runs unchanged, also for q < kv."""
    q, k, v = _qkv(5, 12, n_rep, seed=11)
    mask = _lower_right_mask(5, 12).clone()
    mask[:, 0] = False  # a padded first key
    mask = mask[None, None].expand(BATCH, 1, 5, 12)
    module = _Attn(n_rep)
    ours, _ = viperbench_sdpa(module, q, k, v, mask, scaling=None)
    stock, _ = sdpa_attention_forward(module, q, k, v, mask, scaling=None)
    assert torch.equal(ours, stock)


@pytest.mark.parametrize("n_rep", [1, 2])
@pytest.mark.parametrize("q_len,kv_len", [(1, 40), (8, 40), (39, 40)])
def test_viperbench_sdpa_chunk_is_lower_right(q_len, kv_len, n_rep):
    """A chunk (q < kv, no mask) gets lower-right causal attention, in transformers' [b, q, h, d] layout."""
    q, k, v = _qkv(q_len, kv_len, n_rep, seed=kv_len + q_len)
    out, weights = viperbench_sdpa(_Attn(n_rep), q, k, v, None, scaling=None)
    assert weights is None
    assert out.shape == (BATCH, q_len, HEADS, DIM) and out.is_contiguous()
    torch.testing.assert_close(out, _reference(q, k, v, n_rep).transpose(1, 2), atol=1e-5, rtol=1e-5)


def test_lower_right_causal_without_prefix_is_plain_causal():
    torch.manual_seed(0)
    q, k, v = (torch.randn(1, 4, 7, 16) for _ in range(3))
    expected = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
    assert torch.allclose(lower_right_causal(q, k, v), expected, atol=1e-6)
