"""What every command group shares: the parser class, the cell flags, the summary at the end of a run."""

from __future__ import annotations

import argparse
import sys

# (flag, spec field, help). Each takes one value for `run`, comma lists for `matrix`.
CELL_FLAGS = [
    ("--arch", "arch", "backbone: transformer, mamba, hybrid or a plugin"),
    ("--preset", "preset", "tiny | small | paper (random weights)"),
    ("--checkpoint", "checkpoint", "local transformers checkpoint directory of the arch's family"),
    ("--compressor", "compressor", "name:key=value,... (default none)"),
    ("--frames", "frames", "video frames"),
    ("--tokens-per-frame", "tokens_per_frame", "vision tokens per frame after ToMe (default 16)"),
    ("--prompt-tokens", "prompt_tokens", "instruction tokens after the video (default 64)"),
    ("--new-tokens", "new_tokens", "decode steps after the first token, no stop token (default 32)"),
    ("--batch", "batch", "sequences per batch (default 1)"),
    ("--vision", "vision", "synthetic (random vision embeddings) | siglip (SigLIP tower + ToMe + MLP)"),
    ("--device", "device", "cpu | cuda | cuda:N (default cpu)"),
    ("--dtype", "dtype", "float32 | bfloat16 | float16 (default float32 on cpu, bfloat16 on cuda)"),
    ("--task", "task", "workload (default synthetic)"),
    ("--prefill-chunk", "prefill_chunk", "run the prefill N tokens at a time within each layer"),
    ("--memory-budget", "memory_budget", "e.g. 8GiB: a peak above it counts as OOM"),
    ("--warmup", "warmup", "untimed passes first (default 1)"),
    ("--repeats", "repeats", "timed passes; the record has their median and spread (default 3)"),
    ("--seed", "seed", "random seed (default 0)"),
    ("--logits", "logits", "last (default) | all: the prefill's LM head on every position, as the library's forward"),
    ("--logits-dtype", "logits_dtype", "with --logits all: float32 upcasts them (default: the head's dtype)"),
    ("--frame-batch", "frame_batch", "frames through the vision tower at once: with --vision siglip (default 32), or a real video LLM's own tower (default: the whole video)"),
    ("--decoder", "decoder", "video decoder for tasks that decode videos: pyav | decord | torchcodec (default pyav)"),
]
CELL_LABELS = {dest: flag for flag, dest, _ in CELL_FLAGS}  # numbers are checked in bench.spec, as in a TOML file


class Parser(argparse.ArgumentParser):
    def __init__(self, *args, **kwargs):
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message):  # one line, exit 2
        self.exit(2, f"viperbench: error: {message}\n")


def add_cell_flags(p: argparse.ArgumentParser, lists: bool) -> None:
    for flag, dest, help_ in CELL_FLAGS:
        p.add_argument(flag, dest=dest, default=None, help=help_ + (" (comma list)" if lists else ""))


def cell_values(args) -> dict:
    return {dest: getattr(args, dest) for _, dest, _ in CELL_FLAGS if getattr(args, dest) is not None}


def finish(records: list[dict], output: str | None, table_file=None) -> int:
    from bench.reporting.table import summary

    if records:
        print(summary(records), file=table_file or sys.stdout)
    if output:
        print(f"records appended to {output}", file=sys.stderr)
    return 1 if any(r["status"] == "error" for r in records) else 0


def split(text: str) -> list[str]:
    return [k.strip() for k in text.split(",") if k.strip()]


# a document's cell (eval, flow): the own vision tower, 16 frames, one untimed pass
TASK_CELL_DEFAULTS = {"vision": "siglip", "frames": 16, "warmup": 0, "repeats": 1}


def task_data(spec, data: str | None, command: str) -> tuple[str, str]:
    """The task's data directory and how a record names it: ``--data``, or the data a generating task
    (V-NIAH) makes from the cell's seed."""
    if data is not None:
        return data, data
    from bench.errors import UserError
    from tasks import TASKS

    task = TASKS.get(spec.task)
    if not getattr(task, "generates_data", False):
        raise UserError(f"{command} --task {spec.task} needs --data DIR (the dataset in its official layout)")
    return task.default_data(spec.seed), f"{spec.task} generated from seed {spec.seed}"
