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
from bench.pipeline import prefill
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
