"""Charades-STA: temporal grounding of a sentence in a video, scored by IoU.

Two annotation layouts are accepted under ``DIR`` (the first one found is used):

* ``DIR/charades_sta_test.txt``: lines ``VIDEOID START END##sentence``;
* the lmms-eval parquet, ``DIR/data/test-*.parquet`` (or ``DIR/*.parquet``), with columns
  ``video`` (file name), ``caption`` and ``timestamp`` ([start, end] seconds).

Videos are ``DIR/Charades_v1_480/{VIDEOID}.mp4``. A document's id is its zero-based line (or
row) index. The prompt is lmms-eval's ``temporal_grounding_charades`` prompt verbatim
(``f"{pre_prompt}{caption}. {post_prompt}"``, typo "seonds" included); 50 new tokens.

Scoring follows lmms-eval: the first time pair in the output is the prediction (a reversed
pair is swapped), IoU = max(0, min(ends) - max(starts)) / (max(ends) - min(starts)), an
output without a pair scores IoU 0 and still counts; reported as mIoU x 100 and the percent
of documents with IoU >= 0.3, 0.5, 0.7. The search for the pair keeps lmms-eval's order (only
the lines that mention start/end/happen when any does; a clock range "mm:ss - mm:ss" first,
then a number range "a - b", then loose clock times, then loose numbers).

Where this module deliberately differs from lmms-eval:

* lmms-eval turns every "to" into "-" (inside words too) and needs the number right next to
  the dash, so "the 10.2 seconds - 12.1 seconds" finds nothing. Here a range is two times
  joined by "-", "–", "—", "~", "to", "until", "till" or "and", each time optionally followed
  by a unit (s, sec, second(s)).
* For loose numbers lmms-eval takes only the first number of each line, so "starts at 10
  seconds and ends at 12 seconds" (one line) finds nothing; here the first two times count.
* lmms-eval keys predictions by (video, caption, timestamp), so repeated queries collapse into
  one; here every document is scored.
"""

from __future__ import annotations

import re
from pathlib import Path

from bench.errors import UserError
from tasks import register_task
from tasks.base import ACCURACY, Doc, read_parquet

TXT = "charades_sta_test.txt"
PARQUET_GLOBS = ("data/test-*.parquet", "*.parquet")
VIDEO_DIR = "Charades_v1_480"
COLUMNS = ("video", "caption", "timestamp")

PRE_PROMPT = ("Please find the visual event described by a sentence in the video, determining its starting and "
              "ending times. The format should be: 'The event happens in the start time - end time'. For example, "
              "The event 'person turn a light on' happens in the 24.3 - 30.4 seonds. Now I will give you the "
              "textual sentence: ")
POST_PROMPT = "Please return its start time and end time."
THRESHOLDS = (0.3, 0.5, 0.7)


def build_prompt(caption: str) -> str:
    """lmms-eval's prompt for one sentence."""
    return f"{PRE_PROMPT}{caption}. {POST_PROMPT}"


_KEYWORDS = ("starts", "ends", "happens in", "start time", "end time", "start", "end", "happen")
_CLOCK = r"\d{1,2}:\d{2}(?::\d{2})?(?:\.\d+)?"
_NUMBER = r"\d+(?:\.\d+)?"
_UNIT = r"(?:\s*(?:seconds?|secs?|s)\b)?"
_SEP = r"\s*(?:-|–|—|~|\bto\b|\buntil\b|\btill\b|\band\b)\s*"
_CLOCK_RANGE = re.compile(rf"(?<![\d:.])({_CLOCK}){_UNIT}{_SEP}({_CLOCK})(?![\d:])")
_NUMBER_RANGE = re.compile(rf"(?<![\d:.])({_NUMBER}){_UNIT}{_SEP}({_NUMBER})(?![\d:]|\.\d)")
_CLOCK_TOKEN = re.compile(rf"(?<![\d:.])({_CLOCK})(?![\d:])")
_NUMBER_TOKEN = re.compile(rf"(?<![\d:.])({_NUMBER})(?![\d:]|\.\d)")


def to_seconds(token: str) -> float:
    """Seconds in "12.5", "mm:ss" or "hh:mm:ss" (fractions allowed on the last part)."""
    seconds = 0.0
    for part in token.split(":"):
        seconds = seconds * 60 + float(part)
    return seconds


