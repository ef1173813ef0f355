"""Max-frames search: exponential then binary search over child-process probes."""

from __future__ import annotations

import pytest

import bench.launch.process
from bench.cli import main
from bench.measure.maxframes import record_probe, search, summary_line
from bench.records import iter_records, make_record
from bench.spec import CellSpec, make_spec

TINY = dict(arch="hybrid", preset="tiny", prompt_tokens=4, new_tokens=2, warmup=0, repeats=1)


class FakeProbes:
    """Stands in for run_process: ok up to ``threshold`` frames, oom above, error at ``error_at``."""

    def __init__(self, threshold: int, error_at: int | None = None):
        self.threshold, self.error_at = threshold, error_at
        self.frames: list[int] = []
        self.specs = []

    def __call__(self, spec, timeout=None):
        self.frames.append(spec.frames)
        self.specs.append(spec)
        if spec.frames == self.error_at:
            return make_record(spec.to_dict(), {}, status="error", error="child process exited with code 1: boom")
        if spec.frames <= self.threshold:
            return make_record(spec.to_dict(), {}, metrics={"peak_mem_bytes": 1000 * spec.frames, "prefill_s": 0.5})
        return make_record(spec.to_dict(), {}, status="oom", error="OverBudget: too much",
                           metrics={"peak_mem_bytes": 1000 * spec.frames})


@pytest.fixture
def probes(monkeypatch):
    def install(threshold, error_at=None):
        fake = FakeProbes(threshold, error_at)
        monkeypatch.setattr(bench.launch.process, "run_process", fake)
        return fake

    return install


def spec(**extra):
    return make_spec({**TINY, "frames": 16, "prefill_chunk": 64, "memory_budget": "160MiB", **extra})


def child_search(spec: CellSpec, **kwargs) -> dict:
    """The search as ``maxframes`` runs it: each probe one cell in a child process (``run_process``)."""
    return search(spec, probe=record_probe(lambda s: bench.launch.process.run_process(s)), env={}, **kwargs)


def check_consistent(record: dict) -> None:
    m = record["metrics"]
    for p in m["probes"]:
        if p["frames"] <= m["max_frames"]:
            assert p["status"] == "ok", p
        if m["first_oom_frames"] is not None and p["frames"] >= m["first_oom_frames"]:
            assert p["status"] == "oom", p


# --- the search logic, with fake probes ---------------------------------------------------

def test_exponential_then_binary(probes):
    fake = probes(threshold=100)
    seen = []
    record = child_search(spec(), start=16, limit=1 << 20, precision=1 / 32, on_probe=seen.append)
    assert fake.frames == [16, 32, 64, 128, 96, 112, 104, 100, 102]
    assert [p["frames"] for p in seen] == fake.frames
    m = record["metrics"]
    assert record["kind"] == "maxframes" and record["status"] == "ok" and record["error"] is None
    assert (m["max_frames"], m["first_oom_frames"]) == (100, 102)
    assert m["max_frames"] < m["first_oom_frames"]
    assert m["first_oom_frames"] - m["max_frames"] <= max(1, int(m["max_frames"] / 32))
    assert m["peak_mem_bytes"] == 100_000  # the largest fitting probe
    assert m["limit"] == 1 << 20 and m["search_s"] >= 0
    assert record["spec"]["frames"] is None
    assert record["spec"]["memory_budget"] == 160 * 2**20 and record["spec"]["prefill_chunk"] == 64
    assert [p["status"] for p in m["probes"]] == ["ok", "ok", "ok", "oom", "ok", "oom", "oom", "ok", "oom"]
    check_consistent(record)
    # every probe is one cheap pass of the same cell
    for s in fake.specs:
        assert (s.warmup, s.repeats, s.memory_budget, s.prefill_chunk, s.arch) == (0, 1, 160 * 2**20, 64, "hybrid")


@pytest.mark.parametrize("threshold", [1, 17, 100, 257, 1000])
@pytest.mark.parametrize("precision", [0.0, 0.25, 1 / 32])
def test_precision_respected(probes, threshold, precision):
    fake = probes(threshold=threshold)
    m = child_search(spec(), start=4, limit=1 << 20, precision=precision)["metrics"]
    lo, hi = m["max_frames"], m["first_oom_frames"]
    assert lo <= threshold < hi
    assert hi - lo <= max(1, int(lo * precision))
    if precision == 0:
        assert (lo, hi) == (threshold, threshold + 1)
    assert len(fake.frames) == len(set(fake.frames))  # no probe repeated


def test_coarser_precision_needs_fewer_probes(probes):
    fine = probes(threshold=1000)
    child_search(spec(), start=16, precision=0.0)
    coarse = probes(threshold=1000)
    child_search(spec(), start=16, precision=0.25)
    assert len(coarse.frames) < len(fine.frames)


