"""Video-MME: four-way multiple choice over short, medium and long videos.

Layout of a downloaded copy (``DIR``)::

    DIR/videomme/test-00000-of-00001.parquet   one row per question
    DIR/data/{videoID}.mp4                      the videos
    DIR/subtitle/{videoID}.srt                  subtitles (optional; only with ``subtitles=True``)

Prompt, generation length and scoring follow lmms-eval's ``videomme`` task (default model
settings): the "Select the best answer ..." preamble, the question, the four options one per
line, then ``"\\nAnswer with the option's letter from the given choices directly."`` (lmms-eval
joins the post-prompt with another newline, so a blank line precedes it); greedy, 16 new
tokens; score 1 when the extracted letter equals the gold letter, and an answer with no letter
is scored wrong. The subtitle variant puts ``"This video's subtitles are listed below: \\n"``,
the subtitle text and a newline before the same preamble and ends with ``"The best answer is:"``,
as lmms-eval's ``videomme_w_subtitle`` does; a video without a subtitle file gets
"No subtitles available".

Where this module deliberately differs from lmms-eval:

* Subtitle text: lmms-eval keeps only the subtitles that overlap its 32 sampled frames (which
  needs the video) and puts them in set order, which scrambles them. Here the whole subtitle
  file is used, in order, with indices, timestamps and markup stripped (the text lmms-eval's
  "full subtitle" setting extracts), so the prompt does not depend on video decoding.
* Letter extraction keeps lmms-eval's priorities (leading letter, trailing letter, answer
  phrase, "(A)", "A.", "A:", "A)", "A ", any letter) but only counts a letter standing on its
  own. lmms-eval also matches capitals inside words, so "Because ..." gives B and, after
  "the answer is", the C of "Clearly" can beat the real answer.
* An output that is nothing but one lower-case letter with punctuation ("b", "b)", "(c)") is
  read as that letter; lmms-eval only knows capitals and scores it wrong. Lower-case letters
  elsewhere are ignored ("a" is usually the article).
"""

from __future__ import annotations

import re
from pathlib import Path

from bench.errors import UserError
from tasks import register_task
from tasks.base import ACCURACY, Doc, read_parquet
from tasks.letters import LetterTask

PARQUET = "videomme/test-00000-of-00001.parquet"

PREAMBLE = ("Select the best answer to the following multiple-choice question based on the video and the "
            "subtitles. Respond with only the letter (A, B, C, or D) of the correct option.")
POST_PROMPT = "\nAnswer with the option's letter from the given choices directly."
SUBTITLE_INTRO = "This video's subtitles are listed below: \n"
SUBTITLE_POST_PROMPT = "The best answer is:"
NO_SUBTITLES = "No subtitles available"

REQUIRED_COLUMNS = ("question_id", "videoID", "duration", "domain", "task_type", "question", "options", "answer")
SPLITS = ("duration", "domain", "task_type")


def read_subtitles(path: Path) -> str:
    """The spoken text of an .srt file, one cue line per line, without indices, timestamps or markup."""
    lines = []
    for raw in path.read_text(encoding="utf-8", errors="replace").splitlines():
        line = raw.strip().lstrip("\ufeff")
        if not line or line.isdigit() or "-->" in line:
            continue
        text = re.sub(r"<[^>]+>", "", line).strip()
        if text:
            lines.append(text)
    return "\n".join(lines)


def build_prompt(question: str, options: list[str], subtitles: str | None = None) -> str:
    """The lmms-eval prompt: the plain variant when ``subtitles`` is None, else the subtitle variant with that text."""
    body = PREAMBLE + "\n" + question + "\n" + "\n".join(options)
    if subtitles is None:
        return body + "\n" + POST_PROMPT
    return SUBTITLE_INTRO + subtitles + "\n" + body + "\n" + SUBTITLE_POST_PROMPT


def _read_table(path: Path) -> list[dict]:
    return read_parquet(path, REQUIRED_COLUMNS, "Video-MME")


def video_path(root: Path, video_id: str) -> str:
    """``DIR/data/{videoID}.mp4``, or the .MP4/.mkv file that exists instead (as lmms-eval accepts)."""
    path = root / "data" / f"{video_id}.mp4"
    if not path.exists():
        for alt in (path.with_suffix(".MP4"), path.with_suffix(".mkv")):
            if alt.exists():
                return str(alt)
    return str(path)


@register_task("videomme")
class VideoMME(LetterTask):
    """Video-MME multiple choice, with or without subtitles."""

    name = "videomme"
    kind = ACCURACY
    max_new_tokens = 16

    def __init__(self, data_dir: str, subtitles: bool = False):
        self.data_dir = Path(data_dir)
        self.subtitles = subtitles
        if subtitles:
            self.name = "videomme_w_subtitle"

    def docs(self) -> list[Doc]:
        """One Doc per parquet row; reads the annotations (and subtitles when asked), not the videos."""
        path = self.data_dir / PARQUET
        if not path.is_file():
            raise UserError(f"Video-MME annotation file not found: {path}")
        subtitle_cache: dict[str, str] = {}
        docs = []
        for row in _read_table(path):
            video_id = str(row["videoID"])
            options = [str(o) for o in (row["options"] or [])]
            subs = None
            if self.subtitles:
                if video_id not in subtitle_cache:
                    srt = self.data_dir / "subtitle" / f"{video_id}.srt"
                    subtitle_cache[video_id] = read_subtitles(srt) if srt.is_file() else NO_SUBTITLES
                subs = subtitle_cache[video_id]
            fields = {key: row[key] for key in SPLITS}
            for key in ("video_id", "sub_category"):
                if key in row:
                    fields[key] = row[key]
            fields["videoID"] = video_id
            docs.append(Doc(
                id=str(row["question_id"]),
                video=video_path(self.data_dir, video_id),
                prompt=build_prompt(str(row["question"]), options, subs),
                target=str(row["answer"]).strip().upper(),
                fields=fields,
            ))
        return docs

    def groups(self, doc: Doc) -> list[str]:
        """Accuracy per duration, domain and task type, besides overall."""
        return [f"accuracy/{key}/{doc.fields[key]}" for key in SPLITS]
