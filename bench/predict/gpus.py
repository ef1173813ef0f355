"""A small table of GPUs for predictions: memory, dense bf16 matmul peak, memory bandwidth.

Memory is what CUDA reports as the device's total (``cudaDeviceProp.totalGlobalMem``, torch's
``get_device_properties().total_memory``), which is less than the marketed capacity (an H100 80GB
reports about 79.2 GiB, an L40S with ECC on 44.5 GiB): the figures are those printed by torch in
public logs (MiB-rounded; a driver can differ by a few MiB), and a row without such a figure keeps
the spec sheet's capacity and says so (``memory_source``). TFLOP/s and bandwidth are the vendors'
spec sheets (dense, i.e. without 2:4 sparsity), not measurements. ``--gpu NAME`` picks a row; ``--gpu-memory``, ``--gpu-tflops`` and ``--gpu-bandwidth``
override its fields (or describe a GPU that is not listed, with ``--gpu custom``).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from bench.errors import UserError

GB, TB = 10**9, 10**12


@dataclass(frozen=True)
class GPU:
    name: str
    memory_bytes: int  # device memory as CUDA reports it (totalGlobalMem), or the spec sheet's capacity
    bf16_tflops: float  # dense bf16 tensor-core peak, TFLOP/s
    bandwidth: float  # memory bandwidth, bytes/s
    memory_source: str = "spec sheet"  # where memory_bytes comes from
    overridden: tuple[str, ...] = ()  # the fields given on the command line instead of the table's

    @property
    def source(self) -> str:
        """Where the numbers come from, e.g. ``memory: CUDA-reported (...); the rest spec sheet``,
        ``memory, TFLOP/s as given, the rest spec sheet``, ``as given``."""
        if self.name == "custom" or len(self.overridden) == 3:
            return "as given"
        if self.overridden:
            rest = "the rest spec sheet" if "memory" in self.overridden else \
                f"memory: {self.memory_source}; the rest spec sheet"
            return f"{', '.join(self.overridden)} as given, {rest}"
        return "spec sheet" if self.memory_source == "spec sheet" else \
            f"memory: {self.memory_source}; the rest spec sheet"

    def to_dict(self) -> dict:
        return {"name": self.name, "memory_bytes": self.memory_bytes, "bf16_tflops": self.bf16_tflops,
                "bandwidth_bytes_s": self.bandwidth, "source": self.source,
                "memory_source": "as given" if "memory" in self.overridden else self.memory_source,
                "overridden": list(self.overridden)}


MiB = 2**20


def _cuda(mib: int) -> str:
    return f"CUDA-reported total, {mib} MiB (torch total_memory in public logs)"



GPUS: dict[str, GPU] = {
    "h100-80gb": GPU("NVIDIA H100 80GB SXM", 81089 * MiB, 989.4, 3.35 * TB, _cuda(81089)),
    "h100-80gb-pcie": GPU("NVIDIA H100 80GB PCIe", 81008 * MiB, 756.0, 2.0 * TB, _cuda(81008)),
    "h200": GPU("NVIDIA H200 141GB SXM", 143156 * MiB, 989.4, 4.8 * TB, _cuda(143156)),
    "a100-40gb": GPU("NVIDIA A100 40GB SXM", 40536 * MiB, 312.0, 1.555 * TB,
                     "CUDA-reported total, 40536 MiB (device properties in public docs)"),
    "a100-80gb": GPU("NVIDIA A100 80GB SXM", 80 * 2**30, 312.0, 2.039 * TB),  # no CUDA-reported figure found
    "l40s": GPU("NVIDIA L40S 48GB", 45589 * MiB, 362.05, 0.864 * TB, _cuda(45589) + ", ECC on"),
    "rtx-4090": GPU("NVIDIA GeForce RTX 4090 24GB", 24563 * MiB, 165.2, 1.008 * TB, _cuda(24563)),
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
