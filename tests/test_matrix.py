"""Comparison matrices: axes from flags or TOML, per-cell records, failures, resume after a kill."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import bench.measure.runner
from bench.cli import main
from bench.launch.matrix import axes_from_flags, axes_from_toml, expand, split_values
from bench.records import iter_records, spec_key

REPO = Path(__file__).resolve().parents[1]
# cheap cells; --frames is given per test
SMALL = ["--preset", "tiny", "--prompt-tokens", "4", "--new-tokens", "2", "--warmup", "0", "--repeats", "1"]


def lines_of(path: Path) -> list[str]:
    return path.read_text().splitlines()


# --- axes ---------------------------------------------------------------------------------

def test_split_values_compressor_keeps_its_commas():
    assert split_values("compressor", "none,uniform:layer=7,p=0.5,td:schedule=a-b") == [
        "none", "uniform:layer=7,p=0.5", "td:schedule=a-b"]
    assert split_values("compressor", "none") == ["none"]
    assert split_values("compressor", "a:x=1,y=2,b,c:z=3") == ["a:x=1,y=2", "b", "c:z=3"]
    assert split_values("compressor", " none , uniform:p=0.5 ,") == ["none", "uniform:p=0.5"]


def test_split_values_other_keys():
    assert split_values("frames", "2,3, 64") == ["2", "3", "64"]
    assert split_values("arch", "transformer,mamba,") == ["transformer", "mamba"]
    # a key=value item is only glued to the previous one for compressors
    assert split_values("task", "a,b=1") == ["a", "b=1"]
    assert split_values("frames", 7) == [7]


def test_expand_product_order_dedup_and_validation():
    from bench.errors import UserError

    cells = expand({"arch": ["transformer", "mamba"], "frames": ["2", "3", "2"], "preset": ["tiny"]})
    assert [(c.arch, c.frames) for c in cells] == [("transformer", 2), ("transformer", 3), ("mamba", 2),
                                                    ("mamba", 3)]
    with pytest.raises(UserError, match="frames"):
        expand({"arch": ["transformer"], "frames": ["2", "0"]})


# --- a matrix from flags, resumed, and the same from TOML ---------------------------------

def test_matrix_flags_resume_and_toml(tmp_path, capsys):
    out = tmp_path / "m.jsonl"
    argv = ["matrix", "--arch", "transformer,mamba", "--frames", "2,3", *SMALL, "--output", str(out),
            "--no-progress"]
    assert main(argv) == 0
    stdout, stderr = capsys.readouterr()
    assert "transformer" in stdout and "mamba" in stdout
    assert stdout.count("| ok") == 4
    assert "records appended to" in stderr
    records = list(iter_records(out))
    assert len(lines_of(out)) == 4
    assert [(r["spec"]["arch"], r["spec"]["frames"]) for r in records] == [
        ("transformer", 2), ("transformer", 3), ("mamba", 2), ("mamba", 3)]
    assert all(r["status"] == "ok" and r["wall_s"] > 0 for r in records)
    before = out.read_bytes()

    assert main(argv + ["--resume"]) == 0
    stdout, stderr = capsys.readouterr()
    assert "4 of 4" in stderr
    assert out.read_bytes() == before

    toml = tmp_path / "m.toml"
    toml.write_text('arch = ["transformer", "mamba"]\nframes = [2, 3]\npreset = "tiny"\nprompt_tokens = 4\n'
                    'new_tokens = 2\nwarmup = 0\nrepeats = 1\noutput = "elsewhere.jsonl"\n')
    axes, file_output = axes_from_toml(str(toml))
    assert file_output == "elsewhere.jsonl"
    toml_cells = [c.to_dict() for c in expand(axes)]
    assert toml_cells == [r["spec"] for r in records]
    flag_axes = {"arch": "transformer,mamba", "frames": "2,3", "preset": "tiny", "prompt_tokens": "4",
                 "new_tokens": "2", "warmup": "0", "repeats": "1"}
    assert [c.to_dict() for c in expand(axes_from_flags(flag_axes))] == toml_cells
    # the TOML matrix resumed against the same file finds every cell done
    assert main(["matrix", str(toml), "--output", str(out), "--resume", "--no-progress"]) == 0
    assert "4 of 4" in capsys.readouterr().err
    assert out.read_bytes() == before
    # flags override the file's axes
    override = expand(axes_from_toml(str(toml), {"arch": "hybrid"})[0])
    assert [(c.arch, c.frames) for c in override] == [("hybrid", 2), ("hybrid", 3)]


def test_resume_reruns_error_cells(tmp_path, capsys):
    out = tmp_path / "m.jsonl"
    argv = ["matrix", "--arch", "transformer", "--frames", "2", *SMALL, "--output", str(out), "--no-progress"]
    spec = expand(axes_from_flags({"arch": "transformer", "frames": "2", "preset": "tiny", "prompt_tokens": "4",
                                   "new_tokens": "2", "warmup": "0", "repeats": "1"}))[0].to_dict()
    out.write_text(json.dumps({"schema": 1, "status": "error", "error": "x", "spec": spec}) + "\n")
    assert main(argv + ["--resume"]) == 0
    capsys.readouterr()
    assert [r["status"] for r in iter_records(out)] == ["error", "ok"]


# --- where the records go: the TOML's output, --output over it, or stdout -------------------

TINY_TOML = ('arch = ["transformer", "hybrid"]\nframes = 2\npreset = "tiny"\nprompt_tokens = 4\nnew_tokens = 2\n'
             'warmup = 0\nrepeats = 1\n')


def test_matrix_toml_output_key_is_the_default_output(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a relative output is read from the working directory, as --output is
    toml = tmp_path / "m.toml"
    toml.write_text(TINY_TOML + 'output = "from-toml.jsonl"\n')
    assert main(["matrix", str(toml), "--no-progress"]) == 0
    capsys.readouterr()
    assert [r["spec"]["arch"] for r in iter_records(tmp_path / "from-toml.jsonl")] == ["transformer", "hybrid"]
    # --output on the command line overrides the file's output
    flag = tmp_path / "from-flag.jsonl"
    assert main(["matrix", str(toml), "--output", str(flag), "--no-progress"]) == 0
    capsys.readouterr()
    assert len(list(iter_records(flag))) == 2 and len(list(iter_records(tmp_path / "from-toml.jsonl"))) == 2
    # --resume finds the TOML's output too
    assert main(["matrix", str(toml), "--resume", "--no-progress"]) == 0
    assert "2 of 2 cells already recorded in from-toml.jsonl" in capsys.readouterr().err


def test_matrix_without_output_prints_every_record_on_stdout(tmp_path, capsys):
    toml = tmp_path / "m.toml"
    toml.write_text(TINY_TOML)
    assert main(["matrix", str(toml), "--no-progress"]) == 0
    out, err = capsys.readouterr()
    records = [json.loads(line) for line in out.splitlines()]  # stdout is JSONL: `> results.jsonl` keeps them
    assert [(r["spec"]["arch"], r["status"]) for r in records] == [("transformer", "ok"), ("hybrid", "ok")]
    assert "printed on stdout" in err and "transformer" in err  # the note, and the summary table on stderr


def test_matrix_resume_without_output_is_refused(tmp_path, capsys):
    from tests.bad_input import user_error

    user_error(capsys, ["matrix", "--arch", "transformer", "--frames", "2", *SMALL, "--resume", "--no-progress"],
               "--resume", "--output")


def test_disk_full_stops_the_matrix_and_keeps_the_records_written(tmp_path, capsys, monkeypatch):
    import errno

    import bench.records

    out = tmp_path / "m.jsonl"
    real_fsync, calls = os.fsync, []

    def fsync(fd):  # the second record's write hits a full disk
        calls.append(fd)
        if len(calls) == 2:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_fsync(fd)

    monkeypatch.setattr(bench.records.os, "fsync", fsync)
    rc = main(["matrix", "--arch", "transformer,mamba,hybrid", "--frames", "2", *SMALL, "--output", str(out),
               "--no-progress"])
    stdout, stderr = capsys.readouterr()
    assert rc == 2
    assert stderr.splitlines()[-1] == (f"viperbench: error: cannot write output {out}: No space left on device; "
                                       "the record is printed on stdout")
    assert "Traceback" not in stderr
    assert json.loads(stdout.strip().splitlines()[-1])["spec"]["arch"] == "mamba"  # the measured record, printed
    assert [r["spec"]["arch"] for r in iter_records(out)] == ["transformer"]  # intact; the cut line removed
    assert out.read_text().count("\n") == 1  # and the hybrid cell never ran


# --- failures do not stop the matrix ------------------------------------------------------

def test_failing_cell_does_not_stop_matrix(tmp_path, capsys, monkeypatch):
    real = bench.measure.runner.one_pass

    def one_pass(spec, *args, **kwargs):
        if spec.arch == "mamba":
            raise RuntimeError("mamba exploded\nwith details")
        return real(spec, *args, **kwargs)

    monkeypatch.setattr(bench.measure.runner, "one_pass", one_pass)
    out = tmp_path / "m.jsonl"
    rc = main(["matrix", "--arch", "transformer,mamba,hybrid", "--frames", "2", *SMALL, "--output", str(out),
               "--no-progress"])
    assert rc == 1
    stdout, _ = capsys.readouterr()
    records = list(iter_records(out))
    assert [(r["spec"]["arch"], r["status"]) for r in records] == [
        ("transformer", "ok"), ("mamba", "error"), ("hybrid", "ok")]
    error = records[1]["error"]
    assert error == "RuntimeError: mamba exploded"
    assert "error" in stdout and "hybrid" in stdout


def test_oom_cell_does_not_stop_matrix(tmp_path, capsys):
    out = tmp_path / "m.jsonl"
    rc = main(["matrix", "--arch", "transformer", "--frames", "2", *SMALL, "--memory-budget", "1,4GiB",
               "--output", str(out), "--no-progress"])
    assert rc == 0  # an OOM is a result, not a failure
    capsys.readouterr()
    records = list(iter_records(out))
    assert [(r["spec"]["memory_budget"], r["status"]) for r in records] == [(1, "oom"), (4 * 2**30, "ok")]
    assert "OverBudget" in records[0]["error"]


# --- real processes -----------------------------------------------------------------------

def test_kill_mid_matrix_then_resume(tmp_path):
    out = tmp_path / "m.jsonl"
    cmd = [sys.executable, "-m", "bench.cli", "matrix", "--arch", "transformer,mamba,hybrid", "--frames", "2,3",
           *SMALL, "--output", str(out), "--no-progress"]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            if out.exists() and out.read_bytes().count(b"\n") >= 2:
                break
            time.sleep(0.01)
        assert proc.poll() is None, "the matrix ended before it could be killed"
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL

    killed = out.read_bytes()
    *complete, tail = killed.split(b"\n")
    assert 2 <= len(complete) < 6
    for line in complete:
        assert json.loads(line)["status"] == "ok"
    if tail:  # a line cut short: skipped when reading
        with pytest.raises(ValueError):
            json.loads(tail)
    assert len(list(iter_records(out, warn=False))) == len(complete)

    done = subprocess.run(cmd + ["--resume"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert f"{len(complete)} of 6" in done.stderr
    final = out.read_bytes()
    prefix = b"".join(line + b"\n" for line in complete)
    assert final.startswith(prefix)  # earlier records untouched, byte for byte
    records = list(iter_records(out, warn=False))
    ok = [spec_key(r["spec"]) for r in records if r["status"] == "ok"]
    assert len(ok) == 6 and len(set(ok)) == 6
    assert sorted({(r["spec"]["arch"], r["spec"]["frames"]) for r in records}) == [
        ("hybrid", 2), ("hybrid", 3), ("mamba", 2), ("mamba", 3), ("transformer", 2), ("transformer", 3)]


def test_process_launcher_matches_inline(tmp_path, capsys):
    inline_out, process_out = tmp_path / "inline.jsonl", tmp_path / "process.jsonl"
    argv = ["matrix", "--arch", "hybrid", "--frames", "2", *SMALL, "--no-progress"]
    assert main(argv + ["--output", str(inline_out)]) == 0
    assert main(argv + ["--output", str(process_out), "--launcher", "process"]) == 0
    capsys.readouterr()
    (inline,), (child,) = list(iter_records(inline_out)), list(iter_records(process_out))
    assert child["status"] == "ok", child.get("error")
    assert set(child) == set(inline)
    assert child["spec"] == inline["spec"]
    assert set(child["metrics"]) == set(inline["metrics"])
    assert set(child["env"]) == set(inline["env"])
    for key in ("input_tokens", "vision_tokens", "tokens_after_compression"):
        assert child["metrics"][key] == inline["metrics"][key]


def test_interleaved_matrix_keeps_rounds_in_order(tmp_path, capsys):
    out = tmp_path / "interleaved.jsonl"
    argv = ["matrix", "--arch", "transformer,hybrid", "--preset", "tiny", "--frames", "2", "--prompt-tokens", "4",
            "--new-tokens", "2", "--warmup", "1", "--repeats", "3", "--interleave", "--output", str(out),
            "--no-progress"]
    assert main(argv) == 0
    err = capsys.readouterr().err
    assert "[1/2] transformer/tiny frames=2: ok" in err and "[2/2] hybrid/tiny frames=2: ok" in err
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["spec"]["arch"] for r in records] == ["transformer", "hybrid"]
    for r in records:
        assert r["status"] == "ok" and r["interleaved"] is True
        assert len(r["metrics"]["spread"]["prefill_tok_s"]["values"]) == 3
    assert main(argv[:-3] + ["--launcher", "process"]) == 2  # interleaving needs every cell in this process


# --- the matrix drives any launcher through submit(spec) -> Future --------------------------

class _HeldLauncher:
    """A launcher whose cells finish when the test says so, in any order."""

    name = "held"

    def __init__(self, capacity: int):
        self.capacity, self.futures, self.in_flight, self.most = capacity, {}, 0, 0

    def submit(self, spec):
        from concurrent.futures import Future

        future = Future()
        self.futures[spec.frames] = future
        self.in_flight += 1
        self.most = max(self.most, self.in_flight)
        return future

    def finish(self, frames: int) -> None:
        self.in_flight -= 1
        spec = next(c for c in CELLS if c.frames == frames)
        self.futures[frames].set_result({"schema": 1, "status": "ok", "error": None, "spec": spec.to_dict(),
                                         "metrics": {"prefill_tok_s": 1, "decode_tok_s": 1, "ttft_s": 1,
                                                     "peak_mem_bytes": 1}})


CELLS = expand({"arch": ["transformer"], "preset": ["tiny"], "frames": ["1", "2", "3", "4"]})


def test_matrix_submits_up_to_capacity_and_keeps_records_in_completion_order():
    import threading

    from bench.launch.matrix import _drive

    launcher, kept = _HeldLauncher(capacity=2), []
    # cells finish in the order 2, 1, 4, 3: each as soon as it is in flight and the one before it is kept
    order = [2, 1, 4, 3]

    def finisher():
        for frames in order:
            deadline = time.monotonic() + 10
            while frames not in launcher.futures and time.monotonic() < deadline:
                time.sleep(0.01)
            launcher.finish(frames)
            while len(kept) < order.index(frames) + 1 and time.monotonic() < deadline:
                time.sleep(0.01)

    thread = threading.Thread(target=finisher)
    thread.start()
    _drive(launcher, CELLS, len(CELLS), kept.append, progress=False)
    thread.join()
    assert [r["spec"]["frames"] for r in kept] == order
    assert launcher.most == 2  # never more than the capacity in flight
    assert all(r["wall_s"] >= 0 for r in kept)  # the matrix times a record the launcher did not


def test_resume_is_order_independent(tmp_path, capsys):
    """A cell is skipped when its record is anywhere in the output (records of a concurrent run are in
    completion order, with other lines between them)."""
    out = tmp_path / "m.jsonl"
    axes = {"arch": "transformer,mamba", "frames": "2,3", "preset": "tiny", "prompt_tokens": "4", "new_tokens": "2",
            "warmup": "0", "repeats": "1"}
    cells = expand(axes_from_flags(axes))
    lines = [json.dumps({"schema": 1, "status": "ok", "error": None, "spec": cells[i].to_dict(), "metrics": {}})
             for i in (3, 0, 2)]
    lines.insert(1, json.dumps({"schema": 1, "status": "error", "error": "x", "spec": cells[1].to_dict()}))
    out.write_text("\n".join(lines) + "\n")
    argv = ["matrix", "--arch", "transformer,mamba", "--frames", "2,3", *SMALL, "--output", str(out),
            "--no-progress", "--resume"]
    assert main(argv) == 0
    assert "resuming: 3 of 4 cells already recorded" in capsys.readouterr().err
    records = list(iter_records(out))
    assert len(records) == 5 and records[-1]["spec"] == cells[1].to_dict() and records[-1]["status"] == "ok"


def test_process_launcher_with_jobs_runs_every_cell_once(tmp_path, capsys):
    out = tmp_path / "m.jsonl"
    argv = ["matrix", "--arch", "transformer", "--frames", "1,2", *SMALL, "--launcher", "process", "--jobs", "2",
            "--cpus-per-cell", "1", "--output", str(out), "--no-progress"]
    assert main(argv) == 0
    capsys.readouterr()
    records = list(iter_records(out))
    assert sorted(r["spec"]["frames"] for r in records) == [1, 2]
    assert all(r["status"] == "ok" and "1 threads" in r["env"]["device_name"] for r in records)


@pytest.mark.parametrize("extra, needles", [
    (["--launcher", "ray", "--interleave"], ("--interleave", "--launcher inline")),
    (["--launcher", "process", "--jobs", "2", "--interleave"], ("--interleave", "--launcher inline")),
    (["--jobs", "2"], ("--jobs", "inline")),
    (["--cpus-per-cell", "2"], ("--cpus-per-cell",)),
    (["--launcher", "process", "--ray-address", "auto"], ("--ray-address", "--launcher ray")),
    (["--launcher", "slurm"], ("unknown launcher 'slurm'", "inline, process, ray")),
])
def test_launcher_options_that_do_not_apply_are_one_line_errors(capsys, extra, needles):
    from tests.bad_input import user_error

    user_error(capsys, ["matrix", "--arch", "transformer", "--frames", "2", *SMALL, "--no-progress", *extra],
               *needles)
