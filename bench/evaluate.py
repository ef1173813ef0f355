"""Accuracy: run a task's documents through a model (``eval``) or score saved outputs (``score``).

``eval`` decodes each document's video (decord), runs the vision side and the backbone
with the cell's compressor, greedily generates up to the task's max new tokens (stopping
at EOS), parses and scores the answer, and writes one log line per document (id, prompt,
raw output, parsed answer, score, error, timings). That log is itself a predictions file
for ``score``. A missing or corrupt video fails that document with a recorded error and
the run goes on; the aggregate record says how many documents were scored out of how many.

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
from pathlib import Path
from typing import Any

import torch

from bench.errors import UserError
from bench.meters import StageTimer
from bench.records import append_record, check_writable, environment, make_record
from bench.spec import CellSpec, check_device
from tasks import TASKS


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
              timer=None) -> tuple:
    """Greedy decoding up to ``max_new`` tokens or EOS; prefill and decode timed on ``timer`` if given."""
    from contextlib import nullcontext

    from bench.pipeline import decode_step, prefill

    stage = timer.stage if timer is not None else (lambda name: nullcontext())
    device = vision.device
    bos = torch.tensor([[tok.bos_id]], device=device)
    prompt = torch.tensor([prompt_ids], device=device)
    embeds = torch.cat([bb.embed(bos), vision.to(bb.dtype), bb.embed(prompt)], dim=1)
    with stage("prefill_s"):
        logits, seq = prefill(bb, embeds, compressor=compressor, vision=(1, 1 + vision.shape[1]), chunk=chunk)
    kept, first = seq.length, logits[0].float()
    out: list[int] = []
    token = logits.argmax(-1, keepdim=True)
    with stage("decode_s"):
        while int(token) != tok.eos_id and len(out) < max_new:
            out.append(int(token))
            if len(out) == max_new:
                break
            token = decode_step(bb, token, seq).argmax(-1, keepdim=True)
    return out, first, kept


def evaluate(spec: CellSpec, data_dir: str, *, judge: str | None = None, subtitles: bool = False,
             limit: int | None = None, fps: float | None = None, fidelity: bool = False,
             log: str | None = None, output: str | None = None) -> dict:
    from architectures.tokenizer import tokenizer_for
    from bench.runner import build_model
    from compressors.base import make_compressor
    from tasks.video import VideoError, load_frames

    check_device(spec)
    task = make_task(spec.task, data_dir, judge=judge, subtitles=subtitles)
    docs = task.docs()
    if limit is not None:
        docs = docs[:limit]
    for path in (log, output):
        if path:
            check_writable(path)
    model = build_model(spec)
    bb, vision_side, compressor = model.backbone, model.vision, model.compressor
    reference = make_compressor("none") if fidelity else None
    tok = tokenizer_for(bb)
    scores: list[dict | None] = []
    agreement, kls, timings = [], [], []
    for k, doc in enumerate(docs):
        entry = {"id": doc.id, "prompt": doc.prompt, "output": None, "parsed": None, "score": None, "error": None}
        try:
            timer = StageTimer(spec.device)
            with timer.stage("decode_video_s"):
                video = Path(doc.video)
                if not video.is_absolute() and not video.exists():
                    video = Path(data_dir) / video
                size = vision_side.image_size if vision_side is not None else 32
                frames, _ = (load_frames(video, fps=fps, max_frames=spec.frames, size=size) if fps
                             else load_frames(video, frames=spec.frames, size=size))
            with torch.inference_mode():
                with timer.stage("vision_s"):
                    compressor.reset()
                    if vision_side is not None:
                        compressor.new_video()
                        tokens = vision_side(frames, compressor)
                    else:
                        gen = torch.Generator().manual_seed(spec.seed + k)
                        tokens = torch.randn(frames.shape[0], spec.tokens_per_frame, bb.hidden_size,
                                             generator=gen) * 0.02
                    tokens = tokens.to(spec.device, bb.dtype)[None]  # [1, frames, tokens per frame, hidden]
                    vision = compressor.after_projector(tokens)
                prompt_ids = tok.encode_prompt(doc.prompt)
                max_new = task.max_new_tokens_for(doc) if hasattr(task, "max_new_tokens_for") else task.max_new_tokens
                ids, first, kept = _generate(bb, compressor, vision, prompt_ids, tok, max_new, spec.prefill_chunk,
                                             timer)
                entry["output"] = tok.decode(ids)
                parsed = task.parse(entry["output"])
                if reference is not None:
                    ref_ids, ref_first, _ = _generate(bb, reference, reference.after_projector(tokens), prompt_ids,
                                                      tok, max_new, spec.prefill_chunk)
                    log_p, log_q = ref_first.log_softmax(-1), first.log_softmax(-1)
                    kls.append(float((log_p.exp() * (log_p - log_q)).sum()))
                    agreement.append(task.parse(tok.decode(ref_ids)) == parsed)
            entry["parsed"] = _jsonable(parsed)
            entry["score"] = task.score(doc, parsed)
            entry.update(tokens_in=1 + tokens.shape[1] * tokens.shape[2] + len(prompt_ids),
                         tokens_after_compression=kept, timings={**timer.times, "new_tokens": len(ids)})
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
    run_metrics = {k: statistics.fmean(t[k] for t in timings) for k in
                   ("decode_video_s", "vision_s", "prefill_s", "decode_s")} if timings else {}
    record = make_record(spec.to_dict(), environment(spec.device), metrics=run_metrics, kind="eval",
                         task={"name": task.name, "metrics": metrics, "n": metrics.get("n", 0),
                               "n_total": len(docs), "data": str(data_dir), "tokenizer": tok.name,
                               "sampling": f"{fps} fps, at most {spec.frames} frames" if fps
                               else f"{spec.frames} frames, uniform"})
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
