"""The regression gate and the paper-shaped tables, on hand-made records."""

from __future__ import annotations

import copy
import json

import pytest

from bench.reporting import paper_tables
from bench.cli import main
from bench.reporting.compare import OTHER_MACHINE, compare, parse_reference, relative_timing
from bench.errors import UserError
from bench.flags import percent

ARCHS = {"transformer": 1000.0, "mamba": 400.0, "hybrid": 800.0}  # prefill tok/s


def record(arch, frames=64, speed=1.0, rounds=(1.0, 1.0, 1.0), peak=100 * 2**20, status="ok", tokens=1089,
           interleaved=True, compressor="none"):
    base = ARCHS[arch] * speed
    values = [base * f for f in rounds]
    metrics = {"input_tokens": tokens, "vision_tokens": frames * 16, "tokens_after_compression": tokens,
               "peak_mem_bytes": peak, "prefill_tok_s": sorted(values)[len(values) // 2],
               "prefill_s": tokens / base, "spread": {"prefill_tok_s": {"values": values}}}
    return {"schema": 1, "status": status, "error": None if status == "ok" else "boom", "interleaved": interleaved,
            "spec": {"arch": arch, "preset": "tiny", "compressor": compressor, "frames": frames, "device": "cpu",
                     "warmup": 1, "repeats": 3},
            "metrics": metrics if status == "ok" else {}, "task": {"name": "synthetic", "metrics": {}, "n": 0}}


def run(speed=1.0, slow=None, factor=1.0, rounds=(1.0, 1.0, 1.0)):
    out = []
    for arch in ARCHS:
        s = speed * (factor if arch == slow else 1.0)
        out += [record(arch, f, speed=s, rounds=rounds) for f in (16, 64)]
    return out


def verdicts(rows, metric_prefix="prefill_tok_s"):
    return {(r.cell, r.metric): r.verdict for r in rows if r.metric.startswith(metric_prefix)}


def test_unchanged_run_passes():
    rows = compare(run(), run(), reference={"arch": "transformer"})
    assert not [r for r in rows if r.verdict == "REGRESSION"]


def test_a_uniformly_slower_machine_passes_with_a_reference():
    slower = run(speed=0.5)  # the whole machine at half speed
    rows = compare(slower, run(), reference={"arch": "transformer"})
    assert not [r for r in rows if r.verdict == "REGRESSION"]
    # without an in-run reference the same data looks like a regression everywhere
    assert [r for r in compare(slower, run()) if r.verdict == "REGRESSION"]


def test_a_slowed_backbone_fails_even_on_a_faster_machine():
    new = run(speed=1.3, slow="hybrid", factor=0.6)
    rows = compare(new, run(), reference={"arch": "transformer"})
    bad = {r.cell for r in rows if r.verdict == "REGRESSION"}
    assert bad == {"arch=hybrid frames=16", "arch=hybrid frames=64"}


def test_per_round_ratios_cancel_a_slow_phase():
    # round 2 ran while the machine was busy: every cell of that round is 3x slower
    busy = run(rounds=(1.0, 1 / 3, 1.0))
    for r in busy:
        if r["spec"]["arch"] == "transformer":
            continue
        ref = next(x for x in busy if x["spec"]["arch"] == "transformer" and x["spec"]["frames"] == r["spec"]["frames"])
        assert relative_timing(r, ref, "prefill_tok_s") == pytest.approx(ARCHS[r["spec"]["arch"]] / 1000)


def test_status_counts_and_missing_cells():
    base = run()
    new = copy.deepcopy(base)
    new[0]["metrics"]["tokens_after_compression"] = 1000  # transformer frames=16
    new[3] = record("mamba", 64, status="oom")
    del new[5]  # hybrid frames=64 missing
    new.append(record("hybrid", 256))  # a new cell
    rows = compare(new, base, reference={"arch": "transformer"})
    by = {(r.cell, r.metric): r.verdict for r in rows}
    assert by[("arch=transformer frames=16", "tokens_after_compression")] == "REGRESSION"
    assert by[("arch=mamba frames=64", "status")] == "REGRESSION"
    assert by[("arch=hybrid frames=64", "cell")] == "REGRESSION"
    assert by[("arch=hybrid frames=256", "cell")] == "info"


def test_memory_is_gated_tightly_unless_interleaved_on_cpu():
    base = [record("transformer", interleaved=False)]
    new = [record("transformer", peak=110 * 2**20, interleaved=False)]
    rows = compare(new, base, memory_tolerance=0.05)
    assert [r.verdict for r in rows if r.metric == "peak_mem_bytes"] == ["REGRESSION"]
    rows = compare([record("transformer", peak=110 * 2**20)], [record("transformer")], memory_tolerance=0.05)
    assert [r.verdict for r in rows if r.metric == "peak_mem_bytes"] == ["info"]


def test_cli_exit_codes(tmp_path, capsys):
    def write(name, records):
        path = tmp_path / name
        path.write_text("".join(json.dumps(r) + "\n" for r in records))
        return str(path)

    base = write("base.jsonl", run())
    same = write("same.jsonl", run(speed=0.7))
    slow = write("slow.jsonl", run(slow="mamba", factor=0.5))
    assert main(["compare", same, "--baseline", base, "--reference", "arch=transformer"]) == 0
    assert "no regressions" in capsys.readouterr().out
    assert main(["compare", slow, "--baseline", base, "--reference", "arch=transformer", "--only-regressions"]) == 1
    out = capsys.readouterr()
    assert "arch=mamba" in out.out and "REGRESSION" in out.out and "regression(s)" in out.err
    assert main(["compare", same, "--baseline", base, "--tolerance", "lots"]) == 2
    assert main(["compare", str(tmp_path / "nope.jsonl"), "--baseline", base]) == 2


def test_parsers():
    assert percent("10%") == pytest.approx(0.1) and percent("0.25") == 0.25
    assert parse_reference("arch=transformer,frames=64") == {"arch": "transformer", "frames": "64"}
    with pytest.raises(UserError):
        parse_reference("arch")


# --- paper tables -----------------------------------------------------------------------------

def test_efficiency_table_latex_has_groups_bold_and_deltas():
    records = run()
    text = paper_tables.render(records, "efficiency", fmt="latex", reference={"arch": "transformer"})
    assert "\\multicolumn{3}{c}{16 frames}" in text and "\\cmidrule(lr){2-4}" in text
    assert "\\toprule" in text and "\\bottomrule" in text
    assert "\\textbf{1000.0}" in text  # fastest prefill
    assert "{\\scriptsize(-60.0\\%)}" in text  # mamba vs transformer
    md = paper_tables.render(records, "efficiency", reference={"arch": "transformer"})
    assert "**1000.0**" in md and "(-20.0%)" in md  # hybrid vs transformer


def test_table1_rows_and_reference():
    task = {"videomme": 58.8, "charades": 40.5}
    records = []
    for comp, drop in (("none", 0.0), ("uniform:layer=2,p=0.5", 2.1)):
        for name, score in task.items():
            r = record("hybrid", compressor=comp)
            key = "accuracy" if name == "videomme" else "miou"
            r["task"] = {"name": name, "metrics": {key: score - drop}, "n": 10}
            records.append(r)
        mf = record("hybrid", compressor=comp)
        mf.update(kind="maxframes")
        mf["metrics"] = {"max_frames": 5000 if comp == "none" else 8000}
        records.append(mf)
    text = paper_tables.render(records, "table1", reference={"compressor": "none"})
    assert "Video-MME acc (%)" in text and "Charades mIoU" in text and "max frames" in text
    assert "**8000** (+60.0%)" in text and "**58.8**" in text
    with pytest.raises(UserError, match="matches 0 rows"):
        paper_tables.render(records, "table1", reference={"compressor": "td"})
    with pytest.raises(UserError, match="unknown table preset"):
        paper_tables.render(records, "table9")


def _eval_record(compressor: str, accuracy: float, kl: float = 0.1) -> dict:
    return {"status": "ok", "spec": {"arch": "hybrid", "task": "vniah", "compressor": compressor},
            "metrics": {}, "task": {"name": "vniah", "metrics": {"accuracy": accuracy, "accuracy/cell/4/0": 0.0,
                                                                 "fidelity/kl_first_token": kl, "n": 30}}}


def test_task_metrics_are_gated_in_absolute_points():
    from bench.reporting.compare import compare

    base = [_eval_record("none", 80.0), _eval_record("td:schedule=uni_2_0.9", 40.0)]
    new = [_eval_record("none", 79.0), _eval_record("td:schedule=uni_2_0.9", 30.0)]
    rows = compare(new, base, accuracy_tolerance=2.0)
    verdicts = {(r.cell, r.metric.split(" (")[0]): r.verdict for r in rows}
    assert verdicts[("compressor=none", "task accuracy")] == "ok"  # 1 point lower: within 2
    assert verdicts[("compressor=td:schedule=uni_2_0.9", "task accuracy")] == "REGRESSION"
    assert [r.metric for r in rows if r.metric.startswith("task")] == ["task accuracy (±2 pts)"] * 2
    worse_kl = compare([_eval_record("none", 80.0, kl=3.0)], [_eval_record("none", 80.0, kl=0.1)])
    assert [r.verdict for r in worse_kl if "kl" in r.metric] == []  # per-split and fidelity keys are not gated
    assert all(r.verdict == "ok" for r in compare(base, base))


def test_accuracy_tolerance_flag(tmp_path, capsys):
    from bench.cli import main
    from bench.records import append_record

    base, new = tmp_path / "base.jsonl", tmp_path / "new.jsonl"
    append_record(base, _eval_record("none", 80.0))
    append_record(new, _eval_record("none", 74.0))
    assert main(["compare", str(new), "--baseline", str(base), "--accuracy-tolerance", "10"]) == 0
    assert main(["compare", str(new), "--baseline", str(base), "--accuracy-tolerance", "5"]) == 1
    assert main(["compare", str(new), "--baseline", str(base), "--accuracy-tolerance", "-1"]) == 2
    capsys.readouterr()


def on(records, name):
    for r in records:
        r["env"] = {"device_name": name}
    return records


def test_baselines_are_kept_per_machine():
    # on this machine the hybrid is relatively slower than on the one the first baseline came from
    amd = on(run(), "AMD EPYC (2 cpus, 1 threads)")
    intel = on(run(slow="hybrid", factor=0.6), "Xeon (2 cpus, 1 threads)")
    new = on(run(speed=0.9, slow="hybrid", factor=0.6), "Xeon (2 cpus, 1 threads)")
    # against the other machine's records alone: timings shown, not gated; counts still gated
    rows = compare(new, amd, reference={"arch": "transformer"})
    timing = [r for r in rows if r.metric.startswith("prefill_tok_s") and not r.cell.startswith("arch=transformer")]
    assert timing and all(r.verdict == "info" and r.note == OTHER_MACHINE for r in timing)
    new[0]["metrics"]["tokens_after_compression"] = 1
    assert [r.metric for r in compare(new, amd) if r.verdict == "REGRESSION"] == ["tokens_after_compression"]
    new[0]["metrics"]["tokens_after_compression"] = 1089
    # both machines' records in one file, in either order: compared with this machine's, and gated
    for both in (amd + intel, intel + amd):
        rows = compare(new, both, reference={"arch": "transformer"})
        assert not [r for r in rows if r.verdict == "REGRESSION" or r.note]
        slower = on(run(speed=0.9, slow="hybrid", factor=0.4), "Xeon (2 cpus, 1 threads)")
        bad = {r.cell for r in compare(slower, both, reference={"arch": "transformer"}) if r.verdict == "REGRESSION"}
        assert bad == {"arch=hybrid frames=16", "arch=hybrid frames=64"}
    # records that name no machine match any
    assert not [r for r in compare(new, run(slow="hybrid", factor=0.6), reference={"arch": "transformer"}) if r.note]


def test_cli_says_when_timings_were_not_gated(tmp_path, capsys):
    base, new = tmp_path / "base.jsonl", tmp_path / "new.jsonl"
    base.write_text("".join(json.dumps(r) + "\n" for r in on(run(), "machine A")))
    new.write_text("".join(json.dumps(r) + "\n" for r in on(run(slow="mamba", factor=0.5), "machine B")))
    assert main(["compare", str(new), "--baseline", str(base), "--reference", "arch=transformer"]) == 0
    err = capsys.readouterr().err
    assert "timings not gated" in err and "machine B" in err
