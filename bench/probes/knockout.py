"""The attention-knockout sweep (Map the Flow): block an edge group in a window of K layers, slide it.

For each edge group (``video->last``, or several joined: ``video->last+video->question``; a group may
keep ``:kinds=attention`` or ``:kinds=mamba`` to block in those layer kinds only) and each
window start s (layers s..s+K-1), the relative change of the probability of the reference answer's
first token at the last position, (p_blocked - p) / p, per document; rows give its mean over
documents, the standard deviation and the standard error. The reference answer is the gold answer
when the task has one, otherwise the unablated model's own next token. Blocking follows
``architectures.knockout``: attention layers get a mask, Mamba-2 layers the masked SSD form, MLP
layers mix nothing (a window of MLP layers only changes nothing). A group with ``:kinds=`` in a window
holding no layer of those kinds blocks nothing: its change is 0 without a pass.
"""

from __future__ import annotations

import math
import statistics

import torch

from architectures.knockout import Knockout, edges_off, parse_knockout
from bench.errors import UserError
from bench.probes.passes import last_logits
from bench.probes.prompts import ProbeDoc, first_token, gold_answer


def edge_group(text: str) -> Knockout:
    """One ``--edges`` item: edges joined by ``+``, optionally ``:kinds=...``; no layers (the sweep chooses them)."""
    knockout = parse_knockout(text)
    if knockout.layers is not None:
        raise UserError(f"--edges {text!r}: give edges only; the sweep slides --window over the layers")
    return knockout


def windows(num_layers: int, size: int) -> list[tuple[int, int]]:
    if size > num_layers:
        raise UserError(f"--window {size} is more than the model's {num_layers} layers")
    return [(s, s + size - 1) for s in range(num_layers - size + 1)]


def reference_token(pdoc: ProbeDoc, tok, logits: torch.Tensor) -> tuple[int, str]:
    gold = gold_answer(pdoc.doc)
    if gold is not None:
        return first_token(tok, gold), "gold"
    return int(logits.argmax()), "own"


def run(backbone, pdocs: list[ProbeDoc], tok, *, window: int = 1, edges: list[str], chunk: int | None = None,
        **_) -> dict:
    groups = {text: edge_group(text) for text in edges}
    spans = windows(backbone.num_layers, window)
    kinds = backbone.layer_kinds()
    changes: dict[tuple[str, int], list[float]] = {}
    off: dict[tuple[str, int], list[float]] = {}
    base_p, references = [], []
    with torch.inference_mode():
        for pdoc in pdocs:
            logits = last_logits(backbone, pdoc, chunk=chunk)
            token, source = reference_token(pdoc, tok, logits)
            p0 = float(logits.softmax(-1)[token])
            base_p.append(p0)
            references.append(source)
            for text, group in groups.items():
                for start, end in spans:
                    if group.kinds is not None and not set(kinds[start:end + 1]) & set(group.kinds):
                        changes.setdefault((text, start), []).append(0.0)  # no layer of those kinds: nothing blocked
                        off.setdefault((text, start), []).append(0.0)
                        continue
                    knockout = Knockout(group.edges, (start, end), group.kinds)
                    p = float(last_logits(backbone, pdoc, knockout, chunk=chunk).softmax(-1)[token])
                    changes.setdefault((text, start), []).append((p - p0) / p0)
                    off.setdefault((text, start), []).append(edges_off(knockout, pdoc.state, kinds))
    rows = []
    for (text, start), values in changes.items():
        n = len(values)
        std = statistics.pstdev(values) if n > 1 else 0.0
        rows.append({"edges": text, "start": start, "layers": [start, start + window - 1],
                     "kinds": sorted(set(kinds[start:start + window])), "n": n,
                     "mean": statistics.fmean(values), "std": std,
                     "sem": statistics.stdev(values) / math.sqrt(n) if n > 1 else 0.0,
                     "edges_off": statistics.fmean(off[(text, start)])})
    return {"rows": rows, "window": window, "edges": list(groups), "base_p_mean": statistics.fmean(base_p),
            "reference": sorted(set(references))}
