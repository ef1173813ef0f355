"""Fixture datasets: official layouts on disk, readable annotations and decodable videos."""

import json
import os
import subprocess
import sys

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tasks.fixtures import VDC_CAPTION_TYPES, main, make_charades, make_vdc, make_videomme
from tasks.video import load_frames

VIDEOMME_COLUMNS = ["video_id", "videoID", "url", "question_id", "duration", "domain", "sub_category",
                    "task_type", "question", "options", "answer"]


def test_videomme_layout(tmp_path):
    path = make_videomme(tmp_path, videos=2)
    assert path == os.path.join(str(tmp_path), "videomme", "test-00000-of-00001.parquet")
    table = pq.read_table(path)
    assert table.column_names == VIDEOMME_COLUMNS
    for name in VIDEOMME_COLUMNS:
        expected = pa.list_(pa.string()) if name == "options" else pa.string()
        assert table.schema.field(name).type == expected, name
    rows = table.to_pylist()
    assert len(rows) == 6
    for row in rows:
        assert len(row["options"]) == 4
        assert [o[:3] for o in row["options"]] == ["A. ", "B. ", "C. ", "D. "]
        assert row["answer"] in "ABCD" and len(row["answer"]) == 1
        assert row["duration"] in ("short", "medium", "long")
        assert row["question_id"].startswith(row["video_id"] + "-")
        assert os.path.isfile(tmp_path / "data" / f"{row['videoID']}.mp4")
        srt = (tmp_path / "subtitle" / f"{row['videoID']}.srt").read_text()
        assert "-->" in srt
    assert len({r["videoID"] for r in rows}) == 2
    assert sorted(r["question_id"] for r in rows)[:3] == ["001-1", "001-2", "001-3"]
    pixels = load_frames(tmp_path / "data" / f"{rows[0]['videoID']}.mp4", frames=4, size=32).frames
    assert pixels.shape == (4, 3, 32, 32)


def test_charades_layout(tmp_path):
    path = make_charades(tmp_path, videos=2)
    assert path == os.path.join(str(tmp_path), "charades_sta_test.txt")
    lines = open(path).read().splitlines()
    assert len(lines) == 4
    for line in lines:
        head, sentence = line.split("##")
        vid, start, end = head.split(" ")
        assert sentence
        video = tmp_path / "Charades_v1_480" / f"{vid}.mp4"
        duration = load_frames(video, fps=1).duration_s
        assert 0 <= float(start) < float(end) <= duration + 1e-6


def test_vdc_layout(tmp_path):
    path = make_vdc(tmp_path, videos=2)
    assert path == os.path.join(str(tmp_path), "vdc.jsonl")
    records = [json.loads(line) for line in open(path)]
    assert len(records) == 2
    for record in records:
        assert set(record) == {"video_id", "video", "captions"}
        assert record["video"] == f"videos/{record['video_id']}.mp4"
        assert tuple(record["captions"]) == VDC_CAPTION_TYPES
        for entry in record["captions"].values():
            assert isinstance(entry["caption"], str) and entry["caption"]
            assert entry["qa"] and all(set(qa) == {"question", "answer"} for qa in entry["qa"])
        pixels = load_frames(tmp_path / record["video"], frames=3).frames
        assert pixels.shape[0] == 3


def test_main_in_process(tmp_path, capsys):
    assert main([str(tmp_path), "--task", "charades", "--videos", "1"]) == 0
    out = capsys.readouterr().out.split()
    assert out == [os.path.join(str(tmp_path), "charades_sta_test.txt")]
    with pytest.raises(SystemExit):
        main([str(tmp_path), "--task", "nope"])


def test_cli_all(tmp_path):
    result = subprocess.run([sys.executable, "-m", "tasks.fixtures", str(tmp_path), "--task", "all", "--videos", "1"],
                            capture_output=True, text=True, timeout=60,
                            cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert result.returncode == 0, result.stderr
    printed = result.stdout.split()
    assert len(printed) == 3 and all(os.path.isfile(p) for p in printed)
    assert os.path.isfile(tmp_path / "videomme" / "test-00000-of-00001.parquet")
    assert os.path.isfile(tmp_path / "charades_sta_test.txt")
    assert os.path.isfile(tmp_path / "vdc.jsonl")
    assert len(os.listdir(tmp_path / "data")) == 1
    assert len(os.listdir(tmp_path / "Charades_v1_480")) == 1
    assert len(os.listdir(tmp_path / "videos")) == 1
