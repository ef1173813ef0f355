"""Pivot tables of benchmark results: JSON-lines records in, Markdown / LaTeX / CSV out.

A table has one line per distinct value of the row keys (e.g. ``arch``), one column per
distinct value of the column keys (e.g. ``frames``) and one metric in the cells::

    records = load_records(["results/run.jsonl"])
    print(render(records, rows=["arch"], cols=["frames"], metric="prefill_tok_s"))
"""

from __future__ import annotations

import csv
import io
import json
import math
import sys
from typing import Any

from tabulate import tabulate

from bench.errors import UserError
from bench.records import iter_records

MIB = 1024 * 1024

MISSING = "—"
OOM = "OOM"
ERROR = "error"

# metric key -> (header label with unit, format spec, higher_is_better); None: never bolded.
METRICS: dict[str, tuple[str, str, bool | None]] = {
    "prefill_tok_s": ("prefill (tok/s)", ".1f", True),
    "decode_tok_s": ("decode (tok/s)", ".1f", True),
    "e2e_tok_s": ("end-to-end (tok/s)", ".1f", True),
    "prefill_cpu_tok_s": ("prefill per CPU second (tok/s)", ".1f", True),
    "decode_cpu_tok_s": ("decode per CPU second (tok/s)", ".1f", True),
    "prefill_s": ("prefill (s)", ".3f", False),
    "ttft_s": ("TTFT (s)", ".3f", False),
    "peak_mem_bytes": ("peak mem (MiB)", ".1f", False),
    "max_frames": ("max frames", "d", True),
    "input_tokens": ("input tokens", "d", None),
    "vision_tokens": ("vision tokens", "d", None),
    "tokens_after_compression": ("tokens after compression", "d", None),
    "compression_ratio": ("compression ratio", ".3f", None),
    "task.accuracy": ("accuracy", ".3f", True),
    # metrics.cost (bench.measure.cost): sizes at the end of prefill, analytic FLOPs, utilisation of the device's peaks
    "cost.weights_bytes": ("weights (MiB)", ".1f", None),
    "cost.kv_cache_bytes": ("KV cache (MiB)", ".2f", False),
    "cost.ssm_state_bytes": ("SSM state (MiB)", ".2f", False),
    "cost.conv_state_bytes": ("conv state (MiB)", ".3f", False),
    "cost.prefill_flops": ("prefill (GFLOP)", ".2f", None),
    "cost.decode_flops": ("decode (GFLOP)", ".3f", None),
    "cost.prefill_flops_util": ("prefill FLOP/s of peak (%)", ".1f", True),
    "cost.decode_bw_util": ("decode bytes/s of peak (%)", ".1f", True),
    # viperbench predict records
    "predicted_peak_mem_bytes": ("predicted peak mem (MiB)", ".1f", False),
    "predicted_max_frames": ("predicted max frames", "d", True),
}

# metric -> factor from the record's unit to the table's
DISPLAY_SCALE = {"peak_mem_bytes": 1 / MIB, "cost.weights_bytes": 1 / MIB, "cost.kv_cache_bytes": 1 / MIB,
                 "cost.ssm_state_bytes": 1 / MIB, "cost.conv_state_bytes": 1 / MIB, "cost.prefill_flops": 1e-9,
                 "cost.decode_flops": 1e-9, "cost.prefill_flops_util": 100.0, "cost.decode_bw_util": 100.0,
                 "predicted_peak_mem_bytes": 1 / MIB}
_PATHS = {"cost.prefill_flops_util": ["metrics", "cost", "utilisation", "prefill_flops_util"],
          "cost.decode_bw_util": ["metrics", "cost", "utilisation", "decode_bw_util"],
          "predicted_max_frames": ["metrics", "max_frames", "predicted_max_frames"]}

TASK_PREFIX = "task."
TASK_DEFAULT = (".4g", True)  # format and direction of task metrics not listed in METRICS

FORMATS = ("github", "latex", "csv")

