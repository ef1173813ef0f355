#!/usr/bin/env bash
# The measured vLLM-CPU runs behind results/serving/: small presets in float32 (the CPU they were measured on, an
# AVX2 AMD EPYC, has no bf16 instructions: bf16 runs emulated, about 4x slower), 1 GiB KV space, every run on one core
# (taskset -c 1, vLLM-CPU's OpenMP threads bound to that core by VLLM_CPU_OMP_THREADS_BIND, one thread), the
# other core left idle (the two share caches and memory). VIPERBENCH_VLLM_PYTHON names vLLM's interpreter
# (docs/serving.md). fit.jsonl: the shapes the efficiencies and fixed times are fitted on (throughput only: the fit
# uses the elapsed time; the long-context shape makes attention's share large enough to identify its efficiency,
# the 4-request one tells the per-step time from the per-request one); heldout.jsonl: the shapes they are
# validated on (the last two force preemption with a small pool). This VM's speed drifts by a third and more
# over tens of minutes, so the two files are measured in rounds, one fit pass and one held-out pass each, and
# both sample the same hours; a first held-out pass also measures TTFT/TPOT (vllm bench serve).
# ./measure.sh [ROUNDS]: both files written afresh, the TTFT/TPOT pass, then ROUNDS rounds (default 4);
# ./measure.sh more ROUNDS: ROUNDS more rounds appended.
set -euo pipefail
cd "$(dirname "$0")"
export VLLM_CPU_OMP_THREADS_BIND=1 OMP_NUM_THREADS=1
CORE=1
serve() { taskset -c $CORE viperbench serve --engine vllm --preset small --dtype float32 "$@"; }
fit() {  # one pass over the fit shapes
  for arch in transformer hybrid; do
    serve --arch $arch --input-len 256 --output-len 64 --num-prompts 16 --max-num-seqs 8 --latency off --output fit.jsonl
    serve --arch $arch --input-len 1024 --output-len 32 --num-prompts 8 --max-num-seqs 8 --latency off --output fit.jsonl
    serve --arch $arch --input-len 128 --output-len 256 --num-prompts 16 --max-num-seqs 16 --latency off --output fit.jsonl
    serve --arch $arch --input-len 4000 --output-len 96 --num-prompts 8 --max-num-seqs 8 --latency off --output fit.jsonl
    serve --arch $arch --input-len 128 --output-len 256 --num-prompts 4 --max-num-seqs 4 --latency off --output fit.jsonl
  done
}
heldout() {  # one pass over the held-out shapes; $1: serve (TTFT/TPOT too) or off (throughput only)
  for arch in transformer hybrid; do
    serve --arch $arch --input-len 512 --output-len 128 --num-prompts 16 --max-num-seqs 16 --latency $1 --output heldout.jsonl
    serve --arch $arch --input-len 2048 --output-len 64 --num-prompts 4 --max-num-seqs 4 --latency $1 --output heldout.jsonl
  done
  serve --arch transformer --input-len 300 --output-len 200 --num-prompts 16 --max-num-seqs 16 --kv-blocks 14 --latency $1 --output heldout.jsonl
  serve --arch hybrid --input-len 300 --output-len 200 --num-prompts 16 --max-num-seqs 16 --kv-blocks 34 --latency $1 --output heldout.jsonl
}
rounds() { for _ in $(seq "$1"); do fit; heldout off; done; }
case "${1:-4}" in
  more) rounds "${2:?more ROUNDS}" ;;
  *[!0-9]*) echo "usage: measure.sh [ROUNDS] | more ROUNDS" >&2; exit 2 ;;
  *) rm -f fit.jsonl heldout.jsonl; heldout serve; rounds "${1:-4}" ;;
esac
