"""eval and score end to end on generated datasets in the official layouts (tiny presets, random weights)."""

from __future__ import annotations

import json

import pytest

from bench.cli import main
from bench.evaluation.evaluate import evaluate, score_predictions
from bench.spec import make_spec
from tasks import fixtures


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("datasets")
    fixtures.make_videomme(root, videos=2)
    fixtures.make_charades(root, videos=2)
    fixtures.make_vdc(root, videos=1)
    return root


def spec(task, **kw):
    return make_spec({"arch": "hybrid", "preset": "tiny", "task": task, "frames": 4, "vision": "siglip",
                      "warmup": 0, "repeats": 1, **kw})


def lines(path):
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@pytest.mark.parametrize("task, keys", [("videomme", {"accuracy", "n", "n_total"}),
                                        ("charades", {"miou", "r0.3", "r0.5", "r0.7", "n", "n_total"})])
def test_eval_then_score_the_log(data, tmp_path, task, keys):
    log, out = tmp_path / "docs.jsonl", tmp_path / "eval.jsonl"
    record = evaluate(spec(task), str(data), limit=3, log=str(log), output=str(out))
    metrics = record["task"]["metrics"]
    assert keys <= set(metrics) and record["task"]["n_total"] == 3 and record["task"]["n"] == 3
    assert record["kind"] == "eval" and record["spec"]["task"] == task and lines(out)[0]["task"] == record["task"]
    docs = lines(log)
    assert [d["error"] for d in docs] == [None] * 3 and all(isinstance(d["output"], str) for d in docs)
    assert all(d["timings"]["decode_video_s"] > 0 for d in docs)
    rescored = score_predictions(task, str(data), str(log))  # the per-document log is a predictions file
    # score sees every annotation: the same 3 scored documents, out of all of them
    assert {k: v for k, v in rescored["task"]["metrics"].items() if k != "n_total"} == \
        {k: v for k, v in metrics.items() if k != "n_total"}
    assert rescored["task"]["n"] == 3 and rescored["task"]["n_total"] > 3


def test_compressor_fidelity_and_a_corrupt_video(data, tmp_path):
    charades = sorted((data / "Charades_v1_480").glob("*.mp4"))
    bad = tmp_path / "data"
    bad.mkdir()
    (bad / "charades_sta_test.txt").write_text((data / "charades_sta_test.txt").read_text())
    (bad / "Charades_v1_480").mkdir()
    fixtures.write_corrupt_video(bad / "Charades_v1_480" / charades[0].name)
    for video in charades[1:]:
        (bad / "Charades_v1_480" / video.name).write_bytes(video.read_bytes())
    log = tmp_path / "docs.jsonl"
    record = evaluate(spec("charades", compressor="uniform:layer=0,p=0.5"), str(bad), fidelity=True, log=str(log))
    task = record["task"]
    assert task["n_total"] == 4 and task["n"] == 2  # the two queries on the corrupt video failed, recorded
    assert {"fidelity/agreement", "fidelity/kl_first_token"} <= set(task["metrics"])
    assert task["metrics"]["fidelity/kl_first_token"] >= 0
    errors = [d for d in lines(log) if d["error"]]
    assert len(errors) == 2 and all("VideoError" in d["error"] and "\n" not in d["error"] for d in errors)
    kept = [d["tokens_after_compression"] for d in lines(log) if not d["error"]]
    assert kept and all(k < d for k, d in zip(kept, [d["tokens_in"] for d in lines(log) if not d["error"]]))


class EchoJudge:
    """Answers every question with 'yes', score 5, when the predicted caption is non-empty."""

    name = "echo"

    def complete(self, messages):
        return "{'pred': 'yes', 'score': 5}"


def test_vdc_with_a_judge(data, monkeypatch):
    import tasks.judges

    monkeypatch.setattr(tasks.judges, "make_judge", lambda spec: EchoJudge())
    record = evaluate(spec("vdc", frames=2), str(data), judge="echo", limit=2)
    metrics = record["task"]["metrics"]
    assert metrics["judge"] == "echo" and metrics["n_total"] == 2
    assert {"accuracy", "score"} <= set(metrics)


def test_score_command_and_bad_predictions(data, tmp_path, capsys):
    preds = tmp_path / "p.jsonl"
    from tasks.videomme import VideoMME

    docs = VideoMME(str(data)).docs()
    preds.write_text("".join(json.dumps({"id": d.id, "output": f"Answer: {d.target}."}) + "\n" for d in docs[:4]))
    assert main(["score", "--task", "videomme", "--data", str(data), "--predictions", str(preds)]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["task"]["metrics"]["accuracy"] == 100.0 and out["task"]["n"] == 4 and out["task"]["n_total"] == 6
    preds.write_text('{"id": "nope", "output": "A"}\nnot json\n')
    assert main(["score", "--task", "videomme", "--data", str(data), "--predictions", str(preds)]) == 2
    err = capsys.readouterr().err.strip()
    assert "line" in err and "nope" in err and len(err.splitlines()) == 1


@pytest.mark.parametrize("argv, needle", [
    (["eval", "--task", "videomme", "--data", "/nonexistent", "--arch", "hybrid"], "data directory not found"),
    (["eval", "--task", "nope", "--data", ".", "--arch", "hybrid"], "unknown task"),
    (["eval", "--data", ".", "--arch", "hybrid"], "eval needs --task"),
    (["score", "--task", "charades", "--data", ".", "--predictions", "x.jsonl"], "charades_sta_test.txt"),
])
def test_bad_eval_input(argv, needle, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert needle in err and len(err.splitlines()) == 1


def test_checkpoint_parts_load_and_missing_parts_are_named(data, tmp_path, capsys):
    import torch

    from architectures import ARCHITECTURES
    from architectures.vision import VisionSide
    from bench.measure.runner import build_model

    ckpt = tmp_path / "ckpt"
    ARCHITECTURES.get("hybrid").build("tiny").model.save_pretrained(ckpt)
    argv = ["eval", "--task", "videomme", "--data", str(data), "--arch", "hybrid", "--checkpoint", str(ckpt)]
    assert main(argv) == 2
    assert "lacks the vision tower (vision/config.json)" in capsys.readouterr().err
    side = VisionSide("tiny", 64, seed=3)
    side.save(ckpt)
    model = build_model(make_spec({"arch": "hybrid", "checkpoint": str(ckpt), "vision": "siglip"}))
    frames = torch.rand(2, 3, 64, 64)
    assert torch.equal(model.vision(frames), side(frames))  # the checkpoint's own tower and projector
    (ckpt / "projector.safetensors").unlink()
    assert main(argv) == 2
    assert "lacks the projector (projector.safetensors)" in capsys.readouterr().err
    side.save(ckpt)
    assert main(argv) == 2  # no tokenizer files
    assert "has no tokenizer: looked for tokenizer.json, tokenizer.model, vocab.json" in capsys.readouterr().err


def test_input_tokens_count_vision_before_a_projector_compressor(data, tmp_path):
    log = tmp_path / "docs.jsonl"
    evaluate(spec("videomme", compressor="visionzip:dominant=6,contextual=2"), str(data), limit=1, log=str(log))
    (doc,) = lines(log)
    prompt_tokens = doc["tokens_in"] - 1 - 4 * 16  # 4 frames x 16 tokens, counted before VisionZip
    assert prompt_tokens == len(doc["prompt"].encode())  # byte-level tokenizer: one id per byte
    assert doc["tokens_after_compression"] == 1 + 4 * 8 + prompt_tokens
    assert set(doc["timings"]) == {"decode_video_s", "vision_s", "prefill_s", "decode_s", "new_tokens"}
