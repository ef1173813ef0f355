"""Multiple-choice tasks: the option letter in a model output, its score, accuracy per group.

Letter extraction follows lmms-eval's Video-MME parser: candidates in several formats, the
highest-priority one wins. Video-MME and V-NIAH share it through ``LetterTask``.
"""

from __future__ import annotations

import re

from tasks.base import Doc, accuracy_metrics

CHOICES = "ABCD"

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


def letter_score(doc: Doc, parsed: str | None) -> dict:
    """``{"correct": 1.0}`` when the parsed letter is the gold one, else 0.0 (no letter counts as wrong)."""
    return {"correct": float(parsed is not None and parsed == doc.target)}


class LetterTask:
    """A multiple-choice task: ``parse`` finds the letter, ``score`` compares it with the gold one,
    ``aggregate`` gives accuracy overall and per ``groups(doc)``."""

    choices = CHOICES

    def groups(self, doc: Doc) -> list[str]:
        return []

    def parse(self, output: str) -> str | None:
        """The option letter in a model output, or None."""
        return extract_letter(output, self.choices)

    def score(self, doc: Doc, parsed: str | None) -> dict:
        """``{"correct": 1.0}`` when the letter matches the gold answer, else 0.0 (no letter counts as wrong)."""
        return letter_score(doc, parsed)

    def aggregate(self, docs: list[Doc], scores: list[dict | None]) -> dict:
        """Accuracy in percent overall and per group; None scores are left out.

        Keys: ``accuracy``, one per group (``accuracy/<split>/<value>``), ``n`` (documents scored),
        ``n_total``. An empty group scores 0, as in lmms-eval.
        """
        return accuracy_metrics(docs, scores, self.groups)
