"""Bad input on the command line: exit code 2 and exactly one line on stderr naming it, no traceback."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from bench.cli import main
from bench.records import append_record, make_record
from tests.bad_input import assert_one_line_error

REPO = Path(__file__).resolve().parents[1]
TINY = ["--preset", "tiny", "--frames", "2", "--prompt-tokens", "4", "--new-tokens", "2",
        "--warmup", "0", "--repeats", "1"]


def run_args(*extra: str, arch: str = "transformer") -> list[str]:
    """A cheap `run` command line; later flags override earlier ones (argparse keeps the last)."""
    return ["run", "--arch", arch, *TINY, *extra]


def user_error(capsys, argv: list[str], *needles: str) -> str:
    rc = main(argv)
    out, err = capsys.readouterr()
    assert rc == 2, (rc, err)
    assert out == ""
    assert err.startswith("viperbench: error: ")
    assert_one_line_error(err, *needles)
    return err


# --- registries ---------------------------------------------------------------------------

def test_unknown_arch_lists_registered(capsys):
    user_error(capsys, run_args(arch="gru"), "'gru'", "transformer", "mamba", "hybrid")


def test_unknown_preset_lists_presets(capsys):
    user_error(capsys, run_args("--preset", "huge"), "'huge'", "tiny", "small", "paper")


def test_unknown_compressor_lists_none(capsys):
    user_error(capsys, run_args("--compressor", "zip"), "'zip'", "none")


@pytest.mark.parametrize("spec, needle", [("none:x", "'x'"), ("none:=3", "'=3'"), (":p=1", "':p=1'")])
def test_malformed_compressor_spec(capsys, spec, needle):
    user_error(capsys, run_args("--compressor", spec), "malformed compressor spec", needle)


def test_unknown_compressor_key(capsys):
    user_error(capsys, run_args("--compressor", "none:p=0.5"), "'p'", "'none'")


# --- numbers ------------------------------------------------------------------------------

def test_zero_frames(capsys):
    user_error(capsys, run_args("--frames", "0"), "frames", "0")


@pytest.mark.parametrize("flag, field, value", [
    ("--prompt-tokens", "prompt_tokens", "-1"),
    ("--tokens-per-frame", "tokens_per_frame", "0"),
    ("--new-tokens", "new_tokens", "0"),
    ("--batch", "batch", "0"),
    ("--repeats", "repeats", "0"),
    ("--warmup", "warmup", "-1"),
    ("--prefill-chunk", "prefill_chunk", "0"),
])
def test_non_positive_counts(capsys, flag, field, value):
    user_error(capsys, run_args(f"{flag}={value}"), flag, value)


@pytest.mark.parametrize("value", ["abc", "2.5", ""])
def test_non_integer_frames(capsys, value):
    user_error(capsys, run_args(f"--frames={value}"), "frames", repr(value))


# --- choices ------------------------------------------------------------------------------

@pytest.mark.parametrize("flag, value, valid", [
    ("--dtype", "float64", "bfloat16"),
    ("--device", "tpu", "cuda"),
    ("--device", "cuda:x", "cuda:N"),
    ("--vision", "clip", "siglip"),
    ("--task", "nope", "synthetic"),
    ("--launcher", "slurm", "process"),
])
def test_unknown_choice(capsys, flag, value, valid):
    user_error(capsys, run_args(flag, value), repr(value), valid)


@pytest.mark.parametrize("value", ["lots", "8XB", "-5MiB", "0"])
def test_bad_memory_budget(capsys, value):
    user_error(capsys, run_args(f"--memory-budget={value}"), repr(value))


def test_matrix_bad_value_in_list(capsys):
    user_error(capsys, ["matrix", "--arch", "transformer", *TINY, "--frames", "2,0", "--no-progress"],
               "frames", "0")


def test_matrix_empty_list(capsys, tmp_path):
    toml = tmp_path / "m.toml"
    toml.write_text('arch = "transformer"\nframes = []\n')
    user_error(capsys, ["matrix", str(toml), "--no-progress"], "frames")


# --- output -------------------------------------------------------------------------------

def test_unwritable_output_run(capsys, tmp_path):
    afile = tmp_path / "afile"
    afile.write_text("not a directory\n")
    target = afile / "x.jsonl"
    user_error(capsys, run_args("--output", str(target)), str(target))
    assert afile.read_text() == "not a directory\n"


def test_unwritable_output_matrix_runs_nothing(capsys, tmp_path, monkeypatch):
    import bench.measure.runner

    def boom(*a, **k):  # the output is checked before any cell runs
        raise AssertionError("a cell ran")

    monkeypatch.setattr(bench.measure.runner, "run_cell", boom)
    afile = tmp_path / "afile"
    afile.write_text("")
    target = afile / "deeper" / "x.jsonl"
    user_error(capsys, ["matrix", "--arch", "transformer", *TINY, "--output", str(target), "--no-progress"],
               str(target))


# --- matrix files -------------------------------------------------------------------------

def test_missing_toml(capsys, tmp_path):
    path = tmp_path / "missing.toml"
    user_error(capsys, ["matrix", str(path), "--no-progress"], str(path), "not found")


def test_malformed_toml(capsys, tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text('arch = ["transformer"\nframes = \n')
    user_error(capsys, ["matrix", str(path), "--no-progress"], str(path), "malformed")


def test_toml_unknown_key(capsys, tmp_path):
    path = tmp_path / "unknown.toml"
    path.write_text('arch = "transformer"\nframez = [2, 3]\n')
    user_error(capsys, ["matrix", str(path), "--no-progress"], "'framez'")


@pytest.mark.parametrize("value", ["0", "-1"])
def test_toml_non_positive_memory_budget(capsys, tmp_path, value):
    path = tmp_path / "budget.toml"
    path.write_text(f'arch = "transformer"\npreset = "tiny"\nframes = 2\nprompt_tokens = 4\nnew_tokens = 2\n'
                    f'warmup = 0\nrepeats = 1\nmemory_budget = {value}\n')
    user_error(capsys, ["matrix", str(path), "--no-progress"], "memory", value)


def test_toml_boolean_frames(capsys, tmp_path):
    path = tmp_path / "bool.toml"
    path.write_text('arch = "transformer"\nframes = true\n')
    user_error(capsys, ["matrix", str(path), "--no-progress"], "frames")


def test_abbreviated_flag_is_not_accepted():
    assert main(["matrix", "--arch", "transformer", "--resum"]) == 2


# --- argparse -----------------------------------------------------------------------------

@pytest.mark.parametrize("argv, needle", [
    (["bench"], "'bench'"),
    (["run", "--arch", "transformer", "--bogus-flag", "1"], "--bogus-flag"),
    (["matrix", "--arch", "transformer", "--no-such-flag"], "--no-such-flag"),
    ([], "command"),
    (["maxframes", "--arch", "hybrid", "--start", "many"], "many"),
])
def test_argparse_errors(capsys, argv, needle):
    assert main(argv) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert_one_line_error(err, needle)


@pytest.mark.parametrize("extra, needle", [
    (["--start", "0"], "--start"),
    (["--start", "8", "--frames-limit", "4"], "--frames-limit"),
    (["--start", "8", "--limit", "4"], "--frames-limit"),  # the deprecated name of --frames-limit
    (["--precision", "1.5"], "--precision"),
])
def test_maxframes_bad_search_settings(capsys, extra, needle):
    user_error(capsys, ["maxframes", "--arch", "hybrid", "--preset", "tiny", *extra], needle)


# --- table --------------------------------------------------------------------------------

def test_table_missing_file(capsys, tmp_path):
    path = tmp_path / "nope.jsonl"
    user_error(capsys, ["table", str(path)], str(path))


def test_table_unknown_metric(capsys, tmp_path):
    path = tmp_path / "r.jsonl"
    spec = {"arch": "transformer", "frames": 2, "preset": "tiny"}
    append_record(path, make_record(spec, {}, metrics={"prefill_tok_s": 10.0}))
    user_error(capsys, ["table", str(path), "--metric", "speediness"], "'speediness'")


def test_table_unknown_format(capsys, tmp_path):
    path = tmp_path / "r.jsonl"
    append_record(path, make_record({"arch": "transformer", "frames": 2}, {}, metrics={"prefill_tok_s": 1.0}))
    user_error(capsys, ["table", str(path), "--format", "html"], "'html'")


# --- real processes -----------------------------------------------------------------------

def _cli(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "bench.cli", *argv], cwd=REPO, capture_output=True, text=True,
                          timeout=120)


def test_process_user_error_exit_code(tmp_path):
    proc = _cli("matrix", "--arch", "gru,transformer", *TINY, "--output", str(tmp_path / "r.jsonl"),
                "--no-progress")
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert_one_line_error(proc.stderr, "'gru'", "transformer", "mamba", "hybrid")
    assert not (tmp_path / "r.jsonl").exists() or (tmp_path / "r.jsonl").read_text() == ""


def test_process_argparse_exit_code():
    proc = _cli("frobnicate")
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert_one_line_error(proc.stderr, "'frobnicate'")
