"""VDC (AuroraCap's Video Detailed Captions): captions of five types, scored by a judge LLM.

Local layout: ``DIR/vdc.jsonl``, one JSON object per video::

    {"video_id": str, "video": "videos/{id}.mp4",
     "captions": {caption_type: {"caption": reference text,
                                 "qa": [{"question": str, "answer": str}, ...]}}}

VDCscore: for every reference question of a caption type the judge first answers the
question from the *predicted* caption, then compares that answer with the correct one and
replies ``{'pred': 'yes'|'no', 'score': 0-5}``. Per video and caption type, accuracy is
the share of "yes" (percent) and score the mean score; the task reports their means over
documents, overall and per caption type, and the name of the judge.
"""

from __future__ import annotations

import ast
import json
import math
import os
import re
from concurrent.futures import ThreadPoolExecutor

from bench.errors import UserError
from tasks import register_task
from tasks.base import ACCURACY, Doc
from tasks.judges import Judge, JudgeError

CAPTION_TYPES = ("short", "detailed", "background", "main_object", "camera")

CAPTION_PROMPTS = {
    "short": "Describe the video in one sentence: the main subject, what it does and where.",
    "detailed": (
        "Imagine the video from its sequence of frames and give a faithful, detailed description of "
        "the whole video in several sentences: the main subjects and their actions in order, the "
        "setting and background, and the camera work."
    ),
    "background": (
        "Describe the background of the video in detail: the setting and environment, the objects "
        "and scenery around the main subjects, the lighting and atmosphere, and how they change over "
        "the video. Do not describe what the main subjects do."
    ),
    "main_object": (
        "Describe the main subject of the video in detail: its appearance and attributes, its "
        "actions and movements, and how they change over the video. Do not describe the background."
    ),
    "camera": (
        "Describe the camera work in the video in detail: shot types, camera angles, camera "
        "movements, zoom, transitions between shots, and how the framing follows the subjects."
    ),
}

MAX_NEW_TOKENS = {"short": 64, "detailed": 512, "background": 256, "main_object": 256, "camera": 256}

QA_SYSTEM = (
    "You are an intelligent assistant that answers questions about a video or an image using "
    "only a detailed text description of it."
)
QA_USER = (
    "Answer the question using only the description below.\n"
    "##INSTRUCTIONS:\n"
    "- Read the description carefully.\n"
    "- Answer only from what the description says.\n"
    "- The answer should be a short sentence or phrase.\n\n"
    "Description: {caption}\n"
    "Question: {question}\n\n"
    "Reply with the short answer only, with no other text or explanation."
)
COMPARE_SYSTEM = (
    "You are an intelligent assistant that evaluates the correctness of generated answers to "
    "questions about a video. Compare the predicted answer with the correct answer and decide "
    "whether they match in meaning.\n"
    "##INSTRUCTIONS:\n"
    "- Focus on whether the predicted answer matches the correct answer in meaning.\n"
    "- Count synonyms and paraphrases as matches.\n"
    "- Judge how correct the prediction is compared with the correct answer."
)
COMPARE_USER = (
    "Evaluate this question-answer pair about a video:\n\n"
    "Question: {question}\n"
    "Correct Answer: {answer}\n"
    "Predicted Answer: {predicted}\n\n"
    "Give your evaluation as yes or no, and a score that is an integer from 0 to 5, where 5 means "
    "the best match in meaning. Reply with a Python dictionary string with the keys 'pred' and "
    "'score': the value of 'pred' is the string 'yes' or 'no', and the value of 'score' is an "
    "INTEGER, not a STRING. Reply with the Python dictionary string only, with no other text or "
    "explanation; for example: {{'pred': 'yes', 'score': 4}}."
)

NO_JUDGE = "the vdc task needs a judge: --judge openai:URL#MODEL or local:DIR"


def qa_messages(caption: str, question: str) -> list[dict]:
    """Messages asking the judge to answer ``question`` from the predicted ``caption``."""
    return [{"role": "system", "content": QA_SYSTEM},
            {"role": "user", "content": QA_USER.format(caption=caption, question=question)}]


def compare_messages(question: str, answer: str, predicted: str) -> list[dict]:
    """Messages asking the judge to compare ``predicted`` with the correct ``answer``."""
    return [{"role": "system", "content": COMPARE_SYSTEM},
            {"role": "user", "content": COMPARE_USER.format(question=question, answer=answer, predicted=predicted)}]


