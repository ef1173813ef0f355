"""Launchers: inline, process (child deaths become records) and ray (a Ray task per cell).

The Ray tests share one local Ray (2 CPUs) started for this module and shut down after it;
they are skipped when ray is not installed.
"""

from __future__ import annotations

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
from bench.launch.process import LAUNCHERS, run_process
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
    """`import bench.launch.process` neither needs nor imports ray; using the ray launcher without
    ray installed is a one-line UserError."""
    code = (
        "import sys\n"
        "import bench.launch.process as l\n"
        "assert 'ray' not in sys.modules, 'bench.launch.process imported ray'\n"
        "assert 'ray' in l.LAUNCHERS\n"
        "sys.modules['ray'] = None  # as if ray were not installed\n"
        "from bench.errors import UserError\n"
        "from bench.spec import CellSpec\n"
        f"spec = CellSpec(**{TINY!r})\n"
        "try:\n"
        "    l.LAUNCHERS['ray'](spec)\n"
        "except UserError as exc:\n"
        "    print('USERERROR', exc)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "USERERROR the ray launcher needs ray: pip install 'viperbench[distributed]'" in out.stdout


# --- ray launcher --------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def ray_local():
    ray = pytest.importorskip("ray")
    from bench.launch import ray_cluster as ray_launcher

    with pytest.MonkeyPatch.context() as mp:
        for name in (ray_launcher.ENV_ADDRESS, ray_launcher.ENV_ACCELERATOR):
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
    monkeypatch.setenv(ray_launcher.ENV_ACCELERATOR, "H100")
    gpu = ray_launcher.task_options(tiny.replace(device="cuda:1"))
    assert gpu["num_gpus"] == 1 and gpu["accelerator_type"] == "H100" and "num_cpus" not in gpu


def test_inline_process_ray_agree(ray_local, tiny):
    from bench.launch.ray_cluster import collect, submit

    ref = submit(tiny)  # LAUNCHERS["ray"] is collect(submit(spec)): the Ray cell runs meanwhile
    records = {name: LAUNCHERS[name](tiny) for name in ("inline", "process")}
    records["ray"] = collect(ref, tiny)
    for name, record in records.items():
        assert record["status"] == "ok", (name, record.get("error"))
        assert record["spec"] == tiny.to_dict(), name
        assert {k: record["metrics"][k] for k in TOKENS} == {k: records["inline"]["metrics"][k] for k in TOKENS}
    launcher = records["ray"]["launcher"]
    assert launcher["name"] == "ray" and launcher["node"] and launcher["node_id"]
    json.dumps(records["ray"])  # JSON-serialisable as returned by the task


def test_ray_memory_budget_is_oom(ray_local, tiny):
    record = LAUNCHERS["ray"](tiny.replace(memory_budget=1))
    assert record["status"] == "oom"
    assert record["launcher"]["name"] == "ray"


def test_ray_run_many_keeps_order(ray_local, tiny):
    from bench.launch.ray_cluster import run_many

    specs = [tiny.replace(frames=f) for f in (3, 1, 2)]
    records = run_many(specs)
    assert [r["status"] for r in records] == ["ok"] * 3
    assert [r["spec"] for r in records] == [s.to_dict() for s in specs]


def test_ray_task_failures_become_records(ray_local, tiny):
    from bench.launch.ray_cluster import collect

    ray = ray_local

    def boom():
        raise ValueError("boom\nsecond line")

    record = collect(ray.remote(boom).remote(), tiny)
    assert record["status"] == "error" and record["spec"] == tiny.to_dict()
    assert record["error"] == "ray task failed: RayTaskError(ValueError): boom"
    assert record["launcher"]["name"] == "ray"

    record = collect(ray.remote(max_retries=0)(lambda: os._exit(1)).remote(), tiny)
    assert record["status"] == "error"
    assert record["error"].startswith("ray task failed: WorkerCrashedError: ") and "\n" not in record["error"]


def test_ray_unschedulable_cell_fails_fast_on_local_ray(ray_local, tiny, monkeypatch):
    from bench.launch import ray_cluster as ray_launcher

    with pytest.raises(UserError, match="no Ray node offers a GPU"):
        LAUNCHERS["ray"](tiny.replace(device="cuda"))
    monkeypatch.setenv(ray_launcher.ENV_ACCELERATOR, "H100")
    with pytest.raises(UserError, match="accelerator type 'H100'"):
        LAUNCHERS["ray"](tiny)


def test_cli_matrix_with_ray_launcher(ray_local, tmp_path):
    out = tmp_path / "m.jsonl"
    code = main(["matrix", "--arch", "transformer,hybrid", "--preset", "tiny", "--frames", "2",
                 "--prompt-tokens", "4", "--new-tokens", "2", "--warmup", "0", "--repeats", "1",
                 "--launcher", "ray", "--output", str(out), "--no-progress"])
    assert code == 0
    records = list(iter_records(out))
    assert [(r["spec"]["arch"], r["status"]) for r in records] == [("transformer", "ok"), ("hybrid", "ok")]
    assert all(r["launcher"]["name"] == "ray" and "wall_s" in r for r in records)


def test_unschedulable_request_warns_once_on_a_cluster(monkeypatch, capsys):
    """On a cluster an autoscaler may still add a GPU node: warn once instead of failing."""
    from types import SimpleNamespace

    from bench.launch import ray_cluster as ray_launcher

    fake = SimpleNamespace(cluster_resources=lambda: {"CPU": 8.0, "GPU": 1.0, "accelerator_type:A100": 1.0})
    monkeypatch.setitem(ray_launcher._state, "local", False)
    monkeypatch.setitem(ray_launcher._state, "warned", set())
    for _ in range(2):
        ray_launcher._check_feasible(fake, {"num_gpus": 1, "accelerator_type": "H100"})
    err = capsys.readouterr().err
    assert err.count("warning: no Ray node offers accelerator type 'H100' (the cluster has: A100)") == 1
    ray_launcher._check_feasible(fake, {"num_gpus": 1, "accelerator_type": "A100"})  # feasible: silent
    assert capsys.readouterr().err == ""
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
