"""Launchers: inline, process (child deaths become records) and ray (a Ray task per cell), all behind
``submit(spec) -> Future``.

The Ray tests share one local Ray (2 CPUs) started for this module and shut down after it;
they are skipped when ray is not installed. The multi-node cluster with a node killed
mid-matrix is in tests/test_resilience.py.
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

import bench.launch.process
from bench.cli import main
from bench.errors import UserError
from bench.launch.launchers import make_launcher, open_launcher
from bench.launch.process import InlineLauncher, ProcessLauncher, run_process
from bench.records import iter_records
from bench.spec import make_spec

REPO = Path(__file__).resolve().parents[1]
TINY = {"arch": "hybrid", "preset": "tiny", "frames": 2, "prompt_tokens": 4, "new_tokens": 2, "warmup": 0,
        "repeats": 1}
TOKENS = ("input_tokens", "vision_tokens", "tokens_after_compression")


@pytest.fixture(scope="module")
def tiny():
    return make_spec(TINY)


# --- process launcher: a dead child is a record, not an exception ------------------------------

def _fake_child(monkeypatch, returncode: int, stdout: str = "", stderr: str = ""):
    """The cell's child (`python -m bench.launch.worker`) ends as given; other subprocesses (git) run."""
    real_run = subprocess.run

    def fake_run(args, **kwargs):
        if list(args[1:]) != ["-m", "bench.launch.worker"]:
            return real_run(args, **kwargs)
        assert json.loads(kwargs["input"])["arch"] == "hybrid"
        return subprocess.CompletedProcess(args, returncode, stdout=stdout, stderr=stderr)

    monkeypatch.setattr(bench.launch.process.subprocess, "run", fake_run)


def test_process_child_killed_is_oom(monkeypatch, tiny):
    _fake_child(monkeypatch, -9)
    record = run_process(tiny)
    assert record["status"] == "oom"
    assert "SIGKILL" in record["error"] and "\n" not in record["error"]
    assert record["spec"] == tiny.to_dict()


def test_process_child_exit_1_is_error_naming_last_stderr_line(monkeypatch, tiny):
    _fake_child(monkeypatch, 1, stdout="some output\n",
                stderr="Traceback (most recent call last):\n  File \"x.py\", line 1\nValueError: boom\n")
    record = run_process(tiny)
    assert record["status"] == "error"
    assert record["error"] == "child process exited with code 1: ValueError: boom"


def test_process_child_record_line_wins(monkeypatch, tiny):
    line = bench.launch.process.RECORD_PREFIX + json.dumps({"status": "ok", "spec": tiny.to_dict()})
    _fake_child(monkeypatch, 0, stdout=f"noise\n{line}\n")
    assert run_process(tiny)["status"] == "ok"


