"""One cell, end to end: build, warm up, repeat timed passes, summarise into a record.

A pass is::

    decode_video_s  frames for the vision tower (synthetic: generated)
    vision_s        tower + ToMe + projector, or random vision embeddings
    prefill_s       [BOS][video][prompt] embeddings through the layer loop -> first token
    decode_s        --new-tokens single-token steps over the (shortened) cache

TTFT = decode_video_s + vision_s + prefill_s. Throughput counts vision tokens.
"""

from __future__ import annotations

import statistics
import sys
import traceback
from dataclasses import dataclass

import torch

from architectures import ARCHITECTURES
from bench.errors import UserError
from bench.meters import MemoryMeter, StageTimer, release_free_memory
from bench.pipeline import decode_step, prefill
from bench.records import environment, make_record
from bench.spec import CellSpec
from compressors.base import make_compressor
from tasks import TASKS

SUMMARISED = ("prefill_s", "prefill_tok_s", "ttft_s", "decode_s", "decode_tok_s", "e2e_tok_s")


class OverBudget(Exception):
    """Peak memory above the cell's --memory-budget: recorded as status oom."""


def _is_oom(exc: BaseException) -> bool:
    if isinstance(exc, (torch.OutOfMemoryError, MemoryError, OverBudget)):
        return True
    return isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()


@dataclass
class Model:
    """What a cell runs: the backbone, its vision side (or None for synthetic vision), the compressor."""

    backbone: object
    vision: object | None
    compressor: object


def import_plugins(spec: CellSpec) -> None:
    """Import every module the cell needs, so the memory baseline taken next excludes code."""
    ARCHITECTURES.get(spec.arch)
    TASKS.get(spec.task)
    make_compressor(spec.compressor)
    if spec.vision == "siglip":
        import architectures.vision  # noqa: F401


def build_model(spec: CellSpec) -> Model:
    dtype = getattr(torch, spec.resolved_dtype)
    backbone = ARCHITECTURES.get(spec.arch).build(spec.preset, spec.checkpoint, device=spec.device, dtype=dtype,
                                                  seed=spec.seed)
    vision = None
    if spec.vision == "siglip":
        from architectures.vision import VisionSide

        vision = VisionSide(spec.preset or "paper", backbone.hidden_size, spec.tokens_per_frame, dtype=dtype,
                            device=spec.device, seed=spec.seed)
    compressor = make_compressor(spec.compressor)
    compressor.check(backbone)
    compressor.prepare(backbone)
    return Model(backbone, vision, compressor)


def one_pass(spec: CellSpec, model: Model, request, meter: MemoryMeter) -> dict:
    bb, timer, compressor = model.backbone, StageTimer(spec.device), model.compressor
    batch, n_vision = spec.batch, spec.frames * spec.tokens_per_frame
    compressor.reset()
    with torch.inference_mode():
        with timer.stage("decode_video_s"):
            frames = request.frames
        with timer.stage("vision_s"):
            shape = (batch, spec.frames, spec.tokens_per_frame, -1)
            if model.vision is not None:
                videos = []
                for video in frames:  # one video at a time: per-video state (e.g. STC references)
                    compressor.new_video()
                    videos.append(model.vision(video, compressor))
                vision = torch.stack(videos).reshape(shape).to(bb.dtype)
            else:
                gen = torch.Generator(device=spec.device).manual_seed(spec.seed)
                vision = torch.randn(*shape[:3], bb.hidden_size, generator=gen, device=spec.device,
                                     dtype=bb.dtype) * 0.02
            vision = compressor.after_projector(vision)
        with timer.stage("prefill_s"):
            bos = torch.full((batch, 1), request.bos_id, device=spec.device)
            embeds = torch.cat([bb.embed(bos), vision, bb.embed(request.prompt_ids)], dim=1)
            span = (1, 1 + vision.shape[1])
            del vision
            logits, seq = prefill(bb, embeds, compressor=compressor, vision=span, chunk=spec.prefill_chunk)
            del embeds
            token = logits.argmax(-1, keepdim=True)
            kept = seq.length
        meter.sample()
        with timer.stage("decode_s"):
            for _ in range(spec.new_tokens):  # forced: no stop token
                token = decode_step(bb, token, seq).argmax(-1, keepdim=True)
        meter.sample()
    t = timer.times
    input_tokens = 1 + n_vision + spec.prompt_tokens
    ttft = t["decode_video_s"] + t["vision_s"] + t["prefill_s"]
    return {
        "input_tokens": input_tokens,
        "vision_tokens": n_vision,
        "tokens_after_compression": kept,
        "prefill_s": t["prefill_s"],
        "prefill_tok_s": batch * input_tokens / t["prefill_s"],
        "ttft_s": ttft,
        "decode_s": t["decode_s"],
        "decode_tok_s": batch * spec.new_tokens / t["decode_s"],
        "e2e_tok_s": batch * (input_tokens + spec.new_tokens) / (ttft + t["decode_s"]),
        "stages": dict(t),
        "compressor": compressor.report(),
    }


