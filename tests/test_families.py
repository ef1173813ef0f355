"""Real video LLMs under the harness's layer loop, checked against the library's own models.

Tiny random checkpoints are written by the library's own ``save_pretrained`` (model,
processor, offline tokenizer, chat template) and read back the way a published release is.
Every oracle compares the harness (processor -> family adapter -> ``bench.engine.pipeline``) with the
transformers model's own forward / ``generate`` on the same processor inputs.
"""

from __future__ import annotations

import pytest
import torch

from architectures import ARCHITECTURES
from architectures.families.offline import write_checkpoint
from bench.engine.pipeline import decode_step, prefill
from tasks.video import Clip

FAMILIES = ["qwen3_vl", "qwen3_vl_moe", "nemotron_h_omni", "llava_onevision"]
PROMPT = "what happens in the video ?"


@pytest.fixture(scope="session")
def checkpoints(family_checkpoints):
    return family_checkpoints


def frames(n=4, side=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(n, 3, side, side, generator=g) * 255).to(torch.uint8)


def library_model(arch, path, **config_overrides):
    cls = ARCHITECTURES.get(arch)
    config = cls.config_class.from_pretrained(path, **config_overrides)
    model = cls.model_class.from_pretrained(path, config=config, local_files_only=True).eval()
    if arch == "nemotron_h_omni":
        # transformers 5.23: forward torch.cat()s get_video_features' pooler_output, a tensor, and
        # fails; as a one-element tuple it is the per-video list forward (and EVS) expect.
        inner = model.get_video_features

        def video_features(*args, **kwargs):
            out = inner(*args, **kwargs)
            out.pooler_output = (out.pooler_output,)
            return out

        model.get_video_features = video_features
    return model


def library_kwargs(arch, model, inputs):
    kwargs = dict(inputs)
    if arch == "nemotron_h_omni":  # generate() cannot take pixel_values_videos for this class in 5.23
        pixels = kwargs.pop("pixel_values_videos")
        kwargs["mm_encoder_outputs"] = {"video": model.get_video_features(pixels)}
    return kwargs


@pytest.fixture(scope="session")
def loaded(checkpoints):
    out = {}
    for arch, path in checkpoints.items():
        bb = ARCHITECTURES.get(arch).build(checkpoint=path)
        out[arch] = (bb, library_model(arch, path), bb.processor_inputs(Clip.consecutive(frames()), PROMPT))
    return out


@pytest.mark.parametrize("arch", FAMILIES)
def test_logits_equal_the_library_forward(arch, loaded):
    bb, lib, inputs = loaded[arch]
    prompt = bb.encode(inputs)
    assert prompt.vision_tokens > 0 and prompt.state.vision.sum() == prompt.vision_tokens
    with torch.inference_mode():
        ref = lib(**library_kwargs(arch, lib, inputs)).logits[:, -1].float()
    ours, _ = prefill(bb, None, state=prompt.state)
    torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("arch", FAMILIES)
def test_greedy_generation_equals_library_generate(arch, loaded):
    bb, lib, inputs = loaded[arch]
    n = 6
    with torch.inference_mode():
        ref = lib.generate(**library_kwargs(arch, lib, inputs), max_new_tokens=n, do_sample=False,
                           min_new_tokens=n)[0, inputs["input_ids"].shape[1]:]
    logits, seq = prefill(bb, None, state=bb.encode(inputs).state)
    tokens = [logits.argmax(-1, keepdim=True)]
    for _ in range(n - 1):
        tokens.append(decode_step(bb, tokens[-1], seq).argmax(-1, keepdim=True))
    assert torch.cat(tokens, 1)[0].tolist() == ref.tolist()


@pytest.mark.parametrize("arch", FAMILIES)
def test_chunked_prefill_equals_one_shot(arch, loaded):
    bb, _, inputs = loaded[arch]
    one, _ = prefill(bb, None, state=bb.encode(inputs).state)
    chunked, _ = prefill(bb, None, state=bb.encode(inputs).state, chunk=5)
    torch.testing.assert_close(chunked, one, rtol=1e-4, atol=1e-4)


# --- compressors on real models ------------------------------------------------------------