def extract_span(output: str) -> tuple[float, float] | None:
    """The first (start, end) time pair in a model output, in seconds with start <= end, or None."""
    if not output:
        return None
    lines = re.split(r"[!?\n]", output.lower())
    candidates = [s for s in lines if any(k in s for k in _KEYWORDS)] or lines
    pair = None
    for pattern in (_CLOCK_RANGE, _NUMBER_RANGE):
        for line in candidates:
            m = pattern.search(line)
            if m:
                pair = (to_seconds(m.group(1)), to_seconds(m.group(2)))
                break
        if pair:
            break
    if pair is None:
        for pattern in (_CLOCK_TOKEN, _NUMBER_TOKEN):
            times = [to_seconds(t) for line in candidates for t in pattern.findall(line)]
            if len(times) >= 2:
                pair = (times[0], times[1])
                break
    if pair is None:
        return None
    start, end = pair
    return (start, end) if start <= end else (end, start)


def iou(pred: tuple[float, float], gold: tuple[float, float]) -> float:
    """Temporal IoU of two [start, end] spans; 0 when they do not overlap or the union is empty."""
    union = max(pred[1], gold[1]) - min(pred[0], gold[0])
    if union <= 0:
        return 0.0
    return max(0.0, min(pred[1], gold[1]) - max(pred[0], gold[0])) / union


def _read_txt(path: Path) -> list[tuple[str, str, tuple[float, float]]]:
    rows = []
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        head, sep, caption = line.partition("##")
        parts = head.split()
        try:
            if not sep or len(parts) != 3:
                raise ValueError
            rows.append((parts[0], caption.strip(), (float(parts[1]), float(parts[2]))))
        except ValueError:
            raise UserError(f"{path}:{lineno}: expected 'VIDEOID START END##sentence', got {line!r}") from None
    return rows


def _read_parquet(paths: list[Path]) -> list[tuple[str, str, tuple[float, float]]]:
    rows = []
    for path in paths:
        for i, row in enumerate(read_parquet(path, COLUMNS, "Charades-STA")):
            stamp = row["timestamp"]
            if stamp is None or len(stamp) != 2:
                raise UserError(f"{path}: row {i}: timestamp must be [start, end], got {stamp!r}")
            video = str(row["video"])
            video_id = video[:-4] if video.lower().endswith(".mp4") else video
            rows.append((video_id, str(row["caption"]).strip(), (float(stamp[0]), float(stamp[1]))))
    return rows


@register_task("charades")
class CharadesSTA:
    """Charades-STA temporal grounding (test split)."""

    name = "charades"
    kind = ACCURACY
    max_new_tokens = 50

    def __init__(self, data_dir: str):
        self.data_dir = Path(data_dir)

    def annotation_files(self) -> list[Path]:
        """The annotation file(s) to read: the txt file, else the parquet shard(s)."""
        txt = self.data_dir / TXT
        if txt.is_file():
            return [txt]
        for pattern in PARQUET_GLOBS:
            found = sorted(self.data_dir.glob(pattern))
            if found:
                return found
        raise UserError(f"Charades-STA annotation file not found: {txt} "
                        f"(nor a parquet at {self.data_dir / PARQUET_GLOBS[0]})")

    def docs(self) -> list[Doc]:
        """One Doc per annotation line or row; reads only the annotations."""
        files = self.annotation_files()
        rows = _read_txt(files[0]) if files[0].suffix == ".txt" else _read_parquet(files)
        return [
            Doc(
                id=str(i),
                video=str(self.data_dir / VIDEO_DIR / f"{video_id}.mp4"),
                prompt=build_prompt(caption),
                target=span,
                fields={"video_id": video_id, "caption": caption},
            )
            for i, (video_id, caption, span) in enumerate(rows)
        ]

    def parse(self, output: str) -> tuple[float, float] | None:
        """The predicted (start, end) in seconds, or None."""
        return extract_span(output)

    def score(self, doc: Doc, parsed: tuple[float, float] | None) -> dict:
        """``{"iou": ...}``; an unparseable output scores 0."""
        return {"iou": 0.0 if parsed is None else iou(parsed, doc.target)}

    def aggregate(self, docs: list[Doc], scores: list[dict | None]) -> dict:
        """``miou`` (mean IoU x 100), ``r0.3``/``r0.5``/``r0.7`` (percent with IoU >= threshold), ``n``, ``n_total``.

        None scores (documents that failed) are left out; with nothing scored every metric is 0.
        """
        ious = [s["iou"] for s in scores if s is not None]
        n = len(ious)
        metrics = {"miou": 100.0 * sum(ious) / n if n else 0.0}
        for t in THRESHOLDS:
            metrics[f"r{t}"] = 100.0 * sum(v >= t for v in ious) / n if n else 0.0
        metrics["n"] = n
        metrics["n_total"] = len(docs)
        return metrics
