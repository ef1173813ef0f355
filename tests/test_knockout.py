"""Attention knockout: specs, blocked pairs, the masked Mamba-2 form, and the oracles of blocking.

- an empty knockout (no edges, or layers where nothing is blocked) is the unablated pass, bit for bit,
  on the own backbones and every family's tiny checkpoint;
- the masked Mamba-2 form with an empty mask equals the library's mixers (Mamba2, NemotronH), one-shot
  and chunked, and the attention mask path with nothing blocked equals the maskless path;
- independence: with ``video->text`` blocked in every layer, the last token does not see the video;
- ``frame->frame`` on one frame changes nothing; ``edges_off`` equals a count by hand;
- bad specs are one line, exit 2, through ``eval --knockout``.
"""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch

from architectures import ARCHITECTURES
from architectures.knockout import Edge, Knockout, edges_off, parse_knockout, token_groups
from architectures.masked_mamba import masked_block, masked_forward, mixing_matrix
from architectures.tokens import TokenState
from bench.engine.generate import generate
from bench.engine.pipeline import _chunk_inputs, _run_layer_chunked, decode_step, prefill
from bench.errors import UserError
from tests.bad_input import user_error

OWN = ["transformer", "hybrid", "mamba"]
FAMILIES = ["qwen3_vl", "qwen3_vl_moe", "nemotron_h_omni", "llava_onevision"]
BOS, FRAMES, PER_FRAME, TEXT = 1, 3, 4, 5


@pytest.fixture(scope="module")
def backbones():
    return {arch: ARCHITECTURES.get(arch).build("tiny") for arch in OWN}


def own_prompt(bb, seed=0, frames=FRAMES, per_frame=PER_FRAME, video_seed=None):
    """[BOS][video: frames x per_frame][text] embeddings and its token state (with frame indices)."""
    g = torch.Generator().manual_seed(seed)
    bos, text = torch.randn(1, BOS, bb.hidden_size, generator=g), torch.randn(1, TEXT, bb.hidden_size, generator=g)
    g_video = torch.Generator().manual_seed(seed if video_seed is None else video_seed)
    video = torch.randn(1, frames * per_frame, bb.hidden_size, generator=g_video)
    embeds = torch.cat([bos, video, text], dim=1)
    state = TokenState.for_prompt(embeds, (BOS, BOS + frames * per_frame))
    state.frames = torch.full((embeds.shape[1],), -1)
    state.frames[BOS:BOS + frames * per_frame] = torch.arange(frames).repeat_interleave(per_frame)
    return state


# --- specs and blocked pairs ---------------------------------------------------------------

def test_parse_and_print_a_spec():
    ko = parse_knockout("video->last + video->question:layers=4-9")
    assert ko == Knockout((Edge("video", "last"), Edge("video", "question")), (4, 9))
    assert str(ko) == "video->last+video->question:layers=4-9"
    assert parse_knockout("frame->frame:layers=all").layers is None
    assert parse_knockout("question->last:layers=3").layer_set(8) == {3}
    kinds = ["mamba", "mlp", "attention", "mamba", "attention"]
    ko = parse_knockout("video->text:layers=1-4,kinds=attention")
    assert str(ko) == "video->text:layers=1-4,kinds=attention" and ko.layer_set(5, kinds) == {2, 4}
    assert parse_knockout("video->text:kinds=mamba+attention").layer_set(5, kinds) == {0, 2, 3, 4}
    with pytest.raises(UserError, match="no attention layer in layers 0-1"):
        parse_knockout("video->text:layers=0-1,kinds=attention").layer_set(5, kinds)


def small_state(frames=(0, 0, 1)):
    """bos (0), video 1-3 of frames ``frames``, text 4-5 (question 4, last 5)."""
    vision = torch.tensor([False, True, True, True, False, False])
    return TokenState(torch.zeros(1, 6, 2), torch.arange(6), vision,
                      torch.tensor([-1, *frames, -1, -1]))


def test_groups_and_edges_off_by_hand():
    state = small_state()
    groups = {k: v.nonzero().flatten().tolist() for k, v in token_groups(state).items()}
    assert groups == {"video": [1, 2, 3], "text": [4, 5], "question": [4], "last": [5], "bos": [0],
                      "frame": [1, 2, 3]}
    blocked = parse_knockout("video->last").blocked(state)
    assert blocked.nonzero().tolist() == [[5, 1], [5, 2], [5, 3]]
    assert parse_knockout("frame->frame").blocked(state).nonzero().tolist() == [[3, 1], [3, 2]]
    kinds = ["attention", "mamba", "attention", "mlp"]
    causal = 6 * 7 / 2  # per attention layer, a token with itself included
    assert edges_off(parse_knockout("video->last"), state, kinds) == pytest.approx(3 * 2 / (2 * causal))
    assert edges_off(parse_knockout("video->last:layers=0-1"), state, kinds) == pytest.approx(3 / (2 * causal))
    assert edges_off(parse_knockout("video->text+question->last"), state, kinds) == pytest.approx(7 / causal)
    assert edges_off(parse_knockout("video->text"), state, ["mamba", "mlp"]) == 0.0  # no attention edges
    assert edges_off(parse_knockout("video->last:kinds=attention"), state, kinds) == pytest.approx(3 / causal)
    # a group read by itself keeps each token's own pair: no query is left without a key
    assert not parse_knockout("video->video").blocked(state).diagonal().any()


