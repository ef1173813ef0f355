"""The token groups a probe reads: flow-core's groups (``architectures.knockout.token_groups``) as a
partition of the prompt, so that shares over them sum to one.

``bos``, ``video``, ``question`` and ``last`` as the knockout defines them, and ``other``: every token in
none of them (a chat template's tokens before the video, Qwen3-VL's timestamps and LLaVA's newline
between the frames).
"""

from __future__ import annotations

import torch

from architectures.knockout import token_groups
from architectures.tokens import TokenState

PARTITION = ("bos", "video", "question", "last", "other")


def query_groups(state: TokenState) -> dict[str, torch.Tensor]:
    """bool [length] per group of ``PARTITION``; every token is in exactly one."""
    groups = token_groups(state)
    out = {name: groups[name].clone() for name in PARTITION[:-1]}
    out["bos"] &= ~(out["video"] | out["question"] | out["last"])
    taken = torch.zeros_like(out["video"])
    for mask in out.values():
        taken |= mask
    out["other"] = ~taken
    return out
