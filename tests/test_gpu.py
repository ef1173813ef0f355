"""The CUDA code paths on a real device: ``pytest -m gpu`` (scripts/gpu-check runs it first).

Each test is the CUDA counterpart of a CPU proxy elsewhere in the suite:

- flash SDPA through the harness's layer loop (and, for chunks, the memory-efficient kernel) equals the
  math backend (tests/test_attention.py);
- mamba-ssm's Triton kernels equal the torch path in fp32 and bf16, for pure Mamba-2, the hybrid
  and Nemotron-Omni's Mamba layers (tests/test_kernels.py, under the interpreter);
- NVML's sampled peak and energy are plausible beside torch's counters (tests/test_gpu_path.py);
- a decode step never synchronises with the host (tests/test_gpu_path.py, the dispatch watch);
- the fake pass's GPU prediction is within 5% of torch.cuda.max_memory_allocated (tests/test_predict.py).

Without CUDA every test is skipped.
"""

from __future__ import annotations

import pytest
import torch

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]

DEVICE = "cuda"
MAMBA_FAMILIES = ["mamba", "hybrid", "nemotron_h_omni"]
# share of the reference's largest |logit|: fp32 (Triton's fp32 dots run in TF32 on a GPU) and bf16 (as test_bf16_oracles.py)
TOLERANCE = {torch.float32: 1e-2, torch.bfloat16: 3e-2}


def _close(actual: torch.Tensor, expected: torch.Tensor, share: float) -> None:
    scale = expected.float().abs().max().item()
    err = (actual.float() - expected.float()).abs().max().item()
    assert err <= share * scale, f"max error {err:.4g} over {share:.0%} of scale {scale:.4g}"


