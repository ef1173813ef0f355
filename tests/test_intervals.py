"""95% intervals: in every record's spread, in `table --ci`, and in the gate's decisions."""

from __future__ import annotations

import json

import pytest

from bench.cli import main
from bench.reporting.compare import compare, render_rows
from bench.stats import median_ci, paired_ratio_ci, ratio_ci
from tests.test_compare import record


def test_median_interval_holds_the_median_and_is_deterministic():
    values = [10.0, 11.0, 9.5, 10.4, 10.2, 9.8, 10.6, 10.1, 30.0]
    low, high = median_ci(values)
    assert low <= 10.2 <= high and high < 30.0  # the median's interval is not dragged to the outlier
    assert median_ci(values) == (low, high)
    assert median_ci([5.0]) == (5.0, 5.0) and median_ci([2.0, 2.0]) == (2.0, 2.0)


def test_ratio_interval_brackets_the_ratio_of_medians():
    point, low, high = ratio_ci([9.0, 9.5, 8.8, 9.1], [10.0, 10.2, 9.9, 10.1])
    assert point == pytest.approx(9.05 / 10.05) and low <= point <= high < 1


def test_paired_interval_is_a_t_interval_on_logs():
    point, low, high = paired_ratio_ci([0.9, 0.9, 0.9])
    assert point == pytest.approx(0.9) and low == pytest.approx(0.9) and high == pytest.approx(0.9)
    point, low, high = paired_ratio_ci([0.85, 0.95, 0.9, 0.88])
    assert low < point < high < 1


def test_every_timing_of_a_record_has_its_interval(tmp_path):
    out = tmp_path / "r.jsonl"
    assert main(["run", "--arch", "transformer", "--preset", "tiny", "--frames", "2", "--prompt-tokens", "4",
                 "--new-tokens", "2", "--warmup", "0", "--repeats", "4", "--output", str(out)]) == 0
    metrics = json.loads(out.read_text())["metrics"]
    for key, spread in metrics["spread"].items():
        low, high = spread["ci95"]
        eps = 1e-9 * abs(metrics[key])  # numpy's and statistics' medians may differ in the last bit
        assert spread["min"] - eps <= low <= metrics[key] + eps and metrics[key] - eps <= high <= spread["max"] + eps, \
            (key, spread, metrics[key])


def test_table_shows_value_and_half_width(tmp_path, capsys):
    r = record("transformer", rounds=(0.9, 1.0, 1.1, 1.0))
    low, high = median_ci(r["metrics"]["spread"]["prefill_tok_s"]["values"])
    r["metrics"]["spread"]["prefill_tok_s"]["ci95"] = [low, high]
    path = tmp_path / "r.jsonl"
    path.write_text(json.dumps(r) + "\n")
    assert main(["table", str(path), "--ci"]) == 0
    assert f"1000.0 ± {(high - low) / 2:.1f}" in capsys.readouterr().out
    assert main(["table", str(path), "--ci", "--format", "latex"]) == 0
    assert "$\\pm$" in capsys.readouterr().out


def test_a_slowdown_the_repeats_cannot_tell_from_noise_does_not_fail():
    noisy = [record("hybrid", rounds=(0.5, 1.4, 0.9))]  # median 0.9x, but the rounds span 0.5x to 1.4x
    rows = compare(noisy, [record("hybrid", rounds=(1.0, 1.0, 1.0))], tolerance=0.05)
    row = next(r for r in rows if r.metric == "prefill_tok_s")
    assert row.ratio == pytest.approx(0.9) and row.ci[0] < 1 < row.ci[1] and row.verdict == "ok"


def test_a_consistent_slowdown_fails_with_its_interval_printed():
    slow = [record("hybrid", rounds=(0.88, 0.9, 0.91))]
    rows = compare(slow, [record("hybrid", rounds=(0.99, 1.0, 1.01))], tolerance=0.05)
    row = next(r for r in rows if r.metric == "prefill_tok_s")
    assert row.verdict == "REGRESSION" and row.ci[1] < 1
    assert f"{row.ratio:.3f} [{row.ci[0]:.3f}, {row.ci[1]:.3f}]" in render_rows(rows)
