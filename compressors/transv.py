"""TransV: drop vision tokens in stages and transfer the dropped ones into the instruction tokens.

At each stage layer l, after dropping (see ``compressors.dropping``), the tokens after the
vision span X1 are updated by a gated cross-attention over the dropped vision tokens X0::

    X1 <- X1 + tanh(alpha_l) * CrossAttn_l(query=X1, key/value=X0)

Cross-attention is grouped-query, non-causal, with no positional encoding and no pre-norm;
alpha_l is a learned scalar initialised to 0, so at initialisation TransV equals TD (pure
dropping). ``init=nearest_attn`` copies q/k/v/o from the nearest self-attention layer
(ties: the later one); ``init=random`` draws them from N(0, 0.02). Shapes follow the
backbone's attention (heads, KV heads, head dim); a backbone without attention uses heads
of width min(128, hidden) and needs ``init=random``. The transfer acts in prefill only.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn
from torch.nn.functional import scaled_dot_product_attention

from bench.errors import UserError
from compressors import register_compressor
from compressors.dropping import TokenDropping

INITS = ("nearest_attn", "random")
WEIGHTS = "transv.safetensors"  # trained gates and cross-attentions, in a checkpoint directory


class GatedCrossAttention(nn.Module):
    def __init__(self, hidden: int, heads: int, kv_heads: int, head_dim: int, **factory):
        super().__init__()
        self.heads, self.kv_heads, self.head_dim = heads, kv_heads, head_dim
        self.q_proj = nn.Linear(hidden, heads * head_dim, bias=False, **factory)
        self.k_proj = nn.Linear(hidden, kv_heads * head_dim, bias=False, **factory)
        self.v_proj = nn.Linear(hidden, kv_heads * head_dim, bias=False, **factory)
        self.o_proj = nn.Linear(heads * head_dim, hidden, bias=False, **factory)
        self.alpha = nn.Parameter(torch.zeros((), **factory))

    def forward(self, x1: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
        """x1 [b, n1, hidden] queries, x0 [b, n0, hidden] keys/values -> updated x1, in x1's dtype.

        The residual stream may be wider than the weights (Mamba-2 keeps it in fp32 under bf16
        weights): the cross-attention runs in the weights' dtype, the residual add in x1's."""
        b, n1, _ = x1.shape
        dtype = self.q_proj.weight.dtype
        q = self.q_proj(x1.to(dtype)).view(b, n1, self.heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(x0.to(dtype)).view(b, -1, self.kv_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(x0.to(dtype)).view(b, -1, self.kv_heads, self.head_dim).transpose(1, 2)
        out = scaled_dot_product_attention(q, k, v, enable_gqa=self.heads != self.kv_heads)
        out = self.o_proj(out.transpose(1, 2).reshape(b, n1, -1))
        return x1 + (torch.tanh(self.alpha) * out).to(x1.dtype)


@register_compressor("transv")
class TransV(TokenDropping):
    """TransV: TD schedule plus gated cross-attention transfer of dropped tokens (gates start at 0)."""

    name = "transv"
    params = {"schedule": "uni_7_0.5-attn_39_0.9", "init": "nearest_attn", "seed": 0}

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        if self.settings["init"] not in INITS:
            raise UserError(f"compressor 'transv': init={self.settings['init']!r}; valid: {', '.join(INITS)}")
        self.cross: nn.ModuleDict | None = None

    def check(self, backbone) -> None:
        super().check(backbone)
        if self.settings["init"] == "nearest_attn" and not backbone.attention_layers():
            raise UserError(f"compressor 'transv': init=nearest_attn needs an attention layer; {backbone.name} has "
                            "none (use init=random)")

    def prepare(self, backbone) -> None:
        self.cross = self._build(backbone)
        self.trained_from = None
        if backbone.checkpoint and (Path(backbone.checkpoint) / WEIGHTS).is_file():
            self._load(Path(backbone.checkpoint) / WEIGHTS)

    def _load(self, path: Path) -> None:
        """Trained weights (``viperbench train --train transv``) for the schedule's layers."""
        from architectures.loading import load_tensors

        weights = load_tensors(path)
        stored = sorted({int(k.split(".")[0]) for k in weights})
        missing = [s.layer for s in self.plan() if s.layer not in stored]
        if missing:
            raise UserError(f"compressor 'transv': the schedule names layer(s) {missing} but {path} has TransV "
                            f"weights for layer(s) {stored} only")
        wanted = {k: v for k, v in weights.items() if k.split(".")[0] in self.cross}
        try:
            self.cross.load_state_dict(wanted)
        except RuntimeError as exc:
            raise UserError(f"TransV weights {path} do not fit this backbone: {str(exc).splitlines()[0]}") from None
        self.trained_from = str(path)

    def report(self) -> dict:
        return {**super().report(), "trained_from": getattr(self, "trained_from", None)}

    def _build(self, backbone) -> nn.ModuleDict:
        attn_layers = backbone.attention_layers()
        cfg = backbone.config
        if attn_layers:
            shape = (cfg.num_attention_heads, cfg.num_key_value_heads, backbone.attention_module(attn_layers[0]).head_dim)
        else:
            head_dim = min(128, backbone.hidden_size)
            shape = (backbone.hidden_size // head_dim,) * 2 + (head_dim,)
        gen = torch.Generator().manual_seed(int(self.settings["seed"]))
        modules = nn.ModuleDict()
        factory = {"device": backbone.device, "dtype": backbone.dtype}
        for stage in self.plan():
            module = GatedCrossAttention(backbone.hidden_size, *shape, **factory)
            if self.settings["init"] == "nearest_attn":
                j = min(attn_layers, key=lambda a: (abs(a - stage.layer), -a))
                source = backbone.attention_module(j)
                for name in ("q_proj", "k_proj", "v_proj", "o_proj"):
                    getattr(module, name).weight.data.copy_(getattr(source, name).weight.data)
            else:
                for name in ("q_proj", "k_proj", "v_proj", "o_proj"):
                    w = getattr(module, name).weight
                    w.data.copy_(torch.randn(w.shape, generator=gen) * 0.02)
            modules[str(stage.layer)] = module
        return modules.eval().requires_grad_(False)

    def set_gates(self, alpha: float) -> None:
        """Set every stage's alpha (the gate is tanh(alpha)); trained values come from a checkpoint."""
        for module in self.cross.values():
            module.alpha.data.fill_(alpha)

    def added_params(self) -> int:
        return sum(p.numel() for p in self.cross.parameters()) if self.cross is not None else 0

    def transfer(self, i: int, state, dropped: torch.Tensor, backbone) -> None:
        e = state.vision_end  # the instruction: the tokens after the last vision token
        if dropped.shape[1] == 0 or e >= state.hidden.shape[1]:
            return
        x1 = self.cross[str(i)](state.hidden[:, e:], dropped)
        state.hidden = torch.cat([state.hidden[:, :e], x1], dim=1)
