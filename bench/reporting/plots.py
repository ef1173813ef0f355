"""Figures of benchmark results: JSON-lines records in, PNG or PDF out.

Each ``plot_*`` function draws one figure from a list of records (as
``bench.reporting.table.load_records`` returns them) and writes it to ``out``; the file's suffix
(``.png`` or ``.pdf``) picks the format. The data behind each figure comes from a pure
function (``series_points``, ``max_frames_bars``, ``pareto_front``, ...) so that what gets
plotted can be checked without looking at pixels::

    records = load_records(["results/quickstart.jsonl"])
    plot_throughput(records, "throughput.png")     # prefill tok/s vs frames, one line per arch
    plot_max_frames(records, "max_frames.pdf")     # one bar per max-frames configuration

Figures are drawn on matplotlib's Agg canvas (no display, no pyplot state).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import FixedLocator, FuncFormatter, NullLocator

from bench.errors import UserError
from bench import metrics as catalogue
from bench.reporting.values import field, hashable, is_number, varying

DPI = 150
SUFFIXES = (".png", ".pdf")
LOGX_SPAN = 8  # x spanning more than this factor gets a log axis by default
MAX_TICKS = 12  # up to this many distinct x values, ticks sit exactly at them

# spec keys that describe the configuration of a cell, in the order labels name them
CONFIG_KEYS = ("arch", "preset", "checkpoint", "compressor", "prefill_chunk", "memory_budget")
# spec keys that never tell configurations apart
IGNORED_KEYS = ("frames", "seed", "warmup", "repeats")
# spec values shown bare in labels; other keys are shown as key=value
BARE_KEYS = ("arch", "preset", "checkpoint", "compressor", "vision", "dtype", "device")

OOM_COLOR = "#444444"
SEPARATOR = " · "
LONG_LABEL = 30  # legends with a longer label go under the axes instead of beside them


# ---------------------------------------------------------------- data extraction


def display_value(metric: str, value: Any) -> float | None:
    """A metric value in the unit figures and tables show it in (``bench.metrics``: bytes in MiB, FLOPs in
    GFLOP, utilisation in %); None if not a number."""
    if not is_number(value):
        return None
    return float(catalogue.shown(metric, value))


def axis_label(key: str) -> str:
    """The axis label of a key: the metric label with its unit, or the key itself (``frames``)."""
    if key in catalogue.METRICS or key.startswith(catalogue.TASK_PREFIX):
        return catalogue.metric(key).label
    return key


def figure_title(key: str) -> str:
    """A figure's title for a metric: its catalogue title, else its axis label."""
    known = catalogue.METRICS.get(key)
    return (known.title if known else None) or axis_label(key)


def varying_keys(records: list[dict], exclude: tuple[str, ...] = ()) -> list[str]:
    """Spec keys whose value differs between records, in spec order (config keys first)."""
    keys: list[str] = []
    for record in records:
        for key in record.get("spec", {}):
            if key not in keys:
                keys.append(key)
    keys.sort(key=lambda k: CONFIG_KEYS.index(k) if k in CONFIG_KEYS else len(CONFIG_KEYS))
    return varying(records, [k for k in keys if k not in exclude])


def default_series(records: list[dict], x: str) -> list[str]:
    """The keys that tell lines apart: spec keys other than ``x`` that vary across the records with a numeric x.

    Keys that change in lockstep with ``x`` (one value per x value and one x value per
    value, e.g. ``frames`` when x is ``input_tokens``) are left out: they cannot be told
    apart from x, and as series they would only split each line into single points.
    """
    records = _with_x(records, x)
    keys = varying_keys(records, exclude=(x, "seed", "warmup", "repeats"))
    return [k for k in keys if not _lockstep(records, x, k)]


def series_label(record: dict, keys: list[str]) -> str:
    """A short label of a record's values for ``keys``: "hybrid · none · chunk 2048"."""
    return SEPARATOR.join(format_value(k, field(record, k)) for k in keys)


def format_value(key: str, value: Any) -> str:
    """One spec value as label text: budgets in MiB/GiB, chunk sizes, frames, bare names."""
    if key == "memory_budget":
        return f"{format_bytes(value)} budget" if is_number(value) else "no budget"
    if key == "prefill_chunk":
        return f"chunk {value}" if value else "one-shot prefill"
    if key == "frames":
        return f"{value} frames"
    if key == "compressor" and value == "none":
        return "no compressor"
    if key in BARE_KEYS and value is not None:
        return str(value)
    return f"{key}={'—' if value is None else value}"


