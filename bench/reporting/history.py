"""Per-commit history of gate metrics, with step detection (``viperbench history add|show|plot|html``).

The store is one SQLite file (the standard library's ``sqlite3``): ``--store PATH``, else
``$VIPERBENCH_HISTORY``, else ``history.sqlite`` in ``$VIPERBENCH_CACHE_DIR`` (default
``~/.cache/viperbench``). SQLite because every ``add`` is one transaction: a run killed while
adding leaves the store as it was before, readable, and readers never see half a run.

A point is one (commit, machine, cell, metric) value: timings (median and 95% interval), peak
memory, and the exact work counts (ops per prefill and per decode token). Series are kept per
machine fingerprint (device name, library versions, Python), so numbers of two machines never
share a line. Commits are ordered by commit date, then by when they were added.

Step detection is asv's (airspeed velocity, ``asv.step_detect``): a piecewise-constant fit of
the series with an L1 cost and a penalty per step, solved exactly by dynamic programming (the
Potts model), the method asv uses for its regression reports. Metrics where higher is better
are fitted as their reciprocal, so an upward step is always a regression.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import statistics
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from bench import metrics as catalogue
from bench.errors import UserError

SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    id INTEGER PRIMARY KEY, commit_id TEXT NOT NULL, commit_date REAL NOT NULL, machine TEXT NOT NULL,
    machine_info TEXT NOT NULL, added REAL NOT NULL, source TEXT);
CREATE TABLE IF NOT EXISTS points (
    run INTEGER NOT NULL REFERENCES runs(id), cell TEXT NOT NULL, metric TEXT NOT NULL,
    value REAL NOT NULL, low REAL, high REAL);
CREATE INDEX IF NOT EXISTS points_series ON points(cell, metric);
"""
TABLES = {"runs", "points"}
# the metrics a history tracks: the gated timings, the peak, and the work of prefill and of a decode step
TRACKED = (*catalogue.gated(catalogue.TIMING), "peak_mem_bytes", "work.prefill.ops", "work.decode_per_token.ops",
           "work.prefill.alloc_bytes", "work.decode_per_token.alloc_bytes")
HIGHER = {m: catalogue.METRICS[m].higher for m in TRACKED}  # metric -> higher is better

def default_store() -> Path:
    if os.environ.get("VIPERBENCH_HISTORY"):
        return Path(os.environ["VIPERBENCH_HISTORY"])
    cache = os.environ.get("VIPERBENCH_CACHE_DIR") or Path.home() / ".cache" / "viperbench"
    return Path(cache) / "history.sqlite"


def connect(path: str | os.PathLike | None, create: bool) -> sqlite3.Connection:
    """The store, checked: a file that is not a viperbench history store is one line."""
    path = Path(path) if path else default_store()
    if not create and not path.is_file():
        raise UserError(f"no history store at {path} (viperbench history add RECORDS.jsonl creates one)")
    if path.exists() and not path.is_file():
        raise UserError(f"history store {path} is not a file")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(path)
        tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    except (sqlite3.DatabaseError, OSError) as exc:
        raise UserError(f"history store {path} is unreadable: {exc}") from None
    if tables and not TABLES <= tables:
        raise UserError(f"history store {path} is not a viperbench history store (tables: {', '.join(sorted(tables))})")
    if not tables:
        if not create:
            raise UserError(f"history store {path} is empty")
        db.executescript(SCHEMA)
    return db


def machine_of(record: dict) -> tuple[str, dict]:
    """A short fingerprint and what it is made of: device, libraries, Python."""
    env = record.get("env") or {}
    info = {k: env.get(k) for k in ("device_name", "torch", "transformers", "python")}
    digest = hashlib.sha256(json.dumps(info, sort_keys=True).encode()).hexdigest()[:10]
    return digest, info


def _commit_date(commit: str | None) -> float | None:
    if not commit:
        return None
    try:
        out = subprocess.run(["git", "show", "-s", "--format=%ct", commit], capture_output=True, text=True, timeout=10,
                             cwd=Path(__file__).resolve().parents[2])
        return float(out.stdout.strip()) if out.returncode == 0 and out.stdout.strip() else None
    except (OSError, subprocess.SubprocessError, ValueError):
        return None


