"""CellSpec: everything that defines one measured cell, validated up front."""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, fields
from typing import Any

from bench.errors import UserError

DTYPES = ("float32", "bfloat16", "float16")
VISIONS = ("synthetic", "siglip")
_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
          "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}


def parse_bytes(text: str | int | None) -> int | None:
    """``"8GiB"``, ``"512MiB"``, ``"1.5GB"`` or a plain number of bytes."""
    if text is None:
        return None
    if isinstance(text, bool) or not isinstance(text, (int, str)):
        raise UserError(f"malformed memory size {text!r}: expected e.g. 512MiB, 8GiB, 2GB")
    if isinstance(text, int):
        if text <= 0:
            raise UserError(f"memory size must be positive: {text!r}")
        return text
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*", str(text))
    if not m or m.group(2).lower() not in _UNITS:
        raise UserError(f"malformed memory size {text!r}: expected e.g. 512MiB, 8GiB, 2GB")
    value = int(float(m.group(1)) * _UNITS[m.group(2).lower()])
    if value <= 0:
        raise UserError(f"memory size must be positive: {text!r}")
    return value


@dataclass(frozen=True)
class CellSpec:
    arch: str
    preset: str | None = "tiny"
    checkpoint: str | None = None
    compressor: str = "none"
    frames: int = 64
    tokens_per_frame: int = 16
    prompt_tokens: int = 64
    new_tokens: int = 32
    batch: int = 1
    vision: str = "synthetic"
    device: str = "cpu"
    dtype: str | None = None  # default: float32 on cpu, bfloat16 on cuda
    task: str = "synthetic"
    prefill_chunk: int | None = None
    memory_budget: int | None = None  # bytes; a peak above it counts as OOM
    warmup: int = 1
    repeats: int = 3
    seed: int = 0

    @property
    def resolved_dtype(self) -> str:
        return self.dtype or ("float32" if self.device == "cpu" else "bfloat16")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["dtype"] = self.resolved_dtype
        return d

    def key(self) -> tuple:
        """Identity of the cell, for --resume and for matching records."""
        from bench.records import spec_key

        return spec_key(self.to_dict())

    def replace(self, **changes) -> "CellSpec":
        return make_spec({**asdict(self), **changes})


FIELDS = {f.name: f for f in fields(CellSpec)}
_INT_FIELDS = ("frames", "tokens_per_frame", "prompt_tokens", "new_tokens", "batch", "prefill_chunk",
               "warmup", "repeats", "seed", "memory_budget")


def make_spec(values: dict[str, Any]) -> CellSpec:
    """Build and validate a CellSpec from loosely typed values (CLI strings, TOML)."""
    unknown = sorted(set(values) - set(FIELDS))
    if unknown:
        raise UserError(f"unknown cell setting {unknown[0]!r}; valid: {', '.join(FIELDS)}")
    if "arch" not in values or not values["arch"]:
        raise UserError("a cell needs an arch (--arch)")
    v = dict(values)
    if v.get("memory_budget") is not None:
        v["memory_budget"] = parse_bytes(v["memory_budget"])
    for name in _INT_FIELDS:
        if isinstance(v.get(name), bool):
            raise UserError(f"{name} must be an integer, got {v[name]!r}")
        if v.get(name) is not None and not isinstance(v[name], int):
            try:
                v[name] = int(str(v[name]))
            except ValueError:
                raise UserError(f"{name} must be an integer, got {v[name]!r}") from None
    spec = CellSpec(**v)
    _validate(spec)
    return spec


def _validate(s: CellSpec) -> None:
    from architectures import ARCHITECTURES
    from compressors.base import make_compressor
    from tasks import TASKS

    for name in ("frames", "tokens_per_frame", "prompt_tokens", "new_tokens", "batch", "repeats"):
        if getattr(s, name) <= 0:
            raise UserError(f"{name} must be positive, got {getattr(s, name)}")
    if s.warmup < 0:
        raise UserError(f"warmup must be >= 0, got {s.warmup}")
    if s.prefill_chunk is not None and s.prefill_chunk <= 0:
        raise UserError(f"prefill_chunk must be positive, got {s.prefill_chunk}")
    if s.vision not in VISIONS:
        raise UserError(f"unknown vision {s.vision!r}; valid: {', '.join(VISIONS)}")
    if s.dtype is not None and s.dtype not in DTYPES:
        raise UserError(f"unknown dtype {s.dtype!r}; valid: {', '.join(DTYPES)}")
    if not re.fullmatch(r"cpu|cuda(:\d+)?", s.device):
        raise UserError(f"unknown device {s.device!r}; valid: cpu, cuda, cuda:N")
    arch = ARCHITECTURES.get(s.arch)
    if not s.checkpoint and s.preset not in arch.presets:
        raise UserError(f"unknown preset {s.preset!r} for {s.arch}; valid: {', '.join(arch.presets)}")
    make_compressor(s.compressor).check(arch.skeleton(s.preset, s.checkpoint))
    TASKS.get(s.task)


def check_device(spec: CellSpec) -> None:
    """Bad input, before anything runs: a CUDA cell where torch sees no CUDA device."""
    if not spec.device.startswith("cuda"):
        return
    import torch

    if not torch.cuda.is_available():
        why = "is a CPU-only build" if torch.version.cuda is None else "sees no CUDA device"
        raise UserError(f"--device {spec.device}: torch {torch.__version__} {why}")
    index = torch.device(spec.device).index
    if index is not None and index >= torch.cuda.device_count():
        raise UserError(f"--device {spec.device}: only {torch.cuda.device_count()} CUDA device(s) visible")


def check_runnable(spec: CellSpec) -> None:
    """Bad input for run/matrix/maxframes: no CUDA for a CUDA cell, or an accuracy task (that is ``eval``)."""
    from tasks import TASKS
    from tasks.base import LENGTHS

    check_device(spec)
    if getattr(TASKS.get(spec.task), "kind", None) != LENGTHS:
        raise UserError(f"task {spec.task!r} is scored on data: use `viperbench eval --task {spec.task} --data DIR`")
