"""Reading records (bench.reporting.values) and the one LaTeX writer (bench.reporting.latex)."""

from __future__ import annotations

import pytest

from bench import metrics as catalogue
from bench.errors import UserError
from bench.reporting import latex
from bench.reporting.values import best, field, hashable, is_number, varying


def test_hashable_is_one_key_for_equal_values_in_any_key_order():
    assert hashable({"a": 1, "b": [1, 2]}) == hashable({"b": [1, 2], "a": 1})
    assert hashable({"a": 1}) != hashable({"a": 2})
    assert hashable([1, 2]) != hashable([2, 1])
    assert hashable(3) == 3 and hashable(None) is None and hashable("x") == "x"
    assert len({hashable(v) for v in ({"x": {"y": 1, "z": 2}}, {"x": {"z": 2, "y": 1}})}) == 1


def test_is_number():
    assert is_number(1) and is_number(2.5)
    assert not any(is_number(v) for v in (True, None, "1", float("nan"), float("inf")))


def test_varying_keeps_the_order_given_and_compares_values_not_text():
    records = [{"spec": {"a": 1, "b": {"k": 1, "j": 2}, "c": "x"}},
               {"spec": {"a": 2, "b": {"j": 2, "k": 1}, "c": "x"}},
               {"spec": {"a": 1, "b": {"k": 1, "j": 2}, "c": None}}]
    assert varying(records, ["c", "b", "a"]) == ["c", "a"]
    assert varying([{"spec": {"n": 1}}, {"spec": {"n": "1"}}], ["n"]) == ["n"]  # 1 and "1" differ
    assert varying(records, ["a"], lambda r, k: 0) == []


def test_field_finds_catalogue_metrics_where_the_record_holds_them():
    record = {"spec": {"frames": 8}, "metrics": {"cost": {"utilisation": {"prefill_flops_util": 0.25}},
                                                 "work": {"prefill": {"ops": 7}}}}
    assert field(record, "cost.prefill_flops_util") == 0.25
    assert field(record, "work.prefill.ops") == 7
    assert field(record, "frames") == 8 and field(record, "nothing") is None


def test_best():
    assert best([1.0, "OOM", 3.0, None], True) == 3.0
    assert best([1.0, 3.0], False) == 1.0
    assert best([1.0, 3.0], None) is None and best(["OOM"], True) is None


def test_catalogue_entries():
    kv = catalogue.metric("cost.kv_cache_bytes")
    assert (kv.label, kv.shown(3 * catalogue.MIB), kv.higher, kv.gate) == ("KV cache (MiB)", 3.0, False, "none")
    assert catalogue.metric("prefill_tok_s").gate == catalogue.TIMING
    assert catalogue.metric("task.mIoU").label == "mIoU" and catalogue.metric("task.mIoU").higher is True
    assert catalogue.shown("frames", 64) == 64 and catalogue.shown("input_tokens", 7) == 7
    assert isinstance(catalogue.shown("input_tokens", 7), int)  # unscaled counts stay ints (CSV "7", not "7.0")
    with pytest.raises(UserError, match="unknown metric 'nope'"):
        catalogue.metric("nope")


def test_latex_tabular_with_groups():
    text = latex.tabular(["arch", "a", "b", "c"], [["x", "1", "2", "3"]], 1, [("g", 2), ("h", 1)])
    assert text.splitlines() == [
        "\\begin{tabular}{lrrr}", "\\toprule",
        " & \\multicolumn{2}{c}{g} & \\multicolumn{1}{c}{h} \\\\", "\\cmidrule(lr){2-3} \\cmidrule(lr){4-4}",
        "arch & a & b & c \\\\", "\\midrule", "x & 1 & 2 & 3 \\\\", "\\bottomrule", "\\end{tabular}"]
    assert "multicolumn" not in latex.tabular(["a", "b"], [], 1, [("", 1)])
    assert latex.escape("[a_b]") == "{}[a\\_b]" and latex.escape("—") == "---"


def test_task_divergences_are_better_lower():
    assert catalogue.metric("task.kl_first_token").higher is False
    assert catalogue.metric("task.miou").higher is True
