"""STC (hierarchical streaming token compression): a vision-tower cacher and a post-projector pruner.

``stc_cacher`` (hook 1, inside the SigLIP tower). Frames are counted in the order they arrive,
across batches; every ``cache_interval``-th frame (index % cache_interval == 0) is a *reference
frame* and runs through the tower's layers in full. For each encoder layer the reference's keys,
values, attention-sublayer output and MLP-sublayer output (per token, before the residual adds)
are cached. Every other frame reuses the latest reference's cache, layer by layer:

1. ``layer_norm1`` and K for all tokens; cosine similarity of each token's K (heads flattened) to
   the same token's K in the reference;
2. the ``ceil(update_ratio * tokens)`` least similar tokens are *updated*: only they get Q and V
   (the others take the reference's V); their attention is softmax(Q_u K^T * scale) V over all
   tokens, through the layer's own ``out_proj``; the others take the reference's attention output;
3. residual add; ``layer_norm2`` + MLP only for updated tokens, the reference's MLP output for the
   rest; residual add.

The layers are those the plain tower runs (embeddings + every encoder layer but the last), so
``update_ratio=1`` reproduces ``VisionSide.tower_features``. The cacher's time includes the tower
layers it runs, since it replaces the plain tower. The frame count restarts with every video
(``new_video``, which the runner calls before each video of a batch).

``stc_pruner`` (hook 2, after the projector). Per frame, each token's novelty is its distance to a
temporal anchor (the running mean of the previous frames' mean tokens) plus its distance to a
spatial anchor (the frame's own mean token); the ``tokens_per_frame`` most novel tokens are kept in
their original order. Frame 0 has no previous frames: its temporal anchor is its own mean token,
so it is ranked by the spatial term alone. ``variant=paper`` measures distance as 1 - cosine
similarity; ``variant=code`` first keeps the half of the channels with the lowest variance across
the frame's tokens and uses 1 - a multi-bandwidth Gaussian kernel similarity (mean over bandwidths
{0.5, 1, 2} x the median pairwise distance between the frame's tokens).

``stc`` runs both. Selections are deterministic (ties go to the lower index); outputs keep the
input dtype (scores are computed in float32).
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F

from bench.errors import UserError
from compressors import register_compressor
from compressors.base import Compressor, check_count

VARIANTS = ("paper", "code")
BANDWIDTHS = (0.5, 1.0, 2.0)


def check_ratio(name: str, key: str, p: Any) -> float:
    """A fraction in (0, 1]."""
    if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0 < p <= 1:
        raise UserError(f"compressor {name!r}: {key}={p!r} must be a fraction in (0, 1]")
    return float(p)


# --- STC-Cacher ---------------------------------------------------------------------------------


def _attend(attn, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Multi-head softmax(q k^T * scale) v with ``attn``'s heads and scale, then ``out_proj``.

    q: [N, Lq, D]; k, v: [N, L, D] -> [N, Lq, D].
    """
    n, lq, dim = q.shape
    heads = attn.num_heads

    def split(t: torch.Tensor) -> torch.Tensor:
        return t.view(n, t.shape[1], heads, -1).transpose(1, 2)

    out = F.scaled_dot_product_attention(split(q), split(k), split(v), scale=attn.scale)
    return attn.out_proj(out.transpose(1, 2).reshape(n, lq, dim))


def full_layer(layer, h: torch.Tensor) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
    """A SigLIP encoder layer in full; returns its output and the cache (K, V, attention out, MLP out)."""
    attn = layer.self_attn
    x = layer.layer_norm1(h)
    k, v = attn.k_proj(x), attn.v_proj(x)
    a = _attend(attn, attn.q_proj(x), k, v)
    h = h + a
    m = layer.mlp(layer.layer_norm2(h))
    return h + m, (k, v, a, m)


def cached_layer(layer, h: torch.Tensor, ref: tuple[torch.Tensor, ...], updated: int) -> torch.Tensor:
    """A SigLIP encoder layer that recomputes only the ``updated`` tokens whose K moved most.

    h: [N, T, D] this layer's input for N non-reference frames; ref: each frame's reference cache
    (K, V, attention out, MLP out), each [N, T, D]. The tokens with the lowest cosine similarity
    between their K and the reference's K (ties: lower index first) get fresh Q, V, attention and
    MLP; the rest reuse the reference's V and sublayer outputs.
    """
    ref_k, ref_v, ref_a, ref_m = ref
    attn = layer.self_attn
    x = layer.layer_norm1(h)
    k = attn.k_proj(x)
    similarity = F.cosine_similarity(k.float(), ref_k.float(), dim=-1)  # [N, T]
    idx = similarity.argsort(dim=1, stable=True)[:, :updated].sort(dim=1).values
    gather = idx[..., None].expand(-1, -1, h.shape[-1])
    x_u = x.gather(1, gather)
    v = ref_v.scatter(1, gather, attn.v_proj(x_u))
    a = ref_a.scatter(1, gather, _attend(attn, attn.q_proj(x_u), k, v))
    h = h + a
    m = ref_m.scatter(1, gather, layer.mlp(layer.layer_norm2(h.gather(1, gather))))
    return h + m


