"""The sequence as it flows through the LLM layers during prefill (a small core shared by plugins).

Vision tokens are a *mask* over the sequence, not one span: real video LLMs interleave
timestamps (Qwen3-VL), frame labels (Nemotron-3-Nano-Omni) and a newline token
(LLaVA-OneVision) with them. Positions are a tensor whose last dimension is the sequence:
``[length]`` for 1-D rotary (or none), ``[3, length]`` for Qwen3-VL's multimodal rotary (t, h, w).
Everything aligned with the tokens is selected together by ``TokenState.select``, so a
compressor that drops tokens keeps positions, the vision mask, frame indices and
per-vision-token features (Qwen3-VL's DeepStack) consistent.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


def select_positions(positions: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """Positions of the tokens at ``index`` (1-D or 3-D positions alike)."""
    return positions[..., index]


@dataclass
class TokenState:
    """hidden [batch, length, hidden]; positions [length] or [3, length]; vision: bool [length].

    frames: long [length], the temporal group (frame or temporal patch) of each vision token,
    -1 for tokens that belong to no frame (text, LLaVA's newline), or None if unknown.
    per_vision: tensors [vision tokens, ...] aligned with the vision tokens in order
    (e.g. DeepStack features); they leave with their tokens.
    """

    hidden: torch.Tensor
    positions: torch.Tensor
    vision: torch.Tensor
    frames: torch.Tensor | None = None
    per_vision: dict[str, list[torch.Tensor]] = field(default_factory=dict)

    @staticmethod
    def vision_mask(length: int, vision, device) -> torch.Tensor:
        """A bool mask from a mask or a (start, end) span."""
        if isinstance(vision, torch.Tensor):
            return vision.to(device=device, dtype=torch.bool)
        mask = torch.zeros(length, dtype=torch.bool, device=device)
        mask[vision[0]:vision[1]] = True
        return mask

    @property
    def length(self) -> int:
        return self.hidden.shape[1]

    def vision_index(self) -> torch.Tensor:
        """Sequence indices of the vision tokens, ascending."""
        return self.vision.nonzero().squeeze(1)

    def select(self, index: torch.Tensor) -> None:
        """Keep only the tokens at ``index`` (ascending sequence indices), everything aligned with them."""
        rank = torch.cumsum(self.vision.long(), 0) - 1
        kept_vision = self.vision[index]
        ranks = rank[index][kept_vision]
        self.hidden = self.hidden[:, index]
        self.positions = select_positions(self.positions, index)
        self.vision = kept_vision
        if self.frames is not None:
            self.frames = self.frames[index]
        self.per_vision = {k: [t[ranks] for t in v] for k, v in self.per_vision.items()}

    def drop_vision(self, keep: torch.Tensor) -> torch.Tensor:
        """Keep the vision tokens at ``keep`` (ascending ranks among the vision tokens) and every other
        token; return the dropped vision tokens' hidden states [batch, dropped, hidden]."""
        vis = self.vision_index()
        gone = torch.ones(vis.numel(), dtype=torch.bool, device=vis.device)
        gone[keep] = False
        dropped = self.hidden[:, vis[gone]]
        stay = torch.ones(self.length, dtype=torch.bool, device=vis.device)
        stay[vis[gone]] = False
        self.select(stay.nonzero().squeeze(1))
        return dropped
