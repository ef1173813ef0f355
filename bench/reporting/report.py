"""A report folder from result files: Markdown and LaTeX tables, PNG and PDF figures, and an index.

Each results file gets its own section (cells of one run are comparable; numbers from
different runs on a shared machine are not)::

    write_report(["results/quickstart.jsonl", "results/cpu-maxframes.jsonl"], "report")
    # report/index.md, report/quickstart/prefill_tok_s.md, .../prefill_tok_s.tex,
    # report/quickstart/throughput_vs_frames.png, .pdf, report/cpu-maxframes/max_frames.png, ...

Only what applies to a file's records is written: a metric no record has gets no table,
a figure with nothing to plot is left out.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Callable

from bench.reporting import plots
from bench.errors import UserError
from bench.records import iter_records
from bench import metrics as catalogue
from bench.reporting.table import render
from bench.reporting.values import field, hashable, is_number, varying

ROW_KEYS = ("arch", "compressor", "preset")
TABLE_METRICS = ("prefill_tok_s", "decode_tok_s", "ttft_s", "peak_mem_bytes", "compression_ratio")
FIGURE_FORMATS = (".png", ".pdf")


def _axis(key: str) -> str:
    """A figure's axis in a caption: "Peak memory (MiB)"."""
    return f"{plots.figure_title(key)} ({catalogue.metric(key).unit})"



def write_report(paths: list[str], out_dir: str) -> str:
    """Write tables, figures and ``index.md`` for the result files into ``out_dir``; returns index.md's path.

    UserError when a file cannot be read or no file holds any record.
    """
    groups = [(path, list(iter_records(path))) for path in paths]
    if not any(records for _, records in groups):
        raise UserError(f"no records in {', '.join(paths) or 'no files given'}")
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"cannot create report folder {out_dir}: {exc.strerror or exc}") from None

    lines = ["# viperbench report", ""]
    lines += [f"Results files: {', '.join(f'`{p}`' for p in paths)}. Each file has its own section: "
              "compare cells of one run, not numbers across runs.", ""]
    taken: set[str] = set()
    for path, records in groups:
        name = _unique(_slug(Path(path).stem), taken)
        lines += _section(path, records, out, name)
    index = out / "index.md"
    index.write_text("\n".join(lines).rstrip() + "\n", encoding="utf-8")
    return str(index)


def split_records(records: list[dict]) -> tuple[list[dict], list[dict]]:
    """(cell records, max-frames records): max-frames searches are ``kind == "maxframes"``
    records, or records with a numeric max_frames and no frame count."""
    searches = [r for r in records if r.get("kind") == "maxframes"
                or (field(r, "frames") is None and is_number(field(r, "max_frames")))]
    cells = [r for r in records if not any(r is s for s in searches)]
    return cells, searches


def table_layout(records: list[dict]) -> tuple[list[str], list[str]]:
    """(row keys, column keys) of the metric tables.

    Rows are the keys among arch, compressor and preset that vary (arch when none does);
    the column is frames when it varies. When two cells would still share a table cell,
    other varying spec keys (prefill chunk, memory budget, ...) are added to the rows, the
    one separating most cells first, so no measured cell is hidden.
    """
    rows = [k for k in ROW_KEYS if _varies(records, k)] or ["arch"]
    cols = ["frames"] if _varies(records, "frames") else []
    extra = [k for k in plots.varying_keys(records, exclude=(*ROW_KEYS, "frames")) if k not in rows]
    while extra and _collisions(records, rows + cols):
        best = min(extra, key=lambda k: _collisions(records, rows + [k] + cols))
        if _collisions(records, rows + [best] + cols) >= _collisions(records, rows + cols):
            break
        rows.append(best)
        extra.remove(best)
    return rows, cols


