"""Exact work counters: what a pass asks of the device, independent of how loaded the machine is.

A counting pass runs the cell's pass once more, untimed, with a ``WorkCounter`` in place of the
stage timer: every stage (``vision_s``, ``prefill_s``, ``decode_s``) is watched by a
``TorchDispatchMode`` that counts

- ``ops``: aten operators dispatched, in total and by name (``aten::mm``);
- ``alloc_bytes``: bytes allocated. On CUDA the caching allocator's own counter
  (``allocated_bytes.all.allocated``); elsewhere the bytes of every fresh storage an operator
  returned (outputs that alias an input, views and in-place results, are not new);
- ``host_syncs``: points where the host waits for a value of the device: ``_local_scalar_dense``
  (``.item()``, ``int(t)``, ``if t:``), device-to-host copies, and operators whose output shape
  depends on the data (``nonzero``, ``masked_select``, ``unique``...);
- ``kernels`` (CUDA only): kernel launches seen by the profiler.

The numbers depend on the code and on the library versions (torch, transformers), not on the
machine's load: ``bench.reporting.compare`` gates them exactly between records of the same versions.
Decode counts are per generated token (the decode stage divided by its steps).
"""

from __future__ import annotations

from collections import Counter
from contextlib import contextmanager

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

# operators whose output size depends on the data: on CUDA the host waits for the device
DATA_DEPENDENT = {"nonzero", "masked_select", "unique", "_unique2", "unique_consecutive", "unique_dim",
                  "argwhere", "nonzero_static", "repeat_interleave"}
SCALAR_READS = {"_local_scalar_dense", "item"}
STAGES = {"vision_s": "vision", "prefill_s": "prefill", "decode_s": "decode"}


class _OpCounter(TorchDispatchMode):
    def __init__(self, count_bytes: bool):
        super().__init__()
        self.ops: Counter = Counter()
        self.bytes = 0
        self.syncs = 0
        self.count_bytes = count_bytes

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = func._schema.name.split("::", 1)[-1]
        self.ops[f"aten::{name}"] += 1
        inputs = [t for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)]
        if name in SCALAR_READS or name in DATA_DEPENDENT and any(t.device.type != "cpu" for t in inputs):
            self.syncs += 1
        out = func(*args, **kwargs)
        outputs = [t for t in tree_leaves(out) if isinstance(t, torch.Tensor)]
        if name in ("_to_copy", "copy_") and any(t.device.type != "cpu" for t in inputs) \
                and any(t.device.type == "cpu" for t in outputs):
            self.syncs += 1  # device to host
        if self.count_bytes:
            seen = {_storage_id(t) for t in inputs}
            for t in outputs:
                sid = _storage_id(t)
                if sid not in seen:
                    seen.add(sid)
                    self.bytes += t.untyped_storage().nbytes()
        return out


def _storage_id(t: torch.Tensor):
    try:
        return t.untyped_storage().data_ptr(), t.device
    except RuntimeError:  # e.g. a tensor without storage
        return id(t), t.device


class WorkCounter:
    """Stands in for ``bench.measure.meters.StageTimer`` (same ``stage(name)``) and counts each stage's work."""

    def __init__(self, device: str):
        self.device = device
        self.times: dict[str, float] = {}  # the pass reads stage times: near zero, this pass is not timed
        self.cpu_times = None
        self.stages: dict[str, dict] = {}

    @contextmanager
    def stage(self, name: str):
        cuda = self.device.startswith("cuda")
        counter = _OpCounter(count_bytes=not cuda)
        before = torch.cuda.memory_stats(self.device).get("allocated_bytes.all.allocated", 0) if cuda else 0
        with _kernel_launches(cuda) as kernels, counter:
            yield
        if cuda:
            torch.cuda.synchronize(self.device)
            counter.bytes = torch.cuda.memory_stats(self.device).get("allocated_bytes.all.allocated", 0) - before
        self.times[name] = self.times.get(name, 0.0) + 1e-9  # never zero: rates divide by stage times
        entry = {"ops": sum(counter.ops.values()), "alloc_bytes": counter.bytes, "host_syncs": counter.syncs,
                 "by_op": dict(sorted(counter.ops.items()))}
        if kernels:
            entry["kernels"] = kernels[0]
        self.stages[STAGES.get(name, name)] = _add(self.stages.get(STAGES.get(name, name)), entry)


def _add(a: dict | None, b: dict) -> dict:
    if a is None:
        return b
    out = {k: a.get(k, 0) + b.get(k, 0) for k in ("ops", "alloc_bytes", "host_syncs", "kernels") if k in a or k in b}
    out["by_op"] = dict(sorted((Counter(a["by_op"]) + Counter(b["by_op"])).items()))
    return out


@contextmanager
def _kernel_launches(cuda: bool):
    """On CUDA, the kernels the profiler saw in the block (a one-element list, filled on exit)."""
    found: list[int] = []
    if not cuda:
        yield found
        return
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        yield found
    found.append(sum(1 for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA))


def per_token(stage: dict, steps: int) -> dict:
    """A stage's counts divided by its steps (decode: per generated token)."""
    if steps <= 0:
        return stage
    out = {k: v / steps for k, v in stage.items() if k != "by_op"}
    out["by_op"] = {k: v / steps for k, v in stage["by_op"].items()}
    return out


def summarise_work(counter: WorkCounter, decode_steps: int) -> dict:
    """``metrics.work``: per stage, decode per generated token; the library versions that produced it."""
    out = {}
    for stage, counts in counter.stages.items():
        if stage == "decode":
            out["decode_per_token"] = per_token(counts, decode_steps)
        else:
            out[stage] = counts
    out["decode_steps"] = decode_steps
    out["counted_on"] = {"torch": torch.__version__, "transformers": _transformers_version(),
                         "device_type": counter.device.split(":")[0]}
    return out


def _transformers_version() -> str:
    import transformers

    return transformers.__version__

