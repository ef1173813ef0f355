"""Real video LLMs transformers ships natively, detected from a checkpoint's config.json.

``model_type`` -> the registered architecture that runs it. Checks on a checkpoint directory
(before anything is loaded) give one line naming what is wrong.
"""

from __future__ import annotations

import json
from pathlib import Path

from bench.errors import UserError

# config.json model_type -> architecture name (registered in architectures/__init__.py)
FAMILIES = {
    "nemotron_h_omni": "nemotron_h_omni",
    "qwen3_vl": "qwen3_vl",
    "qwen3_vl_moe": "qwen3_vl_moe",
    "llava_onevision": "llava_onevision",
}
WEIGHTS = ("model.safetensors", "model.safetensors.index.json")
TOKENIZER = ("tokenizer.json", "tokenizer.model", "vocab.json")
PROCESSOR = ("processor_config.json", "preprocessor_config.json", "video_preprocessor_config.json")


def detect(checkpoint: str) -> str:
    """The architecture name for a checkpoint directory (its config.json ``model_type``)."""
    from architectures.base import read_checkpoint_config

    raw = read_checkpoint_config(checkpoint)  # refuses remote code (auto_map)
    model_type = raw.get("model_type")
    if model_type in FAMILIES:
        return FAMILIES[model_type]
    own = {"qwen3": "transformer", "mamba2": "mamba", "nemotron_h": "hybrid"}
    if model_type in own:
        return own[model_type]
    raise UserError(f"checkpoint {checkpoint}: unsupported model_type {model_type!r}; supported: "
                    f"{', '.join(list(FAMILIES) + list(own))}")


def check_checkpoint_dir(checkpoint: str) -> dict:
    """config.json, weights, tokenizer, processor and chat template present; no remote code."""
    from architectures.base import read_checkpoint_config

    raw = read_checkpoint_config(checkpoint)
    detect(checkpoint)
    path = Path(checkpoint)

    def need(names: tuple[str, ...], what: str) -> None:
        if not any((path / n).is_file() for n in names):
            raise UserError(f"checkpoint {checkpoint} has no {what} ({' or '.join(names)})")

    need(WEIGHTS, "weights file")
    need(TOKENIZER, "tokenizer")
    need(PROCESSOR, "processor config")
    if not (path / "chat_template.jinja").is_file() and not (path / "chat_template.json").is_file():
        tok_cfg = path / "tokenizer_config.json"
        try:
            has = tok_cfg.is_file() and bool(json.loads(tok_cfg.read_text()).get("chat_template"))
        except (OSError, ValueError):
            has = False
        if not has:
            raise UserError(f"checkpoint {checkpoint} has no chat template (chat_template.jinja)")
    return raw
