"""scripts/gpu-check and its wheel list, on the CPU: the dry run, the budget trimming, bad input.

The dry run here runs steps b and d under a small budget (a and c, and the cells the budget
leaves out, skipped with a line), so that it stays fast; the whole dry run is `scripts/gpu-check --dry-run` (docs/gpu.md).
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import json
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "gpu-check"
sys.path.insert(0, str(REPO / "scripts"))
import wheel_list  # noqa: E402


def _load_check():
    loader = importlib.machinery.SourceFileLoader("gpu_check", str(SCRIPT))
    module = importlib.util.module_from_spec(importlib.util.spec_from_loader("gpu_check", loader))
    sys.modules["gpu_check"] = module  # its dataclasses look their module up
    loader.exec_module(module)
    return module


check = _load_check()


def test_every_core_dependency_is_carried_or_stated():
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    stated = {wheel_list.requirement_name(r) for reqs in wheel_list.sections().values() for r in reqs}
    assert {wheel_list.requirement_name(d) for d in deps} - stated == set()
    assert set(wheel_list.sections()) == {"download", "build", "image", "unused"}


def test_pinned_transformers_is_carried_at_the_pinned_version():
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    pinned = [d for d in deps if d.startswith("transformers")]
    assert pinned and pinned[0] in wheel_list.sections()["download"]


def test_a_folder_missing_a_wheel_is_named(tmp_path):
    check.fake_wheels(tmp_path)
    assert wheel_list.missing(tmp_path) == []
    next(tmp_path.glob("mamba_ssm-*.whl")).unlink()
    assert wheel_list.missing(tmp_path) == ["mamba_ssm"]
    assert wheel_list.main(["check", str(tmp_path)]) == 2


def _bad(argv, capsys, monkeypatch):
    monkeypatch.setattr(sys, "path", list(sys.path))
    monkeypatch.setenv("PYTHONPATH", os.environ.get("PYTHONPATH", ""))
    assert check.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("gpu-check: error: ")
    return err[0]


def test_bad_input_is_one_line_exit_2(tmp_path, capsys, monkeypatch):
    out = tmp_path / "out"
    assert "--steps 'x'" in _bad(["--dry-run", "--steps", "x", "--out", str(out)], capsys, monkeypatch)
    assert "--budget-s 5" in _bad(["--dry-run", "--budget-s", "5", "--out", str(out)], capsys, monkeypatch)
    assert "no such directory" in _bad(["--wheels", str(tmp_path / "none"), "--out", str(out)], capsys, monkeypatch)
    partial = tmp_path / "partial"
    partial.mkdir()
    check.fake_wheels(partial)
    next(partial.glob("transformers-*.whl")).unlink()
    assert "incomplete, no wheel for transformers" in _bad(["--wheels", str(partial), "--out", str(out)], capsys,
                                                           monkeypatch)
    blocked = tmp_path / "file"
    blocked.write_text("")
    assert "not writable" in _bad(["--dry-run", "--out", str(blocked / "out")], capsys, monkeypatch)


def test_no_gpu_without_dry_run_is_one_line_exit_2_and_keeps_records(tmp_path, capsys, monkeypatch):
    import torch

    if torch.cuda.is_available():
        pytest.skip("needs a machine without CUDA")
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    check.fake_wheels(wheels)
    out = tmp_path / "out"
    out.mkdir()
    (out / "records.jsonl").write_text('{"status": "ok"}\n')  # an earlier run's records stay
    assert "no CUDA device" in _bad(["--wheels", str(wheels), "--out", str(out)], capsys, monkeypatch)
    assert (out / "records.jsonl").read_text() == '{"status": "ok"}\n'


def test_the_plans_touch_every_step_in_order():
    for dry in (True, False):
        steps = [item.step for item in check.Plan(dry, gpu_memory="139.80GiB").items]
        assert steps == sorted(steps) and set(steps) == {"a", "b", "c", "d"}
    real = check.Plan(False, gpu_memory="139.80GiB")
    cells = [i.argv for i in real.items if i.step == "b" and i.argv[0] == "run"]
    assert len(cells) == 8 and all("paper" in a and "cuda" in a and "bfloat16" in a for a in cells)
    assert sum(i.est_s for i in real.items if i.step in "abc") <= 480  # a, b and c fit the default budget
    from bench.cli import build_parser

    for dry in (True, False):  # every command of both plans parses with the real parser
        for item in check.Plan(dry, gpu_memory="139.80GiB").items:
            if item.argv:
                build_parser().parse_args([*item.argv, "--output", "records.jsonl"])


def test_the_budget_skips_what_it_would_not_cover_and_scales_by_the_overrun(tmp_path):
    import argparse
    import time

    quick = [sys.executable, "-c", "import time; time.sleep(0.3)"]
    plan = check.Plan(True)
    plan.items = [check.Item("a", "overruns", 0.01, command=quick), check.Item("b", "too long", 100, command=quick),
                  check.Item("c", "scaled past the budget", 1.0, command=quick),
                  check.Item("d", "fits even scaled", 0.001, command=quick)]
    args = argparse.Namespace(budget_s=20, steps="abcd")
    lines = check.run_plan(plan, args, tmp_path / "records.jsonl", time.perf_counter(), sys.stdout)
    assert [x.split(": ", 1)[1].split(" ")[0] for x in lines] == ["ran", "skipped", "skipped", "ran"], lines
    assert "needs ~" in lines[2] and float(lines[2].split("needs ~")[1].split(" ")[0]) > 20  # 1 s x the overrun


def test_a_trimmed_dry_run_writes_the_summary_within_the_file_limits(tmp_path):
    out = tmp_path / "out"
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    done = subprocess.run([sys.executable, str(SCRIPT), "--dry-run", "--steps", "bd", "--budget-s", "30", "--out", str(out)],
                          capture_output=True, text=True, env=env, cwd=REPO, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    lines = [x for x in done.stdout.splitlines() if x.startswith("gpu-check: ") and ": " in x[11:]]
    steps = {x[11] for x in lines if x[12:14] == ". "}
    assert steps == {"a", "b", "c", "d"}, done.stdout[-3000:]
    assert any(": ran in " in x for x in lines) and any(": skipped (not in --steps bd)" in x for x in lines)
    files = sorted(p.name for p in out.iterdir())
    assert files == ["gpu-check.log", "records.jsonl", "summary.md"]
    assert all((out / f).stat().st_size <= check.MAX_FILE_BYTES for f in files)
    records = [json.loads(x) for x in (out / "records.jsonl").read_text().splitlines()]
    assert records and all(r["status"] in ("ok", "oom", "error") for r in records)
    summary = (out / "summary.md").read_text()
    assert "## Measured beside predicted" in summary and "## Steps" in summary
    if importlib.util.find_spec("mamba_ssm") is not None:  # built without CUDA extensions, it imports beside the shim
        assert {r["env"]["kernels"]["bound"]["mamba_chunk_scan_combined"] for r in records
                if "kernels" in r.get("env", {})} == {"mamba_ssm"}
    kinds = {(r["spec"]["arch"], r.get("kind")) for r in records}
    if ("transformer", None) in kinds and ("transformer", "prediction") in kinds:
        assert "| transformer " in summary and "measured/predicted" in summary