from architectures.tokens import TokenState  # noqa: E402
from compressors.base import make_compressor  # noqa: E402
from compressors.dropping import Dropper, TokenDropping  # noqa: E402
from test_compressors import Replay  # noqa: E402  (drops exactly what another dropper kept)

LLM_SPECS = ["uniform:layer=0,p=0.5", "uniform:layer=2,p=0.5", "attention:layer=1,p=0.5", "fastv:layer=2,p=0.5",
             "td:schedule=uni_1_0.5-attn_2_0.5", "transv:schedule=uni_1_0.5-attn_2_0.5", "evs:p=0.5"]
PROJECTOR_SPECS = ["stc_pruner:tokens_per_frame=2", "visionzip:dominant=1,contextual=1"]


def ready(bb, spec):
    comp = make_compressor(spec)
    bb.check_compressor(comp)
    comp.check(bb)
    comp.prepare(bb)
    return comp




def extended(bb, state: TokenState, tokens: torch.Tensor, next_position: int) -> TokenState:
    """The prompt's state followed by generated tokens (text positions, no vision)."""
    n = tokens.shape[1]
    pos = torch.arange(next_position, next_position + n)
    pos = pos.expand(3, -1) if state.positions.dim() == 2 else pos
    return TokenState(torch.cat([state.hidden, bb.embed(tokens)], 1), torch.cat([state.positions, pos], -1),
                      torch.cat([state.vision, torch.zeros(n, dtype=torch.bool)]),
                      torch.cat([state.frames, torch.full((n,), -1)]), dict(state.per_vision))


@pytest.mark.parametrize("arch", FAMILIES)
@pytest.mark.parametrize("spec", LLM_SPECS + PROJECTOR_SPECS)
def test_compressors_drop_and_decode_equals_fresh_recompute(arch, spec, loaded):
    bb, _, inputs = loaded[arch]
    comp = ready(bb, spec)
    prompt = bb.encode(inputs, comp)
    start = prompt.state
    logits, seq = prefill(bb, None, compressor=comp, state=TokenState(start.hidden, start.positions, start.vision,
                                                                      start.frames, dict(start.per_vision)))
    assert seq.length < prompt.vision_tokens + (prompt.input_ids.shape[1] - prompt.vision_tokens)
    tokens, cached = [], [logits]
    for _ in range(2):
        tokens.append(cached[-1].argmax(-1, keepdim=True))
        cached.append(decode_step(bb, tokens[-1], seq))
    again = Replay(comp) if isinstance(comp, Dropper) else comp
    if hasattr(comp, "cross"):
        again.cross = comp.cross
    first_next = seq.next_position - 2
    fresh, _ = prefill(bb, None, compressor=again, state=extended(bb, start, torch.cat(tokens, 1), first_next))
    torch.testing.assert_close(cached[2], fresh, atol=2e-5, rtol=1e-4)


class Spy(TokenDropping):
    """uniform drop before layer 0 that records the state before and after."""

    name = "spy"

    def __init__(self):
        super().__init__()
        from compressors.dropping import Stage

        self._plan = [Stage("uni", 0, 0.5)]

    def before_layer(self, i, state, backbone, cache):
        self.before = (state.positions.clone(), state.vision.clone(), [d.clone() for d in
                                                                       state.per_vision.get("deepstack", [])])
        super().before_layer(i, state, backbone, cache)
        self.after = (state.positions.clone(), state.vision.clone(), state.per_vision.get("deepstack", []))


def test_qwen3_vl_kept_tokens_keep_3d_positions_and_their_deepstack(loaded):
    bb, _, inputs = loaded["qwen3_vl"]
    spy = Spy()
    prefill(bb, None, compressor=spy, state=bb.encode(inputs).state)
    (pos0, vis0, deep0), (pos1, vis1, deep1) = spy.before, spy.after
    keep = spy.kept_indices[0]
    vis_index = vis0.nonzero().squeeze(1)
    kept_seq = vis_index[keep]
    assert pos0.shape[0] == 3 and pos1.shape[0] == 3
    assert torch.equal(pos1[:, vis1], pos0[:, kept_seq])  # (t, h, w) of each kept token unchanged
    assert len(deep1) == len(deep0) >= 1
    for before, after in zip(deep0, deep1):
        assert after.shape[0] == keep.numel() and torch.equal(after, before[keep])


