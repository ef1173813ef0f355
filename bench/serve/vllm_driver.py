"""``serve --engine vllm``: vLLM's own offline benchmark (``vllm bench throughput``) run as a child process in
vLLM's environment, its output parsed into a serving record.

vLLM pins its own torch and transformers, so it lives in its own environment: ``--engine-python PATH`` or
the environment variable ``VIPERBENCH_VLLM_PYTHON`` names its interpreter. The child runs
``vllm_entry.py`` (next to this file), which calls the benchmark module as vLLM's CLI does. The
benchmark's JSON (``--output-json``) gives the elapsed time and the tokens; its log gives the KV cache
size in tokens and the attention block size the engine chose.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import tempfile
from pathlib import Path

from bench.errors import UserError

ENV_VAR = "VIPERBENCH_VLLM_PYTHON"
ENTRY = Path(__file__).with_name("vllm_entry.py")
GIB = 2**30


class EngineFailed(Exception):
    """The engine ran and failed: one line saying why (a matrix records it as an ``error`` cell)."""


def engine_python(given: str | None) -> str:
    """The engine's interpreter: ``--engine-python``, else ``$VIPERBENCH_VLLM_PYTHON``; UserError if neither
    names an executable."""
    path = given or os.environ.get(ENV_VAR)
    if not path:
        raise UserError(f"serve --engine vllm needs vLLM's Python: --engine-python PATH or {ENV_VAR} "
                        "(docs/serving.md says how to make that environment)")
    if not (Path(path).is_file() and os.access(path, os.X_OK)):
        raise UserError(f"the engine Python {path} is not an executable file")
    return path


def throughput_args(model: str, *, input_len: int, output_len: int, num_prompts: int, dtype: str,
                    max_num_seqs: int | None, max_num_batched_tokens: int | None, block_size: int | None,
                    kv_blocks: int | None, seed: int, output_json: str,
                    gpu_memory_utilization: float | None = None) -> list[str]:
    """The flags of ``vllm bench throughput`` for one run: random prompts of exact lengths, prefix caching
    off (random prompts share no prefix, and NemotronH's Mamba prefill fails with it on CPU)."""
    args = ["--model", model, "--tokenizer", model, "--dataset-name", "random",
            "--random-input-len", str(input_len), "--random-output-len", str(output_len),
            "--random-range-ratio", "0", "--num-prompts", str(num_prompts), "--dtype", dtype,
            "--max-model-len", str(input_len + output_len), "--no-enable-prefix-caching", "--seed", str(seed),
            "--output-json", output_json]
    for flag, value in (("--max-num-seqs", max_num_seqs), ("--max-num-batched-tokens", max_num_batched_tokens),
                        ("--block-size", block_size), ("--num-gpu-blocks-override", kv_blocks),
                        ("--gpu-memory-utilization", gpu_memory_utilization)):
        if value is not None:
            args += [flag, str(value)]
    return args


_KV_TOKENS = re.compile(r"KV cache size: ([\d,]+) tokens")
_BLOCK = re.compile(r"Setting attention block size to (\d+) tokens")
_OUTPUT = re.compile(r"Total num output tokens:\s+(\d+)")
_INIT = re.compile(r"init engine \(profile, create kv cache, warmup model\) took ([\d.]+) s")
_ENGINE = re.compile(r"^VIPERBENCH_ENGINE (\{.*\})$", re.M)
_WHY = re.compile(r"^(?:\([\w-]+ pid=\d+\) )?(?:ERROR [\d-]+ [\d:]+ \[[^\]]+\] )?([\w.]*(?:Error|Exception): .+)$", re.M)
# errors that only say another one came first (the engine core died, its start failed)
_WRAPPERS = ("EngineDeadError", "Engine core initialization failed", "EngineGenerateError", "See stack trace",
             "See root cause")


def parse_log(text: str) -> dict:
    """What the engine's log says about the run (None where it says nothing)."""
    kv = _KV_TOKENS.findall(text)
    block = _BLOCK.findall(text)
    out = _OUTPUT.findall(text)
    init = _INIT.findall(text)
    engine = _ENGINE.findall(text)
    return {"kv_cache_tokens": int(kv[-1].replace(",", "")) if kv else None,
            "block_size": int(block[-1]) if block else None,
            "output_tokens": int(out[-1]) if out else None,
            "engine_init_s": float(init[-1]) if init else None,
            "engine": json.loads(engine[-1]) if engine else {}}


def failure_line(text: str) -> str:
    """The line of a failed engine's output that says why: its last error line that is not only a wrapper of
    another (vLLM's engine core logs the root cause, then dies with EngineDeadError), or its last line."""
    errors = _WHY.findall(text)
    causes = [e for e in errors if not any(w in e for w in _WRAPPERS)]
    if causes or errors:
        line = (causes or errors)[-1]
    else:
        lines = [ln for ln in text.splitlines() if ln.strip()]
        line = lines[-1] if lines else "no output"
    return re.sub(r"^\(\w+ pid=\d+\) ", "", line).strip()[:300]


def run_throughput(python: str, model: str, *, kv_space_bytes: int | None, timeout: float, **settings) -> dict:
    """One ``vllm bench throughput`` run; its JSON and what its log says. EngineFailed if it fails."""
    with tempfile.TemporaryDirectory(prefix="viperbench-vllm-") as tmp:
        out_json = os.path.join(tmp, "throughput.json")
        env = dict(os.environ)
        if kv_space_bytes is not None:
            env["VLLM_CPU_KVCACHE_SPACE"] = str(max(1, kv_space_bytes // GIB))
        cmd = [python, str(ENTRY), "throughput", *throughput_args(model, output_json=out_json, **settings)]
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, cwd=tmp)
        except subprocess.TimeoutExpired:
            raise EngineFailed(f"the engine did not finish in {timeout:g} s") from None
        except OSError as exc:
            raise EngineFailed(f"the engine did not start: {exc.strerror or exc}") from None
        text = done.stdout + "\n" + done.stderr
        if done.returncode != 0 or not os.path.exists(out_json):
            raise EngineFailed(f"the engine failed (exit {done.returncode}): {failure_line(text)}")
        try:
            result = json.loads(Path(out_json).read_text())
        except ValueError:
            raise EngineFailed("the engine wrote no readable --output-json") from None
    return {"result": result, "log": parse_log(text)}


def check_lengths(model: str, input_len: int, output_len: int) -> None:
    """UserError when a request is longer than the checkpoint's context."""
    try:
        config = json.loads((Path(model) / "config.json").read_text())
    except (OSError, ValueError):
        raise UserError(f"checkpoint {model} has no readable config.json") from None
    limit = config.get("max_position_embeddings")
    if limit and input_len + output_len > limit:
        raise UserError(f"--input-len {input_len} + --output-len {output_len} is beyond the model's context "
                        f"({limit} tokens)")


def metrics_from(run: dict, *, input_len: int, output_len: int, num_prompts: int) -> dict:
    """The serving metrics of a measured run (vLLM's throughput benchmark times the whole batch; it gives no
    per-request times, so TTFT and TPOT are null)."""
    result, log = run["result"], run["log"]
    elapsed = result["elapsed_time"]
    generated = log["output_tokens"] if log["output_tokens"] is not None else num_prompts * output_len
    total = result.get("total_num_tokens", num_prompts * (input_len + output_len))
    return {"predicted": False, "elapsed_s": elapsed, "num_requests": result.get("num_requests", num_prompts),
            "generated_tok_s": generated / elapsed, "total_tok_s": total / elapsed,
            "requests_s": result.get("requests_per_second", num_prompts / elapsed),
            **{f"{m}_p{p}_s": None for m in ("ttft", "tpot") for p in (50, 90, 99)},
            "kv_cache_tokens": log["kv_cache_tokens"], "block_size": log["block_size"],
            "engine_init_s": log["engine_init_s"]}