def test_predict_first_probes_half_the_estimate_calibrates_then_confirms(probes):
    """--predict-first: a real probe at half the (wrong) estimate recalibrates it; two probes confirm."""
    fake = probes(threshold=1000)
    m = child_search(spec(), estimate=1300, calibrate=lambda probe: 1000)["metrics"]
    assert fake.frames == [650, 1000, 1031]
    assert (m["max_frames"], m["first_oom_frames"]) == (1000, 1031)


def test_limit_reached_without_oom(probes):
    fake = probes(threshold=10**9)
    record = child_search(spec(), start=16, limit=64)
    assert fake.frames == [16, 32, 64]
    m = record["metrics"]
    assert record["status"] == "ok"
    assert (m["max_frames"], m["first_oom_frames"]) == (64, None)
    assert "no OOM up to 64" in summary_line(record)


def test_first_probe_oom_searches_down(probes):
    fake = probes(threshold=10)
    m = child_search(spec(), start=16, precision=0.0)["metrics"]
    assert fake.frames == [16, 8, 12, 10, 11]
    assert (m["max_frames"], m["first_oom_frames"]) == (10, 11)


def test_nothing_fits(probes):
    probes(threshold=0)
    record = child_search(spec(), start=4, precision=0.0)
    m = record["metrics"]
    assert (m["max_frames"], m["first_oom_frames"]) == (0, 1)
    assert m["peak_mem_bytes"] is None
    check_consistent(record)


def test_error_probe_stops_exponential_phase(probes):
    fake = probes(threshold=100, error_at=64)
    record = child_search(spec(), start=16)
    assert fake.frames == [16, 32, 64]
    assert record["status"] == "error"
    assert "64 frames" in record["error"] and "boom" in record["error"]
    assert record["metrics"]["probes"][-1]["status"] == "error"
    assert record["kind"] == "maxframes"


def test_error_probe_stops_binary_phase(probes):
    fake = probes(threshold=100, error_at=96)
    record = child_search(spec(), start=16)
    assert fake.frames == [16, 32, 64, 128, 96]
    assert record["status"] == "error"
    assert "96 frames" in record["error"]


# --- the command --------------------------------------------------------------------------

def test_cli_prints_one_summary_line(probes, tmp_path, capsys):
    probes(threshold=100)
    out = tmp_path / "mf.jsonl"
    rc = main(["maxframes", "--arch", "hybrid", "--preset", "tiny", "--prompt-tokens", "4", "--new-tokens", "2",
               "--memory-budget", "160MiB", "--prefill-chunk", "64", "--start", "16", "--precision", "0.25",
               "--output", str(out)])
    stdout, stderr = capsys.readouterr()
    assert rc == 0
    assert stdout.count("\n") == 1
    assert "max frames 96" in stdout and "first OOM at 112" in stdout and "160 MiB" in stdout
    assert stderr.count("probe") == 6  # 16, 32, 64, 128, 96, 112
    (record,) = iter_records(out)
    assert record["kind"] == "maxframes" and record["metrics"]["max_frames"] == 96


def test_cli_error_probe_exit_code(probes, capsys):
    probes(threshold=100, error_at=32)
    rc = main(["maxframes", "--arch", "hybrid", "--preset", "tiny", "--start", "16"])
    stdout, _ = capsys.readouterr()
    assert rc == 1
    assert stdout.count("\n") == 1 and "error" in stdout and "32 frames" in stdout


@pytest.mark.parametrize("command", [["maxframes"], ["predict"]])
def test_frames_limit_and_its_old_name(command):
    from bench.cli import build_parser

    parse = build_parser().parse_args
    assert parse([*command, "--arch", "hybrid", "--frames-limit", "64"]).frames_limit == 64
    assert parse([*command, "--arch", "hybrid", "--limit", "32"]).frames_limit == 32  # deprecated name
    assert parse([*command, "--arch", "hybrid"]).frames_limit == 1 << 20
    assert "--limit" not in build_parser()._subparsers._group_actions[0].choices[command[0]].format_help()


# --- real child-process probes ------------------------------------------------------------

def test_real_search_tiny_hybrid():
    record = child_search(spec(), start=1, limit=2, precision=0.25)
    m = record["metrics"]
    assert record["kind"] == "maxframes"
    assert record["status"] == "ok", record["error"]
    assert record["spec"]["frames"] is None
    assert len(m["probes"]) <= 6
    assert m["first_oom_frames"] is None or m["max_frames"] < m["first_oom_frames"]
    if m["first_oom_frames"] is None:
        assert m["max_frames"] == 2
    check_consistent(record)
    for p in m["probes"]:
        assert p["status"] in ("ok", "oom")
        if p["status"] == "ok":
            assert 0 < p["peak_mem_bytes"] <= 160 * 2**20
            assert p["prefill_s"] > 0


def test_real_probe_over_budget_is_oom():
    record = child_search(spec(memory_budget="1MiB"), start=1, limit=1, precision=0.25)
    m = record["metrics"]
    assert record["status"] == "ok", record["error"]
    assert [p["status"] for p in m["probes"]] == ["oom"]
    assert (m["max_frames"], m["first_oom_frames"]) == (0, 1)
    assert m["probes"][0]["peak_mem_bytes"] > 2**20
