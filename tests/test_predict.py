"""Memory predictions on fake tensors against real CPU allocations, closed forms of the caches, the command."""

from __future__ import annotations

import bisect
import functools
import itertools
import json

import pytest
import torch
from torch._C import DispatchKey
from torch.profiler import ProfilerActivity, profile

from architectures import ARCHITECTURES
from bench.measure import runner
from bench.cli import main
from bench.measure.cost import cache_bytes, kv_bytes_per_token, state_bytes_per_sequence
from bench.predict.fake_pass import predict_pass
from bench.spec import make_spec
from tasks.synthetic import Synthetic

# Stated tolerance of a predicted peak against the measured one (in practice they agree to the byte).
TOLERANCE = 0.01


class _NoMeter:
    def sample(self):
        pass


@functools.cache
def _is_kernel(name: str) -> bool:
    if not name.startswith("aten::"):
        return False
    packet = getattr(torch.ops.aten, name.removeprefix("aten::"), None)
    if packet is None:
        return False
    composite = False
    for overload in packet.overloads():
        try:
            composite |= getattr(packet, overload).has_kernel_for_dispatch_key(DispatchKey.CompositeImplicitAutograd)
        except RuntimeError:  # an overload TorchScript knows and the dispatcher does not
            pass
    return not composite


def measured_peak_bytes(spec) -> int:
    """Peak bytes torch's CPU allocator holds during one real pass: the model and request, plus the peak of the
    allocator's own allocation/free events (torch profiler, profile_memory) during the pass, less what a kernel
    allocates and frees inside itself."""
    model = runner.build_model(spec)
    request = Synthetic(seed=spec.seed).request(batch=spec.batch, frames=spec.frames,
                                                prompt_tokens=spec.prompt_tokens,
                                                vocab_size=model.backbone.config.vocab_size, device="cpu",
                                                dtype=model.backbone.dtype,
                                                image_size=model.backbone.frame_size if model.backbone.takes_frames
                                                else model.vision.image_size if model.vision else None)
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        runner.one_pass(spec, model, request)
    events = list(prof.profiler.kineto_results.events())
    memory = sorted((e.start_ns(), e.nbytes()) for e in events if e.name() == "[memory]")
    times = [t for t, _ in memory]
    live = list(itertools.accumulate(n for _, n in memory))
    counted = list(live)
    # Inside a kernel (an aten op that is not a composite of other ops) only what outlives it counts: what a
    # kernel allocates and frees before it returns (the CPU flash-attention kernel's per-thread scratch, oneDNN's
    # bf16 buffers), sized by the thread count and the CPU's ISA, never reaches the dispatcher the fake pass
    # runs at, and no GPU kernel allocates it.
    for e in events:
        if _is_kernel(e.name()):
            first = bisect.bisect_left(times, e.start_ns())
            last = bisect.bisect_right(times, e.start_ns() + e.duration_ns())
            for i in range(first, last):
                counted[i] = min(counted[i], live[last - 1])
    peak = max([0, *counted])
    inputs = [t for t in (request.prompt_ids, request.frames) if t is not None]
    resident = runner.model_bytes(model) + sum(t.numel() * t.element_size() for t in inputs)
    return resident + peak


