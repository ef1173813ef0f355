"""Bad input and faults that could lose work (issue 15, items 1, 7, 9, 17): one row per case.

Every row: exit 2, exactly one stderr line naming the problem, no traceback; where something
was measured, the record is still printed on stdout.
"""

from __future__ import annotations

import errno
import json
import os
import pickle

import pytest
import torch

from tasks import fixtures
from tests.bad_input import assert_one_line_error, user_error

CELL = ["--arch", "transformer", "--preset", "tiny", "--frames", "2", "--prompt-tokens", "4", "--new-tokens", "2",
        "--warmup", "0", "--repeats", "1"]
TRAIN = ["train", "--arch", "transformer", "--steps", "1", "--batch", "1", "--lengths", "4", "--no-progress"]
MATRIX_TOML = ('arch = "transformer"\npreset = "tiny"\nframes = 2\nprompt_tokens = 4\nnew_tokens = 2\nwarmup = 0\n'
               'repeats = 1\n')


@pytest.fixture
def no_training(monkeypatch):
    """Bad training input is refused before a model is built or a step runs."""
    from bench import train as train_mod

    def boom(*args, **kwargs):
        raise AssertionError("training started")

    monkeypatch.setattr(train_mod, "build", boom)


@pytest.fixture(scope="module")
def videomme(tmp_path_factory):
    root = tmp_path_factory.mktemp("videomme")
    fixtures.make_videomme(root, videos=1)
    return root


# --- item 1: a matrix file's output key ---------------------------------------------------------

@pytest.mark.parametrize("value, needle", [
    ("5", "output must be a file name"),
    ('""', "output must be a file name"),
    ('["a.jsonl"]', "output must be a file name"),
    ("{ path = 'a.jsonl' }", "output must be a file name"),
    ('"afile/under/r.jsonl"', "cannot write output"),
], ids=["int", "empty", "list", "table", "under-a-file"])
def test_item1_matrix_toml_output_refused(capfd, tmp_path, monkeypatch, value, needle):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "afile").write_text("")
    toml = tmp_path / "m.toml"
    toml.write_text(MATRIX_TOML + f"output = {value}\n")
    user_error(capfd, ["matrix", str(toml), "--no-progress"], needle)


def test_item1_matrix_resume_needs_an_output(capfd, tmp_path):
    toml = tmp_path / "m.toml"
    toml.write_text(MATRIX_TOML)
    user_error(capfd, ["matrix", str(toml), "--resume", "--no-progress"], "--resume", "--output")


# --- item 7: train --output and numeric flags, before any step ------------------------------------

@pytest.mark.parametrize("output, needles", [
    ("afile", ("afile is a file",)),
    ("afile/run", ("afile is a file, not a directory",)),
    ("afile/deeper/run", ("afile is a file, not a directory",)),
    (".", ("'.'", "checkpoint directory itself")),
    ("..", ("'..'", "checkpoint directory itself")),
    ("", ("''", "checkpoint directory itself")),
    ("/proc/viperbench-out", ("cannot write --output /proc/viperbench-out",)),  # unwritable, even for root
], ids=["file", "under-a-file", "deep-under-a-file", "dot", "dotdot", "empty", "unwritable-dir"])
def test_item7_train_output_checked_first(capfd, tmp_path, monkeypatch, no_training, output, needles):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "afile").write_text("keep me\n")
    user_error(capfd, [*TRAIN, "--output", output], *needles)
    assert (tmp_path / "afile").read_text() == "keep me\n"


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into a read-only directory")
def test_item7_train_output_in_a_read_only_directory(capfd, tmp_path, no_training):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o555)
    user_error(capfd, [*TRAIN, "--output", str(locked / "run")], "cannot write --output", "Permission denied")


@pytest.mark.parametrize("flag, value, shown", [
    ("--lr", "-0.001", "-0.001"),
    ("--lr", "nan", "nan"),
    ("--lr", "inf", "inf"),
    ("--lr", "-inf", "-inf"),
    ("--lr", "0", "0.0"),
    ("--steps", "0", "0"),
    ("--steps", "-5", "-5"),
    ("--batch", "0", "0"),
    ("--save-every", "0", "0"),
    ("--save-every", "-1", "-1"),
    ("--tokens-per-frame", "0", "0"),
    ("--lengths", "0,4", "'0,4'"),
    ("--lengths", "4,-8", "'4,-8'"),
    ("--lengths", ",", "''"),
    ("--lengths", "4,x", "'4,x'"),
])
def test_item7_train_numbers_refused(capfd, tmp_path, no_training, flag, value, shown):
    user_error(capfd, [*TRAIN, "--output", str(tmp_path / "run"), f"{flag}={value}"], flag, f"got {value!r}")
    assert not (tmp_path / "run").exists()


