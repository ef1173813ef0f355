"""``--launcher ray``: every cell is a Ray task, on a local Ray or on an existing cluster.

A cell asks Ray for one GPU slot when its device is ``cuda`` (``num_gpus=1``) and for one
CPU slot otherwise (``num_cpus=1``). Inside the task the cell runs in a fresh child process
(:func:`bench.launch.process.run_process`), so an OOM or a crash of the cell becomes the cell's
status and cannot kill the Ray worker. The record gains a ``launcher`` entry::

    {"name": "ray", "node": "10.0.0.7", "node_id": "...", "accelerator_type": "H100",
     "gpu_ids": ["0"], "address": "auto"}

Configuration comes from environment variables, so the CLI needs no extra flags:

``VIPERBENCH_RAY_ADDRESS``
    Unset or empty: start a local Ray on demand (once per process). ``auto`` or
    ``host:port`` connects to a running cluster; ``ray://host:port`` connects through Ray
    Client. The cluster's nodes need viperbench importable (installed, or a shared checkout).
``VIPERBENCH_RAY_ACCELERATOR``
    Optional accelerator type (``H100``, ``A100``, ... as Ray names them): every cell of
    the run is pinned to nodes of that type, so a matrix compares like with like.
``VIPERBENCH_RAY_NUM_CPUS``
    CPUs of the local Ray started on demand (default: all cores). Ignored for a cluster.

Notes:

* Ray sets ``OMP_NUM_THREADS`` to the task's CPU slots (1), and the cell's child process
  inherits it: CPU cells run on one thread, unlike ``inline``/``process`` (the record's
  ``env.device_name`` shows the thread count).
* Ray chooses the GPU, so a device index (``cuda:1``) is ignored under Ray: the cell runs
  on ``cuda`` (the GPU Ray assigned, listed in ``gpu_ids``); the record keeps the spec as
  given, so ``--resume`` still matches it.
* If the Ray task itself fails (worker died, node lost, ...), the cell is recorded as
  ``error`` with a one-line message naming the Ray error (``oom`` when Ray's memory
  monitor killed it). Tasks are not retried: ``--resume`` re-runs ``error`` cells.
* :func:`run_many` submits all cells at once: use it to spread a matrix over many
  machines; on a single machine, concurrent cells compete for cores and memory bandwidth.
"""

from __future__ import annotations

import logging
import os
import site
import sys
from pathlib import Path

from bench.errors import UserError
from bench.records import environment, make_record
from bench.spec import CellSpec

ENV_ADDRESS = "VIPERBENCH_RAY_ADDRESS"
ENV_ACCELERATOR = "VIPERBENCH_RAY_ACCELERATOR"
ENV_NUM_CPUS = "VIPERBENCH_RAY_NUM_CPUS"
INSTALL_HINT = "the ray launcher needs ray: pip install 'viperbench[distributed]'"

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


def init_ray():
    """Start or connect to Ray once per process (lazily); returns the ``ray`` module."""
    ray = _ray()
    if _state["initialized"] and ray.is_initialized():
        return ray
    address = os.environ.get(ENV_ADDRESS, "").strip() or None
    if ray.is_initialized():  # started by the caller (a test, a notebook): use it as it is
        _state.update(initialized=True, local=None, address="existing")
        return ray
    kwargs = {"ignore_reinit_error": True, "log_to_driver": False, "logging_level": logging.WARNING}
    if address is None or not address.startswith("ray://"):
        kwargs["include_dashboard"] = False
    if address is None:
        num_cpus = _num_cpus()
        kwargs.update(address="local", num_cpus=num_cpus)
    else:
        kwargs["address"] = address
    try:
        ray.init(**kwargs)
    except Exception as exc:  # noqa: BLE001 - any failure to start/connect is a setup problem
        where = f"connect to Ray at {address!r}" if address else "start a local Ray"
        raise UserError(f"could not {where}: {_first_line(exc)}") from None
    _state.update(initialized=True, local=address is None, address=address or "local")
    if address is None:
        cpus = int(ray.cluster_resources().get("CPU", 0))
        print(f"ray: started a local Ray with {cpus} CPUs", file=sys.stderr)
    else:
        print(f"ray: connected to {address}", file=sys.stderr)
    return ray


def shutdown() -> None:
    """Shut Ray down if it is running and forget this module's state."""
    try:
        import ray
    except ImportError:
        return
    if ray.is_initialized():
        ray.shutdown()
    _state.update(initialized=False, local=None, address=None, warned=set())


def task_options(spec: CellSpec) -> dict:
    """Ray resources for one cell: one GPU slot for cuda, one CPU slot otherwise."""
    opts: dict = {"max_retries": 0, "retry_exceptions": False, "name": f"viperbench:{spec.arch}:{spec.frames}"}
    if spec.device.startswith("cuda"):
        opts["num_gpus"] = 1
    else:
        opts["num_cpus"] = 1
    acc = accelerator_type()
    if acc:
        opts["accelerator_type"] = acc
    return opts