CASES = [
    dict(arch="transformer", preset="tiny", frames=48, compressor="none"),
    dict(arch="transformer", preset="small", frames=48, compressor="attention:layer=2,p=0.5", prefill_chunk=384),
    dict(arch="mamba", preset="tiny", frames=48, compressor="uniform:layer=2,p=0.5", prefill_chunk=384),
    dict(arch="mamba", preset="small", frames=32, compressor="none"),
    dict(arch="hybrid", preset="tiny", frames=48, compressor="transv:schedule=uni_2_0.5-attn_10_0.9",
         prefill_chunk=384),
    dict(arch="hybrid", preset="small", frames=32, compressor="td:schedule=uni_2_0.5-attn_10_0.9"),
    dict(arch="hybrid", preset="tiny", frames=32, compressor="none", batch=2),
    # --logits all: the LM head on every position (the head's dtype, or a float32 upcast of bf16)
    dict(arch="transformer", preset="tiny", frames=48, compressor="none", logits="all"),
    dict(arch="hybrid", preset="tiny", frames=48, compressor="none", logits="all", logits_dtype="float32",
         dtype="bfloat16", prefill_chunk=384),
    dict(arch="mamba", preset="tiny", frames=32, compressor="none", logits="all", logits_dtype="float32"),
    # --vision siglip: the SigLIP tower, ToMe and the projector, one frame batch at a time, and the frames
    dict(arch="hybrid", preset="tiny", frames=20, compressor="none", vision="siglip", frame_batch=8),
    dict(arch="transformer", preset="tiny", frames=12, compressor="uniform:layer=2,p=0.5", vision="siglip",
         dtype="bfloat16"),
    # the real video LLMs: their own processor, tower and projector (DeepStack, RADIO, SigLIP), then the LLM
    dict(arch="qwen3_vl", preset="tiny", frames=8, compressor="none"),
    dict(arch="qwen3_vl", preset="tiny", frames=16, compressor="none", logits="all", dtype="bfloat16",
         prefill_chunk=64),
    dict(arch="qwen3_vl_moe", preset="tiny", frames=8, compressor="td:schedule=uni_1_0.5"),
    dict(arch="llava_onevision", preset="tiny", frames=8, compressor="uniform:layer=1,p=0.5"),
    dict(arch="nemotron_h_omni", preset="tiny", frames=16, compressor="attention:layer=1,p=0.5", prefill_chunk=64),
    # --frame-batch on a family: its own tower a few frames at a time
    dict(arch="qwen3_vl", preset="tiny", frames=16, compressor="none", frame_batch=4),
    dict(arch="llava_onevision", preset="tiny", frames=12, compressor="none", frame_batch=5, dtype="bfloat16"),
]


@pytest.mark.slow
@pytest.mark.parametrize("case", CASES, ids=lambda c: "-".join(str(v) for v in c.values()))
def test_predicted_peak_equals_measured_cpu_allocations(case):
    spec = make_spec({**case, "new_tokens": 5, "warmup": 0, "repeats": 1})
    predicted = predict_pass(spec, target="cpu")
    measured = measured_peak_bytes(spec)
    assert abs(predicted["peak_bytes"] - measured) <= TOLERANCE * measured, (predicted["peak_bytes"], measured)
    parts = predicted["parts"]
    assert sum(parts.values()) == predicted["peak_bytes"] and min(parts.values()) >= 0
    backbone = runner.build_model(spec).backbone
    model = backbone.model
    weights = parts["weights_bytes"] + (parts["vision_weights_bytes"] if backbone.takes_frames else 0)
    assert weights == sum(t.numel() * t.element_size() for t in (*model.parameters(), *model.buffers()))
    if backbone.takes_frames:  # the family's tower and projector are its vision side
        assert parts["vision_weights_bytes"] == sum(p.numel() * p.element_size() for m in backbone.vision_modules()
                                                    for p in (*m.parameters(), *m.buffers()))


