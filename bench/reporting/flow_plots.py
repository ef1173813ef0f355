"""Figures of ``viperbench flow`` records: knockout curves, mixing heatmaps, logit-lens curves.

One row of panels per flow record: a knockout record gives one panel (the mean relative change of
p(answer) against the window start, one line per edge group, a band of one standard error); a
mixing record one heatmap per query group (layers x token groups, the share of the mixing
weight); a logit-lens record one panel per answer token (the share of documents in which the
token ranks first somewhere in each group, against the layer). The data behind each panel comes
from a pure function (``knockout_curves``, ``mixing_grid``, ``lens_curves``).
"""

from __future__ import annotations

from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from bench.errors import UserError

SUFFIXES = (".png", ".pdf")
KIND_LABELS = {"attention": "attn", "mamba": "mamba"}


def flow_records(records: list[dict]) -> list[dict]:
    out = [r for r in records if r.get("kind") == "flow" and isinstance(r.get("flow"), dict)]
    if not out:
        raise UserError("no flow records to plot (records of viperbench flow have kind \"flow\")")
    return out


def knockout_curves(record: dict) -> dict[str, list[tuple[int, float, float]]]:
    """Edge group -> [(window start, mean relative change, standard error)], by start."""
    curves: dict[str, list[tuple[int, float, float]]] = {}
    for row in record["flow"]["rows"]:
        curves.setdefault(row["edges"], []).append((row["start"], row["mean"], row["sem"]))
    return {k: sorted(v) for k, v in curves.items()}


def mixing_grid(record: dict, query: str) -> tuple[list[int], list[str], list[list[float]]]:
    """(layers, groups, shares[layer][group]) of one query group."""
    groups = list(record["flow"]["groups"])
    rows = sorted((r for r in record["flow"]["rows"] if r["query"] == query), key=lambda r: r["layer"])
    return [r["layer"] for r in rows], groups, [[r["shares"][g] for g in groups] for r in rows]


def lens_curves(record: dict, token: str) -> dict[str, list[tuple[int, float]]]:
    """Group -> [(layer, share of documents with the token ranked first in the group)]."""
    curves: dict[str, list[tuple[int, float]]] = {}
    for row in record["flow"]["rows"]:
        if row["token"] == token:
            curves.setdefault(row["group"], []).append((row["layer"], row["top1"]))
    return {k: sorted(v) for k, v in curves.items()}


def _label(record: dict) -> str:
    spec = record["spec"]
    model = spec.get("checkpoint") or f"{spec.get('preset')} preset"
    return f"{spec.get('arch')} ({Path(str(model)).name}), {record['task'].get('name')}, n={record['task'].get('n')}"


def _panels(record: dict) -> list[tuple[str, str]]:
    probe = record["flow"]["probe"]
    if probe == "knockout":
        return [("knockout", "")]
    if probe == "mixing":
        return [("mixing", q) for q in sorted({r["query"] for r in record["flow"]["rows"]}, reverse=True)]
    return [("lens", t) for t in sorted({r["token"] for r in record["flow"]["rows"]})]


def _draw(ax, record: dict, what: str, which: str) -> None:
    if what == "knockout":
        window = record["flow"]["window"]
        for edges, points in knockout_curves(record).items():
            xs = [p[0] for p in points]
            ys = [100 * p[1] for p in points]
            err = [100 * p[2] for p in points]
            line, = ax.plot(xs, ys, marker="o", markersize=3, label=edges)
            ax.fill_between(xs, [y - e for y, e in zip(ys, err)], [y + e for y, e in zip(ys, err)],
                            color=line.get_color(), alpha=0.15, linewidth=0)
        ax.axhline(0, color="#888888", linewidth=0.8)
        ax.set_xlabel(f"first layer of the {window}-layer window")
        ax.set_ylabel("relative change of p(answer), %")
        ax.set_title(f"knockout: {_label(record)}", fontsize=9)
        ax.legend(fontsize=7)
    elif what == "mixing":
        layers, groups, grid = mixing_grid(record, which)
        image = ax.imshow(grid, aspect="auto", vmin=0, vmax=1, cmap="viridis")
        ax.set_xticks(range(len(groups)), groups, fontsize=8)
        kinds = {r["layer"]: r["kind"] for r in record["flow"]["rows"]}
        ax.set_yticks(range(len(layers)), [f"{i} {KIND_LABELS.get(kinds[i], kinds[i])}" for i in layers], fontsize=7)
        for y, row in enumerate(grid):
            for x, v in enumerate(row):
                ax.text(x, y, f"{v:.2f}", ha="center", va="center", fontsize=6,
                        color="white" if v < 0.6 else "black")
        ax.set_ylabel("layer")
        ax.set_title(f"mixing of the {which} token(s): {_label(record)}", fontsize=9)
        ax.figure.colorbar(image, ax=ax, fraction=0.04)
    else:
        for group, points in lens_curves(record, which).items():
            ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", markersize=3, label=group)
        ax.set_ylim(-0.03, 1.03)
        ax.set_xlabel("layer")
        ax.set_ylabel(f"share of documents: {which} token ranked first")
        ax.set_title(f"logit lens: {_label(record)}", fontsize=9)
        ax.legend(fontsize=7)


def plot_flow(records: list[dict], out: str) -> str:
    chosen = flow_records(records)
    path = Path(out)
    if path.suffix.lower() not in SUFFIXES:
        raise UserError(f"figure {out}: the suffix must be one of {', '.join(SUFFIXES)}")
    panels = [_panels(r) for r in chosen]
    cols = max(len(p) for p in panels)
    fig = Figure(figsize=(6.0 * cols, 4.2 * len(chosen)))
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(chosen), cols, squeeze=False)
    for r, (record, row) in enumerate(zip(chosen, panels)):
        for c in range(cols):
            if c < len(row):
                _draw(axes[r][c], record, *row[c])
            else:
                axes[r][c].set_axis_off()
    fig.tight_layout()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=150, format=path.suffix.lower().lstrip("."))
    except OSError as exc:
        raise UserError(f"cannot write figure {out}: {exc.strerror or exc}") from None
    return str(out)
