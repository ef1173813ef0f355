"""V-NIAH streamed: each haystack video fed frame chunk by chunk, the needle early, the question at the end.

The documents are V-NIAH's (``tasks.vniah``), generated from the seed with the needle at early depths
only; the answer is scored as ``eval`` scores it (the task's letter parser). With a window the needle
frame has left the attention cache by the time the question comes (unless it is the first frame, a
sink, which is why depth 0 is left out); retrieval may bring it back; a hybrid's Mamba-2 state carries
whatever it kept of it.
"""

from __future__ import annotations

import tempfile

import torch

from bench.stream.session import Stream

EARLY_DEPTHS = (0.1, 0.2, 0.3)


def streamed_vniah(backbone, vision, compressor_spec: str, *, length: int, per_cell: int, chunk_frames: int,
                   make_window, seed: int = 0, decoder: str = "pyav") -> dict:
    """Accuracy (task metrics) of the streamed V-NIAH documents; ``make_window()`` gives a fresh window or None."""
    from architectures.tokenizer import tokenizer_for
    from bench.engine.own_layout import decode_clip
    from compressors.base import make_compressor
    from tasks.vniah import VNIAH, Config, generate

    tok = tokenizer_for(backbone)
    with tempfile.TemporaryDirectory(prefix="viperbench-vniah-") as root:
        generate(root, Config(lengths=(length,), depths=EARLY_DEPTHS, per_cell=per_cell, seed=seed))
        task = VNIAH(root)
        docs = task.docs()
        scores, context = [], []
        for doc in docs:
            clip = decode_clip(backbone, vision, doc.video, frames=length, fps=1, decoder=decoder)
            stream = Stream(backbone, vision, make_compressor(compressor_spec), window=make_window())
            stream.start(tok.bos_id)
            for first in range(0, clip.frames.shape[0], chunk_frames):
                stream.feed(clip.frames[first:first + chunk_frames])
            prompt = torch.tensor([tok.encode_prompt(doc.prompt)])
            answer = stream.ask(prompt, task.max_new_tokens, eos_id=tok.eos_id)
            scores.append(task.score(doc, task.parse(tok.decode(answer["answer_ids"]))))
            context.append(answer["attended_tokens"])
        metrics = task.aggregate(docs, scores)
    metrics["attended_tokens"] = sum(context) / len(context)
    metrics["memory"] = stream.memory()
    return metrics
