"""Prefill and decode as two plain functions over a backbone adapter.

The harness owns the layer loop::

    embed -> for each layer: [compressor hook] -> layer (in chunks) -> final norm -> LM head

Chunked prefill runs *within each layer*: layer i sees the whole sequence, N tokens at a
time, its attention KV cache or Mamba conv/SSM state carried from chunk to chunk, before
layer i+1 starts. Activation memory is bounded by the chunk, and a compressor acting
before layer l still sees the whole sequence there.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from architectures.base import ATTENTION, MAMBA, Backbone, LayerInput
from architectures.knockout import Knockout
from architectures.tokens import TokenState  # noqa: F401 (re-exported for compressors and tests)


@dataclass
class Sequence:
    """A prefilled request: the library cache and the position of the next token.

    ``position`` is a one-element tensor on the model's device, advanced in place, so a decode
    step never copies a host integer to the device (a blocking transfer on a GPU).
    """

    cache: Any
    position: torch.Tensor  # [1], long, on the model's device
    length: int  # tokens that reached the last layer

    @property
    def next_position(self) -> int:
        """The position the next token gets (reads the device: for tests and reports, not the decode loop)."""
        return int(self.position.item())


def _chunk_inputs(backbone: Backbone, positions: torch.Tensor, chunk: int | None) -> list[tuple[int, int, LayerInput]]:
    length = positions.shape[-1]
    step = chunk if chunk and chunk < length else length
    return [(s, min(s + step, length), backbone.layer_input(positions[..., s : s + step]))
            for s in range(0, length, step)]


def _run_layer_chunked(backbone: Backbone, i: int, hidden: torch.Tensor, cache, chunks) -> torch.Tensor:
    if len(chunks) == 1:
        return backbone.run_layer(i, hidden, cache, chunks[0][2])
    out = None
    for start, end, inp in chunks:
        piece = backbone.run_layer(i, hidden[:, start:end], cache, inp)
        if out is None:
            out = hidden.new_empty(hidden.shape, dtype=piece.dtype)
        out[:, start:end] = piece
    return out


def prefill(backbone: Backbone, embeds: torch.Tensor, *, grad: bool = False, **kwargs) -> tuple[torch.Tensor, Sequence]:
    """Run the prompt embeddings through every layer; return last-position logits [batch, vocab].

    ``logits="all"`` computes the LM head on every position first (``logits_dtype``: their dtype, the
    head's by default), as the library's forward does, and keeps the last.
    ``vision`` is a (start, end) span or a bool mask over the sequence. A real video LLM passes a
    ready ``state`` instead (its own positions, vision mask, frame indices and DeepStack features).
    Inference mode, unless ``grad``: then the autograd graph is kept, so that what a compressor
    adds (TransV's cross-attention) trains through the very loop that measures it.

    ``knockout`` (``architectures.knockout``) blocks its (query, key) pairs in the attention and
    Mamba-2 layers of its layer range (see ``_Blocking``). It leaves no cache to decode from (the
    sequence's ``cache`` is None): the masked Mamba-2 form keeps no state, and the blocked pairs change
    as the sequence grows; ``generate(knockout=)`` recomputes the sequence for each new token.

    ``cache``: a cache already holding earlier tokens (a stream, ``bench.stream``): the new tokens are
    appended to it through the same layer loop; their ``state`` carries their absolute positions.
    """
    with torch.enable_grad() if grad else torch.inference_mode():
        return _prefill(backbone, embeds, **kwargs)


class _Blocking:
    """A knockout's per-layer chunk inputs, rebuilt whenever a compressor changes the sequence.

    Attention layers get each chunk's rows of the blocked matrix (its queries against all keys so far)
    and the mask made from them; Mamba-2 layers run once over the whole sequence in the masked form
    (``architectures.masked_mamba``); MLP layers mix nothing. When nothing is blocked on the sequence
    (e.g. ``frame->frame`` on one frame) no layer gets a mask: the pass is the plain one, bit for bit.
    """

    def __init__(self, backbone: Backbone, knockout: Knockout):
        self.backbone, self.knockout = backbone, knockout
        self.kinds = backbone.layer_kinds()
        self.layers = knockout.layer_set(backbone.num_layers, self.kinds)
        self.by_kind: dict[str, list] = {}

    def update(self, state: TokenState, chunks) -> None:
        blocked = self.knockout.blocked(state)
        if not bool(blocked.any()):
            self.by_kind = {}
            return
        kinds = {self.kinds[i] for i in self.layers}
        self.by_kind = {}
        if ATTENTION in kinds:
            self.by_kind[ATTENTION] = [(s, e, inp.with_blocked(blocked[s:e, :e])) for s, e, inp in chunks]
        if MAMBA in kinds:  # the masked form reads only the blocked matrix, over the whole sequence
            self.by_kind[MAMBA] = [(0, state.length, LayerInput(state.positions, {}, blocked))]

    def chunks(self, i: int, plain):
        return self.by_kind.get(self.kinds[i], plain) if i in self.layers else plain


def _prefill(backbone: Backbone, embeds: torch.Tensor, *, compressor=None, vision=(0, 0),
             chunk: int | None = None, state: TokenState | None = None,
             knockout: Knockout | None = None, logits: str = "last",
             logits_dtype: str | None = None, cache=None) -> tuple[torch.Tensor, Sequence]:
    if state is None:
        state = TokenState.for_prompt(embeds, vision)
    if cache is None:
        cache = backbone.new_cache()
    hooked = compressor.llm_layers(backbone) if compressor is not None else ()
    chunks = _chunk_inputs(backbone, state.positions, chunk)
    blocking = _Blocking(backbone, knockout) if knockout is not None else None
    if blocking is not None:
        blocking.update(state, chunks)
    for i in range(backbone.num_layers):
        if i in hooked:
            before = state.length
            compressor.before_layer(i, state, backbone, cache)
            if state.length != before:
                chunks = _chunk_inputs(backbone, state.positions, chunk)
                if blocking is not None:
                    blocking.update(state, chunks)
        layer_chunks = chunks if blocking is None else blocking.chunks(i, chunks)
        state.hidden = _run_layer_chunked(backbone, i, state.hidden, cache, layer_chunks)
        backbone.after_layer(i, state)
    if logits == "all":  # the library's forward: every position's logits, in the head's dtype or upcast
        every = backbone.logits(state.hidden, dtype=getattr(torch, logits_dtype) if logits_dtype else None)
        logits = every[:, -1].float()
        del every
    else:
        logits = backbone.logits(state.hidden[:, -1:])[:, -1]
    position = state.positions.max().reshape(1) + 1  # on the device: no host sync (3-D positions: their max)
    return logits, Sequence(cache if knockout is None else None, position=position.long(), length=state.length)


@torch.inference_mode()
def decode_step(backbone: Backbone, token_ids: torch.Tensor, seq: Sequence) -> torch.Tensor:
    """One token per sequence ([batch, 1] ids) through the cache; returns logits [batch, vocab]."""
    if seq.cache is None:
        raise ValueError("this sequence was prefilled under a knockout and has no cache to decode from; "
                         "generate(knockout=...) recomputes the sequence for each new token")
    hidden = backbone.embed(token_ids)
    inp = backbone.layer_input(seq.position.clone())
    for i in range(backbone.num_layers):
        hidden = backbone.run_layer(i, hidden, seq.cache, inp)
    seq.position += 1
    seq.length += 1
    return backbone.logits(hidden)[:, -1]

