"""Exact work counters (``metrics.work``): the same on every run, and any added work fails the gate."""

from __future__ import annotations

import json

import pytest
import torch

import bench.engine.generate
from bench.cli import main
from bench.reporting.compare import compare, render_rows
from bench.measure.work import WorkCounter
from bench.reporting.compare import moved_ops

CELL = ["--preset", "tiny", "--frames", "2", "--prompt-tokens", "4", "--new-tokens", "3", "--warmup", "0",
        "--repeats", "1"]


def measure(tmp_path, name: str, arch: str = "hybrid", *extra: str) -> dict:
    out = tmp_path / f"{name}.jsonl"
    assert main(["run", "--arch", arch, *CELL, *extra, "--output", str(out)]) == 0
    return json.loads(out.read_text().splitlines()[-1])


@pytest.fixture(scope="module")
def baseline(tmp_path_factory):
    return measure(tmp_path_factory.mktemp("work"), "base")


def test_every_record_counts_prefill_and_decode_per_token(baseline):
    work = baseline["metrics"]["work"]
    assert work["decode_steps"] == 3
    for stage in ("prefill", "decode_per_token"):
        assert work[stage]["ops"] == sum(work[stage]["by_op"].values()) > 0
        assert work[stage]["alloc_bytes"] > 0
        assert work[stage]["host_syncs"] == 0  # the run loop never waits for the device
    assert work["counted_on"]["torch"] == torch.__version__
    assert work["prefill"]["ops"] > work["decode_per_token"]["ops"]


@pytest.mark.parametrize("arch", ["transformer", "mamba", "hybrid"])
def test_counts_are_the_same_on_every_run(tmp_path, arch):
    a, b = measure(tmp_path, "a", arch), measure(tmp_path, "b", arch)
    assert a["metrics"]["work"] == b["metrics"]["work"]
    assert not [r for r in compare([b], [a]) if r.metric.startswith("work") and r.verdict != "ok"]


def test_an_extra_matmul_per_decode_step_fails_the_gate_and_is_named(tmp_path, monkeypatch, baseline):
    real = bench.engine.generate.decode_step

    def slower(backbone, token, seq):
        x = torch.ones(4, 4)
        torch.mm(x, x)
        return real(backbone, token, seq)

    monkeypatch.setattr(bench.engine.generate, "decode_step", slower)
    rows = compare([measure(tmp_path, "slow")], [baseline])
    bad = {r.metric: r for r in rows if r.verdict == "REGRESSION"}
    assert set(bad) >= {"work decode_per_token ops", "work decode_per_token alloc_bytes"}
    assert "aten::mm +1" in bad["work decode_per_token ops"].note
    assert "aten::ones +1" in bad["work decode_per_token ops"].note
    assert "work prefill ops" not in bad  # prefill did not change
    assert "aten::mm +1" in render_rows(rows)


def test_a_host_sync_per_step_fails_the_gate(tmp_path, monkeypatch, baseline):
    real = bench.engine.generate.decode_step

    def syncing(backbone, token, seq):
        logits = real(backbone, token, seq)
        float(logits[0, 0].max())  # the host reads a value of the device
        return logits

    monkeypatch.setattr(bench.engine.generate, "decode_step", syncing)
    rows = compare([measure(tmp_path, "sync")], [baseline])
    row = next(r for r in rows if r.metric == "work decode_per_token host_syncs")
    assert (row.old, row.new, row.verdict) == (0, 1, "REGRESSION")


def test_less_work_is_an_improvement_not_a_regression(baseline):
    lighter = json.loads(json.dumps(baseline))
    stage = lighter["metrics"]["work"]["decode_per_token"]
    stage["ops"] -= 2
    stage["by_op"]["aten::mul"] -= 2
    rows = [r for r in compare([lighter], [baseline]) if r.metric == "work decode_per_token ops"]
    assert rows[0].verdict == "improved" and "aten::mul -2" in rows[0].note


def test_counts_from_other_library_versions_are_shown_not_gated(baseline):
    other = json.loads(json.dumps(baseline))
    other["metrics"]["work"]["counted_on"]["torch"] = "0.0.0"
    other["metrics"]["work"]["prefill"]["ops"] += 100
    rows = [r for r in compare([other], [baseline]) if r.metric.startswith("work")]
    assert [r.verdict for r in rows] == ["info"] and "not gated" in rows[0].note


def test_records_without_work_are_compared_as_before(baseline):
    old = json.loads(json.dumps(baseline))
    del old["metrics"]["work"]
    assert not [r for r in compare([baseline], [old]) if r.metric.startswith("work")]


def test_interleaved_matrix_records_count_work_too(tmp_path):
    out = tmp_path / "m.jsonl"
    assert main(["matrix", "--arch", "transformer,hybrid", *CELL, "--interleave", "--no-progress",
                 "--output", str(out)]) == 0
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert all(r["metrics"]["work"]["decode_per_token"]["ops"] > 0 for r in records)


def test_a_real_video_llm_family_counts_its_vision_stage(tmp_path):
    from architectures.families.offline import write_checkpoint

    ckpt = write_checkpoint("qwen3_vl", "tiny", tmp_path / "qwen3_vl")
    record = measure(tmp_path, "family", "qwen3_vl", "--checkpoint", str(ckpt))
    work = record["metrics"]["work"]
    assert work["vision"]["ops"] > 0 and work["prefill"]["ops"] > 0


def test_counter_sees_syncs_and_fresh_storage_only():
    counter = WorkCounter("cpu")
    x = torch.ones(8, 8)
    with counter.stage("prefill_s"):
        y = x @ x  # a new 256-byte storage
        y.view(64)  # a view: no new storage
        y.add_(1)  # in place: no new storage
        y.sum().item()  # a sum (4 bytes) and a host read
    stage = counter.stages["prefill"]
    assert stage["alloc_bytes"] == 8 * 8 * 4 + 4
    assert stage["host_syncs"] == 1
    assert stage["by_op"]["aten::_local_scalar_dense"] == 1


def test_moved_ops_lists_the_largest_changes_first():
    assert moved_ops({"aten::mm": 3, "aten::add": 1}, {"aten::mm": 12, "aten::add": 0, "aten::cat": 1}) \
        == "aten::mm +9, aten::add -1, aten::cat +1"
