"""The simulation of one serving run, vLLM's defaults per device, the KV space on a GPU, a measured record
replayed at its settings, and the calibration of the efficiencies against measured ``engine: "vllm"``
records (``serve --engine sim``; ``predict --serve-batch`` through ``bench.predict.serving``)."""

from __future__ import annotations

import os
from dataclasses import asdict, replace

import numpy as np

from bench import flags
from bench.errors import UserError
from bench.servesim.records import serving_records
from bench.spec import DTYPES
from bench.servesim.sim import KINDS, MAX_EFFICIENCY, OVERHEADS, Efficiency, Settings, Simulator, metrics

GIB = 2**30


def engine_defaults(device: str, memory_bytes: int = 0, name: str = "") -> Settings:
    """vLLM 0.32.0's defaults for an offline run (``EngineArgs._set_default_max_num_seqs_and_batched_tokens``;
    the CPU backend's block size is 128, a GPU's 16)."""
    if device == "cpu":
        return Settings(max_num_seqs=256, max_num_batched_tokens=4096, block_size=128, prefill_scan="recurrent")
    if memory_bytes >= 70 * GIB and "a100" not in name.lower():
        return Settings(max_num_seqs=1024, max_num_batched_tokens=16384, block_size=16)
    return Settings(max_num_seqs=256, max_num_batched_tokens=8192, block_size=16)


def settings_from(defaults: Settings, **given) -> Settings:
    """``defaults`` with the settings given (None: keep the default)."""
    return replace(defaults, **{k: v for k, v in given.items() if v is not None})


def kv_space(memory_bytes: int, utilization: float, weights_bytes: int, activation_bytes: int) -> int:
    """The KV pool as vLLM sizes it on a GPU: utilization x memory, less the weights and one step's
    activation peak (its profile run at the token budget)."""
    if not 0 < utilization <= 1:
        raise UserError(f"--gpu-memory-utilization {utilization} must be in (0, 1]")
    room = int(utilization * memory_bytes) - weights_bytes - activation_bytes
    if room <= 0:
        raise UserError(f"no KV space: {utilization:g} x {memory_bytes / GIB:.2f} GiB is less than the weights "
                        f"({weights_bytes / GIB:.2f} GiB) and one step's activations ({activation_bytes / GIB:.2f} GiB)")
    return room


def simulate(shape: dict, *, prompts: list[int], outputs: list[int], kv_bytes: int, peak_flops: float,
             bandwidth: float, settings: Settings, efficiency: Efficiency) -> dict:
    """The serving metrics of one simulated run (every one predicted)."""
    schedule = Simulator(shape, peak_flops, bandwidth, settings).run(prompts, outputs, kv_bytes)
    return {"predicted": True, **metrics(schedule, efficiency.check(), shape),
            "roofline_s": schedule.totals(), "settings": asdict(settings)}


def machine() -> str:
    """This machine, as a calibration names where its records were measured."""
    from bench.records import _cpu_name

    return f"{_cpu_name()} ({os.cpu_count()} cpus)"


def measured_for_calibration(records: list[dict], path: str) -> list[dict]:
    """The ``engine: "vllm"`` records of ``path`` measured on this machine; UserError if there are none."""
    measured = serving_records(records, "vllm")
    if not measured:
        raise UserError(f"--calibrate {path} holds no measured serving records (kind serving, engine vllm, ok)")
    here = machine()
    other = sorted({r.get("env", {}).get("machine") for r in measured} - {here}, key=str)
    if other:
        raise UserError(f"--calibrate {path} was measured on {other[0]}, not on this machine ({here})")
    return check_replayable(measured, "--calibrate", path, timed=True)


# what ``replay`` reads of a measured record's spec, each a positive integer
REPLAY_COUNTS = ("input_len", "output_len", "num_prompts", "max_num_seqs", "max_num_batched_tokens", "block_size")


def check_replayable(records: list[dict], flag: str, path: str, *, timed: bool = False) -> list[dict]:
    """``records``, each with what ``replay`` needs (and, if ``timed``, a positive finite elapsed time);
    UserError naming the file, the record and the field otherwise."""
    for i, r in enumerate(records, 1):
        spec, metrics_ = r.get("spec") or {}, r.get("metrics") or {}
        values = {k: (flags.positive_int, spec.get(k)) for k in REPLAY_COUNTS}
        values["kv_space_bytes"] = (flags.positive_int, spec.get("kv_space_bytes") or spec.get("kv_blocks_override"))
        if timed:
            values["elapsed_s"] = (flags.positive_float, metrics_.get("elapsed_s"))
        for name, (kind, value) in values.items():
            try:
                if isinstance(value, str):  # a record holds numbers, not text
                    raise flags.BadValue(f"expected a number, got {flags.describe(value)}")
                kind.parse(value)
            except flags.BadValue as exc:
                raise UserError(f"{flag} {path}: serving record {i} has a bad {name}: {exc}") from None
        if spec.get("dtype") not in DTYPES:
            raise UserError(f"{flag} {path}: serving record {i} has a bad dtype {spec.get('dtype')!r}; "
                            f"valid: {', '.join(DTYPES)}")
        if not spec.get("arch") or not (spec.get("preset") or spec.get("checkpoint")):
            raise UserError(f"{flag} {path}: serving record {i} names no arch, or no preset or checkpoint")
    return records


