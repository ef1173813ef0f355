"""The SSD "attention form" of a Mamba-2 mixer, so that an attention knockout blocks Mamba-2 layers too.

A Mamba-2 mixer (transformers' ``Mamba2Mixer`` and NemotronH's ``NemotronHMamba2Mixer``, the same
computation) mixes tokens in two places only: its causal depthwise conv1d (each channel of token t
reads tokens t-K+1..t) and its SSD scan. The scan is a semiseparable matrix per head::

    y_t = sum_{s <= t} M[t, s] x_s + D x_t,   M[t, s] = (C_t . B_s) exp(sum_{r=s+1..t} A dt_r) dt_s

(Mamba-2 paper, "state space duality"). Written out as that matrix (quadratic in length: for the
lengths a probe uses) a knockout zeroes the blocked entries, skips the blocked tokens' steps in the
decay of the query's other entries, and zeroes the conv's taps for the blocked (query, key) pairs,
so nothing of a blocked key reaches the query through the layer (``masked_forward``).
Everything else is per token and follows the library's torch path in order: in_proj -> split
(gate z, xBC, dt) -> conv1d + activation -> split x, B, C -> dt = softplus(dt + dt_bias) clamped to
the mixer's time-step limit -> A = -exp(A_log) -> SSD -> + D x -> gated RMSNorm with z -> out_proj.
With nothing blocked the result equals the library's forward to float rounding (fp32: 1e-4).

This form recomputes the whole sequence at once: under a knockout the harness runs a Mamba-2 layer
in one pass over the whole prefix even in chunked prefill (the chunk's rows are the same, as the
matrix is causal), and keeps no conv or SSM state for decoding (generation under a knockout
recomputes the sequence for every new token: ``bench.engine.generate``).
"""

from __future__ import annotations

import torch
from torch import nn


def _projections(mixer, hidden: torch.Tensor):
    """in_proj and its split: gate z [b, L, inner], xBC [b, L, conv_dim], dt [b, L, heads]."""
    projected = mixer.in_proj(hidden)
    return projected.split([mixer.intermediate_size, mixer.conv_dim, mixer.num_heads], dim=-1)


def _conv(mixer, xbc: torch.Tensor, blocked: torch.Tensor | None) -> torch.Tensor:
    """The causal depthwise conv1d + activation in fp32, taps of blocked (query, key) pairs zeroed."""
    weight = mixer.conv1d.weight.squeeze(1).float()  # [conv_dim, K]; tap j reads token t - (K - 1 - j)
    kernel, length = weight.shape[-1], xbc.shape[1]
    x = xbc.float()
    out = x * weight[:, -1]
    for shift in range(1, min(kernel, length)):
        contribution = nn.functional.pad(x[:, :-shift], (0, 0, shift, 0)) * weight[:, kernel - 1 - shift]
        if blocked is not None:  # blocked[t, t - shift] for t >= shift
            keep = nn.functional.pad(~blocked.diagonal(-shift), (shift, 0), value=True)
            contribution = contribution * keep[None, :, None]
        out = out + contribution
    if mixer.conv1d.bias is not None:
        out = out + mixer.conv1d.bias.float()
    return mixer.act(out)


