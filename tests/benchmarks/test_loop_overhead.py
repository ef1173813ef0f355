"""The harness's layer loop against the library's own forward, on the same model and input.

Not part of the default test run (timings are benchmarks, not assertions). Run with::

    pytest tests/benchmarks --benchmark-only

Each test times the two forwards interleaved, round by round, and stores the median of
the per-round ratios (harness / library) in the benchmark's ``extra_info``; the
benchmark itself times the harness prefill, so ``--benchmark-autosave`` and
``--benchmark-compare`` track it across commits.
"""

from __future__ import annotations

import statistics
import time

import pytest
import torch

from architectures import ARCHITECTURES
from bench.engine.pipeline import decode_step, prefill

ROUNDS = 7


def _time(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


@pytest.fixture(scope="module", params=["transformer", "mamba", "hybrid"])
def model(request):
    torch.manual_seed(0)
    bb = ARCHITECTURES.get(request.param).build("small")
    ids = torch.randint(3, bb.config.vocab_size, (1, 2048))
    return request.param, bb, ids


def test_prefill_loop_overhead(benchmark, model):
    name, bb, ids = model

    @torch.inference_mode()
    def library():
        return bb.model(input_ids=ids, use_cache=True, logits_to_keep=1).logits

    def harness():
        return prefill(bb, bb.embed(ids))[0]

    library(), harness()  # warm-up
    ratios = []
    for _ in range(ROUNDS):
        t_lib, t_ours = _time(library), _time(harness)
        ratios.append(t_ours / t_lib)
    benchmark.group = "prefill 2048 tokens, small preset"
    benchmark.extra_info.update(arch=name, harness_over_library=statistics.median(ratios),
                                ratios=[round(r, 4) for r in ratios])
    benchmark.pedantic(harness, rounds=3, iterations=1)
    print(f"\n{name}: harness/library prefill time, median of {ROUNDS} interleaved rounds: "
          f"{statistics.median(ratios):.3f}")


def test_decode_step(benchmark, model):
    name, bb, ids = model
    logits, seq = prefill(bb, bb.embed(ids[:, :512]))
    token = logits.argmax(-1, keepdim=True)
    benchmark.group = "decode step after 512 tokens, small preset"
    benchmark.extra_info["arch"] = name
    benchmark.pedantic(lambda: decode_step(bb, token, seq), rounds=20, iterations=1, warmup_rounds=2)
