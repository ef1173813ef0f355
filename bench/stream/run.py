"""``viperbench stream``: a video stream at a given fps into a backbone, chunk by chunk, with questions.

Every record has ``kind: "stream"`` and a ``row``: ``chunk`` (one per chunk of frames), ``question``
(one per question) and one ``summary`` last. The summary:

- ``real_time_factor``: processing time per second of video (chunks only; below 1 keeps up);
- ``sustainable_fps``: the fps at which it would just keep up (fps / real-time factor);
- ``memory_slope_bytes_per_s``: least-squares slope of the stream's device bytes (KV cache + Mamba
  state) against stream time;
- under ``--memory-budget``, ``oom_at_s``: the stream time reached when weights + the stream's device
  bytes first exceed the budget (status ``oom``; every chunk before it is recorded).

Clocks: ``simulated`` feeds each chunk as soon as the model is ready and records, per chunk, when its
last frame arrived, when its processing ended and the lag; ``wall`` sleeps until a chunk's last frame
has arrived at the stream's pace (frame i arrives at (i + 1) / fps seconds after the start).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import torch

from bench.errors import UserError


@dataclass
class StreamPlan:
    fps: float
    chunk_frames: int
    frames: int
    questions: list[float] = field(default_factory=list)  # seconds of stream time
    clock: str = "simulated"
    memory_budget: int | None = None

    @property
    def duration_s(self) -> float:
        return self.frames / self.fps

    def boundaries(self) -> list[tuple[int, int, list[float]]]:
        """(first frame, frames, questions asked after it) per chunk: chunks of ``chunk_frames``, cut short
        where a question falls (a question at t sees the frames whose capture ended by t: floor(t * fps))."""
        at: dict[int, list[float]] = {}
        for t in self.questions:
            at.setdefault(math.floor(t * self.fps + 1e-9), []).append(t)
        cuts = sorted({*range(self.chunk_frames, self.frames, self.chunk_frames), self.frames,
                       *(n for n in at if 0 < n < self.frames)})
        out, start = [], 0
        for end in cuts:
            out.append((start, end - start, at.get(end, [])))
            start = end
        if 0 in at:  # a question before the first full frame: asked on BOS alone
            out.insert(0, (0, 0, at[0]))
        return out


def plan(fps: float, chunk_frames: int, *, duration: float | None = None, frames: int | None = None,
         questions: list[float] | None = None, question_every: float | None = None, clock: str = "simulated",
         memory_budget: int | None = None) -> StreamPlan:
    """A stream's plan from the command's values; bad values are one-line UserErrors."""
    for name, value in (("--fps", fps), ("--chunk-frames", chunk_frames), ("--duration", duration),
                        ("--frames", frames), ("--question-every", question_every)):
        if value is not None and not value > 0:
            raise UserError(f"{name} must be positive, got {value}")
    if (duration is None) == (frames is None):
        raise UserError("give the stream's length as exactly one of --duration S or --frames N")
    if questions and question_every:
        raise UserError("give --questions or --question-every, not both")
    n = frames if frames is not None else max(1, math.floor(duration * fps + 1e-9))
    length = n / fps
    times = list(questions or [])
    if question_every:
        times = [question_every * i for i in range(1, math.floor(length / question_every + 1e-9) + 1)]
    for t in times:
        if not 0 <= t <= length + 1e-9:
            raise UserError(f"question at {t:g} s is beyond the stream ({length:g} s: {n} frames at {fps:g} fps)")
    if clock not in ("simulated", "wall"):
        raise UserError(f"--clock must be simulated or wall, got {clock!r}")
    return StreamPlan(fps, chunk_frames, n, sorted(times), clock, memory_budget)


def check_streams(compressor) -> None:
    """One line naming a compressor that needs the whole video at once."""
    why = getattr(compressor, "cannot_stream", None)
    if why:
        raise UserError(f"compressor {compressor.name!r} cannot stream: {why}")


def memory_slope(times: list[float], sizes: list[int]) -> float | None:
    """Least-squares slope of bytes against seconds (None with fewer than two points)."""
    if len(times) < 2:
        return None
    mt, ms = sum(times) / len(times), sum(sizes) / len(sizes)
    var = sum((t - mt) ** 2 for t in times)
    return sum((t - mt) * (s - ms) for t, s in zip(times, sizes)) / var if var else None


def device_bytes(memory: dict) -> int:
    return memory["kv_cache_bytes"] + memory["ssm_state_bytes"] + memory["conv_state_bytes"]


def run_stream(stream, plan: StreamPlan, frames_of, question_of, *, new_tokens: int, weights_bytes: int,
               emit) -> dict:
    """Feed ``plan``'s chunks into ``stream`` (``bench.stream.session.Stream``, BOS already in) and ``emit``
    each row's metrics (a dict with ``row``); returns the summary row (also emitted).

    ``frames_of(first, n)`` gives a chunk's frames, ``question_of(t)`` a question's ids [batch, tokens]."""
    t0 = time.perf_counter()
    sim_end = 0.0  # simulated clock: when the model finished the last chunk
    busy = 0.0
    times, sizes, lags = [], [], []
    status, reached = "ok", 0.0
    for first, n, asked in plan.boundaries():
        if n:
            arrival = (first + n) / plan.fps
            if plan.clock == "wall":
                time.sleep(max(0.0, arrival - (time.perf_counter() - t0)))
            try:
                chunk = stream.feed(frames_of(first, n))
            except (torch.OutOfMemoryError, MemoryError):
                status = "oom"
                break
            busy += chunk.seconds
            end = time.perf_counter() - t0 if plan.clock == "wall" else max(sim_end, arrival) + chunk.seconds
            sim_end = end
            memory = stream.memory()
            held = device_bytes(memory)
            times.append(arrival)
            sizes.append(held)
            lags.append(end - arrival)
            emit({"row": "chunk", "first_frame": first, "frames": n, "stream_s": arrival, "tokens": chunk.tokens,
                  "context_tokens": stream.position, "vision_s": chunk.vision_s, "compressor_s": chunk.compressor_s,
                  "prefill_s": chunk.prefill_s, "window_s": chunk.window_s, "chunk_s": chunk.seconds, "done_s": end, "lag_s": end - arrival,
                  "device_bytes": held, "memory": memory})
            reached = arrival
            if plan.memory_budget is not None and weights_bytes + held > plan.memory_budget:
                status = "oom"
                break
        for t in asked:
            answer = stream.ask(question_of(t), new_tokens)
            answer.pop("first_logits")
            emit({"row": "question", "stream_s": t, **answer})
    video_s = reached
    rtf = busy / video_s if video_s else None
    summary = {"row": "summary", "status": status, "frames": stream.frames, "stream_s": reached,
               "real_time_factor": rtf, "sustainable_fps": plan.fps / rtf if rtf else None,
               "kept_up": bool(lags) and rtf is not None and rtf <= 1,
               "max_lag_s": max(lags) if lags else None, "memory_slope_bytes_per_s": memory_slope(times, sizes),
               "final_device_bytes": sizes[-1] if sizes else 0, "weights_bytes": weights_bytes,
               "oom_at_s": reached if status == "oom" else None, "memory_budget_bytes": plan.memory_budget}
    emit(summary)
    return summary
