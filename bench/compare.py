"""Regression gate: compare a new run's records with a baseline's, cell by cell.

Cells match by spec (measurement settings ``warmup`` and ``repeats`` aside). Metrics are
gated by kind:

- **counts** (input tokens, vision tokens, tokens after compression): must be equal;
- **memory and capacity** (peak memory, max frames): within ``memory_tolerance``; the CPU
  peak of an interleaved run is shown, not gated (all its models share one process's
  resident memory, so a pass's peak is not that cell's alone);
- **timing** (tokens/s higher is better, seconds lower is better): within ``tolerance``.
  With a ``reference`` (e.g. ``arch=transformer``) every cell's timing is first divided by
  the timing of its reference cell *from the same run* (the cell whose spec differs only in
  the reference keys). For interleaved runs (``matrix --interleave``) that ratio is the
  median of the per-round ratios, so a machine that is slower, or slower for a while,
  moves both sides alike and does not fail the gate. Reference cells are shown, not gated.

- **task metrics** (``eval`` records: accuracy, mIoU, ...): each top-level task metric
  within ``accuracy_tolerance`` *absolute points* (higher is better; KL lower is better);
  per-split metrics (names with a ``/``) and counts are not gated, nor are an eval's timings.

A cell whose status gets worse (ok -> oom/error) is a regression. Cells present in only
one file are reported; a baseline cell missing from the new run fails the gate.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass

from tabulate import tabulate

from bench.errors import UserError
from bench.records import spec_key

COUNTS = ("input_tokens", "vision_tokens", "tokens_after_compression")
MEMORY = {"peak_mem_bytes": False, "max_frames": True}  # metric -> higher is better
TIMING = {"prefill_tok_s": True, "decode_tok_s": True, "e2e_tok_s": True, "prefill_s": False, "ttft_s": False}
IGNORED_SPEC = ("warmup", "repeats")
TASK_COUNTS = ("n", "n_total", "chance")


def parse_reference(text: str | None) -> dict[str, str]:
    if not text:
        return {}
    out = {}
    for item in text.split(","):
        key, eq, value = item.partition("=")
        if not eq or not key.strip():
            raise UserError(f"malformed --reference {text!r}: expected key=value[,key=value]")
        out[key.strip()] = value.strip()
    return out


def cell_key(record: dict) -> tuple:
    return spec_key({k: v for k, v in record.get("spec", {}).items() if k not in IGNORED_SPEC})


def _index(records: list[dict], name: str) -> dict[tuple, dict]:
    out = {}
    for r in records:
        if "spec" not in r:
            continue
        out[cell_key(r)] = r  # a re-run appended later wins
    if not out:
        raise UserError(f"no records in {name}")
    return out


def _reference_of(record: dict, reference: dict[str, str], index: dict[tuple, dict]) -> dict | None:
    spec = record["spec"]
    if all(str(spec.get(k)) == v for k, v in reference.items()):
        return None  # a reference cell itself
    for k in reference:
        if k not in spec:
            raise UserError(f"--reference key {k!r} is not a spec key")
    candidates = [r for r in index.values()
                  if all(str(r["spec"].get(k)) == v for k, v in reference.items())
                  and all(r["spec"].get(k) == spec.get(k) for k in spec if k not in reference and k not in IGNORED_SPEC)]
    return candidates[0] if candidates else None


def relative_timing(record: dict, ref: dict, metric: str) -> float | None:
    """The cell's timing over its reference's: median of per-round ratios when both were
    measured interleaved with the same number of rounds, else the ratio of medians."""
    if record.get("status") != "ok" or ref.get("status") != "ok":
        return None
    mine, theirs = record["metrics"], ref["metrics"]
    if mine.get(metric) is None or not theirs.get(metric):
        return None
    rounds = mine.get("spread", {}).get(metric, {}).get("values")
    ref_rounds = theirs.get("spread", {}).get(metric, {}).get("values")
    if record.get("interleaved") and ref.get("interleaved") and rounds and ref_rounds \
            and len(rounds) == len(ref_rounds):
        return statistics.median(a / b for a, b in zip(rounds, ref_rounds))
    return mine[metric] / theirs[metric]


@dataclass
class Row:
    cell: str
    metric: str
    old: float | str | None
    new: float | str | None
    ratio: float | None
    verdict: str  # ok | REGRESSION | improved | info | missing


def _label(record: dict, varying: list[str]) -> str:
    return " ".join(f"{k}={record['spec'].get(k)}" for k in varying) or record["spec"].get("arch", "?")


def _judge(old: float, new: float, higher_better: bool, tol: float) -> tuple[float, str]:
    ratio = new / old if old else float("inf")
    worse = ratio < 1 - tol if higher_better else ratio > 1 + tol
    better = ratio > 1 + tol if higher_better else ratio < 1 - tol
    return ratio, "REGRESSION" if worse else ("improved" if better else "ok")


def task_rows(label: str, old: dict, new: dict, points: float) -> list[Row]:
    """Top-level task metrics of two eval records, gated within ``points`` absolute points."""
    om, nm = old.get("task", {}).get("metrics", {}), new.get("task", {}).get("metrics", {})
    rows = []
    for metric, value in om.items():
        if "/" in metric or metric in TASK_COUNTS or not isinstance(value, (int, float)):
            continue
        cur = nm.get(metric)
        if not isinstance(cur, (int, float)):
            rows.append(Row(label, f"task {metric}", value, "missing", None, "REGRESSION"))
            continue
        lower_better = "kl" in metric.lower()
        worse = cur > value + points if lower_better else cur < value - points
        better = cur < value - points if lower_better else cur > value + points
        rows.append(Row(label, f"task {metric} (±{points:g} pts)", value, cur, None,
                        "REGRESSION" if worse else ("improved" if better else "ok")))
    return rows


def compare(new: list[dict], baseline: list[dict], *, tolerance: float = 0.10, memory_tolerance: float = 0.05,
            reference: dict[str, str] | None = None, accuracy_tolerance: float = 2.0) -> list[Row]:
    reference = reference or {}
    new_ix, base_ix = _index(new, "the new run"), _index(baseline, "the baseline")
    every = list(base_ix.values()) + [r for k, r in new_ix.items() if k not in base_ix]
    varying = [k for k in every[0]["spec"] if k not in IGNORED_SPEC
               and len({str(r["spec"].get(k)) for r in every}) > 1]
    rows: list[Row] = []
    for key, old in base_ix.items():
        label = _label(old, varying)
        cur = new_ix.get(key)
        if cur is None:
            rows.append(Row(label, "cell", "present", "missing", None, "REGRESSION"))
            continue
        if old.get("status") == "ok" and cur.get("status") != "ok":
            rows.append(Row(label, "status", "ok", cur.get("status"), None, "REGRESSION"))
            continue
        if old.get("status") != "ok" or cur.get("status") != "ok":
            rows.append(Row(label, "status", old.get("status"), cur.get("status"), None, "info"))
            continue
        om, nm = old["metrics"], cur["metrics"]
        rows.extend(task_rows(label, old, cur, accuracy_tolerance))
        if old.get("kind") == "eval":  # an eval's timings are per-document means on a shared machine: not gated
            continue
        for metric in COUNTS:
            if metric in om and metric in nm:
                rows.append(Row(label, metric, om[metric], nm[metric], None,
                                "ok" if om[metric] == nm[metric] else "REGRESSION"))
        shared_rss = (old.get("interleaved") or cur.get("interleaved")) and old["spec"].get("device") == "cpu"
        for metric, higher in MEMORY.items():
            if om.get(metric) and nm.get(metric) is not None:
                ratio, verdict = _judge(om[metric], nm[metric], higher, memory_tolerance)
                if shared_rss and metric == "peak_mem_bytes":
                    verdict = "info"  # one process's RSS shared by every resident model: not a per-cell peak
                rows.append(Row(label, metric, om[metric], nm[metric], ratio, verdict))
        old_ref = _reference_of(old, reference, base_ix) if reference else None
        new_ref = _reference_of(cur, reference, new_ix) if reference else None
        is_reference = bool(reference) and old_ref is None and all(
            str(old["spec"].get(k)) == v for k, v in reference.items())
        for metric, higher in TIMING.items():
            if not om.get(metric) or nm.get(metric) is None:
                continue
            if reference and not is_reference and old_ref is not None and new_ref is not None:
                o, n = relative_timing(old, old_ref, metric), relative_timing(cur, new_ref, metric)
                if o and n is not None:
                    ratio, verdict = _judge(o, n, higher, tolerance)
                    rows.append(Row(label, f"{metric} / reference", o, n, ratio, verdict))
                    continue
            ratio, verdict = _judge(om[metric], nm[metric], higher, tolerance)
            rows.append(Row(label, metric, om[metric], nm[metric], ratio, "info" if is_reference else verdict))
    for key, cur in new_ix.items():
        if key not in base_ix:
            rows.append(Row(_label(cur, varying), "cell", "missing", "present", None, "info"))
    return rows


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "—" if value is None else str(value)


def render_rows(rows: list[Row]) -> str:
    body = [[r.cell, r.metric, _fmt(r.old), _fmt(r.new), "—" if r.ratio is None else f"{r.ratio:.3f}", r.verdict]
            for r in rows]
    return tabulate(body, ["cell", "metric", "baseline", "new", "new/baseline", "verdict"], tablefmt="github",
                    disable_numparse=True)
