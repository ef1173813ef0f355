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
    # Kept on the host so that a pass never reads the device to shape its tensors (no sync, and
    # fake-tensor passes work: bench.predict.fake_pass): how many vision tokens, and the index just after
    # the last one (where the instruction starts). -1: count them from the mask.
    n_vision: int = -1
    vision_end: int = -1

    def __post_init__(self):
        if self.n_vision < 0:
            self.n_vision = int(self.vision.sum())
        if self.vision_end < 0:
            self.vision_end = int(self.vision.nonzero().max()) + 1 if self.n_vision else self.length

    @classmethod
    def for_prompt(cls, embeds: torch.Tensor, vision) -> "TokenState":
        """The state of a prompt whose vision tokens are a (start, end) span or a bool mask."""
        length = embeds.shape[1]
        mask = cls.vision_mask(length, vision, embeds.device)
        counts = {} if isinstance(vision, torch.Tensor) else {
            "n_vision": vision[1] - vision[0], "vision_end": vision[1] if vision[1] > vision[0] else length}
        return cls(embeds, torch.arange(length, device=embeds.device), mask, **counts)

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
        return true_indices(self.vision, self.n_vision)

    def frame_ranks(self, who: str) -> torch.Tensor:
        """Ranks (among the vision tokens) of each frame's vision tokens, grouped by the frame index:
        [frames with vision tokens, tokens per frame], rows in frame order, each row in sequence order.
        ``who`` needs every such frame to hold the same number of vision tokens: one line (UserError)
        naming the counts when they differ."""
        from bench.errors import UserError

        if self.frames is None:
            raise UserError(f"{who} needs frame indices of the vision tokens")
        frame_of = self.frames[self.vision_index()]
        counts = torch.unique(frame_of, return_counts=True)[1].tolist() if self.n_vision else []
        if not counts or min(counts) != max(counts):
            shown = ", ".join(map(str, counts[:16])) + (", ..." if len(counts) > 16 else "")
            raise UserError(f"{who} needs the same number of vision tokens in every frame; frames hold {shown}")
        order = torch.argsort(frame_of, stable=True)
        return order.reshape(len(counts), counts[0])

    def select(self, index: torch.Tensor, n_vision: int | None = None, vision_end: int | None = None) -> None:
        """Keep only the tokens at ``index`` (ascending sequence indices), everything aligned with them.

        ``n_vision``/``vision_end`` of the result, when the caller knows them; else read from the mask."""
        rank = torch.cumsum(self.vision.long(), 0) - 1
        kept_vision = self.vision[index]
        if n_vision is None:
            n_vision = int(kept_vision.sum())
            vision_end = int(kept_vision.nonzero().max()) + 1 if n_vision else index.numel()
        ranks = rank[index][true_indices(kept_vision, n_vision)]
        self.hidden = self.hidden[:, index]
        self.positions = select_positions(self.positions, index)
        self.vision = kept_vision
        self.n_vision, self.vision_end = n_vision, vision_end
        if self.frames is not None:
            self.frames = self.frames[index]
        self.per_vision = {k: [t[ranks] for t in v] for k, v in self.per_vision.items()}

    def drop_vision(self, keep: torch.Tensor) -> torch.Tensor:
        """Keep the vision tokens at ``keep`` (ascending ranks among the vision tokens) and every other
        token; return the dropped vision tokens' hidden states [batch, dropped, hidden]."""
        vis = self.vision_index()
        gone = torch.ones(vis.numel(), dtype=torch.bool, device=vis.device)
        gone[keep] = False
        n_gone = self.n_vision - keep.numel()
        gone_index = vis[true_indices(gone, n_gone)]
        dropped = self.hidden[:, gone_index]
        stay = torch.ones(self.length, dtype=torch.bool, device=vis.device)
        stay[gone_index] = False
        self.select(true_indices(stay, self.length - n_gone), n_vision=keep.numel(),
                    vision_end=self.vision_end - n_gone)
        return dropped


def true_indices(mask: torch.Tensor, count: int) -> torch.Tensor:
    """Indices of the ``count`` True entries of a 1-D mask, ascending: a stable sort instead of
    ``nonzero``, so the result's shape is known without reading the device."""
    return torch.sort(mask.to(torch.uint8), descending=True, stable=True).indices[:count]
