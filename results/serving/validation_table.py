"""Print the validation table of the simulated vLLM against the measured one, from the committed files.

    viperbench serve --engine sim --calibrate results/serving/fit.jsonl --replay results/serving/heldout.jsonl \
        --output results/serving/sim-heldout.jsonl
    python results/serving/validation_table.py

fit.jsonl: the measured runs the efficiencies are fitted on; heldout.jsonl: runs not used for fitting, in passes
(TTFT/TPOT measured by vllm bench serve in one of them, tok/s by vllm bench throughput in each; a pass runs every
shape once, so the k-th run of two shapes were measured minutes apart). Three tables:

- generated tok/s: the passes' median with its bootstrap 95% interval (bench.stats.median_ci), their range, the
  simulation and its error against the median;
- the hybrid/Transformer ratio: of the medians (bench.stats.ratio_ci), and paired within each pass (the geometric
  mean of the per-pass ratios with a t interval, bench.stats.paired_ratio_ci: the VM's slow drift in speed
  cancels within a pass), against the simulated ratio;
- TTFT/TPOT (measured / simulated, error).
"""

import statistics
import sys

from bench.reporting.table import load_records
from bench.reporting.values import field
from bench.stats import median_ci, paired_ratio_ci, ratio_ci

files = sys.argv[1:] or ["results/serving/heldout.jsonl", "results/serving/sim-heldout.jsonl"]
KEYS = ("arch", "input_len", "output_len", "num_prompts", "max_num_seqs", "kv_blocks_override")
by_key: dict[tuple, dict[str, dict]] = {}
passes: dict[tuple, list[float]] = {}  # a shape's measured generated tok/s, one per pass, in pass order
for r in load_records(files):
    if r.get("kind") == "serving" and r.get("status") == "ok":
        key = tuple(field(r, k) for k in KEYS)
        if r["engine"] == "vllm":
            passes.setdefault(key, []).append(field(r, "generated_tok_s"))
            if field(r, "ttft_p50_s") is None and "vllm" in by_key.get(key, {}):
                continue  # keep the pass that measured TTFT/TPOT for the latency table
        by_key.setdefault(key, {})[r["engine"]] = r


def cells(key) -> str:
    return " | ".join("-" if v is None else str(v) for v in key)


print("| arch | input | output | prompts | max seqs | KV blocks | passes | measured range | measured median "
      "[95% interval] | simulated | error | simulated preemptions |")
print("|---|---|---|---|---|---|---|---|---|---|---|---|")
ratios = {}
for key, runs in by_key.items():
    if {"vllm", "sim"} - set(runs):
        continue
    values = passes[key]
    measured, simulated = statistics.median(values), field(runs["sim"], "generated_tok_s")
    low, high = median_ci(values)
    ratios.setdefault(key[1:], {})[key[0]] = (values, simulated)
    print(f"| {cells(key)} | {len(values)} | {min(values):.1f}-{max(values):.1f} | {measured:.1f} "
          f"[{low:.1f}, {high:.1f}] | {simulated:.1f} | {simulated / measured - 1:+.1%} "
          f"| {field(runs['sim'], 'preemptions')} |")
print()
print("| input | output | prompts | max seqs | KV blocks | hybrid / Transformer: of the medians [95%] | paired "
      "per pass [95%] | simulated | error vs medians | error vs paired |")
print("|---|---|---|---|---|---|---|---|---|---|")
for key, archs in ratios.items():
    if {"hybrid", "transformer"} <= set(archs):
        (h, sim_h), (t, sim_t) = archs["hybrid"], archs["transformer"]
        m, m_low, m_high = ratio_ci(h, t)
        paired = paired_ratio_ci([a / b for a, b in zip(h, t)]) if len(h) == len(t) else None
        s = sim_h / sim_t
        print(f"| {cells(key)} | {m:.3f} [{m_low:.3f}, {m_high:.3f}] "
              f"| {'-' if paired is None else '%.3f [%.3f, %.3f]' % paired} | {s:.3f} | {s / m - 1:+.1%} "
              f"| {'-' if paired is None else f'{s / paired[0] - 1:+.1%}'} |")
print()
print("| arch | input | output | prompts | max seqs | KV blocks | TTFT mean (s) | TTFT p50 | TTFT p99 "
      "| TPOT mean (ms) | TPOT p50 | TPOT p99 |")
print("|---|---|---|---|---|---|---|---|---|---|---|---|")
for key, runs in by_key.items():
    if {"vllm", "sim"} - set(runs) or field(runs["vllm"], "ttft_p50_s") is None:
        continue
    out = []
    for name, scale, fmt in (("ttft", 1, ".3f"), ("tpot", 1e3, ".1f")):
        for stat in (f"mean_{name}_s", f"{name}_p50_s", f"{name}_p99_s"):
            m, s_ = field(runs["vllm"], stat), field(runs["sim"], stat)
            out.append(f"{m * scale:{fmt}} / {s_ * scale:{fmt}} ({s_ / m - 1:+.0%})")
    print(f"| {cells(key)} | {' | '.join(out)} |")
