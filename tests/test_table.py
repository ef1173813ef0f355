"""Tests for bench.reporting.table: loading result files, pivoting and rendering tables."""

from __future__ import annotations

import csv
import io
import json
import re

import pytest

from bench.errors import UserError
from bench.metrics import METRICS
from bench.reporting.table import field, load_records, pivot, render


def make_record(arch="hybrid", frames=64, status="ok", compressor="none", **metrics):
    """A result record like the runner writes, with the given spec values and metrics."""
    values = {
        "input_tokens": 1089,
        "vision_tokens": 1024,
        "tokens_after_compression": 1089,
        "prefill_s": 0.21,
        "prefill_tok_s": 5185.7,
        "ttft_s": 0.23,
        "decode_tok_s": 88.1,
        "e2e_tok_s": 1200.0,
        "peak_mem_bytes": 123456789,
        "max_frames": 2048,
    }
    values.update(metrics)
    task_metrics = {"accuracy": values.pop("accuracy")} if "accuracy" in values else {}
    if status != "ok":
        values = {}
    return {
        "schema": 1,
        "status": status,
        "error": None if status == "ok" else "boom",
        "spec": {
            "arch": arch, "preset": "small", "checkpoint": None, "compressor": compressor,
            "frames": frames, "tokens_per_frame": 16, "prompt_tokens": 64, "new_tokens": 32,
            "batch": 1, "vision": "synthetic", "device": "cpu", "dtype": "float32",
            "task": "synthetic", "prefill_chunk": None,
        },
        "env": {"device_name": "cpu", "kernels": {"mamba_ssm": False}, "commit": "abc123"},
        "metrics": values,
        "task": {"name": "synthetic", "metrics": task_metrics, "n": 0},
    }


def write_jsonl(path, records, truncated=True):
    """Write records one per line, optionally followed by a line cut short mid-record."""
    lines = [json.dumps(r) for r in records]
    if truncated:
        lines.append(json.dumps(make_record())[:40])
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return str(path)


@pytest.fixture
def records():
    """Three archs over two frame counts, with one OOM, one error and one missing cell."""
    return [
        make_record("transformer", 512, prefill_tok_s=900.0, prefill_s=0.6, peak_mem_bytes=3 * 1024**3),
        make_record("transformer", 64, prefill_tok_s=1000.0, prefill_s=0.5, peak_mem_bytes=1024**3),
        make_record("mamba", 64, prefill_tok_s=4000.0, prefill_s=0.1, peak_mem_bytes=512 * 1024**2),
        make_record("mamba", 512, status="oom"),
        make_record("hybrid", 64, prefill_tok_s=3000.0, prefill_s=0.2, peak_mem_bytes=768 * 1024**2),
        make_record("transformer", 2048, status="error"),
    ]


def test_load_skips_bad_lines_with_warning(tmp_path, capsys, records):
    path = write_jsonl(tmp_path / "run.jsonl", records)
    (tmp_path / "run.jsonl").write_text(
        (tmp_path / "run.jsonl").read_text().replace("\n", "\n\n", 1), encoding="utf-8"
    )
    loaded = load_records([path])
    assert loaded == records
    err = capsys.readouterr().err
    assert "warning" in err
    assert f"{path}:8" in err  # the truncated line, after one empty line
    assert f"{path}:2" not in err  # empty lines are skipped silently


def test_load_reads_files_in_order(tmp_path, records):
    first = write_jsonl(tmp_path / "a.jsonl", records[:2], truncated=False)
    second = write_jsonl(tmp_path / "b.jsonl", records[2:], truncated=False)
    assert load_records([first, second]) == records


def test_load_missing_file(tmp_path):
    missing = str(tmp_path / "nope.jsonl")
    with pytest.raises(UserError, match=r"cannot read results file .*nope\.jsonl"):
        load_records([missing])