def table_metrics(records: list[dict]) -> list[str]:
    """The metrics worth a table: those some ok record has a number for (compression ratio only
    where a compressor removed tokens), then every numeric task metric."""
    ok = [r for r in records if r.get("status") == "ok"]
    chosen = [m for m in TABLE_METRICS if any(is_number(field(r, m)) for r in ok)]
    if "compression_ratio" in chosen and all(field(r, "compression_ratio") in (None, 1, 1.0) for r in ok):
        chosen.remove("compression_ratio")
    task = []
    for record in ok:
        metrics = (record.get("task") or {}).get("metrics") or {}
        task += [f"task.{k}" for k, v in metrics.items() if is_number(v) and f"task.{k}" not in task]
    return chosen + task


def _section(path: str, records: list[dict], out: Path, name: str) -> list[str]:
    """The index lines of one results file, writing its tables and figures under ``out/name``."""
    lines = [f"## `{path}`", "", _overview(records), ""]
    if not records:
        return lines
    folder = out / name
    folder.mkdir(parents=True, exist_ok=True)
    cells, searches = split_records(records)
    source = f"Records: `{path}`."

    if cells:
        rows, cols = table_layout(cells)
        shown = _display(cells)
        by = " and ".join([", ".join(rows)] + cols)
        failed = _failed_note(cells)
        for metric in table_metrics(cells):
            label = catalogue.metric(metric).label
            caption = f"{_sentence(label)} by {by}{failed}. {source}"
            lines += _table(shown, rows, cols, metric, folder, name, _slug(metric), label, caption)

        with_frames = [r for r in cells if is_number(field(r, "frames"))]
        series = plots.default_series(with_frames, "frames")
        per = f"one line per {' + '.join(series)}" if series else "one line"
        ooms = sum(r.get("status") == "oom" for r in with_frames)
        oom = f"; an x at the top marks {'the OOM cell' if ooms == 1 else f'the {ooms} OOM cells'}" if ooms else ""
        figures: list[tuple[str, str, Callable[[str], str], str]] = [
            ("throughput_vs_frames", "Prefill throughput vs frames",
             lambda f: plots.plot_throughput(cells, f),
             f"{_axis('prefill_tok_s')} against frames (log scale), {per}{oom}. {source}"),
            ("memory_vs_frames", "Peak memory vs frames",
             lambda f: plots.plot_memory(cells, f),
             f"{_axis('peak_mem_bytes')} against frames, {per}{oom}. {source}"),
            ("pareto_accuracy_throughput", "Accuracy vs throughput",
             lambda f: plots.plot_pareto(cells, f),
             "Task accuracy against prefill throughput, one point per cell; the Pareto-optimal cells "
             f"(no other cell both faster and more accurate) are joined in red. {source}"),
        ]
        if len({field(r, "frames") for r in cells if is_number(field(r, "frames"))}) < 2:
            figures = figures[2:]  # a line against frames needs two frame counts
        for figure in figures:
            lines += _figure(folder, name, *figure)

    if searches:
        keys = plots.varying_keys(searches, exclude=plots.IGNORED_KEYS) or ["arch"]
        caption = (f"Largest frame count that fits, per configuration ({', '.join(keys)}), from the "
                   f"max-frames search. {source}")
        lines += _table(_display(searches), keys, [], "max_frames", folder, name, "max_frames",
                        "Max frames", caption)
        lines += _figure(folder, name, "max_frames", "Max frames per configuration",
                         lambda f: plots.plot_max_frames(searches, f),
                         f"Max frames per configuration, one bar each, coloured by arch. {source}")
        lines += _figure(folder, name, "max_frames_probes", "Max-frames search probes",
                         lambda f: plots.plot_probes(searches, f),
                         f"{_axis('peak_mem_bytes')} of every probe of each max-frames search against frames; "
                         f"x marks an OOM probe, dashed lines the memory budgets. {source}")
    return lines


