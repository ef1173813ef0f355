"""A preset written as a checkpoint a serving engine can load: random weights (``save_pretrained``) and an
offline word-level tokenizer over the preset's vocabulary (nothing downloaded)."""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from pathlib import Path


def preset_checkpoint(arch: str, preset: str, *, dtype: str = "bfloat16", seed: int = 0) -> Path:
    """``arch``'s ``preset`` as a checkpoint in viperbench's cache, written once for each config, dtype, seed
    and torch/transformers version (what the random weights depend on) and found there afterwards. One
    directory for the same model every time: vLLM keys its torch.compile cache on the model's path, so a
    later engine start reuses the compiled graphs (on this CPU, about 20 s instead of 50-85 s)."""
    import torch
    import transformers

    from architectures import ARCHITECTURES
    from bench.cache import cache_dir

    config = ARCHITECTURES.get(arch).make_config(preset).to_json_string(use_diff=False)
    key = hashlib.sha256("\n".join([config, dtype, str(seed), torch.__version__, transformers.__version__])
                         .encode()).hexdigest()[:12]
    path = cache_dir() / "serve-checkpoints" / f"{arch}-{preset}-{dtype}-seed{seed}-{key}"
    if path.is_dir():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}-", dir=path.parent))
    try:
        write_checkpoint(arch, preset, tmp, dtype=dtype, seed=seed)
        os.rename(tmp, path)  # whole or not at all; another process may have written it first
    except OSError:
        if not path.is_dir():
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return path


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
