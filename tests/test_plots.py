"""Tests for bench.reporting.plots: the data behind each figure, the files written, and refusals."""

from __future__ import annotations

import pytest

from bench.errors import UserError
from bench.reporting.plots import (
    default_series,
    format_bytes,
    max_frames_bars,
    max_frames_figure,
    pareto_front,
    pareto_points,
    plot_max_frames,
    plot_memory,
    plot_pareto,
    plot_probes,
    plot_throughput,
    plot_xy,
    probe_points,
    series_points,
    xy_figure,
)
from bench.metrics import MIB
from fake_records import make_record, make_search

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def cells():
    """Three archs x three frame counts: transformer OOMs at 1024, hybrid errors at 1024."""
    records = []
    for arch in ("transformer", "mamba", "hybrid"):
        for frames in (64, 256, 1024):
            status = {("transformer", 1024): "oom", ("hybrid", 1024): "error"}.get((arch, frames), "ok")
            records.append(make_record(arch, frames, status=status))
    return records


@pytest.fixture
def searches():
    return [
        make_search("transformer", 1312, prefill_chunk=None),
        make_search("hybrid", 304, prefill_chunk=None),
        make_search("transformer", 1888),
        make_search("hybrid", 2304),
        make_search("hybrid", 999, status="error"),
    ]


def test_series_points_one_line_per_arch_with_oom_as_none(cells):
    lines = series_points(cells, "frames", "prefill_tok_s")
    assert list(lines) == ["transformer", "mamba", "hybrid"]
    assert [x for x, _ in lines["transformer"]] == [64, 256, 1024]
    assert lines["transformer"][-1] == (1024, None)  # OOM
    assert lines["transformer"][0][1] == pytest.approx(100_000 / 8)
    assert [x for x, _ in lines["hybrid"]] == [64, 256]  # the error cell is skipped
    assert all(y is not None for _, y in lines["mamba"])


