"""The backbone adapter: a transformers causal LM whose layer loop the harness runs.

An adapter names the library classes, the presets (config kwargs) and how to call one
layer. Everything else (building on a device, loading a checkpoint, parameter counts,
the cache, embedding and the head) is shared here. The loop itself lives in
``bench.engine.pipeline`` so that compressors can act between layers.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from architectures import attention
from architectures.loading import load_config, load_model, meta_model
from bench.errors import UserError

# Kinds of layer the harness knows about (compressors need to know where attention is).
ATTENTION, MAMBA, MLP = "attention", "mamba", "mlp"


def read_checkpoint_config(checkpoint: str) -> dict:
    """A checkpoint directory's config.json as a dict; a one-line UserError for any fault."""
    path = Path(checkpoint)
    if not path.is_dir():
        raise UserError(f"checkpoint directory not found: {checkpoint}")
    cfg = path / "config.json"
    if not cfg.is_file():
        raise UserError(f"checkpoint {checkpoint} has no config.json")
    try:
        raw = json.loads(cfg.read_text())
    except (OSError, ValueError) as exc:
        raise UserError(f"checkpoint {checkpoint}: unreadable config.json ({exc})") from None
    if not isinstance(raw, dict):
        raise UserError(f"checkpoint {checkpoint}: config.json is not a JSON object")
    if not isinstance(raw.get("model_type"), str):
        raise UserError(f"checkpoint {checkpoint}: config.json has no model_type string (got "
                        f"{raw.get('model_type')!r})")
    if raw.get("auto_map"):
        raise UserError(f"checkpoint {checkpoint} needs remote code (config.json has auto_map); refused: "
                        "viperbench runs only the library's own classes and never executes checkpoint code")
    return raw


@dataclass
class LayerInput:
    """What one call of a layer needs besides the hidden states, shared by all layers of a chunk.

    positions: absolute positions (long, last dimension = the chunk's tokens; [n] or Qwen3-VL's
    [3, n]) of the tokens in the chunk (rotary embeddings).
    extras: adapter-specific tensors computed once per chunk (rotary cos/sin).

    No attention mask is needed: a chunk's queries always sit at the end of its layer's keys
    (see ``architectures.attention``); only an attention knockout brings one (``blocked``).
    """

    positions: torch.Tensor
    extras: dict[str, Any]
    # Attention knockout (``architectures.knockout``), None without one: the chunk's rows of the blocked
    # matrix [chunk tokens, keys so far] (True = this query may not read this key), and the attention mask
    # made from them [1, 1, chunk tokens, keys so far] (True = may read: causal and not blocked).
    blocked: torch.Tensor | None = None
    attention_mask: torch.Tensor | None = None

    def with_blocked(self, rows: torch.Tensor) -> "LayerInput":
        """This chunk's input with knockout rows [chunk tokens, keys so far] (the mask made here, once)."""
        return LayerInput(self.positions, self.extras, rows, attention.allowed_mask(rows))


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


