"""metrics.cost in every record, analytic FLOPs, cached device peaks, and the estimate-first max-frames search."""

from __future__ import annotations

import json

import pytest

import bench.measure.cost as cost
from architectures import ARCHITECTURES
from bench.measure.maxframes import search
from bench.measure.runner import run_cell
from bench.spec import make_spec


@pytest.fixture
def peaks_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("VIPERBENCH_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(cost, "_probe", lambda device, dtype: {"flops_s": 1e10, "bytes_s": 1e9, "source": "test"})
    return tmp_path


def test_every_record_has_cost(peaks_dir):
    spec = make_spec(dict(arch="hybrid", preset="tiny", frames=16, new_tokens=3, warmup=0, repeats=1))
    record = run_cell(spec)
    c = record["metrics"]["cost"]
    bb = ARCHITECTURES.get("hybrid").skeleton("tiny")
    tokens = record["metrics"]["input_tokens"]
    assert c["weights_bytes"] == sum(p.numel() * 4 for p in bb.model.parameters()) + \
        sum(b.numel() * b.element_size() for b in bb.model.buffers())
    assert c["kv_cache_bytes"] == tokens * cost.kv_bytes_per_token(bb, 4)
    assert c["ssm_state_bytes"] == cost.state_bytes_per_sequence(bb, 4)["ssm_state_bytes"]
    assert c["conv_state_bytes"] == cost.state_bytes_per_sequence(bb, 4)["conv_state_bytes"]
    assert set(c["prefill_flops_by_kind"]) == {"mamba", "mlp", "attention", "head"}
    assert c["prefill_flops"] == pytest.approx(sum(c["prefill_flops_by_kind"].values()))
    u = c["utilisation"]
    assert u["peak_flops_s"] == 1e10 and u["prefill_flops_util"] == pytest.approx(u["prefill_flops_s"] / 1e10)
    assert u["decode_bw_util"] == pytest.approx(c["decode_bytes"] / record["metrics"]["decode_s"] / 1e9)
    assert "cache" not in record["metrics"]
    assert json.loads((peaks_dir / "device_peaks.json").read_text())


def test_device_peaks_are_measured_once(peaks_dir, monkeypatch):
    first = cost.device_peaks("cpu", "float32", "test cpu")

    def fail(*_):
        raise AssertionError("probed twice")

    monkeypatch.setattr(cost, "_probe", fail)
    assert cost.device_peaks("cpu", "float32", "test cpu") == first


def test_flops_closed_form_transformer():
    bb = ARCHITECTURES.get("transformer").skeleton("tiny")
    n, cfg = 100, bb.config
    f = cost.flops(bb, [n] * bb.num_layers, batch=2, new_tokens=0)
    per_layer_weights = sum(p.numel() for name, p in bb.layers[0].named_parameters() if "norm" not in name)
    attn = 2 * 2 * n * per_layer_weights + 2 * 2 * cfg.num_attention_heads * cfg.head_dim * n * (n + 1)
    assert f["prefill_flops_by_kind"]["attention"] == pytest.approx(bb.num_layers * attn)
    assert f["prefill_flops_by_kind"]["head"] == 2 * 2 * cfg.hidden_size * cfg.vocab_size


def test_tokens_per_layer_follow_the_drop_stages():
    stages = [{"where": "layer", "layer": 2, "tokens_in": 100, "tokens_out": 50},
              {"where": "layer", "layer": 4, "tokens_in": 50, "tokens_out": 5}]
    assert cost.tokens_per_layer(6, 120, stages) == [120, 120, 70, 70, 25, 25]
    assert cost.llm_input_tokens(120, 100, [{"where": "projector", "tokens_out": 40}]) == 60


def _threshold_probe(threshold, seen):
    def probe(spec):
        seen.append(spec.frames)
        ok = spec.frames <= threshold
        return {"frames": spec.frames, "status": "ok" if ok else "oom", "peak_mem_bytes": spec.frames,
                "prefill_s": None, "error": None}

    return probe


@pytest.mark.parametrize("estimate, most", [(1000, 2), (1010, 2), (900, 8), (1300, 10)])
def test_estimate_first_search_confirms_with_few_probes(estimate, most):
    spec = make_spec(dict(arch="hybrid", preset="tiny", frames=16))
    seen: list[int] = []
    m = search(spec, probe=_threshold_probe(1010, seen), estimate=estimate, precision=1 / 32, env={})["metrics"]
    plain: list[int] = []
    p = search(spec, probe=_threshold_probe(1010, plain), start=16, precision=1 / 32, env={})["metrics"]
    assert m["max_frames"] <= 1010 < m["first_oom_frames"]
    assert m["first_oom_frames"] - m["max_frames"] <= max(1, m["max_frames"] // 32)
    assert len(seen) <= most < len(plain)
    assert p["max_frames"] <= 1010 < p["first_oom_frames"]


def test_calibrated_search_rescales_the_estimate():
    spec = make_spec(dict(arch="hybrid", preset="tiny", frames=16))
    seen: list[int] = []
    # the prediction says 1300; the calibration probe at 650 shows real peaks run 30% above predicted ones
    m = search(spec, probe=_threshold_probe(1010, seen), estimate=1300, precision=1 / 32, env={},
               calibrate=lambda probe: 1010)["metrics"]
    assert seen[:2] == [650, 1010] and len(seen) == 3
    assert m["max_frames"] <= 1010 < m["first_oom_frames"]
