"""Paper-shaped tables: several metrics per column group, best values bold, deltas to a reference row.

Two presets:

- ``efficiency``: rows backbone x compressor, column groups = frame counts, each with
  prefill tok/s, decode tok/s and peak memory;
- ``table1`` (TimeViper's Table 1): rows = compressor configurations, columns = each task's
  headline metric (Video-MME accuracy, VDC accuracy, Charades-STA mIoU) and max frames.

LaTeX uses booktabs with a two-level header (``\\multicolumn`` + ``\\cmidrule``); Markdown
flattens the two levels into one header row. With a reference row (``compressor=none``),
every other row shows its relative change, e.g. ``5385.7 (+40.1%)``.
"""

from __future__ import annotations

from dataclasses import dataclass

from tabulate import tabulate

from bench.errors import UserError
from bench import metrics as catalogue
from bench.reporting import latex
from bench.reporting.values import best as _best, field, is_number, varying

TASK_HEADLINE = {"videomme": ("accuracy", "Video-MME acc (%)"), "vdc": ("accuracy", "VDC acc (%)"),
                 "charades": ("miou", "Charades mIoU")}


# Settings that split rows when they vary, so no cell silently mixes two setups.
SETTINGS = ("checkpoint", "prefill_chunk", "memory_budget", "vision", "batch", "dtype", "device", "tokens_per_frame")


@dataclass
class Column:
    group: str  # top header level ("" for none)
    label: str  # metric label with unit
    higher: bool | None
    fmt: str


def _value(metric: str, record: dict):
    value = field(record, metric)
    return catalogue.shown(metric, value) if is_number(value) else value


def _row_label(record: dict, keys: list[str]) -> tuple:
    return tuple(str(field(record, k)) for k in keys)


def _varying(records: list[dict], keys: list[str]) -> list[str]:
    return varying(records, keys) or keys[:1]


def efficiency(records: list[dict]):
    cells = [r for r in records if r.get("kind") != "maxframes" and r.get("spec", {}).get("frames") is not None]
    if not cells:
        raise UserError("the efficiency table needs run/matrix records (none found)")
    keys = _varying(cells, ["arch", "preset", "compressor", *SETTINGS])
    frames = sorted({r["spec"]["frames"] for r in cells})
    metrics = ["prefill_tok_s", "decode_tok_s", "peak_mem_bytes"]
    columns = [Column(f"{f} frames", catalogue.metric(m).label, catalogue.metric(m).higher, catalogue.metric(m).fmt)
               for f in frames for m in metrics]
    grid: dict[tuple, list] = {}
    for r in cells:
        row = grid.setdefault(_row_label(r, keys), [None] * len(columns))
        for j, m in enumerate(metrics):
            col = frames.index(r["spec"]["frames"]) * len(metrics) + j
            row[col] = "OOM" if r.get("status") == "oom" else _value(m, r) if r.get("status") == "ok" else None
    return keys, columns, grid


def table1(records: list[dict]):
    tasks = sorted({r["task"]["name"] for r in records
                    if r.get("task", {}).get("name") in TASK_HEADLINE and r["task"].get("metrics")})
    has_frames = any(r.get("kind") == "maxframes" for r in records)
    if not tasks and not has_frames:
        raise UserError("table1 needs task records (videomme, vdc, charades) or max-frames records")
    frames_records = [r for r in records if r.get("kind") == "maxframes"]
    keys = _varying(records, ["arch", "compressor"]) + [
        k for k in varying(frames_records, ("preset", *SETTINGS))]
    columns = [Column("", TASK_HEADLINE[t][1], True, ".1f") for t in tasks]
    if has_frames:
        columns.append(Column("", "max frames", True, "d"))
    grid: dict[tuple, list] = {}
    for r in records:
        row = grid.setdefault(_row_label(r, keys), [None] * len(columns))
        name = r.get("task", {}).get("name")
        if name in tasks and r.get("status") == "ok":
            row[tasks.index(name)] = r["task"]["metrics"].get(TASK_HEADLINE[name][0])
        if has_frames and r.get("kind") == "maxframes" and r.get("status") == "ok":
            row[-1] = r["metrics"].get("max_frames")
    return keys, columns, grid


PRESETS = {"efficiency": efficiency, "table1": table1}


def render(records: list[dict], preset: str, fmt: str = "github", reference: dict[str, str] | None = None) -> str:
    if preset not in PRESETS:
        raise UserError(f"unknown table preset {preset!r}; valid: {', '.join(PRESETS)}")
    if fmt not in ("github", "latex"):
        raise UserError(f"table presets render github or latex, not {fmt!r}")
    keys, columns, grid = PRESETS[preset](records)
    ref_row = None
    if reference:
        unknown = [k for k in reference if k not in keys]
        if unknown:
            raise UserError(f"--reference key {unknown[0]!r} is not a row key of this table ({', '.join(keys)})")
        matches = [label for label in grid if all(label[keys.index(k)] == v for k, v in reference.items())]
        if len(matches) != 1:
            raise UserError(f"--reference {reference} matches {len(matches)} rows; it must match exactly one")
        ref_row = grid[matches[0]]
    best = [_best([row[j] for row in grid.values()], c.higher) for j, c in enumerate(columns)]
    body = []
    for label, row in grid.items():
        cells = []
        for j, (value, col) in enumerate(zip(row, columns)):
            cells.append(_cell(value, col, best[j], None if row is ref_row or ref_row is None else ref_row[j], fmt))
        body.append([*label, *cells])
    if fmt == "latex":
        return _latex(keys, columns, body)
    header = [*keys, *[f"{c.group} {c.label}".strip() for c in columns]]
    return tabulate(body, header, tablefmt="github", disable_numparse=True)


def _cell(value, col: Column, best, ref, fmt: str) -> str:
    if not isinstance(value, (int, float)):
        return {"OOM": "OOM", None: "—" if fmt == "github" else "---"}.get(value, str(value))
    text = format(round(value) if col.fmt == "d" else value, col.fmt)
    if value == best:
        text = f"\\textbf{{{text}}}" if fmt == "latex" else f"**{text}**"
    if isinstance(ref, (int, float)) and ref:
        delta = f"{(value / ref - 1) * 100:+.1f}%"
        text += f" {{\\scriptsize({delta.replace('%', chr(92) + '%')})}}" if fmt == "latex" else f" ({delta})"
    return text


def _latex(keys: list[str], columns: list[Column], body: list[list[str]]) -> str:
    groups: list[tuple[str, int]] = []
    for c in columns:
        if groups and groups[-1][0] == c.group:
            groups[-1] = (c.group, groups[-1][1] + 1)
        else:
            groups.append((c.group, 1))
    header = [latex.escape(k) for k in keys] + [latex.escape(c.label) for c in columns]
    rows = [[latex.escape(x) for x in row[:len(keys)]] + row[len(keys):] for row in body]
    return latex.tabular(header, rows, len(keys), groups)