def _table(records: list[dict], rows: list[str], cols: list[str], metric: str, folder: Path, name: str,
           stem: str, title: str, caption: str) -> list[str]:
    """Write one pivot as Markdown and LaTeX; the index lines that embed and link it."""
    try:
        markdown = render(records, rows, cols, metric, fmt="github")
        latex = render(records, rows, cols, metric, fmt="latex")
    except UserError:
        return []
    (folder / f"{stem}.md").write_text(markdown + "\n", encoding="utf-8")
    (folder / f"{stem}.tex").write_text(latex + "\n", encoding="utf-8")
    return [f"### {_sentence(title)}", "", caption, "", markdown, "",
            f"Files: [Markdown]({name}/{stem}.md) · [LaTeX]({name}/{stem}.tex)", ""]


def _figure(folder: Path, name: str, stem: str, title: str, draw: Callable[[str], str],
            caption: str) -> list[str]:
    """Draw one figure as PNG and PDF; the index lines that embed and link it (none if it does not apply)."""
    written = []
    for suffix in FIGURE_FORMATS:
        try:
            draw(str(folder / f"{stem}{suffix}"))
        except UserError:
            for path in written:
                path.unlink(missing_ok=True)
            return []
        written.append(folder / f"{stem}{suffix}")
    return [f"### Figure: {title}", "", f"![{title}]({name}/{stem}.png)", "", caption, "",
            f"Files: [PNG]({name}/{stem}.png) · [PDF]({name}/{stem}.pdf)", ""]


def _failed_note(records: list[dict]) -> str:
    """A caption clause counting the failed cells a table marks, if any."""
    ooms = sum(r.get("status") == "oom" for r in records)
    errors = sum(r.get("status") == "error" for r in records)
    parts = [f"{ooms} {'cell' if ooms == 1 else 'cells'} ran out of memory (OOM)"] if ooms else []
    parts += [f"{errors} failed (error)"] if errors else []
    return "; " + ", ".join(parts) if parts else ""


def _overview(records: list[dict]) -> str:
    """One line on a file: how many records with which status, and the device and commit they came from."""
    if not records:
        return "No records in this file."
    counts: dict[str, int] = {}
    for record in records:
        counts[str(record.get("status"))] = counts.get(str(record.get("status")), 0) + 1
    parts = [f"{len(records)} records ({', '.join(f'{n} {s}' for s, n in counts.items())})"]
    for key, label in (("env.device_name", "device"), ("env.commit", "commit")):
        values = list(dict.fromkeys(str(v) for r in records if (v := field(r, key))))
        if values:
            parts.append(f"{label}: {', '.join(values)}")
    return "; ".join(parts) + "."


def _display(records: list[dict]) -> list[dict]:
    """Copies of the records with spec values made readable for tables: budgets as "128 MiB",
    no prefill chunk as "one-shot"."""
    shown = []
    for record in records:
        spec = dict(record.get("spec") or {})
        if is_number(spec.get("memory_budget")):
            spec["memory_budget"] = plots.format_bytes(spec["memory_budget"])
        if "prefill_chunk" in spec and not spec["prefill_chunk"]:
            spec["prefill_chunk"] = "one-shot"
        shown.append({**record, "spec": spec})
    return shown


def _collisions(records: list[dict], keys: list[str]) -> int:
    """How many records share their values of ``keys`` with an earlier record."""
    seen = {tuple(hashable(field(r, k)) for k in keys) for r in records}
    return len(records) - len(seen)


def _varies(records: list[dict], key: str) -> bool:
    """True when records hold more than one value of ``key``."""
    return bool(varying(records, [key]))


def _sentence(text: str) -> str:
    """Text with its first letter upper-cased."""
    return text[:1].upper() + text[1:]


def _slug(text: str) -> str:
    """A file-name-safe version of text."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("._") or "results"


def _unique(name: str, taken: set[str]) -> str:
    """``name``, or name-2, name-3, ... if already taken; records the choice."""
    candidate, n = name, 1
    while candidate in taken:
        n += 1
        candidate = f"{name}-{n}"
    taken.add(candidate)
    return candidate