def _ssd_inputs(mixer, hidden: torch.Tensor, blocked: torch.Tensor | None):
    """(gate, x [b, L, heads, head_dim], B, C [b, L, heads, state], dt [b, L, heads]), all but gate fp32."""
    gate, xbc, dt = _projections(mixer, hidden)
    xbc = _conv(mixer, xbc, blocked)
    groups, state = mixer.n_groups, mixer.ssm_state_size
    x, B, C = xbc.split([mixer.intermediate_size, groups * state, groups * state], dim=-1)
    b, length = hidden.shape[:2]
    heads = mixer.num_heads
    B = B.reshape(b, length, groups, state).repeat_interleave(heads // groups, dim=2)
    C = C.reshape(b, length, groups, state).repeat_interleave(heads // groups, dim=2)
    dt = nn.functional.softplus(dt.float() + mixer.dt_bias.float())
    dt = dt.clamp(min=mixer.time_step_limit[0], max=mixer.time_step_limit[1])
    return gate, x.reshape(b, length, heads, mixer.head_dim), B, C, dt


def _matrix(mixer, B, C, dt, blocked: torch.Tensor | None = None) -> torch.Tensor:
    """M [b, heads, L, L] (fp32) from the SSD inputs; with ``blocked``, each query's view without its blocked
    keys: their entries are zero and their steps' decay is skipped (see ``masked_forward``)."""
    A = -torch.exp(mixer.A_log.float())  # [heads]
    step = (dt * A).transpose(1, 2)  # [b, heads, L]: A dt_r, the log-decay of step r
    length = step.shape[-1]
    causal = torch.ones(length, length, dtype=torch.bool, device=step.device).tril()
    if blocked is None:
        cum = torch.cumsum(step, dim=-1)  # sum_{r <= t} A dt_r
        log_decay = cum[..., :, None] - cum[..., None, :]
    else:  # per query row t: the cumulative log-decay over the steps t may read
        cum = torch.cumsum(step[..., None, :] * ~blocked, dim=-1)  # [b, heads, t, r]
        log_decay = cum.diagonal(dim1=-2, dim2=-1)[..., :, None] - cum
    decay = log_decay.masked_fill(~causal, float("-inf")).exp()
    scores = torch.einsum("bthn,bshn->bhts", C, B)
    M = scores * decay * dt.transpose(1, 2)[:, :, None, :]
    return M if blocked is None else M.masked_fill(blocked, 0.0)


def mixing_matrix(mixer, hidden: torch.Tensor) -> torch.Tensor:
    """[batch, heads, L, L] the semiseparable matrix M of the SSD scan for this layer's input (``hidden``:
    the mixer's input, after the layer's pre-norm), so that y = M x (+ D x) per head. fp32."""
    _, _, B, C, dt = _ssd_inputs(mixer, hidden, None)
    return _matrix(mixer, B, C, dt)


def masked_forward(mixer, hidden: torch.Tensor, blocked: torch.Tensor | None) -> torch.Tensor:
    """The mixer's output with M's blocked entries zeroed and the causal conv1d's cross-token taps zeroed
    for blocked pairs; ``blocked`` ([L, L] bool, True = query row may not read key column) None or all
    False == the library's own mixer forward (fp32, 1e-4). Runs in fp32, returns ``hidden``'s dtype.

    A blocked key leaves the query's view altogether, as a blocked key leaves an attention softmax: its
    entry M[t, s] is zero and its own step's decay exp(A dt_s) is skipped in the query's products, so
    that the kept entries M[t, s'] (whose decay runs over the steps between s' and t) carry nothing of
    the blocked tokens either. Without this, information of blocked tokens would still reach the query
    through their dt in the decay of the entries kept around them."""
    gate, x, B, C, dt = _ssd_inputs(mixer, hidden, blocked)
    M = _matrix(mixer, B, C, dt, blocked)
    y = torch.einsum("bhts,bshp->bthp", M, x.float()) + mixer.D.float()[:, None] * x.float()
    y = mixer.norm(y.reshape(*hidden.shape[:2], -1), gate)
    return mixer.out_proj(y.to(hidden.dtype))


def masked_block(norm: nn.Module, mixer, hidden: torch.Tensor, blocked: torch.Tensor | None,
                 residual_in_fp32: bool = False) -> torch.Tensor:
    """A pre-norm Mamba-2 block (Mamba2Block, NemotronHBlock) with its mixer in the masked form:
    residual + masked_forward(norm(hidden)), in the library block's order and dtypes."""
    residual = hidden.float() if residual_in_fp32 else hidden
    return residual + masked_forward(mixer, norm(hidden.to(norm.weight.dtype)), blocked)
