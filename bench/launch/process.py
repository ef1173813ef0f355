"""Where a cell runs: in this process, or in a fresh child process; both behind ``submit(spec) -> Future``.

``process`` isolates cells (an OOM or a crash cannot poison the next one) and is what
max-frames probes use. The child is ``python -m bench.launch.worker``: it reads a spec as JSON
on stdin and prints its record on a line starting with ``RECORD_PREFIX``; it dies with
the process that started it, also when that one is killed (``bench.launch.lifeline``).

A launcher object (:class:`InlineLauncher`, :class:`ProcessLauncher`, and the Ray one in
``bench.launch.ray_cluster``) offers ``submit(spec)``, returning a ``concurrent.futures.Future``
whose result is the cell's record (with ``wall_s``, the seconds the cell ran), and ``capacity``,
how many cells it runs at once. ``bench.launch.launchers.open_launcher`` builds one by name.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from concurrent.futures import Future, ThreadPoolExecutor

from bench.launch.lifeline import PARENT_ENV
from bench.records import environment, make_record
from bench.spec import CellSpec

RECORD_PREFIX = "viperbench-record "
THREADS_ENV = "VIPERBENCH_THREADS"  # the worker sets torch's threads to this many

# Fixed malloc thresholds make freed buffers go back to the OS at once, so the child's
# resident memory tracks what torch really holds.
CHILD_ENV = {"MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "65536"}


def run_inline(spec: CellSpec) -> dict:
    from bench.measure.runner import run_cell  # torch is imported when a cell runs here, not before

    return run_cell(spec)


def run_process(spec: CellSpec, timeout: float | None = None, threads: int | None = None,
                extra_env: dict | None = None) -> dict:
    """Run one cell in a child process and return its record, also when the child dies.

    ``threads``: the child runs torch (and OpenMP) on that many threads; default: torch's own choice.
    ``extra_env``: more environment variables for the child."""
    env = {**os.environ, **CHILD_ENV, **(extra_env or {}), PARENT_ENV: str(os.getpid())}
    if threads is not None:
        env.update({THREADS_ENV: str(threads), "OMP_NUM_THREADS": str(threads)})
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


def timed(run, spec: CellSpec, *args) -> dict:
    """``run(spec, *args)``'s record with ``wall_s``: the seconds the cell ran (queueing excluded)."""
    t0 = time.perf_counter()
    record = run(spec, *args)
    record["wall_s"] = time.perf_counter() - t0
    return record


class InlineLauncher:
    """Each cell in this process, one at a time: ``submit`` runs the cell and returns a finished Future."""

    name = "inline"
    capacity = 1

    def submit(self, spec: CellSpec) -> Future:
        future: Future = Future()
        future.set_running_or_notify_cancel()
        try:
            future.set_result(timed(run_inline, spec))
        except Exception as exc:  # noqa: BLE001 - the caller sees it from future.result()
            future.set_exception(exc)
        return future

    def close(self, cancel: bool = False) -> None:
        pass


class ProcessLauncher:
    """Each cell in a fresh child process; up to ``jobs`` children at once (default 1, so timings stay clean).

    The children are started from the pool's threads, which wait for them: a child's lifeline
    (the kernel's death signal) is tied to the thread that started it."""

    name = "process"

    def __init__(self, jobs: int = 1, threads: int | None = None):
        self.capacity, self.threads = jobs, threads
        self._pool = ThreadPoolExecutor(max_workers=jobs, thread_name_prefix="viperbench-cell")

    def submit(self, spec: CellSpec) -> Future:
        return self._pool.submit(timed, run_process, spec, None, self.threads)

    def close(self, cancel: bool = False) -> None:
        """Cells not started yet are dropped with ``cancel``; running children finish first."""
        self._pool.shutdown(wait=not cancel, cancel_futures=cancel)
