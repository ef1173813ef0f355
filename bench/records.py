"""Result records: one JSON object per line, appended and flushed per cell.

A process killed mid-write can leave a partial last line; readers skip it with a
warning, and the next append starts on a fresh line so the damage never spreads.
A line that is valid JSON but not a record's shape (``"spec": null``, ``"metrics": "oops"``,
a list) is skipped the same way, with a warning naming the file, the line and what is wrong.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterator

from bench.errors import UserError
from bench.spec import spec_key

SCHEMA = 1
STATUSES = ("ok", "oom", "error")
# the metrics of the record contract (DESIGN.md) that readers compute with: numbers (or null)
NUMERIC_METRICS = ("input_tokens", "vision_tokens", "tokens_after_compression", "prefill_s", "prefill_tok_s",
                   "ttft_s", "decode_s", "decode_tok_s", "e2e_tok_s", "peak_mem_bytes")
_JSON_TYPES = {dict: "an object", list: "a list", str: "a string", bool: "a boolean", int: "a number",
               float: "a number", type(None): "null"}


@lru_cache(maxsize=None)
def _commit() -> str | None:
    here = Path(__file__).resolve().parent
    try:
        out = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=here, capture_output=True,
                             text=True, timeout=5)
        return out.stdout.strip() or None if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment(device: str, decoder: str | None = None) -> dict[str, Any]:
    """Where a record was made. ``decoder``: the video decoder that decoded its frames, if any; its name
    and version are added."""
    import torch
    import transformers

    if device.startswith("cuda"):
        name = torch.cuda.get_device_name(torch.device(device))
    else:
        name = f"{_cpu_name()} ({os.cpu_count()} cpus, {torch.get_num_threads()} threads)"
    env = {
        "device_name": name,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
        "kernels": kernel_report(device),
        "commit": _commit(),
    }
    if decoder is not None:
        from tasks.video import decoder_version

        env.update(decoder=decoder, decoder_version=decoder_version(decoder))
    return env


def kernel_report(device: str) -> dict[str, Any]:
    """What a cell on ``device`` runs: each Mamba op's implementation (as routed, not merely installed),
    the attention path, and the kernel packages installed. Call after the architecture is imported."""
    from architectures import kernels

    return {"ops": kernels.implementations(device), "bound": kernels.bound(),
            "attention": "torch sdpa (viperbench_sdpa)", "installed": kernels.installed()}


def make_record(spec: dict, env: dict, *, status: str = "ok", error: str | None = None,
                metrics: dict | None = None, task: dict | None = None, **extra) -> dict:
    return {"schema": SCHEMA, "status": status, "error": error, "spec": spec, "env": env,
            "metrics": metrics or {}, "task": task or {"name": spec.get("task"), "metrics": {}, "n": 0}, **extra}


def check_writable(path: str | os.PathLike) -> None:
    """Fail early, with one line, if results cannot be appended to ``path``."""
    p = Path(path)
    try:
        if p.parent and not p.parent.exists():
            p.parent.mkdir(parents=True, exist_ok=True)
        with open(p, "a"):
            pass
    except OSError as exc:
        raise UserError(f"cannot write output {path}: {exc.strerror or exc}") from None


def append_record(path: str | os.PathLike, record: dict) -> None:
    """Append one line and force it to disk; never rewrite what is already there.

    A failed write (disk full, I/O error) prints the record on stdout first, so a long
    measurement is not lost, cuts the file back to the lines it held, and is one UserError.
    """
    line = json.dumps(record, default=str) + "\n"
    try:
        with open(path, "a+b", buffering=0) as f:  # unbuffered: nothing is left to flush after a failure
            start = f.seek(0, os.SEEK_END)
            try:
                if start > 0:
                    f.seek(-1, os.SEEK_END)
                    if f.read(1) != b"\n":
                        line = "\n" + line
                data = memoryview(line.encode())
                while data:
                    data = data[f.write(data):]
                os.fsync(f.fileno())
            except OSError:
                _cut_back(f, start)
                raise
    except OSError as exc:
        print(line.strip(), flush=True)
        raise UserError(f"cannot write output {path}: {exc.strerror or exc}; the record is printed on stdout") \
            from None


def _cut_back(f, size: int) -> None:
    """Drop what a failed write left after the last complete line (best effort: the file may refuse)."""
    try:
        f.truncate(size)
    except OSError:
        pass


def _json_type(value: Any) -> str:
    return _JSON_TYPES.get(type(value), type(value).__name__)


def shape_problem(record: Any) -> str | None:
    """What makes ``record`` not a record (the shape every reader relies on), or None."""
    if not isinstance(record, dict):
        return f"the line is {_json_type(record)}, not an object"
    if record.get("status") not in STATUSES:
        got = "missing" if "status" not in record else f"{record['status']!r}"
        return f"status is {got}, expected one of {', '.join(STATUSES)}"
    spec = record.get("spec")
    if not isinstance(spec, dict):
        return f"spec is {'missing' if 'spec' not in record else _json_type(spec)}, expected an object"
    for key, value in spec.items():
        if isinstance(value, (dict, list)):
            return f"spec.{key} is {_json_type(value)}, expected a string, number, boolean or null"
    for key in ("metrics", "env", "task"):
        if key in record and not isinstance(record[key], dict):
            return f"{key} is {_json_type(record[key])}, expected an object"
    for key in NUMERIC_METRICS:
        value = record.get("metrics", {}).get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
            return f"metrics.{key} is {_json_type(value)}, expected a number or null"
    if "metrics" in record.get("task", {}) and not isinstance(record["task"]["metrics"], dict):
        return f"task.metrics is {_json_type(record['task']['metrics'])}, expected an object"
    if record.get("error") is not None and not isinstance(record["error"], str):
        return f"error is {_json_type(record['error'])}, expected a string or null"
    return None


def iter_records(path: str | os.PathLike, *, warn: bool = True) -> Iterator[dict]:
    """Records of a JSONL file; unparsable lines (e.g. cut by a crash) and lines that are not a record's
    shape (``shape_problem``) are skipped with a warning naming the file and the line."""
    try:
        text = Path(path).read_text()
    except (OSError, UnicodeDecodeError) as exc:
        reason = getattr(exc, "strerror", None) or str(exc)
        raise UserError(f"cannot read results file {path}: {reason}") from None
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError:
            if warn:
                print(f"warning: {path}:{n}: skipping a line that is not valid JSON", file=sys.stderr)
            continue
        problem = shape_problem(record)
        if problem:
            if warn:
                print(f"warning: {path}:{n}: skipping a line that is not a record: {problem}", file=sys.stderr)
            continue
        yield record


def finished_keys(path: str | os.PathLike) -> set[tuple]:
    """Spec keys of cells already measured (status ok or oom) in ``path``; errors are re-run."""
    if not Path(path).exists():
        return set()
    return {spec_key(r["spec"]) for r in iter_records(path) if r["status"] in ("ok", "oom")}

