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
from bench.measure.cost import cache_bytes, record_cost
from bench.errors import UserError
from bench.metrics import PER_REPEAT
from bench.measure.meters import MemoryMeter, StageTimer, release_free_memory
from bench.engine.generate import generate
from bench.records import environment, make_record
from bench.spec import CellSpec, check_runnable
from bench.stats import median_ci
from bench.measure.work import WorkCounter, summarise_work
from compressors.base import make_compressor
from tasks import TASKS

SUMMARISED = PER_REPEAT  # the timings of every repeat (bench.metrics): median, spread and interval


class OverBudget(Exception):
    """Peak memory above the cell's --memory-budget: recorded as status oom."""


def _is_oom(exc: BaseException) -> bool:
    if isinstance(exc, (torch.OutOfMemoryError, MemoryError, OverBudget)):
        return True
    message = str(exc).lower()
    # CUDA: "out of memory"; CPU: "DefaultCPUAllocator: can't allocate memory: you tried to allocate ..."
    return isinstance(exc, RuntimeError) and ("out of memory" in message or "can't allocate memory" in message)


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
    if spec.vision == "siglip" and not backbone.takes_frames:
        from architectures.vision import VisionSide

        if spec.checkpoint:
            vision = VisionSide.from_checkpoint(spec.checkpoint, backbone.hidden_size, spec.tokens_per_frame,
                                                dtype=dtype, device=spec.device)
        else:
            vision = VisionSide(spec.preset, backbone.hidden_size, spec.tokens_per_frame, dtype=dtype,
                                device=spec.device, seed=spec.seed)
        if spec.frame_batch is not None:
            vision.frame_batch = spec.frame_batch
    if backbone.takes_frames:
        backbone.frame_batch = spec.frame_batch
    compressor = make_compressor(spec.compressor)
    backbone.check_compressor(compressor)
    compressor.check(backbone)
    compressor.prepare(backbone)
    return Model(backbone, vision, compressor)


def synthetic_prompt(n: int) -> str:
    """An instruction of about ``n`` words for a real video LLM's tokenizer (synthetic workload)."""
    words = "describe what happens in the video".split()
    return " ".join(words[i % len(words)] for i in range(n))


def one_pass_video_llm(spec: CellSpec, model: Model, request, timer) -> dict:
    """A real video LLM: frames -> its processor and vision code (vision_s) -> the one generate loop.

    Synthetic frames are a whole video of ``--frames`` frames at 1 fps (what the processor's timestamps say)."""
    from tasks.video import Clip

    bb, compressor = model.backbone, model.compressor
    compressor.reset()
    with torch.inference_mode():
        with timer.stage("decode_video_s"):
            clip = Clip.consecutive(request.frames[0])
        with timer.stage("vision_s"):
            compressor.new_video()
            prompt = bb.prompt(clip, synthetic_prompt(spec.prompt_tokens), compressor)
        cache: dict = {}
        kept = generate(bb, max_new_tokens=spec.new_tokens + 1, compressor=compressor, state=prompt.state,
                        chunk=spec.prefill_chunk, timer=timer, after_prefill=_read_cache(cache),
                        logits=spec.logits, logits_dtype=spec.logits_dtype).kept
    metrics = _metrics(spec, timer, prompt.input_ids.shape[1], prompt.vision_tokens, kept, compressor, cache)
    metrics["checkpoint_pruned_tokens"] = prompt.checkpoint_pruned  # before the LLM, not in vision_tokens
    return metrics


def _read_cache(into: dict):
    """An ``after_prefill`` hook: the KV and Mamba state bytes at the end of prefill (metrics.cost)."""
    return lambda seq: into.update(cache_bytes(seq.cache))


def _metrics(spec: CellSpec, timer, input_tokens: int, n_vision: int, kept: int, compressor, cache: dict) -> dict:
    batch, t = spec.batch, timer.times
    ttft = t["decode_video_s"] + t["vision_s"] + t["prefill_s"]
    cpu = {}
    if timer.cpu_times is not None:  # on the CPU: the same rates in CPU time (less noisy on a shared machine)
        c = timer.cpu_times
        cpu = {"prefill_cpu_s": c["prefill_s"], "decode_cpu_s": c["decode_s"],
               "prefill_cpu_tok_s": batch * input_tokens / max(c["prefill_s"], 1e-9),
               "decode_cpu_tok_s": batch * spec.new_tokens / max(c["decode_s"], 1e-9)}
    return {
        "input_tokens": input_tokens,
        "vision_tokens": n_vision,
        "tokens_after_compression": kept,
        "tokens_processed": batch * (input_tokens + spec.new_tokens),
        "prefill_s": t["prefill_s"],
        "prefill_tok_s": batch * input_tokens / t["prefill_s"],
        "ttft_s": ttft,
        "decode_s": t["decode_s"],
        "decode_tok_s": batch * spec.new_tokens / t["decode_s"],
        "e2e_tok_s": batch * (input_tokens + spec.new_tokens) / (ttft + t["decode_s"]),
        "stages": dict(t),
        "compressor": compressor.report(),
        "cache": cache,
        **cpu,
    }