def test_launchers_import_without_ray():
    """`import bench.launch.launchers` (and process, ray_cluster) neither needs nor imports ray (nor torch);
    opening the ray launcher without ray installed is a one-line UserError."""
    code = (
        "import sys\n"
        "import bench.launch.launchers as l, bench.launch.process, bench.launch.ray_cluster\n"
        "assert 'ray' not in sys.modules, 'a launcher module imported ray'\n"
        "assert 'torch' not in sys.modules, 'a launcher module imported torch'\n"
        "assert 'ray' in l.LAUNCHERS\n"
        "sys.modules['ray'] = None  # as if ray were not installed\n"
        "from bench.errors import UserError\n"
        "try:\n"
        "    l.make_launcher('ray')\n"
        "except UserError as exc:\n"
        "    print('USERERROR', exc)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "USERERROR the ray launcher needs ray: pip install 'viperbench[distributed]'" in out.stdout


def _imports(path: Path) -> set[str]:
    """Every bench.launch module ``path`` imports, at the top or inside a function."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return {name.rsplit(".", 1)[-1] for name in found if name.startswith("bench.launch.")}


def test_launch_modules_import_no_cycle():
    """The launch room's imports (function-level ones included) form no cycle: the registry
    (launchers) sits above process and ray_cluster, and nothing below imports it."""
    folder = REPO / "bench" / "launch"
    graph = {p.stem: _imports(p) for p in folder.glob("*.py") if p.stem != "__init__"}
    assert "ray_cluster" not in graph["process"] and "launchers" not in graph["process"]
    assert "launchers" not in graph["ray_cluster"]

    def visit(node, path):
        assert node not in path, f"import cycle: {' -> '.join([*path, node])}"
        for nxt in graph.get(node, ()):
            visit(nxt, [*path, node])

    for module in graph:
        visit(module, [])


def test_every_launcher_returns_a_future(tiny):
    """inline runs the cell in submit (a finished Future); process in a pool thread, its child on the
    threads asked for; both time the cell."""
    inline = InlineLauncher()
    future = inline.submit(tiny)
    assert future.done() and inline.capacity == 1
    assert future.result()["status"] == "ok" and future.result()["wall_s"] > 0
    with open_launcher("process", jobs=2, cpus_per_cell=1) as process:
        assert isinstance(process, ProcessLauncher) and process.capacity == 2
        record = process.submit(tiny).result(timeout=300)
    assert record["status"] == "ok" and record["spec"] == tiny.to_dict() and record["wall_s"] > 0
    assert "1 threads" in record["env"]["device_name"]


def test_launcher_options_that_do_not_apply_are_refused():
    for name, options, needle in [("inline", {"jobs": 2}, "--jobs"), ("inline", {"cpus_per_cell": 2}, "--cpus-per-cell"),
                                  ("process", {"ray_address": "auto"}, "--ray-address"),
                                  ("process", {"ray_retries": 1}, "--ray-retries"), ("slurm", {}, "slurm")]:
        with pytest.raises(UserError, match=needle):
            make_launcher(name, **options)


# --- ray launcher --------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def ray_local():
    ray = pytest.importorskip("ray")
    from bench.launch import ray_cluster as ray_launcher

    with pytest.MonkeyPatch.context() as mp:
        for name in (ray_launcher.ENV_ADDRESS, ray_launcher.ENV_ACCELERATOR, "RAY_ADDRESS"):
            mp.delenv(name, raising=False)
        mp.setenv(ray_launcher.ENV_NUM_CPUS, "2")
        try:
            ray_launcher.init_ray()  # the launcher's own lazy init: a local Ray with 2 CPUs
            assert ray.cluster_resources()["CPU"] == 2
            yield ray
        finally:
            ray.shutdown()
            ray_launcher.shutdown()


def test_task_options(monkeypatch, tiny):
    from bench.launch import ray_cluster as ray_launcher  # importable without ray: ray is imported when Ray is used

    monkeypatch.delenv(ray_launcher.ENV_ACCELERATOR, raising=False)
    cpu = ray_launcher.task_options(tiny)
    assert cpu["num_cpus"] == 1 and "num_gpus" not in cpu and "accelerator_type" not in cpu
    assert cpu["max_retries"] == ray_launcher.DEFAULT_RETRIES and cpu["retry_exceptions"] is False
    assert ray_launcher.task_options(tiny, cpus_per_cell=4, retries=0)["num_cpus"] == 4
    monkeypatch.setenv(ray_launcher.ENV_ACCELERATOR, "H100")
    gpu = ray_launcher.task_options(tiny.replace(device="cuda:1"), cpus_per_cell=4)
    assert gpu["num_gpus"] == 1 and gpu["accelerator_type"] == "H100" and "num_cpus" not in gpu


def test_cluster_address_precedence(monkeypatch):
    from bench.launch.ray_cluster import ENV_ADDRESS, cluster_address

    monkeypatch.delenv(ENV_ADDRESS, raising=False)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert cluster_address(None) is None  # a local Ray
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.1:6379")
    assert cluster_address(None) == "10.0.0.1:6379"
    monkeypatch.setenv(ENV_ADDRESS, "auto")
    assert cluster_address(None) == "auto"
    assert cluster_address("ray://head:10001") == "ray://head:10001"


def test_inline_process_ray_agree(ray_local, tiny):
    ray_future = make_launcher("ray").submit(tiny)  # runs in a Ray worker meanwhile
    records = {name: make_launcher(name).submit(tiny).result() for name in ("inline", "process")}
    records["ray"] = ray_future.result(timeout=300)
    for name, record in records.items():
        assert record["status"] == "ok", (name, record.get("error"))
        assert record["spec"] == tiny.to_dict(), name
        assert {k: record["metrics"][k] for k in TOKENS} == {k: records["inline"]["metrics"][k] for k in TOKENS}
    launcher = records["ray"]["launcher"]
    assert launcher["name"] == "ray" and launcher["node"] and launcher["node_id"] and launcher["cpus"] == 1
    assert "1 threads" in records["ray"]["env"]["device_name"]
    json.dumps(records["ray"])  # JSON-serialisable as returned by the task


def test_ray_memory_budget_is_oom(ray_local, tiny):
    record = make_launcher("ray").submit(tiny.replace(memory_budget=1)).result(timeout=300)
    assert record["status"] == "oom"
    assert record["launcher"]["name"] == "ray"


def test_ray_task_failures_become_records(ray_local, tiny):
    from bench.launch.ray_cluster import outcome

    ray = ray_local

    def boom():
        raise ValueError("boom\nsecond line")

    ref = ray.remote(boom).remote()
    record = outcome(lambda: ray.get(ref), tiny)
    assert record["status"] == "error" and record["spec"] == tiny.to_dict()
    assert record["error"] == "ray task failed: RayTaskError(ValueError): boom"
    assert record["launcher"]["name"] == "ray"

    ref = ray.remote(max_retries=0)(lambda: os._exit(1)).remote()
    record = outcome(lambda: ray.get(ref), tiny)
    assert record["status"] == "error"
    assert record["error"].startswith("ray task failed: WorkerCrashedError: ") and "\n" not in record["error"]


def test_python_failure_in_a_task_is_not_retried(ray_local, tiny, tmp_path):
    """The launcher's task options retry lost workers and nodes, never an exception."""
    from bench.launch.ray_cluster import task_options

    ray = ray_local
    tries = tmp_path / "tries"

    def fails():
        with open(tries, "a") as f:
            f.write("x")
        raise RuntimeError("a bug")

    opts = {k: v for k, v in task_options(tiny, retries=3).items() if k != "name"}
    with pytest.raises(ray.exceptions.RayTaskError):
        ray.get(ray.remote(fails).options(**opts).remote())
    assert tries.read_text() == "x"


def test_lost_node_error_names_the_node_and_the_retries(ray_local, tiny):
    import ray.exceptions

    from bench.launch.ray_cluster import failure_record

    exc = ray.exceptions.NodeDiedError("Task failed because the node it was running on is dead or unavailable. "
                                       "Node IP: 10.0.0.7, node ID: 8ad97e06.\nTo see node death information ...")
    record = failure_record(tiny, exc, retries=2)
    assert record["status"] == "error" and "\n" not in record["error"]
    assert record["error"].startswith("ray task failed after 2 retries: NodeDiedError: ")
    assert "Node IP: 10.0.0.7, node ID: 8ad97e06" in record["error"]


def test_ray_unschedulable_cell_fails_fast_on_local_ray(ray_local, tiny, monkeypatch):
    from bench.launch import ray_cluster as ray_launcher

    launcher = make_launcher("ray")
    with pytest.raises(UserError, match="no Ray node offers a GPU"):
        launcher.submit(tiny.replace(device="cuda"))
    with pytest.raises(UserError, match=r"no Ray node offers 3 CPUs \(the largest node has 2\)"):
        make_launcher("ray", cpus_per_cell=3).submit(tiny)
    monkeypatch.setenv(ray_launcher.ENV_ACCELERATOR, "H100")
    with pytest.raises(UserError, match="accelerator type 'H100'"):
        launcher.submit(tiny)


def test_cli_matrix_with_ray_launcher_runs_cells_at_once(ray_local, tmp_path):
    """Two cells on a 2-CPU Ray: both run at once, so their own run times add up to more than the matrix took."""
    out = tmp_path / "m.jsonl"
    t0 = time.perf_counter()
    code = main(["matrix", "--arch", "transformer,hybrid", "--preset", "tiny", "--frames", "2",
                 "--prompt-tokens", "4", "--new-tokens", "2", "--warmup", "0", "--repeats", "1",
                 "--launcher", "ray", "--output", str(out), "--no-progress"])
    elapsed = time.perf_counter() - t0
    assert code == 0
    records = list(iter_records(out))
    assert sorted((r["spec"]["arch"], r["status"]) for r in records) == [("hybrid", "ok"), ("transformer", "ok")]
    assert all(r["launcher"]["name"] == "ray" and r["wall_s"] > 0 for r in records)
    assert sum(r["wall_s"] for r in records) > elapsed, "the cells ran one after the other"


def test_unschedulable_request_warns_once_on_a_cluster(monkeypatch, capsys):
    """On a cluster an autoscaler may still add a GPU node: warn once instead of failing."""
    from types import SimpleNamespace

    from bench.launch import ray_cluster as ray_launcher

    fake = SimpleNamespace(cluster_resources=lambda: {"CPU": 8.0, "GPU": 1.0, "accelerator_type:A100": 1.0},
                           nodes=lambda: [{"Alive": True, "Resources": {"CPU": 8.0}}])
    monkeypatch.setitem(ray_launcher._state, "local", False)
    monkeypatch.setitem(ray_launcher._state, "warned", set())
    for _ in range(2):
        ray_launcher._check_feasible(fake, {"num_gpus": 1, "accelerator_type": "H100"})
    err = capsys.readouterr().err
    assert err.count("warning: no Ray node offers accelerator type 'H100' (the cluster has: A100)") == 1
    ray_launcher._check_feasible(fake, {"num_gpus": 1, "accelerator_type": "A100"})  # feasible: silent
    ray_launcher._check_feasible(fake, {"num_cpus": 8})
    assert capsys.readouterr().err == ""
    ray_launcher._check_feasible(fake, {"num_cpus": 16})
    assert "no Ray node offers 16 CPUs (the largest node has 8) yet" in capsys.readouterr().err
    monkeypatch.setitem(ray_launcher._state, "local", True)
    with pytest.raises(UserError, match="accelerator type 'H100'"):
        ray_launcher._check_feasible(fake, {"num_cpus": 1, "accelerator_type": "H100"})


# --- a worker dies with its launcher -----------------------------------------------------------

def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry.name))
    return found