def test_no_video_and_no_frames_are_user_errors():
    state = TokenState(torch.zeros(1, 4, 2), torch.arange(4), torch.zeros(4, dtype=torch.bool))
    with pytest.raises(UserError, match="no video tokens"):
        parse_knockout("video->last").blocked(state)
    with pytest.raises(UserError, match="frame index"):
        parse_knockout("frame->frame").blocked(replace(small_state(), frames=None))
    with pytest.raises(UserError, match="out of range"):
        parse_knockout("video->last:layers=2-9").layer_set(4)


# --- empty knockouts are the unablated pass ------------------------------------------------

@pytest.mark.parametrize("arch", OWN)
def test_empty_knockout_is_the_plain_pass_exactly(arch, backbones):
    bb = backbones[arch]
    plain, _ = prefill(bb, None, state=own_prompt(bb))
    mlp = [i for i, kind in enumerate(bb.layer_kinds()) if kind == "mlp"]
    empties = [Knockout(()), parse_knockout("question->video")]  # no edges; no causal pair (video comes first)
    if mlp:  # layers where nothing mixes
        empties.append(parse_knockout(f"video->text:layers={mlp[0]}-{mlp[0]}"))
    for ko in empties:
        ours, _ = prefill(bb, None, state=own_prompt(bb), knockout=ko)
        assert torch.equal(ours, plain), ko
    frame_ko = parse_knockout("frame->frame")
    single = own_prompt(bb, frames=1)  # frame->frame on one frame: nothing to block
    ours, _ = prefill(bb, None, state=replace(single), knockout=frame_ko)
    assert torch.equal(ours, prefill(bb, None, state=replace(single))[0])
    blocked, _ = prefill(bb, None, state=own_prompt(bb), knockout=frame_ko)
    assert not torch.equal(blocked, plain)  # three frames: it does block


@pytest.fixture(scope="module")
def family_prompts(family_checkpoints):
    from tasks.video import Clip

    out = {}
    for arch in FAMILIES:
        bb = ARCHITECTURES.get(arch).build(checkpoint=family_checkpoints[arch])
        g = torch.Generator().manual_seed(0)
        frames = (torch.rand(2, 3, bb.frame_size, bb.frame_size, generator=g) * 255).to(torch.uint8)
        out[arch] = (bb, bb.encode(bb.processor_inputs(Clip.consecutive(frames), "what ?")).state)
    return out


@pytest.mark.parametrize("arch", FAMILIES)
def test_empty_knockout_is_the_plain_pass_exactly_on_families(arch, family_prompts):
    bb, state = family_prompts[arch]
    plain, _ = prefill(bb, None, state=replace(state))
    for ko in (Knockout(()), parse_knockout("frame->frame")):  # two frames = one temporal group or a frame each
        if ko.edges and arch == "llava_onevision":
            continue  # LLaVA keeps each frame: frame->frame blocks there
        ours, _ = prefill(bb, None, state=replace(state), knockout=ko)
        assert torch.equal(ours, plain), ko
    blocked, _ = prefill(bb, None, state=replace(state), knockout=parse_knockout("video->last"))
    assert not torch.equal(blocked, plain)


def test_family_knockouts_chunked_equal_one_shot_and_llava_hides_the_video(family_prompts):
    """Nemotron-Omni (Mamba-2 and attention blocks): the masked forms chunked == one-shot. LLaVA-OneVision
    has no tokens between its frames, so ``video->text`` hides the video from the answer there too."""
    from tasks.video import Clip

    bb, state = family_prompts["nemotron_h_omni"]
    ko = parse_knockout("video->text+frame->frame")
    one = prefill(bb, None, state=replace(state), knockout=ko)[0]
    torch.testing.assert_close(prefill(bb, None, state=replace(state), knockout=ko, chunk=7)[0], one,
                               rtol=1e-5, atol=1e-5)
    assert not torch.equal(one, prefill(bb, None, state=replace(state))[0])
    bb, state = family_prompts["llava_onevision"]
    g = torch.Generator().manual_seed(5)
    frames = (torch.rand(2, 3, bb.frame_size, bb.frame_size, generator=g) * 255).to(torch.uint8)
    other = bb.encode(bb.processor_inputs(Clip.consecutive(frames), "what ?")).state
    ko = parse_knockout("video->text")
    torch.testing.assert_close(prefill(bb, None, state=replace(state), knockout=ko)[0],
                               prefill(bb, None, state=replace(other), knockout=ko)[0], rtol=0, atol=1e-6)
    assert (prefill(bb, None, state=replace(state))[0] - prefill(bb, None, state=replace(other))[0]).abs().max() > 1e-3


