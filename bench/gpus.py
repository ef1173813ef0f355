"""A small table of GPUs for predictions: memory, dense bf16 matmul peak, memory bandwidth.

Numbers are the vendors' spec sheets (dense, i.e. without 2:4 sparsity), not measurements.
``--gpu NAME`` picks a row; ``--gpu-memory``, ``--gpu-tflops`` and ``--gpu-bandwidth``
override its fields (or describe a GPU that is not listed, with ``--gpu custom``).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from bench.errors import UserError
from bench.spec import parse_bytes

GB, TB = 10**9, 10**12


@dataclass(frozen=True)
class GPU:
    name: str
    memory_bytes: int  # device memory (spec sheet capacity)
    bf16_tflops: float  # dense bf16 tensor-core peak, TFLOP/s
    bandwidth: float  # memory bandwidth, bytes/s

    def to_dict(self) -> dict:
        return {"name": self.name, "memory_bytes": self.memory_bytes, "bf16_tflops": self.bf16_tflops,
                "bandwidth_bytes_s": self.bandwidth, "source": "spec sheet unless overridden"}


GPUS: dict[str, GPU] = {
    "h100-80gb": GPU("NVIDIA H100 80GB SXM", 80 * 2**30, 989.4, 3.35 * TB),
    "h100-80gb-pcie": GPU("NVIDIA H100 80GB PCIe", 80 * 2**30, 756.0, 2.0 * TB),
    "h200": GPU("NVIDIA H200 141GB SXM", 141 * 2**30, 989.4, 4.8 * TB),
    "a100-40gb": GPU("NVIDIA A100 40GB SXM", 40 * 2**30, 312.0, 1.555 * TB),
    "a100-80gb": GPU("NVIDIA A100 80GB SXM", 80 * 2**30, 312.0, 2.039 * TB),
    "l40s": GPU("NVIDIA L40S 48GB", 48 * 2**30, 362.05, 0.864 * TB),
    "rtx-4090": GPU("NVIDIA GeForce RTX 4090 24GB", 24 * 2**30, 165.2, 1.008 * TB),
}
ALIASES = {"h100": "h100-80gb", "h100-sxm": "h100-80gb", "h100-pcie": "h100-80gb-pcie", "a100": "a100-80gb",
           "4090": "rtx-4090", "rtx4090": "rtx-4090", "h200-141gb": "h200"}


def _positive(text: str, flag: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise UserError(f"{flag} must be a number, got {text!r}") from None
    if value <= 0:
        raise UserError(f"{flag} must be positive, got {text!r}")
    return value


def parse_bandwidth(text: str) -> float:
    """``"3.35TB/s"``, ``"900GB/s"`` or bytes/s."""
    t = str(text).strip().lower().removesuffix("/s")
    for unit, scale in (("tb", TB), ("gb", GB)):
        if t.endswith(unit):
            return _positive(t[: -len(unit)], "--gpu-bandwidth") * scale
    return _positive(t, "--gpu-bandwidth")


def resolve(name: str | None, memory: str | None = None, tflops: str | None = None,
            bandwidth: str | None = None) -> GPU:
    """The named GPU with overrides; ``custom`` needs all three overrides."""
    key = (name or "h100-80gb").strip().lower()
    key = ALIASES.get(key, key)
    if key == "custom":
        if not (memory and tflops and bandwidth):
            raise UserError("--gpu custom needs --gpu-memory, --gpu-tflops and --gpu-bandwidth")
        gpu = GPU("custom", 1, 1.0, 1.0)
    elif key in GPUS:
        gpu = GPUS[key]
    else:
        raise UserError(f"unknown GPU {name!r}; valid: {', '.join(GPUS)}, custom")
    if memory is not None:
        gpu = replace(gpu, memory_bytes=parse_bytes(memory))
    if tflops is not None:
        gpu = replace(gpu, bf16_tflops=_positive(tflops, "--gpu-tflops"))
    if bandwidth is not None:
        gpu = replace(gpu, bandwidth=parse_bandwidth(bandwidth))
    return gpu