def _alive(pid: int) -> bool:
    """Running, not merely a zombie waiting for init to reap it."""
    try:
        return (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _rss_mib(pid: int) -> float:
    try:
        for line in (Path("/proc") / str(pid) / "status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def _wait(predicate, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc")
def test_process_worker_dies_when_the_matrix_is_sigkilled(tmp_path):
    """A matrix killed mid-cell leaves no worker behind (it would hold device memory during the resume)."""
    import signal

    cmd = [sys.executable, "-m", "bench.cli", "matrix", "--arch", "hybrid", "--preset", "tiny", "--frames", "2",
           "--prompt-tokens", "4", "--new-tokens", "2", "--warmup", "0", "--repeats", "100000",
           "--launcher", "process", "--output", str(tmp_path / "m.jsonl"), "--no-progress"]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    matrix = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    worker = None
    try:
        assert _wait(lambda: bool(_children(matrix.pid)), 120), "no worker started"
        (worker,) = _children(matrix.pid)
        assert b"bench.launch.worker" in (Path("/proc") / str(worker) / "cmdline").read_bytes()
        # mid-cell: torch imported and the model built (the lifeline was armed before either)
        assert _wait(lambda: _rss_mib(worker) > 200, 120), "the worker never got into its cell"
        time.sleep(0.5)
        assert matrix.poll() is None and _alive(worker)
        matrix.send_signal(signal.SIGKILL)
        matrix.wait(timeout=30)
        assert _wait(lambda: not _alive(worker), 5), "the worker outlived the killed matrix"
    finally:
        if matrix.poll() is None:
            matrix.kill()
        if worker is not None and _alive(worker):
            os.kill(worker, signal.SIGKILL)


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc")
@pytest.mark.parametrize("kernel", [True, False], ids=["pdeathsig", "polling"])
def test_lifeline_kills_the_child_with_its_parent(kernel):
    """Both ways of dying with the parent: the kernel's signal, and the polling fallback."""
    import signal

    child = ("import time; from bench.launch.lifeline import die_with_parent; "
             f"print(die_with_parent(kernel={kernel}), flush=True); time.sleep(120)")
    parent = ("import subprocess, sys, time; "
              f"p = subprocess.Popen([sys.executable, '-c', {child!r}]); print(p.pid, flush=True); time.sleep(120)")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-c", parent], env=env, stdout=subprocess.PIPE, text=True)
    grandchild = None
    try:
        lines = sorted(proc.stdout.readline().strip() for _ in range(2))  # the pid, and how the child is armed
        grandchild, how = int(lines[0]), lines[1]
        assert how == ("kernel" if kernel else "poll")
        assert _alive(grandchild)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        assert _wait(lambda: not _alive(grandchild), 5)
    finally:
        if proc.poll() is None:
            proc.kill()
        if grandchild is not None and _alive(grandchild):
            os.kill(grandchild, signal.SIGKILL)


def test_lifeline_child_of_a_dead_parent_dies_at_once():
    """A parent that died before the child armed its lifeline: the child ends instead of running on."""
    code = "from bench.launch.lifeline import die_with_parent; die_with_parent(parent=1 << 22); print('ran on')"
    proc = subprocess.run([sys.executable, "-c", code], env={**os.environ, "PYTHONPATH": str(REPO)},
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == -9 and "ran on" not in proc.stdout
