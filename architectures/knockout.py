"""Attention knockout: token groups of a prompt, edges between them, and the (query, key) pairs they block.

A prompt's groups (from its ``TokenState``): ``video`` (the vision tokens), ``text`` (every token
after the last video token), ``question`` (``text`` but the last token), ``last`` (the last
token), ``bos`` (position 0, when it is not a video token: the BOS or the chat template's first
token). An edge ``A->B`` means "tokens of B (queries) read tokens of A (keys)"; ``frame->frame``
means a video token reads video tokens of *other* frames (needs the frame index of each vision
token). A knockout spec is ``EDGE[+EDGE...][:layers=I-J][,kinds=KIND[+KIND]]`` (layers inclusive,
0-based; ``layers=all``, the default, is every layer; ``kinds`` keeps only the layers of those kinds,
``attention`` and/or ``mamba``), e.g. ``video->last+video->question:layers=4-9`` or
``video->text:kinds=attention`` (the attention layers only).

Only causal pairs (key before query) are ever blocked, and never a token's pair with itself, so
every query keeps at least one key. No model code here: the backbones apply ``Knockout.blocked``
(attention through a mask, Mamba-2 through ``architectures.masked_mamba``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch

from architectures.base import ATTENTION, MAMBA
from architectures.tokens import TokenState
from bench.errors import UserError

GROUPS = ("video", "text", "question", "last", "bos", "frame")  # "frame" only in frame->frame
STANDARD_EDGES = ("video->question", "video->last", "question->last", "frame->frame", "video->text")
MIXING_KINDS = (ATTENTION, MAMBA)  # the layer kinds that mix tokens (MLP and MoE blocks do not)


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
    kinds: tuple[str, ...] | None = None  # only layers of these kinds (attention, mamba); None = every kind

    def __str__(self) -> str:
        options = ([f"layers={self.layers[0]}-{self.layers[1]}"] if self.layers else []) + \
                  ([f"kinds={'+'.join(self.kinds)}"] if self.kinds else [])
        return "+".join(map(str, self.edges)) + (":" + ",".join(options) if options else "")

    def layer_set(self, num_layers: int, kinds: list[str] | None = None) -> frozenset[int]:
        """The layers this knockout blocks in; UserError if its range does not fit ``num_layers``.
        ``kinds`` (the model's layer kinds) is needed when the knockout keeps only some kinds."""
        first, last = self.layers if self.layers is not None else (0, num_layers - 1)
        if last >= num_layers:
            raise UserError(f"knockout layers={first}-{last} out of range: the model has {num_layers} layers "
                            f"(0-{num_layers - 1})")
        chosen = range(first, last + 1)
        if self.kinds is not None:
            if kinds is None:
                raise ValueError(f"knockout {self} keeps only some layer kinds: pass the model's layer kinds")
            chosen = [i for i in chosen if kinds[i] in self.kinds]
            if not chosen:
                raise UserError(f"knockout {self}: the model has no {' or '.join(self.kinds)} layer in layers "
                                f"{first}-{last}")
        return frozenset(chosen)

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
    values: dict[str, str] = {}
    for option in options.split(",") if colon else ():
        key, eq, value = (part.strip() for part in option.partition("="))
        if key not in ("layers", "kinds") or not eq:
            raise UserError(f"knockout {text!r}: unknown option {option.strip()!r} (expected layers=I-J, "
                            "layers=all, kinds=attention, kinds=mamba or kinds=attention+mamba)")
        if key in values:
            raise UserError(f"knockout {text!r}: option {key!r} given twice")
        values[key] = value
    return Knockout(edges, parse_layers(values.get("layers", "all")), parse_kinds(values.get("kinds")))


def parse_kinds(text: str | None) -> tuple[str, ...] | None:
    if text is None:
        return None
    kinds = tuple(dict.fromkeys(k.strip() for k in text.split("+")))
    for kind in kinds:
        if kind not in MIXING_KINDS:
            raise UserError(f"knockout kinds {text!r}: unknown layer kind {kind!r}; kinds that mix tokens: "
                            f"{', '.join(MIXING_KINDS)}")
    return kinds


def edges_off(knockout: Knockout, state: TokenState, kinds: list[str]) -> float:
    """Fraction of the causal attention edges (query, key; a token with itself included) of the model's
    attention layers that ``knockout`` switches off; 0.0 for a model without attention layers."""
    attention = [i for i, kind in enumerate(kinds) if kind == ATTENTION]
    if not attention:
        return 0.0
    blocked_in = sum(1 for i in knockout.layer_set(len(kinds), kinds) if kinds[i] == ATTENTION)
    length = state.length
    per_layer = int(knockout.blocked(state).sum())
    return per_layer * blocked_in / (len(attention) * length * (length + 1) / 2)
