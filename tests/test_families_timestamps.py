"""Issue 15, item 20: a video LLM is told where in the video its sampled frames are.

The reference is the library's own processor, loaded from the checkpoint and called directly
with the true video metadata (source fps, sampled frame indices, total frames); the harness's
prompt ids must equal its ids, and the times written into the prompt must be those of the
sampled frames (e.g. 7 frames of a 300-frame 25 fps video, not 0.5 .. 3.5 s). Frames are
non-square and the frame counts odd (the last temporal patch is half full).
"""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoProcessor
from transformers.video_utils import VideoMetadata

from architectures import ARCHITECTURES
from architectures.families.base import FamilyBackbone
from bench.cli import main
from tasks import fixtures
from tasks.video import Clip, rate_indices, uniform_indices

FAMILIES = ["qwen3_vl", "nemotron_h_omni", "llava_onevision"]
PROMPT = "what happens in the video ?"
# (frames, height, width, source frames, source fps, sampled indices)
CLIPS = {
    "7_of_300_at_25fps": (7, 64, 96, 300, 25.0, uniform_indices(7, 300)),
    "5_at_half_fps_of_20fps": (5, 80, 48, 600, 20.0, rate_indices(600, 20.0, 0.5)[::3]),
    "3_late_frames": (3, 48, 64, 1000, 25.0, [700, 800, 999]),
}


@pytest.fixture(scope="session")
def ckpts(family_checkpoints):
    return family_checkpoints


@pytest.fixture(scope="module")
def backbones(ckpts):
    return {arch: ARCHITECTURES.get(arch).build(checkpoint=path) for arch, path in ckpts.items()}


def uint8(frames: torch.Tensor) -> torch.Tensor:
    return frames if frames.dtype == torch.uint8 else (frames.float().clamp(0, 1) * 255).round().to(torch.uint8)


def library_inputs(path, frames, prompt, *, total, fps, indices):
    """The checkpoint's processor, called directly with the true video metadata."""
    proc = AutoProcessor.from_pretrained(path, local_files_only=True)
    messages = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": prompt}]}]
    text = proc.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    meta = VideoMetadata(total_num_frames=total, fps=fps, duration=total / fps, frames_indices=list(indices))
    return proc(text=text, videos=[uint8(frames)], video_metadata=meta, do_sample_frames=False, return_tensors="pt")


def expected_times(arch, fps, indices) -> list[str]:
    """The times the family's prompt should name for these frames (computed here, not by the library)."""
    if arch == "qwen3_vl":  # one per temporal patch of 2 frames: the mean of its frames' times
        padded = list(indices) + ([indices[-1]] if len(indices) % 2 else [])
        return [f"<{(padded[i] + padded[i + 1]) / fps / 2:.1f}seconds>" for i in range(0, len(padded), 2)]
    if arch == "nemotron_h_omni":  # one per frame ("Frame 1 sampled at 0.00 seconds")
        return [f"rame{k + 1}sampledat{idx / fps:.2f}seconds" for k, idx in enumerate(indices)]
    return []  # LLaVA-OneVision's prompt carries no times


def squashed(bb, ids) -> str:
    return "".join(bb.processor.tokenizer.decode(ids[0]).split())


def assert_prompt_equals_library(arch, path, bb, inputs, frames, prompt, *, total, fps, indices):
    ref = library_inputs(path, frames, prompt, total=total, fps=fps, indices=indices)
    assert inputs["input_ids"].tolist() == ref["input_ids"].tolist()
    torch.testing.assert_close(inputs["pixel_values_videos"], ref["pixel_values_videos"], rtol=0, atol=0)
    text = squashed(bb, inputs["input_ids"])
    for stamp in expected_times(arch, fps, indices):
        assert stamp in text, (stamp, text)
    if arch != "llava_onevision":  # the old bug: consecutive frames at 1 fps
        wrong = expected_times(arch, 1.0, list(range(len(indices))))
        assert not all(stamp in text for stamp in wrong)


@pytest.mark.parametrize("clip_name", CLIPS)
@pytest.mark.parametrize("arch", FAMILIES)
def test_prompt_ids_and_times_equal_the_library_processor_with_true_metadata(arch, clip_name, ckpts, backbones):
    n, h, w, total, fps, indices = CLIPS[clip_name]
    assert len(indices) == n
    frames = torch.rand(n, 3, h, w, generator=torch.Generator().manual_seed(n))
    bb = backbones[arch]
    inputs = bb.processor_inputs(Clip(frames, indices, fps, total), PROMPT)
    assert_prompt_equals_library(arch, ckpts[arch], bb, inputs, frames, PROMPT, total=total, fps=fps,
                                 indices=indices)
    prompt = bb.encode(inputs)  # odd counts and non-square frames run through the model's own vision code
    assert prompt.vision_tokens == int(prompt.state.vision.sum()) > 0


# --- eval: frames decoded from a real video reach the processor with their metadata ----------------

SECONDS, VIDEO_FPS = 12, 25  # 300 frames


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("videomme")
    fixtures.make_videomme(root, videos=1, seconds=SECONDS)
    for video in (root / "data").glob("*.mp4"):  # re-encode at 25 fps: sampled indices far from 0..n-1
        fixtures.write_video(video, seconds=SECONDS, fps=VIDEO_FPS, size=64)
    return root


@pytest.mark.parametrize("sampling, indices", [
    (["--frames", "7"], uniform_indices(7, SECONDS * VIDEO_FPS)),
    (["--fps", "0.5", "--frames", "5"],
     [rate_indices(SECONDS * VIDEO_FPS, VIDEO_FPS, 0.5)[i] for i in uniform_indices(5, 6)]),
])
@pytest.mark.parametrize("arch", FAMILIES)
def test_eval_tells_the_processor_the_sampled_frames(arch, sampling, indices, ckpts, data, tmp_path, monkeypatch,
                                                     capsys):
    seen = []
    original = FamilyBackbone.processor_inputs

    def spy(self, clip, prompt):
        out = original(self, clip, prompt)
        seen.append((self, clip, prompt, out))
        return out

    monkeypatch.setattr(FamilyBackbone, "processor_inputs", spy)
    log = tmp_path / "log.jsonl"
    argv = ["eval", "--task", "videomme", "--data", str(data), "--checkpoint", ckpts[arch], "--limit", "1",
            "--log", str(log), *sampling]
    assert main(argv) == 0, capsys.readouterr().err
    assert json.loads(log.read_text().splitlines()[0])["error"] is None
    (bb, clip, prompt, inputs), = seen
    total = SECONDS * VIDEO_FPS
    assert (clip.indices, clip.total_frames, clip.fps) == (indices, total, pytest.approx(VIDEO_FPS))
    assert_prompt_equals_library(arch, ckpts[arch], bb, inputs, clip.frames, prompt, total=total,
                                 fps=float(VIDEO_FPS), indices=indices)
