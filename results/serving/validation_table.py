"""Print the validation table of the simulated vLLM against the measured one, from the committed files.

    viperbench serve --engine sim --calibrate results/serving/fit.jsonl --replay results/serving/heldout.jsonl \
        --output results/serving/sim-heldout.jsonl
    python results/serving/validation_table.py

fit.jsonl: the measured runs the efficiencies are fitted on; heldout.jsonl: runs not used for fitting, in passes
(TTFT/TPOT measured by vllm bench serve in one of them, tok/s by vllm bench throughput in each). Three tables:
generated tok/s (each pass, their median, the simulation's error against the median), the hybrid/Transformer
ratio of the medians, and TTFT/TPOT (measured / simulated, error).
"""

import statistics
import sys

from bench.reporting.table import load_records
from bench.reporting.values import field

files = sys.argv[1:] or ["results/serving/heldout.jsonl", "results/serving/sim-heldout.jsonl"]
KEYS = ("arch", "input_len", "output_len", "num_prompts", "max_num_seqs", "kv_blocks_override")
by_key: dict[tuple, dict[str, dict]] = {}
passes: dict[tuple, list[float]] = {}  # a shape's measured generated tok/s, one per pass
for r in load_records(files):
    if r.get("kind") == "serving" and r.get("status") == "ok":
        key = tuple(field(r, k) for k in KEYS)
        if r["engine"] == "vllm":
            passes.setdefault(key, []).append(field(r, "generated_tok_s"))
            if field(r, "ttft_p50_s") is None and "vllm" in by_key.get(key, {}):
                continue  # keep the pass that measured TTFT/TPOT for the latency table
        by_key.setdefault(key, {})[r["engine"]] = r
print("| arch | input | output | prompts | max seqs | KV blocks | measured gen tok/s (passes) | measured median "
      "| simulated gen tok/s | error | simulated preemptions |")
print("|---|---|---|---|---|---|---|---|---|---|---|")
ratios = {}
for key, runs in by_key.items():
    if {"vllm", "sim"} - set(runs):
        continue
    measured, simulated = statistics.median(passes[key]), field(runs["sim"], "generated_tok_s")
    ratios.setdefault(key[1:], {})[key[0]] = (measured, simulated)
    print(f"| {' | '.join('-' if v is None else str(v) for v in key)} | {', '.join(f'{v:.1f}' for v in passes[key])} "
          f"| {measured:.1f} | {simulated:.1f} | {simulated / measured - 1:+.1%} | {field(runs['sim'], 'preemptions')} |")
print()
print("| input | output | prompts | max seqs | KV blocks | measured hybrid / Transformer | simulated | error |")
print("|---|---|---|---|---|---|---|---|")
for key, archs in ratios.items():
    if {"hybrid", "transformer"} <= set(archs):
        m = archs["hybrid"][0] / archs["transformer"][0]
        s = archs["hybrid"][1] / archs["transformer"][1]
        print(f"| {' | '.join('-' if v is None else str(v) for v in key)} | {m:.3f} | {s:.3f} | {s / m - 1:+.1%} |")
print()
print("| arch | input | output | prompts | max seqs | KV blocks | TTFT mean (s) | TTFT p50 | TTFT p99 "
      "| TPOT mean (ms) | TPOT p50 | TPOT p99 |")
print("|---|---|---|---|---|---|---|---|---|---|---|---|")
for key, runs in by_key.items():
    if {"vllm", "sim"} - set(runs) or field(runs["vllm"], "ttft_p50_s") is None:
        continue
    cells = []
    for name, scale, fmt in (("ttft", 1, ".3f"), ("tpot", 1e3, ".1f")):
        for stat in (f"mean_{name}_s", f"{name}_p50_s", f"{name}_p99_s"):
            m, s_ = field(runs["vllm"], stat), field(runs["sim"], stat)
            cells.append(f"{m * scale:{fmt}} / {s_ * scale:{fmt}} ({s_ / m - 1:+.0%})")
    print(f"| {' | '.join('-' if v is None else str(v) for v in key)} | {' | '.join(cells)} |")
