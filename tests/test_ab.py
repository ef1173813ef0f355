"""`viperbench ab`: two checkouts, alternating fresh processes, paired decisions; bad sides are one line."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from bench.reporting.ab import decide, is_checkout
from bench.errors import UserError
from tests.bad_input import REPO, child_user_error, user_error

CODE = ("bench", "architectures", "compressors", "tasks", "pyproject.toml")


@pytest.fixture(scope="module")
def matrix(tmp_path_factory):
    path = tmp_path_factory.mktemp("ab") / "m.toml"
    path.write_text('arch = ["transformer", "hybrid"]\npreset = "tiny"\nframes = 2\nprompt_tokens = 4\n'
                    'new_tokens = 2\nwarmup = 0\nrepeats = 2\n')
    return path


def copy_of_the_code(dest: Path) -> Path:
    dest.mkdir()
    for name in CODE:
        src = REPO / name
        (shutil.copytree if src.is_dir() else shutil.copy)(src, dest / name)
    return dest


def ab(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "bench.cli", "ab", *argv], capture_output=True, text=True,
                          cwd=REPO, env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"},
                          timeout=600)


@pytest.mark.slow
def test_added_work_in_the_head_fails_and_names_the_op(tmp_path, matrix):
    head = copy_of_the_code(tmp_path / "head")
    generate = head / "bench" / "engine" / "generate.py"
    generate.write_text(generate.read_text().replace(
        "            token = step(backbone, token, seq).argmax(-1, keepdim=True)",
        "            torch.ones(4, 4).sum()\n            token = step(backbone, token, seq).argmax(-1, keepdim=True)"))
    assert "torch.ones(4, 4)" in generate.read_text()  # the injected op reached the decode loop
    out = tmp_path / "ab.jsonl"
    proc = ab(str(matrix), "--base", "HEAD", "--head", str(head), "--pairs", "2", "--tolerance", "50%",
              "--output", str(out))  # the base a revision (exported), the head a directory
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "work decode_per_token ops" in proc.stdout and "aten::ones +1" in proc.stdout
    assert "regression(s)" in proc.stderr.splitlines()[-1]
    assert [line for line in proc.stderr.splitlines() if line.startswith("pair ")] and "Traceback" not in proc.stderr
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert sorted({(r["ab"]["side"], r["ab"]["pair"]) for r in records}) == [("base", 0), ("base", 1),
                                                                            ("head", 0), ("head", 1)]


@pytest.mark.parametrize("argv, needle", [
    (["--base", "/"], "is not a viperbench checkout"),
    (["--base", "no-such-revision-xyz"], "neither a directory nor a revision"),
    (["--base", ".", "--pairs", "1"], "--pairs must be at least 2"),
    (["--base", ".", "--alpha", "0"], "--alpha"),
    (["missing.toml", "--base", "."], "matrix file not found"),
])
def test_bad_sides_and_settings_are_one_line(capfd, argv, needle):
    user_error(capfd, ["ab", *argv], needle)


def test_a_matrix_the_base_cannot_run_is_one_line(tmp_path):
    bad = tmp_path / "m.toml"
    bad.write_text('arch = "gru"\n')
    child_user_error(["ab", str(bad), "--base", str(REPO), "--pairs", "2"], "cannot run", "gru")


def test_checkout_detection(tmp_path):
    assert is_checkout(REPO) and not is_checkout(tmp_path)


def records(arch_speed: dict[str, float], cpu: bool = True) -> list[dict]:
    out = []
    for arch, speed in arch_speed.items():
        metrics = {"prefill_tok_s": 100 * speed, "decode_tok_s": 10 * speed}
        if cpu:
            metrics |= {"prefill_cpu_tok_s": 200 * speed, "decode_cpu_tok_s": 20 * speed}
        out.append({"status": "ok", "spec": {"arch": arch, "frames": 64}, "metrics": metrics})
    return out


def test_a_consistent_slowdown_of_one_backbone_is_caught_on_its_own_numbers():
    noise = [1.0, 1.02, 0.98, 1.01, 0.99, 1.0]
    pairs = [(records({"transformer": n, "hybrid": n}), records({"transformer": n * 1.01, "hybrid": n * 0.9}))
             for n in noise]
    verdicts = {(v.cell, v.metric): v for v in decide(pairs, tolerance=0.02, alpha=0.05)}
    assert verdicts[("arch=hybrid", "decode_cpu_tok_s")].verdict == "REGRESSION"
    assert verdicts[("arch=hybrid", "decode_cpu_tok_s")].ratio == pytest.approx(0.9)
    assert verdicts[("arch=transformer", "decode_cpu_tok_s")].verdict == "ok"
    assert ("arch=hybrid", "decode_tok_s") not in verdicts  # the CPU-time twin is used where both sides have it


def test_noise_within_the_interval_passes_and_wall_time_is_used_without_cpu_rates():
    pairs = [(records({"hybrid": 1.0}, cpu=False), records({"hybrid": f}, cpu=False)) for f in (0.85, 1.15, 0.95)]
    verdicts = {v.metric: v for v in decide(pairs, tolerance=0.02, alpha=0.05)}
    assert verdicts["decode_tok_s"].verdict == "ok" and verdicts["decode_tok_s"].low < 1 < verdicts["decode_tok_s"].high


def test_mismatched_matrices_are_refused():
    with pytest.raises(UserError, match="mismatched matrices"):
        decide([(records({"hybrid": 1.0}), records({"mamba": 1.0}))], tolerance=0.02, alpha=0.05)


def test_a_cell_failing_only_in_the_head_is_a_regression():
    head = records({"hybrid": 1.0})
    head[0] = {**head[0], "status": "error", "metrics": {}}
    verdicts = decide([(records({"hybrid": 1.0}), head)] * 2, tolerance=0.02, alpha=0.05)
    assert [(v.metric, v.verdict) for v in verdicts] == [("status", "REGRESSION")]
