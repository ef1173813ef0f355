"""Visual-token dropping inside the LLM: uniform, attention-guided, FastV and TD schedules.

A drop stage acts before LLM layer ``l`` on the whole prefill sequence. With drop rate p
(the fraction of the vision tokens present that is removed) it keeps
``round((1 - p) * n)`` of the ``n`` vision tokens:

- ``uni``: evenly spaced tokens (linspace over the vision span);
- ``attn``: the tokens receiving the most attention from the last instruction token,
  scored with an attention layer's own q/k projections (and, for Qwen3, its q/k norms and
  rotary embeddings), softmax over every key the token sees, mean over heads. Which layer
  scores: layer ``l`` if it is an attention layer; otherwise the nearest attention layer
  at or after ``l`` (before ``l`` if none follows), applied to the hidden states entering
  ``l``. A backbone without attention (pure Mamba-2) ranks by cosine similarity between the
  last instruction token and each vision token after layer ``l``'s pre-norm. With a batch,
  scores are averaged over the batch so every sequence keeps the same positions.

Kept tokens keep their positions (rotary embeddings) and their order; later layers, their
caches and decoding all work on the shortened sequence. Dropping happens in prefill only.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from architectures.base import ATTENTION
from bench.errors import UserError
from compressors import register_compressor
from compressors.base import Compressor, check_rate, kept_count


@dataclass(frozen=True)
class Stage:
    kind: str  # "uni" | "attn"
    layer: int
    p: float

    def __str__(self) -> str:
        return f"{self.kind}_{self.layer}_{self.p:g}"


def parse_schedule(name: str, text: str) -> list[Stage]:
    """``"uni_7_0.5-attn_39_0.9"`` -> stages; layers strictly increasing, rates in [0, 1)."""
    stages = []
    for part in str(text).split("-"):
        m = re.fullmatch(r"(uni|attn)_(\d+)_([0-9]*\.?[0-9]+)", part.strip())
        if not m:
            raise UserError(f"compressor {name!r}: malformed schedule {text!r} at {part!r}; "
                            "expected stages like uni_7_0.5-attn_39_0.9")
        stages.append(Stage(m.group(1), int(m.group(2)), check_rate(name, "p", float(m.group(3)))))
    layers = [s.layer for s in stages]
    if any(b <= a for a, b in zip(layers, layers[1:])):
        raise UserError(f"compressor {name!r}: schedule {text!r} is not increasing in layer")
    return stages


def uniform_keep(n: int, kept: int, device) -> torch.Tensor:
    """Indices of ``kept`` evenly spaced tokens among ``n`` (first and last included)."""
    return torch.linspace(0, n - 1, kept, device=device).round().long()


def scoring_layer(backbone, layer: int) -> int | None:
    """The attention layer whose projections score tokens before ``layer`` (None: no attention)."""
    attn = backbone.attention_layers()
    if not attn:
        return None
    after = [j for j in attn if j >= layer]
    return after[0] if after else attn[-1]


def _last_token_attention(backbone, j: int, hidden: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """[batch, length] attention probabilities of the last token over every token, mean over heads."""
    layer = backbone.layers[j]
    attn = layer.self_attn if hasattr(layer, "self_attn") else layer.mixer
    normed = (layer.input_layernorm if hasattr(layer, "input_layernorm") else layer.norm)(hidden)
    b, length, _ = normed.shape
    hd = attn.head_dim
    q = attn.q_proj(normed[:, -1:]).view(b, 1, -1, hd)
    k = attn.k_proj(normed).view(b, length, -1, hd)
    if hasattr(attn, "q_norm"):  # Qwen3: per-head norms, then rotary embeddings
        q, k = attn.q_norm(q), attn.k_norm(k)
        inp = backbone.layer_input(positions)
        cos, sin = inp.extras["rotary"]
        from transformers.models.qwen3.modeling_qwen3 import apply_rotary_pos_emb

        q_rot, _ = apply_rotary_pos_emb(q.transpose(1, 2), q.transpose(1, 2), cos[:, -1:], sin[:, -1:])
        _, k_rot = apply_rotary_pos_emb(k.transpose(1, 2), k.transpose(1, 2), cos, sin)
        q, k = q_rot, k_rot
    else:
        q, k = q.transpose(1, 2), k.transpose(1, 2)
    k = k.repeat_interleave(q.shape[1] // k.shape[1], dim=1)
    scores = (q.float() @ k.float().transpose(-1, -2)).squeeze(2) * attn.scaling  # [b, heads, length]
    return scores.softmax(-1).mean(1)


def attention_keep(backbone, layer: int, hidden: torch.Tensor, positions: torch.Tensor,
                   span: tuple[int, int], kept: int) -> torch.Tensor:
    """Indices (within the vision span, ascending) of the ``kept`` most attended vision tokens."""
    s, e = span
    j = scoring_layer(backbone, layer)
    if j is None:
        normed = backbone.layers[layer].norm(hidden)
        scores = F.cosine_similarity(normed[:, s:e].float(), normed[:, -1:].float(), dim=-1)
    else:
        scores = _last_token_attention(backbone, j, hidden, positions)[:, s:e]
    scores = scores.mean(0)
    order = torch.sort(scores, descending=True, stable=True).indices  # ties: the lower index first
    return order[:kept].sort().values


class Dropper(Compressor):
    """Drops vision tokens before chosen LLM layers; subclasses say where (``plan``) and may transfer."""

    def plan(self) -> list[Stage]:
        raise NotImplementedError

    def reset(self) -> None:
        super().reset()
        self.kept_indices: dict[int, torch.Tensor] = {}  # layer -> kept indices within the span, last pass

    def llm_layers(self, backbone) -> frozenset[int]:
        return frozenset(s.layer for s in self.plan())

    def check(self, backbone) -> None:
        n = backbone.num_layers
        for stage in self.plan():
            if not 0 <= stage.layer < n:
                raise UserError(f"compressor {self.name!r}: layer {stage.layer} is outside {backbone.name}'s "
                                f"{n} layers (0-{n - 1})")

    def select(self, stage: Stage, state, backbone, n: int, kept: int) -> torch.Tensor:
        if stage.kind == "uni":
            return uniform_keep(n, kept, state.hidden.device)
        return attention_keep(backbone, stage.layer, state.hidden, state.positions, state.vision, kept)

    def before_layer(self, i: int, state, backbone, cache) -> None:
        for stage in self.plan():
            if stage.layer != i:
                continue
            with self.timed():
                s, e = state.vision
                n = e - s
                kept = kept_count(n, stage.p) if n else 0
                if kept < n:
                    idx = self.select(stage, state, backbone, n, kept)
                    self.kept_indices[i] = idx
                    dropped = drop_tokens(state, idx)
                    self.transfer(i, state, dropped, backbone)
            self.record("layer", n, kept, layer=i, kind=stage.kind, p=stage.p)

    def transfer(self, i: int, state, dropped: torch.Tensor, backbone) -> None:
        """What to do with the dropped tokens' hidden states (TD: nothing)."""


