"""A stream session: frames appended to one cache chunk by chunk, questions answered from a fork of it.

The sequence a stream builds is ``[BOS][frame 0 tokens][frame 1 tokens]...``, as the offline prompt's
``[BOS][video]`` with the same absolute positions. Each chunk of frames goes through the vision side
(the compressor's tower hook, e.g. STC-Cacher, with its reference frames carried from chunk to chunk),
the projector and the compressor's projector hook (STC-Pruner, with its running temporal anchor carried:
``Compressor.streaming``), then through the engine's layer loop, appended to the cache
(``bench.engine.pipeline.prefill(cache=...)``; ``--prefill-chunk`` still chunks within each layer).

A question is its tokens after the video so far, and an answer decoded by the one generate loop on the
same cache. Then the cache is put back as it was before the question (``snapshot``/``restore``): the
answer does **not** stay in the context, so the stream after a question is the stream without it and a
later question sees only the video (and never an earlier answer).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from architectures.tokens import TokenState
from bench.engine.generate import generate
from bench.engine.pipeline import prefill
from bench.measure.cost import cache_bytes
from bench.measure.meters import StageTimer


def snapshot(cache) -> list[dict]:
    """What ``restore`` needs to put ``cache`` back: per layer its attributes, states cloned.

    Attention KV is kept by reference (a DynamicLayer replaces its ``keys``/``values`` on every update,
    never writes into them); Mamba conv/SSM states are cloned (the library updates them in place)."""
    def keep(name, value):
        if name in ("keys", "values") or not isinstance(value, (torch.Tensor, dict)):
            return value
        if isinstance(value, dict):
            return {k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in value.items()}
        return value.clone()

    return [{k: keep(k, v) for k, v in vars(layer).items()} for layer in cache.layers]


def restore(cache, saved: list[dict]) -> None:
    """Put ``cache`` back to a ``snapshot`` (each snapshot is restored once)."""
    for layer, attrs in zip(cache.layers, saved):
        vars(layer).clear()
        vars(layer).update({k: dict(v) if isinstance(v, dict) else v for k, v in attrs.items()})


@dataclass
class Chunk:
    """One chunk's measurement."""

    first_frame: int
    frames: int
    tokens: int  # tokens appended to the cache (after compression)
    vision_s: float  # vision tower + projector, the compressor's time excluded
    compressor_s: float  # the compressor's own time (STC-Cacher's includes the tower layers it runs)
    prefill_s: float
    logits: torch.Tensor  # [batch, vocab] at the chunk's last token (tests)
    window_s: float = 0.0  # the window's eviction after the prefill: KV leaving it moved to CPU or disk

    @property
    def seconds(self) -> float:
        return self.vision_s + self.compressor_s + self.prefill_s + self.window_s