# --- the masked forms with nothing blocked equal the library -------------------------------

def mamba_mixers(backbones):
    for arch in ("mamba", "hybrid"):
        bb = backbones[arch]
        i = bb.layer_kinds().index("mamba")
        yield arch, bb, i


def test_masked_mamba_with_an_empty_mask_equals_the_library_mixer(backbones):
    for arch, bb, i in mamba_mixers(backbones):
        mixer = bb.layers[i].mixer
        hidden = torch.randn(1, 21, bb.hidden_size, generator=torch.Generator().manual_seed(1))
        with torch.inference_mode():
            ref = mixer(hidden)
            for blocked in (None, torch.zeros(21, 21, dtype=torch.bool)):
                torch.testing.assert_close(masked_forward(mixer, hidden, blocked), ref, rtol=1e-4, atol=1e-4)
            M = mixing_matrix(mixer, hidden)
        assert M.shape == (1, mixer.num_heads, 21, 21) and not M.triu(1).any(), arch


def test_masked_mamba_equals_the_library_layer_chunked_with_its_state(backbones):
    """The library's layer in chunks of 5 (conv and SSM state carried by the cache) == the masked form
    over the whole sequence, and == the masked form recomputed over each chunk's prefix."""
    for arch, bb, i in mamba_mixers(backbones):
        layer = bb.layers[i]
        hidden = torch.randn(1, 17, bb.hidden_size, generator=torch.Generator().manual_seed(2))
        with torch.inference_mode():
            chunks = _chunk_inputs(bb, torch.arange(17), 5)
            ref = _run_layer_chunked(bb, i, hidden, bb.new_cache(), chunks)
            fp32 = getattr(layer, "residual_in_fp32", False)
            whole = masked_block(layer.norm, layer.mixer, hidden, torch.zeros(17, 17, dtype=torch.bool), fp32)
            torch.testing.assert_close(whole, ref, rtol=1e-4, atol=1e-4)
            for start, end, _ in chunks:
                prefix = masked_block(layer.norm, layer.mixer, hidden[:, :end], None, fp32)
                torch.testing.assert_close(prefix[:, start:end], ref[:, start:end], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("chunk", [None, 5])
def test_attention_mask_with_nothing_blocked_equals_the_maskless_path(chunk, backbones):
    for arch in ("transformer", "hybrid"):
        bb = backbones[arch]
        i = bb.layer_kinds().index("attention")
        hidden = torch.randn(1, 17, bb.hidden_size, generator=torch.Generator().manual_seed(3))
        with torch.inference_mode():
            chunks = _chunk_inputs(bb, torch.arange(17), chunk)
            ref = _run_layer_chunked(bb, i, hidden, bb.new_cache(), chunks)
            none = torch.zeros(17, 17, dtype=torch.bool)
            masked = [(s, e, inp.with_blocked(none[s:e, :e])) for s, e, inp in chunks]
            ours = _run_layer_chunked(bb, i, hidden, bb.new_cache(), masked)
        torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)


# --- independence ----------------------------------------------------------------------------

@pytest.mark.parametrize("arch", OWN)
def test_video_to_text_blocked_everywhere_hides_the_video(arch, backbones):
    bb = backbones[arch]
    ko = parse_knockout("video->text")
    for chunk in (None, 6):
        one = prefill(bb, None, state=own_prompt(bb), knockout=ko, chunk=chunk)[0]
        other = prefill(bb, None, state=own_prompt(bb, video_seed=9), knockout=ko, chunk=chunk)[0]
        torch.testing.assert_close(one, other, rtol=0, atol=1e-6)
        plain = prefill(bb, None, state=own_prompt(bb), chunk=chunk)[0]
        plain_other = prefill(bb, None, state=own_prompt(bb, video_seed=9), chunk=chunk)[0]
        assert (plain - plain_other).abs().max() > 1e-3
    torch.testing.assert_close(prefill(bb, None, state=own_prompt(bb), knockout=ko, chunk=6)[0],
                               prefill(bb, None, state=own_prompt(bb), knockout=ko)[0], rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="no cache to decode from"):  # a knockout prefill is not for decoding
        decode_step(bb, torch.zeros(1, 1, dtype=torch.long), prefill(bb, None, state=own_prompt(bb), knockout=ko)[1])
    # generation too: each new token joins the text, and still sees no video
    ids = [generate(bb, state=own_prompt(bb, video_seed=s), knockout=ko, max_new_tokens=3).ids() for s in (0, 9)]
    assert ids[0] == ids[1]


