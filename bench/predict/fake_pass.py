"""One measured pass run on fake tensors: the peak allocated memory of a cell, without allocating.

The model is built under torch's ``FakeTensorMode`` on the (fake) ``cpu`` device: every
tensor has its shape, dtype and strides but no data, so a full-size model costs nothing.
``bench.measure.runner.one_pass`` then runs exactly as in a measurement (embeddings, compressor
hooks, chunked prefill, decode steps) while ``LiveBytes`` tracks the bytes of every live
tensor storage: a storage is counted when an op first returns it and uncounted by a
weakref finalizer when the last tensor using it dies, which is what a caching allocator's
"allocated" counter sees. Weights and the request are registered first.

A real video LLM (``qwen3_vl``, ``qwen3_vl_moe``, ``llava_onevision``, ``nemotron_h_omni``) runs its
own processor, tower and projector on fake frames under ``bench.predict.real_layout.RealLayout``:
the token layout (placeholder ids, video grid, 3-D positions, masks) is computed for real, the
data stays fake. Its tower and projector are reported as the vision side. For a GPU its
processor runs in host memory (``on_host``: not counted; the pixels count from the
model's own copy to the device); for the CPU target everything is the same memory.

``target="gpu"`` swaps in the GPU kernels' allocation patterns (``bench.predict.gpu_kernels``);
``target="cpu"`` runs this CPU build's own code paths, which is what the tests compare
with the real allocations of a CPU run.
"""

from __future__ import annotations

import time
import weakref
from contextlib import contextmanager, nullcontext

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from bench.measure.cost import cache_bytes
from bench.errors import UserError
from bench.predict.real_layout import RealLayout


class LiveBytes(TorchDispatchMode):
    """Live and peak bytes of tensor storages created by ops (and of tensors registered with ``add``)."""

    def __init__(self, on_peak=None):
        super().__init__()
        self.live = 0
        self.peak = 0
        self._sizes: dict[int, int] = {}
        self.on_peak = on_peak
        self.paused = False  # while True, what ops create is not counted (host memory)

    def add(self, tensor) -> int:
        """Count ``tensor``'s storage if it is not counted yet; returns the bytes added."""
        if not isinstance(tensor, torch.Tensor) or tensor.layout != torch.strided or tensor.device.type == "meta":
            return 0
        storage = tensor.untyped_storage()
        key = storage._cdata
        if key in self._sizes:
            return 0
        size = storage.nbytes()
        self._sizes[key] = size
        self.live += size
        weakref.finalize(storage, self._free, key)
        if self.live > self.peak:
            self.peak = self.live
            if self.on_peak is not None:
                self.on_peak()
        return size

    def _free(self, key: int) -> None:
        self.live -= self._sizes.pop(key, 0)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if not self.paused:
            for t in tree_flatten(out)[0]:
                self.add(t)
        return out


def on_host(processor_inputs, tracker: LiveBytes):
    """A real video LLM's ``processor_inputs`` as a GPU run has it: on the host. What it allocates (the frames'
    host copy, the processor's work) is not device memory; its floating outputs (the pixels) come back on the
    meta device, so the model's own ``.to(device)`` is the copy that counts, in the dtype it asks for; its
    integer outputs (ids, grid) are counted as their device copies."""

    def host(*args, **kwargs):
        tracker.paused = True
        try:
            out = processor_inputs(*args, **kwargs)
        finally:
            tracker.paused = False
        for key, value in out.items():
            if isinstance(value, torch.Tensor):
                if value.is_floating_point():
                    out[key] = torch.empty_like(value, device="meta")
                else:
                    tracker.add(value)
        return out

    return host


@contextmanager
def _replace_on_to():
    """``Module.to`` that replaces parameters instead of swapping them (fake tensors cannot be swapped)."""
    original = nn.Module.to

    def to(self, *args, **kwargs):
        device, dtype, _, _ = torch._C._nn._parse_to(*args, **kwargs)
        for module in self.modules():
            for name, p in list(module._parameters.items()):
                if p is not None:
                    q = p.to(device=device, dtype=dtype if p.is_floating_point() else None)
                    module._parameters[name] = nn.Parameter(q, requires_grad=p.requires_grad)
            for name, b in list(module._buffers.items()):
                if b is not None:
                    module._buffers[name] = b.to(device=device, dtype=dtype if b.is_floating_point() else None)
        return self

    nn.Module.to = to
    try:
        yield
    finally:
        nn.Module.to = original


