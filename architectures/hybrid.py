"""Hybrid Mamba-2/Transformer backbone: transformers' NemotronHForCausalLM in TimeViper's layout."""

from __future__ import annotations

from transformers import NemotronHConfig, NemotronHForCausalLM
from transformers.models.nemotron_h import modeling_nemotron_h

from architectures import compat, kernels, register_architecture
from architectures.base import ATTENTION, MAMBA, MLP, Backbone, LayerInput
from architectures.masked_mamba import masked_block

compat.require(modeling_nemotron_h, block="NemotronHBlock", params=("past_key_values", "attention_mask", "use_cache"),
               globals_=tuple(kernels.OPS), cache_methods=("get_conv_state", "get_recurrent_state",
                                                           "update_conv_state", "update_recurrent_state"))
kernels.install(modeling_nemotron_h)

# Nemotron-Nano-9B-v2: one character per block (M = Mamba-2, * = attention, - = MLP).
PAPER_LAYOUT = "M-M-M-MM-M-M-M*-M-M-M*-M-M-M-M*-M-M-M-M*-M-MM-M-M-M-M-M-"
_KIND = {"M": MAMBA, "*": ATTENTION, "-": MLP}


def timeviper_layout(depth: int) -> str:
    """The paper layout scaled to ``depth`` blocks, keeping its proportions.

    At 56 blocks this is the published layout. Otherwise the number of attention blocks is
    the paper's share (4 of 56, about 7%) of ``depth``, at least one, rounded half up; they
    are the paper's deepest attention blocks (39, then 30, 21, 14 of 56) at their indices
    scaled to the depth, so a scaled TD/TransV schedule (``attn_39`` -> ``attn_10`` at 14
    blocks) still lands on attention. The other blocks alternate Mamba-2 and MLP starting
    with Mamba-2, as the published layout does almost everywhere. Scaled indices are at
    least two apart from 21 blocks on (the first depth with two attention blocks), so no
    two attention blocks are adjacent, as in the paper.
    """
    n = len(PAPER_LAYOUT)
    if depth == n:
        return PAPER_LAYOUT
    paper_attn = [i for i, c in enumerate(PAPER_LAYOUT) if c == "*"]
    count = max(1, int(len(paper_attn) * depth / n + 0.5))
    attn = {min(depth - 1, int(i * depth / n + 0.5)) for i in paper_attn[-count:]}
    out, others = [], 0
    for k in range(depth):
        if k in attn:
            out.append("*")
        else:
            out.append("M-"[others % 2])
            others += 1
    return "".join(out)


_MAMBA_TINY = dict(mamba_num_heads=8, mamba_head_dim=16, ssm_state_size=16, n_groups=2, conv_kernel=4, expand=2)


@register_architecture("hybrid")
class Hybrid(Backbone):
    """Hybrid Mamba-2/Transformer: NemotronH in TimeViper's layout (paper preset: Nemotron-Nano-9B-v2)."""

    name = "hybrid"
    description = "hybrid Mamba-2/Transformer: transformers' NemotronH, TimeViper layout"
    family = "nemotron_h"
    config_class = NemotronHConfig
    model_class = NemotronHForCausalLM
    # tiny/small: the paper's depth over 4 (14 blocks, 1 attention block at 10, the paper's 39),
    # so the KV cache is 1/9 of the Transformer's (9 layers, the same KV heads and head dim),
    # as Nemotron-Nano-9B-v2's 4 attention blocks are to Qwen3-8B's 36 layers.
    presets = {
        "tiny": dict(vocab_size=512, hidden_size=64, hybrid_override_pattern=timeviper_layout(14),
                     num_attention_heads=4, num_key_value_heads=2, head_dim=16, intermediate_size=192,
                     chunk_size=128, **_MAMBA_TINY),
        "small": dict(vocab_size=4096, hidden_size=256, hybrid_override_pattern=timeviper_layout(14),
                      num_attention_heads=8, num_key_value_heads=2, head_dim=32, intermediate_size=768,
                      mamba_num_heads=16, mamba_head_dim=32, ssm_state_size=32, n_groups=2, conv_kernel=4,
                      expand=2, chunk_size=128),
        "paper": dict(vocab_size=131072, hidden_size=4480, hybrid_override_pattern=PAPER_LAYOUT,
                      num_attention_heads=40, num_key_value_heads=8, head_dim=128, intermediate_size=15680,
                      mamba_num_heads=128, mamba_head_dim=80, ssm_state_size=128, n_groups=8, conv_kernel=4,
                      expand=2, chunk_size=128, max_position_embeddings=131072),
    }

    def layer_kind(self, i: int) -> str:
        return {"linear_attention": MAMBA, "full_attention": ATTENTION, "mlp": MLP}[self.config.layers_block_type[i]]

    def attention_module(self, i: int):
        return self.layers[i].mixer

    def mamba_mixer(self, i: int):
        return self.layers[i].mixer

    def pre_norm(self, i: int):
        return self.layers[i].norm

    def run_layer(self, i, hidden, cache, inp: LayerInput):
        layer = self.layers[i]
        if inp.blocked is not None and self.layer_kind(i) == MAMBA:  # a knockout: the SSD's masked form
            return masked_block(layer.norm, layer.mixer, hidden, inp.blocked)
        return layer(hidden, past_key_values=cache, attention_mask=inp.attention_mask, use_cache=cache is not None)
