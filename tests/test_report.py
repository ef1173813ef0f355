"""Tests for bench.reporting.report: the report folder, its index, and what is left out when it does not apply."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from bench.errors import UserError
from bench.reporting.report import split_records, table_layout, table_metrics, write_report
from bench.metrics import MIB
from fake_records import make_record, make_search

LINK = re.compile(r"\]\(([^)\s]+)\)")


def sweep():
    """Three archs x three frame counts with one OOM and one error cell, and task accuracy."""
    records = []
    for i, arch in enumerate(("transformer", "mamba", "hybrid")):
        for frames in (64, 256, 1024):
            status = {("transformer", 1024): "oom", ("hybrid", 1024): "error"}.get((arch, frames), "ok")
            records.append(make_record(arch, frames, status=status, accuracy=0.5 + 0.1 * i - frames / 10_000))
    return records


def write_jsonl(path: Path, records: list[dict]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return str(path)


def links(index: Path) -> list[str]:
    return LINK.findall(index.read_text(encoding="utf-8"))


def written(out: Path) -> set[str]:
    return {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file() and p.name != "index.md"}


def test_report_writes_tables_figures_and_an_index_linking_them(tmp_path):
    cells = write_jsonl(tmp_path / "sweep.jsonl", sweep())
    searches = write_jsonl(tmp_path / "maxframes.jsonl", [make_search("transformer", 1888),
                                                          make_search("hybrid", 2304)])
    out = tmp_path / "report" / "nested"
    index = Path(write_report([cells, searches], str(out)))

    assert index == out / "index.md"
    files = written(out)
    for stem in ("throughput_vs_frames", "memory_vs_frames", "pareto_accuracy_throughput"):
        assert f"sweep/{stem}.png" in files and f"sweep/{stem}.pdf" in files
    for stem in ("max_frames", "max_frames_probes"):
        assert f"maxframes/{stem}.png" in files and f"maxframes/{stem}.pdf" in files
    for metric in ("prefill_tok_s", "decode_tok_s", "ttft_s", "peak_mem_bytes", "task.accuracy"):
        assert f"sweep/{metric}.md" in files and f"sweep/{metric}.tex" in files
    assert {"maxframes/max_frames.md", "maxframes/max_frames.tex"} <= files
    for name in files:
        data = (out / name).read_bytes()
        if name.endswith(".png"):
            assert data.startswith(b"\x89PNG\r\n\x1a\n")
        elif name.endswith(".pdf"):
            assert data.startswith(b"%PDF")

    targets = links(index)
    assert set(targets) == files  # every written file is linked, and every link is a written file
    assert all((out / t).is_file() for t in targets)

    text = index.read_text(encoding="utf-8")
    assert f"Records: `{cells}`" in text and f"Records: `{searches}`" in text
    assert "| transformer" in text and "OOM" in text  # tables are embedded, failed cells shown
    assert "![" in text
    assert "\\toprule" in (out / "sweep" / "prefill_tok_s.tex").read_text()
    assert "| arch" in (out / "sweep" / "prefill_tok_s.md").read_text()


def test_report_skips_what_does_not_apply(tmp_path):
    one_length = [make_record(arch, 64) for arch in ("transformer", "mamba")]
    path = write_jsonl(tmp_path / "single.jsonl", one_length)
    index = Path(write_report([path], str(tmp_path / "out")))
    files = written(tmp_path / "out")
    assert not any(name.endswith((".png", ".pdf")) for name in files)  # one frame count, no accuracy
    assert "single/prefill_tok_s.md" in files
    assert not any("max_frames" in name or "task" in name or "compression_ratio" in name for name in files)
    assert set(links(index)) == files


def test_report_of_only_failed_cells_writes_tables_but_no_figures(tmp_path):
    failed = [make_record("mamba", 64, status="oom"), make_record("mamba", 256, status="error")]
    path = write_jsonl(tmp_path / "failed.jsonl", failed)
    index = Path(write_report([path], str(tmp_path / "out")))
    assert set(links(index)) == written(tmp_path / "out")
    assert not any(name.endswith(".png") for name in written(tmp_path / "out"))


def test_report_same_file_name_twice_gets_two_folders(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    first = write_jsonl(tmp_path / "a" / "run.jsonl", [make_record("mamba", 64)])
    second = write_jsonl(tmp_path / "b" / "run.jsonl", [make_record("hybrid", 64)])
    index = Path(write_report([first, second], str(tmp_path / "out")))
    assert {"run/prefill_tok_s.md", "run-2/prefill_tok_s.md"} <= written(tmp_path / "out")
    assert set(links(index)) == written(tmp_path / "out")


def test_report_with_no_records_is_a_user_error(tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n", encoding="utf-8")
    with pytest.raises(UserError, match="no records"):
        write_report([str(empty)], str(tmp_path / "out"))
    with pytest.raises(UserError, match="cannot read"):
        write_report([str(tmp_path / "missing.jsonl")], str(tmp_path / "out"))


def test_split_records_and_metrics():
    cells, searches = split_records([*sweep(), make_search()])
    assert len(cells) == 9 and len(searches) == 1
    assert table_metrics(cells) == ["prefill_tok_s", "decode_tok_s", "ttft_s", "peak_mem_bytes", "task.accuracy"]
    compressed = [make_record("hybrid", 64, compressor="uniform:layer=2,p=0.5", tokens_after_compression=500)]
    assert "compression_ratio" in table_metrics(compressed)


def test_table_layout_adds_a_key_only_when_cells_would_collide():
    assert table_layout(sweep()) == (["arch"], ["frames"])
    chunks = [make_record("hybrid", 64, prefill_chunk=c) for c in (None, 2048)]
    assert table_layout(chunks) == (["arch", "prefill_chunk"], [])
    mixed = [make_record("hybrid", f, compressor=c) for f in (64, 1024) for c in ("none", "td")]
    assert table_layout(mixed) == (["compressor"], ["frames"])
