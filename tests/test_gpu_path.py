"""The measurement faults that would skew GPU numbers, shown on CPU.

- the model build (random weights) is never a pass's memory peak;
- a decode step copies nothing from the host;
- each Mamba op runs what transformers bound on CUDA and the torch code on CPU, and the
  record says which ran (not what is importable);
- NVML memory is a peak sampled through the pass, with the energy drawn;
- bad devices, accuracy tasks under ``run`` and CPU allocation failures end cleanly.
"""

from __future__ import annotations

import sys
import time
import types

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from architectures import ARCHITECTURES, compat, kernels
from architectures.transformer import Transformer
from bench.measure import meters
from bench.cli import main
from bench.errors import UserError
from bench.engine.pipeline import decode_step, prefill
from bench.records import environment
from bench.measure.runner import _is_oom, run_cell
from bench.spec import make_spec

# --- (a) the build is not counted ----------------------------------------------------------------

# Wide enough that its weights (about 240 MB in bf16) dwarf the process's own noise.
WIDE = dict(vocab_size=32000, hidden_size=1024, intermediate_size=3072, num_hidden_layers=4, num_attention_heads=8,
            num_key_value_heads=2, head_dim=128, tie_word_embeddings=False, max_position_embeddings=4096)


def test_bf16_cell_with_budget_between_bf16_and_fp32_model_size_fits(monkeypatch):
    monkeypatch.setitem(Transformer.presets, "wide", WIDE)
    params = Transformer.param_count("wide")
    bf16_bytes, fp32_bytes = 2 * params, 4 * params
    budget = int(1.5 * bf16_bytes)  # an fp32 copy of the weights alone would not fit
    assert bf16_bytes < budget < fp32_bytes
    spec = make_spec(dict(arch="transformer", preset="wide", dtype="bfloat16", frames=4, prompt_tokens=16,
                          new_tokens=2, warmup=0, repeats=1, memory_budget=budget))
    record = run_cell(spec)
    assert record["status"] == "ok", record["error"]
    peak = record["metrics"]["peak_mem_bytes"]
    assert bf16_bytes * 0.9 < peak < budget  # the weights are resident and counted; their build is not


# --- (b) no host-to-device copy per decode step --------------------------------------------------

class HostTransfers(TorchDispatchMode):
    """Records ops that move a host value onto the device or read one back (a sync on a GPU)."""

    WATCH = ("aten.lift_fresh", "aten._local_scalar_dense", "aten.scalar_tensor")

    def __init__(self):
        super().__init__()
        self.seen = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if str(func).startswith(self.WATCH):
            self.seen.append(str(func))
        return func(*args, **(kwargs or {}))


def test_the_watch_catches_a_host_scalar():
    with HostTransfers() as watch:
        torch.tensor([7])
    assert watch.seen


@pytest.mark.parametrize("arch", ["transformer", "mamba", "hybrid"])
def test_decode_step_copies_nothing_from_the_host(arch):
    bb = ARCHITECTURES.get(arch).build("tiny")
    ids = torch.randint(3, 512, (1, 24), generator=torch.Generator().manual_seed(0))
    logits, seq = prefill(bb, bb.embed(ids))
    token = logits.argmax(-1, keepdim=True)
    decode_step(bb, token, seq)  # first step: lazy initialisations are not the loop's cost
    with HostTransfers() as watch:
        for _ in range(2):
            token = decode_step(bb, token, seq).argmax(-1, keepdim=True)
    assert watch.seen == []
    assert seq.position.device == logits.device and seq.next_position == 24 + 3


# --- (c) kernels: what is bound, what runs, what is recorded -------------------------------------

def _reference(x, scale=2.0):
    return x * scale


def _bound(fake_package: str | None, monkeypatch):
    """A transformers binding made by the library's own decorator, against a fake package."""
    from transformers.integrations.hub_kernels import use_kernel_func_from_hub_with_fallback

    if fake_package:
        module = types.ModuleType(fake_package)
        module._reference = lambda x, scale=2.0: x * scale + 100  # the "kernel": tells itself apart
        monkeypatch.setitem(sys.modules, fake_package, module)
    return use_kernel_func_from_hub_with_fallback("_reference", fake_package or "no_such_kernel_package")(_reference)


