"""``--launcher ray``: every cell is a Ray task, on a local Ray or on an existing cluster.

:class:`RayLauncher` offers ``submit(spec) -> concurrent.futures.Future`` as the other launchers
do. The matrix submits every cell at once and Ray runs as many at a time as the cluster's
resources allow: a cell asks for one GPU (``num_gpus=1``) when its device is ``cuda`` and for
``--cpus-per-cell`` CPUs (default 1) otherwise; the cell's torch runs on that many threads.
Inside the task the cell runs in a fresh child process (:func:`bench.launch.process.run_process`),
so an OOM or a crash of the cell becomes the cell's status and cannot kill the Ray worker. The
record gains a ``launcher`` entry::

    {"name": "ray", "node": "10.0.0.7", "node_id": "...", "accelerator_type": "H100",
     "gpu_ids": ["0"], "cpus": 1, "address": "auto"}

The code travels with the job: ``ray.init`` gets ``runtime_env={"py_modules": [bench,
architectures, compressors, tasks]}``, so a node needs viperbench's dependencies (torch,
transformers, ...) but neither viperbench nor the driver's paths.

Where Ray runs: ``--ray-address`` (``auto``, ``host:port``, or ``ray://host:port`` for Ray
Client), else ``$VIPERBENCH_RAY_ADDRESS``, else ``$RAY_ADDRESS``; with none of them a local Ray
is started (once per process, ``$VIPERBENCH_RAY_NUM_CPUS`` CPUs, default all cores).
``$VIPERBENCH_RAY_ACCELERATOR`` (``H100``, ``A100``, ... as Ray names them) pins every cell of the
run to nodes of that type, so a matrix compares like with like.

Failures:

* A cell that fails in Python fails in its child process: an ``error`` record, never retried.
  An exception in the task itself is not retried either (``retry_exceptions=False``).
* A task lost with its worker or node (node died, worker crashed, Ray's memory monitor) is
  retried by Ray up to ``--ray-retries`` times (default 2) on the nodes left; after that the cell
  is recorded as ``error`` with a one-line message naming the Ray error (a lost node's message
  names its IP and node ID), ``oom`` when Ray's memory monitor killed it. Only the attempt that
  finishes makes a record: nothing is duplicated, and ``--resume`` re-runs ``error`` cells.

Notes:

* Ray chooses the GPU, so a device index (``cuda:1``) is ignored under Ray: the cell runs
  on ``cuda`` (the GPU Ray assigned, listed in ``gpu_ids``); the record keeps the spec as
  given, so ``--resume`` still matches it.
* If Ray was initialised by the caller (a notebook), that Ray and its runtime_env are used as
  they are.
"""

from __future__ import annotations

import logging
import math
import os
import sys
import threading
from concurrent.futures import Future

from bench.errors import UserError
from bench.records import environment, make_record
from bench.spec import CellSpec

ENV_ADDRESS = "VIPERBENCH_RAY_ADDRESS"
ENV_ACCELERATOR = "VIPERBENCH_RAY_ACCELERATOR"
ENV_NUM_CPUS = "VIPERBENCH_RAY_NUM_CPUS"
INSTALL_HINT = "the ray launcher needs ray: pip install 'viperbench[distributed]'"
DEFAULT_RETRIES = 2  # a cell lost with its node or worker is run again up to this many times
CODE_PACKAGES = ("bench", "architectures", "compressors", "tasks")  # shipped to the nodes with the job
CHILD_ENV = {"PYTHONSAFEPATH": "1"}  # a cell's child imports the shipped code, not the worker's working directory

# ray.init is done once per process; "local" is True when this module started the Ray instance
# (then a resource no node has can never appear), False for a cluster, None if someone else did.
_state: dict = {"initialized": False, "local": None, "address": None, "remote": None, "warned": set()}


def _ray():
    try:
        import ray
    except ImportError:
        raise UserError(INSTALL_HINT) from None
    return ray


def _num_cpus() -> int | None:
    text = os.environ.get(ENV_NUM_CPUS, "").strip()
    if not text:
        return None
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value <= 0:
        raise UserError(f"{ENV_NUM_CPUS} must be a positive integer, got {text!r}")
    return value


def accelerator_type() -> str | None:
    return os.environ.get(ENV_ACCELERATOR, "").strip() or None


def cluster_address(flag: str | None = None) -> str | None:
    """``--ray-address``, else ``$VIPERBENCH_RAY_ADDRESS``, else ``$RAY_ADDRESS``; None: start a local Ray."""
    for value in (flag, os.environ.get(ENV_ADDRESS), os.environ.get("RAY_ADDRESS")):
        if value is not None and value.strip():
            return value.strip()
    return None


def runtime_env() -> dict:
    """The job's code, shipped by Ray to every node (``py_modules``): no shared path, no install needed."""
    import importlib

    return {"py_modules": [importlib.import_module(name) for name in CODE_PACKAGES],
            "excludes": ["__pycache__", "*.pyc"]}