_DICT_RE = re.compile(r"\{[^{}]*\}")
_PRED_RE = re.compile(r"""['"]?\bpred\b['"]?\s*[:=]\s*['"]?\s*(yes|no|true|false)\b""", re.I)
_SCORE_RE = re.compile(r"""['"]?\bscore\b['"]?\s*[:=]\s*['"]?\s*(-?\d+(?:\.\d+)?)""", re.I)
_NUMBER_RE = re.compile(r"-?\d+(?:\.\d+)?")


def _pred_value(value) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, str):
        word = value.strip().strip(".!").lower()
        if word in ("yes", "true"):
            return "yes"
        if word in ("no", "false"):
            return "no"
    raise JudgeError(f"judge pred is {value!r}, not yes or no")


def _score_value(value) -> float:
    if isinstance(value, bool) or value is None:
        raise JudgeError(f"judge score is {value!r}, not a number")
    if isinstance(value, str):
        match = _NUMBER_RE.search(value)
        if not match:
            raise JudgeError(f"judge score is {value!r}, not a number")
        value = match.group(0)
    try:
        score = float(value)
    except (TypeError, ValueError) as exc:
        raise JudgeError(f"judge score is {value!r}, not a number") from exc
    if math.isnan(score) or not 0 <= score <= 5:
        raise JudgeError(f"judge score {score:g} is outside 0-5")
    return score


def _literal_dict(text: str) -> dict | None:
    for parse in (ast.literal_eval, json.loads):
        try:
            obj = parse(text)
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
            continue
        if isinstance(obj, dict):
            return {str(k).strip().lower(): v for k, v in obj.items()}
    return None


def parse_judgement(reply: str) -> dict:
    """Read ``{'pred': 'yes'|'no', 'score': 0-5}`` from a judge reply.

    Accepts the dict inside prose or code fences, single or double quotes, any case of
    yes/no, and a score given as int, float or string. Raises JudgeError when pred or
    score is missing or invalid.
    """
    text = reply or ""
    for block in _DICT_RE.findall(text):
        obj = _literal_dict(block)
        if obj is not None and "pred" in obj:
            if "score" not in obj:
                raise JudgeError(f"judge reply has no score: {text.strip()[:120]!r}")
            return {"pred": _pred_value(obj["pred"]), "score": _score_value(obj["score"])}
    pred, score = _PRED_RE.search(text), _SCORE_RE.search(text)
    if pred is None:
        raise JudgeError(f"judge reply has no pred: {text.strip()[:120]!r}")
    if score is None:
        raise JudgeError(f"judge reply has no score: {text.strip()[:120]!r}")
    return {"pred": _pred_value(pred.group(1)), "score": _score_value(score.group(1))}


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