def cell_label(record: dict) -> str:
    spec = record.get("spec") or {}
    keys = ("arch", "preset", "checkpoint", "compressor", "frames", "batch", "device", "dtype", "task",
            "prefill_chunk")
    return " ".join(f"{k}={spec[k]}" for k in keys if spec.get(k) not in (None, "none", "synthetic"))


def _points(record: dict) -> list[tuple[str, float, float | None, float | None]]:
    metrics = record.get("metrics") or {}
    out = []
    for metric in HIGHER:
        node = metrics
        for part in metric.split("."):
            node = node.get(part) if isinstance(node, dict) else None
        if isinstance(node, (int, float)) and not isinstance(node, bool):
            ci = (metrics.get("spread", {}).get(metric) or {}).get("ci95") or [None, None]
            out.append((metric, float(node), ci[0], ci[1]))
    return out


def add(records: list[dict], store=None, commit: str | None = None, date: float | None = None,
        source: str | None = None) -> int:
    """Append the ok records, grouped by commit and machine, in one transaction. Returns the points added."""
    groups: dict[tuple, list[dict]] = {}
    for r in records:
        if r.get("status") != "ok" or r.get("kind") == "eval":
            continue
        c = commit or (r.get("env") or {}).get("commit")
        if not c:
            raise UserError("a record has no env.commit: give --commit")
        groups.setdefault((c, machine_of(r)[0]), []).append(r)
    if not groups:
        raise UserError("no ok records to add")
    db = connect(store, create=True)
    added = 0
    try:
        with db:  # one transaction
            for (c, machine), rs in groups.items():
                info = machine_of(rs[0])[1]
                when = date if date is not None else _commit_date(c) or time.time()
                run = db.execute("INSERT INTO runs(commit_id, commit_date, machine, machine_info, added, source) "
                                 "VALUES (?, ?, ?, ?, ?, ?)", (c, when, machine, json.dumps(info), time.time(),
                                                               source)).lastrowid
                for r in rs:
                    for metric, value, low, high in _points(r):
                        db.execute("INSERT INTO points VALUES (?, ?, ?, ?, ?, ?)",
                                   (run, cell_label(r), metric, value, low, high))
                        added += 1
    finally:
        db.close()
    return added


@dataclass
class Series:
    machine: str
    cell: str
    metric: str
    commits: list[str]
    values: list[float]  # per commit: the median of its runs
    steps: list[tuple[int, float, float]]  # (index of the first commit after the step, before, after): regressions


def series(store=None, metric: str | None = None, cell: str | None = None, threshold: float = 0.02) -> list[Series]:
    db = connect(store, create=False)
    try:
        rows = db.execute("SELECT r.machine, p.cell, p.metric, r.commit_id, r.commit_date, r.id, p.value "
                          "FROM points p JOIN runs r ON r.id = p.run").fetchall()
    except sqlite3.DatabaseError as exc:
        raise UserError(f"history store unreadable: {exc}") from None
    finally:
        db.close()
    grouped: dict[tuple, dict[str, tuple[float, int, list[float]]]] = {}
    for machine, c, m, commit, date, run_id, value in rows:
        if metric and m != metric or cell and cell not in c:
            continue
        per = grouped.setdefault((machine, c, m), {})
        d, first, values = per.get(commit, (date, run_id, []))
        per[commit] = (min(d, date), min(first, run_id), values + [value])
    out = []
    for (machine, c, m), per in sorted(grouped.items()):
        ordered = sorted(per.items(), key=lambda kv: (kv[1][0], kv[1][1]))
        commits = [k for k, _ in ordered]
        values = [statistics.median(v[2]) for _, v in ordered]
        out.append(Series(machine, c, m, commits, values, detect(values, HIGHER.get(m, True), threshold)))
    return out