def init_ray(address: str | None = None):
    """Start or connect to Ray once per process (lazily); returns the ``ray`` module.

    ``address``: ``--ray-address`` (see :func:`cluster_address` for the fallbacks)."""
    ray = _ray()
    if _state["initialized"] and ray.is_initialized():
        return ray
    address = cluster_address(address)
    if ray.is_initialized():  # started by the caller (a test, a notebook): use it as it is
        _state.update(initialized=True, local=None, address="existing")
        return ray
    kwargs = {"ignore_reinit_error": True, "log_to_driver": False, "logging_level": logging.WARNING,
              "runtime_env": runtime_env()}
    if address is None or not address.startswith("ray://"):
        kwargs["include_dashboard"] = False
    if address is None:
        kwargs.update(address="local", num_cpus=_num_cpus())
    else:
        kwargs["address"] = address
    try:
        ray.init(**kwargs)
    except Exception as exc:  # noqa: BLE001 - any failure to start/connect is a setup problem
        where = f"connect to Ray at {address!r}" if address else "start a local Ray"
        raise UserError(f"could not {where}: {_first_line(exc)}") from None
    _state.update(initialized=True, local=address is None, address=address or "local")
    cpus = int(ray.cluster_resources().get("CPU", 0))
    if address is None:
        print(f"ray: started a local Ray with {cpus} CPUs", file=sys.stderr)
    else:
        print(f"ray: connected to {address} ({len(_alive_nodes(ray))} nodes, {cpus} CPUs)", file=sys.stderr)
    return ray


def shutdown() -> None:
    """Shut Ray down if it is running and forget this module's state."""
    try:
        import ray
    except ImportError:
        return
    if ray.is_initialized():
        ray.shutdown()
    _state.update(initialized=False, local=None, address=None, remote=None, warned=set())


def task_options(spec: CellSpec, cpus_per_cell: int = 1, retries: int = DEFAULT_RETRIES) -> dict:
    """Ray resources for one cell: one GPU for cuda, ``cpus_per_cell`` CPUs otherwise.

    ``max_retries`` re-runs a task lost with its worker or node; an exception is never retried."""
    opts: dict = {"max_retries": retries, "retry_exceptions": False,
                  "name": f"viperbench:{spec.arch}:{spec.frames}"}
    if spec.device.startswith("cuda"):
        opts["num_gpus"] = 1
    else:
        opts["num_cpus"] = cpus_per_cell
    acc = accelerator_type()
    if acc:
        opts["accelerator_type"] = acc
    return opts


def _alive_nodes(ray) -> list[dict]:
    return [node for node in ray.nodes() if node.get("Alive")]


def _check_feasible(ray, opts: dict) -> None:
    """A request no node of the cluster offers would wait forever: fail at once on the local Ray
    this module started, warn once on a cluster (an autoscaler may still add such a node)."""
    have = ray.cluster_resources()
    need = []
    if opts.get("num_gpus") and have.get("GPU", 0) < opts["num_gpus"]:
        need.append("a GPU")
    cpus = opts.get("num_cpus") or 0
    if cpus > 1:  # a cell cannot span nodes: one node must have them all
        largest = max((node.get("Resources", {}).get("CPU", 0) for node in _alive_nodes(ray)), default=0)
        if largest < cpus:
            need.append(f"{cpus} CPUs (the largest node has {largest:g})")
    acc = opts.get("accelerator_type")
    if acc and f"accelerator_type:{acc}" not in have:
        known = sorted(k.split(":", 1)[1] for k in have if k.startswith("accelerator_type:"))
        need.append(f"accelerator type {acc!r} (the cluster has: {', '.join(known) or 'none'})")
    if not need:
        return
    message = f"no Ray node offers {' and '.join(need)}"
    if _state["local"]:
        raise UserError(f"{message}; give --ray-address of a cluster that does, or run on cpu")
    if message not in _state["warned"]:
        _state["warned"].add(message)
        print(f"ray: warning: {message} yet; cells wait until such a node joins", file=sys.stderr)


def _remote():
    if _state["remote"] is None:
        _state["remote"] = _ray().remote(_cell_task)
    return _state["remote"]


