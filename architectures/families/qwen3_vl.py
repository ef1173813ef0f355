"""Qwen3-VL (dense) and Qwen3-VL-MoE: the Transformer twin of the hybrid at the same active size.

Layout (read from transformers' qwen3_vl): each temporal patch (2 frames) becomes
``<t seconds><|vision_start|>`` + h*w/4 ``<|video_pad|>`` + ``<|vision_end|>``, so video tokens
are not one span; positions are 3-D (t, h, w) from the library's ``get_rope_index`` with
interleaved multimodal rotary; DeepStack features of chosen vision layers are added to the
hidden states at the vision positions after the first LLM layers (``after_layer``).
"""

from __future__ import annotations

import torch
from transformers import (Qwen3VLConfig, Qwen3VLForConditionalGeneration, Qwen3VLMoeConfig,
                          Qwen3VLMoeForConditionalGeneration)

from architectures import register_architecture
from architectures.base import ATTENTION, LayerInput
from architectures.families.base import FamilyBackbone, Prompt
from architectures.tokens import TokenState


def _vision(depth, hidden, intermediate, heads, out, deepstack, positions=64):
    return dict(depth=depth, hidden_size=hidden, intermediate_size=intermediate, num_heads=heads, patch_size=16,
                spatial_merge_size=2, temporal_patch_size=2, out_hidden_size=out, num_position_embeddings=positions,
                deepstack_visual_indexes=deepstack)


def _text(vocab, hidden, layers, heads, kv, head_dim, intermediate, section, theta=5e6, **extra):
    return dict(vocab_size=vocab, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                num_key_value_heads=kv, head_dim=head_dim, intermediate_size=intermediate,
                max_position_embeddings=262144,
                rope_parameters=dict(rope_type="default", rope_theta=theta, mrope_section=section,
                                     mrope_interleaved=True), **extra)