_ABSENT = object()


def load_records(paths: list[str]) -> list[dict]:
    """Read JSON-lines result files, in order, into one list of records.

    Lines that are not a JSON object (e.g. a line cut short by a crash) are skipped with a
    warning naming ``file:line``. A file that cannot be read raises UserError, and so does
    finding no records at all.
    """
    records = [record for path in paths for record in iter_records(path)]
    if not records:
        raise UserError(f"no records in {', '.join(paths) or 'no files given'}")
    return records


def field(record: dict, key: str) -> Any:
    """The value of ``key`` in a record, or None when the record does not have it.

    Bare keys are looked up in ``spec`` (``arch``, ``frames``, ...), then at the top level
    (``status``, ``error``), then in ``metrics`` (``prefill_tok_s``, ...);
    ``compression_ratio`` is tokens_after_compression / input_tokens; ``task.X`` is the
    task metric X; dotted paths such as ``spec.x``, ``metrics.x`` or ``env.kernels.x``
    are followed from the top of the record.
    """
    value = _lookup(record, key)
    return None if value is _ABSENT else value


def metric_info(metric: str) -> tuple[str, str, bool | None]:
    """(label, format spec, higher_is_better) of a metric; UserError if it is unknown."""
    if metric in METRICS:
        return METRICS[metric]
    if metric.startswith(TASK_PREFIX) and len(metric) > len(TASK_PREFIX):
        return (metric[len(TASK_PREFIX) :], *TASK_DEFAULT)
    known = ", ".join([*METRICS, "task.<name>"])
    raise UserError(f"unknown metric {metric!r}; known metrics: {known}")


class Measured(float):
    """A timing in display units that carries the half-width of its 95% interval (``table --ci``)."""

    half: float = 0.0

    @classmethod
    def of(cls, value: float, half: float) -> "Measured":
        out = cls(value)
        out.half = half
        return out


def _half_width(record: dict, metric: str) -> float | None:
    """Half the width of a metric's 95% interval (``metrics.spread.<metric>.ci95``), if the record has one."""
    ci = field(record, f"metrics.spread.{metric}.ci95")
    if isinstance(ci, list) and len(ci) == 2 and all(_is_number(v) for v in ci):
        return (ci[1] - ci[0]) / 2
    return None


def pivot(records: list[dict], rows: list[str], cols: list[str], metric: str,
          ci: bool = False) -> tuple[list[str], list[list]]:
    """The table as a header row and body rows.

    The header has one cell per row key (the last one also names the metric and its
    unit, e.g. ``arch [prefill (tok/s)]``) and one per column, e.g. ``frames=64``; with
    no column keys there is a single value column headed by the metric label. Body rows
    start with the row key values, then hold the metric in display units (peak memory in
    MiB) as raw numbers, or "OOM" / "error" for failed runs and "—" where no run (or no
    value) exists. When several records share a cell the last one wins, since re-runs
    are appended to the results file.
    """
    label, _, _ = metric_info(metric)
    if not records:
        raise UserError("no records to tabulate")
    if not rows:
        raise UserError("give at least one row key")
    for key in [*rows, *cols]:
        if all(_lookup(record, key) is _ABSENT for record in records):
            raise UserError(f"unknown key {key!r}: no record has it")

    cells: dict[tuple, dict] = {}
    for record in records:
        cells[(_key(record, rows), _key(record, cols))] = record
    row_keys = _ordered([r for r, _ in cells])
    col_keys = _ordered([c for _, c in cells])

    if cols:
        col_labels = [", ".join(f"{k}={_text(v)}" for k, v in zip(cols, ck)) for ck in col_keys]
        header = [*rows[:-1], f"{rows[-1]} [{label}]", *col_labels]
    else:
        header = [*rows, label]
    body = []
    for rk in row_keys:
        values = [_cell(cells.get((rk, ck)), metric, ci) for ck in col_keys]
        body.append([_text(v) for v in rk] + values)
    return header, body