@register_compressor("stc_cacher")
class STCCacher(Compressor):
    """STC-Cacher: reference frames through the full tower, other frames recompute only changed tokens."""

    name = "stc_cacher"
    params = {"cache_interval": 2, "update_ratio": 0.25}
    wants_tower_hook = True

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.cache_interval = check_count(self.name, "cache_interval", self.settings["cache_interval"])
        self.update_ratio = check_ratio(self.name, "update_ratio", self.settings["update_ratio"])

    def reset(self) -> None:
        """Forget the accounting, the frame count and the cached reference."""
        super().reset()
        self._tower_stage: dict | None = None
        self.new_video()

    def new_video(self) -> None:
        """Restart the frame count and forget the reference: the next frame is a reference frame."""
        super().new_video()
        self._frames_seen = 0
        self._reference: list[tuple[torch.Tensor, ...]] | None = None  # per layer, each [1, T, D]

    def updated_tokens(self, tokens: int) -> int:
        """How many tokens of a non-reference frame are recomputed at each layer."""
        return min(tokens, math.ceil(self.update_ratio * tokens))

    def tower_features(self, vision_side, pixels: torch.Tensor) -> torch.Tensor:
        """[n, 3, H, W] consecutive frames -> [n, patches, dim], like ``vision_side.tower_features``."""
        with self.timed():
            tower = vision_side.tower
            hidden = tower.embeddings(pixels)
            n, tokens, _ = hidden.shape
            index = torch.arange(self._frames_seen, self._frames_seen + n, device=hidden.device)
            is_ref = index % self.cache_interval == 0
            ref_pos, dep_pos = is_ref.nonzero().flatten(), (~is_ref).nonzero().flatten()
            # The reference each non-reference frame follows: 0 = the one carried over from an earlier
            # batch, j = the j-th reference frame of this batch.
            slot = is_ref.long().cumsum(0)[dep_pos]
            if self._reference is None:
                if bool((slot == 0).any()):
                    raise RuntimeError("stc_cacher: a non-reference frame arrived before any reference frame")
                slot = slot - 1
            updated = self.updated_tokens(tokens)
            ref_h, dep_h = hidden[ref_pos], hidden[dep_pos]
            latest = []
            for i, layer in enumerate(tower.encoder.layers[:-1]):
                cache = None
                if len(ref_pos):
                    ref_h, cache = full_layer(layer, ref_h)
                    latest.append(tuple(t[-1:].clone() for t in cache))  # not a view: frees the batch's cache
                if len(dep_pos):
                    banks = [c for c in (self._reference and self._reference[i], cache) if c]
                    ref = tuple(torch.cat([bank[j] for bank in banks])[slot] for j in range(4))
                    dep_h = cached_layer(layer, dep_h, ref, updated)
            if len(ref_pos):
                self._reference = latest
            out = hidden.new_empty(hidden.shape)
            out[ref_pos], out[dep_pos] = ref_h, dep_h
            self._frames_seen += n
            self._account(n * tokens, len(ref_pos) * tokens + len(dep_pos) * updated, len(ref_pos))
        return out

    def _account(self, tokens_in: int, tokens_out: int, references: int) -> None:
        """Adds one batch to this pass's single ``tower`` stage."""
        if self._tower_stage is None:
            self.record("tower", 0, 0, reference_frames=0)
            self._tower_stage = self.stages[-1]
        self._tower_stage["tokens_in"] += tokens_in
        self._tower_stage["tokens_out"] += tokens_out
        self._tower_stage["reference_frames"] += references


# --- STC-Pruner ---------------------------------------------------------------------------------