class Stream:
    """One video stream into one backbone. ``vision``: a ``VisionSide`` (pixels in) or None (the chunk's
    vision embeddings are given). ``window``: a ``bench.stream.window.Window`` bounding the attention KV,
    or None (the cache keeps every token)."""

    def __init__(self, backbone, vision=None, compressor=None, *, prefill_chunk: int | None = None, window=None):
        from compressors.base import Compressor

        self.backbone, self.vision = backbone, vision
        self.compressor = compressor if compressor is not None else Compressor()
        self.prefill_chunk, self.window = prefill_chunk, window
        self.cache = backbone.new_cache()
        self.position = 0  # the next token's absolute position
        self.frames = 0
        self.compressor.reset()
        self.compressor.new_video()
        self.compressor.streaming = True

    @property
    def device(self):
        return self.backbone.device

    def _append(self, embeds: torch.Tensor, vision: bool) -> torch.Tensor:
        n = embeds.shape[1]
        positions = torch.arange(self.position, self.position + n, device=embeds.device)
        mask = torch.full((n,), vision, dtype=torch.bool, device=embeds.device)
        state = TokenState(embeds, positions, mask, n_vision=n if vision else 0, vision_end=n)
        logits, _ = prefill(self.backbone, None, state=state, cache=self.cache, chunk=self.prefill_chunk)
        self.position += n
        return logits

    def start(self, bos_id: int, batch: int = 1) -> torch.Tensor:
        """The BOS token (the stream's first token, kept by a window as an attention sink)."""
        bos = torch.full((batch, 1), bos_id, device=self.device)
        with torch.inference_mode():
            return self._append(self.backbone.embed(bos), vision=False)

    def vision_tokens(self, frames: torch.Tensor, timer: StageTimer) -> torch.Tensor:
        """A chunk's frames ([n, 3, H, W] pixels, or [batch, n, tokens, hidden] ready vision embeddings)
        -> [batch, tokens', hidden] after the compressor's hooks."""
        with timer.stage("vision_s"):
            if self.vision is not None:
                frames = self.vision(frames, self.compressor)[None].to(self.backbone.dtype)
            return self.compressor.after_projector(frames)

    def feed(self, frames: torch.Tensor) -> Chunk:
        """Append one chunk of frames to the stream."""
        timer = StageTimer(str(self.device))
        before = self.compressor.time_s
        with torch.inference_mode():
            tokens = self.vision_tokens(frames, timer)
            n_frames = frames.shape[0] if self.vision is not None else frames.shape[1]
            with timer.stage("prefill_s"):
                logits = self._append(tokens, vision=True)
            if self.window is not None:
                with timer.stage("window_s"):
                    self.window.after_chunk(self.cache, self.frames, n_frames, tokens.shape[1])
        compressor_s = self.compressor.time_s - before
        chunk = Chunk(self.frames, n_frames, tokens.shape[1], timer.times["vision_s"] - compressor_s, compressor_s,
                      timer.times["prefill_s"], logits, timer.times.get("window_s", 0.0))
        self.frames += n_frames
        return chunk

    def ask(self, prompt_ids: torch.Tensor, new_tokens: int, eos_id=None) -> dict:
        """Answer a question ([batch, tokens] ids) from the stream so far; the cache is then put back."""
        timer = StageTimer(str(self.device))
        saved = snapshot(self.cache)
        context = self.position
        hook = self.window.retriever(self.backbone) if self.window is not None else None
        with torch.inference_mode():
            embeds = self.backbone.embed(prompt_ids)
            n = embeds.shape[1]
            positions = torch.arange(self.position, self.position + n, device=embeds.device)
            state = TokenState(embeds, positions, torch.zeros(n, dtype=torch.bool, device=embeds.device),
                               n_vision=0, vision_end=n)
            gen = generate(self.backbone, state=state, cache=self.cache, compressor=hook, max_new_tokens=new_tokens,
                           eos_id=eos_id, chunk=self.prefill_chunk, timer=timer)
        restore(self.cache, saved)
        steps = max(0, gen.tokens.shape[1] - 1)  # the first token comes with the prefill
        out = {"question_tokens": n, "context_tokens": context, "attended_tokens": self.resident_tokens(),
               "ttft_s": timer.times["prefill_s"], "decode_s": timer.times.get("decode_s", 0.0),
               "decode_tok_s": steps / timer.times["decode_s"] if steps and timer.times.get("decode_s") else None,
               "answer_ids": gen.ids(), "first_logits": gen.first_logits}
        if hook is not None:
            out["retrieval"] = hook.report()
        return out

    def resident_tokens(self) -> int:
        """Tokens an attention layer holds in the cache now (all of them without a window)."""
        return self.window.resident_tokens(self.position) if self.window is not None else self.position

    def memory(self) -> dict:
        """Bytes the stream holds on the device: KV cache, Mamba SSM and conv state (and, with a window,
        what it moved off)."""
        out = cache_bytes(self.cache)
        if self.window is not None:
            out.update(self.window.store_report())
        return out
