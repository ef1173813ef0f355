"""The own backbones' prompt, ``[BOS][video][prompt]``, from a document's sampled frames.

One way to build it, for ``eval`` and the flow probes alike: decode the frames at the size the
vision side wants, turn them into vision tokens (the vision side with the compressor's hooks, or
seeded random embeddings for ``--vision synthetic``), and lay the prompt out with its token state
(the frame of each vision token filled in when the tokens split evenly into frames).
"""

from __future__ import annotations

from pathlib import Path

import torch

from architectures.tokens import TokenState
from tasks.video import Clip, load_frames


def decode_clip(backbone, vision_side, video: str | Path, *, frames: int, fps: float | None,
                decoder: str) -> Clip:
    """The sampled frames of ``video``: ``frames`` uniformly, or ``fps`` with at most ``frames``; resized to the
    vision side's input (a real video LLM's processor resizes them itself)."""
    size = None if backbone.takes_frames else vision_side.image_size if vision_side is not None else 32
    if fps:
        return load_frames(video, fps=fps, max_frames=frames, size=size, decoder=decoder)
    return load_frames(video, frames=frames, size=size, decoder=decoder)


def sampling_label(frames: int, fps: float | None) -> str:
    return f"{fps} fps, at most {frames} frames" if fps else f"{frames} frames, uniform"


def vision_tokens(backbone, vision_side, compressor, frames: torch.Tensor, *, seed: int,
                  tokens_per_frame: int) -> torch.Tensor:
    """[1, frames, tokens per frame, hidden] on the model's device and dtype (call in inference mode)."""
    compressor.reset()
    if vision_side is not None:
        compressor.new_video()
        tokens = vision_side(frames, compressor)
    else:
        gen = torch.Generator().manual_seed(seed)
        tokens = torch.randn(frames.shape[0], tokens_per_frame, backbone.hidden_size, generator=gen) * 0.02
    return tokens.to(backbone.device, backbone.dtype)[None]


def prompt_embeds(backbone, vision: torch.Tensor, prompt_ids: list[int], bos_id: int):
    """``[BOS][vision][prompt]`` embeddings [1, length, hidden] and the vision span (start, end)."""
    device = vision.device
    bos = torch.tensor([[bos_id]], device=device)
    prompt = torch.tensor([prompt_ids], device=device)
    embeds = torch.cat([backbone.embed(bos), vision.to(backbone.dtype), backbone.embed(prompt)], dim=1)
    return embeds, (1, 1 + vision.shape[1])


def prompt_state(embeds: torch.Tensor, span: tuple[int, int], n_frames: int) -> TokenState:
    """The prompt's token state, with the frame of each vision token when they split evenly into frames."""
    state = TokenState.for_prompt(embeds, span)
    n = span[1] - span[0]
    if n_frames and n % n_frames == 0:
        frames = torch.full((state.length,), -1, dtype=torch.long, device=embeds.device)
        frames[span[0]:span[1]] = torch.arange(n_frames, device=embeds.device).repeat_interleave(n // n_frames)
        state.frames = frames
    return state
