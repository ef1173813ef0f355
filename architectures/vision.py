"""The vision side of a TimeViper-style video LLM: frames -> visual tokens in the LLM's hidden width.

Pipeline per frame:

1. SigLIP vision tower (transformers' ``SiglipVisionModel``, random weights in a preset's shape);
   the features are the raw output of the **second-to-last** encoder layer (no final layer,
   no ``post_layernorm``, no pooling head), as LLaVA-style models use them.
2. ToMe token merging ("Token Merging: Your ViT But Faster", Bolya et al. 2023) of each frame's
   patch tokens down to ``tokens_per_frame`` tokens (bipartite soft matching, size-weighted means).
3. MLP projector ``Linear -> GELU -> Linear`` into the LLM hidden width.

Frames are encoded in batches of ``frame_batch`` so long videos never hold the activations of
all frames at once.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from transformers import SiglipVisionConfig, SiglipVisionModel

from bench.errors import UserError

# Keyword arguments for ``SiglipVisionConfig``. ``vision_use_head`` is forced off in
# ``vision_config``: the multi-head attention pooling head is never used by a video LLM
# (it consumes patch tokens, not a pooled vector), so it is not built and not counted.
VISION_PRESETS: dict[str, dict] = {
    # Test-sized: 8x8 = 64 patches of 8 px on a 64 px frame, seconds on a CPU.
    "tiny": dict(
        hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        patch_size=8, image_size=64,
    ),
    # CPU-benchmarkable: 16x16 = 256 patches of 14 px on a 224 px frame.
    "small": dict(
        hidden_size=256, intermediate_size=1024, num_hidden_layers=6, num_attention_heads=8,
        patch_size=14, image_size=224,
    ),
    # SigLIP so400m-patch14-384 (TimeViper's vision encoder): 27x27 = 729 patches per frame.
    "paper": dict(
        hidden_size=1152, intermediate_size=4304, num_hidden_layers=27, num_attention_heads=16,
        patch_size=14, image_size=384,
    ),
}

ATTN_IMPLEMENTATION = "sdpa"


def siglip_normalise(pixels: torch.Tensor) -> torch.Tensor:
    """[0, 1] pixels -> SigLIP's input range: (x - mean) / std with mean = std = 0.5 per channel."""
    return (pixels - 0.5) / 0.5


def vision_config_from(config: SiglipVisionConfig) -> SiglipVisionConfig:
    """A loaded tower config prepared like the presets' (SDPA attention, no pooling head)."""
    config.vision_use_head = False
    config._attn_implementation = ATTN_IMPLEMENTATION
    return config


def vision_config(preset: str) -> SiglipVisionConfig:
    """The ``SiglipVisionConfig`` of a preset (SDPA attention, no pooling head)."""
    if preset not in VISION_PRESETS:
        raise UserError(f"unknown vision preset {preset!r}; valid: {', '.join(VISION_PRESETS)}")
    config = SiglipVisionConfig(**VISION_PRESETS[preset], vision_use_head=False)
    config._attn_implementation = ATTN_IMPLEMENTATION
    return config


def _bipartite_merge(x: torch.Tensor, size: torch.Tensor, r: int) -> tuple[torch.Tensor, torch.Tensor]:
    """One round of bipartite soft matching: merge the ``r`` best-matched A tokens into B.

    x: [F, T, D] token features (each a mean over the original tokens it stands for);
    size: [F, T, 1] how many original tokens each token stands for. A = even positions,
    B = odd positions. Each A token picks its most cosine-similar B token; the ``r`` A tokens
    with the highest similarity are folded into their match as a size-weighted mean. Returns
    the T - r surviving tokens in their original order, with their sizes.
    """
    frames, tokens, dim = x.shape
    metric = F.normalize(x, dim=-1)
    scores = metric[:, ::2] @ metric[:, 1::2].transpose(1, 2)  # [F, |A|, |B|]
    best, match = scores.max(dim=-1)  # each A token's best B partner
    order = best.argsort(dim=-1, descending=True, stable=True)
    src, keep = order[:, :r], order[:, r:]  # A tokens merged away / A tokens kept
    dst = match.gather(1, src)  # B partner of each merged A token

    weighted = x * size
    a_x, b_x = weighted[:, ::2], weighted[:, 1::2]
    a_s, b_s = size[:, ::2], size[:, 1::2]
    b_x = b_x.scatter_add(1, dst[..., None].expand(-1, -1, dim), a_x.gather(1, src[..., None].expand(-1, -1, dim)))
    b_s = b_s.scatter_add(1, dst[..., None], a_s.gather(1, src[..., None]))

    # Survivors: kept A tokens (position 2i) and all B tokens (position 2j + 1), back in order.
    b_pos = torch.arange(1, tokens, 2, device=x.device).expand(frames, -1)
    pos = torch.cat([2 * keep, b_pos], dim=1)
    out_x = torch.cat([a_x.gather(1, keep[..., None].expand(-1, -1, dim)), b_x], dim=1)
    out_s = torch.cat([a_s.gather(1, keep[..., None]), b_s], dim=1)
    perm = pos.argsort(dim=1)
    out_x = out_x.gather(1, perm[..., None].expand(-1, -1, dim))
    out_s = out_s.gather(1, perm[..., None])
    return out_x / out_s, out_s


