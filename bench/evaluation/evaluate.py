"""Accuracy: run a task's documents through a model (``eval``) or score saved outputs (``score``).

``eval`` decodes each document's video (``--decoder``, PyAV by default), runs the vision side and the backbone
with the cell's compressor, greedily generates up to the task's max new tokens (stopping
at EOS), parses and scores the answer, and writes one log line per document (id, prompt,
raw output, parsed answer, score, error, timings). That log is itself a predictions file
for ``score``. A missing or corrupt video fails that document with a recorded error and
the run goes on; the aggregate record says how many documents were scored out of how many.

With ``knockout`` (``architectures.knockout``), every document runs with those attention edges
blocked (prefill and each generated token), each log line gets ``edges_off`` (the fraction of the
attention layers' causal edges switched off, on the prompt as it enters the LLM) and the record's
``task`` gets the knockout spec and the mean ``edges_off`` over the documents that ran.

With ``fidelity``, each document also runs without the compressor, and the record gets
``fidelity/agreement`` (share of documents whose parsed answers agree, percent) and
``fidelity/kl_first_token`` (mean KL divergence of the first generated token's distribution,
uncompressed || compressed): a label-free measure of what the compressor changes, honest
with random weights too.
"""

from __future__ import annotations

import inspect
import json
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from bench.engine.own_layout import (decode_clip, prompt_embeds, prompt_state, sampling_label,
                                     vision_tokens)
from bench.errors import UserError
from bench.measure.meters import StageTimer
from bench.records import append_record, check_writable, environment, make_record
from bench.spec import CellSpec, check_device
from tasks import TASKS

if TYPE_CHECKING:
    from architectures.knockout import Knockout


def make_task(name: str, data_dir: str, *, judge: str | None = None, subtitles: bool = False):
    cls = TASKS.get(name)
    if not Path(data_dir).is_dir():
        raise UserError(f"data directory not found: {data_dir}")
    params = inspect.signature(cls).parameters
    kwargs: dict[str, Any] = {}
    if "judge" in params and judge:
        from tasks.judges import make_judge

        kwargs["judge"] = make_judge(judge)
    elif judge:
        raise UserError(f"task {name!r} takes no judge")
    if subtitles:
        if "subtitles" not in params:
            raise UserError(f"task {name!r} has no subtitles variant")
        kwargs["subtitles"] = True
    return cls(data_dir, **kwargs)


