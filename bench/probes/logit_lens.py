"""The logit lens: the final norm and LM head on the hidden states leaving each layer, read per token group.

For each document, layer and group, and for each answer token (``answer``: the first token of the
reference answer, the gold one when the task has it; ``option``: the first token of the gold option's
text, V-NIAH's colour word), the rank (1 = top) and probability of that token at the group's tokens:
``rank_best`` / ``p_max`` over the group's tokens, ``p_mean`` their mean. Rows average these over
documents, with ``top1`` the share of documents in which some token of the group ranks the answer first.
For a multiple-choice prompt, ``choice`` is the share of documents in which, with the probabilities
averaged over the group's tokens, the gold letter beats every other option letter (chance: one over
the number of options): whether the group's tokens tell the right answer apart, not only that an
answer letter is due. V-NIAH adds the group ``needle``: the vision tokens of the needle frame.
"""

from __future__ import annotations

import statistics

import torch

from bench.errors import UserError
from bench.probes.groups import query_groups
from bench.probes.passes import layer_states
from bench.probes.prompts import ProbeDoc, choices, first_token, gold_answer, needle_frame, option_text


def lens_groups(pdoc: ProbeDoc) -> dict[str, torch.Tensor]:
    """The token groups read by the lens: the standard ones, plus ``needle`` for V-NIAH."""
    groups = query_groups(pdoc.state)
    needle = needle_frame(pdoc.doc, pdoc.frame_indices)
    if needle is not None and pdoc.state.frames is not None:
        groups["needle"] = pdoc.state.vision & (pdoc.state.frames == needle)
    return groups


def answer_tokens(pdoc: ProbeDoc, tok) -> dict[str, int]:
    """``answer`` (and ``option`` when the prompt names the gold option's text) first-token ids."""
    gold = gold_answer(pdoc.doc)
    if gold is None:
        raise UserError(f"--probe logit-lens needs a task with gold answers; document {pdoc.doc.id} has none")
    out = {"answer": first_token(tok, gold)}
    option = option_text(pdoc.doc)
    if option is not None:
        out["option"] = first_token(tok, option)
    return out


def lens_document(backbone, pdoc: ProbeDoc, tok) -> list[dict]:
    """One document's rows: per layer (the hidden states leaving it), group and answer token."""
    targets = answer_tokens(pdoc, tok)
    letters = [first_token(tok, c) for c in choices(pdoc.doc)]
    letters = letters if targets["answer"] in letters and len(letters) > 1 else []
    groups = lens_groups(pdoc)
    with torch.inference_mode():
        states = layer_states(backbone, pdoc)
        rows = []
        for i in range(backbone.num_layers):
            logits = backbone.logits(states.after(i))[0]  # [length, vocab] float32
            probs = logits.softmax(-1)
            for name, mask in groups.items():
                if not bool(mask.any()):
                    continue
                sel_logits, sel_probs = logits[mask], probs[mask]
                for which, token in targets.items():
                    ranks = 1 + (sel_logits > sel_logits[:, token:token + 1]).sum(-1)
                    p = sel_probs[:, token]
                    row = {"layer": i, "group": name, "token": which, "token_id": token,
                           "rank_best": int(ranks.min()), "p_max": float(p.max()), "p_mean": float(p.mean())}
                    if which == "answer" and letters:
                        row["choice"] = bool(letters[int(sel_probs[:, letters].mean(0).argmax())] == token)
                    rows.append(row)
    return rows


def average(per_doc: list[list[dict]]) -> list[dict]:
    """Rows averaged over documents: mean p_mean / p_max, median best rank, share of docs with rank 1."""
    cells: dict[tuple, list[dict]] = {}
    for rows in per_doc:
        for r in rows:
            cells.setdefault((r["layer"], r["group"], r["token"]), []).append(r)
    out = []
    for (layer, group, token), rows in sorted(cells.items()):
        row = {"layer": layer, "group": group, "token": token, "n": len(rows),
               "p_mean": statistics.fmean(r["p_mean"] for r in rows),
               "p_max": statistics.fmean(r["p_max"] for r in rows),
               "rank_best_median": statistics.median(r["rank_best"] for r in rows),
               "top1": statistics.fmean(r["rank_best"] == 1 for r in rows)}
        if all("choice" in r for r in rows):
            row["choice"] = statistics.fmean(r["choice"] for r in rows)
        out.append(row)
    return out


def surfaces(rows: list[dict], group: str, token: str, key: str = "top1", share: float = 0.5) -> int | None:
    """The first layer from which ``key`` (``top1``: the token ranks first somewhere in the group; ``choice``:
    the group tells the gold letter apart) holds in at least ``share`` of the documents, at that layer and
    every later one; None if it never does."""
    layers = sorted((r["layer"], r.get(key, 0.0)) for r in rows if r["group"] == group and r["token"] == token)
    first = None
    for layer, value in layers:
        if value >= share:
            first = layer if first is None else first
        else:
            first = None
    return first


def run(backbone, pdocs: list[ProbeDoc], tok, **_) -> dict:
    rows = average([lens_document(backbone, p, tok) for p in pdocs])
    groups = sorted({r["group"] for r in rows})
    tokens = sorted({r["token"] for r in rows})
    found = {f"{g}/{t}": surfaces(rows, g, t) for g in groups for t in tokens}
    found.update({f"{g}/choice": surfaces(rows, g, "answer", "choice") for g in groups
                  if any("choice" in r for r in rows if r["group"] == g)})
    return {"rows": rows, "surfaces": found}
