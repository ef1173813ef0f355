"""A matrix that OOMs (budget), meets a plugin that raises, is killed, and resumes: nothing lost or doubled."""

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
