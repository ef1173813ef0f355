"""``serve --engine vllm``: vLLM's own benchmarks run as child processes in vLLM's environment, their output
parsed into a serving record.

- ``vllm bench throughput`` (offline, every request at once) measures the elapsed time and the tokens/s;
- ``vllm bench serve`` measures TTFT and TPOT (mean, median, p90, p99): viperbench starts vLLM's OpenAI API
  server as a child on a free loopback port with the same engine settings, waits until ``/health``
  answers, runs the serving benchmark against it (random dataset, exact lengths, request rate inf,
  ``--ignore-eos``, ``--save-result``) and stops the server (SIGINT, as Ctrl-C does).

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
import signal
import socket
import subprocess
import tempfile
import time
import urllib.request
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


def engine_args(model: str, *, input_len: int, output_len: int, dtype: str, max_num_seqs: int | None,
                max_num_batched_tokens: int | None, block_size: int | None, kv_blocks: int | None, seed: int,
                gpu_memory_utilization: float | None = None) -> list[str]:
    """The engine's flags, the same for the offline benchmark and the API server: prefix caching off (random
    prompts share no prefix, and NemotronH's Mamba prefill fails with it on CPU)."""
    args = ["--model", model, "--tokenizer", model, "--dtype", dtype, "--max-model-len", str(input_len + output_len),
            "--no-enable-prefix-caching", "--seed", str(seed)]
    for flag, value in (("--max-num-seqs", max_num_seqs), ("--max-num-batched-tokens", max_num_batched_tokens),
                        ("--block-size", block_size), ("--num-gpu-blocks-override", kv_blocks),
                        ("--gpu-memory-utilization", gpu_memory_utilization)):
        if value is not None:
            args += [flag, str(value)]
    return args


def dataset_args(*, input_len: int, output_len: int, num_prompts: int, seed: int) -> list[str]:
    """Random prompts of exact lengths (both benchmarks' random dataset)."""
    return ["--dataset-name", "random", "--random-input-len", str(input_len), "--random-output-len",
            str(output_len), "--random-range-ratio", "0", "--num-prompts", str(num_prompts), "--seed", str(seed)]


def throughput_args(model: str, *, num_prompts: int, output_json: str, **settings) -> list[str]:
    """The flags of ``vllm bench throughput`` for one run."""
    data = dataset_args(input_len=settings["input_len"], output_len=settings["output_len"], num_prompts=num_prompts,
                        seed=settings["seed"])
    return [*engine_args(model, **settings), *data, "--output-json", output_json]


def serve_bench_args(model: str, *, port: int, num_prompts: int, result_dir: str, input_len: int, output_len: int,
                     seed: int) -> list[str]:
    """The flags of ``vllm bench serve`` against the server on ``port``: every request at once, none stopping
    early, TTFT/TPOT/ITL/E2EL at the median, p90 and p99."""
    return ["--backend", "vllm", "--host", "127.0.0.1", "--port", str(port), "--endpoint", "/v1/completions",
            "--model", model, "--tokenizer", model,
            *dataset_args(input_len=input_len, output_len=output_len, num_prompts=num_prompts, seed=seed),
            "--request-rate", "inf", "--ignore-eos", "--num-warmups", "0", "--disable-tqdm",
            "--percentile-metrics", "ttft,tpot,itl,e2el", "--metric-percentiles", "50,90,99",
            "--save-result", "--result-dir", result_dir, "--result-filename", "serve.json"]


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
        env = _env(kv_space_bytes)
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