def test_vision_mask_is_not_one_span(loaded):
    for arch in ("qwen3_vl", "nemotron_h_omni"):
        bb, _, inputs = loaded[arch]
        vis = bb.encode(inputs).state.vision_index()
        assert (vis[1:] - vis[:-1]).max() > 1  # timestamps / frame labels between the groups
    bb, _, inputs = loaded["llava_onevision"]
    ids = inputs["input_ids"][0]
    state = bb.encode(inputs).state
    slots = (ids == bb.vlm_config.video_token_index).nonzero().squeeze(1)
    assert not state.vision[slots[-1]] and state.vision[slots[:-1]].all()  # the newline is not a frame token


def test_evs_equals_the_library_pruning_on_nemotron_omni(checkpoints):
    path = checkpoints["nemotron_h_omni"]
    bb = ARCHITECTURES.get("nemotron_h_omni").build(checkpoint=path)
    lib = library_model("nemotron_h_omni", path, video_pruning_rate=0.5)
    inputs = bb.processor_inputs(Clip.consecutive(frames(8)), PROMPT)
    with torch.inference_mode():
        ref = lib(**inputs).logits[:, -1].float()
    comp = ready(bb, "evs:p=0.5")
    ours, seq = prefill(bb, None, compressor=comp, state=bb.encode(inputs).state)
    torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-4)
    assert comp.stages[0]["tokens_out"] < comp.stages[0]["tokens_in"]
    # the checkpoint's own rate: the adapter prunes as the model does, with no compressor
    rated = ARCHITECTURES.get("nemotron_h_omni").build(checkpoint=path)
    rated.vlm_config.video_pruning_rate = 0.5
    own, own_seq = prefill(rated, None, state=rated.encode(inputs).state)
    torch.testing.assert_close(own, ref, rtol=1e-4, atol=1e-4)
    assert own_seq.length == seq.length


def test_evs_rule_equals_the_library_function():
    from transformers.models.nemotron_h_omni.modeling_nemotron_h_omni import compute_retention_mask

    from compressors.evs import evs_keep

    g = torch.Generator().manual_seed(1)
    feats = torch.randn(5, 9, 16, generator=g)
    feats[2] = feats[1] + 0.01 * torch.randn(9, 16, generator=g)
    for q in (0.1, 0.5, 0.9):
        lib = compute_retention_mask(video_embeds=feats.flatten(0, 1), thw=(5, 3, 3), spatial_merge_size=1, q=q)
        assert torch.equal(evs_keep(feats, q), lib)


# --- issue 15, items 21 and 22: a checkpoint's own EVS prunes frames unevenly ------------------------

from bench.errors import UserError  # noqa: E402
from bench.measure.runner import run_cell  # noqa: E402
from bench.spec import make_spec  # noqa: E402
from tests.bad_input import user_error  # noqa: E402

RATE = 0.5


@pytest.fixture(scope="session")
def pruning_checkpoint(tmp_path_factory):
    """Nemotron-Omni whose own EVS drops half the video tokens before the LLM (unevenly per temporal patch)."""
    return write_checkpoint("nemotron_h_omni", "tiny", tmp_path_factory.mktemp("rated") / "c",
                            video_pruning_rate=RATE)


@pytest.mark.parametrize("arch", FAMILIES)
@pytest.mark.parametrize("spec, per_frame", [("stc_pruner:tokens_per_frame=2", 2),
                                             ("visionzip:dominant=1,contextual=1", 2)])
def test_projector_compressors_keep_tokens_of_their_own_frame(arch, spec, per_frame, loaded):
    bb, _, inputs = loaded[arch]
    plain = bb.encode(inputs).state
    state = bb.encode(inputs, ready(bb, spec)).state
    frames_before, frames_after = plain.frames[plain.vision], state.frames[state.vision]
    counts = torch.unique(frames_after, return_counts=True)
    assert counts[0].tolist() == frames_before.unique().tolist() and set(counts[1].tolist()) == {per_frame}
    if spec.startswith("stc_pruner"):  # kept unchanged: each kept token is one of its own frame's tokens
        for f in frames_before.unique():
            own = plain.hidden[0, plain.vision][frames_before == f]
            for token in state.hidden[0, state.vision][frames_after == f]:
                assert (own == token).all(-1).any()