def fit(rows: list[tuple[dict, float]]) -> tuple[Efficiency, dict]:
    """Efficiencies and fixed times from ``(Schedule.totals, measured elapsed)`` pairs, by bounded linear least
    squares on the relative error: elapsed = the fixed times x their counts + sum over kinds of roofline /
    efficiency, every fixed time >= 0 and every efficiency at most ``MAX_EFFICIENCY``.
    A kind no run has work of keeps its default; a fixed time no run has a count of is 0."""
    from scipy.optimize import lsq_linear

    default = Efficiency()
    cols = [*OVERHEADS.values(), *KINDS]
    a = np.array([[t[c] for c in cols] for t, _ in rows], dtype=float)
    b = np.array([e for _, e in rows], dtype=float)
    w = 1 / b
    used = [i for i, c in enumerate(cols) if a[:, i].any()]
    lower = [0.0 if cols[i] in OVERHEADS.values() else 1 / MAX_EFFICIENCY for i in used]
    x = lsq_linear(a[:, used] * w[:, None], b * w, bounds=(lower, np.inf), method="bvls").x
    values = dict.fromkeys(cols, 0.0)
    values.update({cols[i]: v for i, v in zip(used, x)})
    eff = Efficiency(**{k: 1 / values[k] if values[k] else getattr(default, k) for k in KINDS},
                     **{name: values[count] for name, count in OVERHEADS.items()})
    predicted = a @ np.array([*(getattr(eff, name) for name in OVERHEADS), *(1 / getattr(eff, k) for k in KINDS)])
    return eff, {"runs": len(rows), "max_relative_error": float(np.max(np.abs(predicted / b - 1))),
                 "note": "bounded least squares of elapsed time, each run weighted by 1 / its elapsed time"}


def model_shape(spec) -> dict:
    """``bench.measure.cost.serving_shape`` of ``spec``'s backbone (its skeleton: no weights built)."""
    from architectures import ARCHITECTURES
    from bench.measure.cost import serving_shape

    return serving_shape(ARCHITECTURES.get(spec.arch).skeleton(spec.preset, spec.checkpoint), spec.dtype_bytes)


def cpu_peaks(dtype: str = "bfloat16") -> dict:
    """This CPU's FLOP/s in ``dtype`` and memory bandwidth (``bench.measure.cost.device_peaks``'s probe)."""
    from bench.measure.cost import device_peaks

    return device_peaks("cpu", dtype, machine())


def replay(record: dict, peaks: dict, efficiency: Efficiency | None = None) -> dict:
    """The simulation of a measured record's run, at its settings and KV space."""
    from bench.spec import make_spec

    s = record["spec"]
    values = {"arch": s["arch"], "dtype": s["dtype"], "device": "cpu", "frames": 1}
    values["preset" if s.get("preset") else "checkpoint"] = s.get("preset") or s.get("checkpoint")
    shape = model_shape(make_spec(values, {}))
    settings = settings_from(engine_defaults("cpu"), max_num_seqs=s["max_num_seqs"],
                             max_num_batched_tokens=s["max_num_batched_tokens"], block_size=s["block_size"])
    kv = s["kv_space_bytes"]
    if s.get("kv_blocks_override"):
        kv = s["kv_blocks_override"] * Simulator(shape, 1, 1, settings).block_bytes()
    n = s["num_prompts"]
    return simulate(shape, prompts=[s["input_len"]] * n, outputs=[s["output_len"]] * n, kv_bytes=kv,
                    peak_flops=peaks["flops_s"], bandwidth=peaks["bytes_s"], settings=settings,
                    efficiency=efficiency or Efficiency())


def calibrate(records: list[dict], path: str) -> tuple[Efficiency, dict]:
    """Efficiencies fitted to the measured records (read from ``path``) of this machine (``fit``), each run's
    roofline at this CPU's peaks in the run's dtype."""
    measured = measured_for_calibration(records, path)
    peaks = {d: cpu_peaks(d) for d in sorted({r["spec"]["dtype"] for r in measured})}
    eff, info = fit([(replay(r, peaks[r["spec"]["dtype"]])["roofline_s"], r["metrics"]["elapsed_s"])
                     for r in measured])
    info.update(file=path, peaks={d: {"flops_s": p["flops_s"], "bytes_s": p["bytes_s"], "source": p["source"]}
                                  for d, p in peaks.items()}, efficiency=asdict(eff))
    return eff, info


def calibrated_peaks(calibration: dict, dtype: str) -> dict:
    """The CPU peaks a calibration was fitted at for ``dtype``; UserError if none of its runs are in ``dtype``
    (an efficiency fitted in one dtype says nothing of another: bf16 may be emulated on the same CPU)."""
    peaks = calibration["peaks"]
    if dtype not in peaks:
        raise UserError(f"--calibrate {calibration['file']} was measured in {', '.join(peaks)}, not in {dtype}: "
                        f"simulate with --dtype {next(iter(peaks))}, or calibrate on {dtype} runs")
    return peaks[dtype]
