"""STC: the tower cacher (exactness, reuse, accounting), the novelty pruner, both through the runner."""

import math

import pytest
import torch
import torch.nn.functional as F

from architectures.vision import VisionSide
from bench.errors import UserError
from compressors.base import make_compressor
from compressors.stc import STC, STCCacher, STCPruner, novelty

FRAMES = 5


@pytest.fixture(scope="module")
def vision():
    side = VisionSide("tiny", llm_hidden=64)
    side.frame_batch = 2  # smaller than the frame count: references cross batch boundaries
    return side


@pytest.fixture(scope="module")
def frames():
    return torch.randn(FRAMES, 3, 64, 64, generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope="module")
def plain(vision, frames):
    with torch.no_grad():
        return vision.encode(frames)


def cached(vision, frames, spec):
    comp = make_compressor(spec)
    with torch.no_grad():
        return vision.encode(frames, comp), comp


# --- registry and validation ---------------------------------------------------------------------


@pytest.mark.parametrize("spec,cls", [
    ("stc_cacher:cache_interval=2,update_ratio=0.25", STCCacher),
    ("stc_pruner:tokens_per_frame=8", STCPruner),
    ("stc_pruner:tokens_per_frame=4,variant=code", STCPruner),
    ("stc:cache_interval=2,update_ratio=0.25,tokens_per_frame=8", STC),
    ("stc", STC),
])
def test_registry_builds(spec, cls):
    comp = make_compressor(spec)
    assert type(comp) is cls
    assert comp.added_params() == 0


def test_defaults_and_hooks():
    stc = make_compressor("stc")
    assert stc.cache_interval == 2 and stc.update_ratio == 0.25 and stc.keep == 8 and stc.variant == "paper"
    assert stc.wants_tower_hook and make_compressor("stc_cacher").wants_tower_hook
    assert not make_compressor("stc_pruner").wants_tower_hook


@pytest.mark.parametrize("spec,key", [
    ("stc_cacher:update_ratio=0", "update_ratio"),
    ("stc_cacher:update_ratio=1.5", "update_ratio"),
    ("stc_cacher:update_ratio=true", "update_ratio"),
    ("stc_cacher:cache_interval=0", "cache_interval"),
    ("stc_cacher:cache_interval=1.5", "cache_interval"),
    ("stc_pruner:tokens_per_frame=0", "tokens_per_frame"),
    ("stc_pruner:variant=fancy", "variant"),
    ("stc:update_ratio=0", "update_ratio"),
    ("stc:tokens_per_frame=0", "tokens_per_frame"),
    ("stc_cacher:tokens_per_frame=4", "tokens_per_frame"),
    ("stc:ratio=0.5", "ratio"),
])
def test_bad_values(spec, key):
    with pytest.raises(UserError, match=key) as err:
        make_compressor(spec)
    assert "\n" not in str(err.value) and spec.split(":")[0] in str(err.value)


# --- STC-Cacher ---------------------------------------------------------------------------------