def summarise(samples: list[dict], peaks: list[dict]) -> dict:
    """Median of the repeats for timings, with min/max/IQR spread; the largest memory peak."""
    out = {k: v for k, v in samples[-1].items() if k not in SUMMARISED and k != "stages"}
    spread = {}
    for key in SUMMARISED:
        values = sorted(s[key] for s in samples)
        out[key] = statistics.median(values)
        q = statistics.quantiles(values, n=4) if len(values) > 1 else [values[0]] * 3
        spread[key] = {"min": values[0], "max": values[-1], "iqr": q[2] - q[0], "values": values}
    out["stages"] = {k: statistics.median(s["stages"][k] for s in samples) for k in samples[0]["stages"]}
    peak = max(peaks, key=lambda p: p["peak_mem_bytes"])
    out["peak_mem_bytes"] = peak["peak_mem_bytes"]
    out["memory"] = peak
    out["spread"] = spread
    out["repeats"] = len(samples)
    return out


def run_cell(spec: CellSpec, meter: MemoryMeter | None = None) -> dict:
    """Measure one cell and return its record. OOM and runtime failures become the record's status;
    only bad input (UserError) propagates."""
    env = environment(spec.device)
    import_plugins(spec)
    meter = meter or MemoryMeter(spec.device)
    meter.set_baseline()
    model = None
    peaks: list[dict] = []
    try:
        meter.reset()
        model = build_model(spec)
        task = TASKS.get(spec.task)(seed=spec.seed)
        bb = model.backbone
        request = task.request(batch=spec.batch, frames=spec.frames, prompt_tokens=spec.prompt_tokens,
                               vocab_size=bb.config.vocab_size, device=spec.device, dtype=bb.dtype,
                               image_size=model.vision.image_size if model.vision else None)
        samples = []
        for r in range(spec.warmup + spec.repeats):
            if r > 0:
                meter.reset()
            result = one_pass(spec, model, request, meter)
            peak = meter.read()
            if spec.memory_budget is not None and peak["peak_mem_bytes"] > spec.memory_budget:
                raise OverBudget(f"peak {peak['peak_mem_bytes']} B above budget {spec.memory_budget} B")
            if r >= spec.warmup:
                samples.append(result)
                peaks.append(peak)
        metrics = summarise(samples, peaks)
        return make_record(spec.to_dict(), env, metrics=metrics)
    except UserError:
        raise
    except BaseException as exc:  # noqa: BLE001 - a cell's failure is its result
        if isinstance(exc, KeyboardInterrupt):
            raise
        status = "oom" if _is_oom(exc) else "error"
        message = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}".strip()
        if status == "error":
            traceback.print_exc(file=sys.stderr)
        peak = meter.read() if status == "oom" else None
        metrics = {"peak_mem_bytes": peak["peak_mem_bytes"], "memory": peak} if peak else {}
        return make_record(spec.to_dict(), env, status=status, error=message[:500], metrics=metrics)
    finally:
        del model
        if spec.device.startswith("cuda"):
            torch.cuda.empty_cache()
        release_free_memory()
