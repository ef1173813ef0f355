"""V-NIAH: the generator's layout and determinism, seeds, bad configurations, scoring, the heatmap."""

from __future__ import annotations

import json

import numpy as np
import pytest

from bench.errors import UserError
from tasks import TASKS
from tasks.base import Doc
from tasks.vniah import (COLOURS, EVAL_STREAM, TRAIN_STREAM, Config, VNIAH, generate, main, make_sample,
                         read_config, stream)

SMALL = Config(lengths=(4, 6), depths=(0.0, 0.5, 1.0), per_cell=2, size=32, seed=3)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return generate(tmp_path_factory.mktemp("vniah"), SMALL)


def test_layout_on_disk(data):
    rows = [json.loads(line) for line in (data / "vniah.jsonl").read_text().splitlines()]
    assert len(rows) == 2 * 3 * 2
    assert read_config(data) == SMALL
    for row in rows:
        assert (data / row["video"]).is_file()
        assert row["needle_index"] == round(row["depth"] * (row["length"] - 1))
        assert row["options"][ord(row["answer"]) - ord("A")] == row["colour"]
    assert {(r["length"], r["depth"]) for r in rows} == {(n, d) for n in (4, 6) for d in (0.0, 0.5, 1.0)}


def test_videos_hold_the_needle_where_the_annotation_says(data):
    from tasks.video import load_frames

    for row in (json.loads(line) for line in (data / "vniah.jsonl").read_text().splitlines()):
        clip = load_frames(data / row["video"], fps=1, max_frames=100)
        frames = clip.frames
        assert frames.shape[0] == row["length"] == clip.total_frames  # --fps 1 sees every frame
        channel_spread = frames.mean(dim=(2, 3)).amax(1) - frames.mean(dim=(2, 3)).amin(1)
        assert int(channel_spread.argmax()) == row["needle_index"]  # only the needle is saturated
        mean = frames[row["needle_index"]].mean(dim=(1, 2)) * 255
        assert np.allclose(mean.numpy(), COLOURS[row["colour"]], atol=25)


def test_generation_is_deterministic_by_seed(tmp_path, data):
    again = generate(tmp_path / "again", SMALL)
    for path in sorted(p for p in data.rglob("*") if p.is_file()):
        assert (again / path.relative_to(data)).read_bytes() == path.read_bytes(), path.name
    other = generate(tmp_path / "other", Config(**{**SMALL.__dict__, "seed": 4}))
    assert (other / "vniah.jsonl").read_text() != (data / "vniah.jsonl").read_text()


def test_training_and_evaluation_streams_differ():
    a = make_sample(stream(0, EVAL_STREAM), 8, 0.5)
    b = make_sample(stream(0, TRAIN_STREAM), 8, 0.5)
    assert not np.array_equal(a.frames, b.frames)


def test_shuffled_options_still_point_at_the_colour():
    rng = np.random.default_rng(0)
    orders = set()
    for _ in range(20):
        s = make_sample(rng, 4, 0.0, size=32, shuffle_options=True)
        assert s.options[ord(s.answer) - ord("A")] == s.colour
        orders.add(tuple(s.options))
    assert len(orders) > 1


@pytest.mark.parametrize("depths", [(0.0, 1.5), (-0.1,)])
def test_depth_outside_unit_interval_is_bad_input(depths, tmp_path, capsys):
    with pytest.raises(UserError, match="depth .* outside \\[0, 1\\]"):
        Config(depths=depths)
    assert main([str(tmp_path / "x"), "--depths", ",".join(map(str, depths))]) == 2
    assert "outside [0, 1]" in capsys.readouterr().err


def test_bad_config_on_disk_is_one_line(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"depths": [2.0]}))
    with pytest.raises(UserError, match="outside"):
        VNIAH(str(tmp_path))
    (tmp_path / "config.json").write_text("{")
    with pytest.raises(UserError, match="cannot read vniah config"):
        VNIAH(str(tmp_path))


def test_scoring_and_aggregation(data):
    task = TASKS.get("vniah")(str(data))
    docs = task.docs()
    assert all(isinstance(d, Doc) for d in docs) and len(docs) == 12
    outputs = [d.target if k % 2 == 0 else "Z" for k, d in enumerate(docs)]  # every other answer wrong
    scores = [task.score(d, task.parse(o)) for d, o in zip(docs, outputs)]
    metrics = task.aggregate(docs, scores)
    assert metrics["accuracy"] == 50.0 and metrics["chance"] == 25.0 and metrics["n"] == 12
    assert metrics["accuracy/cell/4/0.5"] == 50.0  # each cell holds one right and one wrong answer
    assert set(k for k in metrics if k.startswith("accuracy/length/")) == {"accuracy/length/4", "accuracy/length/6"}


def test_niah_heatmap(tmp_path):
    from bench.reporting.plots import niah_cells, plot_niah

    record = {"spec": {"arch": "hybrid", "compressor": "none"}, "status": "ok", "env": {},
              "task": {"name": "vniah", "metrics": {"accuracy": 75.0, "accuracy/cell/4/0": 100.0,
                                                     "accuracy/cell/4/1": 50.0, "accuracy/cell/8/0": 75.0}}}
    assert niah_cells(record) == {(4, 0.0): 100.0, (4, 1.0): 50.0, (8, 0.0): 75.0}
    out = plot_niah([record, record], str(tmp_path / "niah.png"))
    assert (tmp_path / "niah.png").stat().st_size > 1000 and out.endswith("niah.png")
    with pytest.raises(UserError, match="no record has V-NIAH cells"):
        plot_niah([{"spec": {}, "task": {"metrics": {"accuracy": 1.0}}}], str(tmp_path / "x.png"))


CHECKPOINT = "results/checkpoints/vniah-hybrid-tiny-transv"  # committed: trained by the README's commands


@pytest.mark.parametrize("compressor", ["none", "transv:schedule=uni_2_0.9"])
def test_trained_checkpoint_finds_the_needle_well_above_chance(tmp_path, compressor, capsys):
    from pathlib import Path

    from bench.cli import main

    root = Path(__file__).resolve().parent.parent
    data = generate(tmp_path / "eval", Config(lengths=(8, 16), depths=(0.0, 0.5, 1.0), per_cell=2, seed=11))
    out = tmp_path / "acc.jsonl"
    assert main(["eval", "--task", "vniah", "--data", str(data), "--checkpoint", str(root / CHECKPOINT),
                 "--arch", "hybrid", "--tokens-per-frame", "4", "--fps", "1", "--frames", "16",
                 "--compressor", compressor, "--output", str(out)]) == 0
    capsys.readouterr()
    metrics = json.loads(out.read_text())["task"]["metrics"]
    assert metrics["n"] == 12
    assert metrics["accuracy"] >= 75.0  # chance is 25%: a clear margin


def test_runs_on_a_real_video_llm_family(data, tmp_path, capsys):
    """The same task through a family's own processor and chat template (random weights: only the plumbing)."""
    from bench.cli import main

    out = tmp_path / "acc.jsonl"
    assert main(["eval", "--task", "vniah", "--data", str(data), "--arch", "llava_onevision", "--preset", "tiny",
                 "--fps", "1", "--frames", "8", "--limit", "2", "--output", str(out)]) == 0
    capsys.readouterr()
    record = json.loads(out.read_text())
    assert record["status"] == "ok" and record["task"]["metrics"]["n"] == 2
