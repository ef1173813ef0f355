"""CellSpec: everything that defines one measured cell, validated up front."""

from __future__ import annotations

import inspect
import re
from dataclasses import asdict, dataclass, fields
from typing import Any

from bench import flags
from bench.errors import UserError

DTYPES = ("float32", "bfloat16", "float16")
VISIONS = ("synthetic", "siglip")
LOGITS = ("last", "all")
DEFAULT_DECODER = "pyav"  # = tasks.video.DEFAULT_DECODER (that module imports torch; this one must not)


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
    decoder: str = DEFAULT_DECODER  # video decoder for tasks that decode videos (tasks.video.DECODERS)
    logits: str = "last"  # the prefill's LM head: the last position, or every position (the library's forward)
    logits_dtype: str | None = None  # with logits "all": None = the head's dtype, "float32" = an upcast
    frame_batch: int | None = None  # frames through the tower at once (None: VisionSide's 32, a family's whole video)

    @property
    def resolved_dtype(self) -> str:
        return self.dtype or ("float32" if self.device == "cpu" else "bfloat16")

    @property
    def dtype_bytes(self) -> int:
        """Bytes per element of the model dtype (weights, activations, KV cache)."""
        return {"float32": 4, "bfloat16": 2, "float16": 2}[self.resolved_dtype]

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["dtype"] = self.resolved_dtype
        if d["decoder"] == DEFAULT_DECODER:  # the default leaves the record's spec (and its key) as it was before
            del d["decoder"]
        if d["logits"] == "last" and d["logits_dtype"] is None:  # likewise
            del d["logits"], d["logits_dtype"]
        if d["frame_batch"] is None:  # likewise
            del d["frame_batch"]
        return d

    def key(self) -> tuple:
        """Identity of the cell, for --resume and for matching records."""
        return spec_key(self.to_dict())

    def replace(self, **changes) -> "CellSpec":
        return make_spec({**asdict(self), **changes})


def spec_key(spec: dict) -> tuple:
    """The identity of a cell given as a dict (a record's ``spec``): its settings, sorted."""
    return tuple(sorted((k, v) for k, v in spec.items()))


FIELDS = {f.name: f for f in fields(CellSpec)}
TEXT = ("arch", "preset", "checkpoint", "compressor", "vision", "device", "dtype", "task", "decoder", "logits",
        "logits_dtype")
# the domain of every numeric setting: the same parsers as the numeric flags (bench.flags)
NUMBERS = {"frames": flags.positive_int, "tokens_per_frame": flags.positive_int,
           "prompt_tokens": flags.positive_int, "new_tokens": flags.positive_int, "batch": flags.positive_int,
           "prefill_chunk": flags.positive_int, "memory_budget": flags.positive_size,
           "warmup": flags.nonnegative_int, "repeats": flags.positive_int, "seed": flags.seed,
           "frame_batch": flags.positive_int}
OPTIONAL = ("arch", "preset", "checkpoint", "dtype", "prefill_chunk", "memory_budget", "logits_dtype", "frame_batch")  # may be None
assert set(TEXT) | set(NUMBERS) == set(FIELDS)


def typed(name: str, value: Any, label: str | None = None) -> Any:
    """One setting, checked for type and domain: the one place every cell value (flag, TOML, JSON) passes.
    ``label`` is how the user wrote the setting (``--frames``); the field name by default."""
    label = label or name
    if value is None and name in OPTIONAL:
        return None
    if name in NUMBERS:
        try:
            return NUMBERS[name].parse(value)
        except flags.BadValue as exc:
            raise UserError(f"{label}: {exc}") from None
    if not isinstance(value, str):
        raise UserError(f"{label}: expected a string, got {flags.describe(value)}")
    return value


def make_spec(values: dict[str, Any], labels: dict[str, str] | None = None) -> CellSpec:
    """Build and validate a CellSpec from loosely typed values (CLI strings, TOML, JSON).

    Every value's type and domain is checked first (``typed``), before any plugin sees it;
    ``labels`` maps settings to the flags they came from, for the error line."""
    unknown = sorted(set(values) - set(FIELDS))
    if unknown:
        raise UserError(f"unknown cell setting {unknown[0]!r}; valid: {', '.join(FIELDS)}")
    labels = labels or {}
    v = {name: typed(name, value, labels.get(name)) for name, value in values.items()}
    if (not v.get("arch") or v.get("arch") == "auto") and v.get("checkpoint"):
        from architectures.families import detect

        v["arch"] = detect(v["checkpoint"])  # from config.json's model_type
    if "arch" not in v or not v["arch"]:
        raise UserError("a cell needs an arch (--arch, or --checkpoint to detect it)")
    spec = CellSpec(**v)
    _validate(spec)
    return spec


def _validate(s: CellSpec) -> None:
    from architectures import ARCHITECTURES
    from compressors.base import make_compressor
    from tasks import TASKS
    from tasks.base import LENGTHS
    from tasks.video import check_decoder_name, get_decoder

    if s.vision not in VISIONS:
        raise UserError(f"unknown vision {s.vision!r}; valid: {', '.join(VISIONS)}")
    if s.dtype is not None and s.dtype not in DTYPES:
        raise UserError(f"unknown dtype {s.dtype!r}; valid: {', '.join(DTYPES)}")
    if s.logits not in LOGITS:
        raise UserError(f"unknown --logits {s.logits!r}; valid: {', '.join(LOGITS)}")
    if s.logits_dtype is not None and s.logits_dtype not in DTYPES:
        raise UserError(f"unknown --logits-dtype {s.logits_dtype!r}; valid: {', '.join(DTYPES)}")
    if s.logits_dtype is not None and s.logits != "all":
        raise UserError("--logits-dtype sets the dtype of every position's logits: it needs --logits all")
    if not re.fullmatch(r"cpu|cuda(:\d+)?", s.device):
        raise UserError(f"unknown device {s.device!r}; valid: cpu, cuda, cuda:N")
    arch = ARCHITECTURES.get(s.arch)
    if s.frame_batch is not None and s.vision != "siglip" and not arch.takes_frames:
        raise UserError("--frame-batch sets how many frames go through the vision tower at once: it needs --vision "
                        "siglip or a real video LLM (its own tower)")
    if not s.checkpoint and s.preset not in arch.presets:
        raise UserError(f"unknown preset {s.preset!r} for {s.arch}; valid: {', '.join(arch.presets)}")
    if arch.takes_frames and s.batch != 1:
        raise UserError(f"{s.arch} runs one video per batch (its processor's layout); got batch {s.batch}")
    skeleton = arch.skeleton(s.preset, s.checkpoint)
    if s.logits == "all" and "dtype" not in inspect.signature(skeleton.logits).parameters:
        raise UserError(f"--logits all: {s.arch}'s logits({inspect.signature(skeleton.logits)}) takes no dtype; "
                        "it computes the last position only")
    compressor = make_compressor(s.compressor)
    skeleton.check_compressor(compressor)
    compressor.check(skeleton)
    task = TASKS.get(s.task)
    check_decoder_name(s.decoder)
    if getattr(task, "kind", None) != LENGTHS:
        get_decoder(s.decoder)  # a task that decodes videos: the decoder must import here, before anything runs


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