def test_kv_bytes_per_token_of_paper_presets_equal_the_closed_form():
    transformer = ARCHITECTURES.get("transformer").skeleton("paper")
    hybrid = ARCHITECTURES.get("hybrid").skeleton("paper")
    assert kv_bytes_per_token(transformer, 2) == 36 * 2 * 8 * 128 * 2  # bf16 Qwen3-8B
    assert kv_bytes_per_token(hybrid, 2) == 4 * 2 * 8 * 128 * 2  # Nemotron-Nano-9B-v2: 4 attention blocks
    assert kv_bytes_per_token(ARCHITECTURES.get("mamba").skeleton("paper"), 2) == 0


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["transformer", "hybrid", "mamba"])
def test_paper_caches_the_library_allocates_equal_the_closed_forms(arch):
    """The caches transformers allocates in a (fake) full-size bf16 GPU prefill, against the closed forms."""
    spec = make_spec(dict(arch=arch, preset="paper", frames=4, device="cuda", new_tokens=1))
    result = predict_pass(spec, target="gpu")
    bb = ARCHITECTURES.get(arch).skeleton("paper")
    assert result["end_of_prefill"]["kv_cache_bytes"] == kv_bytes_per_token(bb, 2) * result["input_tokens"]
    state = state_bytes_per_sequence(bb, 2)
    assert result["end_of_prefill"]["ssm_state_bytes"] == state["ssm_state_bytes"]
    assert result["end_of_prefill"]["conv_state_bytes"] == state["conv_state_bytes"]
    if arch == "hybrid":  # 27 Mamba-2 blocks: 128 heads x 80 x state 128, float32; conv 4 x (10240 + 2 x 8 x 128)
        assert state["ssm_state_bytes"] == 27 * 128 * 80 * 128 * 4
        assert state["conv_state_bytes"] == 27 * (10240 + 2 * 8 * 128) * 4 * 2


@pytest.mark.parametrize("arch", ["mamba", "hybrid"])
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_state_bytes_equal_the_cache_a_real_prefill_allocates(arch, dtype):
    from bench.engine.pipeline import prefill

    bb = ARCHITECTURES.get(arch).build("tiny", dtype=getattr(torch, dtype))
    embeds = torch.randn(2, 40, bb.hidden_size, dtype=bb.dtype)
    _, seq = prefill(bb, embeds)
    got = cache_bytes(seq.cache)
    closed = state_bytes_per_sequence(bb, bb.dtype.itemsize)
    assert got["ssm_state_bytes"] == 2 * closed["ssm_state_bytes"]
    assert got["conv_state_bytes"] == 2 * closed["conv_state_bytes"]
    assert got["kv_cache_bytes"] == 2 * 40 * kv_bytes_per_token(bb, bb.dtype.itemsize)


@pytest.mark.slow
def test_gpu_path_predicts_less_than_the_reference_mamba_code():
    spec = make_spec(dict(arch="hybrid", preset="small", frames=256, device="cuda", new_tokens=2))
    kernels = predict_pass(spec, target="gpu", mamba="mamba-ssm", autotune=False)
    reference = predict_pass(spec, target="gpu", mamba="torch")
    assert kernels["parts"]["weights_bytes"] == reference["parts"]["weights_bytes"]
    assert kernels["peak_bytes"] < reference["peak_bytes"]


@pytest.mark.slow
def test_closed_forms_equal_mamba_ssm_wrappers(monkeypatch):
    import bench.predict.gpu_kernels as gk

    if gk._mamba_ssm()[0] is None:
        pytest.skip("mamba-ssm's wrappers are not importable here")
    spec = make_spec(dict(arch="mamba", preset="small", frames=100, device="cuda", new_tokens=1))
    counted = predict_pass(spec, target="gpu", autotune=False)
    tuned = predict_pass(spec, target="gpu")
    monkeypatch.setattr(gk, "_mamba_ssm", lambda: (None, "closed form"))
    closed = predict_pass(spec, target="gpu", autotune=False)
    assert counted["stages"]["prefill_peak_bytes"] == closed["stages"]["prefill_peak_bytes"]
    # the autotuner's 256 MiB buffer, alive at the first call of each autotuned kernel, dominates a small model
    extra = tuned["stages"]["prefill_peak_bytes"] - counted["stages"]["prefill_peak_bytes"]
    assert 0 < extra <= gk.AUTOTUNE_BUFFER_BYTES