def test_router_sends_cpu_tensors_to_torch_and_cuda_to_the_kernel(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    router = kernels.Router("op", _bound("fake_kernels", monkeypatch))
    assert router.package == "fake_kernels"
    x = torch.ones(3)
    assert router(x).tolist() == [2.0] * 3  # CPU tensor: the library's torch code, never the GPU kernel
    assert router.path_for("cuda") == "kernel"
    with kernels.forced("kernel"):
        assert router(x).tolist() == [102.0] * 3
    monkeypatch.setenv("TRITON_INTERPRET", "1")  # the CPU proxy of the GPU path
    assert router.path_for("cpu") == "kernel"


def test_router_of_a_package_that_did_not_import_is_torch(monkeypatch):
    router = kernels.Router("op", _bound(None, monkeypatch))
    assert router.kernel is None and router.path_for("cuda") == "torch"
    with kernels.forced("kernel"):
        assert router(torch.ones(1)).tolist() == [2.0]


def test_record_says_what_runs_not_what_is_installed():
    ARCHITECTURES.get("hybrid")
    ARCHITECTURES.get("mamba")
    env = environment("cpu")["kernels"]
    assert set(env["ops"]) >= {"mamba_chunk_scan_combined", "selective_state_update", "causal_conv1d_fn"}
    assert set(env["installed"]) == {"mamba_ssm", "causal_conv1d", "flash_attn"}
    assert env["attention"].startswith("torch sdpa")
    if not kernels.interpreter_active():
        assert set(env["ops"].values()) == {"torch"}  # a CPU cell never runs a GPU kernel
    for op, bound in env["bound"].items():
        if bound == "torch":  # e.g. mamba-ssm installed but not importable here: recorded as torch
            assert kernels.implementations("cuda:0")[op] == "torch"


def test_mamba_ops_of_the_library_are_routed():
    from transformers.models.mamba2 import modeling_mamba2
    from transformers.models.nemotron_h import modeling_nemotron_h

    ARCHITECTURES.get("hybrid")
    ARCHITECTURES.get("mamba")
    for module in (modeling_mamba2, modeling_nemotron_h):
        for name in kernels.OPS:
            assert isinstance(getattr(module, name), kernels.Router), f"{module.__name__}.{name}"


def test_startup_check_names_what_is_missing():
    module = types.ModuleType("modeling_fake")

    class FakeBlock:
        def forward(self, hidden_states, cache_params=None):
            return hidden_states

    module.FakeBlock = FakeBlock
    compat.require(module, block="FakeBlock", params=("cache_params",))
    with pytest.raises(UserError, match="'attention_mask' argument of FakeBlock.forward.*transformers==5.23.0"):
        compat.require(module, block="FakeBlock", params=("cache_params", "attention_mask"))
    with pytest.raises(UserError, match="modeling_fake.mamba2_chunk_scan"):
        compat.require(module, block="FakeBlock", globals_=("mamba2_chunk_scan",))


# --- (d) NVML: a sampled peak and the energy of the pass -----------------------------------------

class FakeNvml(types.ModuleType):
    """pynvml with one device whose used memory and energy counter the test drives."""

    class NVMLError(Exception):
        pass

    def __init__(self, energy=True):
        super().__init__("pynvml")
        self.used, self.energy_mj, self.has_energy = 1000, 5000, energy

    def nvmlDeviceGetMemoryInfo(self, handle):  # noqa: N802 - pynvml's names
        return types.SimpleNamespace(used=self.used)

    def nvmlDeviceGetTotalEnergyConsumption(self, handle):  # noqa: N802
        if not self.has_energy:
            raise self.NVMLError("not supported")
        return self.energy_mj


@pytest.mark.parametrize("energy", [True, False])
def test_nvml_peak_is_sampled_during_the_pass(monkeypatch, energy):
    nvml = FakeNvml(energy)
    monkeypatch.setitem(sys.modules, "pynvml", nvml)
    sampler = meters.NvmlSampler(handle=object(), interval=0.001)
    sampler.start()
    nvml.used = 9000  # a spike that is gone before the pass ends
    deadline = time.monotonic() + 5
    while sampler.peak < 9000 and time.monotonic() < deadline:
        time.sleep(0.001)
    nvml.used, nvml.energy_mj = 2000, 7500
    sampler.stop()
    assert sampler.peak == 9000
    assert sampler.energy_j == (2.5 if energy else None)


class FakeNvmlDevices(FakeNvml):
    """pynvml with two GPUs (one split into a MIG instance), found by index or by UUID."""

    UUIDS = ["GPU-aaaa1111-0000", "GPU-bbbb2222-0000"]
    MIG = "MIG-cccc3333-0000"

    def nvmlInit(self):  # noqa: N802
        pass

    def nvmlDeviceGetCount(self):  # noqa: N802
        return len(self.UUIDS)

    def nvmlDeviceGetHandleByIndex(self, index):  # noqa: N802
        if not 0 <= index < len(self.UUIDS):
            raise self.NVMLError("Invalid Argument")
        return self.UUIDS[index]

    def nvmlDeviceGetHandleByUUID(self, uuid):  # noqa: N802
        if uuid in (*self.UUIDS, self.MIG):
            return uuid
        raise self.NVMLError("Not Found")

    def nvmlDeviceGetUUID(self, handle):  # noqa: N802
        return handle


@pytest.mark.parametrize("visible, device, handle", [
    (None, "cuda:1", "GPU-bbbb2222-0000"),
    ("1,0", "cuda:0", "GPU-bbbb2222-0000"),
    ("GPU-bbbb2222-0000,GPU-aaaa1111-0000", "cuda:1", "GPU-aaaa1111-0000"),  # SLURM: full UUIDs
    ("MIG-cccc3333-0000", "cuda:0", "MIG-cccc3333-0000"),  # a MIG instance
    ("GPU-aaaa", "cuda:0", "GPU-aaaa1111-0000"),  # a unique prefix, as CUDA accepts it
    ("bbbb2222", "cuda:0", "GPU-bbbb2222-0000"),
])
def test_nvml_resolves_cuda_visible_devices_by_index_and_uuid(monkeypatch, visible, device, handle):
    monkeypatch.setitem(sys.modules, "pynvml", FakeNvmlDevices())
    if visible is None:
        monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    else:
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", visible)
    assert meters.nvml_handle(device) == (handle, None)


def _fake_cuda_memory(monkeypatch, used=None):
    """torch.cuda's counters on a CPU build; ``used``: what torch.cuda.device_memory_used says (None: it fails)."""
    for name in ("empty_cache", "reset_peak_memory_stats"):
        monkeypatch.setattr(torch.cuda, name, lambda *a, **k: None)
    for name in ("memory_allocated", "max_memory_allocated", "max_memory_reserved"):
        monkeypatch.setattr(torch.cuda, name, lambda *a, **k: 0)

    def device_memory_used(device=None):
        if used is None:
            raise RuntimeError("Can't get device UUIDs")
        return used

    monkeypatch.setattr(torch.cuda, "device_memory_used", device_memory_used)
    monkeypatch.setattr(meters, "_warned", set())


@pytest.mark.parametrize("visible, used, device_meter, energy_meter, warning", [
    ("GPU-aaaa1111-0000", None, "nvml", "nvml", None),
    ("MIG-dddd", 4242, "torch.cuda.device_memory_used", "unavailable", "torch.cuda.device_memory_used"),
    ("GPU-ffff", None, "unavailable", "unavailable", "no device-used memory or energy meter"),
])
def test_an_unavailable_meter_is_said_once_and_named_in_the_record(monkeypatch, capsys, visible, used, device_meter,
                                                                  energy_meter, warning):
    monkeypatch.setitem(sys.modules, "pynvml", FakeNvmlDevices())
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", visible)
    _fake_cuda_memory(monkeypatch, used)
    for _ in range(2):  # two measurements, one warning
        meter = meters.MemoryMeter("cuda:0")
        meter.set_baseline()
        meter.reset()
        memory = meter.read()
    assert memory["device_used_meter"].startswith(device_meter) and memory["energy_meter"].startswith(energy_meter)
    if used is not None:
        assert memory["nvml_used_bytes"] == used
    err = capsys.readouterr().err
    if warning is None:
        assert err == ""
    else:
        assert err.count("\n") == 1 and err.startswith("viperbench: warning: ") and warning in err
        assert visible in err  # says which device NVML could not find


def test_no_pynvml_is_said(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "pynvml", None)  # import pynvml raises ImportError
    _fake_cuda_memory(monkeypatch)
    meter = meters.MemoryMeter("cuda:0")
    meter.set_baseline()
    assert meter.read()["device_used_meter"] == "unavailable: pynvml is not installed"
    assert "pynvml is not installed" in capsys.readouterr().err


def test_energy_per_token_in_the_summary():
    from bench.measure.runner import summarise

    sample = {"prefill_s": 1.0, "prefill_tok_s": 1.0, "ttft_s": 1.0, "decode_s": 1.0, "decode_tok_s": 1.0,
              "e2e_tok_s": 1.0, "stages": {"prefill_s": 1.0}, "tokens_processed": 100}
    peaks = [{"peak_mem_bytes": 1, "energy_j": e} for e in (3.0, 5.0, 4.0)]
    out = summarise([sample] * 3, peaks)
    assert out["energy_j"] == 4.0 and out["energy_j_per_token"] == 0.04


# --- (e) failures that end cleanly ---------------------------------------------------------------

@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_device_without_cuda_is_one_line_exit_2(capsys):
    assert main(["run", "--arch", "transformer", "--device", "cuda", "--frames", "2"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--device cuda" in err and "Traceback" not in err


def test_run_with_an_accuracy_task_points_to_eval(capsys):
    assert main(["run", "--arch", "transformer", "--task", "videomme", "--frames", "2"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "viperbench eval --task videomme" in err


def test_cpu_allocation_failure_is_oom():
    with pytest.raises(RuntimeError) as info:
        torch.empty(2**60, dtype=torch.uint8)
    assert "can't allocate memory" in str(info.value)
    assert _is_oom(info.value)
    assert not _is_oom(RuntimeError("shape mismatch"))
