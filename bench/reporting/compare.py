"""Regression gate: compare a new run's records with a baseline's, cell by cell.

Cells match by spec (measurement settings ``warmup`` and ``repeats`` aside). Metrics are
gated by kind:

- **counts** (input tokens, vision tokens, tokens after compression): must be equal;
- **memory and capacity** (peak memory, max frames): within ``memory_tolerance``; the CPU
  peak of an interleaved run is shown, not gated (all its models share one process's
  resident memory, so a pass's peak is not that cell's alone);
- **timing** (tokens/s higher is better, seconds lower is better): the new/baseline ratio with
  its 95% bootstrap interval (``bench.stats``, over the repeats or rounds of both records). A
  timing regresses when the ratio is beyond ``tolerance`` *and* the whole interval is on the
  worse side of 1, so a difference that the repeats cannot tell from noise does not fail.
  With a ``reference`` (e.g. ``arch=transformer``) every cell's timing is first divided by
  the timing of its reference cell *from the same run* (the cell whose spec differs only in
  the reference keys). For interleaved runs (``matrix --interleave``) that ratio is the
  median of the per-round ratios, so a machine that is slower, or slower for a while,
  moves both sides alike and does not fail the gate. Reference cells are shown, not gated.

- **work** (``metrics.work``, ``bench.measure.work``: aten ops, bytes allocated, host syncs and, on
  CUDA, kernel launches, per prefill and per decode token): *exactly*, when both records were
  counted with the same torch, transformers and device type. More work is a regression on any
  machine, with no tolerance; the row names the operators whose counts moved.

- **task metrics** (``eval`` records: accuracy, mIoU, ...): each top-level task metric
  within ``accuracy_tolerance`` *absolute points* (higher is better; KL lower is better);
  per-split metrics (names with a ``/``) and counts are not gated, nor are an eval's timings.

A cell whose status gets worse (ok -> oom/error) is a regression. Cells present in only
one file are reported; a baseline cell missing from the new run fails the gate.

**Machines.** Timings relative to a reference cancel a machine's overall speed, not its shape: on
another CPU (another vendor, another vector unit) a Mamba scan and an attention matmul speed up by
different factors. So a baseline file may hold one set of records per machine (``env.device_name``),
appended one after another, and the new run is compared with the records of its own machine. When
the baseline has none from that machine, timings are shown with the note :data:`OTHER_MACHINE` and
not gated; counts, work counters, memory and status still are. Records without a machine name
match any machine.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass

from tabulate import tabulate

from bench import metrics as catalogue
from bench.errors import UserError
from bench.metrics import WORK_COUNTERS, WORK_STAGES
from bench.spec import spec_key
from bench.reporting import values as record_values
from bench.stats import ratio_ci

# what each gate checks, and which direction is better, comes from the catalogue (bench.metrics)
COUNTS = tuple(catalogue.gated(catalogue.COUNT))  # exactly equal
MEMORY = catalogue.gated(catalogue.MEMORY)  # metric -> higher is better
TIMING = catalogue.gated(catalogue.TIMING)
IGNORED_SPEC = ("warmup", "repeats")
TASK_COUNTS = ("n", "n_total", "chance")
OTHER_MACHINE = "baseline timed on another machine: not gated"


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


def machine(record: dict) -> str | None:
    return (record.get("env") or {}).get("device_name")


def same_machine(new: list[dict], baseline: list[dict]) -> tuple[list[dict], list[str]]:
    """The baseline records to compare ``new`` with: those of the new run's machine(s) when the baseline
    has any, else all of them. Also the baseline's machines when none is the new run's (timings are
    then not gated), else ``[]``."""
    mine = {machine(r) for r in new} - {None}
    theirs = {machine(r) for r in baseline} - {None}
    if not mine or not theirs:
        return baseline, []
    if mine & theirs:
        return [r for r in baseline if machine(r) in mine or machine(r) is None], []
    return baseline, sorted(theirs)


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


def _values(record: dict, metric: str) -> list[float]:
    """A timing's values per repeat (or round), or its median alone for records that kept none."""
    values = record["metrics"].get("spread", {}).get(metric, {}).get("values")
    return list(values) if values else [record["metrics"][metric]]


