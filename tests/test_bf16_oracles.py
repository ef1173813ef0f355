"""The correctness oracles again in bfloat16, on CPU (bf16 is what GPU cells run).

Tolerances, stated once (``scale`` is the largest |logit| of the reference):
- harness == library forward: bit-exact (the same kernels run on the same inputs);
- TransV with zero gates == TD: bit-exact (the gate multiplies the transfer by tanh(0) = 0);
- chunked prefill == one-shot: max |diff| <= 2% of scale (other reduction orders; bf16 has 8 bits
  of mantissa, one ulp at unit scale is 0.4%);
- decode after a drop == recompute of the shortened sequence: max |diff| <= 3% of scale (the cached
  step runs Mamba's recurrent form where the recompute runs its chunked scan, each rounding in bf16).
"""

from __future__ import annotations

import pytest
import torch

from architectures import ARCHITECTURES
from bench.pipeline import decode_step, prefill
from test_compressors import SPAN, cached_and_fresh, compressor, inputs, mid_layer

ARCHS = ["transformer", "mamba", "hybrid"]
CHUNKED_TOL, DECODE_TOL = 0.02, 0.03
_BUILT: dict = {}


def bf16(name):
    if name not in _BUILT:
        _BUILT[name] = ARCHITECTURES.get(name).build("tiny", dtype=torch.bfloat16)
    return _BUILT[name]


def _ids(length, seed=0):
    return torch.randint(3, 512, (1, length), generator=torch.Generator().manual_seed(seed))


def assert_within(actual, expected, fraction):
    scale = expected.abs().max().item()
    diff = (actual - expected).abs().max().item()
    assert diff <= fraction * scale, f"max |diff| {diff:.4g} above {fraction:.0%} of the logit scale {scale:.4g}"


@pytest.mark.parametrize("arch", ARCHS)
def test_bf16_weights_and_library_equality(arch):
    bb = bf16(arch)
    assert {p.dtype for p in bb.model.parameters()} == {torch.bfloat16}
    ids = _ids(200)
    logits, _ = prefill(bb, bb.embed(ids))
    with torch.inference_mode():
        ref = bb.model(input_ids=ids).logits[:, -1].float()
    assert torch.equal(logits, ref)


@pytest.mark.parametrize("arch", ARCHS)
def test_bf16_chunked_prefill_equals_one_shot(arch):
    bb = bf16(arch)
    ids = _ids(300, seed=1)
    one, one_seq = prefill(bb, bb.embed(ids))
    chunked, ch_seq = prefill(bb, bb.embed(ids), chunk=64)
    assert_within(chunked, one, CHUNKED_TOL)
    tok = one.argmax(-1, keepdim=True)
    assert_within(decode_step(bb, tok, ch_seq), decode_step(bb, tok, one_seq), CHUNKED_TOL)


@pytest.mark.parametrize("arch", ARCHS)
def test_bf16_decode_after_drop_equals_recompute(arch):
    bb = bf16(arch)
    comp = compressor(bb, f"td:schedule=uni_1_0.5-attn_{mid_layer(bb)}_0.5")
    for cached, fresh in cached_and_fresh(bb, comp, inputs(bb).to(torch.bfloat16)):
        assert_within(cached, fresh, DECODE_TOL)


@pytest.mark.parametrize("arch", ARCHS)
def test_bf16_transv_with_zero_gates_equals_td(arch):
    """Also the pure Mamba-2 case, whose residual stream stays fp32 under bf16 weights."""
    bb = bf16(arch)
    schedule = f"uni_2_0.5-attn_{mid_layer(bb) + 2}_0.75"
    init = "random" if arch == "mamba" else "nearest_attn"
    emb = inputs(bb).to(torch.bfloat16)
    td, _ = prefill(bb, emb, compressor=compressor(bb, f"td:schedule={schedule}"), vision=SPAN)
    tv_comp = compressor(bb, f"transv:schedule={schedule},init={init}")
    assert {p.dtype for p in tv_comp.cross.parameters()} == {torch.bfloat16}
    tv, _ = prefill(bb, emb, compressor=tv_comp, vision=SPAN)
    assert torch.equal(td, tv)
    tv_comp.set_gates(1.0)  # open gates run the bf16 cross-attention on the (fp32 for Mamba-2) stream
    opened, _ = prefill(bb, emb, compressor=tv_comp, vision=SPAN)
    assert torch.isfinite(opened).all() and not torch.equal(opened, td)
