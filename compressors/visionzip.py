"""VisionZip after the projector: keep each frame's dominant tokens, merge the rest into contextual tokens.

VisionZip keeps the tokens that receive the most attention in the vision tower and merges the
remaining ones into a few contextual tokens. At the post-projector hook there is no tower
attention map, so attention is proxied by parameter-free self-attention within each frame:
A = softmax(X X^T / sqrt(d)) over the frame's tokens X [T, d], and a token's score is the
attention it receives, A averaged over the queries (column mean).

Per frame:

1. *dominant*: the ``dominant`` highest-scoring tokens (ties: lower index first), in their
   original order;
2. *contextual*: ``contextual`` centres evenly spaced among the remaining tokens (positions
   ``j * m // contextual`` of the m remaining tokens); every other remaining token joins its most
   cosine-similar centre (ties: the earlier centre), each centre heads its own group, and each
   contextual token is its group's mean.

Output per frame: the dominant tokens, then the contextual tokens. If ``dominant + contextual``
reaches the tokens present, every token is kept unchanged. Scores and means are computed in
float32; the output keeps the input dtype.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from compressors import register_compressor
from compressors.base import Compressor, check_count


def received_attention(x: torch.Tensor) -> torch.Tensor:
    """[N, T, d] -> [N, T]: mean over queries of softmax(X X^T / sqrt(d)), i.e. attention received."""
    x = x.float()
    weights = torch.softmax(x @ x.transpose(1, 2) / x.shape[-1] ** 0.5, dim=-1)
    return weights.mean(dim=1)


def split_dominant(score: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices of the ``k`` top scores and of the rest, each in ascending order: [N, T] -> [N, k], [N, T-k]."""
    order = score.argsort(dim=-1, descending=True, stable=True)
    return order[:, :k].sort(dim=-1).values, order[:, k:].sort(dim=-1).values


def merge_contextual(rest: torch.Tensor, contextual: int) -> torch.Tensor:
    """[N, m, d] remaining tokens -> [N, contextual, d] group means (m > contextual >= 1).

    Centres are evenly spaced among the m tokens; each non-centre token joins its most
    cosine-similar centre (ties: the earlier centre) and each centre its own group.
    """
    n, m, _ = rest.shape
    x = rest.float()
    centre_pos = torch.arange(contextual, device=rest.device) * m // contextual
    unit = F.normalize(x, dim=-1)
    group = (unit @ unit[:, centre_pos].transpose(1, 2)).argmax(dim=-1)  # [N, m]
    group[:, centre_pos] = torch.arange(contextual, device=rest.device)
    members = F.one_hot(group, contextual).to(x.dtype)  # [N, m, contextual]
    sums = members.transpose(1, 2) @ x
    return (sums / members.sum(dim=1)[..., None]).to(rest.dtype)


@register_compressor("visionzip")
class VisionZip(Compressor):
    """VisionZip: per frame, the most-attended tokens plus a few merged contextual tokens."""

    name = "visionzip"
    params = {"dominant": 6, "contextual": 2}
    regroups_frames = True

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.dominant = check_count(self.name, "dominant", self.settings["dominant"], minimum=1)
        self.contextual = check_count(self.name, "contextual", self.settings["contextual"], minimum=0)

    def after_projector(self, vision: torch.Tensor) -> torch.Tensor:
        """[B, F, T, H] -> [B, F * (dominant + contextual), H], or every token when T is not larger."""
        with self.timed():
            b, frames, tokens, hidden = vision.shape
            keep = self.dominant + self.contextual
            if keep >= tokens:
                out, keep = vision.flatten(1, 2), tokens
            else:
                x = vision.reshape(b * frames, tokens, hidden)
                top, rest = split_dominant(received_attention(x), self.dominant)
                parts = [x.gather(1, top[..., None].expand(-1, -1, hidden))]
                centres = torch.arange(self.contextual, device=x.device) * rest.shape[1] // max(self.contextual, 1)
                # slots each output token takes on a real model: dominant tokens, then the contextual centres
                self.kept_slots = torch.cat([top, rest[:, centres]], dim=1)[:frames]
                if self.contextual:
                    parts.append(merge_contextual(x.gather(1, rest[..., None].expand(-1, -1, hidden)),
                                                  self.contextual))
                out = torch.cat(parts, dim=1).reshape(b, frames * keep, hidden)
        self.record("projector", frames * tokens, frames * keep)
        return out
