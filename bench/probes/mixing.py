"""Mixing maps: per layer, where the last token's and the question's mixing weight comes from.

Attention layers: the attention weights (softmax of q.k per head, causal, mean over heads;
``Backbone.attention_weights``). Mamba-2 layers: the SSD mixing matrix of the layer's input
(``architectures.masked_mamba.mixing_matrix``, y = M x per head), absolute values, each row
normalised to sum to one, mean over heads; the causal conv1d's taps and the D skip are not in M.
MLP layers mix nothing and have no row. For a query group of several tokens (``question``) the rows
of its tokens are averaged. Shares are over the partition of ``bench.probes.groups`` and sum to one.
"""

from __future__ import annotations

import statistics

import torch

from architectures.base import ATTENTION, MAMBA
from bench.probes.groups import PARTITION, query_groups
from bench.probes.passes import layer_states
from bench.probes.prompts import ProbeDoc

QUERIES = ("last", "question")


def mixing_rows(backbone, i: int, hidden: torch.Tensor, positions: torch.Tensor,
                queries: torch.Tensor) -> torch.Tensor | None:
    """[queries, length] mixing weights of layer i for the tokens at ``queries``, rows summing to 1; None for
    a layer that mixes no tokens."""
    kind = backbone.layer_kind(i)
    if kind == ATTENTION:
        return backbone.attention_weights(i, hidden, positions, queries)[0].mean(0)
    if kind == MAMBA:
        from architectures.masked_mamba import mixing_matrix

        matrix = mixing_matrix(backbone.mamba_mixer(i), backbone.pre_norm(i)(hidden))[0].float().abs()
        matrix = matrix[:, queries]  # [heads, queries, length]
        matrix = matrix / matrix.sum(-1, keepdim=True).clamp_min(torch.finfo(matrix.dtype).tiny)
        return matrix.mean(0)
    return None


def mixing_document(backbone, pdoc: ProbeDoc) -> list[dict]:
    """One document's rows: per mixing layer and query group, the share of each group of the partition."""
    groups = query_groups(pdoc.state)
    index = {name: groups[name].nonzero().squeeze(1) for name in QUERIES}
    wanted = {name: idx for name, idx in index.items() if idx.numel()}
    if not wanted:
        return []
    queries = torch.cat(list(wanted.values()))
    rows = []
    with torch.inference_mode():
        states = layer_states(backbone, pdoc)
        for i in range(backbone.num_layers):
            weights = mixing_rows(backbone, i, states.inputs[i], states.positions, queries)
            if weights is None:
                continue
            start = 0
            for name, idx in wanted.items():
                mean = weights[start:start + idx.numel()].mean(0)
                start += idx.numel()
                rows.append({"layer": i, "kind": backbone.layer_kind(i), "query": name,
                             "shares": {g: float(mean[groups[g]].sum()) for g in PARTITION}})
    return rows


def average(per_doc: list[list[dict]]) -> list[dict]:
    cells: dict[tuple, list[dict]] = {}
    for rows in per_doc:
        for r in rows:
            cells.setdefault((r["layer"], r["kind"], r["query"]), []).append(r)
    out = []
    for (layer, kind, query), rows in sorted(cells.items()):
        shares = {g: [r["shares"][g] for r in rows] for g in PARTITION}
        out.append({"layer": layer, "kind": kind, "query": query, "n": len(rows),
                    "shares": {g: statistics.fmean(v) for g, v in shares.items()},
                    "std": {g: statistics.pstdev(v) for g, v in shares.items()}})
    return out


def run(backbone, pdocs: list[ProbeDoc], tok=None, **_) -> dict:
    return {"rows": average([mixing_document(backbone, p) for p in pdocs]), "groups": list(PARTITION)}
