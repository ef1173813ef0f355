"""Pure Mamba-2 backbone: transformers' Mamba2ForCausalLM."""

from __future__ import annotations

from transformers import Mamba2Config, Mamba2ForCausalLM
from transformers.models.mamba2 import modeling_mamba2

from architectures import compat, kernels, register_architecture
from architectures.base import MAMBA, Backbone, LayerInput
from architectures.masked_mamba import masked_block

compat.require(modeling_mamba2, block="Mamba2Block", params=("cache_params", "attention_mask"),
               globals_=tuple(kernels.OPS), cache_methods=("get_conv_state", "get_recurrent_state"))
kernels.install(modeling_mamba2)


@register_architecture("mamba")
class Mamba(Backbone):
    """Pure Mamba-2 (paper preset: the hybrid's width and depth, every block a Mamba-2 mixer)."""

    name = "mamba"
    description = "pure Mamba-2: transformers' Mamba2"
    family = "mamba2"
    config_class = Mamba2Config
    model_class = Mamba2ForCausalLM
    attn_implementation = None
    presets = {
        "tiny": dict(vocab_size=512, hidden_size=64, num_hidden_layers=14, num_heads=8, head_dim=16, expand=2,
                     state_size=16, n_groups=2, conv_kernel=4, chunk_size=128, tie_word_embeddings=False),
        "small": dict(vocab_size=4096, hidden_size=256, num_hidden_layers=14, num_heads=16, head_dim=32,
                      expand=2, state_size=32, n_groups=2, conv_kernel=4, chunk_size=128,
                      tie_word_embeddings=False),
        # Nemotron-Nano-9B-v2's width (4480), depth (56 blocks), state 128, 8 groups, head dim 80;
        # Mamba2Config ties the inner width to expand x hidden = 8960, hence 112 heads.
        "paper": dict(vocab_size=131072, hidden_size=4480, num_hidden_layers=56, num_heads=112, head_dim=80,
                      expand=2, state_size=128, n_groups=8, conv_kernel=4, chunk_size=128,
                      tie_word_embeddings=False),
    }

    def layer_kind(self, i: int) -> str:
        return MAMBA

    def mamba_mixer(self, i: int):
        return self.layers[i].mixer

    def pre_norm(self, i: int):
        return self.layers[i].norm

    def run_layer(self, i, hidden, cache, inp: LayerInput):
        layer = self.layers[i]
        if inp.blocked is not None:  # a knockout: the SSD's masked form
            return masked_block(layer.norm, layer.mixer, hidden, inp.blocked, layer.residual_in_fp32)
        return layer(hidden, cache_params=cache, attention_mask=None)
