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
from tasks.base import ACCURACY, Doc, accuracy_metrics, letter_score, read_parquet

PARQUET = "videomme/test-00000-of-00001.parquet"
CHOICES = "ABCD"

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


_PHRASES = (
    "the answer is", "answer is", "the correct answer is", "correct answer is", "the best answer is",
    "best answer is", "the correct option is", "correct option is", "the best option is", "best option is",
    "the choice is", "choice is", "the correct choice is", "correct choice is", "i choose", "i select",
    "i pick", "my answer is", "my choice is",
)
# Format name -> (priority, pattern for one letter; the letter must not touch other letters).
_FORMATS = {
    "parentheses": (6, r"\(({})\)"),
    "period": (5, r"(?<![A-Za-z])({})\."),
    "colon": (4, r"(?<![A-Za-z])({}):"),
    "right_paren": (3, r"(?<![A-Za-z(])({})\)"),
    "space": (2, r"(?<![A-Za-z])({})\s"),
}
_PHRASE_PRIORITY, _START_PRIORITY, _END_PRIORITY = 7, 10, 9
_LONE = r"(?<![A-Za-z])({})(?![A-Za-z])"
_BARE_LOWER = re.compile(r"^\W*([{}])\W*$".format(CHOICES.lower()))


def extract_letter(output: str, choices: str = CHOICES) -> str | None:
    """The option letter a model output names, or None.

    Candidates are collected in several formats and the highest-priority one wins, the later
    one within a format: leading letter (10), trailing letter (9), first letter after an
    answer phrase such as "the answer is" (7), "(A)" (6), "A." (5), "A:" (4), "A)" (3),
    "A " (2); only when none of these occur, the last stand-alone letter anywhere.
    """
    if not output or not output.strip():
        return None
    bare = _BARE_LOWER.match(output.strip())
    if bare:
        return bare.group(1).upper()
    text = output.strip().strip(",.!?;:'\"")
    padded = " " + text + " "
    letters = "[" + choices + "]"
    candidates: list[tuple[int, int, str]] = []
    for priority, pattern in _FORMATS.values():
        for m in re.finditer(pattern.format(letters), padded):
            candidates.append((priority, m.start(1), m.group(1)))
    lower = padded.lower()
    for phrase in _PHRASES:
        idx = lower.find(phrase)
        if idx != -1:
            m = re.compile(_LONE.format(letters)).search(padded, idx + len(phrase))
            if m:
                candidates.append((_PHRASE_PRIORITY, m.start(1), m.group(1)))
    lone = re.compile(_LONE.format(letters))
    first = lone.match(text)
    if first:
        candidates.append((_START_PRIORITY, 0, first.group(1)))
    last = re.search(_LONE.format(letters) + r"$", text)
    if last:
        candidates.append((_END_PRIORITY, len(padded), last.group(1)))
    if not candidates:
        candidates = [(0, m.start(1), m.group(1)) for m in lone.finditer(padded)]
    if not candidates:
        return None
    return max(candidates, key=lambda c: (c[0], c[1]))[2]


def _read_table(path: Path) -> list[dict]:
    return read_parquet(path, REQUIRED_COLUMNS, "Video-MME")


def _video_path(root: Path, video_id: str) -> str:
    """``DIR/data/{videoID}.mp4``, or the .MP4/.mkv file that exists instead (as lmms-eval accepts)."""
    path = root / "data" / f"{video_id}.mp4"
    if not path.exists():
        for alt in (path.with_suffix(".MP4"), path.with_suffix(".mkv")):
            if alt.exists():
                return str(alt)
    return str(path)


@register_task("videomme")
class VideoMME:
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
                video=_video_path(self.data_dir, video_id),
                prompt=build_prompt(str(row["question"]), options, subs),
                target=str(row["answer"]).strip().upper(),
                fields=fields,
            ))
        return docs

    def parse(self, output: str) -> str | None:
        """The option letter in a model output, or None."""
        return extract_letter(output)

    def score(self, doc: Doc, parsed: str | None) -> dict:
        """``{"correct": 1.0}`` when the letter matches the gold answer, else 0.0 (no letter counts as wrong)."""
        return letter_score(doc, parsed)

    def aggregate(self, docs: list[Doc], scores: list[dict | None]) -> dict:
        """Accuracy in percent overall and per duration, domain and task type; None scores are left out.

        Keys: ``accuracy``, ``accuracy/<split>/<value>``, ``n`` (documents scored), ``n_total``.
        An empty group scores 0, as in lmms-eval.
        """
        return accuracy_metrics(docs, scores, lambda doc: [f"accuracy/{key}/{doc.fields[key]}" for key in SPLITS])
