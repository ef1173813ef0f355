"""Oracles for the in-LLM compressors: exactness, decode consistency, TransV vs TD, accounting."""

from __future__ import annotations

import pytest
import torch

from architectures import ARCHITECTURES
from bench.errors import UserError
from bench.engine.pipeline import decode_step, prefill
from bench.measure.runner import run_cell
from bench.spec import make_spec
from compressors.base import kept_count, make_compressor
from compressors.dropping import TokenDropping, parse_schedule, uniform_keep

ARCHS = ["transformer", "mamba", "hybrid"]
N_VISION, N_PROMPT = 96, 12
SPAN = (1, 1 + N_VISION)
_BUILT: dict = {}


def backbone(name):
    if name not in _BUILT:
        _BUILT[name] = ARCHITECTURES.get(name).build("tiny")
    return _BUILT[name]


def inputs(bb, batch=1, seed=0):
    gen = torch.Generator().manual_seed(seed)
    vision = torch.randn(batch, N_VISION, bb.hidden_size, generator=gen) * 0.02
    ids = torch.randint(3, bb.config.vocab_size, (batch, N_PROMPT), generator=gen)
    bos = torch.ones(batch, 1, dtype=torch.long)
    return torch.cat([bb.embed(bos), vision, bb.embed(ids)], dim=1)


def compressor(bb, spec):
    comp = make_compressor(spec)
    comp.check(bb)
    comp.prepare(bb)
    return comp


class Replay(TokenDropping):
    """Drops exactly the indices another dropper kept (a fixed selection for fresh recomputes)."""

    name = "replay"

    def __init__(self, source):
        super().__init__()
        self._plan, self.source = source.plan(), source

    def select(self, stage, state, backbone, n, kept):
        return self.source.kept_indices[stage.layer]


def mid_layer(bb):
    return bb.num_layers // 2


# --- exactness ---------------------------------------------------------------------------

@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("spec", ["none", "uniform:p=0", "uniform:layer=3,p=0", "attention:layer=4,p=0",
                                  "td:schedule=uni_2_0-attn_5_0"])
@pytest.mark.parametrize("chunk", [None, 40])
def test_no_op_compressors_are_bit_exact(arch, spec, chunk):
    bb = backbone(arch)
    emb = inputs(bb)
    ref, _ = prefill(bb, emb, chunk=chunk)
    out, seq = prefill(bb, emb, compressor=compressor(bb, spec), vision=SPAN, chunk=chunk)
    assert torch.equal(ref, out)
    assert seq.length == emb.shape[1]


# --- decode after a drop == fresh forward of the shortened sequence -------------------------

@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("spec", ["uniform:layer=0,p=0.5", "uniform:layer=MID,p=0.75", "attention:layer=MID,p=0.5",
                                  "td:schedule=uni_1_0.5-attn_MID_0.5"])
def test_cached_decode_after_drop_equals_fresh_forward(arch, spec):
    bb = backbone(arch)
    comp = compressor(bb, spec.replace("MID", str(mid_layer(bb))))
    for cached, fresh in cached_and_fresh(bb, comp, inputs(bb)):
        torch.testing.assert_close(cached, fresh, atol=2e-5, rtol=1e-4)