@pytest.mark.parametrize("interval", [1, 2, 3])
def test_full_update_reproduces_plain_tower(vision, frames, plain, interval):
    out, _ = cached(vision, frames, f"stc_cacher:cache_interval={interval},update_ratio=1.0")
    assert out.shape == plain.shape and out.dtype == plain.dtype
    assert torch.allclose(out, plain, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("interval", [2, 3])
def test_partial_update_reuses_reference(vision, frames, plain, interval):
    out, _ = cached(vision, frames, f"stc_cacher:cache_interval={interval},update_ratio=0.25")
    for i in range(FRAMES):
        if i % interval == 0:
            assert torch.allclose(out[i], plain[i], atol=1e-5, rtol=1e-5)
        else:
            assert not torch.allclose(out[i], plain[i], atol=1e-3)


@pytest.mark.parametrize("ratio", [0.05, 0.25, 0.5])
def test_static_video_is_exact(vision, frames, ratio):
    static = frames[:1].expand(FRAMES, -1, -1, -1)
    with torch.no_grad():
        plain = vision.encode(static)
    out, _ = cached(vision, static, f"stc_cacher:cache_interval=3,update_ratio={ratio}")
    assert torch.allclose(out, plain, atol=1e-5, rtol=1e-5)


def test_updated_tokens_come_from_the_frame_itself(vision, frames):
    """A non-reference frame whose first tokens change: with enough updates it matches a full run."""
    moved = frames[:1].repeat(2, 1, 1, 1)
    moved[1, :, :8, :8] += 3.0  # one patch of 64 differs
    with torch.no_grad():
        plain = vision.encode(moved)
    out, comp = cached(vision, moved, "stc_cacher:cache_interval=2,update_ratio=1.0")
    assert torch.allclose(out, plain, atol=1e-5, rtol=1e-5)
    out, _ = cached(vision, moved, "stc_cacher:cache_interval=2,update_ratio=0.02")  # ceil(1.28) = 2 tokens
    assert not torch.allclose(out[1], plain[1], atol=1e-3)
    assert torch.allclose(out[0], plain[0], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("interval,ratio", [(2, 0.25), (3, 0.1), (1, 0.5), (4, 1.0)])
def test_accounting(vision, frames, interval, ratio):
    _, comp = cached(vision, frames, f"stc_cacher:cache_interval={interval},update_ratio={ratio}")
    tokens = vision.num_patches
    refs = len(range(0, FRAMES, interval))
    assert comp.stages == [{
        "where": "tower", "layer": None, "tokens_in": FRAMES * tokens,
        "tokens_out": refs * tokens + (FRAMES - refs) * math.ceil(ratio * tokens), "reference_frames": refs,
    }]
    assert comp.time_s > 0


def test_reset_restarts_the_frame_count(vision, frames, plain):
    comp = make_compressor("stc_cacher:cache_interval=2,update_ratio=0.25")
    with torch.no_grad():
        first = vision.encode(frames[:3], comp)
        comp.reset()
        assert comp.stages == [] and comp.time_s == 0
        again = vision.encode(frames[:3], comp)
        shifted = vision.encode(frames[:3], comp)  # no reset: these are frames 3, 4, 5 of the pass
    assert torch.equal(first, again)
    assert torch.allclose(shifted[1], plain[1], atol=1e-5, rtol=1e-5)  # frame 4: a reference
    assert not torch.allclose(first[1], plain[1], atol=1e-3)  # frame 1 of the first pass: not one
    assert comp.stages[0]["reference_frames"] == 2 + 1  # frames 0, 2, then 4


def test_keeps_dtype():
    side = VisionSide("tiny", llm_hidden=64, dtype=torch.bfloat16)
    pixels = torch.randn(3, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    comp = make_compressor("stc_cacher:update_ratio=0.5")
    with torch.no_grad():
        out = side.encode(pixels, comp)
    assert out.dtype == torch.bfloat16 and out.shape == (3, 64, 64)


# --- STC-Pruner ---------------------------------------------------------------------------------


def naive_novelty(x):
    """Per frame, by loops: (1 - cos(token, mean of previous frame means)) + (1 - cos(token, frame mean))."""
    b, f, t, h = x.shape
    out = torch.empty(b, f, t)
    for i in range(b):
        means = []
        for j in range(f):
            spatial = x[i, j].mean(0)
            temporal = torch.stack(means).mean(0) if means else spatial
            out[i, j] = (1 - F.cosine_similarity(x[i, j], temporal[None])) + (1 - F.cosine_similarity(x[i, j], spatial[None]))
            means.append(spatial)
    return out


def test_novelty_matches_definition():
    x = torch.randn(2, 4, 6, 8, generator=torch.Generator().manual_seed(3))
    assert torch.allclose(novelty(x), naive_novelty(x), atol=1e-5)


@pytest.mark.parametrize("variant", ["paper", "code"])
@pytest.mark.parametrize("keep", [1, 3, 7])
def test_pruner_keeps_a_subset_in_order(variant, keep):
    x = torch.randn(2, 3, 7, 16, generator=torch.Generator().manual_seed(keep))
    comp = make_compressor(f"stc_pruner:tokens_per_frame={keep},variant={variant}")
    out = comp.after_projector(x)
    assert out.shape == (2, 3 * keep, 16) and out.dtype == x.dtype
    for b in range(2):
        for f in range(3):
            kept = out[b, f * keep:(f + 1) * keep]
            idx = [int((x[b, f] == tok).all(-1).nonzero()) for tok in kept]
            assert idx == sorted(set(idx))
    assert comp.stages == [{"where": "projector", "layer": None, "tokens_in": 21, "tokens_out": 3 * keep}]


@pytest.mark.parametrize("variant", ["paper", "code"])
def test_pruner_keeps_all_when_budget_covers_frame(variant):
    x = torch.randn(1, 2, 4, 8)
    comp = make_compressor(f"stc_pruner:tokens_per_frame=4,variant={variant}")
    assert torch.equal(comp.after_projector(x), x.flatten(1, 2))
    comp = make_compressor(f"stc_pruner:tokens_per_frame=9,variant={variant}")
    assert torch.equal(comp.after_projector(x), x.flatten(1, 2))
    assert comp.stages[0]["tokens_out"] == 8


def test_pruner_hand_case():
    # Frame 0: three identical tokens (all tie: the first is kept). Frame 1: temporal anchor = (1, 0),
    # spatial anchor = (2/3, 1/3); token 1 = (0, 1) scores 1 + (1 - 1/sqrt(5)), tokens 0 and 2 score
    # 0 + (1 - 2/sqrt(5)).
    e0, e1 = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])
    x = torch.stack([torch.stack([e0, e0, e0]), torch.stack([e0, e1, e0])])[None]
    scores = novelty(x)[0]
    assert torch.allclose(scores[0], torch.zeros(3), atol=1e-6)
    assert torch.allclose(scores[1], torch.tensor([1 - 2 / 5 ** 0.5, 2 - 1 / 5 ** 0.5, 1 - 2 / 5 ** 0.5]))
    out = make_compressor("stc_pruner:tokens_per_frame=1").after_projector(x)
    assert torch.equal(out[0], torch.stack([e0, e1]))
    out = make_compressor("stc_pruner:tokens_per_frame=2").after_projector(x)
    assert torch.equal(out[0], torch.stack([e0, e0, e0, e1]))  # frame 1: tokens 0 (tie with 2) and 1


def test_pruner_code_variant_finds_the_outlier():
    base = torch.zeros(1, 2, 6, 8)
    base[..., :] = torch.linspace(0, 1, 8)
    base += 0.01 * torch.randn(base.shape, generator=torch.Generator().manual_seed(4))
    base[0, 1, 4] += 2.0  # frame 1, token 4 moves in every channel
    out = make_compressor("stc_pruner:tokens_per_frame=1,variant=code").after_projector(base)
    assert out.shape == (1, 2, 8)
    assert torch.equal(out[0, 1], base[0, 1, 4])


def test_pruner_keeps_dtype():
    x = torch.randn(1, 3, 10, 16).to(torch.bfloat16)
    for variant in ("paper", "code"):
        out = make_compressor(f"stc_pruner:tokens_per_frame=4,variant={variant}").after_projector(x)
        assert out.dtype == torch.bfloat16 and out.shape == (1, 12, 16)


# --- both, end to end ---------------------------------------------------------------------------


def test_stc_through_the_runner():
    from bench.measure.runner import run_cell
    from bench.spec import make_spec

    spec = make_spec({"arch": "hybrid", "preset": "tiny", "vision": "siglip",
                      "compressor": "stc:cache_interval=2,update_ratio=0.25,tokens_per_frame=8", "frames": 4,
                      "prompt_tokens": 4, "new_tokens": 2, "warmup": 0, "repeats": 1})
    record = run_cell(spec)
    assert record["status"] == "ok", record.get("error")
    metrics = record["metrics"]
    assert metrics["tokens_after_compression"] == 1 + 4 * 8 + 4
    tower, projector = metrics["compressor"]["stages"]
    patches = VisionSide("tiny", llm_hidden=64, device="meta").num_patches
    assert tower == {"where": "tower", "layer": None, "tokens_in": 4 * patches,
                     "tokens_out": 2 * patches + 2 * math.ceil(0.25 * patches), "reference_frames": 2}
    assert projector == {"where": "projector", "layer": None, "tokens_in": 4 * spec.tokens_per_frame,
                         "tokens_out": 4 * 8}