def detect(values: list[float], higher_better: bool, threshold: float = 0.02) -> list[tuple[int, float, float]]:
    """Regressions in a series by asv's step detection: (index after the step, level before, level after)."""
    if len(values) < 2 or any(v <= 0 for v in values):
        return []
    try:
        from asv.step_detect import detect_regressions, detect_steps
    except ImportError:
        raise UserError("step detection needs asv: pip install 'viperbench[history]'") from None

    cost = [1 / v if higher_better else v for v in values]  # upward = worse
    steps = detect_steps(cost)
    _, _, regressions = detect_regressions(steps, threshold=threshold, min_size=1) or (None, None, None)
    out = []
    for _, after, before_v, after_v in regressions or []:
        level = (lambda x: 1 / x) if higher_better else (lambda x: x)
        out.append((after, level(before_v), level(after_v)))
    return out


def show(all_series: list[Series]) -> str:
    from tabulate import tabulate

    body = []
    for s in all_series:
        marks = "; ".join(f"{s.commits[i - 1][:8]}->{s.commits[i][:8]} {b:.4g}->{a:.4g} ({a / b - 1:+.1%})"
                          for i, b, a in s.steps)
        body.append([s.machine, s.cell, s.metric, len(s.values), f"{s.values[-1]:.4g}", marks or "—"])
    return tabulate(body, ["machine", "cell", "metric", "commits", "latest", "steps (regressions)"],
                    tablefmt="github", disable_numparse=True)


def plot(all_series: list[Series], metric: str, out: str | os.PathLike) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    chosen = [s for s in all_series if s.metric == metric]
    if not chosen:
        raise UserError(f"no series of metric {metric!r} in the history store")
    fig, ax = plt.subplots(figsize=(11, 4.5))
    machines = {s.machine for s in chosen}
    commits: list[str] = []
    for s in chosen:
        for c in s.commits:
            if c not in commits:
                commits.append(c)
    for s in chosen:
        xs = [commits.index(c) for c in s.commits]
        (line,) = ax.plot(xs, s.values, marker="o", label=s.cell + (f" [{s.machine}]" if len(machines) > 1 else ""))
        for i, _, after in s.steps:
            ax.axvline(xs[i] - 0.5, color=line.get_color(), linestyle="--", alpha=0.6)
            ax.annotate("step", (xs[i], after), color=line.get_color(), fontsize=8)
    ax.set_xticks(range(len(commits)), [c[:8] for c in commits], rotation=45, ha="right", fontsize=7)
    ax.set_ylabel(metric)
    ax.set_title(f"{metric} over commits (dashed: detected regression)")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1), frameon=False)
    fig.tight_layout()
    try:
        fig.savefig(out)
    except OSError as exc:
        raise UserError(f"cannot write {out}: {exc.strerror or exc}") from None
    finally:
        plt.close(fig)
    return str(out)


def html(all_series: list[Series], out_dir: str | os.PathLike) -> str:
    """A static page: one figure per metric over commits, with the detected steps listed."""
    import html as esc

    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"cannot write {out}: {exc.strerror or exc}") from None
    metrics = sorted({s.metric for s in all_series})
    parts = ["<!doctype html><meta charset=utf-8><title>viperbench history</title>",
             "<style>body{font-family:sans-serif;max-width:60em;margin:auto} td,th{padding:2px 8px}</style>",
             "<h1>viperbench history</h1>"]
    for m in metrics:
        name = m.replace(".", "_") + ".png"
        plot(all_series, m, out / name)
        parts.append(f"<h2>{esc.escape(m)}</h2><img src='{name}' alt='{esc.escape(m)}'>")
        steps = [(s, i, b, a) for s in all_series if s.metric == m for i, b, a in s.steps]
        if steps:
            parts.append("<table><tr><th>cell</th><th>machine</th><th>between</th><th>change</th></tr>")
            for s, i, b, a in steps:
                parts.append(f"<tr><td>{esc.escape(s.cell)}</td><td>{s.machine}</td>"
                             f"<td>{s.commits[i - 1][:10]} → {s.commits[i][:10]}</td><td>{a / b - 1:+.1%}</td></tr>")
            parts.append("</table>")
        else:
            parts.append("<p>no regression detected</p>")
    (out / "index.html").write_text("\n".join(parts) + "\n")
    return str(out / "index.html")
