"""The correctness oracles again in bfloat16, on CPU (bf16 is what GPU cells run).

Tolerances, stated once (``scale`` is the largest |logit| of the reference):
- harness == library forward: bit-exact (the same kernels run on the same inputs);
- TransV with zero gates == TD: bit-exact (the gate multiplies the transfer by tanh(0) = 0);
- chunked prefill == one-shot: max |diff| <= 2% of scale (other reduction orders; bf16 has 8 bits
  of mantissa, one ulp at unit scale is 0.4%);
- decode after a drop == recompute of the shortened sequence: max |diff| <= 3% of scale (the cached
  step runs Mamba's recurrent form where the recompute runs its chunked scan, each rounding in bf16).

The real video LLMs (``FAMILIES``: Qwen3-VL, Qwen3-VL-MoE, Nemotron-Omni, LLaVA-OneVision, tiny
presets, 5 frames: an odd count) are held to the same four tolerances, on their processor's inputs:
harness == the library model's own forward (vision tower, projector and text model) bit-exact, and
so on.
"""

from __future__ import annotations

import pytest
import torch

from architectures import ARCHITECTURES
from bench.engine.pipeline import decode_step, prefill
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


# --- the real video LLMs ---------------------------------------------------------------------------

from architectures.tokens import TokenState  # noqa: E402
from tasks.video import Clip  # noqa: E402
from test_compressors import Replay  # noqa: E402
from test_families import FAMILIES, PROMPT, extended, frames, ready  # noqa: E402

FAMILY_SPEC = "td:schedule=uni_1_0.5-attn_2_0.5"


def family(arch):
    """A bf16 tiny family and its processor's inputs for 5 frames."""
    key = ("family", arch)
    if key not in _BUILT:
        bb = ARCHITECTURES.get(arch).build("tiny", dtype=torch.bfloat16)
        _BUILT[key] = bb, bb.processor_inputs(Clip.consecutive(frames(5, side=bb.frame_size)), PROMPT)
    return _BUILT[key]


def library_logits(arch, bb, inputs):
    """The library model's own forward (the same weights) on the processor's inputs."""
    kwargs = dict(inputs)
    pixels = kwargs.pop("pixel_values_videos").to(bb.dtype)
    if arch == "nemotron_h_omni":  # as in test_families: its forward needs the features as a one-element tuple
        features = bb.model.get_video_features(pixels)
        features.pooler_output = (features.pooler_output,)
        kwargs["mm_encoder_outputs"] = {"video": features}
    else:
        kwargs["pixel_values_videos"] = pixels
    with torch.inference_mode():
        return bb.model(**kwargs).logits[:, -1].float()


@pytest.mark.parametrize("arch", FAMILIES)
def test_bf16_family_weights_and_library_equality(arch):
    bb, inputs = family(arch)
    assert {p.dtype for p in bb.model.parameters()} == {torch.bfloat16}
    logits, _ = prefill(bb, None, state=bb.encode(inputs).state)
    assert torch.equal(logits, library_logits(arch, bb, inputs))


@pytest.mark.parametrize("arch", FAMILIES)
def test_bf16_family_chunked_prefill_equals_one_shot(arch):
    bb, inputs = family(arch)
    one, one_seq = prefill(bb, None, state=bb.encode(inputs).state)
    chunked, ch_seq = prefill(bb, None, state=bb.encode(inputs).state, chunk=7)
    assert_within(chunked, one, CHUNKED_TOL)
    tok = one.argmax(-1, keepdim=True)
    assert_within(decode_step(bb, tok, ch_seq), decode_step(bb, tok, one_seq), CHUNKED_TOL)


@pytest.mark.parametrize("arch", FAMILIES)
def test_bf16_family_decode_after_drop_equals_recompute(arch):
    bb, inputs = family(arch)
    comp = ready(bb, FAMILY_SPEC)
    start = bb.encode(inputs, comp).state
    copy = TokenState(start.hidden, start.positions, start.vision, start.frames, dict(start.per_vision))
    logits, seq = prefill(bb, None, compressor=comp, state=copy)
    assert comp.stages[-1]["tokens_out"] < comp.stages[0]["tokens_in"]  # it dropped
    tokens, cached = [], [logits]
    for _ in range(2):
        tokens.append(cached[-1].argmax(-1, keepdim=True))
        cached.append(decode_step(bb, tokens[-1], seq))
    fresh, _ = prefill(bb, None, compressor=Replay(comp),
                       state=extended(bb, start, torch.cat(tokens, 1), seq.next_position - 2))
    assert_within(cached[2], fresh, DECODE_TOL)


@pytest.mark.parametrize("arch", FAMILIES)
def test_bf16_family_transv_with_zero_gates_equals_td(arch):
    bb, inputs = family(arch)
    schedule = FAMILY_SPEC.split("=", 1)[1]
    td, _ = prefill(bb, None, compressor=ready(bb, f"td:schedule={schedule}"), state=bb.encode(inputs).state)
    tv_comp = ready(bb, f"transv:schedule={schedule},init=nearest_attn")
    assert {p.dtype for p in tv_comp.cross.parameters()} == {torch.bfloat16}
    tv, _ = prefill(bb, None, compressor=tv_comp, state=bb.encode(inputs).state)
    assert torch.equal(td, tv)