def test_a_compressor_dropping_tokens_mid_pass_keeps_the_knockout_on_the_tokens_left(backbones):
    """TD drops half the video before layer 3: the blocked pairs follow the shorter sequence (one-shot
    and chunked), and the video stays hidden from the text."""
    from compressors.base import make_compressor

    bb = backbones["hybrid"]
    td = make_compressor("td:schedule=uni_3_0.5")
    ko = parse_knockout("video->text")
    runs = [prefill(bb, None, state=own_prompt(bb, video_seed=s), compressor=td, knockout=ko, chunk=c)
            for s in (0, 9) for c in (None, 5)]
    assert runs[0][1].length == own_prompt(bb).length - FRAMES * PER_FRAME // 2
    for logits, _ in runs[1:]:
        torch.testing.assert_close(logits, runs[0][0], rtol=1e-5, atol=1e-5)


def test_hybrid_attention_only_knockout_lets_the_video_through_the_mamba_layers(backbones):
    """``kinds=attention`` blocks the hybrid's attention blocks only: the video still reaches the last
    token through the Mamba-2 blocks; blocked in every kind, it does not."""
    bb = backbones["hybrid"]
    ko = parse_knockout("video->text:kinds=attention")
    one = prefill(bb, None, state=own_prompt(bb), knockout=ko)[0]
    other = prefill(bb, None, state=own_prompt(bb, video_seed=9), knockout=ko)[0]
    assert (one - other).abs().max() > 1e-4
    assert not torch.equal(one, prefill(bb, None, state=own_prompt(bb))[0])


@pytest.mark.parametrize("arch", ["transformer", "qwen3_vl"])
def test_generation_under_an_empty_knockout_equals_cached_decoding(arch, backbones, family_prompts):
    """Recomputing the sequence for every token (the knockout path) == decoding through the cache:
    the appended tokens' positions (1-D and Qwen3-VL's 3-D) are right."""
    bb, state = (backbones[arch], own_prompt(backbones[arch])) if arch in OWN else family_prompts[arch]
    plain = generate(bb, state=replace(state), max_new_tokens=4)
    recomputed = generate(bb, state=replace(state), max_new_tokens=4, knockout=Knockout(()))
    assert recomputed.ids() == plain.ids()


# --- eval --knockout ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def vniah_data(tmp_path_factory):
    from tasks.vniah import Config, generate as make_vniah

    return make_vniah(tmp_path_factory.mktemp("vniah"), Config(lengths=(4,), depths=(0.0, 1.0), per_cell=1,
                                                               size=32, seed=3))


def test_eval_with_a_knockout_records_edges_off(vniah_data, tmp_path, capsys):
    from bench.cli import main

    log, out = tmp_path / "log.jsonl", tmp_path / "out.jsonl"
    assert main(["eval", "--task", "vniah", "--data", str(vniah_data), "--arch", "transformer", "--frames", "4",
                 "--tokens-per-frame", "2", "--knockout", "video->last+frame->frame", "--log", str(log),
                 "--output", str(out)]) == 0
    capsys.readouterr()
    task = json.loads(out.read_text())["task"]
    offs = [json.loads(line)["edges_off"] for line in log.read_text().splitlines()]
    assert task["knockout"] == "video->last+frame->frame" and task["n"] == len(offs) == 2
    assert 0 < task["edges_off"] < 1 and task["edges_off"] == pytest.approx(sum(offs) / len(offs))


BAD = [
    ("video->nowhere", ("unknown group", "'nowhere'")),
    ("video-last", ("'video-last'", "SOURCE->TARGET")),
    ("", ("no edges",)),
    ("frame->last", ("only valid in frame->frame",)),
    ("video->last:layers=5-2", ("layers", "5 is after", "2")),
    ("video->last:layers=x", ("layers 'x'",)),
    ("video->last:steps=2", ("unknown option", "'steps=2'")),
    ("video->last:kinds=mlp", ("unknown layer kind", "'mlp'")),
    ("video->last:layers=1-2,layers=3-4", ("'layers' given twice",)),
    ("video->last:layers=0-99", ("out of range", "9 layers")),
]


@pytest.mark.parametrize("spec,needles", BAD, ids=[b[0] or "empty" for b in BAD])
def test_bad_knockouts_are_one_line(spec, needles, vniah_data, capfd):
    user_error(capfd, ["eval", "--task", "vniah", "--data", str(vniah_data), "--arch", "transformer",
                       "--knockout", spec], *needles)
