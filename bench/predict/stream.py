"""A stream on a named GPU, predicted from a CPU: memory slope and the hours of video that fit.

A stream's device memory is the peak of one chunk's pass (weights, the chunk's activations, the Mamba
state) plus the attention KV of every token so far. The first comes from the fake pass
(``bench.predict.fake_pass``: one pass of ``chunk_frames`` frames, synthetic vision, on fake tensors), the
second from the cost model (``bench.measure.cost.kv_bytes_per_token``): KV bytes per token x tokens per
frame (after the compressor's per-frame budget) x fps is the **memory slope** in bytes per second of video.
The hours that fit are (budget - peak of one chunk) / slope / 3600. Not counted: the attention
transient of a chunk at a long context (its queries against the whole cache; flash attention holds
none of it) and fragmentation beyond the allocator margin. A pure Mamba-2 has no slope: its memory
does not grow, and the hours that fit are unbounded (None).
"""

from __future__ import annotations

from bench.errors import UserError
from bench.measure.cost import kv_bytes_per_token
from bench.predict.capacity import DEFAULT_ALLOCATOR_MARGIN, DEFAULT_CONTEXT_MARGIN, Predictor, budget_bytes
from bench.predict.gpus import resolve


def tokens_per_frame_after(compressor: str, tokens_per_frame: int) -> int:
    """A frame's tokens after a streaming compressor's per-frame budget (STC-Pruner's ``tokens_per_frame``)."""
    from compressors.base import make_compressor

    comp = make_compressor(compressor)
    if comp.cannot_stream:
        raise UserError(f"compressor {comp.name!r} cannot stream: {comp.cannot_stream}")
    keep = getattr(comp, "keep", None)
    return min(keep, tokens_per_frame) if keep else tokens_per_frame


def predict_stream(arch: str, preset: str, compressor: str, gpu_name: str | None, *, fps: float,
                   chunk_frames: int, tokens_per_frame: int = 16, dtype: str = "bfloat16") -> dict:
    """The predicted stream metrics (marked ``predicted``)."""
    from bench.spec import make_spec

    spec = make_spec({"arch": arch, "preset": preset, "compressor": compressor, "frames": chunk_frames,
                      "tokens_per_frame": tokens_per_frame, "vision": "synthetic", "dtype": dtype,
                      "prompt_tokens": 16, "new_tokens": 16})
    gpu = resolve(gpu_name)
    budget = budget_bytes(gpu, DEFAULT_CONTEXT_MARGIN, DEFAULT_ALLOCATOR_MARGIN)
    chunk_peak = Predictor(spec, target="gpu", mamba="mamba-ssm", budget=budget)(chunk_frames)["peak_bytes"]
    from architectures import ARCHITECTURES

    backbone = ARCHITECTURES.get(arch).skeleton(preset)
    per_frame = tokens_per_frame_after(compressor, tokens_per_frame)
    slope = kv_bytes_per_token(backbone, 2 if dtype in ("bfloat16", "float16") else 4) * per_frame * fps
    hours = (budget - chunk_peak) / slope / 3600 if slope else None
    return {"predicted": True, "gpu": gpu.name, "budget_bytes": budget, "chunk_peak_bytes": chunk_peak,
            "tokens_per_frame_after": per_frame, "memory_slope_bytes_per_s": slope, "fps": fps,
            "hours_that_fit": hours, "fits_one_chunk": chunk_peak <= budget}
