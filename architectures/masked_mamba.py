"""The SSD "attention form" of a Mamba-2 mixer, so that an attention knockout can block Mamba-2 layers too.

Work in progress: the API is fixed, the bodies follow.
"""

from __future__ import annotations

import torch


def mixing_matrix(mixer, hidden: torch.Tensor) -> torch.Tensor:
    """[batch, heads, L, L] the semiseparable matrix M of the SSD scan for this layer's input (``hidden``:
    the mixer's input, after the layer's pre-norm), so that y = M x (+ D x) per head."""
    raise NotImplementedError


def masked_forward(mixer, hidden: torch.Tensor, blocked: torch.Tensor | None) -> torch.Tensor:
    """The mixer's output with M's blocked entries zeroed and the causal conv1d's cross-token taps zeroed
    for blocked pairs; ``blocked`` None or all False == the library's own mixer forward (fp32, 1e-4)."""
    raise NotImplementedError
