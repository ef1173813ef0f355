"""Pure Transformer backbone: transformers' Qwen3ForCausalLM."""

from __future__ import annotations

import torch
from transformers import Qwen3Config, Qwen3ForCausalLM
from transformers.models.qwen3 import modeling_qwen3

from architectures import compat, register_architecture
from architectures.base import ATTENTION, Backbone, LayerInput

compat.require(modeling_qwen3, block="Qwen3DecoderLayer",
               params=("position_ids", "past_key_values", "use_cache", "position_embeddings"))

_ATTN = dict(num_key_value_heads=2, head_dim=16, rope_theta=1e6, tie_word_embeddings=False)


@register_architecture("transformer")
class Transformer(Backbone):
    """Pure Transformer: Qwen3 (paper preset: Qwen3-8B)."""

    name = "transformer"
    description = "pure Transformer: transformers' Qwen3"
    family = "qwen3"
    config_class = Qwen3Config
    model_class = Qwen3ForCausalLM
    # tiny/small: Qwen3-8B's depth over 4 (9 layers), with the hybrid's KV heads and head dim, so the
    # KV cache is 9x the hybrid's (1 attention block of 14), as 36 layers are to 4 of 56 blocks.
    presets = {
        "tiny": dict(vocab_size=512, hidden_size=64, intermediate_size=192, num_hidden_layers=9,
                     num_attention_heads=4, max_position_embeddings=1 << 20, **_ATTN),
        "small": dict(vocab_size=4096, hidden_size=256, intermediate_size=768, num_hidden_layers=9,
                      num_attention_heads=8, num_key_value_heads=2, head_dim=32, rope_theta=1e6,
                      tie_word_embeddings=False, max_position_embeddings=1 << 20),
        "paper": dict(vocab_size=151936, hidden_size=4096, intermediate_size=12288, num_hidden_layers=36,
                      num_attention_heads=32, num_key_value_heads=8, head_dim=128, rope_theta=1e6,
                      tie_word_embeddings=False, max_position_embeddings=40960, rms_norm_eps=1e-6),
    }

    def final_norm(self, hidden):
        return self.decoder.norm(hidden)

    def layer_kind(self, i: int) -> str:
        return ATTENTION

    def attention_module(self, i: int):
        return self.layers[i].self_attn

    def pre_norm(self, i: int):
        return self.layers[i].input_layernorm

    def layer_input(self, positions: torch.Tensor) -> LayerInput:
        dummy = torch.empty(0, dtype=self.dtype, device=positions.device)
        cos, sin = self.decoder.rotary_emb(dummy, positions[None])
        return LayerInput(positions, {"rotary": (cos, sin)})

    def run_layer(self, i, hidden, cache, inp: LayerInput):
        return self.layers[i](
            hidden,
            attention_mask=inp.attention_mask,
            position_ids=inp.positions[None],
            past_key_values=cache,
            use_cache=cache is not None,
            position_embeddings=inp.extras["rotary"],
        )