class RayLauncher:
    """``submit(spec)`` sends the cell to Ray as a task at once; Ray runs as many as the resources allow.

    ``capacity`` (cells in flight) is ``jobs``, or unbounded: every cell is submitted, and the
    cluster (or its autoscaler) sees the whole demand."""

    name = "ray"

    def __init__(self, cpus_per_cell: int = 1, address: str | None = None, jobs: int | None = None,
                 retries: int = DEFAULT_RETRIES):
        self.ray = init_ray(address)
        self.cpus_per_cell, self.retries = cpus_per_cell, retries
        self.capacity = jobs or math.inf
        self._pending: dict = {}  # ObjectRef -> Future, for cancel
        self._lock = threading.Lock()

    def submit(self, spec: CellSpec) -> Future:
        opts = task_options(spec, self.cpus_per_cell, self.retries)
        _check_feasible(self.ray, opts)
        threads = opts.get("num_cpus")
        ref = _remote().options(**opts).remote(spec, threads, opts.get("accelerator_type"), _state["address"])
        future: Future = Future()
        future.set_running_or_notify_cancel()
        with self._lock:
            self._pending[ref] = future

        def finished(ray_future) -> None:  # runs on a Ray thread when the task ends
            with self._lock:
                self._pending.pop(ref, None)
            try:
                future.set_result(outcome(ray_future.result, spec, self.retries))
            except BaseException as exc:  # noqa: BLE001 - handed to whoever waits on the future
                future.set_exception(exc)

        ref.future().add_done_callback(finished)
        return future

    def close(self, cancel: bool = False) -> None:
        """With ``cancel``, every task not finished is cancelled (a running cell's child process is killed)."""
        if not cancel:
            return
        with self._lock:
            refs = list(self._pending)
        for ref in refs:
            try:
                self.ray.cancel(ref)
            except Exception:  # noqa: BLE001 - best effort, e.g. the task just finished
                pass


def outcome(get, spec: CellSpec, retries: int = 0) -> dict:
    """``get()``'s record; a failed Ray task (``get`` raising a Ray error) becomes an error or oom record."""
    ray = _ray()
    try:
        return get()
    except ray.exceptions.RayError as exc:
        return failure_record(spec, exc, retries)


LOST = ("NodeDiedError", "WorkerCrashedError", "OutOfMemoryError", "LocalRayletDiedError")


def failure_record(spec: CellSpec, exc: BaseException, retries: int = 0) -> dict:
    """A record for a cell whose Ray task failed; the error names the Ray exception, on one line
    (for a lost node its message names the node's IP and ID)."""
    ray = _ray()
    status = "oom" if isinstance(exc, ray.exceptions.OutOfMemoryError) else "error"
    cause = getattr(exc, "cause", None) if isinstance(exc, ray.exceptions.RayTaskError) else None
    detail = _first_line(cause if cause is not None else exc)
    after = f" after {retries} retr{'y' if retries == 1 else 'ies'}" if retries and type(exc).__name__ in LOST else ""
    error = f"ray task failed{after}: {type(exc).__name__}: {detail}"[:500]
    record = make_record(spec.to_dict(), _driver_environment(spec.device), status=status, error=error)
    record["launcher"] = {"name": "ray", "node": None, "node_id": None, "accelerator_type": accelerator_type(),
                          "gpu_ids": [], "address": _state["address"]}
    return record


def _first_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[0] if lines else type(exc).__name__


def _driver_environment(device: str) -> dict:
    """The environment for a record made on the driver, which may have no GPU of its own."""
    try:
        return environment(device)
    except Exception:  # noqa: BLE001 - e.g. a cuda cell on a CPU-only head node
        env = environment("cpu")
        env["device_name"] = f"unknown ({device} on a Ray node)"
        return env


# --- inside the Ray worker ---------------------------------------------------------------------

def _node_accelerator(ray, node_id: str) -> str | None:
    try:
        for node in ray.nodes():
            if node.get("NodeID") == node_id:
                types = [k.split(":", 1)[1] for k in node.get("Resources", {}) if k.startswith("accelerator_type:")]
                return types[0] if types else None
    except Exception:  # noqa: BLE001 - informational only
        pass
    return None


def _cell_task(spec: CellSpec, threads: int | None, requested_accelerator: str | None, address: str | None) -> dict:
    """The Ray task: one cell in a fresh child process on ``threads`` threads; returns its record.

    The child imports the code Ray shipped: runtime_env's py_modules are on the worker's PYTHONPATH,
    which the child inherits; ``PYTHONSAFEPATH`` keeps the worker's working directory (which may hold
    another checkout) off the child's ``sys.path`` (Python 3.11+)."""
    import ray

    from bench.launch.process import run_process, timed

    ctx = ray.get_runtime_context()
    node_id = ctx.get_node_id()
    gpu_ids = [str(i) for i in ctx.get_accelerator_ids().get("GPU", [])]
    run_spec = spec.replace(device="cuda") if spec.device.startswith("cuda:") else spec
    record = timed(run_process, run_spec, None, threads, CHILD_ENV)
    record["spec"] = spec.to_dict()
    record["launcher"] = {
        "name": "ray",
        "node": ray.util.get_node_ip_address(),
        "node_id": node_id,
        "accelerator_type": _node_accelerator(ray, node_id) or requested_accelerator,
        "gpu_ids": gpu_ids,
        "cpus": threads,
        "address": address,
    }
    return record
