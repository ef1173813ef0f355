"""A task's documents as the probes' inputs: the same prompt the evaluator builds, as a ready token state.

Own backbones: ``[BOS][video][chat-templated prompt]`` with the vision side's tokens (or random vision
embeddings for ``--vision synthetic``), exactly as ``viperbench eval`` lays them out, with the frame of
each vision token filled in (``frame->frame`` needs it). Real video LLMs: the checkpoint's processor
and chat template (``FamilyBackbone.prompt``). A probe pass mutates the state it runs on, so every pass
gets a fresh copy (``ProbeDoc.fresh``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace

import torch

from architectures.tokenizer import ByteTokenizer
from architectures.tokens import TokenState
from bench.engine.own_layout import decode_clip, prompt_embeds, prompt_state, vision_tokens
from bench.errors import UserError
from tasks.base import Doc


@dataclass
class ProbeDoc:
    """One document ready for probe passes."""

    doc: Doc
    state: TokenState  # pristine: never run; use ``fresh()``
    frame_indices: list[int]  # source frame index of each sampled frame
    tokens: list[int]  # the prompt's token ids where known (own layout: BOS, video placeholders as -1, prompt)

    def fresh(self) -> TokenState:
        """A copy of the pristine state that a pass may change (hidden states cloned)."""
        return replace(self.state, hidden=self.state.hidden.clone(),
                       per_vision={k: list(v) for k, v in self.state.per_vision.items()})


def own_layout(backbone, vision_side, compressor, frames: torch.Tensor, prompt: str, tok, *, seed: int,
               tokens_per_frame: int) -> tuple[TokenState, list[int]]:
    """The evaluator's own layout as a token state: [BOS][video][prompt], frames of the vision tokens.
    ``compressor`` None: no compressor (the probes' own passes)."""
    if compressor is None:
        from compressors.base import make_compressor

        compressor = make_compressor("none")
    with torch.inference_mode():
        tokens = vision_tokens(backbone, vision_side, compressor, frames, seed=seed, tokens_per_frame=tokens_per_frame)
        prompt_ids = tok.encode_prompt(prompt)
        embeds, span = prompt_embeds(backbone, compressor.after_projector(tokens), prompt_ids, tok.bos_id)
    state = prompt_state(embeds, span, tokens.shape[1])
    return state, [tok.bos_id, *([-1] * (span[1] - span[0])), *prompt_ids]


def prepare(backbone, vision_side, compressor, doc: Doc, tok, *, frames: int, fps: float | None, seed: int,
            tokens_per_frame: int, decoder: str) -> ProbeDoc:
    """Decode the document's video as ``eval`` does and build its prompt state."""
    clip = decode_clip(backbone, vision_side, doc.video, frames=frames, fps=fps, decoder=decoder)
    if backbone.takes_frames:
        with torch.inference_mode():
            compressor.reset()
            compressor.new_video()
            encoded = backbone.prompt(clip, doc.prompt, compressor)
        return ProbeDoc(doc, encoded.state, list(clip.indices), encoded.input_ids[0].tolist())
    state, ids = own_layout(backbone, vision_side, compressor, clip.frames, doc.prompt, tok, seed=seed,
                            tokens_per_frame=tokens_per_frame)
    return ProbeDoc(doc, state, list(clip.indices), ids)


def first_token(tok, text: str) -> int:
    """The first token id of ``text`` as the model would write it (no chat template, no special tokens)."""
    ids = tok.encode_prompt(text) if isinstance(tok, ByteTokenizer) else tok.tok.encode(text, add_special_tokens=False)
    if not ids:
        raise UserError(f"the answer {text!r} encodes to no tokens")
    return int(ids[0])


def option_text(doc: Doc) -> str | None:
    """The text of the gold option of a multiple-choice prompt ("B. green" -> "green"), or None."""
    if not isinstance(doc.target, str):
        return None
    found = re.search(rf"(?<![A-Za-z]){re.escape(doc.target)}\.\s*([^\s.,]+)", doc.prompt)
    return found.group(1) if found else None


def choices(doc: Doc) -> list[str]:
    """The option letters a multiple-choice prompt lists ("A. red B. green ..." -> ["A", "B"]), in order."""
    return list(dict.fromkeys(re.findall(r"(?<![A-Za-z])([A-Z])\.\s", doc.prompt)))


def gold_answer(doc: Doc) -> str | None:
    """The gold answer text when the task has one (a letter for the multiple-choice tasks), else None."""
    return doc.target if isinstance(doc.target, str) and doc.target else None


def needle_frame(doc: Doc, frame_indices: list[int]) -> int | None:
    """V-NIAH: the rank, among the sampled frames, of the needle frame (None if the task has none, or the
    sampling skipped it)."""
    if "depth" not in doc.fields or "length" not in doc.fields:
        return None
    index = int(round(doc.fields["depth"] * (doc.fields["length"] - 1)))
    return frame_indices.index(index) if index in frame_indices else None