def _register(tracker: LiveBytes, module) -> int:
    if module is None:
        return 0
    return sum(tracker.add(t) for t in (*module.parameters(), *module.buffers()))


def _fake_from_meta(module: nn.Module) -> nn.Module:
    """``module`` (built on the meta device) with every parameter and buffer a fake tensor on the fake CPU."""
    for sub in module.modules():
        for name, p in list(sub._parameters.items()):
            if p is not None:
                sub._parameters[name] = nn.Parameter(torch.empty(p.shape, dtype=p.dtype), requires_grad=False)
        for name, b in list(sub._buffers.items()):
            if b is not None:
                sub._buffers[name] = torch.empty(b.shape, dtype=b.dtype)
    return module


def _vision_side(spec, backbone, dtype):
    """The own SigLIP side (tower, ToMe, projector) of ``--vision siglip``, built fake in the model's dtype."""
    if spec.vision != "siglip":
        return None
    from architectures.vision import VisionSide

    # built on meta (its initialisers read values), then every parameter and buffer made a fake tensor
    vision = _fake_from_meta(VisionSide(spec.preset, backbone.hidden_size, spec.tokens_per_frame, dtype=dtype,
                                        device="meta"))
    if spec.frame_batch is not None:
        vision.frame_batch = spec.frame_batch
    return vision


