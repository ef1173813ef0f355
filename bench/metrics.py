"""The metric catalogue: per metric of a record, how it is labelled, in which unit it is shown, how it is
formatted, which direction is better and how the regression gate treats it.

Records hold raw units (bytes, FLOPs, fractions); tables and figures show ``value * scale`` in ``unit``.
Every reader of metrics takes this from here: the tables, the figures, the report, ``compare`` and
``history`` (the gates), and the runner (which timings it summarises over the repeats).
"""

from __future__ import annotations

from dataclasses import dataclass

from bench.errors import UserError

MIB = 1024 * 1024

# gate kinds: how ``compare`` judges a metric between a baseline and a new run
TIMING = "timing"  # a ratio within --tolerance, judged on the repeats' interval
MEMORY = "memory"  # a ratio within --memory-tolerance
COUNT = "count"  # exactly equal
WORK = "work"  # exact work counters (bench.measure.work), compared between the same library versions
ACCURACY = "accuracy"  # task metrics, within --accuracy-tolerance points
NONE = "none"  # not gated
GATES = (TIMING, MEMORY, COUNT, WORK, ACCURACY, NONE)

TASK_PREFIX = "task."


@dataclass(frozen=True)
class Metric:
    key: str
    name: str  # what it is, without the unit: "peak mem"
    unit: str = ""  # the unit it is shown in: "MiB"; empty for counts and ratios
    fmt: str = ".3f"  # format spec of the shown value
    higher: bool | None = None  # higher is better; None: neither (never bolded, no Pareto direction)
    gate: str = NONE
    scale: float = 1.0  # shown value = record value * scale
    title: str | None = None  # a figure's title; the label when None
    path: tuple[str, ...] | None = None  # where the record holds it; by default looked up by key (table.field)
    per_repeat: bool = False  # measured on every repeat: the runner keeps the median and the interval

    @property
    def label(self) -> str:
        """The header or axis label, with the unit: "peak mem (MiB)"."""
        return f"{self.name} ({self.unit})" if self.unit else self.name

    def shown(self, value: float) -> float:
        """A record value in the unit shown (unscaled values keep their type: counts stay ints)."""
        return value if self.scale == 1 else value * self.scale


def _cost(key: str, name: str, unit: str, fmt: str, higher: bool | None, scale: float, *path: str) -> Metric:
    return Metric(f"cost.{key}", name, unit, fmt, higher, scale=scale, path=("metrics", "cost", *(path or (key,))))


def _work(stage: str, counter: str) -> Metric:
    unit, scale = ("MiB", 1 / MIB) if counter == "alloc_bytes" else ("", 1.0)
    name = f"{stage.replace('_', ' ')} {counter.replace('_bytes', '').replace('_', ' ')}"
    return Metric(f"work.{stage}.{counter}", name, unit, ".1f" if unit else "d", False, WORK, scale,
                  path=("metrics", "work", stage, counter))


WORK_STAGES = ("vision", "prefill", "decode_per_token")
WORK_COUNTERS = ("ops", "alloc_bytes", "host_syncs", "kernels")

