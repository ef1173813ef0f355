"""The one greedy generate loop: prefill, then decode until the token budget or EOS.

Used by ``run`` (a forced number of decode steps, no stop token), ``eval`` (stops at EOS)
and the tests. The stages are timed on a ``StageTimer`` when one is given.
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass

import torch

from bench.engine.pipeline import decode_step, prefill


@dataclass
class Generation:
    tokens: torch.Tensor  # [batch, n] generated ids (EOS excluded)
    first_logits: torch.Tensor  # [batch, vocab] logits of the first generated token
    kept: int  # tokens that reached the last layer in prefill

    def ids(self) -> list[int]:
        return self.tokens[0].tolist()


@torch.inference_mode()
def generate(backbone, embeds: torch.Tensor | None = None, *, max_new_tokens: int, eos_id=None,
             compressor=None, vision=(0, 0), state=None, chunk: int | None = None, timer=None,
             after_prefill=None) -> Generation:
    """Greedy decoding of at most ``max_new_tokens`` tokens per sequence.

    With ``eos_id`` (an id or a collection of ids; batch 1) generation stops before EOS. ``state`` is a ready token state
    (real video LLMs); otherwise ``embeds`` with the ``vision`` span or mask. ``after_prefill(seq)``,
    if given, sees the prefilled sequence before decoding starts (e.g. to read the cache's size).
    """
    eos = set() if eos_id is None else {eos_id} if isinstance(eos_id, int) else set(eos_id)
    stage = timer.stage if timer is not None else (lambda name: nullcontext())
    with stage("prefill_s"):
        logits, seq = prefill(backbone, embeds, compressor=compressor, vision=vision, chunk=chunk, state=state)
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
            token = decode_step(backbone, token, seq).argmax(-1, keepdim=True)
    tokens = torch.cat(out, dim=1) if out else logits.new_empty(logits.shape[0], 0, dtype=torch.long)
    return Generation(tokens, logits.float(), kept)


def greedy_generate(backbone, embeds: torch.Tensor, new_tokens: int, **prefill_kwargs) -> torch.Tensor:
    """Greedy decoding through the harness: ``new_tokens`` ids per sequence, [batch, new_tokens]."""
    return generate(backbone, embeds, max_new_tokens=new_tokens, **prefill_kwargs).tokens
