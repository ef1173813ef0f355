"""A preset written as a checkpoint a serving engine can load: random weights (``save_pretrained``) and an
offline word-level tokenizer over the preset's vocabulary (nothing downloaded)."""

from __future__ import annotations

from pathlib import Path


def write_checkpoint(arch: str, preset: str, path: str | Path, *, dtype: str = "bfloat16", seed: int = 0) -> Path:
    """``arch``'s ``preset`` saved under ``path`` (config, weights in ``dtype``, tokenizer); returns ``path``."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    from architectures import ARCHITECTURES

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    backbone = ARCHITECTURES.get(arch).build(preset, dtype=getattr(torch, dtype), seed=seed)
    config = backbone.model.config
    config.bos_token_id, config.eos_token_id, config.pad_token_id = 1, 2, 0
    backbone.model.save_pretrained(path)
    words = ["<pad>", "<bos>", "<eos>", "<unk>"] + [_word(i) for i in range(4, config.vocab_size)]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", pad_token="<pad>", eos_token="<eos>",
                            bos_token="<bos>").save_pretrained(path)
    return path


_DIGITS = "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"


def _word(i: int) -> str:
    """A short word per id (base 62): vLLM bounds a prompt's characters by 5 per token, space included."""
    out = ""
    while True:
        i, r = divmod(i, len(_DIGITS))
        out = _DIGITS[r] + out
        if not i:
            return out
