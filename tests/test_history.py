"""`viperbench history`: a SQLite store of per-commit points, asv's step detection, plots and a page."""

from __future__ import annotations

import json
import sqlite3

import pytest

from bench.cli import main
from bench.reporting.history import add, detect, series
from tests.bad_input import user_error


def record(arch: str, decode: float, commit: str = "c0", device: str = "cpu x") -> dict:
    return {"status": "ok", "spec": {"arch": arch, "preset": "tiny", "frames": 64},
            "env": {"commit": commit, "device_name": device, "torch": "t", "transformers": "x", "python": "3"},
            "metrics": {"decode_tok_s": decode, "prefill_tok_s": 100.0, "peak_mem_bytes": 1 << 20,
                        "spread": {"decode_tok_s": {"ci95": [decode * 0.98, decode * 1.02]}},
                        "work": {"prefill": {"ops": 1000}, "decode_per_token": {"ops": 500}}}}


HYBRID = [10.0, 10.1, 9.9, 10.0, 8.0, 8.1, 7.9, 8.0]  # a 20% drop at commit 4
TRANSFORMER = [5.0, 5.05, 4.95, 5.0, 5.02, 4.98, 5.0, 5.01]


@pytest.fixture
def store(tmp_path):
    path = tmp_path / "h.sqlite"
    for i, (h, t) in enumerate(zip(HYBRID, TRANSFORMER)):
        add([record("hybrid", h, f"c{i}"), record("transformer", t, f"c{i}")], path, date=float(i))
    return path


def test_step_is_found_where_it_happened_and_only_there(store):
    found = {s.cell: s for s in series(store, metric="decode_tok_s")}
    hybrid = found["arch=hybrid preset=tiny frames=64"]
    assert hybrid.commits == [f"c{i}" for i in range(8)] and hybrid.values == HYBRID
    assert [(i, round(b), round(a)) for i, b, a in hybrid.steps] == [(4, 10, 8)]
    assert found["arch=transformer preset=tiny frames=64"].steps == []


def test_higher_and_lower_is_better_both_read_upward_steps_as_regressions():
    assert detect([1.0, 1.0, 1.0, 0.8, 0.8], higher_better=True)
    assert not detect([1.0, 1.0, 1.0, 1.2, 1.2], higher_better=True)  # faster: not a regression
    assert detect([1.0, 1.0, 1.0, 1.2, 1.2], higher_better=False)  # more ops: a regression


def test_machines_never_share_a_series(tmp_path):
    path = tmp_path / "h.sqlite"
    add([record("hybrid", 10.0, "c0", "cpu a"), record("hybrid", 5.0, "c0", "cpu b")], path, date=0.0)
    assert len(series(path, metric="decode_tok_s")) == 2


def test_cli_add_show_plot_html(tmp_path, capsys):
    path, runs = tmp_path / "h.sqlite", tmp_path / "runs"
    runs.mkdir()
    for i, h in enumerate(HYBRID):
        f = runs / f"{i}.jsonl"
        f.write_text(json.dumps(record("hybrid", h, f"c{i}")) + "\n")
        assert main(["history", "add", str(f), "--store", str(path), "--date", str(i)]) == 0
    assert main(["history", "show", "--store", str(path), "--metric", "decode_tok_s"]) == 0
    assert "c3->c4" in capsys.readouterr().out
    assert main(["history", "plot", "--store", str(path), "--metric", "decode_tok_s", "--out",
                 str(tmp_path / "p.png")]) == 0
    assert (tmp_path / "p.png").stat().st_size > 1000
    assert main(["history", "html", "--store", str(path), "--out", str(tmp_path / "site")]) == 0
    page = (tmp_path / "site" / "index.html").read_text()
    assert "decode_tok_s" in page and "work.decode_per_token.ops" in page and "c3 → c4" in page


def test_a_killed_add_leaves_the_store_as_it_was(store, monkeypatch):
    before = sqlite3.connect(store).execute("SELECT COUNT(*) FROM points").fetchone()[0]
    import bench.reporting.history

    def die(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(bench.reporting.history, "_points", die)
    with pytest.raises(KeyboardInterrupt):
        add([record("hybrid", 1.0, "c9")], store, date=9.0)
    db = sqlite3.connect(store)
    assert db.execute("SELECT COUNT(*) FROM points").fetchone()[0] == before
    assert db.execute("SELECT COUNT(*) FROM runs WHERE commit_id='c9'").fetchone()[0] == 0


@pytest.mark.parametrize("content, needle", [
    (b"not a database at all, just text" * 10, "unreadable"),
    (None, "not a viperbench history store"),
])
def test_a_dirty_store_is_one_line(tmp_path, capfd, content, needle):
    path = tmp_path / "h.sqlite"
    if content is None:
        sqlite3.connect(path).execute("CREATE TABLE other (x)")
    else:
        path.write_bytes(content)
    user_error(capfd, ["history", "show", "--store", str(path)], needle)


def test_missing_store_and_records_without_commit_are_one_line(tmp_path, capfd):
    user_error(capfd, ["history", "show", "--store", str(tmp_path / "none.sqlite")], "no history store")
    f = tmp_path / "r.jsonl"
    r = record("hybrid", 1.0)
    del r["env"]["commit"]
    f.write_text(json.dumps(r) + "\n")
    user_error(capfd, ["history", "add", str(f), "--store", str(tmp_path / "h.sqlite")], "--commit")
