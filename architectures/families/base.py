"""A real video LLM of the library (vision tower + projector + text model) as a harness backbone.

The checkpoint's own processor and chat template turn frames and a prompt into the model's
inputs; the library model's own vision code (tower, projector/merger/pooling, newline,
DeepStack) turns pixels into features, which are placed at the placeholder tokens. The text
model's layers then run through the harness's layer loop (``bench.engine.pipeline``) with the
compressor hooks, chunked prefill and the library cache.

Each family sets the library classes, the presets (top-level config kwargs with nested
``text_config``/``vision_config``) and implements ``encode`` (processor inputs -> ``Prompt``),
the text model's pieces and ``run_layer``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from architectures import attention
from architectures.base import Backbone
from architectures.families import check_checkpoint_dir
from architectures.loading import load_config, load_model, load_processor, meta_model
from architectures.tokens import TokenState
from bench.errors import UserError
from tasks.video import Clip


@dataclass
class Prompt:
    """One request ready for prefill: the processor's ids and the initial token state."""

    input_ids: torch.Tensor  # [1, length]: what reaches the LLM
    state: TokenState
    vision_tokens: int  # vision tokens that reach the LLM, before any compressor
    checkpoint_pruned: int = 0  # vision tokens the checkpoint's own pruning dropped before the LLM

    @property
    def length(self) -> int:
        return self.state.length


def _identity_hook():
    from compressors.base import Compressor

    return Compressor.after_projector