def test_predict_command_prints_predicted_numbers_and_records(tmp_path, capsys):
    out = tmp_path / "p.jsonl"
    code = main(["predict", "--arch", "hybrid", "--preset", "tiny", "--frames", "64", "--gpu", "rtx-4090",
                 "--gpu-memory", "1600MiB", "--new-tokens", "2", "--output", str(out)])
    text = capsys.readouterr().out
    assert code == 0
    assert "predicted peak allocated" in text and "predicted max frames" in text
    record = json.loads(out.read_text())
    m = record["metrics"]
    assert record["kind"] == "prediction" and m["predicted"] is True
    assert m["gpu"]["memory_bytes"] == 1600 * 2**20 and m["gpu"]["bandwidth_bytes_s"] == 1.008e12
    assert m["fits"] == (m["predicted_peak_mem_bytes"] <= m["budget_bytes"])
    mf = m["max_frames"]
    assert mf["predicted_first_oom_frames"] == mf["predicted_max_frames"] + 1 or \
        mf["predicted_first_oom_frames"] - mf["predicted_max_frames"] <= mf["predicted_max_frames"] / 32
    for probe in mf["probes"]:
        assert (probe["predicted_status"] == "ok") == (probe["frames"] <= mf["predicted_max_frames"])
    assert m["predicted_roofline"]["prefill_s_lower_bound"] > 0


@pytest.mark.parametrize("argv, message", [
    (["--gpu", "nope"], "unknown GPU"),
    (["--gpu-memory", "lots"], "--gpu-memory"),
    (["--gpu", ""], "unknown GPU"),
    (["--device", "cpu"], "needs --memory-budget"),
    (["--mamba-kernels", "fast"], "unknown --mamba-kernels"),
    (["--gpu", "custom"], "--gpu custom needs"),
    (["--logits", "some"], "unknown --logits"),
    (["--vision", "siglip", "--frame-batch", "0"], "--frame-batch"),
    (["--frame-batch", "4"], "needs --vision siglip"),
    (["--logits-dtype", "float32"], "needs --logits all"),
    (["--logits", "all", "--logits-dtype", "fp8"], "unknown --logits-dtype"),
    (["--arch", "qwen3_vl", "--vision", "siglip"], "runs its own tower"),
    (["--arch", "qwen3_vl", "--frame-batch", "0"], "--frame-batch"),
    (["--arch", "qwen3_vl", "--frame-batch", "nan"], "--frame-batch"),
])
def test_predict_bad_input_is_one_line_exit_2(argv, message, capsys):
    code = main(["predict", "--arch", "hybrid", "--preset", "tiny", "--no-max-frames", *argv])
    err = capsys.readouterr().err
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1


def test_cpu_prediction_against_a_budget(capsys):
    code = main(["predict", "--arch", "transformer", "--preset", "tiny", "--device", "cpu", "--frames", "16",
                 "--memory-budget", "16MiB", "--new-tokens", "2", "--json"])
    record = json.loads(capsys.readouterr().out)
    assert code == 0 and record["spec"]["device"] == "cpu"
    assert record["metrics"]["budget_bytes"] == 16 * 2**20 and "gpu" not in record["metrics"]


def test_coarse_estimate_and_calibration_on_a_linear_peak():
    """maxframes --predict-first starts from four predictions (two line fits), then rescales the line by a
    real probe's measured over predicted peak."""
    from bench.predict.capacity import Predictor

    class Linear(Predictor):
        def __call__(self, frames):
            return self.results.setdefault(frames, {"peak_bytes": 5_000_000 + 20_000 * frames})

    p = Linear(None, target="cpu", mamba="torch", budget=45_000_000)
    assert p.coarse_estimate(16) == 2000 and sorted(p.results) == [8, 16, 1000, 2000]
    assert Linear(None, target="cpu", mamba="torch", budget=45_000_000).coarse_estimate(16, limit=500) == 500
    # measured 1.25x the prediction at 1000 frames: the budget shrinks to 36 MB of predicted peak
    assert p.calibrate({"frames": 1000, "peak_mem_bytes": 31_250_000}) == 1550


