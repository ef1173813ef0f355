"""A stream job from the command's values: the backbone, its vision side, the compressor, the window.

Frames are synthetic and reproducible per frame (frame i's pixels or embeddings come from seed + i), so
a stream cut into any chunks sees the same frames; a question at t seconds is ``--question-tokens``
random ids seeded by t.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from bench.errors import UserError
from bench.stream.run import StreamPlan, check_streams, plan, run_stream
from bench.stream.session import Stream
from bench.stream.window import Window


def pixel_frames(first: int, n: int, image_size: int, seed: int) -> torch.Tensor:
    """[n, 3, S, S] pixels in [0, 1], frame i from its own seed."""
    return torch.stack([torch.rand(3, image_size, image_size, generator=torch.Generator().manual_seed(seed + i))
                        for i in range(first, first + n)])


def embedding_frames(first: int, n: int, tokens: int, hidden: int, seed: int, dtype) -> torch.Tensor:
    """[1, n, tokens, hidden] random vision embeddings (scale 0.02, as the runner's), frame i from its own seed."""
    return torch.stack([torch.randn(tokens, hidden, generator=torch.Generator().manual_seed(seed + i))
                        for i in range(first, first + n)])[None].to(dtype) * 0.02


def make_window(backbone, window_frames, offload, retrieve):
    if window_frames is None:
        if offload or retrieve:
            raise UserError("--kv-offload and --retrieve-frames need --window-frames (what leaves the window "
                            "is what is offloaded and retrieved)")
        return None
    if not backbone.attention_layers():
        raise UserError(f"{backbone.name} has no attention layers: its Mamba-2 state does not grow with the "
                        "stream, and a window means nothing for it (--window-frames refused)")
    if retrieve and not offload:
        raise UserError("--retrieve-frames needs --kv-offload cpu|disk (retrieval reloads offloaded KV)")
    return Window(backbone, window_frames, offload, retrieve)


@dataclass
class Job:
    spec: dict
    plan: StreamPlan
    stream: Stream
    frames_of: object
    question_of: object
    new_tokens: int
    weights_bytes: int
    env: dict
    compressor_spec: str

    def run(self, emit) -> dict:
        return run_stream(self.stream, self.plan, self.frames_of, self.question_of, new_tokens=self.new_tokens,
                          weights_bytes=self.weights_bytes, emit=emit)


def build_stream(args, plan_args: dict) -> Job:
    from architectures import ARCHITECTURES
    from bench.records import environment
    from compressors.base import make_compressor

    stream_plan = plan(args.fps, args.chunk_frames, **plan_args)
    compressor = make_compressor(args.compressor)
    check_streams(compressor)
    if args.vision == "synthetic" and compressor.wants_tower_hook:
        raise UserError(f"compressor {compressor.name!r} acts in the vision tower: it needs --vision siglip")
    dtype_name = args.dtype or "float32"
    dtype = getattr(torch, dtype_name, None)
    if not isinstance(dtype, torch.dtype):
        raise UserError(f"unknown --dtype {args.dtype!r}; valid: float32, bfloat16, float16")
    backbone = ARCHITECTURES.get(args.arch).build(None if args.checkpoint else args.preset, args.checkpoint,
                                                  dtype=dtype, seed=args.seed)
    if backbone.takes_frames:
        raise UserError(f"stream runs the harness's own vision side; {args.arch} brings its own processor")
    backbone.check_compressor(compressor)
    compressor.check(backbone)
    compressor.prepare(backbone)
    vision = None
    if args.vision == "siglip":
        from architectures.vision import VisionSide

        vision = (VisionSide.from_checkpoint(args.checkpoint, backbone.hidden_size, args.tokens_per_frame, dtype=dtype)
                  if args.checkpoint else VisionSide(args.preset, backbone.hidden_size, args.tokens_per_frame,
                                                     dtype=dtype, seed=args.seed))
    window = make_window(backbone, args.window_frames, args.kv_offload, args.retrieve_frames)
    stream = Stream(backbone, vision, compressor, prefill_chunk=args.prefill_chunk, window=window)
    stream.start(bos_id=1)
    seed = args.seed
    if vision is not None:
        frames_of = lambda first, n: pixel_frames(first, n, vision.image_size, seed)  # noqa: E731
    else:
        frames_of = lambda first, n: embedding_frames(first, n, args.tokens_per_frame, backbone.hidden_size,  # noqa: E731
                                                      seed, dtype)
    vocab = backbone.config.vocab_size

    def question_of(t: float) -> torch.Tensor:
        gen = torch.Generator().manual_seed(seed + int(t * 1000))
        return torch.randint(3, vocab, (1, args.question_tokens), generator=gen)

    weights = sum(p.numel() * p.element_size() for p in backbone.model.parameters())
    if vision is not None:
        weights += sum(p.numel() * p.element_size() for p in vision.parameters())
    spec = {"arch": args.arch, "preset": None if args.checkpoint else args.preset, "checkpoint": args.checkpoint,
            "compressor": repr(compressor), "fps": args.fps, "chunk_frames": args.chunk_frames,
            "frames": stream_plan.frames, "questions": ",".join(f"{t:g}" for t in stream_plan.questions), "clock": args.clock,
            "tokens_per_frame": args.tokens_per_frame, "vision": args.vision, "question_tokens": args.question_tokens,
            "new_tokens": args.new_tokens, "window_frames": args.window_frames, "kv_offload": args.kv_offload,
            "retrieve_frames": args.retrieve_frames, "memory_budget": args.memory_budget, "dtype": dtype_name,
            "device": "cpu", "seed": seed, "task": "stream"}
    return Job(spec, stream_plan, stream, frames_of, question_of, args.new_tokens, weights, environment("cpu"),
               repr(compressor))


def stream_record(job: Job, row: dict) -> dict:
    """One line of ``kind: "stream"``: the row's metrics under ``metrics``."""
    from bench.records import make_record

    status = row.get("status", "ok")
    return make_record(job.spec, job.env, status=status, metrics=dict(row), kind="stream", row=row["row"])
