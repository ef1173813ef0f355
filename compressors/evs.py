"""EVS (Efficient Video Sampling), the token pruning built into Nemotron-3-Nano-Omni, on every family.

Rule (transformers' nemotron_h_omni ``compute_retention_mask``): each video token's
dissimilarity is 1 - cosine similarity to the token at the same place in the previous
temporal group (frame or temporal patch); every token of the first group is kept; the
``max(tokens of one group, int(groups * tokens per group * (1 - p)))`` most dissimilar tokens
survive (stable descending sort). Here it acts before LLM layer 0 on the vision tokens of the
sequence (their projected features), so kept tokens keep their positions (1-D or 3-D) and
DeepStack features. On nemotron_h_omni with the checkpoint's rate it equals the library's
own pruning (Nemotron-H has no rotary, so renumbered and kept positions give the same logits).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from compressors import register_compressor
from compressors.base import Compressor, check_rate


def evs_keep(features: torch.Tensor, p: float) -> torch.Tensor:
    """features [groups, tokens per group, hidden] -> bool keep mask [groups * tokens per group]."""
    groups, per_group = features.shape[:2]
    x = features.float()
    dissimilarity = 1 - F.cosine_similarity(x[1:], x[:-1], dim=-1)
    first = torch.full((1, per_group), 255.0, device=x.device)
    score = torch.cat([first, dissimilarity], dim=0).flatten()
    keep_n = max(per_group, int(groups * per_group * (1 - p)))
    order = torch.argsort(score, descending=True, stable=True)
    keep = torch.zeros(score.numel(), dtype=torch.bool, device=x.device)
    keep[order[:keep_n]] = True
    return keep


@register_compressor("evs")
class EVS(Compressor):
    """EVS: drop video tokens similar to the same place in the previous frame, before the LLM."""

    name = "evs"
    cannot_stream = "its top-k runs over the tokens of all frames at once"
    params = {"p": 0.5}
    regroups_frames = True

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.p = check_rate(self.name, "p", self.settings["p"])

    def llm_layers(self, backbone) -> frozenset[int]:
        return frozenset({0})

    def before_layer(self, i: int, state, backbone, cache) -> None:
        with self.timed():
            n = state.n_vision
            if n:  # grouped by frame index; frames of unequal size are refused, never skipped
                ranks = state.frame_ranks(f"compressor {self.name!r}")
                features = state.hidden[0, state.vision_index()[ranks.flatten()]].reshape(*ranks.shape, -1)
                keep = evs_keep(features, self.p)
                state.drop_vision(ranks.flatten()[keep].sort().values)
            kept = state.n_vision
        self.record("layer", n, kept, layer=0, p=self.p)
