"""The GPU tables of docs/serving.md: every number predicted by the simulated vLLM (serve --engine sim).

    python results/serving/gpu_tables.py          # writes results/serving/gpu.jsonl, prints the tables
"""

import json
import os
import sys

from bench.cli import main

OUT = "results/serving/gpu.jsonl"
PAPER = ["--preset", "paper", "--output-len", "1024", "--num-prompts", "32"]
TRANSV = {"hybrid": "transv:schedule=uni_7_0.5-attn_39_0.9", "transformer": "transv:schedule=uni_5_0.5-attn_25_0.9"}
GPUS = ("h100", "h200", "a100-80gb")
A10G = ["--gpu", "custom", "--gpu-memory", "22GiB", "--gpu-bandwidth", "600GB/s", "--gpu-tflops", "70"]
SENSITIVITY = {"defaults": [], "attention 25%": ["--efficiency", "attention=0.25"],
               "attention 100%": ["--efficiency", "attention=1.0"], "GEMM 40%": ["--efficiency", "gemm=0.4"],
               "step overhead 20 ms": ["--step-overhead", "0.02"], "utilization 0.5": ["--gpu-memory-utilization", "0.5"],
               "token budget 2048": ["--max-num-batched-tokens", "2048"],
               "max-num-seqs 8": ["--max-num-seqs", "8"]}


def serve(label: str, argv: list[str]) -> list[dict]:
    path = f"{OUT}.part"
    if os.path.exists(path):
        os.remove(path)
    quiet, sys.stderr = sys.stderr, open(os.devnull, "w")  # serve's own lines are not the tables
    try:
        code = main(["serve", "--engine", "sim", *argv, "--output", path, "--json"])
    finally:
        sys.stderr = quiet
    if code != 0:
        sys.exit(f"{label}: serve failed")
    records = [json.loads(line) for line in open(path)]
    os.remove(path)
    with open(OUT, "a") as f:
        for r in records:
            r["table"] = label
            f.write(json.dumps(r) + "\n")
    return records


def row(r: dict) -> str:
    m = r["metrics"]
    return (f"{m['generated_tok_s']:,.0f} | {m['mean_running_seqs']:.1f} | {m['preemptions']} | "
            f"{m['ttft_p50_s']:.1f} | {m['tpot_p50_s'] * 1e3:.1f}")


if os.path.exists(OUT):
    os.remove(OUT)
sys.stdout = open(os.devnull, "w")  # the tables below go to stderr; serve's own output is not wanted
out = sys.stderr
print("### 32k input / 1k output, 32 requests\n", file=out)
print("| GPU | backbone | compressor | request tokens | generated tok/s | mean running | preemptions | TTFT p50 (s) "
      "| TPOT p50 (ms) | over Transformer |", file=out)
print("|---|---|---|---|---|---|---|---|---|---|", file=out)
for gpu in GPUS:
    base = {r["spec"]["arch"]: r for r in serve(f"paper {gpu}", ["--arch", "transformer,hybrid,mamba", "--input-len",
                                                                  "32768", "--gpu", gpu, *PAPER])}
    ref = base["transformer"]["metrics"]["generated_tok_s"]
    for arch, r in base.items():
        print(f"| {gpu} | {arch} | none | 32768 | {row(r)} | {r['metrics']['generated_tok_s'] / ref:.2f}x |", file=out)
    for arch, spec in TRANSV.items():
        (r,) = serve(f"paper {gpu} transv", ["--arch", arch, "--frames", "2044", "--prompt-tokens", "63",
                                             "--compressor", spec, "--gpu", gpu, *PAPER])
        print(f"| {gpu} | {arch} | {spec} | {r['spec']['input_len']} | {row(r)} | "
              f"{r['metrics']['generated_tok_s'] / ref:.2f}x |", file=out)
print("\n### Memory-bound: 8k input / 16k output, 64 requests\n", file=out)
print("| GPU | backbone | generated tok/s | mean running | preemptions | TTFT p50 (s) | TPOT p50 (ms) "
      "| over Transformer |", file=out)
print("|---|---|---|---|---|---|---|---|", file=out)
for name, gpu in (("rtx-4090 (24 GiB)", ["--gpu", "rtx-4090"]), ("22 GiB, 600 GB/s, 70 TFLOP/s", A10G)):
    rs = {r["spec"]["arch"]: r for r in serve(f"memory-bound {name}", ["--arch", "transformer,hybrid,mamba",
          "--preset", "paper", "--input-len", "8192", "--output-len", "16384", "--num-prompts", "64", *gpu])}
    ref = rs["transformer"]["metrics"]["generated_tok_s"]
    for arch, r in rs.items():
        print(f"| {name} | {arch} | {row(r)} | {r['metrics']['generated_tok_s'] / ref:.2f}x |", file=out)
print("\n### What moves the 32k/1k hybrid / Transformer ratio (H100)\n", file=out)
print("| assumption | Transformer tok/s | hybrid tok/s | hybrid / Transformer |", file=out)
print("|---|---|---|---|", file=out)
for label, extra in SENSITIVITY.items():
    rs = {r["spec"]["arch"]: r for r in serve(f"sensitivity {label}", ["--arch", "transformer,hybrid", "--input-len",
                                                                        "32768", "--gpu", "h100", *PAPER, *extra])}
    t, h = (rs[a]["metrics"]["generated_tok_s"] for a in ("transformer", "hybrid"))
    print(f"| {label} | {t:,.0f} | {h:,.0f} | {h / t:.2f}x |", file=out)
