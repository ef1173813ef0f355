"""A matrix that OOMs (budget), meets a plugin that raises, is killed, and resumes; a Ray cluster that loses
a worker node mid-matrix: nothing lost or doubled.

The Ray tests share one ``ray.cluster_utils.Cluster`` on this machine (a head with 0 CPUs, so cells go
to the two worker nodes of 1 CPU each), started without PYTHONPATH: the nodes get the code only from
the job's runtime_env. They are skipped when ray is not installed.
"""

from __future__ import annotations

import collections
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from bench.records import iter_records

REPO = Path(__file__).resolve().parents[1]


def _plugin(tmp_path: Path) -> Path:
    """A third-party compressor, installed through a real entry point, that raises inside the LLM."""
    (tmp_path / "vb_boom.py").write_text(textwrap.dedent('''
        from compressors.base import Compressor

        class Boom(Compressor):
            """Raises before layer 1."""
            name = "boom"

            def llm_layers(self, backbone):
                return frozenset({1})

            def before_layer(self, i, state, backbone, cache):
                raise RuntimeError("boom at layer 1")
    '''))
    info = tmp_path / "vb_boom-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: vb-boom\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[viperbench.compressors]\nboom = vb_boom:Boom\n")
    return tmp_path


def _lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


def test_oom_plugin_error_kill_and_resume(tmp_path):
    out = tmp_path / "matrix.jsonl"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(_plugin(tmp_path)), str(REPO)])}
    cmd = [sys.executable, "-m", "bench.cli", "matrix", "--arch", "transformer,hybrid", "--preset", "tiny",
           "--compressor", "none,boom", "--frames", "2,4,600", "--memory-budget", "64MiB",
           "--prompt-tokens", "4", "--new-tokens", "2", "--warmup", "0", "--repeats", "1",
           "--output", str(out), "--no-progress"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None and len(_lines(out)) < 4:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    before = _lines(out)
    assert before, "the matrix wrote nothing before it was killed"

    done = subprocess.run(cmd + ["--resume"], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 1, done.stderr  # error cells (the plugin) make the run fail, after finishing
    after = _lines(out)
    complete = [line for line in before if line.strip()]
    assert after[: len(complete) - 1] == complete[:-1]  # nothing already written was changed

    records = list(iter_records(out, warn=False))
    count = collections.Counter((r["spec"]["arch"], r["spec"]["compressor"], r["spec"]["frames"], r["status"])
                                for r in records)
    for arch in ("transformer", "hybrid"):
        for frames in (2, 4):
            assert count[(arch, "none", frames, "ok")] == 1
            assert count[(arch, "boom", frames, "error")] >= 1  # errors are retried by --resume
        assert count[(arch, "none", 600, "oom")] == 1
    ok_or_oom = [k[:3] for k, n in count.items() for _ in range(n) if k[3] in ("ok", "oom")]
    assert len(ok_or_oom) == len(set(ok_or_oom))  # each measured cell exactly once
    errors = [r for r in records if r["status"] == "error"]
    assert all("boom at layer 1" in r["error"] and "\n" not in r["error"] for r in errors)
    assert all(json.loads(line) for line in after if line.strip().startswith("{") and line.strip().endswith("}"))


# --- a Ray cluster of three nodes on this machine ------------------------------------------------

@pytest.fixture(scope="module")
def cluster():
    pytest.importorskip("ray")
    from ray.cluster_utils import Cluster

    from bench.launch import ray_cluster

    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("PYTHONPATH", raising=False)  # the nodes import the code shipped with the job, nothing else
        for name in (ray_cluster.ENV_ADDRESS, ray_cluster.ENV_ACCELERATOR, "RAY_ADDRESS"):
            mp.delenv(name, raising=False)
        head = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False})
        try:
            workers = [head.add_node(num_cpus=1) for _ in range(2)]
            head.wait_for_nodes()
            ray_cluster.init_ray(head.address)
            yield head, workers
        finally:
            ray_cluster.shutdown()
            head.shutdown()


def _descendants(pid: int) -> list[int]:
    parents = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parents[int(entry.name)] = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except OSError:
                continue
    found, frontier = [], [pid]
    while frontier:
        kids = [p for p, parent in parents.items() if parent in frontier]
        found += kids
        frontier = kids
    return found


def _cell_child(node) -> int | None:
    """The pid of a cell's child process (``bench.launch.worker``) running under this node's raylet."""
    from ray._private import ray_constants

    raylet = node.all_processes[ray_constants.PROCESS_TYPE_RAYLET][0].process.pid
    for pid in _descendants(raylet):
        try:
            if b"bench.launch.worker" in (Path("/proc") / str(pid) / "cmdline").read_bytes():
                return pid
        except OSError:
            continue
    return None


def _alive(pid: int) -> bool:
    """Running, not merely a zombie waiting to be reaped."""
    try:
        return (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc")
def test_code_reaches_the_nodes_through_the_runtime_env(cluster):
    """A task's child process imports bench from the package Ray shipped, not from a path of the driver."""
    import ray

    from bench.launch.ray_cluster import CHILD_ENV

    @ray.remote(num_cpus=1)
    def where():
        child = subprocess.run([sys.executable, "-c", "import bench; print(bench.__file__)"], capture_output=True,
                               text=True, check=True, env={**os.environ, **CHILD_ENV})  # as a cell's child
        return child.stdout.strip()

    # (the Ray worker itself also has the driver's sys.path in front when it shares the driver's machine)
    path = ray.get(where.remote(), timeout=120)
    assert "runtime_resources" in path and not path.startswith(str(REPO)), path
    assert ray.cluster_resources()["CPU"] == 2  # the head offers none


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc")
def test_worker_node_killed_mid_matrix_every_cell_once(cluster, tmp_path):
    """One of two worker nodes dies while it runs a cell: Ray re-runs that cell on the other node, and
    the output holds each cell exactly once, all ok."""
    import threading

    from bench.launch.matrix import axes_from_flags, expand, run_matrix

    head, (doomed, survivor) = cluster
    cells = expand(axes_from_flags({"arch": "transformer", "preset": "tiny", "frames": "1,2", "prompt_tokens": "4",
                                    "new_tokens": "2", "warmup": "0", "repeats": "1"}))
    out = tmp_path / "m.jsonl"
    killed, child = threading.Event(), []

    def kill_mid_cell():
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not child:
            pid = _cell_child(doomed)
            child.extend([pid] if pid else [])
            time.sleep(0.05)
        time.sleep(0.5)
        head.remove_node(doomed)
        killed.set()

    killer = threading.Thread(target=kill_mid_cell, daemon=True)
    killer.start()
    records = run_matrix(cells, str(out), launcher="ray", progress=False, ray_address=head.address)
    killer.join(timeout=60)
    assert killed.is_set() and child, "the doomed node never ran a cell"
    deadline = time.monotonic() + 10
    while _alive(child[0]) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _alive(child[0]), "the killed node's cell process outlived its node"
    written = list(iter_records(out))
    assert len(written) == len(records) == 2
    assert sorted(r["spec"]["frames"] for r in written) == [1, 2]  # each cell exactly once
    assert [r["status"] for r in written] == ["ok"] * 2, [r.get("error") for r in written]
    # the cell that was running on the killed node finished on the survivor
    assert {r["launcher"]["node_id"] for r in written} == {survivor.node_id}