def predict_pass(spec, *, target: str = "gpu", mamba: str = "mamba-ssm", autotune: bool = True) -> dict:
    """Peak allocated bytes of one pass of ``spec`` (as ``bench.measure.runner.one_pass`` runs it), by part."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    from transformers.initialization import no_init_weights

    from architectures import ARCHITECTURES
    from bench.predict.gpu_kernels import backend, gpu_kernels
    from bench.measure.runner import Model, one_pass
    from compressors.base import make_compressor
    from tasks.synthetic import Request

    if target not in ("gpu", "cpu"):
        raise UserError(f"unknown prediction target {target!r}; valid: gpu, cpu")
    t0 = time.perf_counter()
    dtype = getattr(torch, spec.resolved_dtype)
    run_spec = spec.replace(device="cpu", dtype=spec.resolved_dtype)
    arch = ARCHITECTURES.get(spec.arch)
    if spec.vision == "siglip" and arch.takes_frames:
        raise UserError(f"--vision siglip builds the own backbones' SigLIP side; {spec.arch} runs its own tower "
                        "(predicted with it, without --vision)")
    if spec.vision == "siglip" and spec.checkpoint:
        raise UserError("predict --vision siglip builds the SigLIP side of a preset (--preset), not a checkpoint's")
    caches: list = []
    at_peak: dict[str, int] = {}

    def snapshot():
        at_peak.update(cache_bytes(caches[-1]) if caches else {})

    tracker = LiveBytes(on_peak=snapshot)
    config = arch.check_checkpoint(spec.checkpoint) if spec.checkpoint else arch.make_config(spec.preset)
    # a real video LLM's processor and model code compute its token layout from real integers
    layout = RealLayout() if arch.takes_frames else nullcontext()
    extra = (arch.make_processor(config, spec.checkpoint),) if arch.takes_frames else ()
    with FakeTensorMode(allow_non_fake_inputs=arch.takes_frames), layout, _replace_on_to():
        # in the model's dtype, as Backbone.build does (float32 buffers stay float32); the real families' tower
        # initialisers read values (truncated normals), which fake weights need not have
        with torch.device("cpu"), no_init_weights() if arch.takes_frames else nullcontext():
            model = arch.model_class._from_config(config, dtype=dtype)
        backbone = arch(model.eval(), *extra, preset=spec.preset, checkpoint=spec.checkpoint)
        if arch.takes_frames:
            backbone.frame_batch = spec.frame_batch
            if target == "gpu":
                backbone.processor_inputs = on_host(backbone.processor_inputs, tracker)
        compressor = make_compressor(spec.compressor)
        backbone.check_compressor(compressor)
        compressor.check(backbone)
        compressor.prepare(backbone)
        vision = _vision_side(spec, backbone, dtype)
        # a real family's tower and projector are in its model: counted first, as the vision side
        vision_bytes = sum(_register(tracker, m) for m in backbone.vision_modules()) if arch.takes_frames else 0
        weights = _register(tracker, backbone.model)
        vision_bytes += _register(tracker, vision)
        compressor_bytes = _register(tracker, getattr(compressor, "cross", None))
        side = backbone.frame_size if arch.takes_frames else vision.image_size if vision is not None else None
        frames = None if side is None else torch.empty((spec.batch, spec.frames, 3, side, side), dtype=dtype)
        request = Request(bos_id=1, frames=frames,
                          prompt_ids=torch.zeros((spec.batch, spec.prompt_tokens), dtype=torch.long))
        frames_bytes = tracker.add(frames)
        inputs = tracker.add(request.prompt_ids) + frames_bytes
        new_cache = backbone.new_cache

        def tracked_cache():
            caches.append(new_cache())
            return caches[-1]

        backbone.new_cache = tracked_cache
        # Peaks per stage: the prefill ends with one logits call, and so does every decode step.
        stage_peaks: list[tuple[int, dict]] = []
        logits = backbone.logits

        def tracked_logits(hidden, **kwargs):
            out = logits(hidden, **kwargs)
            stage_peaks.append((tracker.peak, dict(at_peak)))
            tracker.peak = tracker.live
            return out

        backbone.logits = tracked_logits
        embed = backbone.embed

        def tracked_embed(ids):
            if stage_peaks:  # a decode step starts: its peak counts from what is live now
                tracker.peak = tracker.live
            return embed(ids)

        backbone.embed = tracked_embed
        tracker.peak = tracker.live
        kernels = gpu_kernels(mamba, autotune) if target == "gpu" else nullcontext()
        steps = min(spec.new_tokens, 2)
        pass_spec = run_spec.replace(new_tokens=steps)  # validating a spec builds a skeleton: not in the pass
        with kernels, tracker:
            result = one_pass(pass_spec, Model(backbone, vision, compressor), request)
    # Every decode step adds one token to each attention layer's cache and otherwise repeats the last one,
    # so the peak of step N is step 2's plus (N - 2) times the growth from step 1 to step 2.
    (peak, at), *decode = stage_peaks
    if decode:
        p1, _ = decode[0]
        p_last, at_last = decode[-1]
        growth = p_last - p1 if len(decode) > 1 else 0
        extra = (spec.new_tokens - len(decode)) * growth
        if p_last + extra > peak:
            peak, at = p_last + extra, dict(at_last)
            at["kv_cache_bytes"] = at.get("kv_cache_bytes", 0) + extra
    state = {k: at.get(k, 0) for k in ("kv_cache_bytes", "ssm_state_bytes", "conv_state_bytes")}
    parts = {"weights_bytes": weights, "vision_weights_bytes": vision_bytes, "frames_bytes": frames_bytes,
             "compressor_params_bytes": compressor_bytes, **state}
    parts["activations_bytes"] = peak - sum(parts.values())
    stages = {"prefill_peak_bytes": stage_peaks[0][0],
              "decode_peak_bytes": [p for p, _ in decode], "decode_steps_run": len(decode)}
    return {
        "peak_bytes": peak,
        "parts": parts,
        "stages": stages,
        "inputs_bytes": inputs,
        "end_of_prefill": result["cache"],
        "input_tokens": result["input_tokens"],
        "vision_tokens": result["vision_tokens"],
        "tokens_after_compression": result["tokens_after_compression"],
        "compressor": result["compressor"],
        "target": target,
        "mamba_kernels": (backend() if mamba == "mamba-ssm" else "transformers' reference PyTorch code")
        if target == "gpu" and "mamba" in backbone.layer_kinds() else None,
        "attention_kernel": "flash (output + float32 log-sum-exp)" if target == "gpu" else "this CPU build's SDPA",
        "seconds": time.perf_counter() - t0,
    }