def relative_values(record: dict, ref: dict, metric: str) -> list[float] | None:
    """The cell's timing over its reference's: per-round ratios when both were measured interleaved
    with the same number of rounds, else the one ratio of medians."""
    if record.get("status") != "ok" or ref.get("status") != "ok":
        return None
    mine, theirs = record["metrics"], ref["metrics"]
    if mine.get(metric) is None or not theirs.get(metric):
        return None
    rounds, ref_rounds = _values(record, metric), _values(ref, metric)
    if record.get("interleaved") and ref.get("interleaved") and len(rounds) == len(ref_rounds) > 1:
        return [a / b for a, b in zip(rounds, ref_rounds)]
    return [mine[metric] / theirs[metric]]


def relative_timing(record: dict, ref: dict, metric: str) -> float | None:
    """The median of :func:`relative_values`."""
    values = relative_values(record, ref, metric)
    return None if values is None else statistics.median(values)


@dataclass
class Row:
    cell: str
    metric: str
    old: float | str | None
    new: float | str | None
    ratio: float | None
    verdict: str  # ok | REGRESSION | improved | info | missing
    note: str = ""  # e.g. the operators whose counts moved
    ci: tuple[float, float] | None = None  # 95% interval of the ratio (timings)


def spec_varying(records: list[dict]) -> list[str]:
    """The spec keys (of the first record, warm-up and repeats aside) whose values differ between records."""
    keys = [k for k in records[0]["spec"] if k not in IGNORED_SPEC]
    return record_values.varying(records, keys, lambda r, k: r["spec"].get(k))


def _label(record: dict, varying: list[str]) -> str:
    return " ".join(f"{k}={record['spec'].get(k)}" for k in varying) or record["spec"].get("arch", "?")


def _judge(old: float, new: float, higher_better: bool, tol: float) -> tuple[float, str]:
    ratio = new / old if old else float("inf")
    worse = ratio < 1 - tol if higher_better else ratio > 1 + tol
    better = ratio > 1 + tol if higher_better else ratio < 1 - tol
    return ratio, "REGRESSION" if worse else ("improved" if better else "ok")


def _judge_interval(new: list[float], old: list[float], higher_better: bool, tol: float):
    """A timing's ratio with its bootstrap interval; worse or better only when the whole interval says so
    (it excludes 1) and the ratio itself is beyond the tolerance."""
    ratio, low, high = ratio_ci(new, old)
    if higher_better:
        worse, better = ratio < 1 - tol and high < 1, ratio > 1 + tol and low > 1
    else:
        worse, better = ratio > 1 + tol and low > 1, ratio < 1 - tol and high < 1
    return ratio, (low, high), "REGRESSION" if worse else ("improved" if better else "ok")


def work_rows(label: str, old: dict, new: dict) -> list[Row]:
    """Exact work counters of two records: any increase is a regression, any decrease an improvement."""
    ow, nw = old.get("work"), new.get("work")
    if not isinstance(ow, dict) or not isinstance(nw, dict):
        return []
    if ow.get("counted_on") != nw.get("counted_on"):
        versions = lambda w: ", ".join(f"{k} {v}" for k, v in (w.get("counted_on") or {}).items())  # noqa: E731
        return [Row(label, "work", versions(ow), versions(nw), None, "info",
                    "counted with other library versions or device: not gated")]
    rows = []
    for stage in WORK_STAGES:
        o, n = ow.get(stage), nw.get(stage)
        if not isinstance(o, dict) or not isinstance(n, dict):
            continue
        for counter in WORK_COUNTERS:
            if counter not in o or counter not in n:
                continue
            a, b = _exact(o[counter]), _exact(n[counter])
            verdict = "ok" if a == b else "REGRESSION" if b > a else "improved"
            note = moved_ops(o.get("by_op", {}), n.get("by_op", {})) if counter == "ops" and a != b else ""
            rows.append(Row(label, f"work {stage} {counter}", a, b, (b / a) if a else None, verdict, note))
    return rows