def render(records: list[dict], rows: list[str], cols: list[str], metric: str, fmt: str = "github",
           ci: bool = False) -> str:
    """The pivot table as GitHub Markdown, LaTeX (booktabs, best value per column bold) or CSV.

    CSV holds the raw numbers in display units, with empty cells where no value exists.
    With ``ci``, timings show ``value ± half-width`` of their 95% interval (CSV: the value alone).
    """
    if fmt not in FORMATS:
        raise UserError(f"unknown table format {fmt!r}; choose one of {', '.join(FORMATS)}")
    header, body = pivot(records, rows, cols, metric, ci)
    _, spec, higher = metric_info(metric)
    width = len(rows)
    if fmt == "csv":
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(header)
        writer.writerows([["" if cell == MISSING else float(cell) if isinstance(cell, Measured) else cell
                           for cell in line] for line in body])
        return out.getvalue()
    text = [line[:width] + [_format(cell, spec) for cell in line[width:]] for line in body]
    if fmt == "github":
        align = ["left"] * width + ["right"] * (len(header) - width)
        return tabulate(text, headers=header, tablefmt="github", disable_numparse=True, colalign=align)
    return _latex(header, body, text, width, higher)


def _latex(header: list[str], body: list[list], text: list[list[str]], width: int, higher: bool | None) -> str:
    """A booktabs tabular; the best number of each value column in \\textbf."""
    best = [_best([line[j] for line in body], higher) for j in range(width, len(header))]
    lines = [
        "\\begin{tabular}{" + "l" * width + "r" * (len(header) - width) + "}",
        "\\toprule",
        " & ".join(_latex_escape(h) for h in header) + " \\\\",
        "\\midrule",
    ]
    for raw, shown in zip(body, text):
        cells = [_latex_escape(c) for c in shown[:width]]
        for j, (value, cell) in enumerate(zip(raw[width:], shown[width:])):
            cell = _latex_escape(cell).replace(" ± ", " $\\pm$ ")
            cells.append(f"\\textbf{{{cell}}}" if best[j] is not None and value == best[j] else cell)
        lines.append(" & ".join(cells) + " \\\\")
    lines += ["\\bottomrule", "\\end{tabular}"]
    return "\n".join(lines)


def _best(values: list, higher: bool | None) -> float | None:
    """The best number among a column's cells, or None when nothing should be bold."""
    numbers = [v for v in values if _is_number(v)]
    if higher is None or not numbers:
        return None
    return max(numbers) if higher else min(numbers)


_LATEX_SPECIAL = {
    "\\": "\\textbackslash{}",
    "&": "\\&",
    "%": "\\%",
    "$": "\\$",
    "#": "\\#",
    "_": "\\_",
    "{": "\\{",
    "}": "\\}",
    "~": "\\textasciitilde{}",
    "^": "\\textasciicircum{}",
    MISSING: "---",
}


def _latex_escape(text: str) -> str:
    """Text made safe to place in a LaTeX table cell (a leading "[" would read as a \\\\ option)."""
    escaped = "".join(_LATEX_SPECIAL.get(ch, ch) for ch in str(text))
    return "{}" + escaped if escaped.startswith("[") else escaped


def _lookup(record: dict, key: str) -> Any:
    """The value of ``key`` (see ``field``), or _ABSENT when the record lacks it."""
    if key == "compression_ratio":
        before, after = _lookup(record, "input_tokens"), _lookup(record, "tokens_after_compression")
        if _is_number(before) and _is_number(after) and before:
            return after / before
        return _ABSENT
    if key.startswith(TASK_PREFIX):
        return _path(record, ["task", "metrics", key[len(TASK_PREFIX) :]])
    if key in _PATHS:
        return _path(record, _PATHS[key])
    if key.startswith("cost."):
        return _path(record, ["metrics", *key.split(".")])
    if "." in key:
        return _path(record, key.split("."))
    for section in (["spec"], [], ["metrics"]):
        value = _path(record, [*section, key])
        if value is not _ABSENT:
            return value
    return _ABSENT