def format_bytes(value: float) -> str:
    """A byte count as "128 MiB" or "8 GiB" (one decimal where needed)."""
    for unit, size in (("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if value >= size:
            amount = value / size
            return f"{amount:.0f} {unit}" if amount == round(amount) else f"{amount:.1f} {unit}"
    return f"{value:.0f} B"


def series_points(records: list[dict], x: str, y: str,
                  series: list[str] | None = None) -> dict[str, list[tuple[float, float | None]]]:
    """The points of each line: label -> [(x, y), ...] sorted by x, y None for an OOM cell.

    Labels come from ``series_label`` (the empty string when there are no series keys);
    y is in display units (see ``display_value``). Error cells, records without a numeric
    x and ok records without a numeric y are left out. When several records fall on one
    point the last one wins, as re-runs are appended to the results file.
    """
    catalogue.metric(y)
    usable = _with_x(records, x)
    keys = default_series(usable, x) if series is None else series
    cells: dict[str, dict[float, float | None]] = {}
    for record in usable:
        status = record.get("status")
        if status == "oom":
            value = None
        elif status == "ok":
            value = display_value(y, field(record, y))
            if value is None:
                continue
        else:
            continue
        cells.setdefault(series_label(record, keys), {})[float(field(record, x))] = value
    return {label: sorted(points.items()) for label, points in cells.items() if points}


def max_frames_bars(records: list[dict]) -> list[tuple[str, str, int]]:
    """The bars of the max-frames figure: (configuration label, arch, max_frames).

    Uses records with ``kind == "maxframes"`` (or, when there are none, records holding a
    numeric ``metrics.max_frames``) whose search finished (status ok). A configuration is
    labelled by the spec keys that vary between those records; bars are grouped by the
    settings other than arch, so backbones under the same conditions sit together.
    """
    chosen = [r for r in maxframes_records(records) if r.get("status") == "ok"]
    keys = varying_keys(chosen, exclude=IGNORED_KEYS) or ["arch"]
    bars: dict[str, tuple[tuple, str, int]] = {}
    for record in chosen:
        label = series_label(record, keys)
        bars[label] = (_config_key(record, keys), str(field(record, "arch")), int(field(record, "max_frames")))
    order = _first_seen(keys, chosen)
    ranked = sorted(bars.items(), key=lambda item: tuple(order[i][v] for i, v in enumerate(item[1][0])))
    return [(label, arch, value) for label, (_, arch, value) in ranked]


def maxframes_records(records: list[dict]) -> list[dict]:
    """Records of max-frames searches: ``kind == "maxframes"``, else any with a numeric max_frames."""
    tagged = [r for r in records if r.get("kind") == "maxframes"]
    if tagged:
        return tagged
    return [r for r in records if is_number(field(r, "max_frames"))]


def probe_points(records: list[dict]) -> dict[str, list[tuple[float, float | None, str]]]:
    """Every probe of each max-frames search: label -> [(frames, peak MiB or None, status), ...]."""
    chosen = [r for r in maxframes_records(records) if isinstance(field(r, "probes"), list)]
    keys = varying_keys(chosen, exclude=IGNORED_KEYS) or ["arch"]
    out: dict[str, list[tuple[float, float | None, str]]] = {}
    for record in chosen:
        probes = [p for p in field(record, "probes") if isinstance(p, dict) and is_number(p.get("frames"))]
        points = [(float(p["frames"]), display_value("peak_mem_bytes", p.get("peak_mem_bytes")),
                   str(p.get("status"))) for p in probes if p.get("status") in ("ok", "oom")]
        if points:
            out[series_label(record, keys)] = sorted(points)
    return out


def pareto_front(points: list[tuple], maximize: tuple[bool, bool] = (True, True)) -> list[tuple]:
    """The points no other point dominates, sorted by x.

    Each point is a tuple whose first two items are its x and y (anything after them, such
    as a label, rides along). A point dominates another when it is at least as good on both
    axes and better on one; ``maximize`` says, per axis, whether higher is better.
    """
    sign = (1 if maximize[0] else -1, 1 if maximize[1] else -1)

    def dominates(a: tuple, b: tuple) -> bool:
        ax, ay, bx, by = sign[0] * a[0], sign[1] * a[1], sign[0] * b[0], sign[1] * b[1]
        return ax >= bx and ay >= by and (ax > bx or ay > by)

    front = [p for p in points if not any(dominates(q, p) for q in points)]
    return sorted(front, key=lambda p: (p[0], p[1]))


def pareto_points(records: list[dict], x: str, y: str) -> list[tuple[float, float, str]]:
    """One (x, y, label) per ok cell with numeric x and y, in display units; last record per label wins."""
    catalogue.metric(x)
    catalogue.metric(y)
    usable = [r for r in records if r.get("status") == "ok"
              and display_value(x, field(r, x)) is not None and display_value(y, field(r, y)) is not None]
    keys = varying_keys(usable, exclude=("seed", "warmup", "repeats")) or ["arch", "compressor"]
    points = {series_label(r, keys): (display_value(x, field(r, x)), display_value(y, field(r, y)))
              for r in usable}
    return [(px, py, label) for label, (px, py) in points.items()]


# ---------------------------------------------------------------- figures


def xy_figure(records: list[dict], x: str, y: str, *, series: list[str] | None = None,
              logx: bool | None = None, title: str | None = None) -> Figure:
    """The figure ``plot_xy`` writes (see there)."""
    y_label = catalogue.metric(y).label
    if not any(field(r, x) is not None for r in records):
        raise UserError(f"nothing to plot: no record has {x!r}")
    for key in series or []:
        if all(field(r, key) is None for r in records):
            raise UserError(f"unknown series key {key!r}: no record has it")
    lines = series_points(records, x, y, series)
    if not any(v is not None for points in lines.values() for _, v in points):
        raise UserError(f"nothing to plot: no record has both {x!r} and {y!r}")
    xs = sorted({px for points in lines.values() for px, _ in points})
    if logx is None:
        logx = xs[0] > 0 and xs[-1] / xs[0] > LOGX_SPAN

    fig, ax = _new_figure((7.0, 4.2))
    colors = _colors(len(lines))
    oom_at: dict[float, list[str]] = {}
    for (label, points), color in zip(lines.items(), colors):
        ok = [(px, py) for px, py in points if py is not None]
        if ok:
            ax.plot([p[0] for p in ok], [p[1] for p in ok], marker="o", markersize=5, linewidth=1.8,
                    color=color, label=label or None)
        for px, py in points:
            if py is None:
                oom_at.setdefault(px, []).append(color)
    values = [py for points in lines.values() for _, py in points if py is not None]
    top = max(values)
    ax.set_ylim(bottom=0 if min(values) >= 0 else None, top=top * (1.3 if oom_at else 1.08))
    _mark_oom(ax, oom_at)
    _x_axis(ax, xs, logx)
    ax.set_xlabel(axis_label(x))
    ax.set_ylabel(y_label)
    ax.grid(True, alpha=0.3)
    _titles(ax, title or f"{figure_title(y)} vs {axis_label(x)}", records)
    handles, labels = ax.get_legend_handles_labels()
    if oom_at:
        handles.append(Line2D([], [], color=OOM_COLOR, marker="x", linestyle="none", markersize=7,
                              markeredgewidth=2))
        labels.append("OOM")
    if len(handles) > 1 or oom_at:
        _legend(ax, handles, labels)
    return fig


def max_frames_figure(records: list[dict]) -> Figure:
    """The figure ``plot_max_frames`` writes (see there)."""
    bars = max_frames_bars(records)
    if not bars:
        raise UserError("nothing to plot: no max-frames records (kind \"maxframes\" with status ok)")
    fig, ax = _new_figure((7.0, 1.2 + 0.38 * len(bars)))
    archs = list(dict.fromkeys(arch for _, arch, _ in bars))
    color = dict(zip(archs, _colors(len(archs))))
    positions = list(range(len(bars)))[::-1]
    values = [value for _, _, value in bars]
    ax.barh(positions, values, color=[color[arch] for _, arch, _ in bars], height=0.7)
    for pos, value in zip(positions, values):
        ax.annotate(f"{value}", (value, pos), xytext=(3, 0), textcoords="offset points",
                    va="center", ha="left", fontsize=8)
    ax.set_yticks(positions, [label for label, _, _ in bars], fontsize=8)
    ax.set_xlim(0, max(values) * 1.12)
    ax.set_xlabel("max frames (largest frame count that fits)")
    ax.grid(True, axis="x", alpha=0.3)
    ax.set_axisbelow(True)
    _titles(ax, "Max frames within the memory budget", maxframes_records(records))
    if len(archs) > 1:
        handles = [Line2D([], [], color=color[a], marker="s", linestyle="none", markersize=8) for a in archs]
        _legend(ax, handles, archs)
    return fig


def probes_figure(records: list[dict]) -> Figure:
    """The figure ``plot_probes`` writes (see there)."""
    lines = probe_points(records)
    if not lines:
        raise UserError("nothing to plot: no max-frames records with probes")
    fig, ax = _new_figure((7.0, 4.2))
    xs = sorted({px for points in lines.values() for px, _, _ in points})
    values = [py for points in lines.values() for _, py, _ in points if py is not None]
    oom_at: dict[float, list[str]] = {}
    for (label, points), color in zip(lines.items(), _colors(len(lines))):
        ok = [(px, py) for px, py, status in points if status == "ok" and py is not None]
        ax.plot([p[0] for p in ok], [p[1] for p in ok], marker="o", markersize=3.5, linewidth=1.4,
                color=color, label=label)
        for px, py, status in points:
            if status != "oom":
                continue
            if py is None:
                oom_at.setdefault(px, []).append(color)
            else:
                ax.plot([px], [py], marker="x", markersize=7, markeredgewidth=2, color=color, linestyle="none")
    budgets = sorted({b for r in maxframes_records(records) if is_number(b := field(r, "memory_budget"))})
    for budget in budgets:
        level = display_value("peak_mem_bytes", budget)
        ax.axhline(level, color=OOM_COLOR, linestyle="--", linewidth=1)
        ax.annotate(f"budget {format_bytes(budget)}", (0.01, level), xycoords=("axes fraction", "data"),
                    xytext=(0, 2), textcoords="offset points", fontsize=7, color=OOM_COLOR, va="bottom")
    top = max(values + [display_value("peak_mem_bytes", b) for b in budgets]) if values or budgets else 1.0
    ax.set_ylim(0, top * (1.22 if oom_at else 1.1))
    _mark_oom(ax, oom_at)
    _x_axis(ax, xs, logx=xs[0] > 0 and xs[-1] / xs[0] > LOGX_SPAN, pow2=True)
    ax.set_xlabel("frames")
    ax.set_ylabel(catalogue.metric("peak_mem_bytes").label)
    ax.grid(True, alpha=0.3)
    _titles(ax, "Max-frames search: peak memory of every probe", maxframes_records(records))
    handles, labels = ax.get_legend_handles_labels()
    handles.append(Line2D([], [], color=OOM_COLOR, marker="x", linestyle="none", markersize=7, markeredgewidth=2))
    labels.append("OOM probe")
    _legend(ax, handles, labels)
    return fig


def pareto_figure(records: list[dict], x: str = "prefill_tok_s", y: str = "task.accuracy") -> Figure:
    """The figure ``plot_pareto`` writes (see there)."""
    points = pareto_points(records, x, y)
    if not points:
        raise UserError(f"nothing to plot: no ok record has both {x!r} and {y!r}")
    maximize = (catalogue.metric(x).higher is not False, catalogue.metric(y).higher is not False)
    front = pareto_front(points, maximize)
    on_front = {p[2] for p in front}
    fig, ax = _new_figure((7.0, 4.6))
    rest = [p for p in points if p[2] not in on_front]
    if rest:
        ax.scatter([p[0] for p in rest], [p[1] for p in rest], s=50, color="#9aa5b1", edgecolor="white",
                   zorder=3, label="dominated")
    ax.plot([p[0] for p in front], [p[1] for p in front], color="#d62728", linewidth=1.5, zorder=2,
            marker="o", markersize=8, markeredgecolor="black", label="Pareto front")
    xs = sorted(p[0] for p in points)
    logx = xs[0] > 0 and xs[-1] / xs[0] > LOGX_SPAN
    middle = math.sqrt(xs[0] * xs[-1]) if logx else (xs[0] + xs[-1]) / 2
    for px, py, label in points:
        right_half = px > middle  # labels point inwards so they stay over the plot
        ax.annotate(label, (px, py), xytext=(-6 if right_half else 6, 5), textcoords="offset points",
                    fontsize=7, ha="right" if right_half else "left", zorder=4,
                    color="black" if label in on_front else "#555555",
                    bbox={"boxstyle": "round,pad=0.1", "facecolor": "white", "edgecolor": "none", "alpha": 0.75})
    if logx:
        ax.set_xscale("log")
    _pad_limits(ax, [p[0] for p in points], [p[1] for p in points], logx)
    ax.set_xlabel(axis_label(x) + ("  →  better" if maximize[0] else "  ←  better"))
    ax.set_ylabel(axis_label(y) + ("  →  better" if maximize[1] else "  ←  better"))
    ax.grid(True, alpha=0.3)
    _titles(ax, f"{figure_title(y)} vs {figure_title(x).lower()}", records)
    _legend(ax, *ax.get_legend_handles_labels())
    return fig


def plot_xy(records: list[dict], x: str, y: str, out: str, *, series: list[str] | None = None,
            logx: bool | None = None, title: str | None = None) -> str:
    """A line plot of metric ``y`` against numeric ``x``, one line per series; returns the path written.

    ``series`` are the keys whose values tell lines apart (default: ``default_series``).
    ``y`` is a metric of the catalogue (``bench.metrics``) or ``task.<name>``, labelled with its
    unit (peak memory in MiB). OOM cells are marked with an "x" at the top of the axis
    at their x; error cells are skipped. ``logx`` defaults to True when x spans more
    than a factor of 8. UserError when there is nothing to plot.
    """
    _check_suffix(out)
    return _save(xy_figure(records, x, y, series=series, logx=logx, title=title), out)


def plot_throughput(records: list[dict], out: str, x: str = "frames", metric: str = "prefill_tok_s") -> str:
    """Throughput (``metric``, tok/s) against ``x`` on a log x axis, OOM cells marked."""
    return plot_xy(records, x, metric, out, logx=True)


def plot_memory(records: list[dict], out: str, x: str = "frames") -> str:
    """Peak memory (MiB) against ``x``, OOM cells marked."""
    return plot_xy(records, x, "peak_mem_bytes", out)


def plot_max_frames(records: list[dict], out: str) -> str:
    """Horizontal bars of ``metrics.max_frames``, one per max-frames configuration, each annotated.

    Bars are labelled by the settings that vary between searches (arch, preset,
    compressor, prefill chunk, memory budget, ...) and coloured by arch.
    """
    _check_suffix(out)
    return _save(max_frames_figure(records), out)


def plot_probes(records: list[dict], out: str) -> str:
    """Peak memory (MiB) of every max-frames probe against frames, one line per search.

    OOM probes are marked "x" (at their measured peak when the record has it), and each
    memory budget is drawn as a dashed line.
    """
    _check_suffix(out)
    return _save(probes_figure(records), out)


def plot_pareto(records: list[dict], out: str, x: str = "prefill_tok_s", y: str = "task.accuracy") -> str:
    """Scatter of ``y`` against ``x``, one labelled point per cell, the Pareto front highlighted.

    The direction of each axis comes from the catalogue (``bench.metrics``) (higher is better
    unless the metric says otherwise); front points are connected in red.
    """
    _check_suffix(out)
    return _save(pareto_figure(records, x, y), out)


def niah_cells(record: dict) -> dict[tuple[int, float], float]:
    """(haystack length, needle depth) -> accuracy of a V-NIAH eval record's ``accuracy/cell/L/D`` metrics."""
    out = {}
    for key, value in record.get("task", {}).get("metrics", {}).items():
        parts = key.split("/")
        if len(parts) == 4 and parts[:2] == ["accuracy", "cell"]:
            out[(int(parts[2]), float(parts[3]))] = float(value)
    return out


def niah_figure(records: list[dict]) -> Figure:
    """One V-NIAH heatmap per eval record (depth down, haystack length across, accuracy as colour)."""
    panels = [(r, niah_cells(r)) for r in records]
    panels = [(r, c) for r, c in panels if c]
    if not panels:
        raise UserError("nothing to plot: no record has V-NIAH cells (eval --task vniah)")
    cols = min(5, len(panels))
    rows = math.ceil(len(panels) / cols)
    fig = Figure(figsize=(3.0 * cols + 1.0, 3.2 * rows), layout="constrained")
    FigureCanvasAgg(fig)
    grid_axes = fig.subplots(rows, cols, squeeze=False)
    axes = list(grid_axes.flat)
    for ax in axes[len(panels):]:
        ax.set_visible(False)
    image = None
    for ax, (record, cells) in zip(axes, panels):
        lengths = sorted({length for length, _ in cells})
        depths = sorted({depth for _, depth in cells})
        grid = [[cells.get((length, depth), float("nan")) for length in lengths] for depth in depths]
        image = ax.imshow(grid, cmap="RdYlGn", vmin=0, vmax=100, aspect="auto")
        for i, row in enumerate(grid):
            for j, value in enumerate(row):
                if not math.isnan(value):
                    ax.text(j, i, f"{value:.0f}", ha="center", va="center", fontsize=7)
        ax.set_xticks(range(len(lengths)), [str(v) for v in lengths])
        ax.set_yticks(range(len(depths)), [f"{v:g}" for v in depths])
        ax.set_xlabel("haystack length (frames)")
        spec = record.get("spec", {})
        accuracy = record.get("task", {}).get("metrics", {}).get("accuracy")
        title = f"{spec.get('arch')}\n{spec.get('compressor')}"
        ax.set_title(title + (f"\naccuracy {accuracy:.1f}%" if accuracy is not None else ""), fontsize=8)
    for row in grid_axes:
        row[0].set_ylabel("needle depth")
    fig.colorbar(image, ax=axes[:len(panels)], label="accuracy (%)", shrink=0.8)
    return fig


def plot_niah(records: list[dict], out: str) -> str:
    """V-NIAH heatmaps: accuracy per (haystack length, needle depth), one panel per eval record."""
    _check_suffix(out)
    return _save(niah_figure(records), out)


# ---------------------------------------------------------------- helpers


def _new_figure(size: tuple[float, float]) -> tuple[Figure, Any]:
    """A figure on the Agg canvas with one axes; saving crops it to what was drawn."""
    fig = Figure(figsize=size)
    FigureCanvasAgg(fig)
    return fig, fig.add_subplot()


def _check_suffix(out: str) -> None:
    """UserError unless ``out`` names a PNG or PDF file."""
    if Path(out).suffix.lower() not in SUFFIXES:
        raise UserError(f"cannot write figure {out}: the file name must end in {' or '.join(SUFFIXES)}")


def _save(fig: Figure, out: str) -> str:
    """Write the figure (format from the suffix, 150 dpi), creating the folder; returns the path."""
    path = Path(out)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=DPI, format=path.suffix.lower().lstrip("."), bbox_inches="tight", pad_inches=0.12)
    except OSError as exc:
        raise UserError(f"cannot write figure {out}: {exc.strerror or exc}") from None
    return str(out)


def _titles(ax: Any, title: str, records: list[dict]) -> None:
    """The title, with the settings every record shares as a smaller line under it."""
    context = _context(records)
    ax.set_title(title, fontsize=11, fontweight="bold", pad=16 if context else 6)
    if context:
        ax.text(0.5, 1.012, context, transform=ax.transAxes, ha="center", va="bottom", fontsize=8,
                color="#555555")


def _legend(ax: Any, handles: list, labels: list[str]) -> None:
    """A legend outside the axes: beside them, or under them when a label is long."""
    if max(len(label) for label in labels) > LONG_LABEL:
        ax.legend(handles, labels, loc="upper left", bbox_to_anchor=(0.0, -0.16), fontsize=8, frameon=False,
                  ncols=1)
    else:
        ax.legend(handles, labels, loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize=8, frameon=False)


def _context(records: list[dict]) -> str:
    """The settings common to all records worth stating on a figure: preset, dtype, device."""
    parts = []
    for key in ("preset", "dtype", "tokens_per_frame"):
        values = {hashable(field(r, key)) for r in records}
        if len(values) == 1 and (value := next(iter(values))) is not None:
            parts.append(f"{value} tok/frame" if key == "tokens_per_frame" else str(value))
    devices = {field(r, "env.device_name") for r in records}
    if len(devices) == 1 and (device := next(iter(devices))):
        parts.append(str(device))
    return " · ".join(parts)


def _mark_oom(ax: Any, oom_at: dict[float, list[str]]) -> None:
    """An "x" per OOM cell at the top of the axes above its x (stacked), and one "OOM" note per x."""
    transform = ax.get_xaxis_transform()  # x in data, y in axes fraction
    for px, colors in oom_at.items():
        for k, color in enumerate(colors):
            ax.plot([px], [0.925 - 0.055 * k], transform=transform, marker="x", markersize=7,
                    markeredgewidth=2, color=color, linestyle="none", clip_on=False, zorder=5)
        ax.annotate("OOM", (px, 0.965), xycoords=transform, ha="center", va="center", fontsize=7,
                    color=OOM_COLOR, fontweight="bold")


def _x_axis(ax: Any, xs: list[float], logx: bool, pow2: bool = False) -> None:
    """Log or linear x with plain-number ticks: at the data's x values when there are few."""
    if logx:
        ax.set_xscale("log", base=2 if pow2 else 10)
        ax.xaxis.set_minor_locator(NullLocator())
    if len(xs) <= MAX_TICKS and not pow2:
        ax.xaxis.set_major_locator(FixedLocator(xs))
    elif logx and pow2:
        low, high = math.floor(math.log2(xs[0])), math.ceil(math.log2(xs[-1]))
        ax.xaxis.set_major_locator(FixedLocator([2.0**k for k in range(low, high + 1)]))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}" if v < 1e6 else f"{v:.3g}"))
    if logx and len(xs) > 1:
        ax.set_xlim(xs[0] / 1.25, xs[-1] * 1.25)
    elif len(xs) == 1:
        ax.set_xlim(xs[0] * 0.5, xs[0] * 1.5)


