"""The GPU kernel path on CPU: mamba-ssm's Triton kernels under Triton's interpreter.

Run with ``pytest -m kernels`` (the conftest switches the interpreter on before transformers'
Mamba modules are imported). Through the harness's own layer loop, mamba-ssm's
``mamba_chunk_scan_combined`` (prefill) and ``selective_state_update`` (decode) must give the
logits of the library's torch code, for pure Mamba-2, the hybrid and the hybrid video LLM
(Nemotron-Omni: its NemotronH text model's Mamba layers, on a real video prompt), in fp32 (the
interpreter's bf16 ``tl.dot`` is wrong): one-shot prefill, chunked prefill with the state
carried through the cache, decode steps, and decode after a drop. Every test also checks
that the kernels really ran, so none can pass on the torch path alone.

The models are small (three or four blocks, Mamba chunk 32 so that prefill spans several of
the kernel's chunks): the interpreter runs each kernel program in Python.
"""

from __future__ import annotations

import pytest
import torch

from architectures import ARCHITECTURES, kernels
from architectures.hybrid import Hybrid
from architectures.mamba import Mamba
from bench.engine.pipeline import decode_step, prefill
from compressors.base import make_compressor

pytestmark = pytest.mark.kernels

PRESETS = {
    "mamba": dict(Mamba.presets["tiny"], num_hidden_layers=3, chunk_size=32),
    "hybrid": dict(Hybrid.presets["tiny"], hybrid_override_pattern="M*M-", chunk_size=32),
}
LENGTH, CHUNK, VISION = 80, 24, (1, 61)
ATOL, RTOL = 1e-4, 1e-4
_BUILT: dict = {}


@pytest.fixture(autouse=True)
def _kernels_on(request):
    skip = getattr(request.config, "kernels_skip", None)
    if skip:
        pytest.skip(skip)
    if not kernels.interpreter_active():
        pytest.skip("run the kernel tests alone: pytest -m kernels")


@pytest.fixture(params=["mamba", "hybrid"])
def bb(request, monkeypatch):
    name = request.param
    if name not in _BUILT:
        cls = ARCHITECTURES.get(name)
        monkeypatch.setitem(cls.presets, "kernels", PRESETS[name])
        _BUILT[name] = cls.build("kernels")
        assert kernels.bound()["mamba_chunk_scan_combined"] == "mamba_ssm", "mamba-ssm did not bind"
    return _BUILT[name]


def _embeds(bb, seed=0):
    ids = torch.randint(3, bb.config.vocab_size, (1, LENGTH), generator=torch.Generator().manual_seed(seed))
    return bb.embed(ids)


def _kernel_calls(op: str) -> int:
    return kernels.calls[(op, "mamba_ssm")]


def _generate(bb, path: str, steps: int, **prefill_kwargs):
    """Prefill and ``steps`` greedy decode steps on one kernel path; every step's logits."""
    with kernels.forced(path):
        logits, seq = prefill(bb, _embeds(bb), **prefill_kwargs)
        out = [logits]
        for _ in range(steps):
            out.append(decode_step(bb, out[-1].argmax(-1, keepdim=True), seq))
    return out


def _assert_paths_agree(kernel_out, torch_out):
    assert len(kernel_out) == len(torch_out)
    for k, t in zip(kernel_out, torch_out):
        torch.testing.assert_close(k, t, atol=ATOL, rtol=RTOL)


def test_one_shot_prefill(bb):
    before, norms = _kernel_calls("mamba_chunk_scan_combined"), _kernel_calls(kernels.GATED_NORM)
    _assert_paths_agree(_generate(bb, "kernel", 0), _generate(bb, "torch", 0))
    assert _kernel_calls("mamba_chunk_scan_combined") > before
    assert _kernel_calls(kernels.GATED_NORM) - norms == sum(k == "mamba" for k in bb.layer_kinds())


@pytest.mark.parametrize("module", ["nemotron_h", "mamba2"])
def test_fused_gated_norm_equals_the_torch_module(module):
    """mamba-ssm's fused gated RMSNorm (rmsnorm_fn, gate before the norm) against the library's module, fp32."""
    import importlib

    lib = importlib.import_module(f"transformers.models.{module}.modeling_{module}")
    cls = getattr(lib, "NemotronHRMSNormGated" if module == "nemotron_h" else "MambaRMSNormGated")
    assert kernels.bound()[kernels.GATED_NORM] == "mamba_ssm"
    gen = torch.Generator().manual_seed(0)
    norm = cls(64, group_size=16, eps=1e-5)
    with torch.no_grad():
        norm.weight.copy_(torch.randn(64, generator=gen))
    hidden, gate = torch.randn(2, 40, 64, generator=gen), torch.randn(2, 40, 64, generator=gen)
    before = _kernel_calls(kernels.GATED_NORM)
    with kernels.forced("kernel"):
        fused = norm(hidden, gate)
    with kernels.forced("torch"):
        reference = norm(hidden, gate)
    assert _kernel_calls(kernels.GATED_NORM) == before + 1
    torch.testing.assert_close(fused, reference, atol=ATOL, rtol=RTOL)
    assert kernels.implementations("cuda")[kernels.GATED_NORM].startswith("mamba_ssm ")


