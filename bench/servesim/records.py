"""The serving record: one shape for measured (``engine: "vllm"``) and simulated (``engine: "sim"``) runs.

``spec`` holds what was served and the engine settings (so ``compare`` pairs a simulation with the
measurement of the same settings, and ``table`` pivots on any of them); ``engine`` sits at the top level;
``metrics`` holds the catalogue's serving metrics (``bench.metrics``: generated_tok_s, total_tok_s,
requests_s, TTFT/TPOT percentiles, running sequences, preemptions, KV pool), with ``predicted: true`` on
a simulation.
"""

from __future__ import annotations

from bench.records import make_record

KIND = "serving"
SPEC_KEYS = ("arch", "preset", "checkpoint", "compressor", "frames", "tokens_per_frame", "prompt_tokens",
             "dtype", "device", "input_len", "output_len", "num_prompts", "max_num_seqs", "max_num_batched_tokens",
             "block_size", "gpu_memory_utilization", "kv_space_bytes", "kv_blocks_override")


def serving_spec(**values) -> dict:
    """The spec of a serving record: every key of ``SPEC_KEYS`` (None where not set), nothing else."""
    unknown = set(values) - set(SPEC_KEYS)
    assert not unknown, unknown
    return {k: values.get(k) for k in SPEC_KEYS}


def serving_record(spec: dict, engine: str, env: dict, metrics: dict, *, status: str = "ok",
                   error: str | None = None, settings: dict | None = None) -> dict:
    """A ``kind: "serving"`` record; ``settings``: every setting the engine ran with (its own names)."""
    return make_record(spec, env, status=status, error=error, metrics=metrics, kind=KIND, engine=engine,
                       engine_settings=settings or {})


def serving_records(records: list[dict], engine: str | None = None) -> list[dict]:
    """The serving records of ``records`` (of one engine if given) that ran."""
    return [r for r in records if r.get("kind") == KIND and r.get("status") == "ok"
            and (engine is None or r.get("engine") == engine)]
