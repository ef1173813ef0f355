"""The one greedy generate loop: prefill, then decode until the token budget or EOS.

Used by ``run`` (a forced number of decode steps, no stop token), ``eval`` (stops at EOS)
and the tests. The stages are timed on a ``StageTimer`` when one is given.
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass, replace

import torch

from architectures.tokens import TokenState
from bench.engine.pipeline import decode_step, prefill


@dataclass
class Generation:
    tokens: torch.Tensor  # [batch, n] generated ids (EOS excluded)
    first_logits: torch.Tensor  # [batch, vocab] logits of the first generated token
    kept: int  # tokens that reached the last layer in prefill

    def ids(self) -> list[int]:
        return self.tokens[0].tolist()


class _Recompute:
    """Decoding under an attention knockout: each new token joins the prompt (as text; the newest is the
    ``last`` group) and the whole sequence runs again through prefill with the knockout. Exact and simple:
    no cache is reused, since a knockout's blocked pairs change as the sequence grows."""

    def __init__(self, backbone, prompt: TokenState, knockout, prefill_kwargs: dict):
        self.backbone, self.prompt, self.knockout, self.kwargs = backbone, prompt, knockout, prefill_kwargs
        self.tokens: list[torch.Tensor] = []

    def state(self) -> TokenState:
        """A fresh copy of the prompt's state with the generated tokens appended (prefill rebinds, never
        writes into, its tensors)."""
        state = replace(self.prompt)
        if not self.tokens:
            return state
        ids = torch.cat(self.tokens, dim=1)
        n, base = ids.shape[1], state.positions.max() + 1
        offsets = torch.arange(n, device=base.device) + base
        new_positions = offsets.expand(*state.positions.shape[:-1], n)
        state.hidden = torch.cat([state.hidden, self.backbone.embed(ids).to(state.hidden.dtype)], dim=1)
        state.positions = torch.cat([state.positions, new_positions.to(state.positions.dtype)], dim=-1)
        state.vision = torch.cat([state.vision, state.vision.new_zeros(n)])
        if state.frames is not None:
            state.frames = torch.cat([state.frames, state.frames.new_full((n,), -1)])
        return state

    def prefill(self):
        return prefill(self.backbone, None, state=self.state(), knockout=self.knockout, **self.kwargs)

    def __call__(self, backbone, token: torch.Tensor, seq) -> torch.Tensor:
        """A decode step's signature (``decode_step``): the logits after ``token``; ``seq`` is not read."""
        self.tokens.append(token)
        logits, _ = self.prefill()
        return logits


@torch.inference_mode()
def generate(backbone, embeds: torch.Tensor | None = None, *, max_new_tokens: int, eos_id=None,
             compressor=None, vision=(0, 0), state=None, chunk: int | None = None, timer=None,
             after_prefill=None, knockout=None, logits: str = "last", logits_dtype: str | None = None,
             cache=None) -> Generation:
    """Greedy decoding of at most ``max_new_tokens`` tokens per sequence.

    With ``eos_id`` (an id or a collection of ids; batch 1) generation stops before EOS. ``state`` is a ready token state
    (real video LLMs); otherwise ``embeds`` with the ``vision`` span or mask. ``after_prefill(seq)``,
    if given, sees the prefilled sequence before decoding starts (e.g. to read the cache's size).
    ``knockout`` (``architectures.knockout.Knockout``) blocks its edges in prefill and in every decoding
    step, each step recomputing the whole sequence (``_Recompute``) instead of reading the cache.
    """
    eos = set() if eos_id is None else {eos_id} if isinstance(eos_id, int) else set(eos_id)
    stage = timer.stage if timer is not None else (lambda name: nullcontext())
    step = decode_step
    with stage("prefill_s"):
        if knockout is None:
            logits, seq = prefill(backbone, embeds, compressor=compressor, vision=vision, chunk=chunk, state=state,
                                  logits=logits, logits_dtype=logits_dtype, cache=cache)
        else:
            prompt = state if state is not None else TokenState.for_prompt(embeds, vision)
            step = _Recompute(backbone, prompt, knockout, dict(compressor=compressor, chunk=chunk))
            logits, seq = step.prefill()
        token = logits.argmax(-1, keepdim=True)
        kept = seq.length
    if after_prefill is not None:
        after_prefill(seq)
    out: list[torch.Tensor] = []
    with stage("decode_s"):
        while max_new_tokens > 0:
            if eos and int(token[0, 0]) in eos:
                break
            out.append(token)
            if len(out) == max_new_tokens:
                break
            token = step(backbone, token, seq).argmax(-1, keepdim=True)
    tokens = torch.cat(out, dim=1) if out else logits.new_empty(logits.shape[0], 0, dtype=torch.long)
    return Generation(tokens, logits.float(), kept)


def greedy_generate(backbone, embeds: torch.Tensor, new_tokens: int, **prefill_kwargs) -> torch.Tensor:
    """Greedy decoding through the harness: ``new_tokens`` ids per sequence, [batch, new_tokens]."""
    return generate(backbone, embeds, max_new_tokens=new_tokens, **prefill_kwargs).tokens