def test_own_evs_prunes_frames_unevenly_and_regrouping_is_refused(pruning_checkpoint):
    bb = ARCHITECTURES.get("nemotron_h_omni").build(checkpoint=pruning_checkpoint)
    inputs = bb.processor_inputs(Clip.consecutive(frames(8)), PROMPT)
    state = bb.encode(inputs).state
    counts = torch.unique(state.frames[state.vision], return_counts=True)[1]
    assert counts.unique().numel() > 1  # the precondition: patches keep different numbers of tokens
    for spec in PROJECTOR_SPECS:  # past the up-front check too: the grouping itself refuses, never mixes frames
        with pytest.raises(UserError, match="same number of vision tokens in every frame; frames hold"):
            bb.encode(inputs, make_compressor(spec))
    with pytest.raises(UserError, match="compressor 'evs' needs the same number"):
        prefill(bb, None, compressor=make_compressor("evs:p=0.5"), state=bb.encode(inputs).state)


@pytest.mark.parametrize("spec", ["stc_pruner:tokens_per_frame=2", "visionzip:dominant=1,contextual=1", "evs:p=0.5"])
def test_frame_regrouping_compressors_are_refused_up_front_on_a_pruning_checkpoint(spec, pruning_checkpoint, capfd):
    argv = ["run", "--checkpoint", pruning_checkpoint, "--compressor", spec, "--frames", "8", "--warmup", "0",
            "--repeats", "1"]
    user_error(capfd, argv, f"compressor {spec.split(':')[0]!r}", "video_pruning_rate=0.5", "unevenly")


def test_record_counts_what_reaches_the_llm_on_a_pruning_checkpoint(checkpoints, pruning_checkpoint):
    def record(path, compressor="none"):
        r = run_cell(make_spec({"checkpoint": path, "compressor": compressor, "frames": 8, "prompt_tokens": 4,
                                "new_tokens": 1, "warmup": 0, "repeats": 1}))
        assert r["status"] == "ok", r["error"]
        return r["metrics"]

    full, pruned, dropped = record(checkpoints["nemotron_h_omni"]), record(pruning_checkpoint), \
        record(pruning_checkpoint, "fastv:layer=1,p=0.5")
    assert full["checkpoint_pruned_tokens"] == 0 and pruned["checkpoint_pruned_tokens"] > 0
    # vision tokens are those the LLM sees: the checkpoint's own pruning is counted apart
    assert pruned["vision_tokens"] + pruned["checkpoint_pruned_tokens"] == full["vision_tokens"]
    assert pruned["input_tokens"] - pruned["vision_tokens"] == full["input_tokens"] - full["vision_tokens"]
    assert pruned["tokens_after_compression"] == pruned["input_tokens"]
    assert dropped["tokens_after_compression"] == dropped["input_tokens"] - dropped["vision_tokens"] // 2
    assert pruned["cost"] and dropped["cost"]


@pytest.mark.parametrize("arch", FAMILIES)
@pytest.mark.parametrize("frame_batch", [1, 3])
def test_frame_batches_through_the_tower_equal_the_whole_video(arch, frame_batch, checkpoints):
    """--frame-batch: the tower and projector one batch of frames (whole temporal patches) at a time give the
    features, DeepStack features and logits of the whole video at once (7 frames: a last, shorter batch)."""
    bb = ARCHITECTURES.get(arch).build(checkpoint=checkpoints[arch])
    inputs = bb.processor_inputs(Clip.consecutive(frames(7)), PROMPT)
    whole = bb.encode(inputs)
    bb.frame_batch = frame_batch
    batched = bb.encode(inputs)
    torch.testing.assert_close(batched.state.hidden, whole.state.hidden, rtol=1e-5, atol=1e-5)
    for a, b in zip(batched.state.per_vision.get("deepstack", []), whole.state.per_vision.get("deepstack", []),
                    strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    ours, _ = prefill(bb, None, state=batched.state)
    ref, _ = prefill(bb, None, state=whole.state)
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)