def anchors(x: torch.Tensor, past: tuple[torch.Tensor, int] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """x: [B, F, T, H] -> (temporal, spatial) anchors, each [B, F, H].

    Spatial: the frame's mean token. Temporal: the mean of the previous frames' mean tokens (frame 0:
    its own mean token). ``past``: (sum [B, H], count) of the mean tokens of frames before ``x`` (a
    stream's earlier chunks), which the temporal anchor then includes.
    """
    spatial = x.mean(dim=2)
    frames = x.shape[1]
    if past is None or past[1] == 0:
        counts = torch.arange(1, frames, device=x.device, dtype=x.dtype)[None, :, None]
        previous = spatial.cumsum(dim=1)[:, :-1] / counts
        return torch.cat([spatial[:, :1], previous], dim=1), spatial
    total, seen = past
    sums = torch.cat([total[:, None], total[:, None] + spatial.cumsum(dim=1)[:, :-1]], dim=1)
    counts = torch.arange(seen, seen + frames, device=x.device, dtype=x.dtype)[None, :, None]
    return sums / counts, spatial


def cosine_distance(x: torch.Tensor, anchor: torch.Tensor) -> torch.Tensor:
    """1 - cos(token, anchor): x [B, F, T, H], anchor [B, F, H] -> [B, F, T]."""
    return 1 - F.cosine_similarity(x, anchor[:, :, None], dim=-1)


def median_pairwise_distance(x: torch.Tensor) -> torch.Tensor:
    """Median Euclidean distance over each frame's token pairs: [B, F, T, H] -> [B, F] (1 if T < 2)."""
    tokens = x.shape[2]
    if tokens < 2:
        return x.new_ones(x.shape[:2])
    i, j = torch.triu_indices(tokens, tokens, offset=1, device=x.device)
    return torch.cdist(x, x)[..., i, j].median(dim=-1).values


def kernel_distance(x: torch.Tensor, anchor: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """1 - mean over s in BANDWIDTHS * scale of exp(-||token - anchor||^2 / (2 s^2)) -> [B, F, T]."""
    d2 = (x - anchor[:, :, None]).square().sum(dim=-1)
    sims = [torch.exp(-d2 / (2 * (b * scale[..., None]).square())) for b in BANDWIDTHS]
    return 1 - torch.stack(sims).mean(dim=0)


def novelty(vision: torch.Tensor, variant: str = "paper", past: tuple[torch.Tensor, int] | None = None) -> torch.Tensor:
    """Per-token novelty, temporal + spatial distance: [B, F, T, H] -> [B, F, T] float32 (``past``: see
    ``anchors``)."""
    x = vision.float()
    temporal, spatial = anchors(x, past)
    if variant == "paper":
        return cosine_distance(x, temporal) + cosine_distance(x, spatial)
    half = max(1, x.shape[-1] // 2)
    channels = x.var(dim=2, unbiased=False).argsort(dim=-1, stable=True)[..., :half].sort(dim=-1).values
    x = x.gather(3, channels[:, :, None].expand(-1, -1, x.shape[2], -1))
    temporal, spatial = temporal.gather(2, channels), spatial.gather(2, channels)
    scale = median_pairwise_distance(x).clamp_min(1e-6)
    return kernel_distance(x, temporal, scale) + kernel_distance(x, spatial, scale)


def top_in_order(score: torch.Tensor, k: int) -> torch.Tensor:
    """Indices of the ``k`` highest scores along the last dim (ties: lower index), in ascending order."""
    return score.argsort(dim=-1, descending=True, stable=True)[..., :k].sort(dim=-1).values


@register_compressor("stc_pruner")
class STCPruner(Compressor):
    """STC-Pruner: keep each frame's most novel tokens w.r.t. temporal and spatial anchors."""

    name = "stc_pruner"
    params = {"tokens_per_frame": 8, "variant": "paper"}
    regroups_frames = True

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.keep = check_count(self.name, "tokens_per_frame", self.settings["tokens_per_frame"])
        self.variant = self.settings["variant"]
        if self.variant not in VARIANTS:
            raise UserError(f"compressor {self.name!r}: variant={self.variant!r} must be one of {', '.join(VARIANTS)}")

    def new_video(self) -> None:
        """Forget the running temporal anchor (it is carried across calls only while ``streaming``)."""
        super().new_video()
        self._anchor: tuple[torch.Tensor, int] | None = None  # (sum of past frames' mean tokens, count)

    def after_projector(self, vision: torch.Tensor) -> torch.Tensor:
        """[B, F, T, H] -> [B, F * min(tokens_per_frame, T), H], kept tokens in original order.

        While ``streaming``, the temporal anchor runs on from the frames of earlier calls (a stream's chunks):
        chunk by chunk selects what one call on all the frames selects."""
        with self.timed():
            b, frames, tokens, hidden = vision.shape
            k = min(self.keep, tokens)
            past = getattr(self, "_anchor", None) if self.streaming else None
            if self.streaming:
                means = vision.float().mean(dim=2).sum(dim=1)
                self._anchor = (means if past is None else past[0] + means, frames + (past[1] if past else 0))
            if k >= tokens:
                out = vision.flatten(1, 2)
            else:
                keep = top_in_order(novelty(vision, self.variant, past), k)
                self.kept_slots = keep[0]  # [frames, k]: which of each frame's tokens survive (real models)
                out = vision.gather(2, keep[..., None].expand(-1, -1, -1, hidden)).flatten(1, 2)
        self.record("projector", frames * tokens, frames * k)
        return out


@register_compressor("stc")
class STC(STCCacher, STCPruner):
    """STC: STC-Cacher in the vision tower, then STC-Pruner after the projector."""

    name = "stc"
    params = {**STCCacher.params, **STCPruner.params}