def _jsonable(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


def _generate(bb, compressor, vision: torch.Tensor, prompt_ids: list[int], tok, max_new: int, chunk,
              timer=None, knockout=None, n_frames: int = 1) -> tuple:
    """Own-layout prompt [BOS][video][prompt] through the one generate loop (stops at EOS).

    With a ``knockout``, the prompt's state carries the frame of each vision token (``n_frames`` frames
    of equal share, when the compressor kept the same number in each; otherwise none, and
    ``frame->frame`` is refused) and the result also gives the fraction of attention edges switched off."""
    from architectures.knockout import edges_off
    from bench.engine.generate import generate

    embeds, span = prompt_embeds(bb, vision, prompt_ids, tok.bos_id)
    if knockout is None:
        gen = generate(bb, embeds, max_new_tokens=max_new, eos_id=tok.eos_id, compressor=compressor,
                       vision=span, chunk=chunk, timer=timer)
        return gen.ids(), gen.first_logits[0], gen.kept, None
    state = prompt_state(embeds, span, n_frames)
    off = edges_off(knockout, state, bb.layer_kinds())
    gen = generate(bb, max_new_tokens=max_new, eos_id=tok.eos_id, compressor=compressor, state=state,
                   chunk=chunk, timer=timer, knockout=knockout)
    return gen.ids(), gen.first_logits[0], gen.kept, off


def _kl(ref_first: torch.Tensor, first: torch.Tensor) -> float:
    """KL(uncompressed || compressed) of the first generated token's distribution."""
    log_p, log_q = ref_first.float().log_softmax(-1), first.float().log_softmax(-1)
    return float((log_p.exp() * (log_p - log_q)).sum())


def _own_layout_doc(bb, compressor, reference, clip, prompt: str, max_new: int, tok, chunk, timer, *,
                    vision_side, seed: int, tokens_per_frame: int, knockout=None):
    """The own layout: vision side (or random vision embeddings), then [BOS][video][chat-templated prompt]."""
    with torch.inference_mode():
        with timer.stage("vision_s"):
            tokens = vision_tokens(bb, vision_side, compressor, clip.frames, seed=seed,
                                   tokens_per_frame=tokens_per_frame)
            vision = compressor.after_projector(tokens)
        prompt_ids = tok.encode_prompt(prompt)
        ids, first, kept, off = _generate(bb, compressor, vision, prompt_ids, tok, max_new, chunk, timer,
                                          knockout, tokens.shape[1])
        ref = None
        if reference is not None:
            ref_ids, ref_first, _, _ = _generate(bb, reference, reference.after_projector(tokens), prompt_ids, tok,
                                                 max_new, chunk, knockout=knockout, n_frames=tokens.shape[1])
            ref = (ref_ids, ref_first)
    return ids, first, kept, 1 + tokens.shape[1] * tokens.shape[2] + len(prompt_ids), ref, off


def _video_llm_doc(bb, compressor, reference, clip, prompt: str, max_new: int, tok, chunk, timer, *, knockout=None,
                   **_):
    """A real video LLM: the checkpoint's chat template and processor (told where in the video the sampled
    frames are: their indices and the video's frame rate), then the one generate loop."""
    from architectures.knockout import edges_off
    from bench.engine.generate import generate

    with torch.inference_mode():
        with timer.stage("vision_s"):
            compressor.reset()
            compressor.new_video()
            inputs = bb.processor_inputs(clip, prompt)
            encoded = bb.encode(inputs, compressor)
        off = edges_off(knockout, encoded.state, bb.layer_kinds()) if knockout is not None else None
        gen = generate(bb, max_new_tokens=max_new, eos_id=tok.eos_id, compressor=compressor, state=encoded.state,
                       chunk=chunk, timer=timer, knockout=knockout)
        ref = None
        if reference is not None:
            plain = generate(bb, max_new_tokens=max_new, eos_id=tok.eos_id, compressor=reference,
                             state=bb.encode(inputs, reference).state, chunk=chunk, knockout=knockout)
            ref = (plain.ids(), plain.first_logits[0])
    return gen.ids(), gen.first_logits[0], gen.kept, encoded.input_ids.shape[1], ref, off


@dataclass
class DocRun:
    """One document through the model: generated ids, the first token's logits, tokens kept by the compressor,
    tokens entering the LLM, the uncompressed reference (ids, first logits) or None, the fraction of attention
    edges knocked out or None, and the stage times (with ``new_tokens``)."""

    ids: list[int]
    first: torch.Tensor
    kept: int
    tokens_in: int
    ref: tuple | None
    off: float | None
    timings: dict


def run_document(spec: CellSpec, model, tok, video: str, prompt: str, max_new: int, *, fps: float | None = None,
                 seed: int = 0, reference=None, knockout=None) -> DocRun:
    """Decode ``video``'s sampled frames, then the prompt through the real family's processor or the own
    layout, and the one generate loop with the cell's compressor; ``eval`` and the lmms-eval model share it."""
    bb, vision_side = model.backbone, model.vision
    timer = StageTimer(spec.device)
    with timer.stage("decode_video_s"):
        clip = decode_clip(bb, vision_side, video, frames=spec.frames, fps=fps, decoder=spec.decoder)
    run_doc = _video_llm_doc if bb.takes_frames else _own_layout_doc
    ids, first, kept, tokens_in, ref, off = run_doc(bb, model.compressor, reference, clip, prompt, max_new, tok,
                                                    spec.prefill_chunk, timer, vision_side=vision_side, seed=seed,
                                                    tokens_per_frame=spec.tokens_per_frame, knockout=knockout)
    return DocRun(ids, first, kept, tokens_in, ref, off, {**timer.times, "new_tokens": len(ids)})


def mean_stage_times(timings: list[dict]) -> dict:
    """The run's metrics: each stage's mean time over the documents that ran."""
    return {k: statistics.fmean(t[k] for t in timings) for k in
            ("decode_video_s", "vision_s", "prefill_s", "decode_s")} if timings else {}


def evaluate(spec: CellSpec, data_dir: str, *, judge: str | None = None, subtitles: bool = False,
             limit: int | None = None, fps: float | None = None, fidelity: bool = False,
             log: str | None = None, output: str | None = None, data_label: str | None = None,
             knockout: Knockout | None = None) -> dict:
    from architectures.tokenizer import tokenizer_for
    from bench.measure.runner import build_model
    from compressors.base import make_compressor
    from tasks.video import VideoError

    check_device(spec)
    task = make_task(spec.task, data_dir, judge=judge, subtitles=subtitles)
    docs = task.docs()
    if limit is not None:
        docs = docs[:limit]
    for path in (log, output):
        if path:
            check_writable(path)
    model = build_model(spec)
    bb = model.backbone
    if knockout is not None:
        knockout.layer_set(bb.num_layers, bb.layer_kinds())  # its range fits this model, before any document
    reference = make_compressor("none") if fidelity else None
    tok = tokenizer_for(bb)
    scores: list[dict | None] = []
    agreement, kls, timings, offs = [], [], [], []
    for k, doc in enumerate(docs):
        entry = {"id": doc.id, "prompt": doc.prompt, "output": None, "parsed": None, "score": None, "error": None}
        try:
            max_new = task.max_new_tokens_for(doc) if hasattr(task, "max_new_tokens_for") else task.max_new_tokens
            run = run_document(  # the task's video path, already under its data directory
                spec, model, tok, doc.video, doc.prompt, max_new, fps=fps, seed=spec.seed + k,
                reference=reference, knockout=knockout)
            ids, first, ref, off = run.ids, run.first, run.ref, run.off
            if off is not None:
                entry["edges_off"] = off
                offs.append(off)
            entry["output"] = tok.decode(ids)
            parsed = task.parse(entry["output"])
            if ref is not None:
                kls.append(_kl(ref[1], first))
                agreement.append(task.parse(tok.decode(ref[0])) == parsed)
            entry["parsed"] = _jsonable(parsed)
            entry["score"] = task.score(doc, parsed)
            entry.update(tokens_in=run.tokens_in, tokens_after_compression=run.kept, timings=run.timings)
            timings.append(entry["timings"])
            scores.append(entry["score"])
        except (VideoError, RuntimeError, ValueError) as exc:
            entry["error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
            scores.append(None)
            print(f"warning: document {doc.id}: {entry['error']}", file=sys.stderr)
        if log:
            append_record(log, entry)
    metrics = task.aggregate(docs, scores)
    if fidelity and kls:
        metrics["fidelity/agreement"] = 100.0 * sum(agreement) / len(agreement)
        metrics["fidelity/kl_first_token"] = statistics.fmean(kls)
    run_metrics = mean_stage_times(timings)
    knocked = {} if knockout is None else {"knockout": str(knockout),
                                           "edges_off": statistics.fmean(offs) if offs else None}
    record = make_record(spec.to_dict(), environment(spec.device, spec.decoder), metrics=run_metrics, kind="eval",
                         task={"name": task.name, "metrics": metrics, "n": metrics.get("n", 0),
                               "n_total": len(docs), "data": data_label or str(data_dir), "tokenizer": tok.name,
                               "sampling": sampling_label(spec.frames, fps), **knocked})
    if output:
        append_record(output, record)
    return record


def read_predictions(path: str, known: set[str]) -> dict[str, str]:
    """``{"id": ..., "output": ...}`` per line -> {id: output}; bad lines and unknown ids are one UserError."""
    try:
        lines = Path(path).read_text().splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"cannot read predictions {path}: {getattr(exc, 'strerror', None) or exc}") from None
    out, bad, unknown = {}, [], []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
            key, text = str(item["id"]), item["output"]
        except (ValueError, KeyError, TypeError):
            bad.append(n)
            continue
        if key not in known:
            unknown.append(f"{n} ({key})")
            continue
        out[key] = text if isinstance(text, str) else ""
    problems = []
    if bad:
        problems.append(f"lines {', '.join(map(str, bad[:10]))} are not {{\"id\", \"output\"}} JSON objects")
    if unknown:
        problems.append(f"unknown ids on lines {', '.join(unknown[:10])}")
    if problems:
        raise UserError(f"{path}: " + "; ".join(problems))
    return out


def score_predictions(task_name: str, data_dir: str, predictions: str, *, judge: str | None = None,
                      output: str | None = None) -> dict:
    """Score saved outputs against the annotations only (no model, no videos)."""
    task = make_task(task_name, data_dir, judge=judge)
    docs = task.docs()
    if output:
        check_writable(output)
    outputs = read_predictions(predictions, {d.id for d in docs})
    scores = [task.score(d, task.parse(outputs[d.id])) if d.id in outputs else None for d in docs]
    metrics = task.aggregate(docs, scores)
    record = make_record({"task": task.name}, environment("cpu"), kind="score",
                         task={"name": task.name, "metrics": metrics, "n": metrics.get("n", 0), "n_total": len(docs),
                               "data": str(data_dir), "predictions": str(predictions)})
    if output:
        append_record(output, record)
    return record