class FamilyBackbone(Backbone):
    """Base of the real video LLMs; subclasses name the library classes and the token layout."""

    family: ClassVar[str]
    config_class: ClassVar[type]
    model_class: ClassVar[type]
    presets: ClassVar[dict[str, dict[str, Any]]]
    attn_implementation = attention.NAME
    takes_frames = True
    frame_sizes: ClassVar[dict[str, int]] = {}  # preset -> side of the frames handed to the processor
    text_layers_path: ClassVar[str]  # attribute path from the library model to the text decoder
    frame_batch: int | None = None  # frames through the tower at once (None: the whole video, as the library does)
    vision_paths: ClassVar[tuple[str, ...]]  # attribute paths to the vision tower and projector
    head_path: ClassVar[str] = "lm_head"

    def __init__(self, model: nn.Module, processor=None, preset: str | None = None, checkpoint: str | None = None):
        self.model = model.eval()
        self.vlm_config = model.config
        self.config = model.config.text_config
        self.processor = processor
        self.preset = preset
        self.checkpoint = checkpoint
        self.config._attn_implementation = self.attn_implementation  # the text layers use chunk-aware SDPA

    # --- construction --------------------------------------------------------------------
    @classmethod
    def token_ids(cls, tokenizer) -> dict[str, int]:
        """Top-level config kwargs naming the placeholder token ids (from the offline tokenizer)."""
        return {}

    @classmethod
    def make_config(cls, preset: str, **overrides):
        if preset not in cls.presets:
            raise UserError(f"unknown preset {preset!r} for {cls.name}; valid: {', '.join(cls.presets)}")
        from architectures.families.offline import make_tokenizer

        kwargs = {**cls.presets[preset], **overrides}
        tok = make_tokenizer(cls.family)
        return cls.config_class(**{**cls.token_ids(tok), **kwargs})

    @classmethod
    def check_checkpoint(cls, checkpoint: str):
        raw = check_checkpoint_dir(checkpoint)
        if raw.get("model_type") != cls.family:
            raise UserError(f"checkpoint {checkpoint} is a {raw.get('model_type')!r} model; {cls.name} needs "
                            f"{cls.family!r}")
        return load_config(cls.config_class, checkpoint)

    @classmethod
    def build(cls, preset: str | None = "tiny", checkpoint: str | None = None, device="cpu",
              dtype=torch.float32, seed: int = 0) -> "FamilyBackbone":
        if checkpoint:
            config = cls.check_checkpoint(checkpoint)
            model = load_model(cls.model_class, checkpoint, config=config, dtype=dtype)
            return cls(model.to(device), cls.make_processor(config, checkpoint), checkpoint=str(checkpoint))
        config = cls.make_config(preset)
        torch.manual_seed(seed)
        with torch.device(device):  # built in the target dtype: no fp32 copy ever exists
            model = cls.model_class._from_config(config, dtype=dtype)
        return cls(model, cls.make_processor(config), preset=preset)

    @classmethod
    def make_processor(cls, config, checkpoint: str | None = None):
        """The checkpoint's processor, or one built offline for a preset's ``config``."""
        if checkpoint:
            return load_processor(checkpoint)
        from architectures.families.offline import make_processor

        return make_processor(cls.family, config)

    @classmethod
    def skeleton(cls, preset: str | None = None, checkpoint: str | None = None) -> "FamilyBackbone":
        if checkpoint:
            return cls(meta_model(cls.model_class, cls.check_checkpoint(checkpoint), checkpoint), None,
                       preset=preset, checkpoint=checkpoint)
        with torch.device("meta"):
            return cls(cls.model_class(cls.make_config(preset)), None, preset=preset)

    @classmethod
    def param_count(cls, preset: str) -> int:
        return cls.param_counts(preset)["total"]

    @classmethod
    def param_counts(cls, preset: str) -> dict[str, int]:
        """Total and active parameters (MoE: only ``k`` of ``E`` routed experts per token), on the meta device."""
        config = cls.make_config(preset)
        with torch.device("meta"):
            model = cls.model_class(config)
        total = sum(p.numel() for p in model.parameters())
        inactive = 0
        routed, per_token = cls.experts(config)
        if routed:
            for name, module in model.named_modules():
                if name.endswith(".experts"):
                    inactive += sum(p.numel() for p in module.parameters()) * (routed - per_token) // routed
        return {"total": total, "active": total - inactive}

    @classmethod
    def experts(cls, config) -> tuple[int, int]:
        """(routed experts, experts per token) of the text model; (0, 0) without MoE."""
        return 0, 0

    # --- pieces of the forward pass ----------------------------------------------------------
    @property
    def decoder(self) -> nn.Module:
        return self.model.get_submodule(self.text_layers_path)

    def frame_spans(self, units: int, frames_per_unit: int = 1) -> list[tuple[int, int]]:
        """[start, stop) ranges of a video's ``units`` (frames, or temporal patches of ``frames_per_unit``
        frames) that go through the tower together: all at once, or about ``frame_batch`` frames at a time
        (whole units). Every tower here encodes each unit on its own, so the features are the same."""
        if self.frame_batch is None:
            return [(0, units)]
        step = -(-self.frame_batch // frames_per_unit)
        return [(a, min(a + step, units)) for a in range(0, units, step)]

    def vision_modules(self) -> list[nn.Module]:
        """The library model's vision tower and projector (what turns pixels into LLM features)."""
        return [self.model.get_submodule(path) for path in self.vision_paths]

    @property
    def head(self) -> nn.Linear:
        return self.model.get_submodule(self.head_path)

    @property
    def device(self) -> torch.device:
        return self.head.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.head.weight.dtype

    def final_norm(self, hidden):
        return self.decoder.norm(hidden)

    def logits(self, hidden, dtype=torch.float32):
        out = self.head(self.final_norm(hidden).to(self.head.weight.dtype))
        return out if dtype is None else out.to(dtype)

    @property
    def frame_size(self) -> int:
        """Side (pixels) of synthetic or decoded frames handed to the processor (it resizes them itself)."""
        return self.frame_sizes.get(self.preset or "paper", self.frame_sizes["paper"])

    # --- the prompt: frames + text -> processor inputs -> token state -------------------------
    def chat_text(self, prompt: str) -> str:
        """The checkpoint's chat template with one user turn: the video, then the prompt text."""
        messages = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": prompt}]}]
        return self.processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)

    def processor_inputs(self, clip: Clip, prompt: str):
        """Sampled frames (a ``tasks.video.Clip``: [T, 3, H, W] uint8 or float in [0, 1], with their source
        frame indices and frame rate) and the prompt -> the processor's BatchFeature.

        The processor gets the clip's true video metadata and samples nothing itself, so the times it
        writes into the prompt (Qwen3-VL's ``<t seconds>``, Nemotron-Omni's ``Frame i sampled at t
        seconds``) are those of the sampled frames in the source video."""
        from transformers.video_utils import VideoMetadata

        frames = clip.frames.cpu()  # the processor runs on the host: float frames become uint8 there, not on the GPU
        if frames.dtype != torch.uint8:
            frames = (frames.float().clamp(0, 1) * 255).round().to(torch.uint8)
        metadata = VideoMetadata(total_num_frames=clip.total_frames, fps=clip.fps, duration=clip.duration_s,
                                 frames_indices=list(clip.indices), height=frames.shape[-2], width=frames.shape[-1])
        return self.processor(text=self.chat_text(prompt), videos=[frames], return_tensors="pt",
                              video_metadata=metadata, do_sample_frames=False)

    def encode(self, inputs, compressor=None) -> Prompt:
        """Processor inputs -> the prompt's token state (vision features placed at the placeholders)."""
        raise NotImplementedError

    def own_pruning(self) -> str | None:
        """Why this model's frames can reach the LLM with different numbers of vision tokens (None: they never do)."""
        return None

    def check_compressor(self, compressor) -> None:
        if compressor.wants_tower_hook:
            raise UserError(f"compressor {compressor.name!r} hooks the own-layout vision tower; {self.name} runs the "
                            "checkpoint's own tower (use a projector- or LLM-side compressor)")
        reason = self.own_pruning()
        if compressor.regroups_frames and reason:
            raise UserError(f"compressor {compressor.name!r} needs the same number of vision tokens in every frame, "
                            f"but {reason}; use uniform, attention, fastv, td or transv")

    def prompt(self, clip: Clip, text: str, compressor=None) -> Prompt:
        """Sampled frames and prompt text -> a prompt ready for prefill (projector-side compression applied)."""
        return self.encode(self.processor_inputs(clip, text), compressor)

    def compress_projected(self, prompt: Prompt, compressor) -> Prompt:
        """Hook 2 (after the projector) on a real model: the compressor sees the vision features as
        [1, groups, tokens per group, hidden] and returns k per group; each group keeps k of its own
        slots (the ones the compressor names in ``kept_slots`` [groups, k], else the first k), with
        their positions and DeepStack features; the other slots leave the sequence."""
        if compressor is None or type(compressor).after_projector is _identity_hook():
            return prompt
        state = prompt.state
        ranks = state.frame_ranks(f"compressor {compressor.name!r}")  # grouped by frame index, not by count
        groups, n = ranks.shape
        vis = state.vision_index()[ranks.flatten()]
        compressor.kept_slots = None
        out = compressor.after_projector(state.hidden[:, vis].reshape(1, groups, n, -1))
        k = out.shape[1] // groups
        slots = compressor.kept_slots
        slots = torch.arange(k, device=vis.device).expand(groups, k) if slots is None else slots.to(vis.device)
        slots, order = slots.sort(dim=1)
        out = out.reshape(groups, k, -1).gather(1, order[..., None].expand(-1, -1, out.shape[-1]))
        chosen = vis.reshape(groups, n).gather(1, slots).flatten()
        hidden = state.hidden.clone()
        hidden[0, chosen] = out.flatten(0, 1).to(hidden.dtype)
        stay = ~state.vision
        stay[chosen] = True
        state.hidden = hidden
        state.select(stay.nonzero().squeeze(1))
        return prompt

    def _place(self, input_ids: torch.Tensor, mask: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        embeds = self.embed(input_ids.to(self.device))
        return embeds.masked_scatter(mask.to(self.device)[None, :, None].expand_as(embeds),
                                     features.to(embeds.dtype))

    # --- the text layers -------------------------------------------------------------------
    def layer_kind(self, i: int) -> str:
        raise NotImplementedError

    def attention_module(self, i: int):
        return self.layers[i].self_attn

    def pre_norm(self, i: int):
        return self.layers[i].input_layernorm