def drop_tokens(state, keep: torch.Tensor) -> torch.Tensor:
    """Keep the vision tokens at ``keep`` (ascending, within the span); return the dropped ones' hidden states."""
    s, e = state.vision
    n = e - s
    mask = torch.ones(n, dtype=torch.bool, device=keep.device)
    mask[keep] = False
    # The dropped indices, ascending, with a static shape (a stable sort instead of nonzero), so that the
    # fake-tensor memory prediction (bench.fake_pass) can run this too.
    gone = torch.sort(mask.to(torch.uint8), descending=True, stable=True).indices[: n - keep.numel()]
    dropped = state.hidden[:, s + gone]
    index = torch.cat([torch.arange(s, device=keep.device), s + keep,
                       torch.arange(e, state.hidden.shape[1], device=keep.device)])
    state.hidden = state.hidden[:, index]
    state.positions = state.positions[index]
    state.vision = (s, s + keep.numel())
    return dropped


@register_compressor("uniform")
class Uniform(Dropper):
    """Keep evenly spaced vision tokens before layer L (L=0: before the LLM)."""

    name = "uniform"
    params = {"layer": 0, "p": 0.5}
    kind = "uni"

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        layer = self.settings["layer"]
        if isinstance(layer, bool) or not isinstance(layer, int) or layer < 0:
            raise UserError(f"compressor {self.name!r}: layer={layer!r} must be an integer >= 0")
        self._plan = [Stage(self.kind, layer, check_rate(self.name, "p", self.settings["p"]))]

    def plan(self) -> list[Stage]:
        return self._plan


@register_compressor("attention")
class Attention(Uniform):
    """Keep the vision tokens most attended by the last instruction token at layer L."""

    name = "attention"
    params = {"layer": 2, "p": 0.5}
    kind = "attn"


@register_compressor("fastv")
class FastV(Attention):
    """FastV: attention-guided dropping at layer 2 with p=0.5 (a named preset of ``attention``)."""

    name = "fastv"
    params = {"layer": 2, "p": 0.5}


@register_compressor("td")
class TokenDropping(Dropper):
    """TD: a schedule of uniform/attention-guided drops without transfer, e.g. uni_7_0.5-attn_39_0.9."""

    name = "td"
    params = {"schedule": "uni_7_0.5-attn_39_0.9"}

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self._plan = parse_schedule(self.name, self.settings["schedule"])

    def plan(self) -> list[Stage]:
        return self._plan
