"""What every accuracy task hands the evaluator: documents with a video, a prompt and a target."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

# A task's ``kind``: ``lengths`` tasks build requests of given lengths for run/matrix/maxframes
# (``request(...)``); ``accuracy`` tasks load documents from data and are scored by ``eval``.
LENGTHS, ACCURACY = "lengths", "accuracy"


@dataclass
class Doc:
    """One scored item.

    id: the task's document id (the key of a predictions file); video: the video path;
    prompt: the official prompt text (no chat template); target: the gold answer;
    fields: metadata for per-split metrics.
    """

    id: str
    video: str
    prompt: str
    target: Any
    fields: dict = field(default_factory=dict)


def read_parquet(path, columns, what: str) -> list[dict]:
    """Rows of a parquet file as dicts; UserError naming the file, or the columns it lacks."""
    import pyarrow.parquet as pq

    from bench.errors import UserError

    try:
        table = pq.read_table(path)
    except Exception as exc:
        raise UserError(f"cannot read {what} annotations {path}: {str(exc).splitlines()[0]}") from None
    missing = [c for c in columns if c not in table.column_names]
    if missing:
        raise UserError(f"{what} annotations {path} lack column(s): {', '.join(missing)}")
    return table.to_pylist()


def accuracy_metrics(docs: list[Doc], scores: list[dict | None], groups) -> dict:
    """Accuracy in percent overall (``accuracy``) and per group (``groups(doc)``: the metric names a document
    counts in, e.g. ``accuracy/duration/short``); ``n`` documents scored, ``n_total``. None scores are left
    out; an empty group scores 0, as in lmms-eval."""
    values: dict[str, list[float]] = {"accuracy": []}
    for doc, s in zip(docs, scores):
        if s is None:
            continue
        for key in ("accuracy", *groups(doc)):
            values.setdefault(key, []).append(s["correct"])
    metrics = {name: 100.0 * sum(v) / len(v) if v else 0.0 for name, v in sorted(values.items())}
    metrics["n"], metrics["n_total"] = len(values["accuracy"]), len(docs)
    return metrics
