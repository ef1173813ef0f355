"""`viperbench train`: the loss goes down, runs resume deterministically, TransV trains alone, bad input."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch
from safetensors.torch import load_file

from bench import train as train_mod
from bench.cli import main
from bench.errors import UserError
from bench.engine.pipeline import prefill
from bench.train import TrainSettings, train

QUICK = dict(arch="transformer", steps=12, batch=8, lengths=(4,), warmup=0, save_every=4, tokens_per_frame=4)


def curve(path):
    return [json.loads(line) for line in (path / "loss.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("train") / "model"
    summary = train(TrainSettings(output=str(out), **QUICK), progress=False)
    return out, summary


def test_short_run_lowers_the_loss(trained):
    out, summary = trained
    losses = [r["loss"] for r in curve(out)]
    assert len(losses) == 12 and summary["steps"] == 12
    assert sum(losses[-3:]) / 3 < 0.8 * sum(losses[:3]) / 3
    for name in ("config.json", "model.safetensors", "vision/config.json", "projector.safetensors",
                 "training.json", "train_state.pt"):
        assert (out / name).is_file(), name
    assert json.loads((out / "training.json").read_text())["settings"]["arch"] == "transformer"


def test_resume_ends_where_an_uninterrupted_run_ends(trained, tmp_path):
    out, _ = trained
    half = tmp_path / "half"
    train(TrainSettings(output=str(half), **{**QUICK, "steps": 8}), progress=False)
    assert len(curve(half)) == 8
    train(TrainSettings(output=str(half), **QUICK), progress=False)  # same settings, more steps: resumes
    assert curve(half) == curve(out)
    a, b = load_file(half / "model.safetensors"), load_file(out / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_an_interrupted_run_loses_only_the_steps_since_its_last_save(tmp_path, monkeypatch):
    out = tmp_path / "cut"
    real = train_mod.batch_loss
    calls = {"n": 0}

    def flaky(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 7:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(train_mod, "batch_loss", flaky)
    with pytest.raises(KeyboardInterrupt):
        train(TrainSettings(output=str(out), **QUICK), progress=False)
    assert len(curve(out)) == 4  # saved at step 4; steps 5-6 are lost, nothing else
    assert not (out.parent / "cut.partial").exists()


def test_transv_training_opens_the_gates_and_departs_from_td(trained, tmp_path):
    from architectures import ARCHITECTURES
    from compressors.base import make_compressor

    base, _ = trained
    out = tmp_path / "transv"
    schedule = "uni_2_0.75"
    train(TrainSettings(output=str(out), checkpoint=str(base), train="transv",
                        compressor=f"transv:schedule={schedule}", **{**QUICK, "steps": 4}), progress=False)
    weights = load_file(out / "transv.safetensors")
    assert set(weights) >= {"2.alpha", "2.q_proj.weight"} and float(weights["2.alpha"]) != 0.0
    assert torch.equal(load_file(out / "model.safetensors")["lm_head.weight"],
                       load_file(base / "model.safetensors")["lm_head.weight"])  # the model stayed frozen

    bb = ARCHITECTURES.get("transformer").build(checkpoint=str(out))
    tv, td = make_compressor(f"transv:schedule={schedule}"), make_compressor(f"td:schedule={schedule}")
    tv.prepare(bb)
    assert tv.trained_from and float(tv.cross["2"].alpha) == float(weights["2.alpha"])
    embeds = bb.embed(torch.randint(3, 500, (1, 40), generator=torch.Generator().manual_seed(0)))
    a, _ = prefill(bb, embeds, compressor=tv, vision=(1, 33))
    b, _ = prefill(bb, embeds, compressor=td, vision=(1, 33))
    assert not torch.equal(a, b)
    with pytest.raises(UserError, match=r"names layer\(s\) \[5\].*layer\(s\) \[2\] only"):
        make_compressor("transv:schedule=uni_2_0.5-uni_5_0.5").prepare(bb)


def test_bad_input(trained, tmp_path, capsys):
    base, _ = trained
    cases = [
        (["--train", "transv", "--checkpoint", str(base)], "needs --compressor transv"),
        (["--train", "transv", "--compressor", "transv:schedule=uni_2_0.5"], "give --checkpoint"),
        (["--checkpoint", str(tmp_path / "nowhere"), "--train", "transv", "--compressor", "transv:schedule=uni_2_0.5"],
         "training checkpoint not found"),
        (["--train", "transv", "--checkpoint", str(base), "--compressor", "transv:schedule=uni_40_0.5"],
         "layer 40 is outside"),
        (["--lengths", "4,x"], "--lengths"),
        (["--train", "everything"], "unknown --train"),
    ]
    for extra, needle in cases:
        out = tmp_path / f"out{len(needle)}"
        assert main(["train", "--arch", "transformer", "--output", str(out), "--steps", "1", "--no-progress",
                     *extra]) == 2, extra
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and needle in err, err
    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    (corrupt / "train_state.pt").write_bytes(b"not a checkpoint")
    assert main(["train", "--arch", "transformer", "--output", str(corrupt), "--no-progress"]) == 2
    assert "cannot load training state" in capsys.readouterr().err
    other = replace(TrainSettings(output=str(base), **QUICK), seed=1)
    with pytest.raises(UserError, match="other settings \\(seed\\)"):
        train(other, progress=False)


def test_samples_per_step_names_what_train_batches_and_the_defaults_match_run():
    """train's --samples-per-step (old name --batch, still accepted) is samples per optimizer step, unlike
    run's --batch (videos per forward pass); --tokens-per-frame defaults as in run and eval."""
    from bench.cli import build_parser
    from bench.spec import CellSpec

    parse = build_parser().parse_args
    base = ["train", "--arch", "transformer", "--output", "o"]
    assert parse([*base, "--samples-per-step", "3"]).batch == 3
    assert parse([*base, "--batch", "5"]).batch == 5
    args = parse(base)
    assert args.batch == TrainSettings(arch="transformer", output="o").batch == 16
    assert args.tokens_per_frame == TrainSettings(arch="transformer", output="o").tokens_per_frame \
        == CellSpec(arch="transformer").tokens_per_frame
    with pytest.raises(UserError, match="--samples-per-step must be a positive integer"):
        TrainSettings(arch="transformer", output="o", batch=0).check()


