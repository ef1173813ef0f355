"""Attention knockout: token groups of a prompt, edges between them, and the (query, key) pairs they block.

A prompt's groups (from its ``TokenState``): ``video`` (the vision tokens), ``text`` (every token
after the last video token), ``question`` (``text`` but the last token), ``last`` (the last
token), ``bos`` (position 0, when it is not a video token: the BOS or the chat template's first
token). An edge ``A->B`` means "tokens of B (queries) read tokens of A (keys)"; ``frame->frame``
means a video token reads video tokens of *other* frames (needs the frame index of each vision
token). A knockout spec is ``EDGE[+EDGE...][:layers=I-J]`` (layers inclusive, 0-based;
``layers=all``, the default, is every layer), e.g. ``video->last+video->question:layers=4-9``.

Only causal pairs (key before query) are ever blocked, and never a token's pair with itself, so
every query keeps at least one key. No model code here: the backbones apply ``Knockout.blocked``
(attention through a mask, Mamba-2 through ``architectures.masked_mamba``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch

from architectures.base import ATTENTION
from architectures.tokens import TokenState
from bench.errors import UserError

GROUPS = ("video", "text", "question", "last", "bos", "frame")  # "frame" only in frame->frame
STANDARD_EDGES = ("video->question", "video->last", "question->last", "frame->frame", "video->text")


def token_groups(state: TokenState) -> dict[str, torch.Tensor]:
    """bool [length] per group (``frame`` is the video tokens: its one edge pairs different frames)."""
    length, device = state.length, state.vision.device
    index = torch.arange(length, device=device)
    video = state.vision.to(torch.bool)
    text = index >= state.vision_end if state.n_vision else torch.zeros(length, dtype=torch.bool, device=device)
    last = index == length - 1
    bos = (index == 0) & ~video if state.n_vision else torch.zeros(length, dtype=torch.bool, device=device)
    return {"video": video, "text": text, "question": text & ~last, "last": last, "bos": bos, "frame": video}


@dataclass(frozen=True)
class Edge:
    """``source->target``: tokens of ``target`` (queries) read tokens of ``source`` (keys)."""

    source: str
    target: str

    def __str__(self) -> str:
        return f"{self.source}->{self.target}"


@dataclass(frozen=True)
class Knockout:
    edges: tuple[Edge, ...]
    layers: tuple[int, int] | None = None  # inclusive I-J; None = all layers

    def __str__(self) -> str:
        edges = "+".join(map(str, self.edges))
        return edges + (f":layers={self.layers[0]}-{self.layers[1]}" if self.layers else "")

    def layer_set(self, num_layers: int) -> frozenset[int]:
        """The layers this knockout blocks in; UserError if its range does not fit ``num_layers``."""
        if self.layers is None:
            return frozenset(range(num_layers))
        first, last = self.layers
        if last >= num_layers:
            raise UserError(f"knockout layers={first}-{last} out of range: the model has {num_layers} layers "
                            f"(0-{num_layers - 1})")
        return frozenset(range(first, last + 1))

    def blocked(self, state: TokenState) -> torch.Tensor:
        """bool [length, length]: True where query row may NOT read key column (causal pairs only)."""
        if state.n_vision == 0:
            raise UserError(f"knockout {self}: the sequence has no video tokens")
        groups = token_groups(state)
        length = state.length
        out = torch.zeros(length, length, dtype=torch.bool, device=state.vision.device)
        for edge in self.edges:
            if edge.source == "frame":
                if state.frames is None:
                    raise UserError(f"knockout edge {edge} needs the frame index of each video token, which "
                                    "this prompt does not carry")
                video, frames = groups["video"], state.frames
                out |= video[:, None] & video[None, :] & (frames[:, None] != frames[None, :])
            else:
                out |= groups[edge.target][:, None] & groups[edge.source][None, :]
        return out & torch.ones_like(out).tril(-1)  # keys strictly before their query


def parse_edge(text: str) -> Edge:
    source, arrow, target = text.strip().partition("->")
    if not arrow:
        raise UserError(f"knockout edge {text.strip()!r} is not SOURCE->TARGET (e.g. video->last)")
    source, target = source.strip(), target.strip()
    for name in (source, target):
        if name not in GROUPS:
            raise UserError(f"knockout edge {text.strip()!r}: unknown group {name!r}; groups: "
                            f"{', '.join(GROUPS)}")
    if "frame" in (source, target) and (source, target) != ("frame", "frame"):
        raise UserError(f"knockout edge {text.strip()!r}: 'frame' is only valid in frame->frame")
    return Edge(source, target)


def parse_layers(text: str) -> tuple[int, int] | None:
    text = text.strip()
    if text == "all":
        return None
    match = re.fullmatch(r"(\d+)(?:-(\d+))?", text)
    if not match:
        raise UserError(f"knockout layers {text!r}: expected I-J (inclusive, 0-based), I, or all")
    first = int(match.group(1))
    last = int(match.group(2)) if match.group(2) is not None else first
    if first > last:
        raise UserError(f"knockout layers {text!r}: first layer {first} is after last layer {last}")
    return first, last


def parse_knockout(text: str) -> Knockout:
    """``EDGE[+EDGE...][:layers=I-J]``, e.g. ``video->last+video->question:layers=4-9``."""
    edges_text, colon, options = text.strip().partition(":")
    if not edges_text.strip():
        raise UserError(f"knockout {text!r}: no edges (expected EDGE[+EDGE...][:layers=I-J])")
    edges = tuple(dict.fromkeys(parse_edge(e) for e in edges_text.split("+")))
    layers = None
    if colon:
        key, eq, value = options.partition("=")
        if key.strip() != "layers" or not eq:
            raise UserError(f"knockout {text!r}: unknown option {options!r} (expected layers=I-J or layers=all)")
        layers = parse_layers(value)
    return Knockout(edges, layers)


def edges_off(knockout: Knockout, state: TokenState, kinds: list[str]) -> float:
    """Fraction of the causal attention edges (query, key; a token with itself included) of the model's
    attention layers that ``knockout`` switches off; 0.0 for a model without attention layers."""
    attention = [i for i, kind in enumerate(kinds) if kind == ATTENTION]
    if not attention:
        return 0.0
    blocked_in = sum(1 for i in knockout.layer_set(len(kinds)) if kinds[i] == ATTENTION)
    length = state.length
    per_layer = int(knockout.blocked(state).sum())
    return per_layer * blocked_in / (len(attention) * length * (length + 1) / 2)