class Backbone:
    """Base adapter. Subclasses set the class attributes and implement ``layer_kind``/``run_layer``."""

    name: ClassVar[str]
    description: ClassVar[str]
    family: ClassVar[str]  # the checkpoint's config.model_type
    config_class: ClassVar[type]
    model_class: ClassVar[type]
    presets: ClassVar[dict[str, dict[str, Any]]]
    attn_implementation: ClassVar[str | None] = attention.NAME  # None for attention-free models
    takes_frames: ClassVar[bool] = False  # True for real video LLMs: their own processor and vision tower

    def __init__(self, model: nn.Module, preset: str | None = None, checkpoint: str | None = None):
        self.model = model.eval()
        self.config = model.config
        self.preset = preset
        self.checkpoint = checkpoint

    # --- construction ----------------------------------------------------------------
    @classmethod
    def make_config(cls, preset: str, **overrides):
        if preset not in cls.presets:
            raise UserError(f"unknown preset {preset!r} for {cls.name}; valid: {', '.join(cls.presets)}")
        kwargs = {**cls.presets[preset], **overrides}
        return cls._with_attention(cls.config_class(**kwargs))

    @classmethod
    def _with_attention(cls, config):
        if cls.attn_implementation:
            config._attn_implementation = cls.attn_implementation
        return config

    @classmethod
    def build(cls, preset: str | None = "tiny", checkpoint: str | None = None, device="cpu",
              dtype=torch.float32, seed: int = 0) -> "Backbone":
        """Random weights in a preset's shape, or a local checkpoint of the same family."""
        if checkpoint:
            config = cls.check_checkpoint(checkpoint)
            model = load_model(cls.model_class, checkpoint, config=config, dtype=dtype)
            return cls(model.to(device), checkpoint=str(checkpoint))
        config = cls.make_config(preset)
        torch.manual_seed(seed)
        with torch.device(device):  # built in the target dtype: no fp32 copy ever exists
            model = cls.model_class._from_config(config, dtype=dtype)
        return cls(model, preset=preset)

    @classmethod
    @lru_cache(maxsize=16)
    def skeleton(cls, preset: str | None = None, checkpoint: str | None = None) -> "Backbone":
        """The backbone on the meta device (no memory): its structure, for validating plans."""
        if checkpoint:
            return cls(meta_model(cls.model_class, cls.check_checkpoint(checkpoint), checkpoint), preset=preset,
                       checkpoint=checkpoint)
        with torch.device("meta"):
            return cls(cls.model_class(cls.make_config(preset)), preset=preset)

    @classmethod
    def check_checkpoint(cls, checkpoint: str):
        model_type = read_checkpoint_config(checkpoint).get("model_type")
        if model_type != cls.family:
            raise UserError(f"checkpoint {checkpoint} is a {model_type!r} model; {cls.name} needs {cls.family!r}")
        return cls._with_attention(load_config(cls.config_class, checkpoint))

    @classmethod
    def param_count(cls, preset: str) -> int:
        """Parameters of a preset, counted on the meta device (nothing allocated)."""
        with torch.device("meta"):
            model = cls.model_class(cls.make_config(preset))
        return sum(p.numel() for p in model.parameters())

    @classmethod
    def param_counts(cls, preset: str) -> dict[str, int]:
        """Total and active parameters per token (equal for dense models), on the meta device."""
        total = cls.param_count(preset)
        return {"total": total, "active": total}

    # --- pieces of the forward pass, used by bench.engine.pipeline ------------------------------
    @property
    def decoder(self) -> nn.Module:
        return self.model.base_model

    @property
    def layers(self) -> nn.ModuleList:
        return self.decoder.layers

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    @property
    def hidden_size(self) -> int:
        return self.config.hidden_size

    @property
    def device(self) -> torch.device:
        return self.model.lm_head.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.model.lm_head.weight.dtype

    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.model.get_input_embeddings()(input_ids)

    def new_cache(self):
        from transformers import DynamicCache

        return DynamicCache(config=self.config)

    def final_norm(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.decoder.norm_f(hidden)

    def logits(self, hidden: torch.Tensor, dtype: torch.dtype | None = torch.float32) -> torch.Tensor:
        """Final norm and LM head, as ``dtype`` (float32 by default; None: the head's dtype)."""
        hidden = self.final_norm(hidden)
        out = self.model.lm_head(hidden.to(self.model.lm_head.weight.dtype))
        return out if dtype is None else out.to(dtype)

    def layer_kinds(self) -> list[str]:
        return [self.layer_kind(i) for i in range(self.num_layers)]

    def attention_layers(self) -> list[int]:
        return [i for i in range(self.num_layers) if self.layer_kind(i) == ATTENTION]

    def layer_input(self, positions: torch.Tensor) -> LayerInput:
        """Per-chunk inputs shared by all layers (override to add rotary embeddings)."""
        return LayerInput(positions, {})

    def check_compressor(self, compressor) -> None:
        """Raise UserError if ``compressor`` cannot act on this backbone (beyond its own ``check``)."""

    def after_layer(self, i: int, state) -> None:
        """Called with the whole prefill sequence after layer i (Qwen3-VL adds DeepStack features here)."""

    # --- explicit structure for compressors (no probing of library modules) ----------------
    def attention_module(self, i: int) -> nn.Module:
        """The attention module of layer i (q_proj, k_proj, v_proj, o_proj, head_dim, scaling)."""
        raise NotImplementedError(f"{self.name} has no attention layers")

    def mamba_mixer(self, i: int) -> nn.Module:
        """The Mamba-2 mixer of Mamba layer i (``architectures.masked_mamba`` reads its weights)."""
        raise NotImplementedError(f"{self.name} has no Mamba-2 layers")

    def pre_norm(self, i: int) -> nn.Module:
        """The norm applied to the hidden states entering layer i's mixer (attention or Mamba)."""
        raise NotImplementedError

    def rotary(self, positions: torch.Tensor):
        """(cos, sin) [1, n, head_dim] for these positions, or None if the attention has no rotary."""
        return self.layer_input(positions).extras.get("rotary")

    def _queries_keys(self, i: int, hidden: torch.Tensor, positions: torch.Tensor, queries: torch.Tensor):
        """Layer i's rotated queries at ``queries`` (sequence indices) and keys of every token, [b, heads, n, hd]
        (keys repeated to the query heads), and the attention module."""
        attn = self.attention_module(i)
        normed = self.pre_norm(i)(hidden)
        b, length, _ = normed.shape
        hd = attn.head_dim
        q = attn.q_proj(normed[:, queries]).view(b, queries.numel(), -1, hd)
        k = attn.k_proj(normed).view(b, length, -1, hd)
        q_norm, k_norm = getattr(attn, "q_norm", None), getattr(attn, "k_norm", None)
        if q_norm is not None:
            q, k = q_norm(q), k_norm(k)
        q, k = q.transpose(1, 2), k.transpose(1, 2)  # [b, heads, n, hd]
        rot = self.rotary(positions)
        if rot is not None:
            cos, sin = (t.unsqueeze(1) for t in rot)
            q = q * cos[..., queries, :] + _rotate_half(q) * sin[..., queries, :]
            k = k * cos + _rotate_half(k) * sin
        k = k.repeat_interleave(q.shape[1] // k.shape[1], dim=1)
        return q, k, attn

    def attention_scores(self, i: int, hidden: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """[batch, length] attention of the last token over every token at attention layer i, mean over heads.

        Uses the layer's own pre-norm, q/k projections, q/k norms if it has them, and rotary
        embeddings whenever the layer has rotary (Qwen3, Qwen2, Qwen3-VL's multimodal rotary).
        """
        last = torch.tensor([hidden.shape[1] - 1], device=hidden.device)
        q, k, attn = self._queries_keys(i, hidden, positions, last)
        scores = (q.float() @ k.float().transpose(-1, -2)).squeeze(2) * attn.scaling  # [b, heads, length]
        return scores.softmax(-1).mean(1)

    def attention_weights(self, i: int, hidden: torch.Tensor, positions: torch.Tensor,
                          queries: torch.Tensor) -> torch.Tensor:
        """[batch, heads, queries, length] causal attention weights of the tokens at ``queries`` (sequence
        indices) over every token at attention layer i, as ``attention_scores`` computes them."""
        q, k, attn = self._queries_keys(i, hidden, positions, queries)
        scores = (q.float() @ k.float().transpose(-1, -2)) * attn.scaling  # [b, heads, queries, length]
        future = torch.arange(hidden.shape[1], device=hidden.device)[None, :] > queries[:, None]
        return scores.masked_fill(future, float("-inf")).softmax(-1)

    # --- to implement -------------------------------------------------------------------
    def layer_kind(self, i: int) -> str:
        raise NotImplementedError

    def run_layer(self, i: int, hidden: torch.Tensor, cache, inp: LayerInput) -> torch.Tensor:
        raise NotImplementedError