def _ids(bb, length: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(3, bb.config.vocab_size, (1, length), generator=g).to(DEVICE)


def _generate(bb, embeds, steps: int, **prefill_kwargs) -> list[torch.Tensor]:
    from bench.engine.pipeline import decode_step, prefill

    logits, seq = prefill(bb, embeds, **prefill_kwargs)
    out = [logits]
    for _ in range(steps):
        out.append(decode_step(bb, out[-1].argmax(-1, keepdim=True), seq))
    return out


# --- flash SDPA through the layer loop -----------------------------------------------------------

@pytest.mark.parametrize("arch", ["transformer", "hybrid"])
@pytest.mark.parametrize("chunk", [None, 48])
def test_flash_sdpa_through_the_layer_loop_equals_the_math_path(arch, chunk):
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from architectures import ARCHITECTURES

    bb = ARCHITECTURES.get(arch).build("tiny", device=DEVICE, dtype=torch.bfloat16)
    embeds = bb.embed(_ids(bb, 160))
    # flash only (an unsupported shape raises); chunks after the first are lower-right causal, which torch
    # runs on its memory-efficient kernel
    fused = [SDPBackend.FLASH_ATTENTION] if chunk is None else [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION]
    with torch.no_grad(), sdpa_kernel(fused):
        flash = _generate(bb, embeds, 3, chunk=chunk)
    with torch.no_grad(), sdpa_kernel([SDPBackend.MATH]):
        math = _generate(bb, embeds, 3, chunk=chunk)
    for f, m in zip(flash, math):
        _close(f, m, TOLERANCE[torch.bfloat16])


# --- mamba-ssm's Triton kernels on CUDA ----------------------------------------------------------

def _mamba_model(family: str, dtype):
    from architectures import ARCHITECTURES, kernels

    cls = ARCHITECTURES.get(family)
    bb = cls.build("tiny", device=DEVICE, dtype=dtype)
    assert kernels.bound()["mamba_chunk_scan_combined"] == "mamba_ssm", "mamba-ssm did not bind (is it installed?)"
    return bb


def _family_inputs(family: str, bb):
    """Prefill arguments: token embeddings, or for the video LLM a real video prompt's state."""
    if family != "nemotron_h_omni":
        return dict(embeds=bb.embed(_ids(bb, 200)))
    from tasks.video import Clip

    frames = (torch.rand(5, 3, 64, 64, generator=torch.Generator().manual_seed(0)) * 255).to(torch.uint8)
    inputs = bb.processor_inputs(Clip.consecutive(frames), "what happens in the video ?")
    return dict(embeds=None, state=bb.encode(inputs).state)  # encode moves the inputs to the model's device


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("family", MAMBA_FAMILIES)
@pytest.mark.parametrize("chunk", [None, 64])
def test_mamba_ssm_kernels_on_cuda_equal_the_torch_path(family, dtype, chunk):
    from architectures import kernels

    if family == "nemotron_h_omni":
        pytest.importorskip("torchvision", reason="the video LLM's processor needs torchvision (match it to torch)")
    bb = _mamba_model(family, dtype)
    before = {op: kernels.calls[(op, "mamba_ssm")] for op in ("mamba_chunk_scan_combined", "selective_state_update")}
    runs = {}
    for path in ("kernel", "torch"):
        inputs = _family_inputs(family, bb)
        with torch.no_grad(), kernels.forced(path):
            runs[path] = _generate(bb, inputs.pop("embeds"), 3, chunk=chunk, **inputs)
    for op, n in before.items():
        assert kernels.calls[(op, "mamba_ssm")] > n, f"{op}: the kernel did not run"
    for k, t in zip(runs["kernel"], runs["torch"]):
        _close(k, t, TOLERANCE[dtype])


# --- NVML peak and energy ------------------------------------------------------------------------

def test_nvml_peak_and_energy_are_plausible():
    from bench.measure.runner import run_cell
    from bench.spec import make_spec

    spec = make_spec(dict(arch="hybrid", preset="small", device=DEVICE, frames=256, new_tokens=16,
                          warmup=1, repeats=2))
    record = run_cell(spec)
    assert record["status"] == "ok", record["error"]
    m = record["metrics"]
    memory = m["memory"]
    total = torch.cuda.get_device_properties(0).total_memory
    assert memory["kind"] == "cuda"
    assert memory["torch_peak_allocated_bytes"] <= memory["torch_peak_reserved_bytes"]
    # NVML's device-used bytes hold the reserved pool and the CUDA context, and no more than the device
    assert memory["nvml_used_bytes"] is not None, memory
    assert memory["torch_peak_reserved_bytes"] <= memory["nvml_used_bytes"] <= total
    if m.get("energy_j") is not None:  # an NVML without the energy counter records none (the meter says which)
        seconds = m["ttft_s"] + m["decode_s"]
        assert 0 < m["energy_j"] < 2000 * seconds + 1  # under 2 kW while a pass runs
        assert m["energy_j_per_token"] > 0


# --- no host sync in decode ----------------------------------------------------------------------

@pytest.mark.parametrize("arch", ["transformer", "mamba", "hybrid"])
def test_decode_steps_never_sync_with_the_host(arch):
    from architectures import ARCHITECTURES
    from bench.engine.pipeline import decode_step, prefill

    bb = ARCHITECTURES.get(arch).build("tiny", device=DEVICE, dtype=torch.bfloat16)
    with torch.no_grad():
        logits, seq = prefill(bb, bb.embed(_ids(bb, 96)))
        token = logits.argmax(-1, keepdim=True)
        token = decode_step(bb, token, seq).argmax(-1, keepdim=True)  # lazy initialisations happen once
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            for _ in range(3):
                token = decode_step(bb, token, seq).argmax(-1, keepdim=True)
        finally:
            torch.cuda.set_sync_debug_mode("default")
    torch.cuda.synchronize()
    assert seq.position.device.type == "cuda"


def test_the_sync_watch_catches_a_host_read():
    x = torch.ones(3, device=DEVICE)
    torch.cuda.set_sync_debug_mode("error")
    try:
        with pytest.raises(RuntimeError):
            x.sum().item()
    finally:
        torch.cuda.set_sync_debug_mode("default")


# --- the fake pass's GPU substitutions against torch's allocations ------------------------------

@pytest.mark.parametrize("case", [
    dict(arch="transformer", compressor="none"),
    dict(arch="mamba", compressor="none"),
    dict(arch="hybrid", compressor="none"),
    dict(arch="hybrid", compressor="transv:schedule=uni_2_0.5-attn_10_0.9", prefill_chunk=1024),
], ids=lambda c: "-".join(str(v) for v in c.values()))
def test_predicted_peak_is_within_5_percent_of_measured_cuda_allocations(case):
    from bench.measure.runner import run_cell
    from bench.predict.fake_pass import predict_pass
    from bench.spec import make_spec

    spec = make_spec(dict(case, preset="small", device=DEVICE, dtype="bfloat16", frames=256, new_tokens=4,
                          warmup=0, repeats=1))
    predicted = predict_pass(spec, target="gpu")["peak_bytes"]
    record = run_cell(spec)
    assert record["status"] == "ok", record["error"]
    measured = record["metrics"]["peak_mem_bytes"]  # torch.cuda.max_memory_allocated above the pre-build allocation
    assert abs(measured - predicted) <= 0.05 * measured, (measured, predicted, measured / predicted)
