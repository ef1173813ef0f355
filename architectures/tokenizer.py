"""Tokenizers for evaluation: a checkpoint's own, or a built-in byte-level one for random-weight presets.

The byte-level tokenizer needs nothing on disk: ids 0, 1, 2 are pad, BOS and EOS, and byte
b is id b + 3, so every preset (vocabulary >= 259) can run a task end to end.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from bench.errors import UserError

PAD, BOS, EOS, OFFSET = 0, 1, 2, 3


class ByteTokenizer:
    name = "bytes"
    bos_id, eos_id = BOS, EOS

    def __init__(self, vocab_size: int):
        if vocab_size < 256 + OFFSET:
            raise UserError(f"the byte-level tokenizer needs a vocabulary of at least {256 + OFFSET}, got {vocab_size}")

    def encode_prompt(self, text: str) -> list[int]:
        return [b + OFFSET for b in text.encode("utf-8")]

    def decode(self, ids: list[int]) -> str:
        return bytes(i - OFFSET for i in ids if OFFSET <= i < 256 + OFFSET).decode("utf-8", errors="replace")


class CheckpointTokenizer:
    """A checkpoint's own tokenizer; prompts go through its chat template when it has one."""

    def __init__(self, checkpoint: str):
        from architectures.families import TOKENIZER
        from architectures.loading import load_tokenizer

        if not any((Path(checkpoint) / name).is_file() for name in TOKENIZER):
            raise UserError(f"checkpoint {checkpoint} has no tokenizer: looked for {', '.join(TOKENIZER)} "
                            f"(or {BYTES_MARKER}, which viperbench train writes)")
        self.tok = load_tokenizer(checkpoint)
        self.name = f"checkpoint:{checkpoint}"
        self.bos_id = self.tok.bos_token_id if self.tok.bos_token_id is not None else self.tok.eos_token_id
        self.eos_id = self.tok.eos_token_id

    def encode_prompt(self, text: str) -> list[int]:
        if getattr(self.tok, "chat_template", None):
            ids = self.tok.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True,
                                               tokenize=True)
            # transformers 5 returns a BatchEncoding (a Mapping, not a dict): list() of it would be its keys
            return [int(i) for i in (ids["input_ids"] if isinstance(ids, Mapping) else ids)]
        return self.tok.encode(text, add_special_tokens=False)

    def decode(self, ids: list[int]) -> str:
        return self.tok.decode(ids, skip_special_tokens=True)


class ProcessorTokenizer:
    """A real video LLM's tokenizer (its processor's); EOS from its generation config, as generate() stops."""

    def __init__(self, backbone):
        self.tok = backbone.processor.tokenizer
        self.name = f"checkpoint:{backbone.checkpoint}" if backbone.checkpoint else f"offline:{backbone.name}"
        eos = getattr(backbone.model.generation_config, "eos_token_id", None)
        self.eos_id = eos if eos is not None else self.tok.eos_token_id
        self.bos_id = self.tok.bos_token_id

    def decode(self, ids: list[int]) -> str:
        return self.tok.decode(ids, skip_special_tokens=True)


BYTES_MARKER = "byte_tokenizer.json"  # in a checkpoint trained on the byte-level tokenizer (viperbench train)


def tokenizer_for(backbone) -> ByteTokenizer | CheckpointTokenizer | ProcessorTokenizer:
    if backbone.takes_frames:
        return ProcessorTokenizer(backbone)
    if backbone.checkpoint and not (Path(backbone.checkpoint) / BYTES_MARKER).is_file():
        return CheckpointTokenizer(backbone.checkpoint)
    return ByteTokenizer(backbone.config.vocab_size)
