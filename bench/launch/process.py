"""Where a cell runs: in this process, or in a fresh child process.

``process`` isolates cells (an OOM or a crash cannot poison the next one) and is what
max-frames probes use. The child is ``python -m bench.launch.worker``: it reads a spec as JSON
on stdin and prints its record on a line starting with ``RECORD_PREFIX``; it dies with
the process that started it, also when that one is killed (``bench.launch.lifeline``).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

from bench.launch.lifeline import PARENT_ENV
from bench.records import environment, make_record
from bench.measure.runner import run_cell
from bench.spec import CellSpec

RECORD_PREFIX = "viperbench-record "

# Fixed malloc thresholds make freed buffers go back to the OS at once, so the child's
# resident memory tracks what torch really holds.
CHILD_ENV = {"MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "65536"}


def run_inline(spec: CellSpec) -> dict:
    return run_cell(spec)


def run_process(spec: CellSpec, timeout: float | None = None) -> dict:
    """Run one cell in a child process and return its record, also when the child dies."""
    env = {**os.environ, **CHILD_ENV, PARENT_ENV: str(os.getpid())}
    try:
        proc = subprocess.run([sys.executable, "-m", "bench.launch.worker"], input=json.dumps(spec.to_dict()),
                              capture_output=True, text=True, env=env, timeout=timeout)
    except subprocess.TimeoutExpired:
        return make_record(spec.to_dict(), environment(spec.device), status="error",
                           error=f"cell timed out after {timeout} s")
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith(RECORD_PREFIX):
            return json.loads(line[len(RECORD_PREFIX):])
    if proc.returncode in (-signal.SIGKILL, 137):
        status, error = "oom", "child process killed (SIGKILL), most likely by the kernel's OOM killer"
    else:
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        status, error = "error", f"child process exited with code {proc.returncode}: {last}"
    return make_record(spec.to_dict(), environment(spec.device), status=status, error=error)


def run_ray(spec: CellSpec) -> dict:
    """A Ray task per cell (bench.launch.ray_cluster); ray is imported only when this launcher runs."""
    from bench.launch.ray_cluster import run_ray as _run_ray

    return _run_ray(spec)


LAUNCHERS = {"inline": run_inline, "process": run_process, "ray": run_ray}
