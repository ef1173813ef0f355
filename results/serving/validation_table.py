"""Print the validation table of the simulated vLLM against the measured one, from the committed files.

    viperbench serve --engine sim --calibrate results/serving/fit.jsonl --replay results/serving/heldout.jsonl \
        --output results/serving/sim-heldout.jsonl
    python results/serving/validation_table.py

fit.jsonl: the measured runs the efficiencies are fitted on; heldout.jsonl: runs not used for fitting (their
TTFT/TPOT measured by vllm bench serve, their tok/s by vllm bench throughput). Three tables: generated tok/s,
the hybrid/Transformer ratio, and TTFT/TPOT (measured / simulated, error).
"""

import sys

from bench.reporting.table import load_records
from bench.reporting.values import field

files = sys.argv[1:] or ["results/serving/heldout.jsonl", "results/serving/sim-heldout.jsonl"]
KEYS = ("arch", "input_len", "output_len", "num_prompts", "max_num_seqs", "kv_blocks_override")
by_key: dict[tuple, dict[str, dict]] = {}
for r in load_records(files):
    if r.get("kind") == "serving" and r.get("status") == "ok":
        by_key.setdefault(tuple(field(r, k) for k in KEYS), {})[r["engine"]] = r
print("| arch | input | output | prompts | max seqs | KV blocks | measured gen tok/s | simulated gen tok/s | error "
      "| simulated preemptions |")
print("|---|---|---|---|---|---|---|---|---|---|")
ratios = {}
for key, runs in by_key.items():
    if {"vllm", "sim"} - set(runs):
        continue
    measured, simulated = field(runs["vllm"], "generated_tok_s"), field(runs["sim"], "generated_tok_s")
    ratios.setdefault(key[1:], {})[key[0]] = (measured, simulated)
    print(f"| {' | '.join('-' if v is None else str(v) for v in key)} | {measured:.1f} | {simulated:.1f} "
          f"| {simulated / measured - 1:+.1%} | {field(runs['sim'], 'preemptions')} |")
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