def _path(record: dict, parts: list[str]) -> Any:
    """Follow nested dict keys; _ABSENT as soon as one is missing."""
    node: Any = record
    for part in parts:
        if not isinstance(node, dict) or part not in node:
            return _ABSENT
        node = node[part]
    return node


def _key(record: dict, keys: list[str]) -> tuple:
    """The record's values for ``keys``, as a hashable tuple."""
    return tuple(_hashable(field(record, k)) for k in keys)


def _hashable(value: Any) -> Any:
    """Lists and dicts turned into their JSON text so they can be part of a key."""
    return json.dumps(value, sort_keys=True) if isinstance(value, (list, dict)) else value


def _ordered(keys: list[tuple]) -> list[tuple]:
    """Distinct key tuples in order of first appearance; numeric positions sorted by value."""
    distinct = list(dict.fromkeys(keys))
    if not distinct:
        return distinct
    sort_positions = []
    for i in range(len(distinct[0])):
        column = [k[i] for k in distinct]
        sort_positions.append(all(_is_number(v) for v in column))
    first_seen = [{} for _ in sort_positions]
    for k in distinct:
        for i, value in enumerate(k):
            first_seen[i].setdefault(value, len(first_seen[i]))
    return sorted(
        distinct,
        key=lambda k: tuple(v if numeric else first_seen[i][v] for i, (v, numeric) in enumerate(zip(k, sort_positions))),
    )


def _cell(record: dict | None, metric: str, ci: bool = False) -> Any:
    """What a cell holds: the metric in display units (with ``ci``, a ``Measured`` carrying its interval's
    half-width), "OOM", "error" or "—"."""
    if record is None:
        return MISSING
    status = record.get("status")
    if status == "oom":
        return OOM
    if status == "error":
        return ERROR
    value = field(record, metric)
    if not _is_number(value):
        return MISSING
    scale = DISPLAY_SCALE.get(metric, 1)
    half = _half_width(record, metric) if ci else None
    return value * scale if half is None else Measured.of(value * scale, half * scale)


def _format(value: Any, spec: str) -> str:
    """A cell as text: numbers through the metric's format spec, anything else as is."""
    if not _is_number(value):
        return str(value)
    half = value.half if isinstance(value, Measured) else None
    if spec.endswith("d"):
        value = round(value)
    text = format(float(value) if half is not None else value, spec)
    return text if half is None else f"{text} ± {format(half, spec)}"


def _text(value: Any) -> str:
    """A key value as a label: None as "—", everything else as its string."""
    return MISSING if value is None else str(value)


def _is_number(value: Any) -> bool:
    """True for finite ints and floats (not bools)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _warn(message: str) -> None:
    """A warning on stderr."""
    print(f"warning: {message}", file=sys.stderr)


SUMMARY_METRICS = ("input_tokens", "tokens_after_compression", "prefill_tok_s", "decode_tok_s", "ttft_s",
                   "peak_mem_bytes")


def summary(records: list[dict], metrics: tuple[str, ...] = SUMMARY_METRICS, fmt: str = "github") -> str:
    """One line per record: the spec keys that vary between records, then the metrics.

    This is what ``run`` and ``matrix`` print when they finish.
    """
    keys = [k for k in records[0].get("spec", {})
            if len({_hashable(field(r, k)) for r in records}) > 1] or ["arch"]
    header = keys + [METRICS[m][0] for m in metrics] + ["status"]
    body = []
    for r in records:
        cells = [_text(field(r, k)) for k in keys]
        for m in metrics:
            value = _cell(r, m) if r.get("status") == "ok" else MISSING
            cells.append(_format(value, METRICS[m][1]))
        body.append(cells + [r.get("status", "?")])
    return tabulate(body, header, tablefmt=fmt, disable_numparse=True,
                    colalign=["left"] * len(keys) + ["right"] * len(metrics) + ["left"])