def test_chunked_prefill_carries_the_state(bb):
    before = _kernel_calls("mamba_chunk_scan_combined")
    kernel_chunked = _generate(bb, "kernel", 0, chunk=CHUNK)
    mamba_layers = sum(kind == "mamba" for kind in bb.layer_kinds())
    assert _kernel_calls("mamba_chunk_scan_combined") - before == mamba_layers * -(-LENGTH // CHUNK)
    _assert_paths_agree(kernel_chunked, _generate(bb, "torch", 0))


def test_decode_steps(bb):
    before = _kernel_calls("selective_state_update")
    _assert_paths_agree(_generate(bb, "kernel", 3), _generate(bb, "torch", 3))
    assert _kernel_calls("selective_state_update") > before


def test_decode_after_a_drop(bb):
    def run(path):
        compressor = make_compressor("td:schedule=uni_1_0.5-attn_2_0.5")
        compressor.check(bb)
        return _generate(bb, path, 3, compressor=compressor, vision=VISION, chunk=CHUNK)

    before = _kernel_calls("selective_state_update")
    _assert_paths_agree(run("kernel"), run("torch"))
    assert _kernel_calls("selective_state_update") > before


# --- the hybrid video LLM: Nemotron-Omni's Mamba layers on a video prompt -------------------------

from architectures.families.nemotron_omni import NemotronOmni  # noqa: E402
from tasks.video import Clip  # noqa: E402

_OMNI_TINY = NemotronOmni.presets["tiny"]
# two Mamba-2 blocks, attention, MoE; Mamba chunk 16 so that the ~60-token prompt spans several kernel chunks
OMNI_PRESET = dict(_OMNI_TINY, text_config=dict(_OMNI_TINY["text_config"], hybrid_override_pattern="M*EM",
                                                chunk_size=16))
OMNI_CHUNK = 20


@pytest.fixture
def omni(monkeypatch):
    if "omni" not in _BUILT:
        monkeypatch.setitem(NemotronOmni.presets, "kernels", OMNI_PRESET)
        bb = NemotronOmni.build("kernels")
        assert kernels.bound()["mamba_chunk_scan_combined"] == "mamba_ssm", "mamba-ssm did not bind"
        frames = (torch.rand(5, 3, 64, 64, generator=torch.Generator().manual_seed(0)) * 255).to(torch.uint8)
        _BUILT["omni"] = bb, bb.processor_inputs(Clip.consecutive(frames), "what happens in the video ?")
    return _BUILT["omni"]


def _omni_generate(bb, inputs, path: str, steps: int, compressor_spec: str | None = None, **prefill_kwargs):
    compressor = None
    if compressor_spec:
        compressor = make_compressor(compressor_spec)
        bb.check_compressor(compressor)
        compressor.check(bb)
    with kernels.forced(path):
        logits, seq = prefill(bb, None, state=bb.encode(inputs).state, compressor=compressor, **prefill_kwargs)
        out = [logits]
        for _ in range(steps):
            out.append(decode_step(bb, out[-1].argmax(-1, keepdim=True), seq))
    return out


def test_omni_one_shot_prefill(omni):
    before = _kernel_calls("mamba_chunk_scan_combined")
    _assert_paths_agree(_omni_generate(*omni, "kernel", 0), _omni_generate(*omni, "torch", 0))
    assert _kernel_calls("mamba_chunk_scan_combined") > before


def test_omni_chunked_prefill_carries_the_state(omni):
    bb, inputs = omni
    length = inputs["input_ids"].shape[1]
    before = _kernel_calls("mamba_chunk_scan_combined")
    kernel_chunked = _omni_generate(bb, inputs, "kernel", 0, chunk=OMNI_CHUNK)
    mamba_layers = sum(kind == "mamba" for kind in bb.layer_kinds())
    assert mamba_layers == 2
    assert _kernel_calls("mamba_chunk_scan_combined") - before == mamba_layers * -(-length // OMNI_CHUNK)
    _assert_paths_agree(kernel_chunked, _omni_generate(bb, inputs, "torch", 0))


def test_omni_decode_steps(omni):
    before = _kernel_calls("selective_state_update")
    _assert_paths_agree(_omni_generate(*omni, "kernel", 3), _omni_generate(*omni, "torch", 3))
    assert _kernel_calls("selective_state_update") > before


def test_omni_decode_after_a_drop(omni):
    spec = "td:schedule=uni_1_0.5-attn_2_0.5"
    before = _kernel_calls("selective_state_update")
    _assert_paths_agree(_omni_generate(*omni, "kernel", 3, spec, chunk=OMNI_CHUNK),
                        _omni_generate(*omni, "torch", 3, spec, chunk=OMNI_CHUNK))
    assert _kernel_calls("selective_state_update") > before
