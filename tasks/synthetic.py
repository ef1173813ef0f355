"""The synthetic workload: only lengths matter (speed and memory runs)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from tasks import register_task
from tasks.base import LENGTHS


@dataclass
class Request:
    """One prompt in the layout ``[BOS][video][instruction]``.

    frames: [batch, frames, 3, H, W] pixels for a real vision tower, or None when the
    vision embeddings are synthetic; prompt_ids: [batch, prompt_tokens].
    """

    bos_id: int
    frames: torch.Tensor | None
    prompt_ids: torch.Tensor


@register_task("synthetic")
class Synthetic:
    """Random frames (or none) and random instruction ids of the requested lengths."""

    kind = LENGTHS

    def __init__(self, seed: int = 0):
        self.seed = seed

    def request(self, *, batch: int, frames: int, prompt_tokens: int, vocab_size: int, image_size: int | None,
                device, dtype) -> Request:
        gen = torch.Generator().manual_seed(self.seed)
        ids = torch.randint(3, vocab_size, (batch, prompt_tokens), generator=gen).to(device)
        pixels = None
        if image_size is not None:
            pixels = torch.rand(batch, frames, 3, image_size, image_size, generator=gen).to(device, dtype)
        return Request(bos_id=1, frames=pixels, prompt_ids=ids)
