"""Hand-made records shaped like the runner's and the max-frames search's, for table/plot/report tests."""

from __future__ import annotations

from bench.metrics import MIB


def make_record(arch="hybrid", frames=64, status="ok", compressor="none", prefill_chunk=2048, accuracy=None,
                **metrics):
    """A cell record like the runner writes; throughput falls and memory grows with frames."""
    n = frames or 64
    tokens = 1 + 16 * n + 64
    values = {
        "input_tokens": tokens,
        "vision_tokens": 16 * n,
        "tokens_after_compression": tokens,
        "prefill_tok_s": 100_000 / (n ** 0.5),
        "decode_tok_s": 90.0,
        "ttft_s": n / 1000,
        "peak_mem_bytes": (50 + n // 8) * MIB,
    }
    values.update(metrics)
    if status != "ok":
        values = {}
    return {
        "schema": 1, "status": status, "error": None if status == "ok" else f"{status}: boom",
        "spec": {"arch": arch, "preset": "small", "checkpoint": None, "compressor": compressor, "frames": frames,
                 "tokens_per_frame": 16, "prompt_tokens": 64, "new_tokens": 16, "batch": 1, "vision": "synthetic",
                 "device": "cpu", "dtype": "float32", "task": "synthetic", "prefill_chunk": prefill_chunk,
                 "memory_budget": None, "warmup": 1, "repeats": 2, "seed": 0},
        "env": {"device_name": "test cpu", "commit": "abc123"},
        "metrics": values,
        "task": {"name": "synthetic", "metrics": {} if accuracy is None else {"accuracy": accuracy}, "n": 10},
    }


def make_search(arch="hybrid", max_frames=2048, budget=128 * MIB, prefill_chunk=2048, compressor="none",
                status="ok"):
    """A max-frames record: frames null, max_frames and probes in metrics."""
    record = make_record(arch, None, compressor=compressor, prefill_chunk=prefill_chunk)
    record["spec"]["memory_budget"] = budget
    probes = [{"frames": f, "status": "ok", "peak_mem_bytes": f * 50_000, "prefill_s": 0.1, "error": None}
              for f in (16, 32, 64)]
    probes.append({"frames": 128, "status": "oom", "peak_mem_bytes": None, "prefill_s": None, "error": "OOM"})
    record.update(status=status, kind="maxframes",
                  metrics={"max_frames": max_frames, "first_oom_frames": max_frames * 2, "probes": probes,
                           "peak_mem_bytes": 100 * MIB})
    return record
