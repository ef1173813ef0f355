"""vLLM's own counters of one offline run: engine steps (``vllm:iteration_tokens_total``'s count) and preemptions
(``vllm:num_preemptions``), to set beside the simulation's ``steps`` and ``preemptions``. Run it with vLLM's
interpreter on the checkpoint ``serve --engine vllm --preset`` serves (``bench.serve.checkpoint.preset_checkpoint``,
so vLLM's compile cache is reused):

    ckpt=$(python -c "from bench.serve.checkpoint import preset_checkpoint as p; print(p('transformer', 'small', dtype='float32'))")
    VLLM_CPU_KVCACHE_SPACE=1 VLLM_CPU_OMP_THREADS_BIND=1 OMP_NUM_THREADS=1 taskset -c 1 \\
        $VIPERBENCH_VLLM_PYTHON results/serving/schedule_probe.py $ckpt 14 16 300 200 float32

(checkpoint, KV blocks (0: the KV space), requests, input and output tokens, dtype (default bfloat16); 16 sequences
at most, 4096 tokens a step, blocks of 128, prefix caching off, as ``serve --engine vllm`` runs on a CPU)."""

import sys
import time

from vllm import LLM, SamplingParams
from vllm.inputs import TokensPrompt


def main() -> None:
    model, blocks, n, isl, osl = sys.argv[1], *map(int, sys.argv[2:6])
    dtype = sys.argv[6] if len(sys.argv) > 6 else "bfloat16"
    llm = LLM(model=model, dtype=dtype, max_model_len=isl + osl, max_num_seqs=16, max_num_batched_tokens=4096,
              block_size=128, num_gpu_blocks_override=blocks or None, enable_prefix_caching=False, seed=0,
              disable_log_stats=False)
    prompts = [TokensPrompt(prompt_token_ids=[5 + (i * 7 + j) % 400 for j in range(isl)]) for i in range(n)]
    start = time.perf_counter()
    llm.generate(prompts, SamplingParams(max_tokens=osl, ignore_eos=True), use_tqdm=False)
    print(f"elapsed_s {time.perf_counter() - start:.2f}")
    for m in llm.get_metrics():
        if m.name == "vllm:iteration_tokens_total":
            print(f"steps {m.count} tokens {m.sum:.0f}")
        elif m.name == "vllm:num_preemptions":
            print(f"preemptions {m.value}")


if __name__ == "__main__":
    main()