def _pad_limits(ax: Any, xs: list[float], ys: list[float], logx: bool) -> None:
    """Limits leaving room around the points and above them for their labels."""
    lo, hi = min(xs), max(xs)
    if logx:
        ax.set_xlim(lo / 1.3, hi * 1.3)
    else:
        span = (hi - lo) or abs(hi) or 1.0
        ax.set_xlim(lo - 0.1 * span, hi + 0.1 * span)
    lo, hi = min(ys), max(ys)
    span = (hi - lo) or abs(hi) or 1.0
    ax.set_ylim(lo - 0.1 * span, hi + 0.15 * span)


def _colors(n: int) -> list[str]:
    """n distinct colours: tab10, then tab20 for more lines."""
    from matplotlib import colormaps

    cmap = colormaps["tab10" if n <= 10 else "tab20"]
    return [cmap(i % cmap.N) for i in range(n)]


def _with_x(records: list[dict], x: str) -> list[dict]:
    """Records whose ``x`` is a number."""
    return [r for r in records if is_number(field(r, x))]


def _lockstep(records: list[dict], x: str, key: str) -> bool:
    """True when ``key`` and ``x`` determine each other across the records."""
    forward: dict = {}
    backward: dict = {}
    for record in records:
        vx, vk = hashable(field(record, x)), hashable(field(record, key))
        if forward.setdefault(vx, vk) != vk or backward.setdefault(vk, vx) != vx:
            return False
    return len(forward) > 1


def _config_key(record: dict, keys: list[str]) -> tuple:
    """The record's values of ``keys`` with arch moved last, for grouping bars."""
    ordered = [k for k in keys if k != "arch"] + [k for k in keys if k == "arch"]
    return tuple(hashable(field(record, k)) for k in ordered)


def _first_seen(keys: list[str], records: list[dict]) -> list[dict]:
    """Per key (arch last, as in ``_config_key``): value -> rank, numbers by value, others by first appearance."""
    ordered = [k for k in keys if k != "arch"] + [k for k in keys if k == "arch"]
    ranks = []
    for key in ordered:
        values = list(dict.fromkeys(hashable(field(r, key)) for r in records))
        if all(is_number(v) or v is None for v in values):
            values.sort(key=lambda v: (v is not None, v or 0))
        ranks.append({v: i for i, v in enumerate(values)})
    return ranks