@register_architecture("qwen3_vl")
class Qwen3VL(FamilyBackbone):
    """Qwen3-VL: transformers' Qwen3VLForConditionalGeneration (paper preset: Qwen3-VL-8B shapes)."""

    name = "qwen3_vl"
    description = "Qwen3-VL video LLM: transformers' Qwen3VLForConditionalGeneration"
    family = "qwen3_vl"
    config_class = Qwen3VLConfig
    model_class = Qwen3VLForConditionalGeneration
    text_layers_path = "model.language_model"
    vision_paths = ("model.visual",)  # the tower, its merger and the DeepStack mergers
    frame_sizes = {"tiny": 64, "small": 128, "paper": 448}
    presets = {
        "tiny": dict(text_config=_text(256, 64, 4, 4, 2, 16, 128, [2, 3, 3]),
                     vision_config=_vision(3, 32, 64, 2, 64, [0, 1])),
        "small": dict(text_config=_text(4096, 256, 8, 8, 2, 32, 768, [4, 6, 6]),
                      vision_config=_vision(4, 128, 256, 4, 256, [0, 1, 2])),
        "paper": dict(text_config=_text(151936, 4096, 36, 32, 8, 128, 12288, [24, 20, 20]),
                      vision_config=_vision(27, 1152, 4304, 16, 4096, [8, 16, 24], 2304)),
    }

    @classmethod
    def token_ids(cls, tokenizer):
        ids = tokenizer.convert_tokens_to_ids
        return dict(image_token_id=ids("<|image_pad|>"), video_token_id=ids("<|video_pad|>"),
                    vision_start_token_id=ids("<|vision_start|>"), vision_end_token_id=ids("<|vision_end|>"))

    def encode(self, inputs, compressor=None) -> Prompt:
        dev = self.device
        ids = inputs["input_ids"].to(dev)
        grid = inputs["video_grid_thw"].to(dev)
        vm = self.model.model
        features, deepstack = self.video_features(inputs["pixel_values_videos"].to(dev), grid)
        mask = ids[0] == self.vlm_config.video_token_id
        embeds = self._place(ids, mask, features)
        positions, _ = vm.get_rope_index(ids, mm_token_type_ids=inputs["mm_token_type_ids"].to(dev),
                                         video_grid_thw=grid)
        t, h, w = (int(x) for x in grid[0])
        merge = self.vlm_config.vision_config.spatial_merge_size
        frames = torch.full(mask.shape, -1, dtype=torch.long, device=dev)
        frames[mask] = torch.arange(t, device=dev).repeat_interleave(h * w // merge**2)
        state = TokenState(embeds, positions[:, 0], mask, frames, {"deepstack": deepstack})
        return self.compress_projected(Prompt(ids, state, int(mask.sum())), compressor)

    def video_features(self, pixels: torch.Tensor, grid: torch.Tensor):
        """Patch rows of one video ([t * h * w, ...], temporal patch outermost) -> its features [tokens, hidden]
        and DeepStack features (one per chosen tower layer), ``frame_batch`` frames (whole temporal patches)
        at a time."""
        t, h, w = (int(x) for x in grid[0])
        tp = self.vlm_config.vision_config.temporal_patch_size
        features, deepstack = [], []
        for a, b in self.frame_spans(t, tp):
            out = self.model.model.get_video_features(pixels[a * h * w:b * h * w], grid.new_tensor([[b - a, h, w]]))
            features.append(torch.cat(out.pooler_output))
            deepstack.append([torch.cat(f) for f in out.deepstack_features])
        return torch.cat(features), [torch.cat(layer).to(self.dtype) for layer in zip(*deepstack)]

    def after_layer(self, i, state):
        deepstack = state.per_vision.get("deepstack")
        if deepstack and i < len(deepstack) and state.vision.any():
            hidden = state.hidden.clone()
            hidden[:, state.vision] = hidden[:, state.vision] + deepstack[i].to(hidden.dtype)
            state.hidden = hidden

    def layer_kind(self, i: int) -> str:
        return ATTENTION

    def layer_input(self, positions: torch.Tensor) -> LayerInput:
        pos3 = positions.expand(3, -1) if positions.dim() == 1 else positions
        dummy = torch.empty(0, dtype=self.dtype, device=positions.device)
        cos, sin = self.decoder.rotary_emb(dummy, pos3[:, None, :])
        return LayerInput(positions, {"rotary": (cos, sin)})

    def run_layer(self, i, hidden, cache, inp: LayerInput):
        return self.layers[i](hidden, position_embeddings=inp.extras["rotary"], attention_mask=inp.attention_mask,
                              past_key_values=cache, use_cache=cache is not None)


@register_architecture("qwen3_vl_moe")
class Qwen3VLMoe(Qwen3VL):
    """Qwen3-VL-MoE: transformers' Qwen3VLMoeForConditionalGeneration (paper preset: Qwen3-VL-30B-A3B)."""

    name = "qwen3_vl_moe"
    description = "Qwen3-VL-MoE video LLM: transformers' Qwen3VLMoeForConditionalGeneration (paper: 30B-A3B)"
    family = "qwen3_vl_moe"
    config_class = Qwen3VLMoeConfig
    model_class = Qwen3VLMoeForConditionalGeneration
    _moe_tiny = dict(num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32, decoder_sparse_step=1)
    presets = {
        "tiny": dict(text_config=_text(256, 64, 4, 4, 2, 16, 128, [2, 3, 3], **_moe_tiny),
                     vision_config=_vision(3, 32, 64, 2, 64, [0, 1])),
        "small": dict(text_config=_text(4096, 256, 8, 8, 2, 32, 768, [4, 6, 6], num_experts=16,
                                        num_experts_per_tok=4, moe_intermediate_size=128, decoder_sparse_step=1),
                      vision_config=_vision(4, 128, 256, 4, 256, [0, 1, 2])),
        # Qwen3-VL-30B-A3B: Qwen3-30B-A3B text model (48 layers, 128 experts, 8 per token) + 27-layer tower
        "paper": dict(text_config=_text(151936, 2048, 48, 32, 4, 128, 6144, [24, 20, 20], num_experts=128,
                                        num_experts_per_tok=8, moe_intermediate_size=768, decoder_sparse_step=1),
                      vision_config=_vision(27, 1152, 4304, 16, 2048, [8, 16, 24], 2304)),
    }

    @classmethod
    def experts(cls, config):
        return config.text_config.num_experts, config.text_config.num_experts_per_tok