def one_pass(spec: CellSpec, model: Model, request, timer=None) -> dict:
    """One pass of the cell; its stages are timed on ``timer`` (a fresh ``StageTimer`` by default,
    or a ``bench.measure.work.WorkCounter`` for the counting pass)."""
    timer = timer if timer is not None else StageTimer(spec.device)
    if model.backbone.takes_frames:
        return one_pass_video_llm(spec, model, request, timer)
    bb, compressor = model.backbone, model.compressor
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
        bos = torch.full((batch, 1), request.bos_id, device=spec.device)
        embeds = torch.cat([bb.embed(bos), vision, bb.embed(request.prompt_ids)], dim=1)
        span = (1, 1 + vision.shape[1])
        del vision
        # forced: the first token and --new-tokens decode steps, no stop token
        cache: dict = {}
        kept = generate(bb, embeds, max_new_tokens=spec.new_tokens + 1, compressor=compressor, vision=span,
                        chunk=spec.prefill_chunk, timer=timer, after_prefill=_read_cache(cache),
                        logits=spec.logits, logits_dtype=spec.logits_dtype).kept
        del embeds
    return _metrics(spec, timer, 1 + n_vision + spec.prompt_tokens, n_vision, kept, compressor, cache)


def summarise(samples: list[dict], peaks: list[dict]) -> dict:
    """Median of the repeats for timings, with min/max/IQR spread; the largest memory peak."""
    out = {k: v for k, v in samples[-1].items() if k not in SUMMARISED and k != "stages"}
    spread = {}
    for key in (k for k in SUMMARISED if k in samples[0]):
        values = [s[key] for s in samples]  # in measurement order (rounds, when interleaved)
        out[key] = statistics.median(values)
        q = statistics.quantiles(values, n=4) if len(values) > 1 else [values[0]] * 3
        spread[key] = {"min": min(values), "max": max(values), "iqr": q[2] - q[0], "values": values,
                       "ci95": list(median_ci(values))}
    out["stages"] = {k: statistics.median(s["stages"][k] for s in samples) for k in samples[0]["stages"]}
    peak = max(peaks, key=lambda p: p["peak_mem_bytes"])
    out["peak_mem_bytes"] = peak["peak_mem_bytes"]
    out["memory"] = peak
    energy = [p["energy_j"] for p in peaks if p.get("energy_j") is not None]
    if energy:  # NVML's total-energy counter: joules per pass, and per token processed (prompt + generated)
        out["energy_j"] = statistics.median(energy)
        out["energy_j_per_token"] = out["energy_j"] / out["tokens_processed"]
    out["spread"] = spread
    out["repeats"] = len(samples)
    return out


def model_bytes(model: Model) -> int:
    """Bytes of the weights and buffers a cell's model holds (backbone, vision side, compressor)."""
    modules = [model.backbone.model, model.vision, getattr(model.compressor, "cross", None)]
    return sum(t.numel() * t.element_size() for m in modules if m is not None
               for t in (*m.parameters(), *m.buffers()))


