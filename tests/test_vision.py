"""Vision side: ToMe merging, the SigLIP tower's second-to-last layer, batching, presets."""

import psutil
import pytest
import torch

from architectures.vision import VISION_PRESETS, VisionSide, tome_merge, vision_config
from bench.errors import UserError

LLM_HIDDEN = 32


# --- tome_merge ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "tokens,target", [(64, 16), (729, 16), (17, 5), (9, 4), (10, 3), (7, 1), (2, 1), (3, 1), (5, 4)]
)
def test_tome_shape(tokens, target):
    x = torch.randn(3, tokens, 8, generator=torch.Generator().manual_seed(tokens))
    assert tome_merge(x, target).shape == (3, target, 8)


@pytest.mark.parametrize("tokens,target", [(4, 4), (4, 16), (1, 1)])
def test_tome_identity_when_few_tokens(tokens, target):
    x = torch.randn(2, tokens, 8)
    assert torch.equal(tome_merge(x, target), x)


def test_tome_deterministic():
    x = torch.randn(4, 100, 16, generator=torch.Generator().manual_seed(1))
    assert torch.equal(tome_merge(x, 7), tome_merge(x.clone(), 7))


def test_tome_bad_target():
    with pytest.raises(ValueError):
        tome_merge(torch.randn(1, 4, 2), 0)


def test_tome_identical_tokens_merge_to_that_token():
    t = torch.randn(1, 1, 8)
    assert torch.allclose(tome_merge(torch.cat([t, t], dim=1), 1), t)
    assert torch.allclose(tome_merge(t.expand(1, 9, 8).contiguous(), 3), t.expand(1, 3, 8))


def test_tome_size_weighted_hand_case():
    p, q, w = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0]), torch.tensor([1.0, 0.2])
    x = torch.stack([p, p, q, q, w])[None]  # A = (p, q, w) at 0, 2, 4; B = (p, q) at 1, 3
    # Round 1 (5 -> 2): every A token merges into its match: B0 = mean(p, p, w) (size 3), B1 = mean(q, q) = q.
    two = tome_merge(x, 2)
    assert torch.allclose(two[0], torch.stack([(2 * p + w) / 3, q]))
    # Round 2 (2 -> 1): size-weighted (3 : 2), i.e. the mean of all five originals, not (B0 + B1) / 2.
    one = tome_merge(x, 1)
    assert torch.allclose(one[0, 0], (2 * p + 2 * q + w) / 5)
    assert not torch.allclose(one[0, 0], ((2 * p + w) / 3 + q) / 2)


def test_tome_merge_to_one_is_mean():
    x = torch.randn(3, 37, 8, generator=torch.Generator().manual_seed(2))
    assert torch.allclose(tome_merge(x, 1)[:, 0], x.mean(dim=1), atol=1e-5)


def test_tome_keeps_order_and_dtype():
    # Four well separated clusters laid out in order; each output token must be its cluster's mean.
    centers = torch.eye(4) * 10
    noise = 0.01 * torch.randn(1, 16, 4, generator=torch.Generator().manual_seed(3))
    x = centers.repeat_interleave(4, dim=0)[None] + noise
    out = tome_merge(x, 4)
    assert torch.allclose(out[0], x[0].view(4, 4, 4).mean(dim=1), atol=1e-5)
    assert tome_merge(x.to(torch.bfloat16), 4).dtype == torch.bfloat16


# --- presets and parameter counts ------------------------------------------------------


def test_unknown_preset():
    with pytest.raises(UserError, match="valid: tiny, small, paper"):
        vision_config("huge")
    with pytest.raises(UserError):
        VisionSide("huge", LLM_HIDDEN)


def test_config_fields():
    cfg = vision_config("paper")
    assert cfg.vision_use_head is False
    assert cfg._attn_implementation == "sdpa"
    assert (cfg.image_size // cfg.patch_size) ** 2 == 729
    assert set(VISION_PRESETS) == {"tiny", "small", "paper"}


def test_paper_param_count_on_meta():
    llm = 4096
    proc = psutil.Process()
    rss = proc.memory_info().rss
    total = VisionSide.param_count("paper", llm)
    grown = proc.memory_info().rss - rss
    projector = 1152 * llm + llm + llm * llm + llm
    tower = total - projector
    print(f"paper vision tower: {tower:,} params; with projector to {llm}: {total:,}")
    assert 400e6 <= tower <= 430e6
    assert grown < 200e6  # the real fp32 tower would be ~1.7 GB


# --- VisionSide (tiny) ------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny():
    return VisionSide("tiny", LLM_HIDDEN, seed=0)


@pytest.fixture(scope="module")
def frames():
    return torch.randn(5, 3, 64, 64, generator=torch.Generator().manual_seed(0))


def test_forward_shape(tiny, frames):
    assert tiny.image_size == 64
    out = tiny(frames)
    assert out.shape == (5, 16, LLM_HIDDEN)
    assert out.dtype == torch.float32 and torch.isfinite(out).all()


def test_encode_is_second_to_last_layer(tiny, frames):
    with torch.inference_mode():
        feats = tiny.encode(frames)
        # SigLIP's processor normalises [0, 1] pixels with mean = std = 0.5
        ref = tiny.tower(pixel_values=(frames - 0.5) / 0.5, output_hidden_states=True)
    assert feats.shape == (5, 64, 64)
    assert torch.allclose(feats, ref.hidden_states[-2], atol=1e-5)
    assert not torch.allclose(feats, ref.last_hidden_state, atol=1e-3)


def test_frame_batching_matches_one_batch(frames):
    one = VisionSide("tiny", LLM_HIDDEN, seed=0)
    split = VisionSide("tiny", LLM_HIDDEN, seed=0)
    one.frame_batch, split.frame_batch = 32, 2
    with torch.inference_mode():
        assert torch.allclose(one.encode(frames), split.encode(frames), atol=1e-5)
    assert torch.allclose(one(frames), split(frames), atol=1e-5)


def test_forward_equals_project_of_encode(tiny, frames):
    with torch.inference_mode():
        assert torch.allclose(tiny(frames), tiny.project(tiny.encode(frames)), atol=1e-5)


def test_seed_and_wrong_frame_size():
    a, b = VisionSide("tiny", 8, seed=1), VisionSide("tiny", 8, seed=1)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    with pytest.raises(ValueError):
        a.encode(torch.randn(1, 3, 32, 32))


def test_bfloat16(frames):
    side = VisionSide("tiny", LLM_HIDDEN, dtype=torch.bfloat16)
    out = side(frames)  # float32 frames are cast to the model dtype per batch
    assert out.dtype == torch.bfloat16 and out.shape == (5, 16, LLM_HIDDEN)