def test_load_no_records(tmp_path, capsys):
    path = tmp_path / "empty.jsonl"
    path.write_text("\n{not json\n", encoding="utf-8")
    with pytest.raises(UserError, match="no records in"):
        load_records([str(path)])
    assert "empty.jsonl:2" in capsys.readouterr().err


def test_field_resolution():
    record = make_record(accuracy=0.75)
    assert field(record, "arch") == "hybrid"
    assert field(record, "frames") == 64
    assert field(record, "spec.frames") == 64
    assert field(record, "status") == "ok"
    assert field(record, "prefill_tok_s") == 5185.7
    assert field(record, "metrics.decode_tok_s") == 88.1
    assert field(record, "env.commit") == "abc123"
    assert field(record, "env.kernels.mamba_ssm") is False
    assert field(record, "task.accuracy") == 0.75
    assert field(record, "compression_ratio") == pytest.approx(1.0)
    assert field(record, "checkpoint") is None
    assert field(record, "nonexistent") is None
    assert field(record, "task.nonexistent") is None


def test_pivot_header_and_values(records):
    header, body = pivot(records, ["arch"], ["frames"], "prefill_tok_s")
    assert header == ["arch [prefill (tok/s)]", "frames=64", "frames=512", "frames=2048"]
    assert body == [
        ["transformer", 1000.0, 900.0, "error"],
        ["mamba", 4000.0, "OOM", "—"],
        ["hybrid", 3000.0, "—", "—"],
    ]


def test_pivot_several_row_keys_and_no_col_keys(records):
    header, body = pivot(records, ["arch", "compressor"], [], "prefill_s")
    assert header == ["arch", "compressor", "prefill (s)"]
    assert [line[:2] for line in body] == [["transformer", "none"], ["mamba", "none"], ["hybrid", "none"]]


def test_later_record_wins(records):
    rerun = make_record("mamba", 512, prefill_tok_s=3500.0)
    _, body = pivot([*records, rerun], ["arch"], ["frames"], "prefill_tok_s")
    assert body[1] == ["mamba", 4000.0, 3500.0, "—"]
    _, body = pivot([rerun, *records], ["arch"], ["frames"], "prefill_tok_s")
    assert {line[0]: line[2] for line in body}["mamba"] == "OOM"


def test_peak_memory_in_mib(records):
    header, body = pivot(records, ["arch"], ["frames"], "peak_mem_bytes")
    assert header[0] == "arch [peak mem (MiB)]"
    assert body[0][1:3] == [1024.0, 3072.0]
    assert re.search(r"\| transformer\s+\|\s+1024\.0 \|\s+3072\.0 \|", render(records, ["arch"], ["frames"], "peak_mem_bytes"))


def test_compression_ratio_and_task_metric():
    records = [
        make_record("transformer", 64, compressor="none", tokens_after_compression=1089, accuracy=0.5),
        make_record("transformer", 64, compressor="pool", tokens_after_compression=545, accuracy=0.4),
    ]
    _, body = pivot(records, ["compressor"], ["frames"], "compression_ratio")
    assert body == [["none", 1.0], ["pool", pytest.approx(545 / 1089)]]
    assert "\\textbf" not in render(records, ["compressor"], ["frames"], "compression_ratio", fmt="latex")
    latex = render(records, ["compressor"], ["frames"], "task.accuracy", fmt="latex")
    assert re.findall(r"\\textbf\{([^}]*)\}", latex) == ["0.500"]


def test_github_table(records):
    text = render(records, ["arch"], ["frames"], "prefill_tok_s")
    lines = text.splitlines()
    assert lines[0].startswith("| arch [prefill (tok/s)]")
    assert "frames=64" in lines[0] and "frames=2048" in lines[0]
    assert set(lines[1]) <= set("|-: ")
    assert re.search(r"\| mamba\s+\|\s+4000\.0 \|\s+OOM \|\s+— \|", text)
    assert "error" in lines[2]


