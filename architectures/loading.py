"""The one path by which a checkpoint's files are read: configs, weights, tensors, processors, tokenizers.

Every read goes through ``reading(path)``: a truncated or garbage safetensors file, an index
naming a missing shard, a config.json with a wrongly typed field, an unreadable tokenizer
file become one ``UserError`` line naming the file, never a library traceback. Weights files
are opened (header only) before the library loads them, so the line names the very file that
is corrupt; a checkpoint that lacks weights the model needs is refused rather than filled with
random values. The library's progress bars and load reports stay quiet while a file is read,
so that an error is the only line on stderr.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

from bench.errors import UserError

INDEX = "model.safetensors.index.json"
WEIGHTS = "model.safetensors"


def one_line(exc: BaseException) -> str:
    """An exception's whole message on one line (library messages span several)."""
    return " ".join(str(exc).split()) or type(exc).__name__


@contextmanager
def quiet_library() -> Iterator[None]:
    """transformers' progress bars off, its logging at error level and Python warnings ignored for the duration."""
    from transformers.utils import logging as hf_logging

    bar, verbosity = hf_logging.is_progress_bar_enabled(), hf_logging.get_verbosity()
    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bar:
            hf_logging.enable_progress_bar()


@contextmanager
def reading(path, what: str = "checkpoint file") -> Iterator[None]:
    """Any fault while reading ``path`` -> one UserError naming it (out-of-memory passes through)."""
    from huggingface_hub.errors import StrictDataclassError
    from safetensors import SafetensorError

    try:
        with quiet_library():
            yield
    except (UserError, torch.OutOfMemoryError):
        raise
    except StrictDataclassError as exc:  # the library's typed config fields
        raise UserError(f"bad {what} {path}: {one_line(exc.__cause__ or exc)}") from None
    except (SafetensorError, OSError, ValueError, TypeError, KeyError, RuntimeError) as exc:
        raise UserError(f"cannot read {what} {path}: {one_line(exc)}") from None


def load_tensors(path) -> dict[str, torch.Tensor]:
    """A safetensors file as a dict of tensors."""
    from safetensors.torch import load_file

    with reading(path, "weights file"):
        return load_file(str(path))


def weight_files(directory) -> list[Path]:
    """The safetensors files a transformers checkpoint directory loads from (shards from its index)."""
    root = Path(directory)
    index = root / INDEX
    if index.is_file():
        with reading(index, "weights index"):
            weight_map = json.loads(index.read_text())["weight_map"]
            if not isinstance(weight_map, dict):
                raise ValueError("weight_map is not an object")
            return [root / name for name in sorted(set(map(str, weight_map.values())))]
    return [root / WEIGHTS] if (root / WEIGHTS).is_file() else []


def check_weights(directory) -> None:
    """Open every weights file's header: a truncated, garbage or missing shard is named before loading."""
    from safetensors import safe_open

    for path in weight_files(directory):
        if not path.is_file():
            raise UserError(f"checkpoint {directory}: weights file {path.name} (named by {INDEX}) is missing")
        with reading(path, "weights file"), safe_open(str(path), framework="pt") as f:
            f.keys()


def load_config(config_class, directory):
    """``config_class.from_pretrained(directory)``; a wrongly typed field is one line naming config.json."""
    with reading(Path(directory) / "config.json", "config"):
        return config_class.from_pretrained(directory, local_files_only=True)


def meta_model(model_class, config, directory):
    """The model of a checkpoint's config on the meta device; a config the model cannot be built from
    (a negative size, heads that do not divide the width) is one line naming config.json."""
    with reading(Path(directory) / "config.json", "config"), torch.device("meta"):
        return model_class(config)


def load_model(model_class, directory, **kwargs):
    """``model_class.from_pretrained(directory, ...)`` after checking every weights file; weights that are
    missing or of another shape than the config gives are refused, not replaced by random values."""
    check_weights(directory)
    with reading(directory, "checkpoint"):
        model, info = model_class.from_pretrained(directory, local_files_only=True, output_loading_info=True,
                                                  ignore_mismatched_sizes=True, **kwargs)
    missing = sorted(info.get("missing_keys") or ())
    if missing:
        raise UserError(f"checkpoint {directory}: its weights lack {len(missing)} tensor(s) the model needs "
                        f"(first: {missing[0]}); refused rather than run with random values")
    mismatched = sorted(info.get("mismatched_keys") or ())
    if mismatched:
        key, stored, wanted = mismatched[0]
        raise UserError(f"checkpoint {directory}: {len(mismatched)} weight(s) do not have the shapes its config.json "
                        f"gives (first: {key} is {list(stored)}, the model needs {list(wanted)})")
    return model


def load_processor(directory):
    """The checkpoint's own processor (AutoProcessor)."""
    from transformers import AutoProcessor

    with reading(directory, "processor of checkpoint"):
        return AutoProcessor.from_pretrained(directory, local_files_only=True)


def load_tokenizer(directory):
    """The checkpoint's own tokenizer (AutoTokenizer)."""
    from transformers import AutoTokenizer

    with reading(directory, "tokenizer of checkpoint"):
        return AutoTokenizer.from_pretrained(directory, local_files_only=True)
