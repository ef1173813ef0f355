"""Result records: append-only JSONL, robust to a line cut short by a crash."""

from __future__ import annotations

import json

import pytest

from bench.errors import UserError
from bench.records import (SCHEMA, append_record, check_writable, environment, finished_keys, iter_records,
                           make_record, spec_key)


def spec(arch="transformer", frames=2, **extra):
    return {"arch": arch, "preset": "tiny", "frames": frames, "compressor": "none", **extra}


def record(status="ok", **spec_values):
    return make_record(spec(**spec_values), {"device_name": "test"}, status=status,
                       error=None if status == "ok" else f"{status}: boom",
                       metrics={"prefill_tok_s": 1.0} if status == "ok" else {})


def test_make_record_shape():
    r = record()
    assert r["schema"] == SCHEMA == 1
    assert r["status"] == "ok" and r["error"] is None
    assert r["spec"]["arch"] == "transformer"
    assert r["task"] == {"name": None, "metrics": {}, "n": 0}
    assert make_record({"task": "synthetic"}, {}, kind="maxframes")["kind"] == "maxframes"


def test_append_never_rewrites_earlier_lines(tmp_path):
    path = tmp_path / "r.jsonl"
    append_record(path, record(frames=1))
    first = path.read_bytes()
    assert first.endswith(b"\n") and first.count(b"\n") == 1
    append_record(path, record(frames=2))
    second = path.read_bytes()
    assert second.startswith(first)
    append_record(path, record(frames=3))
    third = path.read_bytes()
    assert third.startswith(second)
    lines = third.decode().splitlines()
    assert [json.loads(line)["spec"]["frames"] for line in lines] == [1, 2, 3]
    assert [r["spec"]["frames"] for r in iter_records(path)] == [1, 2, 3]


def test_append_creates_file(tmp_path):
    path = tmp_path / "new.jsonl"
    append_record(path, record())
    assert len(list(iter_records(path))) == 1


def test_partial_line_after_crash(tmp_path, capsys):
    path = tmp_path / "r.jsonl"
    append_record(path, record(frames=1))
    append_record(path, record(frames=2))
    intact = path.read_bytes()
    with open(path, "ab") as f:  # a process killed mid-write
        f.write(b'{"schema": 1, "sta')
    append_record(path, record(frames=3))
    data = path.read_bytes()
    assert data.startswith(intact + b'{"schema": 1, "sta\n')  # the next append starts on a fresh line
    lines = data.decode().splitlines()
    assert len(lines) == 4
    assert json.loads(lines[3])["spec"]["frames"] == 3

    capsys.readouterr()
    records = list(iter_records(path))
    assert [r["spec"]["frames"] for r in records] == [1, 2, 3]
    err = capsys.readouterr().err
    assert f"{path}:3" in err
    assert err.count("\n") == 1 and "warning" in err

    list(iter_records(path, warn=False))
    assert capsys.readouterr().err == ""


def test_partial_last_line_is_skipped(tmp_path, capsys):
    path = tmp_path / "r.jsonl"
    append_record(path, record(frames=1))
    with open(path, "ab") as f:
        f.write(b'{"schema": 1, "sta')
    assert [r["spec"]["frames"] for r in iter_records(path)] == [1]
    assert f"{path}:2" in capsys.readouterr().err


def test_blank_and_non_object_lines(tmp_path, capsys):
    path = tmp_path / "r.jsonl"
    path.write_text("\n[1, 2]\n" + json.dumps(record()) + "\n\n")
    assert len(list(iter_records(path))) == 1
    err = capsys.readouterr().err  # blank lines silently, the list with a warning naming its line
    assert err.count("\n") == 1 and f"{path}:2" in err and "a list, not an object" in err


def test_iter_records_missing_file(tmp_path):
    with pytest.raises(UserError, match="nope.jsonl"):
        list(iter_records(tmp_path / "nope.jsonl"))


def test_finished_keys(tmp_path):
    path = tmp_path / "r.jsonl"
    assert finished_keys(path) == set()
    append_record(path, record("ok", frames=1))
    append_record(path, record("oom", frames=2))
    append_record(path, record("error", frames=3))
    keys = finished_keys(path)
    assert keys == {spec_key(spec(frames=1)), spec_key(spec(frames=2))}
    assert spec_key(spec(frames=3)) not in keys


def test_finished_keys_after_error_then_ok(tmp_path):
    path = tmp_path / "r.jsonl"
    append_record(path, record("error", frames=3))
    append_record(path, record("ok", frames=3))
    assert finished_keys(path) == {spec_key(spec(frames=3))}


def test_spec_key_ignores_order():
    assert spec_key({"a": 1, "b": 2}) == spec_key({"b": 2, "a": 1})
    assert spec_key({"a": 1}) != spec_key({"a": 2})


def test_check_writable(tmp_path):
    target = tmp_path / "sub" / "dir" / "r.jsonl"
    check_writable(target)
    assert target.exists() and target.read_text() == ""
    afile = tmp_path / "afile"
    afile.write_text("x")
    with pytest.raises(UserError, match="cannot write output"):
        check_writable(afile / "x.jsonl")


def test_environment_cpu():
    env = environment("cpu")
    assert {"device_name", "torch", "transformers", "kernels", "commit"} <= set(env)
    assert isinstance(env["device_name"], str) and env["device_name"]
    import torch
    import transformers

    assert env["torch"] == torch.__version__
    assert env["transformers"] == transformers.__version__
    assert set(env["kernels"]) == {"ops", "bound", "attention", "installed"}
    assert set(env["kernels"]["installed"]) == {"mamba_ssm", "causal_conv1d", "flash_attn"}
    assert env["commit"] is None or isinstance(env["commit"], str)
    json.dumps(env)
