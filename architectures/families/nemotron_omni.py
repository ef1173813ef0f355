"""Nemotron-3-Nano-Omni: RADIO tower, pixel shuffle, RMSNorm+MLP projector, NemotronH hybrid LLM with MoE.

Layout (read from transformers' nemotron_h_omni): frames are packed in temporal patches of 2;
each patch becomes ``Frame i and frame j: <img>`` + tokens ``<image>`` + ``</img>``. The
text model is NemotronH (Mamba-2, attention without rotary, MLP and MoE blocks). With the
checkpoint's ``video_pruning_rate`` q > 0 the model prunes video tokens with EVS before the
LLM, and so does this adapter (``compressors.evs.evs_keep``, the library's rule), renumbering
positions as the library does.
"""

from __future__ import annotations

import torch
from transformers.models.nemotron_h_omni import NemotronH_Omni_Reasoning_V3, NemotronH_Omni_Reasoning_V3_Config
from transformers.models.nemotron_h import modeling_nemotron_h

from architectures import kernels, register_architecture
from architectures.base import ATTENTION, MAMBA, MLP, LayerInput
from architectures.masked_mamba import masked_block
from architectures.families.base import FamilyBackbone, Prompt
from architectures.tokens import TokenState

kernels.install(modeling_nemotron_h)  # its text model is NemotronH: the same Mamba ops, routed by device

# Nemotron-3-Nano-30B-A3B: 23 Mamba-2 (M), 23 MoE (E), 6 attention (*) blocks.
NANO3_PATTERN = "MEMEM*EMEMEM*EMEMEM*EMEMEM*EMEMEM*EMEMEMEM*EMEMEMEME"
_KIND = {"linear_attention": MAMBA, "full_attention": ATTENTION, "mlp": MLP, "moe": MLP}
_CLIP_MEAN, _CLIP_STD = [0.48145466, 0.4578275, 0.40821073], [0.26862954, 0.26130258, 0.27577711]


def _preset(vocab, hidden, pattern, heads, kv, head_dim, m_heads, m_head_dim, state, groups, experts, k, moe_inter,
            shared_inter, v_hidden, v_layers, v_heads, image, projector, chunk=128):
    text = dict(vocab_size=vocab, hidden_size=hidden, hybrid_override_pattern=pattern, num_attention_heads=heads,
                num_key_value_heads=kv, head_dim=head_dim, intermediate_size=4 * hidden, mamba_num_heads=m_heads,
                mamba_head_dim=m_head_dim, ssm_state_size=state, n_groups=groups, conv_kernel=4, expand=2,
                chunk_size=chunk, n_routed_experts=experts, num_experts_per_tok=k, moe_intermediate_size=moe_inter,
                moe_shared_expert_intermediate_size=shared_inter, max_position_embeddings=262144)
    vision = dict(hidden_size=v_hidden, num_hidden_layers=v_layers, num_attention_heads=v_heads, patch_size=16,
                  image_size=image, max_img_size=2048, num_cls_tokens=2, num_registers=2, summary_idxs=[0, 1],
                  video_temporal_patch_size=2, norm_mean=_CLIP_MEAN, norm_std=_CLIP_STD)
    return dict(text_config=text, vision_config=vision, vision_hidden_size=v_hidden, projector_hidden_size=projector,
                downsample_ratio=0.5, video_temporal_patch_size=2, video_pruning_rate=0.0)