def cached_and_fresh(bb, comp, emb, steps: int = 3) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(cached, fresh) logits per decode step after a drop: decoding through the shortened cache, and a
    fresh prefill of the prompt plus the tokens so far that drops the very same tokens."""
    logits, seq = prefill(bb, emb, compressor=comp, vision=SPAN)
    tokens, cached = [], [logits]
    for _ in range(steps):
        tokens.append(cached[-1].argmax(-1, keepdim=True))
        cached.append(decode_step(bb, tokens[-1], seq))
    pairs = []
    for step in range(1, steps + 1):
        extended = torch.cat([emb, bb.embed(torch.cat(tokens[:step], dim=1))], dim=1)
        fresh, fresh_seq = prefill(bb, extended, compressor=Replay(comp), vision=SPAN)
        assert fresh_seq.length == seq.length - (steps - step)
        pairs.append((cached[step], fresh))
    return pairs


@pytest.mark.parametrize("arch", ARCHS)
def test_chunked_prefill_with_drop_equals_one_shot(arch):
    bb = backbone(arch)
    spec = f"td:schedule=uni_1_0.5-attn_{mid_layer(bb)}_0.5"
    emb = inputs(bb)
    one, _ = prefill(bb, emb, compressor=compressor(bb, spec), vision=SPAN)
    chunked, _ = prefill(bb, emb, compressor=compressor(bb, spec), vision=SPAN, chunk=17)
    torch.testing.assert_close(one, chunked, atol=2e-5, rtol=1e-4)


# --- TransV ---------------------------------------------------------------------------------

@pytest.mark.parametrize("arch", ARCHS)
def test_transv_with_zero_gates_equals_td(arch):
    bb = backbone(arch)
    schedule = f"uni_2_0.5-attn_{mid_layer(bb) + 2}_0.75"
    init = "random" if arch == "mamba" else "nearest_attn"
    emb = inputs(bb)
    td, _ = prefill(bb, emb, compressor=compressor(bb, f"td:schedule={schedule}"), vision=SPAN)
    tv_comp = compressor(bb, f"transv:schedule={schedule},init={init}")
    tv, _ = prefill(bb, emb, compressor=tv_comp, vision=SPAN)
    assert torch.equal(td, tv)
    assert tv_comp.added_params() > 0


@pytest.mark.parametrize("arch", ["transformer", "hybrid"])
def test_transv_with_open_gates_changes_only_tokens_after_the_span(arch):
    bb = backbone(arch)
    layer = mid_layer(bb)
    seen = {}

    def spy(comp, key):
        inner = comp.before_layer

        def before_layer(i, state, backbone_, cache):
            inner(i, state, backbone_, cache)
            if i == layer:
                seen[key] = (state.hidden.clone(), state.vision)
        comp.before_layer = before_layer
        return comp

    emb = inputs(bb)
    td = spy(compressor(bb, f"td:schedule=uni_{layer}_0.5"), "td")
    tv = compressor(bb, f"transv:schedule=uni_{layer}_0.5")
    tv.set_gates(0.5)
    spy(tv, "tv")
    prefill(bb, emb, compressor=td, vision=SPAN)
    prefill(bb, emb, compressor=tv, vision=SPAN)
    (h_td, mask), (h_tv, mask_tv) = seen["td"], seen["tv"]
    assert torch.equal(mask, mask_tv)
    end = int(mask.nonzero().max()) + 1  # the instruction starts after the last vision token
    assert torch.equal(h_td[:, :end], h_tv[:, :end])
    assert not torch.allclose(h_td[:, end:], h_tv[:, end:])


def test_transv_nearest_attn_init_copies_the_nearest_attention_layer():
    from architectures.hybrid import timeviper_layout

    hybrid = ARCHITECTURES.get("hybrid")
    bb = hybrid(hybrid.model_class._from_config(  # the paper's proportions at 42 blocks
        hybrid.make_config("tiny", hybrid_override_pattern=timeviper_layout(42))))
    comp = compressor(bb, "transv:schedule=uni_2_0.5-attn_21_0.5-uni_30_0.5")
    assert bb.attention_layers() == [16, 23, 29]
    assert torch.equal(comp.cross["2"].q_proj.weight, bb.layers[16].mixer.q_proj.weight)
    assert torch.equal(comp.cross["21"].o_proj.weight, bb.layers[23].mixer.o_proj.weight)
    assert torch.equal(comp.cross["30"].k_proj.weight, bb.layers[29].mixer.k_proj.weight)
    assert float(comp.cross["21"].alpha) == 0.0


# --- selection and accounting ------------------------------------------------------------------

def test_uniform_keep_is_evenly_spaced_and_unique():
    idx = uniform_keep(10, 4, "cpu")
    assert idx.tolist() == [0, 3, 6, 9]
    for n in (1, 7, 96, 1000):
        for kept in (1, n // 3 or 1, n):
            idx = uniform_keep(n, kept, "cpu")
            assert len(set(idx.tolist())) == kept and idx[0] == 0 and (kept == 1 or idx[-1] == n - 1)


@pytest.mark.parametrize("arch", ARCHS)
def test_token_counts_follow_the_schedule_and_selection_is_deterministic(arch):
    bb = backbone(arch)
    mid = mid_layer(bb)
    spec = f"td:schedule=uni_1_0.5-attn_{mid}_0.9"
    first, second = compressor(bb, spec), compressor(bb, spec)
    emb = inputs(bb, batch=2)
    _, seq = prefill(bb, emb, compressor=first, vision=SPAN)
    prefill(bb, emb, compressor=second, vision=SPAN)
    n1 = kept_count(N_VISION, 0.5)
    n2 = kept_count(n1, 0.9)
    assert [(s["layer"], s["tokens_in"], s["tokens_out"]) for s in first.stages] == [(1, N_VISION, n1), (mid, n1, n2)]
    assert seq.length == 1 + n2 + N_PROMPT
    for layer in first.kept_indices:
        assert torch.equal(first.kept_indices[layer], second.kept_indices[layer])


@pytest.mark.parametrize("arch", ["transformer", "hybrid"])
def test_attention_scores_are_the_layers_own_attention(arch):
    bb = backbone(arch)
    j = bb.attention_layers()[-1]
    layer = bb.layers[j]
    attn = layer.self_attn if arch == "transformer" else layer.mixer
    emb = inputs(bb)
    positions = torch.arange(emb.shape[1])
    ours = bb.attention_scores(j, emb, positions)
    normed = (layer.input_layernorm if arch == "transformer" else layer.norm)(emb)
    kwargs = {"position_embeddings": bb.layer_input(positions).extras["rotary"]} if arch == "transformer" else {}
    before = bb.config._attn_implementation
    bb.config._attn_implementation = "eager"
    try:
        with torch.no_grad():
            _, weights = attn(hidden_states=normed, attention_mask=None, **kwargs)
    finally:
        bb.config._attn_implementation = before
    torch.testing.assert_close(ours, weights[:, :, -1].mean(1), atol=1e-6, rtol=1e-5)


def test_attention_on_pure_mamba_uses_the_documented_substitute():
    bb = backbone("mamba")
    comp = compressor(bb, "attention:layer=3,p=0.5")
    emb = inputs(bb)
    _, seq = prefill(bb, emb, compressor=comp, vision=SPAN)
    assert comp.stages[0]["tokens_out"] == kept_count(N_VISION, 0.5)
    uniform = uniform_keep(N_VISION, kept_count(N_VISION, 0.5), "cpu")
    assert not torch.equal(comp.kept_indices[3], uniform)  # similarity ranking, not a silent fallback


def test_record_accounts_for_the_compressor():
    r = run_cell(make_spec({"arch": "hybrid", "preset": "tiny", "frames": 6, "prompt_tokens": 4, "new_tokens": 2,
                            "warmup": 0, "repeats": 1, "compressor": "transv:schedule=uni_2_0.5-attn_10_0.9"}))
    assert r["status"] == "ok", r["error"]
    m = r["metrics"]
    n1 = kept_count(96, 0.5)
    n2 = kept_count(n1, 0.9)
    assert m["vision_tokens"] == 96
    assert m["tokens_after_compression"] == 1 + n2 + 4
    comp = m["compressor"]
    assert comp["added_params"] > 0 and comp["time_s"] > 0
    assert [(s["layer"], s["tokens_in"], s["tokens_out"]) for s in comp["stages"]] == [(2, 96, n1), (10, n1, n2)]


# --- bad input ----------------------------------------------------------------------------------

@pytest.mark.parametrize("spec, needle", [
    ("uniform:p=1", "p=1"),
    ("uniform:p=-0.1", "p=-0.1"),
    ("uniform:layer=-1", "layer=-1"),
    ("uniform:q=0.5", "'q'"),
    ("attention:p=abc", "p='abc'"),
    ("td:schedule=uni_7", "malformed schedule"),
    ("td:schedule=uni_7_0.5-foo_9_0.5", "malformed schedule"),
    ("td:schedule=uni_7_0.5-attn_7_0.9", "not increasing"),
    ("td:schedule=uni_7_1.5", "p=1.5"),
    ("transv:init=zeros", "init='zeros'"),
])
def test_bad_specs_are_user_errors(spec, needle):
    with pytest.raises(UserError, match=needle.replace("(", r"\(")):
        make_compressor(spec)


@pytest.mark.parametrize("arch, spec, needle", [
    ("hybrid", "uniform:layer=14,p=0.5", "outside hybrid's 14 layers"),
    ("transformer", "td:schedule=uni_2_0.5-attn_39_0.9", "outside transformer's 9 layers"),
    ("mamba", "transv:schedule=uni_2_0.5", "needs an attention layer"),
])
def test_plans_that_do_not_fit_the_backbone(arch, spec, needle):
    with pytest.raises(UserError, match=needle):
        make_spec({"arch": arch, "preset": "tiny", "compressor": spec})


def test_parse_schedule():
    stages = parse_schedule("td", "uni_7_0.5-attn_39_0.9")
    assert [(s.kind, s.layer, s.p) for s in stages] == [("uni", 7, 0.5), ("attn", 39, 0.9)]
    assert str(stages[1]) == "attn_39_0.9"


# --- issue 15, item 22: EVS groups the vision tokens by their frame index, and refuses uneven frames -------

from architectures.tokens import TokenState  # noqa: E402
from compressors.evs import evs_keep  # noqa: E402


def frame_state(frame_ids, frames_known=True, hidden=8, seed=0):
    """[text, vision tokens of the frames ``frame_ids`` in this order, text, text]."""
    n, length = len(frame_ids), len(frame_ids) + 3
    states = torch.randn(1, length, hidden, generator=torch.Generator().manual_seed(seed))
    vision = torch.zeros(length, dtype=torch.bool)
    vision[1:1 + n] = True
    frames = torch.full((length,), -1)
    frames[1:1 + n] = torch.tensor(frame_ids)
    return TokenState(states, torch.arange(length), vision, frames if frames_known else None)


@pytest.mark.parametrize("frame_ids", [[0] * 4 + [1] * 4 + [2] * 4, [0, 1, 2] * 4, [2, 0, 1] * 3, [0, 0, 3, 3, 5, 5]],
                         ids=["contiguous", "interleaved", "out_of_order", "frames_missing"])
def test_evs_groups_by_frame_index(frame_ids):
    state = frame_state(frame_ids)
    ids = torch.tensor(frame_ids)
    seq = torch.arange(1, 1 + len(frame_ids))
    groups = [seq[ids == f] for f in sorted(set(frame_ids))]  # each frame's tokens, in sequence order
    keep = evs_keep(torch.stack([state.hidden[0, g] for g in groups]), 0.5)
    expected = torch.cat(groups)[keep].sort().values
    before = state.hidden.clone()
    comp = make_compressor("evs:p=0.5")
    comp.before_layer(0, state, None, None)
    assert torch.equal(state.hidden[0, state.vision], before[0, expected])
    kept_frames = torch.tensor(frame_ids)[expected - 1]  # every kept token keeps its own frame
    assert torch.equal(state.frames[state.vision], kept_frames)
    assert comp.stages[0]["tokens_in"] == len(frame_ids) and comp.stages[0]["tokens_out"] == len(kept_frames)


@pytest.mark.parametrize("frame_ids, known, needle", [
    ([0, 0, 0, 0, 1, 1, 2, 3], True, "frames hold 4, 2, 1, 1"),  # a checkpoint's own EVS, uneven per patch
    ([0, 0, 1], True, "frames hold 2, 1"),
    ([0, 1, 1, 2, 2, 2], True, "frames hold 1, 2, 3"),
    ([0, 0, 1, 1], False, "needs frame indices"),
])
def test_evs_refuses_frames_it_cannot_pair_instead_of_skipping(frame_ids, known, needle):
    comp = make_compressor("evs:p=0.5")
    with pytest.raises(UserError, match=needle) as err:
        comp.before_layer(0, frame_state(frame_ids, known), None, None)
    assert "compressor 'evs'" in str(err.value) and "\n" not in str(err.value)