# --- item 17: a training state is never unpickled -----------------------------------------------

class _RunsCode:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))  # creates the marker file when unpickled


def _plain_pickle(path, marker):
    path.write_bytes(pickle.dumps({"identity": _RunsCode(str(marker))}))


def _torch_save(path, marker):
    torch.save({"step": 1, "identity": _RunsCode(str(marker))}, path)


def _garbage(path, marker):
    path.write_bytes(b"not a checkpoint")


def _truncated(path, marker):
    torch.save({"step": 1, "identity": {}}, path)
    path.write_bytes(path.read_bytes()[:64])


def _wrong_shape(path, marker):
    torch.save([1, 2, 3], path)


@pytest.mark.parametrize("write", [_plain_pickle, _torch_save, _garbage, _truncated, _wrong_shape],
                         ids=["pickle-runs-code", "torch-save-runs-code", "garbage", "truncated", "wrong-shape"])
def test_item17_training_state_is_loaded_weights_only(capfd, tmp_path, write):
    out, marker = tmp_path / "run", tmp_path / "code-ran"
    out.mkdir()
    state = out / "train_state.pt"
    write(state, marker)
    user_error(capfd, [*TRAIN, "--output", str(out)], f"cannot load training state {state}")
    assert not marker.exists(), "the state file ran code"
    assert state.is_file()  # refused, not deleted


# --- item 9: a full disk: one line naming the file, the record still printed ---------------------

DISK_FULL = {
    "run": ["run", *CELL, "--output", "{out}"],
    "matrix": ["matrix", *CELL, "--output", "{out}", "--no-progress"],
    "matrix-toml": ["matrix", "{toml}", "--no-progress"],
    "predict": ["predict", "--arch", "transformer", "--preset", "tiny", "--frames", "16", "--no-max-frames",
                "--output", "{out}"],
    "eval-log": ["eval", "--task", "videomme", "--data", "{data}", "--arch", "transformer", "--preset", "tiny",
                 "--frames", "2", "--limit", "1", "--log", "{out}"],
    "eval-output": ["eval", "--task", "videomme", "--data", "{data}", "--arch", "transformer", "--preset", "tiny",
                    "--frames", "2", "--limit", "1", "--output", "{out}"],
    "score": ["score", "--task", "videomme", "--data", "{data}", "--predictions", "{predictions}", "--output", "{out}"],
}


def _argv(command, out, tmp_path, data):
    toml = tmp_path / "m.toml"
    toml.write_text(MATRIX_TOML + f"output = {json.dumps(str(out))}\n")
    predictions = tmp_path / "predictions.jsonl"
    predictions.write_text("")
    return [a.format(out=out, toml=toml, data=data, predictions=predictions) for a in DISK_FULL[command]]


def _printed_record(out: str) -> dict:
    lines = [line for line in out.splitlines() if line.startswith("{")]
    assert lines, f"the measured record was not printed: {out!r}"
    return json.loads(lines[-1])


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
@pytest.mark.parametrize("command", list(DISK_FULL))
def test_item9_dev_full(capfd, tmp_path, videomme, command):
    from bench.cli import main

    capfd.readouterr()
    assert main(_argv(command, "/dev/full", tmp_path, videomme)) == 2
    stdout, stderr = capfd.readouterr()
    assert stderr.startswith("viperbench: error: cannot write output /dev/full")
    assert_one_line_error(stderr, "No space left on device", "printed on stdout")
    _printed_record(stdout)


@pytest.mark.parametrize("command", list(DISK_FULL))
def test_item9_enospc_on_a_regular_file(capfd, tmp_path, videomme, monkeypatch, command):
    """The write itself fails (a disk filling up mid-run): the file keeps what it held before."""
    import bench.records

    out = tmp_path / "results.jsonl"
    out.write_text('{"kept": 1}\n')
    real = os.fsync

    def fsync(fd):
        if os.path.realpath(f"/proc/self/fd/{fd}") == str(out.resolve()):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real(fd)

    monkeypatch.setattr(bench.records.os, "fsync", fsync)
    from bench.cli import main

    capfd.readouterr()
    assert main(_argv(command, out, tmp_path, videomme)) == 2
    stdout, stderr = capfd.readouterr()
    assert stderr == f"viperbench: error: cannot write output {out}: No space left on device; " \
                     "the record is printed on stdout\n"
    _printed_record(stdout)
    assert out.read_text() == '{"kept": 1}\n'
