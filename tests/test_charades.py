"""Charades-STA task: time-pair parsing, IoU, annotation reading and recall metrics."""

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from bench.errors import UserError
from tasks.charades import CharadesSTA, Doc, extract_span, iou

SPAN_CASES = [
    ("The event happens in the 24.3 - 30.4 seconds.", (24.3, 30.4)),
    ("The event happens in the 10.2 seconds - 12.1 seconds.", (10.2, 12.1)),
    ("24.3-30.4", (24.3, 30.4)),
    ("The event happens from 10 to 12 seconds.", (10.0, 12.0)),
    ("between 4 and 8.5 s", (4.0, 8.5)),
    ("The event happens in 5s-9s.", (5.0, 9.0)),
    ("The event happens in 00:10 - 00:15.", (10.0, 15.0)),
    ("The event happens in 1:05 - 1:10.", (65.0, 70.0)),
    ("The event starts at 00:01:05 and ends at 00:01:10.", (65.0, 70.0)),
    ("It starts at 10 seconds and ends at 12 seconds.", (10.0, 12.0)),
    ("Starting time: 0.8 seconds\nEnding time: 1.1 seconds", (0.8, 1.1)),
    ("The event happens in the 30.4 - 24.3 seconds.", (24.3, 30.4)),
    ("The event happens in 3 - 5 seconds, then again in 8 - 9 seconds.", (3.0, 5.0)),
    ("The video lasts 30 seconds.\nThe event happens in 5 - 10 seconds.", (5.0, 10.0)),
    ("The person sits on a chair.", None),
    ("The event happens at 7 seconds.", None),
    ("", None),
]


@pytest.mark.parametrize("output,span", SPAN_CASES)
def test_extract_span(output, span):
    got = extract_span(output)
    if span is None:
        assert got is None
    else:
        assert got == pytest.approx(span)


def test_iou():
    assert iou((0, 10), (5, 15)) == pytest.approx(5 / 15)
    assert iou((2, 4), (0, 10)) == pytest.approx(0.2)
    assert iou((0, 1), (2, 3)) == 0.0
    assert iou((3, 3), (3, 3)) == 0.0
    assert iou((1, 5), (1, 5)) == 1.0


PROMPT = (
    "Please find the visual event described by a sentence in the video, determining its starting and ending "
    "times. The format should be: 'The event happens in the start time - end time'. For example, The event "
    "'person turn a light on' happens in the 24.3 - 30.4 seonds. Now I will give you the textual sentence: "
    "person opens a door. Please return its start time and end time."
)


def test_docs_txt(tmp_path):
    (tmp_path / "charades_sta_test.txt").write_text(
        "3MSZA 24.3 30.4##person opens a door\n\nABC12 0.0 6.9##a person is sitting in a chair.\n",
        encoding="utf-8")
    task = CharadesSTA(str(tmp_path))
    docs = task.docs()
    assert task.max_new_tokens == 50
    assert [d.id for d in docs] == ["0", "1"]
    assert docs[0].video == str(tmp_path / "Charades_v1_480" / "3MSZA.mp4")
    assert docs[0].prompt == PROMPT
    assert docs[0].target == (24.3, 30.4)
    assert docs[1].fields == {"video_id": "ABC12", "caption": "a person is sitting in a chair."}


def test_docs_parquet(tmp_path):
    (tmp_path / "data").mkdir()
    table = pa.table({"video": ["3MSZA.mp4", "ABC12.mp4"], "caption": ["person opens a door", "sitting"],
                      "timestamp": [[24.3, 30.4], [0.0, 6.9]]})
    pq.write_table(table, tmp_path / "data" / "test-00000-of-00001.parquet")
    docs = CharadesSTA(str(tmp_path)).docs()
    assert [d.id for d in docs] == ["0", "1"]
    assert docs[0].video == str(tmp_path / "Charades_v1_480" / "3MSZA.mp4")
    assert docs[0].prompt == PROMPT
    assert docs[1].target == pytest.approx((0.0, 6.9))


def test_missing_annotation_file(tmp_path):
    with pytest.raises(UserError, match="charades_sta_test.txt"):
        CharadesSTA(str(tmp_path)).docs()


def test_missing_column(tmp_path):
    pq.write_table(pa.table({"video": ["a.mp4"], "caption": ["x"]}), tmp_path / "test.parquet")
    with pytest.raises(UserError, match="timestamp"):
        CharadesSTA(str(tmp_path)).docs()


def test_malformed_txt_line(tmp_path):
    (tmp_path / "charades_sta_test.txt").write_text("3MSZA 24.3##no end\n", encoding="utf-8")
    with pytest.raises(UserError, match=":1:"):
        CharadesSTA(str(tmp_path)).docs()


def test_score_and_aggregate():
    task = CharadesSTA("unused")
    docs = [Doc(id=str(i), video="v.mp4", prompt="", target=(0.0, 10.0)) for i in range(5)]
    outputs = [
        "The event happens in the 0 - 10 seconds.",  # IoU 1.0
        "The event happens in the 0 - 6 seconds.",   # IoU 0.6
        "The event happens in the 5 - 20 seconds.",  # IoU 0.25
        "I cannot tell.",                            # unparseable: IoU 0, still scored
        None,                                        # document error: not scored
    ]
    scores = [task.score(d, task.parse(o)) if o is not None else None for d, o in zip(docs, outputs)]
    assert [s and s["iou"] for s in scores] == pytest.approx([1.0, 0.6, 0.25, 0.0, None])
    metrics = task.aggregate(docs, scores)
    assert metrics == {
        "miou": pytest.approx(100 * 1.85 / 4),
        "r0.3": 50.0,
        "r0.5": 50.0,
        "r0.7": 25.0,
        "n": 4,
        "n_total": 5,
    }


def test_aggregate_nothing_scored():
    task = CharadesSTA("unused")
    docs = [Doc(id="0", video="v.mp4", prompt="", target=(0.0, 1.0))]
    assert task.aggregate(docs, [None]) == {"miou": 0.0, "r0.3": 0.0, "r0.5": 0.0, "r0.7": 0.0, "n": 0,
                                            "n_total": 1}