_ALL = [
    # the timings of a pass, over the repeats; the gated ones first, in the order compare prints them
    Metric("prefill_tok_s", "prefill", "tok/s", ".1f", True, TIMING, title="Prefill throughput", per_repeat=True),
    Metric("decode_tok_s", "decode", "tok/s", ".1f", True, TIMING, title="Decode throughput", per_repeat=True),
    Metric("e2e_tok_s", "end-to-end", "tok/s", ".1f", True, TIMING, title="End-to-end throughput",
           per_repeat=True),
    Metric("prefill_s", "prefill", "s", ".3f", False, TIMING, title="Prefill time", per_repeat=True),
    Metric("ttft_s", "TTFT", "s", ".3f", False, TIMING, title="Time to first token", per_repeat=True),
    Metric("prefill_cpu_tok_s", "prefill per CPU second", "tok/s", ".1f", True, TIMING, per_repeat=True),
    Metric("decode_cpu_tok_s", "decode per CPU second", "tok/s", ".1f", True, TIMING, per_repeat=True),
    Metric("decode_s", "decode", "s", ".3f", False, per_repeat=True),
    Metric("prefill_cpu_s", "prefill CPU time", "s", ".3f", False, per_repeat=True),
    Metric("decode_cpu_s", "decode CPU time", "s", ".3f", False, per_repeat=True),
    # memory
    Metric("peak_mem_bytes", "peak mem", "MiB", ".1f", False, MEMORY, 1 / MIB, title="Peak memory"),
    Metric("max_frames", "max frames", "", "d", True, MEMORY, title="Max frames"),
    # token counts: a change is a change of the workload
    Metric("input_tokens", "input tokens", "", "d", None, COUNT),
    Metric("vision_tokens", "vision tokens", "", "d", None, COUNT),
    Metric("tokens_after_compression", "tokens after compression", "", "d", None, COUNT),
    Metric("compression_ratio", "compression ratio", "", ".3f", None),  # tokens_after_compression / input_tokens
    Metric("task.accuracy", "accuracy", "", ".3f", True, ACCURACY, title="Accuracy"),
    # metrics.cost (bench.measure.cost): sizes at the end of prefill, analytic FLOPs, utilisation of the peaks
    _cost("weights_bytes", "weights", "MiB", ".1f", None, 1 / MIB),
    _cost("kv_cache_bytes", "KV cache", "MiB", ".2f", False, 1 / MIB),
    _cost("ssm_state_bytes", "SSM state", "MiB", ".2f", False, 1 / MIB),
    _cost("conv_state_bytes", "conv state", "MiB", ".3f", False, 1 / MIB),
    _cost("prefill_flops", "prefill", "GFLOP", ".2f", None, 1e-9),
    _cost("decode_flops", "decode", "GFLOP", ".3f", None, 1e-9),
    _cost("prefill_flops_util", "prefill FLOP/s of peak", "%", ".1f", True, 100.0, "utilisation", "prefill_flops_util"),
    _cost("decode_bw_util", "decode bytes/s of peak", "%", ".1f", True, 100.0, "utilisation", "decode_bw_util"),
    # viperbench predict records
    Metric("predicted_peak_mem_bytes", "predicted peak mem", "MiB", ".1f", False, scale=1 / MIB),
    Metric("predicted_max_frames", "predicted max frames", "", "d", True,
           path=("metrics", "max_frames", "predicted_max_frames")),
    # viperbench stream records (kind "stream"; bench.stream): per chunk, per question, the summary
    Metric("real_time_factor", "real-time factor", "", ".3f", False, title="Processing time per second of video"),
    Metric("sustainable_fps", "sustainable fps", "fps", ".2f", True),
    Metric("memory_slope_bytes_per_s", "memory slope", "KiB/s", ".1f", False, scale=1 / 1024,
           title="Memory per second of video"),
    Metric("oom_at_s", "stream length at OOM", "s", ".0f", True),
    Metric("hours_that_fit", "hours of video that fit", "h", ".1f", True),
    Metric("device_bytes", "stream memory", "MiB", ".2f", False, scale=1 / MIB, title="KV cache + Mamba state"),
    Metric("chunk_s", "chunk time", "s", ".3f", False, title="Processing time per chunk"),
    Metric("lag_s", "lag", "s", ".3f", False),
    Metric("stream_s", "stream time", "s", ".0f", None),
    # serving records (bench.serve): vLLM measured, or its scheduler simulated
    Metric("generated_tok_s", "generated", "tok/s", ".1f", True, TIMING, title="Generated tokens/s (serving)"),
    Metric("total_tok_s", "total", "tok/s", ".1f", True, TIMING, title="Input + generated tokens/s (serving)"),
    Metric("requests_s", "requests", "req/s", ".3f", True, TIMING, title="Requests/s (serving)"),
    *(Metric(f"{m}_p{p}_s", f"{m.upper()} p{p}", "s", ".4f", False) for m in ("ttft", "tpot") for p in (50, 90, 99)),
    Metric("mean_ttft_s", "mean TTFT", "s", ".4f", False),
    Metric("mean_tpot_s", "mean TPOT", "s", ".4f", False),
    Metric("mean_running_seqs", "mean running seqs", "", ".2f", None),
    Metric("max_running_seqs", "max running seqs", "", "d", None),
    Metric("preemptions", "preemptions", "", "d", False),
    Metric("kv_pool_bytes", "KV pool", "MiB", ".1f", None, scale=1 / MIB),
    Metric("peak_kv_used_bytes", "KV used at peak", "MiB", ".1f", None, scale=1 / MIB),
    Metric("state_slot_bytes", "state slot per request", "MiB", ".2f", None, scale=1 / MIB),
    # exact work counters per stage (bench.measure.work)
    *(_work(stage, counter) for stage in WORK_STAGES for counter in WORK_COUNTERS),
]
METRICS: dict[str, Metric] = {m.key: m for m in _ALL}
assert len(METRICS) == len(_ALL) and all(m.gate in GATES for m in _ALL)

PER_REPEAT = tuple(k for k, m in METRICS.items() if m.per_repeat)


def gated(kind: str) -> dict[str, bool | None]:
    """The metrics of one gate kind, in catalogue order: key -> higher is better."""
    return {k: m.higher for k, m in METRICS.items() if m.gate == kind}


def metric(key: str) -> Metric:
    """The catalogue entry of ``key``; ``task.<name>`` metrics not listed are task scores shown as ``.4g``.
    UserError naming the known metrics if it is neither."""
    if key in METRICS:
        return METRICS[key]
    if key.startswith(TASK_PREFIX) and len(key) > len(TASK_PREFIX):
        name = key[len(TASK_PREFIX):]  # a divergence (KL) is better lower; every other task score higher
        return Metric(key, name, fmt=".4g", higher="kl" not in name.lower(), gate=ACCURACY)
    known = ", ".join([*METRICS, "task.<name>"])
    raise UserError(f"unknown metric {key!r}; known metrics: {known}")


def shown(key: str, value: float) -> float:
    """``value`` of ``key`` in the unit tables and figures show it in; unchanged for keys not in the catalogue
    (spec values such as ``frames``)."""
    return METRICS[key].shown(value) if key in METRICS else value
