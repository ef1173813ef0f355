"""``plot --kind stream``: stream memory and per-chunk latency against stream time (records of ``viperbench
stream``), one line per backbone / compressor / window, a stream that ran out of memory marked where it
stopped. The data come from ``stream_series``, a pure function."""

from __future__ import annotations

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from bench.errors import UserError
from bench.metrics import metric
from bench.reporting.plots import OOM_COLOR, _check_suffix, _save


def stream_label(spec: dict) -> str:
    parts = [str(spec.get("arch")), str(spec.get("compressor", "none")).split(":")[0]]
    if spec.get("window_frames"):
        parts.append(f"window {spec['window_frames']}" + (f" + K={spec['retrieve_frames']}"
                                                          if spec.get("retrieve_frames") else ""))
    return " / ".join(parts)


def stream_series(records: list[dict]) -> dict[str, dict]:
    """label -> {"t": stream seconds, "memory": bytes, "chunk_s": seconds, "oom_at_s": seconds or None}."""
    out: dict[str, dict] = {}
    for r in records:
        if r.get("kind") != "stream" or r.get("row") not in ("chunk", "summary"):
            continue
        m = r.get("metrics", {})
        series = out.setdefault(stream_label(r.get("spec", {})), {"t": [], "memory": [], "chunk_s": [],
                                                                   "oom_at_s": None})
        if r["row"] == "chunk":
            series["t"].append(m["stream_s"])
            series["memory"].append(m["device_bytes"])
            series["chunk_s"].append(m["chunk_s"])
        elif m.get("oom_at_s") is not None:
            series["oom_at_s"] = m["oom_at_s"]
    return {k: v for k, v in out.items() if v["t"]}


def stream_figure(records: list[dict]) -> Figure:
    series = stream_series(records)
    if not series:
        raise UserError('nothing to plot: no stream chunk records (viperbench stream, kind "stream")')
    fig = Figure(figsize=(11, 4), layout="constrained")
    FigureCanvasAgg(fig)
    memory_ax, latency_ax = fig.subplots(1, 2)
    mem, chunk = metric("device_bytes"), metric("chunk_s")
    for label, s in series.items():
        (line,) = memory_ax.plot(s["t"], [mem.shown(v) for v in s["memory"]], label=label)
        latency_ax.plot(s["t"], s["chunk_s"], label=label, color=line.get_color())
        if s["oom_at_s"] is not None:
            memory_ax.plot([s["oom_at_s"]], [mem.shown(s["memory"][-1])], marker="x", markersize=9,
                           markeredgewidth=2, color=OOM_COLOR, linestyle="none")
            memory_ax.annotate("OOM", (s["oom_at_s"], mem.shown(s["memory"][-1])), textcoords="offset points",
                               xytext=(4, 4), fontsize=7, color=OOM_COLOR, fontweight="bold")
    memory_ax.set(xlabel="stream time (s)", ylabel=mem.label, title=mem.title or mem.name)
    latency_ax.set(xlabel="stream time (s)", ylabel=chunk.label, title=chunk.title or chunk.name)
    latency_ax.legend(fontsize=8, frameon=False, loc="upper left", bbox_to_anchor=(1.02, 1.0))
    return fig


def plot_stream(records: list[dict], out: str) -> str:
    _check_suffix(out)
    return _save(stream_figure(records), out)