def tome_merge(x: torch.Tensor, target: int) -> torch.Tensor:
    """ToMe-merge each frame's tokens down to exactly ``target`` tokens.

    x: [frames, tokens, dim] -> [frames, target, dim] (``x`` itself when tokens <= target).
    Rounds of bipartite soft matching (A = even positions, B = odd positions, cosine similarity)
    merge ``r = min(tokens - target, |A|)`` pairs each, so every output token is the mean of the
    original tokens merged into it (sizes are tracked across rounds). Surviving tokens keep their
    original relative order. Deterministic (ties broken by position; on CUDA the sums are
    bit-reproducible under ``torch.use_deterministic_algorithms(True)``). Computed in float32,
    returned in the input dtype.
    """
    if x.dim() != 3:
        raise ValueError(f"tome_merge expects [frames, tokens, dim], got shape {tuple(x.shape)}")
    if target < 1:
        raise ValueError(f"tome_merge target must be >= 1, got {target}")
    tokens = x.shape[1]
    if tokens <= target:
        return x
    feats = x.float()
    size = feats.new_ones(x.shape[0], tokens, 1)
    while tokens > target:
        feats, size = _bipartite_merge(feats, size, min(tokens - target, (tokens + 1) // 2))
        tokens = feats.shape[1]
    return feats.to(x.dtype)


class VisionSide(nn.Module):
    """SigLIP tower (second-to-last layer) -> ToMe to ``tokens_per_frame`` -> MLP projector.

    Random weights in the shape of ``preset`` (seeded by ``seed``). The tower is the full published
    model without its pooling head: its last encoder layer and ``post_layernorm`` are built (and
    counted) but never run. ``frame_batch`` bounds how many frames go through the tower at once.
    """

    frame_batch: int = 32

    def __init__(self, preset: str, llm_hidden: int, tokens_per_frame: int = 16, dtype=torch.float32,
                 device="cpu", seed: int = 0):
        super().__init__()
        if tokens_per_frame < 1:
            raise UserError(f"tokens_per_frame must be >= 1, got {tokens_per_frame}")
        config = vision_config(preset)
        self.preset = preset
        self.config = config
        self.llm_hidden = llm_hidden
        self.tokens_per_frame = tokens_per_frame
        self.image_size = int(config.image_size)
        self.num_patches = (config.image_size // config.patch_size) ** 2
        self.vision_dim = config.hidden_size
        if torch.device(device).type != "meta":
            torch.manual_seed(seed)
        with torch.device(device):  # built in the target dtype: no fp32 copy ever exists
            self.tower = SiglipVisionModel._from_config(config, dtype=dtype)
            self.projector = nn.Sequential(
                nn.Linear(config.hidden_size, llm_hidden, dtype=dtype),
                nn.GELU(),
                nn.Linear(llm_hidden, llm_hidden, dtype=dtype),
            )
        self.eval()

    @property
    def device(self) -> torch.device:
        return self.projector[0].weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.projector[0].weight.dtype

    def tower_features(self, pixels: torch.Tensor) -> torch.Tensor:
        """Embeddings and every encoder layer but the last: the raw second-to-last layer output."""
        hidden = self.tower.embeddings(pixels)
        for layer in self.tower.encoder.layers[:-1]:
            hidden = layer(hidden, None)
        return hidden

    def _check_frames(self, frames: torch.Tensor) -> None:
        side = self.image_size
        if frames.dim() != 4 or tuple(frames.shape[1:]) != (3, side, side):
            raise ValueError(f"frames must be [N, 3, {side}, {side}] for preset {self.preset!r}, "
                             f"got {tuple(frames.shape)}")

    def encode(self, frames: torch.Tensor, compressor=None) -> torch.Tensor:
        """[N, 3, H, W] frames -> [N, patches, vision_dim] second-to-last layer features.

        Frames ([0, 1] pixels) are moved to the model's device and dtype one batch of ``frame_batch``
        at a time, in order, and normalised as SigLIP's processor does ((x - 0.5) / 0.5). A compressor with a tower hook (e.g. STC-Cacher) encodes each batch instead.
        """
        self._check_frames(frames)
        encode = self.tower_features
        if compressor is not None and compressor.wants_tower_hook:
            encode = lambda pixels: compressor.tower_features(self, pixels)  # noqa: E731
        out = [
            encode(siglip_normalise(frames[i:i + self.frame_batch].to(self.device, self.dtype)))
            for i in range(0, frames.shape[0], self.frame_batch)
        ]
        if not out:
            return frames.new_empty(0, self.num_patches, self.vision_dim, device=self.device, dtype=self.dtype)
        return torch.cat(out)

    def project(self, feats: torch.Tensor) -> torch.Tensor:
        """[N, patches, vision_dim] -> ToMe to ``tokens_per_frame`` -> MLP -> [N, tokens_per_frame, llm_hidden]."""
        return self.projector(tome_merge(feats, self.tokens_per_frame))

    def forward(self, frames: torch.Tensor, compressor=None) -> torch.Tensor:
        """``project(encode(frames))`` without gradients, one ``frame_batch`` at a time end to end.

        Merging and projection are per frame, so batching the whole path gives the same result
        while only one batch of full patch features exists at a time.
        """
        self._check_frames(frames)
        with torch.inference_mode():
            out = [
                self.project(self.encode(frames[i:i + self.frame_batch], compressor))
                for i in range(0, frames.shape[0], self.frame_batch)
            ]
            if not out:
                return torch.empty(0, self.tokens_per_frame, self.llm_hidden, device=self.device, dtype=self.dtype)
            return torch.cat(out)

    @classmethod
    def from_checkpoint(cls, checkpoint: str, llm_hidden: int, tokens_per_frame: int = 16, dtype=torch.float32,
                        device="cpu") -> "VisionSide":
        """The vision side stored with a checkpoint: ``vision/`` (a transformers SigLIP vision model
        directory) and ``projector.safetensors`` (the MLP: ``0.weight``, ``0.bias``, ``2.weight``, ``2.bias``)."""
        from pathlib import Path

        from architectures.loading import load_config, load_model, load_tensors

        root = Path(checkpoint)
        tower_dir, projector_file = root / "vision", root / "projector.safetensors"
        for part, path in (("vision tower", tower_dir / "config.json"), ("projector", projector_file)):
            if not path.is_file():
                raise UserError(f"checkpoint {checkpoint} lacks the {part} ({path.relative_to(root)})")
        tower_config = load_config(SiglipVisionConfig, tower_dir)
        preset = next((name for name, kw in VISION_PRESETS.items()
                       if all(getattr(tower_config, k) == v for k, v in kw.items())), "paper")
        side = cls(preset, llm_hidden, tokens_per_frame, dtype=dtype, device="meta")
        side.config = vision_config_from(tower_config)
        side.image_size = int(tower_config.image_size)
        side.num_patches = (tower_config.image_size // tower_config.patch_size) ** 2
        side.vision_dim = tower_config.hidden_size
        side.tower = load_model(SiglipVisionModel, tower_dir, config=side.config, dtype=dtype)
        weights = load_tensors(projector_file)
        projector = nn.Sequential(nn.Linear(side.vision_dim, llm_hidden), nn.GELU(), nn.Linear(llm_hidden, llm_hidden))
        try:
            projector.load_state_dict(weights)
        except RuntimeError as exc:
            raise UserError(f"checkpoint {checkpoint}: projector.safetensors does not fit a {side.vision_dim} -> "
                            f"{llm_hidden} MLP ({str(exc).splitlines()[0]})") from None
        side.projector = projector
        return side.to(device=device, dtype=dtype).eval()

    def save(self, checkpoint: str) -> None:
        """Write ``vision/`` and ``projector.safetensors`` into a checkpoint directory."""
        from pathlib import Path

        from safetensors.torch import save_file

        root = Path(checkpoint)
        self.tower.save_pretrained(root / "vision")
        save_file({k: v.contiguous() for k, v in self.projector.state_dict().items()}, str(root / "projector.safetensors"))

    @staticmethod
    def param_count(preset: str, llm_hidden: int) -> int:
        """Tower + projector parameters, counted on the meta device (nothing allocated)."""
        model = VisionSide(preset, llm_hidden, device="meta")
        return sum(p.numel() for p in model.parameters())