def _bold(latex):
    return re.findall(r"\\textbf\{([^}]*)\}", latex)


def test_latex_booktabs_and_best_values(records):
    higher = render(records, ["arch"], ["frames"], "prefill_tok_s", fmt="latex")
    for rule in ("\\toprule", "\\midrule", "\\bottomrule", "\\begin{tabular}", "\\end{tabular}"):
        assert rule in higher
    assert "prefill (tok/s)" in higher
    # highest per column (rows read top to bottom); nothing bold in the all-failed column
    assert _bold(higher) == ["900.0", "4000.0"]

    lower = render(records, ["arch"], ["frames"], "prefill_s", fmt="latex")
    assert _bold(lower) == ["0.600", "0.100"]  # lowest per column
    assert "\\textbackslash" not in lower
    assert "---" in lower and "OOM" in lower


def test_latex_escapes_labels():
    records = [make_record("a_b&c#1%", 64), make_record("plain", 64, prefill_tok_s=1.0)]
    latex = render(records, ["arch"], ["frames"], "prefill_tok_s", fmt="latex")
    assert "a\\_b\\&c\\#1\\%" in latex
    header = render(records, ["tokens_per_frame"], ["frames"], "prefill_tok_s", fmt="latex")
    assert "tokens\\_per\\_frame" in header


def test_csv_round_trip(records):
    text = render(records, ["arch"], ["frames"], "peak_mem_bytes", fmt="csv")
    rows = list(csv.reader(io.StringIO(text)))
    assert rows[0] == ["arch [peak mem (MiB)]", "frames=64", "frames=512", "frames=2048"]
    assert rows[1] == ["transformer", "1024.0", "3072.0", "error"]
    assert rows[2] == ["mamba", "512.0", "OOM", ""]
    assert float(rows[3][1]) == 768.0
    assert "**" not in text and "MiB" not in "".join(",".join(r) for r in rows[1:])


def test_csv_keeps_full_precision():
    text = render([make_record(peak_mem_bytes=123456789)], ["arch"], ["frames"], "peak_mem_bytes", fmt="csv")
    value = list(csv.reader(io.StringIO(text)))[1][1]
    assert float(value) == pytest.approx(123456789 / 2**20)


def test_numeric_column_keys_sorted_numerically():
    records = [make_record(frames=f) for f in (1024, 64, 512, 128)]
    header, _ = pivot(records, ["arch"], ["frames"], "decode_tok_s")
    assert header[1:] == ["frames=64", "frames=128", "frames=512", "frames=1024"]


def test_unknown_metric(records):
    with pytest.raises(UserError, match="unknown metric 'speed'.*prefill_tok_s"):
        pivot(records, ["arch"], ["frames"], "speed")


def test_unknown_key(records):
    with pytest.raises(UserError, match="'archh'"):
        pivot(records, ["archh"], ["frames"], "prefill_tok_s")
    with pytest.raises(UserError, match="'frame'"):
        render(records, ["arch"], ["frame"], "prefill_tok_s")


def test_unknown_format_and_no_records(records):
    with pytest.raises(UserError, match="format"):
        render(records, ["arch"], ["frames"], "prefill_tok_s", fmt="html")
    with pytest.raises(UserError, match="no records"):
        pivot([], ["arch"], ["frames"], "prefill_tok_s")


def test_metrics_table_entries():
    assert METRICS["prefill_tok_s"].label == "prefill (tok/s)" and METRICS["prefill_tok_s"].higher is True
    assert METRICS["prefill_s"].higher is False
    assert METRICS["peak_mem_bytes"].label == "peak mem (MiB)"
    assert METRICS["compression_ratio"].higher is None


def test_latex_guards_leading_bracket():
    latex = render([make_record("[x]", 64)], ["arch"], ["frames"], "prefill_tok_s", fmt="latex")
    assert "\n{}[x] & " in latex