def test_series_points_memory_in_mib_and_last_record_wins(cells):
    rerun = make_record("mamba", 64, peak_mem_bytes=7 * MIB)
    lines = series_points([*cells, rerun], "frames", "peak_mem_bytes")
    assert lines["mamba"][0] == (64, 7.0)
    assert lines["mamba"][1] == (256, 50 + 256 // 8)


def test_default_series_leaves_out_x_and_keys_in_lockstep_with_it(cells):
    mixed = cells + [make_record("mamba", 64, compressor="uniform:layer=2,p=0.5")]
    assert default_series(mixed, "frames") == ["arch", "compressor"]
    # frames changes with input_tokens one for one: not a series of its own
    assert default_series(cells, "input_tokens") == ["arch"]
    lines = series_points(mixed, "frames", "prefill_tok_s")
    assert "mamba · uniform:layer=2,p=0.5" in lines
    assert "mamba · no compressor" in lines


def test_explicit_series_and_single_series(cells):
    lines = series_points(cells, "frames", "prefill_tok_s", series=[])
    assert list(lines) == [""]


def test_plot_xy_writes_png_and_pdf(tmp_path, cells):
    png = plot_xy(cells, "frames", "prefill_tok_s", str(tmp_path / "figs" / "t.png"))
    pdf = plot_xy(cells, "frames", "prefill_tok_s", str(tmp_path / "t.pdf"))
    assert png == str(tmp_path / "figs" / "t.png")
    assert (tmp_path / "figs" / "t.png").read_bytes().startswith(PNG_MAGIC)
    assert (tmp_path / "t.pdf").read_bytes().startswith(b"%PDF")
    assert pdf.endswith("t.pdf")


def test_presets_write_files(tmp_path, cells, searches):
    assert plot_throughput(cells, str(tmp_path / "thr.png")).endswith("thr.png")
    assert plot_memory(cells, str(tmp_path / "mem.png")).endswith("mem.png")
    assert plot_max_frames(searches, str(tmp_path / "mf.pdf")).endswith("mf.pdf")
    assert plot_probes(searches, str(tmp_path / "probes.png")).endswith("probes.png")
    for name in ("thr.png", "mem.png", "probes.png"):
        assert (tmp_path / name).read_bytes().startswith(PNG_MAGIC)
    assert (tmp_path / "mf.pdf").read_bytes().startswith(b"%PDF")


def test_oom_cell_is_marked_at_the_top(cells):
    fig = xy_figure(cells, "frames", "prefill_tok_s")
    ax = fig.axes[0]
    crosses = [line for line in ax.lines if line.get_marker() == "x"]
    assert len(crosses) == 1
    assert list(crosses[0].get_xdata()) == [1024]
    assert crosses[0].get_transform() != ax.transData  # placed in axes coordinates: the top of the plot
    assert [t.get_text() for t in ax.texts if t.get_text() == "OOM"] == ["OOM"]
    assert "OOM" in [t.get_text() for t in ax.get_legend().get_texts()]
    assert ax.get_ylabel() == "prefill (tok/s)"
    assert ax.get_xlabel() == "frames"


def test_all_oom_line_still_plots(cells):
    records = [*cells, make_record("mamba", 2048, status="oom"), make_record("transformer", 2048, status="oom")]
    fig = xy_figure(records, "frames", "peak_mem_bytes")
    crosses = [line for line in fig.axes[0].lines if line.get_marker() == "x"]
    assert sorted(line.get_xdata()[0] for line in crosses) == [1024, 2048, 2048]
    assert fig.axes[0].get_ylabel() == "peak mem (MiB)"


def test_logx_default_follows_the_span(cells):
    assert xy_figure(cells, "frames", "prefill_tok_s").axes[0].get_xscale() == "log"
    narrow = [r for r in cells if r["spec"]["frames"] in (64, 256)]
    assert xy_figure(narrow, "frames", "prefill_tok_s").axes[0].get_xscale() == "linear"
    assert xy_figure(narrow, "frames", "prefill_tok_s", logx=True).axes[0].get_xscale() == "log"


def test_nothing_to_plot_raises_user_error(tmp_path, cells, searches):
    out = str(tmp_path / "x.png")
    with pytest.raises(UserError, match="unknown metric"):
        plot_xy(cells, "frames", "no_such_metric", out)
    with pytest.raises(UserError, match="no record has 'no_such_key'"):
        plot_xy(cells, "no_such_key", "prefill_tok_s", out)
    with pytest.raises(UserError, match="nothing to plot"):
        plot_xy([r for r in cells if r["status"] == "error"], "frames", "prefill_tok_s", out)
    with pytest.raises(UserError, match="nothing to plot"):
        plot_throughput(searches, out)  # max-frames records have no frame count
    with pytest.raises(UserError, match="max-frames"):
        plot_max_frames(cells, out)
    with pytest.raises(UserError, match="task.accuracy"):
        plot_pareto(cells, out)
    with pytest.raises(UserError, match=r"\.png or \.pdf"):
        plot_throughput(cells, str(tmp_path / "x.svg"))
    with pytest.raises(UserError, match="unknown series key"):
        plot_xy(cells, "frames", "prefill_tok_s", out, series=["nope"])
    assert not (tmp_path / "x.png").exists()


def test_max_frames_bars(searches):
    bars = max_frames_bars(searches)
    assert bars == [
        ("transformer · one-shot prefill", "transformer", 1312),
        ("hybrid · one-shot prefill", "hybrid", 304),
        ("transformer · chunk 2048", "transformer", 1888),
        ("hybrid · chunk 2048", "hybrid", 2304),
    ]  # the failed search is left out; grouped by setting, then arch


def test_max_frames_bars_fall_back_to_records_with_max_frames():
    untagged = [make_record("mamba", None, max_frames=512), make_record("hybrid", None, max_frames=640)]
    assert [(label, value) for label, _, value in max_frames_bars(untagged)] == [("mamba", 512), ("hybrid", 640)]


def test_max_frames_figure_annotates_values(searches):
    texts = {t.get_text() for t in max_frames_figure(searches).axes[0].texts}
    assert {"1312", "304", "1888", "2304"} <= texts


def test_probe_points(searches):
    probes = probe_points(searches)
    label = "transformer · chunk 2048"
    assert probes[label][0] == (16, pytest.approx(16 * 50_000 / MIB), "ok")
    assert probes[label][-1] == (128, None, "oom")


def test_pareto_front_hand_checked():
    points = [(1, 5, "a"), (2, 4, "b"), (3, 3, "c"), (2, 2, "d"), (1, 4, "e"), (3, 1, "f"), (0.5, 5, "g")]
    assert pareto_front(points) == [(1, 5, "a"), (2, 4, "b"), (3, 3, "c")]
    # lower x is better: g (x 0.5, y 5) beats everything
    assert pareto_front(points, maximize=(False, True)) == [(0.5, 5, "g")]
    # equal points do not dominate each other
    assert pareto_front([(1, 1), (1, 1), (0, 0)]) == [(1, 1), (1, 1)]
    assert pareto_front([]) == []


def test_pareto_from_records(tmp_path):
    records = [
        make_record("transformer", 64, accuracy=0.70, prefill_tok_s=1000.0),
        make_record("mamba", 64, accuracy=0.60, prefill_tok_s=3000.0),
        make_record("hybrid", 64, accuracy=0.65, prefill_tok_s=2500.0),
        make_record("hybrid", 64, compressor="visionzip:dominant=6,contextual=2", accuracy=0.55,
                    prefill_tok_s=2000.0),
        make_record("mamba", 64, status="oom"),
    ]
    points = pareto_points(records, "prefill_tok_s", "task.accuracy")
    assert len(points) == 4
    front = pareto_front(points)
    assert [p[2] for p in front] == ["transformer · no compressor", "hybrid · no compressor",
                                     "mamba · no compressor"]
    out = plot_pareto(records, str(tmp_path / "pareto.png"))
    assert (tmp_path / "pareto.png").read_bytes().startswith(PNG_MAGIC)
    assert out.endswith("pareto.png")


def test_format_bytes():
    assert format_bytes(128 * MIB) == "128 MiB"
    assert format_bytes(8 * 1024**3) == "8 GiB"
    assert format_bytes(1.5 * 1024**3) == "1.5 GiB"
    assert format_bytes(12) == "12 B"


# --- every metric in its catalogue unit (bench.metrics) ----------------------------------------

def _cost_records():
    """Two cells whose cost, prediction and utilisation metrics are round numbers in their shown units."""
    records = []
    for frames in (64, 128):
        r = make_record("hybrid", frames, predicted_peak_mem_bytes=frames * MIB)
        r["metrics"]["cost"] = {"kv_cache_bytes": 2 * frames * MIB, "prefill_flops": frames * 1e9,
                                "utilisation": {"prefill_flops_util": frames / 1000}}
        records.append(r)
    return records


@pytest.mark.parametrize("metric, label, per_frame", [
    ("cost.kv_cache_bytes", "KV cache (MiB)", 2.0),  # bytes shown in MiB
    ("predicted_peak_mem_bytes", "predicted peak mem (MiB)", 1.0),
    ("cost.prefill_flops", "prefill (GFLOP)", 1.0),  # FLOPs shown in GFLOP
    ("cost.prefill_flops_util", "prefill FLOP/s of peak (%)", 0.1),  # a fraction shown in %
    ("peak_mem_bytes", "peak mem (MiB)", None),
])
def test_plotted_values_are_in_the_unit_of_the_axis_label(metric, label, per_frame):
    records = _cost_records()
    fig = xy_figure(records, "frames", metric)
    ax = fig.axes[0]
    assert ax.get_ylabel() == label
    (line,) = [ln for ln in ax.lines if len(ln.get_xdata()) == 2]
    expected = [(50 + f // 8) for f in (64, 128)] if per_frame is None else [per_frame * f for f in (64, 128)]
    assert list(line.get_xdata()) == [64.0, 128.0]
    assert list(line.get_ydata()) == pytest.approx(expected)
    assert series_points(records, "frames", metric)[""] == [(64.0, pytest.approx(expected[0])),
                                                           (128.0, pytest.approx(expected[1]))]


def test_memory_on_the_x_axis_is_in_mib_too():
    points = pareto_points(_cost_records(), "peak_mem_bytes", "cost.kv_cache_bytes")
    assert sorted((x, y) for x, y, _ in points) == [(58.0, 128.0), (66.0, 256.0)]
