"""Visual-token dropping inside the LLM: uniform, attention-guided, FastV and TD schedules.

A drop stage acts before LLM layer ``l`` on the whole prefill sequence. With drop rate p
(the fraction of the vision tokens present that is removed) it keeps
``round((1 - p) * n)`` of the ``n`` vision tokens:

- ``uni``: evenly spaced tokens (linspace over the vision span);
- ``attn``: the tokens receiving the most attention from the last instruction token,
  scored with an attention layer's own q/k projections, its q/k norms if it has them and
  its rotary embeddings whenever it has rotary, softmax over every key the token sees, mean over heads. Which layer
  scores: layer ``l`` if it is an attention layer; otherwise the nearest attention layer
  at or after ``l`` (before ``l`` if none follows), applied to the hidden states entering
  ``l``. A backbone without attention (pure Mamba-2) ranks by cosine similarity between the
  last instruction token and each vision token after layer ``l``'s pre-norm. With a batch,
  scores are averaged over the batch so every sequence keeps the same positions.

Vision tokens are a mask over the sequence (``architectures.tokens.TokenState``). Kept tokens keep
their positions (1-D or Qwen3-VL's 3-D rotary), their order and their DeepStack features; later
layers, their caches and decoding all work on the shortened sequence. Dropping happens in
prefill only. Scores use the backbone's explicit API (attention module, pre-norm, rotary).
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


def attention_keep(backbone, layer: int, state, kept: int) -> torch.Tensor:
    """Ranks (among the vision tokens, ascending) of the ``kept`` most attended vision tokens."""
    vis = state.vision_index()
    j = scoring_layer(backbone, layer)
    if j is None:
        normed = backbone.pre_norm(layer)(state.hidden)
        scores = F.cosine_similarity(normed[:, vis].float(), normed[:, -1:].float(), dim=-1)
    else:
        scores = backbone.attention_scores(j, state.hidden, state.positions)[:, vis]
    scores = scores.mean(0)
    order = torch.sort(scores, descending=True, stable=True).indices  # ties: the lower index first
    return order[:kept].sort().values


class Dropper(Compressor):
    """Drops vision tokens before chosen LLM layers; subclasses say where (``plan``) and may transfer."""

    cannot_stream = "it drops tokens inside the LLM over the whole prefill sequence, ranked with the instruction"

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
        return attention_keep(backbone, stage.layer, state, kept)

    def before_layer(self, i: int, state, backbone, cache) -> None:
        for stage in self.plan():
            if stage.layer != i:
                continue
            with self.timed():
                n = state.n_vision
                kept = kept_count(n, stage.p) if n else 0
                if kept < n:
                    idx = self.select(stage, state, backbone, n, kept)
                    self.kept_indices[i] = idx
                    dropped = state.drop_vision(idx)
                    self.transfer(i, state, dropped, backbone)
            self.record("layer", n, kept, layer=i, kind=stage.kind, p=stage.p)

    def transfer(self, i: int, state, dropped: torch.Tensor, backbone) -> None:
        """What to do with the dropped tokens' hidden states (TD: nothing)."""


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
