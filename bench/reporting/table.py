"""Pivot tables of benchmark results: JSON-lines records in, Markdown / LaTeX / CSV out.

A table has one line per distinct value of the row keys (e.g. ``arch``), one column per
distinct value of the column keys (e.g. ``frames``) and one metric in the cells::

    records = load_records(["results/run.jsonl"])
    print(render(records, rows=["arch"], cols=["frames"], metric="prefill_tok_s"))
"""

from __future__ import annotations

import csv
import io
import sys
from typing import Any

from tabulate import tabulate

from bench.errors import UserError
from bench import metrics as catalogue
from bench.records import iter_records
from bench.reporting import latex
from bench.reporting.latex import MISSING
from bench.reporting.values import field, has, hashable, is_number, varying

OOM = "OOM"
ERROR = "error"

FORMATS = ("github", "latex", "csv")


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
    if isinstance(ci, list) and len(ci) == 2 and all(is_number(v) for v in ci):
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
    label = catalogue.metric(metric).label
    if not records:
        raise UserError("no records to tabulate")
    if not rows:
        raise UserError("give at least one row key")
    for key in [*rows, *cols]:
        if all(not has(record, key) for record in records):
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
    m = catalogue.metric(metric)
    spec, higher = m.fmt, m.higher
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
    rows = []
    for raw, shown in zip(body, text):
        cells = [latex.escape(c) for c in shown[:width]]
        for j, (value, cell) in enumerate(zip(raw[width:], shown[width:])):
            cell = latex.escape(cell).replace(" ± ", " $\\pm$ ")
            cells.append(f"\\textbf{{{cell}}}" if best[j] is not None and value == best[j] else cell)
        rows.append(cells)
    return latex.tabular([latex.escape(h) for h in header], rows, width)


def _best(values: list, higher: bool | None) -> float | None:
    """The best number among a column's cells, or None when nothing should be bold."""
    numbers = [v for v in values if is_number(v)]
    if higher is None or not numbers:
        return None
    return max(numbers) if higher else min(numbers)


def _key(record: dict, keys: list[str]) -> tuple:
    """The record's values for ``keys``, as a hashable tuple."""
    return tuple(hashable(field(record, k)) for k in keys)


def _ordered(keys: list[tuple]) -> list[tuple]:
    """Distinct key tuples in order of first appearance; numeric positions sorted by value."""
    distinct = list(dict.fromkeys(keys))
    if not distinct:
        return distinct
    sort_positions = []
    for i in range(len(distinct[0])):
        column = [k[i] for k in distinct]
        sort_positions.append(all(is_number(v) for v in column))
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
    if not is_number(value):
        return MISSING
    m = catalogue.metric(metric)
    half = _half_width(record, metric) if ci else None
    return m.shown(value) if half is None else Measured.of(m.shown(value), m.shown(half))


def _format(value: Any, spec: str) -> str:
    """A cell as text: numbers through the metric's format spec, anything else as is."""
    if not is_number(value):
        return str(value)
    half = value.half if isinstance(value, Measured) else None
    if spec.endswith("d"):
        value = round(value)
    text = format(float(value) if half is not None else value, spec)
    return text if half is None else f"{text} ± {format(half, spec)}"


def _text(value: Any) -> str:
    """A key value as a label: None as "—", everything else as its string."""
    return MISSING if value is None else str(value)


def _warn(message: str) -> None:
    """A warning on stderr."""
    print(f"warning: {message}", file=sys.stderr)


SUMMARY_METRICS = ("input_tokens", "tokens_after_compression", "prefill_tok_s", "decode_tok_s", "ttft_s",
                   "peak_mem_bytes")


def summary(records: list[dict], metrics: tuple[str, ...] = SUMMARY_METRICS, fmt: str = "github") -> str:
    """One line per record: the spec keys that vary between records, then the metrics.

    This is what ``run`` and ``matrix`` print when they finish.
    """
    keys = varying(records, records[0].get("spec", {})) or ["arch"]
    header = keys + [catalogue.metric(m).label for m in metrics] + ["status"]
    body = []
    for r in records:
        cells = [_text(field(r, k)) for k in keys]
        for m in metrics:
            value = _cell(r, m) if r.get("status") == "ok" else MISSING
            cells.append(_format(value, catalogue.metric(m).fmt))
        body.append(cells + [r.get("status", "?")])
    return tabulate(body, header, tablefmt=fmt, disable_numparse=True,
                    colalign=["left"] * len(keys) + ["right"] * len(metrics) + ["left"])