# --- a kill at every point of a checkpoint save ----------------------------------------------

class Killed(BaseException):
    """The process dies here (BaseException: nothing in the trainer catches it)."""


KILL = dict(arch="transformer", steps=4, batch=2, lengths=(4,), warmup=0, save_every=2, tokens_per_frame=4, seed=3)


def _file_operations():
    """Every call that changes files during a save, including the ones inside the libraries' savers."""
    import os
    import pathlib
    import shutil

    import safetensors.torch
    import transformers

    from architectures.vision import VisionSide

    return [(shutil, "rmtree"), (pathlib.Path, "mkdir"), (pathlib.Path, "rename"), (pathlib.Path, "write_text"),
            (os, "replace"), (os, "rename"), (os, "fsync"), (torch, "save"), (safetensors.torch, "save_file"),
            (transformers.PreTrainedModel, "save_pretrained"), (VisionSide, "save")]


def _die_at(monkeypatch, k: int | None, mode: str = "before") -> dict:
    """Arm a kill at the k-th file operation of the last save (k=None: only count them).

    ``before``: the process dies just before the operation; ``during``: a text file is left half
    written, a tree half removed, then the process dies.
    """
    import pathlib

    log = {"ops": 0, "names": [], "committed": False, "armed": False}
    for owner, name in _file_operations():
        real = getattr(owner, name)

        def wrapped(*args, _real=real, _name=name, **kwargs):
            if log["armed"]:
                log["ops"] += 1
                log["names"].append(_name)
                if log["ops"] == k:
                    if mode == "during" and _name == "write_text":
                        pathlib.Path(args[0]).write_bytes(args[1].encode()[: len(args[1]) // 2])
                    elif mode == "during" and _name == "rmtree" and pathlib.Path(args[0]).is_dir():
                        victim = next((p for p in sorted(pathlib.Path(args[0]).rglob("*")) if p.is_file()), None)
                        if victim is not None:
                            victim.unlink()
                    raise Killed(f"{_name} #{k}")
            result = _real(*args, **kwargs)
            if log["armed"] and _name == "replace" and pathlib.Path(args[1]).name == train_mod.STATE:
                log["committed"] = True  # the new checkpoint is complete from here on
            return result

        monkeypatch.setattr(owner, name, wrapped)
    real_save = train_mod.save

    def save(out, s, parts, state, summary):
        log["armed"] = state["step"] == KILL["steps"]  # the second save: a previous complete one exists
        try:
            real_save(out, s, parts, state, summary)
        finally:
            log["armed"] = False

    monkeypatch.setattr(train_mod, "save", save)
    return log


def _steps_run(monkeypatch) -> dict:
    real, count = train_mod.batch_loss, {"n": 0}

    def counted(*args, **kwargs):
        count["n"] += 1
        return real(*args, **kwargs)

    monkeypatch.setattr(train_mod, "batch_loss", counted)
    return count


@pytest.fixture(scope="module")
def kill_reference(tmp_path_factory):
    """An uninterrupted run, and a copy of its checkpoint after the first save (step 2)."""
    import shutil

    root = tmp_path_factory.mktemp("kill")
    full = root / "full"
    train(TrainSettings(output=str(full), **KILL), progress=False)
    first = root / "first"
    train(TrainSettings(output=str(first), **{**KILL, "steps": KILL["save_every"]}), progress=False)
    # the same state a 4-step run has after its first save, except the target step count in training.json
    assert curve(first) == curve(full)[:2]
    return full, first


def test_a_kill_at_every_point_of_save_resumes_from_the_last_complete_save(kill_reference, tmp_path):
    import shutil

    full, first = kill_reference
    with pytest.MonkeyPatch.context() as mp:  # how many file operations one save makes
        log = _die_at(mp, None)
        out = tmp_path / "count"
        shutil.copytree(first, out)
        train(TrainSettings(output=str(out), **KILL), progress=False)
        names = log["names"]
    assert len(names) >= 10 and {"rename", "replace", "rmtree"} <= set(names), names
    halfway = [k for k, name in enumerate(names, 1) if name in ("write_text", "rmtree")]
    reference = load_file(full / "model.safetensors")
    for mode, points in (("before", range(1, len(names) + 1)), ("during", halfway)):
        for k in points:
            out = tmp_path / f"{mode}{k}" / "ckpt"
            shutil.copytree(first, out)
            with pytest.MonkeyPatch.context() as mp:
                log = _die_at(mp, k, mode)
                with pytest.raises(Killed):
                    train(TrainSettings(output=str(out), **KILL), progress=False)
            last_complete = 4 if log["committed"] else 2
            siblings = [out, out.with_name("ckpt.partial"), out.with_name("ckpt.old")]
            assert any((d / train_mod.STATE).is_file() for d in siblings), (mode, k)  # progress is never gone
            with pytest.MonkeyPatch.context() as mp:
                steps = _steps_run(mp)
                train(TrainSettings(output=str(out), **KILL), progress=False)
            assert steps["n"] == KILL["steps"] - last_complete, (mode, k, steps["n"])  # resumed, not restarted
            assert curve(out) == curve(full), (mode, k)
            weights = load_file(out / "model.safetensors")
            assert all(torch.equal(weights[n], reference[n]) for n in reference), (mode, k)
            assert sorted(p.name for p in out.parent.iterdir()) == ["ckpt"], (mode, k)  # no leftovers


def test_a_training_run_sigkilled_during_a_save_resumes(tmp_path):
    """The real thing: a child killed (SIGKILL) while it writes a checkpoint; the rerun resumes from a save."""
    import os
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    settings = dict(arch="transformer", steps=20, batch=1, lengths=(4,), save_every=1, tokens_per_frame=4)
    out = tmp_path / "run"
    partial = tmp_path / "run.partial"
    repo = Path(__file__).resolve().parents[1]
    cmd = [sys.executable, "-m", "bench.cli", "train", "--arch", "transformer", "--steps", "20", "--samples-per-step", "1",
           "--lengths", "4", "--tokens-per-frame", "4", "--save-every", "1", "--output", str(out), "--no-progress"]
    # one thread, as this process computes (tests/conftest.py), so the curves can be equal to the last bit
    child = subprocess.Popen(cmd, cwd=repo, env={**os.environ, "PYTHONPATH": str(repo), "OMP_NUM_THREADS": "1"},
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 300
        while child.poll() is None and time.monotonic() < deadline:
            if partial.exists() and (out.exists() or (tmp_path / "run.old").exists()):  # mid-save, a save before
                child.send_signal(signal.SIGKILL)
                break
            time.sleep(0.002)
        child.wait(timeout=60)
    finally:
        if child.poll() is None:
            child.kill()
    if child.returncode != -signal.SIGKILL:
        pytest.skip("the run ended before a save could be caught")
    with pytest.MonkeyPatch.context() as mp:
        ran = _steps_run(mp)
        train(TrainSettings(output=str(out), **settings), progress=False)
    assert ran["n"] < 20  # resumed from a save, not from step 0
    reference = tmp_path / "reference"
    train(TrainSettings(output=str(reference), **settings), progress=False)
    assert curve(out) == curve(reference)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["reference", "run"]
