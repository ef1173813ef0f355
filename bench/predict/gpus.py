"""A small table of GPUs for predictions: memory, dense bf16 matmul peak, memory bandwidth.

Numbers are the vendors' spec sheets (dense, i.e. without 2:4 sparsity), not measurements.
``--gpu NAME`` picks a row; ``--gpu-memory``, ``--gpu-tflops`` and ``--gpu-bandwidth``
override its fields (or describe a GPU that is not listed, with ``--gpu custom``).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from bench.errors import UserError

GB, TB = 10**9, 10**12


@dataclass(frozen=True)
class GPU:
    name: str
    memory_bytes: int  # device memory (spec sheet capacity)
    bf16_tflops: float  # dense bf16 tensor-core peak, TFLOP/s
    bandwidth: float  # memory bandwidth, bytes/s
    overridden: tuple[str, ...] = ()  # the fields given on the command line instead of the spec sheet's

    @property
    def source(self) -> str:
        """Where the numbers come from: ``spec sheet``, ``memory as given, the rest spec sheet``, ``as given``."""
        if self.name == "custom" or len(self.overridden) == 3:
            return "as given"
        return f"{', '.join(self.overridden)} as given, the rest spec sheet" if self.overridden else "spec sheet"

    def to_dict(self) -> dict:
        return {"name": self.name, "memory_bytes": self.memory_bytes, "bf16_tflops": self.bf16_tflops,
                "bandwidth_bytes_s": self.bandwidth, "source": self.source, "overridden": list(self.overridden)}


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


def resolve(name: str | None, memory: int | None = None, tflops: float | None = None,
            bandwidth: float | None = None) -> GPU:
    """The named GPU (``None``: the default, h100-80gb) with overrides, already parsed by the flags
    (bench.flags: bytes, TFLOP/s, bytes/s); ``custom`` needs all three overrides."""
    key = "h100-80gb" if name is None else name.strip().lower()
    key = ALIASES.get(key, key)
    if key == "custom":
        if memory is None or tflops is None or bandwidth is None:
            raise UserError("--gpu custom needs --gpu-memory, --gpu-tflops and --gpu-bandwidth")
        gpu = GPU("custom", 1, 1.0, 1.0)
    elif key in GPUS:
        gpu = GPUS[key]
    else:
        raise UserError(f"unknown GPU {name!r}; valid: {', '.join(GPUS)}, custom")
    given = {"memory": memory, "TFLOP/s": tflops, "bandwidth": bandwidth}
    return replace(gpu, memory_bytes=memory if memory is not None else gpu.memory_bytes,
                   bf16_tflops=tflops if tflops is not None else gpu.bf16_tflops,
                   bandwidth=bandwidth if bandwidth is not None else gpu.bandwidth,
                   overridden=tuple(k for k, v in given.items() if v is not None))
