"""LLaVA-OneVision / LLaVA-Video: SigLIP + MLP projector + bilinear pooling + one newline token, Qwen2 LLM.

Layout (read from transformers' llava_onevision): ``<video>`` expands to frames x pooled tokens
plus one newline token (the model's ``image_newline``). The newline is not a frame token: the
vision mask covers the frame tokens only. Qwen2 has rotary and no q/k norms.
"""

from __future__ import annotations

import torch
from transformers import LlavaOnevisionConfig, LlavaOnevisionForConditionalGeneration

from architectures import register_architecture
from architectures.base import ATTENTION, LayerInput
from architectures.families.base import FamilyBackbone, Prompt
from architectures.tokens import TokenState


def _preset(vocab, hidden, layers, heads, kv, intermediate, v_hidden, v_inter, v_layers, v_heads, image, patch):
    return dict(text_config=dict(model_type="qwen2", vocab_size=vocab, hidden_size=hidden, num_hidden_layers=layers,
                                 num_attention_heads=heads, num_key_value_heads=kv, intermediate_size=intermediate,
                                 max_position_embeddings=32768, rope_theta=1e6, tie_word_embeddings=False),
                vision_config=dict(model_type="siglip_vision_model", hidden_size=v_hidden, intermediate_size=v_inter,
                                   num_hidden_layers=v_layers, num_attention_heads=v_heads, image_size=image,
                                   patch_size=patch),
                vision_feature_select_strategy="full", vision_feature_layer=-1)


@register_architecture("llava_onevision")
class LlavaOneVision(FamilyBackbone):
    """LLaVA-OneVision: transformers' LlavaOnevisionForConditionalGeneration (paper preset: 7B shapes)."""

    name = "llava_onevision"
    description = "LLaVA-OneVision video LLM: transformers' LlavaOnevisionForConditionalGeneration"
    family = "llava_onevision"
    config_class = LlavaOnevisionConfig
    model_class = LlavaOnevisionForConditionalGeneration
    text_layers_path = "model.language_model"
    vision_paths = ("model.vision_tower", "model.multi_modal_projector")
    frame_sizes = {"tiny": 56, "small": 112, "paper": 384}
    presets = {
        "tiny": _preset(256, 64, 4, 4, 2, 128, 32, 64, 2, 2, 56, 14),
        "small": _preset(4096, 256, 8, 8, 2, 768, 128, 256, 4, 4, 112, 14),
        # LLaVA-OneVision-Qwen2-7B: SigLIP so400m/14 at 384 + Qwen2-7B
        "paper": _preset(152064, 3584, 28, 28, 4, 18944, 1152, 4304, 26, 16, 384, 14),
    }

    @classmethod
    def token_ids(cls, tokenizer):
        ids = tokenizer.convert_tokens_to_ids
        return dict(image_token_index=ids("<image>"), video_token_index=ids("<video>"))

    def encode(self, inputs, compressor=None) -> Prompt:
        dev, cfg = self.device, self.vlm_config
        ids = inputs["input_ids"].to(dev)
        pixels = inputs["pixel_values_videos"].to(dev, self.dtype)
        parts = [self.model.model.get_video_features(pixels[:, a:b], vision_feature_layer=cfg.vision_feature_layer,
                                                     vision_feature_select_strategy=cfg.vision_feature_select_strategy
                                                     ).pooler_output for a, b in self.frame_spans(pixels.shape[1])]
        # frames x pooled tokens, then the newline (each batch's ends it; one ends the video)
        features = torch.cat([p[:, :-1] for p in parts[:-1]] + parts[-1:], dim=1).flatten(0, 1)
        slots = ids[0] == cfg.video_token_index
        embeds = self._place(ids, slots, features)
        newline = slots.nonzero().max()
        mask = slots.clone()
        mask[newline] = False
        n_frames = pixels.shape[1]
        frames = torch.full(mask.shape, -1, dtype=torch.long, device=dev)
        frames[mask] = torch.arange(n_frames, device=dev).repeat_interleave(int(mask.sum()) // n_frames)
        state = TokenState(embeds, torch.arange(ids.shape[1], device=dev), mask, frames)
        return self.compress_projected(Prompt(ids, state, int(mask.sum())), compressor)

    def layer_kind(self, i: int) -> str:
        return ATTENTION

    def layer_input(self, positions: torch.Tensor) -> LayerInput:
        dummy = torch.empty(0, dtype=self.dtype, device=positions.device)
        cos, sin = self.decoder.rotary_emb(dummy, positions[None])
        return LayerInput(positions, {"rotary": (cos, sin)})

    def run_layer(self, i, hidden, cache, inp: LayerInput):
        return self.layers[i](hidden, attention_mask=inp.attention_mask, position_ids=inp.positions[None], past_key_values=cache,
                              use_cache=cache is not None, position_embeddings=inp.extras["rotary"])