def _env(kv_space_bytes: int | None) -> dict:
    env = dict(os.environ)
    if kv_space_bytes is not None:
        env["VLLM_CPU_KVCACHE_SPACE"] = str(max(1, kv_space_bytes // GIB))
    return env


def free_port() -> int:
    """A loopback port nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(server: subprocess.Popen, port: int, timeout: float, log_path: str) -> None:
    """Until the server's ``/health`` answers 200; EngineFailed if it exits or the time runs out first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise EngineFailed(f"the API server exited ({server.returncode}) before it was ready: "
                               f"{failure_line(Path(log_path).read_text(errors='replace'))}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as reply:
                if reply.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    raise EngineFailed(f"the API server was not ready in {timeout:g} s")


def stop(server: subprocess.Popen, grace: float = 30.0) -> None:
    """Stop the server and its engine core: SIGINT to its process group (as Ctrl-C), SIGKILL after ``grace``."""
    if server.poll() is not None:
        return
    os.killpg(server.pid, signal.SIGINT)
    try:
        server.wait(grace)
    except subprocess.TimeoutExpired:
        os.killpg(server.pid, signal.SIGKILL)
        server.wait()


def run_serve(python: str, model: str, *, kv_space_bytes: int | None, timeout: float, num_prompts: int,
              **settings) -> dict:
    """One ``vllm bench serve`` run against a child API server of the same engine settings: the benchmark's
    saved result and what the server's log says. EngineFailed if either fails."""
    with tempfile.TemporaryDirectory(prefix="viperbench-vllm-serve-") as tmp:
        port, log_path = free_port(), os.path.join(tmp, "server.log")
        env = _env(kv_space_bytes)
        server_cmd = [python, str(ENTRY), "server", *engine_args(model, **settings), "--host", "127.0.0.1",
                      "--port", str(port)]
        with open(log_path, "w") as log:
            try:
                server = subprocess.Popen(server_cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=tmp,
                                          start_new_session=True)
            except OSError as exc:
                raise EngineFailed(f"the API server did not start: {exc.strerror or exc}") from None
        try:
            start = time.monotonic()
            wait_ready(server, port, timeout, log_path)
            bench_cmd = [python, str(ENTRY), "serve", *serve_bench_args(
                model, port=port, num_prompts=num_prompts, result_dir=tmp, input_len=settings["input_len"],
                output_len=settings["output_len"], seed=settings["seed"])]
            left = max(1.0, timeout - (time.monotonic() - start))
            try:
                done = subprocess.run(bench_cmd, capture_output=True, text=True, timeout=left, env=env, cwd=tmp)
            except subprocess.TimeoutExpired:
                raise EngineFailed(f"the serving benchmark did not finish in {timeout:g} s") from None
        finally:
            stop(server)
        text = done.stdout + "\n" + done.stderr
        result_path = os.path.join(tmp, "serve.json")
        if done.returncode != 0 or not os.path.exists(result_path):
            raise EngineFailed(f"the serving benchmark failed (exit {done.returncode}): {failure_line(text)}")
        try:
            result = json.loads(Path(result_path).read_text())
        except ValueError:
            raise EngineFailed("the serving benchmark saved no readable result") from None
        return {"result": result, "log": parse_log(Path(log_path).read_text(errors="replace"))}


def latency_metrics(run: dict) -> dict:
    """TTFT and TPOT of a ``vllm bench serve`` run (its milliseconds as seconds), and its own throughput
    under the ``serve_`` prefix (HTTP, tokenization and detokenization included; the record's tok/s are
    the offline benchmark's)."""
    r = run["result"]
    out = {}
    for m in ("ttft", "tpot"):
        out[f"mean_{m}_s"] = r[f"mean_{m}_ms"] / 1e3
        for p in (50, 90, 99):
            out[f"{m}_p{p}_s"] = r[f"p{p}_{m}_ms"] / 1e3
    out.update(serve_duration_s=r.get("duration"), serve_generated_tok_s=r.get("output_throughput"),
               serve_completed=r.get("completed"))
    return out


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
    """The serving metrics of a measured ``vllm bench throughput`` run (it times the whole batch and gives no
    per-request times: TTFT and TPOT are null until ``latency_metrics`` of a serving run fills them)."""
    result, log = run["result"], run["log"]
    elapsed = result["elapsed_time"]
    generated = log["output_tokens"] if log["output_tokens"] is not None else num_prompts * output_len
    total = result.get("total_num_tokens", num_prompts * (input_len + output_len))
    return {"predicted": False, "elapsed_s": elapsed, "num_requests": result.get("num_requests", num_prompts),
            "generated_tok_s": generated / elapsed, "total_tok_s": total / elapsed,
            "requests_s": result.get("requests_per_second", num_prompts / elapsed),
            **{f"{m}_p{p}_s": None for m in ("ttft", "tpot") for p in (50, 90, 99)},
            "mean_ttft_s": None, "mean_tpot_s": None,
            "kv_cache_tokens": log["kv_cache_tokens"], "block_size": log["block_size"],
            "engine_init_s": log["engine_init_s"]}