@register_architecture("nemotron_h_omni")
class NemotronOmni(FamilyBackbone):
    """Nemotron-3-Nano-Omni: transformers' NemotronH_Omni_Reasoning_V3 (paper preset: 30B-A3B shapes)."""

    name = "nemotron_h_omni"
    description = "Nemotron-3-Nano-Omni hybrid video LLM with EVS: transformers' NemotronH_Omni_Reasoning_V3"
    family = "nemotron_h_omni"
    config_class = NemotronH_Omni_Reasoning_V3_Config
    model_class = NemotronH_Omni_Reasoning_V3
    text_layers_path = "language_model.model"
    vision_paths = ("vision_model", "multi_modal_projector")
    head_path = "language_model.lm_head"
    frame_sizes = {"tiny": 64, "small": 128, "paper": 512}
    presets = {
        "tiny": _preset(256, 64, "MEM*-M", 4, 2, 16, 8, 16, 16, 2, 4, 2, 32, 32, 32, 2, 2, 64, 64, chunk=16),
        "small": _preset(4096, 256, "MEM*EMEM*EM-", 8, 2, 32, 16, 32, 32, 2, 8, 2, 128, 256, 128, 4, 4, 128, 512),
        # Nemotron-3-Nano-Omni-30B-A3B: Nemotron-3-Nano-30B-A3B + RADIO ViT-H/16 (audio tower left out)
        "paper": _preset(131072, 2688, NANO3_PATTERN, 32, 2, 128, 64, 64, 128, 8, 128, 6, 1856, 3712, 1280, 32, 16,
                         512, 4096),
    }

    @classmethod
    def token_ids(cls, tokenizer):
        ids = tokenizer.convert_tokens_to_ids
        return dict(image_token_id=ids("<image>"), video_token_id=ids("<video>"), audio_token_id=ids("<so_embedding>"))

    @classmethod
    def experts(cls, config):
        return config.text_config.n_routed_experts, config.text_config.num_experts_per_tok

    def video_features(self, pixels: torch.Tensor) -> torch.Tensor:
        """[frames, 3, H, W] -> [temporal patches, tokens per patch, hidden] (the library's tower + projector),
        ``frame_batch`` frames (whole temporal patches) at a time."""
        tp = self.model.video_temporal_patch_dim
        spans = self.frame_spans(-(-len(pixels) // tp), tp)
        return torch.cat([self.model.get_video_features(pixels[a * tp:b * tp]).pooler_output for a, b in spans])

    def encode(self, inputs, compressor=None) -> Prompt:
        from compressors.evs import evs_keep

        dev = self.device
        ids = inputs["input_ids"].to(dev)
        features = self.video_features(inputs["pixel_values_videos"].to(dev, self.dtype))
        groups, per_group = features.shape[:2]
        mask = ids[0] == self.vlm_config.image_token_id
        embeds = self._place(ids, mask, features.flatten(0, 1))
        frames = torch.full(mask.shape, -1, dtype=torch.long, device=dev)
        frames[mask] = torch.arange(groups, device=dev).repeat_interleave(per_group)
        produced = int(mask.sum())
        rate = self.pruning_rate
        if rate > 0:  # the checkpoint's own EVS: drop before the LLM, then positions are renumbered
            keep = evs_keep(features, rate)
            stay = torch.ones_like(mask)
            stay[mask.nonzero().squeeze(1)[~keep]] = False
            ids, embeds, mask, frames = ids[:, stay], embeds[:, stay], mask[stay], frames[stay]
        state = TokenState(embeds, torch.arange(ids.shape[1], device=dev), mask, frames)
        n_vision = int(mask.sum())
        return self.compress_projected(Prompt(ids, state, n_vision, produced - n_vision), compressor)

    @property
    def pruning_rate(self) -> float:
        """The checkpoint's own EVS rate (``video_pruning_rate``; 0: no pruning)."""
        return float(self.vlm_config.video_pruning_rate or 0.0)

    def own_pruning(self) -> str | None:
        if self.pruning_rate > 0:
            return (f"{self.checkpoint or self.name} prunes video tokens itself (EVS, video_pruning_rate="
                    f"{self.pruning_rate:g}), unevenly across frames")
        return None

    def layer_kind(self, i: int) -> str:
        return _KIND[self.config.layers_block_type[i]]

    def attention_module(self, i: int):
        return self.layers[i].mixer

    def mamba_mixer(self, i: int):
        return self.layers[i].mixer

    def pre_norm(self, i: int):
        return self.layers[i].norm

    def final_norm(self, hidden):
        return self.decoder.norm_f(hidden)

    def run_layer(self, i, hidden, cache, inp: LayerInput):
        layer = self.layers[i]
        if inp.blocked is not None and self.layer_kind(i) == MAMBA:  # a knockout: the SSD's masked form
            return masked_block(layer.norm, layer.mixer, hidden, inp.blocked)
        return layer(hidden, past_key_values=cache, attention_mask=inp.attention_mask, use_cache=cache is not None)