def test_context_margin_zero_is_a_margin_and_the_header_names_the_overrides(capsys):
    code = main(["predict", "--arch", "hybrid", "--preset", "tiny", "--frames", "8", "--new-tokens", "2",
                 "--no-max-frames", "--context-margin", "0", "--gpu-memory", "4GiB", "--gpu-tflops", "100"])
    text = capsys.readouterr().out
    assert code == 0
    header = text.splitlines()[0]
    assert "4.00 GiB" in header and "memory, TFLOP/s as given, the rest spec sheet" in header
    assert "0.00 GiB CUDA context margin" in text
    assert main(["predict", "--arch", "hybrid", "--preset", "tiny", "--frames", "8", "--new-tokens", "2",
                 "--no-max-frames", "--json"]) == 0
    gpu = json.loads(capsys.readouterr().out)["metrics"]["gpu"]
    assert gpu["overridden"] == [] and gpu["memory_bytes"] == 81089 * 2**20  # what CUDA reports, not 80 GiB
    assert gpu["source"] == f"memory: {gpu['memory_source']}; the rest spec sheet"


def test_every_gpu_row_names_where_its_memory_comes_from():
    from bench.predict.gpus import GPUS

    for key, gpu in GPUS.items():
        assert gpu.memory_source == "spec sheet" or gpu.memory_source.startswith("CUDA-reported total"), key
        if gpu.memory_source != "spec sheet":  # below the marketed capacity, within 8%
            marketed = int(gpu.name.split()[-2 if gpu.name.endswith(("SXM", "PCIe")) else -1].rstrip("GB"))
            assert 0.92 * marketed * 10**9 < gpu.memory_bytes < marketed * 2**30, key


def test_logits_all_keeps_the_last_positions_logits_and_the_default_spec_key():
    from bench.engine.pipeline import prefill

    bb = ARCHITECTURES.get("hybrid").build("tiny")
    embeds = torch.randn(1, 40, bb.hidden_size)
    last, _ = prefill(bb, embeds)
    every, _ = prefill(bb, embeds, logits="all")
    torch.testing.assert_close(every, last)
    assert "logits" not in make_spec(dict(arch="hybrid")).to_dict()  # old records keep their key
    assert make_spec(dict(arch="hybrid", logits="all")).to_dict()["logits"] == "all"


def test_predict_a_real_family_through_its_own_processor_and_tower(capsys):
    assert main(["predict", "--arch", "qwen3_vl", "--preset", "tiny", "--frames", "8", "--no-max-frames"]) == 0
    out = capsys.readouterr().out
    assert "8 frames through its own processor and tower" in out and "vision side" in out and "predicted" in out


def test_predict_a_family_checkpoint(family_checkpoints, capsys):
    """A checkpoint written by the library's save_pretrained: its config and processor, its tower in the prediction."""
    path = str(family_checkpoints["llava_onevision"])
    assert main(["predict", "--arch", "llava_onevision", "--checkpoint", path, "--frames", "4", "--no-max-frames",
                 "--json"]) == 0
    record = json.loads(capsys.readouterr().out)
    parts = record["metrics"]["predicted_parts"]
    assert record["spec"]["checkpoint"] == path and parts["vision_weights_bytes"] > 0 and parts["frames_bytes"] > 0


def test_a_gpu_prediction_keeps_the_family_processor_on_the_host():
    """On a GPU a family's processor runs in host memory: nothing it allocates is counted, its pixels come back
    on the meta device (the model's own .to(device) is the copy that counts) and its ids count as device copies."""
    from torch._subclasses.fake_tensor import FakeTensorMode
    from transformers import BatchFeature

    from bench.predict.fake_pass import LiveBytes, on_host

    def processor_inputs(text):
        scratch = torch.empty(1000, 1000)  # the processor's own temporaries
        del scratch
        return BatchFeature({"pixel_values_videos": torch.empty(64, 1536),
                             "input_ids": torch.zeros(1, 10, dtype=torch.long)})

    tracker = LiveBytes()
    with FakeTensorMode(), tracker:
        out = on_host(processor_inputs, tracker)("hi")
        assert out["pixel_values_videos"].device.type == "meta" and tracker.peak == 80 == tracker.live
        on_device = out["pixel_values_videos"].to("cpu", torch.bfloat16)
        assert tracker.live == 80 + 64 * 1536 * 2 and on_device.dtype == torch.bfloat16
