"""One cell end to end through bench.measure.runner.run_cell, on the tiny presets (CPU, random weights)."""

from __future__ import annotations

import json
import statistics

import pytest

import bench.measure.runner
from bench.measure.runner import run_cell
from bench.spec import make_spec

TINY = dict(preset="tiny", frames=2, prompt_tokens=4, new_tokens=2, warmup=0, repeats=1)
SPEC_KEYS = {"arch", "preset", "checkpoint", "compressor", "frames", "tokens_per_frame", "prompt_tokens",
             "new_tokens", "batch", "vision", "device", "dtype", "task"}
TIMINGS = ("prefill_s", "prefill_tok_s", "ttft_s", "decode_tok_s", "e2e_tok_s")
STAGES = {"decode_video_s", "vision_s", "prefill_s", "decode_s"}


def cell(**values) -> dict:
    return run_cell(make_spec({**TINY, **values}))


@pytest.fixture(scope="module", params=["transformer", "mamba", "hybrid"])
def arch_record(request):
    return request.param, cell(arch=request.param)


def check_ok_record(r: dict, *, frames=2, tokens_per_frame=16, prompt_tokens=4, new_tokens=2, batch=1):
    assert r["schema"] == 1
    assert r["status"] == "ok", r.get("error")
    assert r["error"] is None
    assert SPEC_KEYS <= set(r["spec"])
    assert r["spec"]["frames"] == frames and r["spec"]["batch"] == batch
    assert r["spec"]["dtype"] == "float32" and r["spec"]["device"] == "cpu"
    assert {"device_name", "torch", "transformers", "kernels", "commit"} <= set(r["env"])
    m = r["metrics"]
    vision = frames * tokens_per_frame
    assert m["vision_tokens"] == vision
    assert m["input_tokens"] == 1 + vision + prompt_tokens
    assert m["tokens_after_compression"] == m["input_tokens"]
    for key in TIMINGS:
        assert m[key] > 0, key
    assert m["ttft_s"] >= m["prefill_s"]
    assert m["peak_mem_bytes"] > 0
    assert set(m["stages"]) == STAGES
    assert m["stages"]["prefill_s"] == pytest.approx(m["prefill_s"])
    # throughputs follow from the timings, repeat by repeat
    spread = m["spread"]
    per_repeat = [m["input_tokens"] * batch / s for s in spread["prefill_s"]["values"]]
    assert per_repeat == pytest.approx(spread["prefill_tok_s"]["values"], rel=1e-9)
    if m["repeats"] % 2:  # odd: the median maps through the monotone relation
        assert m["prefill_tok_s"] == pytest.approx(m["input_tokens"] * batch / m["prefill_s"], rel=1e-9)
        assert m["decode_tok_s"] == pytest.approx(new_tokens * batch / m["decode_s"], rel=1e-9)
    for key, s in spread.items():
        assert s["min"] <= m[key] <= s["max"], key
        assert len(s["values"]) == m["repeats"]
    json.dumps(r)  # a record is plain JSON


def test_cell_per_arch(arch_record):
    arch, r = arch_record
    assert r["spec"]["arch"] == arch
    assert r["spec"]["compressor"] == "none"
    assert r["spec"]["task"] == "synthetic"
    check_ok_record(r)
    m = r["metrics"]
    assert m["repeats"] == 1
    assert m["compressor"] == {"spec": "none", "added_params": 0, "time_s": 0.0, "stages": []}
    assert m["memory"]["kind"] == "rss" and m["memory"]["peak_mem_bytes"] == m["peak_mem_bytes"]
    assert r["task"]["name"] == "synthetic"


def test_repeats_spread():
    r = cell(arch="transformer", warmup=1, repeats=3)
    check_ok_record(r)
    m = r["metrics"]
    assert m["repeats"] == 3
    for key in TIMINGS:
        s = m["spread"][key]
        assert len(s["values"]) == 3  # in measurement order
        assert s["min"] == min(s["values"]) and s["max"] == max(s["values"])
        assert s["min"] <= statistics.median(s["values"]) == m[key] <= s["max"]
        assert s["iqr"] >= 0


def test_siglip_vision():
    r = cell(arch="transformer", vision="siglip")
    check_ok_record(r)
    assert r["spec"]["vision"] == "siglip"
    assert r["metrics"]["stages"]["vision_s"] > 0


def test_prefill_chunk():
    r = cell(arch="hybrid", prefill_chunk=8)
    assert r["spec"]["prefill_chunk"] == 8
    check_ok_record(r)


def test_batch_two():
    r = cell(arch="mamba", batch=2)
    check_ok_record(r, batch=2)


def test_memory_budget_gives_oom():
    r = cell(arch="transformer", memory_budget=1)
    assert r["status"] == "oom"
    assert r["spec"]["memory_budget"] == 1
    assert "OverBudget" in r["error"] and "\n" not in r["error"]
    assert r["metrics"]["peak_mem_bytes"] > 1


def test_runtime_error_becomes_error_record(monkeypatch, capsys):
    def broken(*args, **kwargs):
        raise ValueError("first line\nsecond line")

    monkeypatch.setattr(bench.measure.runner, "one_pass", broken)
    r = cell(arch="transformer")
    assert r["status"] == "error"
    assert r["error"] == "ValueError: first line"
    assert r["metrics"] == {}
    assert "Traceback" in capsys.readouterr().err


def test_out_of_memory_runtime_error_is_oom(monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("CUDA out of memory. Tried to allocate 2 GiB")

    monkeypatch.setattr(bench.measure.runner, "one_pass", broken)
    r = cell(arch="transformer")
    assert r["status"] == "oom"
    assert r["error"].startswith("RuntimeError: CUDA out of memory")