class CellRun:
    """One cell across its passes: the model, the request, and the measured samples and peaks."""

    def __init__(self, spec: CellSpec, meter: MemoryMeter | None = None):
        self.spec = spec
        check_runnable(spec)
        import_plugins(spec)
        self.env = environment(spec.device)  # after the imports: it reports the kernels they bound
        self.meter = meter or MemoryMeter(spec.device)
        self.model: Model | None = None
        self.samples: list[dict] = []
        self.peaks: list[dict] = []
        self.work: dict | None = None

    def build(self) -> None:
        spec = self.spec
        self.model = build_model(spec)
        bb = self.model.backbone
        task = TASKS.get(spec.task)(seed=spec.seed)
        self.request = task.request(batch=spec.batch, frames=spec.frames, prompt_tokens=spec.prompt_tokens,
                                    vocab_size=bb.config.vocab_size, device=spec.device, dtype=bb.dtype,
                                    image_size=(bb.frame_size if bb.takes_frames else
                                                self.model.vision.image_size if self.model.vision else None))

    def measure(self, keep: bool) -> None:
        """One pass; its timings and memory peak are kept unless it is a warm-up."""
        result = one_pass(self.spec, self.model, self.request)
        peak = self.meter.read()
        budget = self.spec.memory_budget
        if budget is not None and peak["peak_mem_bytes"] > budget:
            raise OverBudget(f"peak {peak['peak_mem_bytes']} B above budget {budget} B")
        if keep:
            self.samples.append(result)
            self.peaks.append(peak)

    def count_work(self) -> None:
        """One more pass, untimed, that counts its work (``metrics.work``, ``bench.measure.work``)."""
        counter = WorkCounter(self.spec.device)
        one_pass(self.spec, self.model, self.request, counter)
        self.work = summarise_work(counter, decode_steps=self.spec.new_tokens)

    def record(self, **extra) -> dict:
        metrics = summarise(self.samples, self.peaks)
        if self.work is not None:
            metrics["work"] = self.work
        metrics["cost"] = record_cost(self.spec, self.model, metrics, self.env)  # takes over metrics["cache"]
        return make_record(self.spec.to_dict(), self.env, metrics=metrics, **extra)

    def failure(self, exc: BaseException) -> dict:
        """The record of a cell that raised: status oom or error, with a one-line message."""
        status = "oom" if _is_oom(exc) else "error"
        message = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}".strip()
        if status == "error":
            traceback.print_exception(exc, file=sys.stderr)
        peak = self.meter.read() if status == "oom" else None
        metrics = {"peak_mem_bytes": peak["peak_mem_bytes"], "memory": peak} if peak else {}
        return make_record(self.spec.to_dict(), self.env, status=status, error=message[:500], metrics=metrics)

    def close(self) -> None:
        self.model = self.request = None
        if self.spec.device.startswith("cuda"):
            torch.cuda.empty_cache()
        release_free_memory()


def run_cell(spec: CellSpec, meter: MemoryMeter | None = None) -> dict:
    """Measure one cell and return its record. OOM and runtime failures become the record's status;
    only bad input (UserError) propagates."""
    run = CellRun(spec, meter)
    run.meter.set_baseline()
    try:
        run.build()
        for r in range(spec.warmup + spec.repeats):
            run.meter.reset()  # after the build: the build's transients are never a pass's peak
            run.measure(keep=r >= spec.warmup)
        run.count_work()
        return run.record()
    except (UserError, KeyboardInterrupt):
        raise
    except BaseException as exc:  # noqa: BLE001 - a cell's failure is its result
        return run.failure(exc)
    finally:
        run.close()


def run_interleaved(specs: list[CellSpec], on_record=None) -> list[dict]:
    """Measure cells round by round: every cell's pass r runs before any cell's pass r+1.

    Slow phases of a shared machine then hit every cell of a round alike, so ratios between
    cells of one round (``bench.reporting.compare``) are robust. All models stay resident; a pass's
    memory is its peak above the usage just before it, plus the bytes of that cell's model.
    Each record has ``"interleaved": true`` and its timings per round in
    ``metrics.spread.<metric>.values``. A failing cell drops out with its record.
    ``on_record(spec, record)`` is called as each cell's record is final.
    """
    runs = [CellRun(spec) for spec in specs]
    records: list[dict | None] = [None] * len(runs)
    weights: list[int] = [0] * len(runs)

    def fail(k: int, exc: BaseException) -> None:
        if isinstance(exc, (UserError, KeyboardInterrupt)):
            raise exc
        records[k] = runs[k].failure(exc)
        runs[k].close()
        if on_record:
            on_record(runs[k].spec, records[k])

    for k, run in enumerate(runs):
        try:
            run.meter.set_baseline()
            run.build()
            weights[k] = model_bytes(run.model)
        except BaseException as exc:  # noqa: BLE001
            fail(k, exc)
    rounds = max(s.warmup + s.repeats for s in specs)
    for r in range(rounds):
        for k, run in enumerate(runs):
            spec = run.spec
            if records[k] is not None or r >= spec.warmup + spec.repeats:
                continue
            try:
                run.meter.rebase(weights[k])
                run.meter.reset()
                run.measure(keep=r >= spec.warmup)
            except BaseException as exc:  # noqa: BLE001
                fail(k, exc)
    for k, run in enumerate(runs):
        if records[k] is None:
            try:
                run.count_work()
            except BaseException as exc:  # noqa: BLE001
                fail(k, exc)
                continue
            records[k] = run.record(interleaved=True)
            run.close()
            if on_record:
                on_record(run.spec, records[k])
    return records