@register_task("vdc")
class VDC:
    """VDC detailed captioning, five caption types, scored with VDCscore by a judge LLM."""

    name = "vdc"
    kind = ACCURACY
    max_new_tokens = max(MAX_NEW_TOKENS.values())

    def __init__(self, data_dir: str, judge: Judge | None = None, caption_types: list[str] | None = None,
                 workers: int = 1):
        self.data_dir = data_dir
        self.judge = judge
        types = list(caption_types) if caption_types else list(CAPTION_TYPES)
        unknown = [t for t in types if t not in CAPTION_TYPES]
        if unknown:
            raise UserError(f"unknown vdc caption type {unknown[0]!r}; known: {', '.join(CAPTION_TYPES)}")
        self.caption_types = types
        self.workers = max(1, int(workers))

    @staticmethod
    def max_new_tokens_for(doc: Doc) -> int:
        """The generation budget for a document's caption type."""
        return MAX_NEW_TOKENS[doc.fields["caption_type"]]

    # --- documents ------------------------------------------------------------------
    def docs(self) -> list[Doc]:
        """One document per (video, caption type), in file order."""
        path = os.path.join(self.data_dir, "vdc.jsonl")
        if not os.path.isfile(path):
            raise UserError(f"vdc annotations not found: {path}")
        docs = []
        with open(path, encoding="utf-8") as fh:
            for lineno, line in enumerate(fh, 1):
                if line.strip():
                    docs.extend(self._video_docs(self._parse_line(line, path, lineno), path, lineno))
        return docs

    @staticmethod
    def _parse_line(line: str, path: str, lineno: int) -> dict:
        try:
            row = json.loads(line)
        except ValueError as exc:
            raise UserError(f"{path}:{lineno}: not valid JSON ({exc.msg})") from exc
        if not isinstance(row, dict):
            raise UserError(f"{path}:{lineno}: expected a JSON object")
        for key in ("video_id", "video", "captions"):
            if key not in row:
                raise UserError(f"{path}:{lineno}: missing field {key!r}")
        if not isinstance(row["captions"], dict):
            raise UserError(f"{path}:{lineno}: field 'captions' must be an object")
        return row

    def _video_docs(self, row: dict, path: str, lineno: int) -> list[Doc]:
        vid = str(row["video_id"])
        out = []
        for ctype in self.caption_types:
            where = f"{path}:{lineno}: video {vid!r}"
            entry = row["captions"].get(ctype)
            if not isinstance(entry, dict):
                raise UserError(f"{where}: missing field 'captions.{ctype}'")
            for key in ("caption", "qa"):
                if key not in entry:
                    raise UserError(f"{where}: missing field 'captions.{ctype}.{key}'")
            qa = entry["qa"]
            if not isinstance(qa, list) or not all(isinstance(p, dict) and "question" in p and "answer" in p
                                                   for p in qa):
                raise UserError(f"{where}: 'captions.{ctype}.qa' must be a list of {{question, answer}}")
            out.append(Doc(
                id=f"{vid}/{ctype}",
                video=os.path.join(self.data_dir, row["video"]),
                prompt=CAPTION_PROMPTS[ctype],
                target={"caption": entry["caption"],
                        "qa": [{"question": str(p["question"]), "answer": str(p["answer"])} for p in qa]},
                fields={"caption_type": ctype},
            ))
        return out

    # --- scoring --------------------------------------------------------------------
    def parse(self, output: str) -> str:
        """The predicted caption: the model output, stripped."""
        return (output or "").strip()

    def _judge_pair(self, caption: str, pair: dict) -> dict | JudgeError:
        try:
            predicted = self.judge.complete(qa_messages(caption, pair["question"])).strip()
            return parse_judgement(self.judge.complete(compare_messages(pair["question"], pair["answer"], predicted)))
        except JudgeError as exc:
            return exc

    def score(self, doc: Doc, parsed: str) -> dict:
        """VDCscore of one caption: accuracy (percent yes) and mean score over the judged
        questions; questions the judge failed on are counted in ``judge_errors`` and left
        out of both means (None when nothing was judged)."""
        if self.judge is None:
            raise UserError(NO_JUDGE)
        pairs = doc.target["qa"]
        if self.workers > 1 and len(pairs) > 1:
            with ThreadPoolExecutor(min(self.workers, len(pairs))) as pool:
                results = list(pool.map(lambda p: self._judge_pair(parsed, p), pairs))
        else:
            results = [self._judge_pair(parsed, p) for p in pairs]
        ok = [r for r in results if not isinstance(r, JudgeError)]
        yes = sum(r["pred"] == "yes" for r in ok)
        return {
            "accuracy": 100.0 * yes / len(ok) if ok else None,
            "score": _mean([r["score"] for r in ok]),
            "judged": len(ok),
            "judge_errors": len(results) - len(ok),
        }

    def aggregate(self, docs: list[Doc], scores: list[dict | None]) -> dict:
        """Means over scored documents, overall and per caption type.

        A document counts in ``n`` when it has an accuracy; ``judge_errors`` sums the
        failed questions over all documents.
        """
        scored = [(d, s) for d, s in zip(docs, scores) if s and s.get("accuracy") is not None]
        metrics = {
            "accuracy": _mean([s["accuracy"] for _, s in scored]),
            "score": _mean([s["score"] for _, s in scored]),
        }
        types = [t for t in CAPTION_TYPES if any(d.fields["caption_type"] == t for d in docs)]
        for ctype in types:
            mine = [s for d, s in scored if d.fields["caption_type"] == ctype]
            metrics[f"accuracy/caption_type/{ctype}"] = _mean([s["accuracy"] for s in mine])
            metrics[f"score/caption_type/{ctype}"] = _mean([s["score"] for s in mine])
        metrics["n"] = len(scored)
        metrics["n_total"] = len(docs)
        metrics["judge_errors"] = sum(int(s.get("judge_errors", 0)) for s in scores if s)
        metrics["judge"] = self.judge.name if self.judge is not None else None
        return metrics