def _check_feasible(ray, opts: dict) -> None:
    """A request no node of the cluster offers would wait forever: fail at once on the local Ray
    this module started, warn once on a cluster (an autoscaler may still add such a node)."""
    have = ray.cluster_resources()
    need = []
    if opts.get("num_gpus") and have.get("GPU", 0) < opts["num_gpus"]:
        need.append("a GPU")
    acc = opts.get("accelerator_type")
    if acc and f"accelerator_type:{acc}" not in have:
        known = sorted(k.split(":", 1)[1] for k in have if k.startswith("accelerator_type:"))
        need.append(f"accelerator type {acc!r} (the cluster has: {', '.join(known) or 'none'})")
    if not need:
        return
    message = f"no Ray node offers {' and '.join(need)}"
    if _state["local"]:
        raise UserError(f"{message}; set {ENV_ADDRESS} to a cluster that does, or run on cpu")
    if message not in _state["warned"]:
        _state["warned"].add(message)
        print(f"ray: warning: {message} yet; cells wait until such a node joins", file=sys.stderr)


def _remote():
    ray = init_ray()
    if _state["remote"] is None:
        _state["remote"] = ray.remote(_cell_task)
    return _state["remote"]


def submit(spec: CellSpec):
    """Submit one cell as a Ray task; returns its ObjectRef."""
    remote = _remote()
    opts = task_options(spec)
    _check_feasible(_ray(), opts)
    return remote.options(**opts).remote(spec, opts.get("accelerator_type"), _state["address"])


def collect(ref, spec: CellSpec) -> dict:
    """Wait for one cell's task; a failed task becomes an error (or oom) record."""
    ray = _ray()
    try:
        return ray.get(ref)
    except KeyboardInterrupt:
        ray.cancel(ref)  # raises in the task: subprocess.run kills the cell's child process
        raise
    except ray.exceptions.RayError as exc:
        return failure_record(spec, exc)


def run_ray(spec: CellSpec) -> dict:
    """``LAUNCHERS["ray"]``: run one cell as a Ray task and wait for its record."""
    return collect(submit(spec), spec)


def run_many(specs: list[CellSpec]) -> list[dict]:
    """Submit every cell at once, then gather the records in the order of ``specs``."""
    ray = init_ray()
    refs = [submit(spec) for spec in specs]
    records = []
    try:
        for ref, spec in zip(refs, specs):
            records.append(collect(ref, spec))
    except KeyboardInterrupt:
        for ref in refs[len(records):]:
            ray.cancel(ref)
        raise
    return records


def failure_record(spec: CellSpec, exc: BaseException) -> dict:
    """A record for a cell whose Ray task failed; the error names the Ray exception, on one line."""
    ray = _ray()
    status = "oom" if isinstance(exc, ray.exceptions.OutOfMemoryError) else "error"
    cause = getattr(exc, "cause", None) if isinstance(exc, ray.exceptions.RayTaskError) else None
    detail = _first_line(cause if cause is not None else exc)
    error = f"ray task failed: {type(exc).__name__}: {detail}"[:500]
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

def _child_can_import_bench() -> None:
    """The cell's child runs ``python -m bench.launch.worker``: make it import the same viperbench this
    worker imported, also when that is a checkout that is not installed (Ray passes the driver's
    sys.path to its workers, but not to their child processes)."""
    root = str(Path(__file__).resolve().parents[2])
    sites = {str(Path(p).resolve()) for p in [*site.getsitepackages(), site.getusersitepackages()]}
    if root in sites:
        return
    parts = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    if root not in parts:
        os.environ["PYTHONPATH"] = os.pathsep.join([root, *parts])


def _node_accelerator(ray, node_id: str) -> str | None:
    try:
        for node in ray.nodes():
            if node.get("NodeID") == node_id:
                types = [k.split(":", 1)[1] for k in node.get("Resources", {}) if k.startswith("accelerator_type:")]
                return types[0] if types else None
    except Exception:  # noqa: BLE001 - informational only
        pass
    return None


def _cell_task(spec: CellSpec, requested_accelerator: str | None, address: str | None) -> dict:
    """The Ray task: one cell in a fresh child process; returns its (JSON-serialisable) record."""
    import ray

    from bench.launch.process import run_process

    _child_can_import_bench()
    ctx = ray.get_runtime_context()
    node_id = ctx.get_node_id()
    gpu_ids = [str(i) for i in ctx.get_accelerator_ids().get("GPU", [])]
    run_spec = spec.replace(device="cuda") if spec.device.startswith("cuda:") else spec
    record = run_process(run_spec)
    record["spec"] = spec.to_dict()
    record["launcher"] = {
        "name": "ray",
        "node": ray.util.get_node_ip_address(),
        "node_id": node_id,
        "accelerator_type": _node_accelerator(ray, node_id) or requested_accelerator,
        "gpu_ids": gpu_ids,
        "address": address,
    }
    return record
