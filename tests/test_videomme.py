"""Video-MME task: letter extraction, prompts, annotation reading and by-split accuracy."""

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from bench.errors import UserError
from tasks.letters import extract_letter
from tasks.videomme import NO_SUBTITLES, Doc, VideoMME, read_subtitles

LETTER_CASES = [
    ("B", "B"),
    ("B.", "B"),
    ("(C)", "C"),
    ("Answer: B.", "B"),
    ("b)", "B"),
    ("b", "B"),
    ("(d)", "D"),
    ("A. something", "A"),
    ("D) the dog", "D"),
    ("C: a red car", "C"),
    ("The answer is B", "B"),
    ("The correct answer is C.", "C"),
    ("The best answer is: D", "D"),
    ("The answer is Clearly C", "C"),
    ("The answer is B. Clearly it is", "B"),
    ("I think it is C because", "C"),
    ("Answer: (A)", "A"),
    ("**B**", "B"),
    ("B, because the man runs", "B"),
    ("Option A: no", "A"),
    ("Because the man runs", None),
    ("The USA is big", None),
    ("The man is wearing a red shirt", None),
    ("AB", None),
    ("", None),
    ("   ", None),
]


@pytest.mark.parametrize("output,letter", LETTER_CASES)
def test_extract_letter(output, letter):
    assert extract_letter(output) == letter


def _write(root, rows=None, drop=None):
    rows = rows or {
        "video_id": ["001", "001", "002"],
        "videoID": ["vidA", "vidA", "vidB"],
        "url": ["u1", "u1", "u2"],
        "question_id": ["001-1", "001-2", "002-1"],
        "duration": ["short", "short", "long"],
        "domain": ["Knowledge", "Knowledge", "Sports Competition"],
        "sub_category": ["Astronomy", "Astronomy", "Football"],
        "task_type": ["Counting Problem", "OCR Problems", "Counting Problem"],
        "question": ["How many stars?", "What is written?", "How many goals?"],
        "options": [["A. 1", "B. 2", "C. 3", "D. 4"], ["A. yes", "B. no", "C. maybe", "D. never"],
                    ["A. 0", "B. 1", "C. 2", "D. 3"]],
        "answer": ["C", "A", "B"],
    }
    if drop:
        rows = {k: v for k, v in rows.items() if k != drop}
    path = root / "videomme" / "test-00000-of-00001.parquet"
    path.parent.mkdir(parents=True)
    pq.write_table(pa.table(rows), path)
    return path


PLAIN_PROMPT = (
    "Select the best answer to the following multiple-choice question based on the video and the subtitles. "
    "Respond with only the letter (A, B, C, or D) of the correct option.\n"
    "How many stars?\nA. 1\nB. 2\nC. 3\nD. 4\n\n"
    "Answer with the option's letter from the given choices directly."
)


def test_docs_plain(tmp_path):
    _write(tmp_path)
    task = VideoMME(str(tmp_path))
    docs = task.docs()
    assert task.max_new_tokens == 16
    assert [d.id for d in docs] == ["001-1", "001-2", "002-1"]
    assert docs[0].video == str(tmp_path / "data" / "vidA.mp4")
    assert docs[0].prompt == PLAIN_PROMPT
    assert [d.target for d in docs] == ["C", "A", "B"]
    assert docs[2].fields["duration"] == "long"
    assert docs[2].fields["domain"] == "Sports Competition"
    assert docs[2].fields["task_type"] == "Counting Problem"
    assert docs[2].fields["sub_category"] == "Football"


def test_docs_subtitles(tmp_path):
    _write(tmp_path)
    (tmp_path / "subtitle").mkdir()
    (tmp_path / "subtitle" / "vidA.srt").write_text(
        "1\n00:00:00,000 --> 00:00:01,500\n<font color=\"white\" size=\".72c\">Look at the sky.</font>\n\n"
        "2\n00:00:01,500 --> 00:00:03,000\nCount them\ncarefully.\n", encoding="utf-8")
    docs = VideoMME(str(tmp_path), subtitles=True).docs()
    assert docs[0].prompt == (
        "This video's subtitles are listed below: \nLook at the sky.\nCount them\ncarefully.\n"
        "Select the best answer to the following multiple-choice question based on the video and the subtitles. "
        "Respond with only the letter (A, B, C, or D) of the correct option.\n"
        "How many stars?\nA. 1\nB. 2\nC. 3\nD. 4\nThe best answer is:"
    )
    assert docs[2].prompt.startswith("This video's subtitles are listed below: \n" + NO_SUBTITLES + "\n")


def test_read_subtitles_strips_indices_and_times(tmp_path):
    srt = tmp_path / "x.srt"
    srt.write_text("\ufeff1\n00:00:00,000 --> 00:00:01,000\nHello\n\n2\n00:00:01,000 --> 00:00:02,000\n"
                   "<i>there</i>\n", encoding="utf-8")
    assert read_subtitles(srt) == "Hello\nthere"


def test_missing_annotation_file(tmp_path):
    with pytest.raises(UserError, match="test-00000-of-00001.parquet"):
        VideoMME(str(tmp_path)).docs()


def test_missing_column(tmp_path):
    _write(tmp_path, drop="task_type")
    with pytest.raises(UserError, match="task_type"):
        VideoMME(str(tmp_path)).docs()


def _doc(i, duration, domain, task_type, answer="A"):
    return Doc(id=str(i), video="v.mp4", prompt="", target=answer,
               fields={"duration": duration, "domain": domain, "task_type": task_type})


def test_score_and_aggregate():
    task = VideoMME("unused")
    docs = [
        _doc(0, "short", "Knowledge", "OCR Problems"),
        _doc(1, "short", "Knowledge", "Counting Problem"),
        _doc(2, "short", "Life Record", "OCR Problems"),
        _doc(3, "long", "Life Record", "Counting Problem"),
        _doc(4, "long", "Knowledge", "OCR Problems"),
    ]
    outputs = ["A", "B", "The answer is A.", "", None]
    scores = [task.score(d, task.parse(o)) if o is not None else None for d, o in zip(docs, outputs)]
    assert scores[:4] == [{"correct": 1.0}, {"correct": 0.0}, {"correct": 1.0}, {"correct": 0.0}]
    metrics = task.aggregate(docs, scores)
    assert metrics == {
        "accuracy": 50.0,
        "accuracy/duration/short": pytest.approx(200 / 3),
        "accuracy/duration/long": 0.0,
        "accuracy/domain/Knowledge": 50.0,
        "accuracy/domain/Life Record": 50.0,
        "accuracy/task_type/OCR Problems": 100.0,
        "accuracy/task_type/Counting Problem": 0.0,
        "n": 4,
        "n_total": 5,
    }


def test_aggregate_nothing_scored():
    task = VideoMME("unused")
    metrics = task.aggregate([_doc(0, "short", "Knowledge", "OCR Problems")], [None])
    assert metrics == {"accuracy": 0.0, "n": 0, "n_total": 1}