def moved_ops(old: dict, new: dict, limit: int = 6) -> str:
    """The operators whose counts moved, largest change first: ``aten::mm +9, aten::copy_ +1``."""
    keys = set(old) | set(new)
    deltas = [(k, new.get(k, 0) - old.get(k, 0)) for k in keys]
    deltas = [(k, d) for k, d in deltas if abs(d) > 1e-9]
    deltas.sort(key=lambda kd: (-abs(kd[1]), kd[0]))
    text = ", ".join(f"{k} {d:+g}" for k, d in deltas[:limit])
    return text + (f", ... ({len(deltas) - limit} more)" if len(deltas) > limit else "")


def _exact(value):
    """A count as printed in full: per-token counts are whole numbers when every step does the same work."""
    return int(value) if isinstance(value, float) and value.is_integer() else value


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
        lower_better = not catalogue.metric(f"task.{metric}").higher
        worse = cur > value + points if lower_better else cur < value - points
        better = cur < value - points if lower_better else cur > value + points
        rows.append(Row(label, f"task {metric} (±{points:g} pts)", value, cur, None,
                        "REGRESSION" if worse else ("improved" if better else "ok")))
    return rows


def compare(new: list[dict], baseline: list[dict], *, tolerance: float = 0.10, memory_tolerance: float = 0.05,
            reference: dict[str, str] | None = None, accuracy_tolerance: float = 2.0) -> list[Row]:
    reference = reference or {}
    baseline, elsewhere = same_machine(new, baseline)
    new_ix, base_ix = _index(new, "the new run"), _index(baseline, "the baseline")
    every = list(base_ix.values()) + [r for k, r in new_ix.items() if k not in base_ix]
    varying = spec_varying(every)
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
        rows.extend(work_rows(label, om, nm))
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
                o, n = relative_values(old, old_ref, metric), relative_values(cur, new_ref, metric)
                if o and n:
                    ratio, ci, verdict = _judge_interval(n, o, higher, tolerance)
                    rows.append(Row(label, f"{metric} / reference", statistics.median(o), statistics.median(n),
                                    ratio, "info" if elsewhere else verdict, OTHER_MACHINE if elsewhere else "", ci))
                    continue
            ratio, ci, verdict = _judge_interval(_values(cur, metric), _values(old, metric), higher, tolerance)
            rows.append(Row(label, metric, om[metric], nm[metric], ratio,
                            "info" if is_reference or elsewhere else verdict, OTHER_MACHINE if elsewhere else "", ci))
    for key, cur in new_ix.items():
        if key not in base_ix:
            rows.append(Row(_label(cur, varying), "cell", "missing", "present", None, "info"))
    return rows


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "—" if value is None else str(value)


def _fmt_ratio(row: Row) -> str:
    if row.ratio is None:
        return "—"
    if row.ci is None or row.ci[0] == row.ci[1]:
        return f"{row.ratio:.3f}"
    return f"{row.ratio:.3f} [{row.ci[0]:.3f}, {row.ci[1]:.3f}]"


def render_rows(rows: list[Row]) -> str:
    notes = any(r.note for r in rows)
    body = [[r.cell, r.metric, _fmt(r.old), _fmt(r.new), _fmt_ratio(r), r.verdict] + ([r.note] if notes else [])
            for r in rows]
    headers = ["cell", "metric", "baseline", "new", "new/baseline [95% CI]", "verdict"] + (["what moved"] if notes else [])
    return tabulate(body, headers, tablefmt="github", disable_numparse=True)
