"""``viperbench predict``: memory, fit, max frames and roofline speed of a cell on a named GPU, from a CPU.

- **Peak allocated memory** (``bench.predict.fake_pass``): one pass of the cell on fake tensors, with
  the GPU kernels' allocation patterns (``bench.predict.gpu_kernels``). This is what
  ``torch.cuda.max_memory_allocated`` would report, split into weights, KV cache, SSM/conv
  state, compressor parameters and activations (the rest, at the peak).
- **Fit**: the peak against the GPU's memory less two stated margins that torch's
  allocated counter does not see: the CUDA context, driver reservation and library
  workspaces (``context_margin``, a fixed amount), and the caching allocator's
  fragmentation (``allocator_margin``, a fraction of what is left).
- **Max frames**: ``bench.measure.maxframes.search`` with predictions as its probes. It starts
  from a linear fit of two predictions (peak memory grows linearly with the frame count on
  the GPU path) and confirms around it.
- **Roofline**: analytic FLOPs and bytes (``bench.measure.cost``) over the GPU's dense bf16 peak and
  bandwidth: lower bounds on prefill and decode time.
- **Serving** (``predict --serve-batch``) is not here: the CLI asks the serving simulation
  (``bench.serve``, vLLM's scheduler) with this prediction's tokens after compression.

Every number is a prediction and is labelled so, in the record and in the printout.
"""

from __future__ import annotations

import time

from bench.measure.cost import account, roofline, weights_read_per_step
from bench.errors import UserError
from bench.predict.gpus import GPU
from bench.records import environment, make_record

GIB = 2**30
DEFAULT_CONTEXT_MARGIN = int(1.5 * GIB)
DEFAULT_ALLOCATOR_MARGIN = 0.05


def budget_bytes(gpu: GPU, context_margin: int, allocator_margin: float) -> int:
    """What torch may allocate on ``gpu``: memory less the context margin, less the allocator's share."""
    return int((gpu.memory_bytes - context_margin) * (1 - allocator_margin))


class Predictor:
    """Predictions of one cell's peak at any frame count, memoised (the max-frames search reuses them)."""

    def __init__(self, spec, *, target: str, mamba: str, budget: int):
        self.spec, self.target, self.mamba, self.budget = spec, target, mamba, budget
        self.results: dict[int, dict] = {}

    def __call__(self, frames: int) -> dict:
        if frames not in self.results:
            from bench.predict.fake_pass import predict_pass

            self.results[frames] = predict_pass(self.spec.replace(frames=frames), target=self.target,
                                                mamba=self.mamba)
        return self.results[frames]

    def probe(self, spec) -> dict:
        """A max-frames probe answered by a prediction."""
        peak = self(spec.frames)["peak_bytes"]
        return {"frames": spec.frames, "status": "ok" if peak <= self.budget else "oom",
                "predicted_peak_mem_bytes": peak, "peak_mem_bytes": peak, "prefill_s": None, "error": None}

    def linear_estimate(self, frames: int, budget: int | None = None) -> int:
        """Frames where the predicted peak meets ``budget`` (default: the budget), from a line through the
        predictions at ``frames`` and half of it."""
        budget = self.budget if budget is None else budget
        f1 = frames
        f2 = max(1, frames // 2) if frames > 1 else 2
        p1, p2 = self(f1)["peak_bytes"], self(f2)["peak_bytes"]
        slope = (p1 - p2) / (f1 - f2)
        if slope <= 0:
            return f1
        return max(1, int(f1 + (budget - p1) / slope))

    def coarse_estimate(self, frames: int, limit: int = 1 << 20) -> int:
        """Max frames from two line fits: through ``frames`` and half of it, then through that first
        estimate and half of it, where the peak is measured near the answer. Four predictions; a search
        that calibrates on a real probe and confirms around it needs no finer estimate."""
        first = min(self.linear_estimate(frames), limit)
        return min(self.linear_estimate(first), limit)

    def calibrate(self, probe: dict) -> int:
        """A new estimate after a real probe that fit: the predictions rescaled by measured / predicted there
        (on CPU a probe measures resident memory, which holds more than torch's allocations)."""
        measured = probe.get("peak_mem_bytes")
        predicted = self(probe["frames"])["peak_bytes"]
        if not measured or not predicted:
            return probe["frames"] * 2
        return self.linear_estimate(probe["frames"], int(self.budget * predicted / measured))


def predicted_max_frames(predictor: Predictor, *, limit: int = 1 << 20, precision: float = 1 / 32) -> dict:
    from bench.measure.maxframes import search

    t0 = time.perf_counter()
    estimate = predictor.linear_estimate(predictor.spec.frames)
    record = search(predictor.spec, probe=predictor.probe, estimate=min(estimate, limit), limit=limit,
                    precision=precision, kind="predicted_maxframes", env={})
    m = record["metrics"]
    return {"predicted_max_frames": m["max_frames"], "predicted_first_oom_frames": m["first_oom_frames"],
            "linear_estimate": estimate, "predictions": len(predictor.results),
            "search_s": time.perf_counter() - t0,
            "probes": [{"frames": p["frames"], "predicted_status": p["status"],
                        "predicted_peak_mem_bytes": p["peak_mem_bytes"]} for p in m["probes"]],
            "status": record["status"], "limit": limit}


def _skeleton(spec):
    from architectures import ARCHITECTURES

    return ARCHITECTURES.get(spec.arch).skeleton(spec.preset, spec.checkpoint)


def predicted_cost(spec, result: dict, gpu: GPU) -> dict:
    """Analytic FLOPs/bytes of the predicted pass and the roofline lower bounds on ``gpu``."""
    bb = _skeleton(spec)
    db = spec.dtype_bytes
    cost = account(bb, batch=spec.batch, new_tokens=spec.new_tokens, input_tokens=result["input_tokens"],
                   vision_tokens=result["vision_tokens"], stages=result["compressor"]["stages"],
                   cache=result["end_of_prefill"], weights_bytes=result["parts"]["weights_bytes"], dtype_bytes=db,
                   all_logits=spec.logits == "all")
    bound = roofline(cost, gpu.bf16_tflops * 1e12, gpu.bandwidth, weights_read_per_step(bb, db))
    input_tokens = result["input_tokens"]
    bound["prefill_tok_s_upper_bound"] = spec.batch * input_tokens / bound["prefill_s_lower_bound"]
    if spec.new_tokens:
        bound["decode_tok_s_upper_bound"] = spec.batch * spec.new_tokens / bound["decode_s_lower_bound"]
    return {"cost": cost, "predicted_roofline": bound}


def predict(spec, gpu: GPU | None, *, target: str = "gpu", mamba: str = "mamba-ssm",
            context_margin: int = DEFAULT_CONTEXT_MARGIN, allocator_margin: float = DEFAULT_ALLOCATOR_MARGIN,
            max_frames: bool = True, limit: int = 1 << 20, precision: float = 1 / 32) -> dict:
    """The prediction record of ``spec`` (kind ``prediction``)."""
    t0 = time.perf_counter()
    if target == "gpu":
        if gpu is None:
            raise UserError("a GPU prediction needs --gpu")
        if not 0 <= allocator_margin < 1:
            raise UserError("--allocator-margin must be in [0, 1)")
        if context_margin >= gpu.memory_bytes:
            raise UserError("--context-margin leaves no GPU memory")
        budget = budget_bytes(gpu, context_margin, allocator_margin)
        margins = {"context_margin_bytes": context_margin, "allocator_margin": allocator_margin,
                   "note": "assumed, not measured: CUDA context + driver reservation + library workspaces "
                           "(fixed), caching-allocator fragmentation (fraction of the rest)"}
    else:
        if spec.memory_budget is None:
            raise UserError("a CPU prediction needs --memory-budget (what to fit)")
        budget, margins = spec.memory_budget, {"note": "CPU: torch's allocated bytes against --memory-budget"}
    predictor = Predictor(spec, target=target, mamba=mamba, budget=budget)
    result = predictor(spec.frames)
    metrics = {
        "predicted": True,
        "input_tokens": result["input_tokens"],
        "vision_tokens": result["vision_tokens"],
        "tokens_after_compression": result["tokens_after_compression"],
        "predicted_peak_mem_bytes": result["peak_bytes"],
        "predicted_parts": result["parts"],
        "predicted_stages": result["stages"],
        "budget_bytes": budget,
        "margins": margins,
        "fits": result["peak_bytes"] <= budget,
        "method": {"memory": "one pass on fake tensors, live storage bytes tracked (torch's allocated counter)",
                   "target": target, "mamba_kernels": result["mamba_kernels"],
                   "attention_kernel": result["attention_kernel"],
                   "decode": "two steps run, later steps extrapolated linearly"},
        "compressor": result["compressor"],
    }
    if gpu is not None:
        metrics["gpu"] = gpu.to_dict()
        metrics.update(predicted_cost(spec, result, gpu))
    if max_frames:
        metrics["max_frames"] = predicted_max_frames(predictor, limit=limit, precision=precision)
    metrics["predict_s"] = time.perf_counter() - t0
    env = {k: v for k, v in environment("cpu").items() if k != "kernels"}
    return make_record({**spec.to_dict(), "device": "cuda" if target == "gpu" else "cpu"}, env, metrics=metrics,
                       kind="prediction")


def _gib(n: float) -> str:
    return f"{n / GIB:.2f} GiB"


def _logits(spec: dict) -> str:
    if spec.get("logits", "last") == "last":
        return ""
    return f", logits of every position ({spec.get('logits_dtype') or spec['dtype']})"


def summary(record: dict) -> str:
    """The printout: every number says it is predicted."""
    s, m = record["spec"], record["metrics"]
    p = m["predicted_parts"]
    gpu = m.get("gpu")
    where = (f"{gpu['name']} ({_gib(gpu['memory_bytes'])}, {gpu['bf16_tflops']:g} TFLOP/s bf16 dense, "
             f"{gpu['bandwidth_bytes_s'] / 1e12:g} TB/s; {gpu['source']})" if gpu else "CPU")
    from architectures import ARCHITECTURES

    per_frame = ("through its own processor and tower" if ARCHITECTURES.get(s["arch"]).takes_frames
                 else f"x {s['tokens_per_frame']} tokens")
    lines = [
        f"{s['arch']}/{s['checkpoint'] or s['preset']} {s['compressor']}, {s['frames']} frames {per_frame} "
        f"({m['input_tokens']} input tokens, {m['tokens_after_compression']} after "
        f"compression), batch {s['batch']}, {s['dtype']}{_logits(s)}, on {where}",
        f"  predicted peak allocated: {_gib(m['predicted_peak_mem_bytes'])} = weights {_gib(p['weights_bytes'])}"
        + (f" + vision side {_gib(p['vision_weights_bytes'])} + frames {_gib(p['frames_bytes'])}"
           if p.get("vision_weights_bytes") else "")
        + f" + KV cache {_gib(p['kv_cache_bytes'])} + SSM/conv state "
        f"{_gib(p['ssm_state_bytes'] + p['conv_state_bytes'])} + compressor params "
        f"{_gib(p['compressor_params_bytes'])} + activations {_gib(p['activations_bytes'])}",
    ]
    mg = m["margins"]
    if "context_margin_bytes" in mg:
        lines.append(f"  budget {_gib(m['budget_bytes'])} (memory - {_gib(mg['context_margin_bytes'])} CUDA context "
                     f"margin, - {mg['allocator_margin']:.0%} allocator margin; assumed): "
                     f"{'fits' if m['fits'] else 'does NOT fit'} (predicted)")
    else:
        lines.append(f"  budget {_gib(m['budget_bytes'])}: {'fits' if m['fits'] else 'does NOT fit'} (predicted)")
    mf = m.get("max_frames")
    if mf:
        oom = mf["predicted_first_oom_frames"]
        lines.append(f"  predicted max frames: {mf['predicted_max_frames']}"
                     + (f" (predicted OOM at {oom})" if oom else f" (no predicted OOM up to {mf['limit']})")
                     + f"; {mf['predictions']} predictions in {mf['search_s']:.1f} s")
    rl = m.get("predicted_roofline")
    if rl:
        decode = (f", decode of {s['new_tokens']} tokens >= {rl['decode_s_lower_bound']:.3f} s "
                  f"(<= {rl.get('decode_tok_s_upper_bound', 0):.0f} tok/s)")
        lines.append(f"  predicted roofline: prefill >= {rl['prefill_s_lower_bound']:.3f} s "
                     f"(<= {rl['prefill_tok_s_upper_bound']:.0f} tok/s){decode}; "
                     f"prefill {m['cost']['prefill_flops'] / 1e12:.1f} TFLOP")
    method = m["method"]
    if method.get("mamba_kernels"):
        lines.append(f"  Mamba layers: {method['mamba_kernels']}")
    lines.append(f"  attention: {method['attention_kernel']}; answered in {m['predict_s']:.1f} s")
    return "\n".join(lines)


def estimate_for_search(spec, *, limit: int = 1 << 20) -> tuple[int, dict, Predictor]:
    """The predicted max frames that ``maxframes --predict-first`` starts from (``coarse_estimate``: four
    predictions, not a search on predictions), how it was obtained, and the predictor (its ``calibrate``
    rescales the estimate after the first real probe).

    On CPU the prediction is torch's allocated bytes against ``--memory-budget``; the real probes measure
    resident memory, a little more, which the confirming probes absorb. On CUDA the budget is
    ``--memory-budget`` if given, else the device's memory less the default margins.
    """
    t0 = time.perf_counter()
    if spec.device == "cpu":
        if spec.memory_budget is None:
            raise UserError("--predict-first on CPU needs --memory-budget")
        target, budget = "cpu", spec.memory_budget
    else:
        import torch

        target = "gpu"
        total = torch.cuda.get_device_properties(torch.device(spec.device)).total_memory
        budget = spec.memory_budget or budget_bytes(GPU("local", total, 1.0, 1.0), DEFAULT_CONTEXT_MARGIN,
                                                     DEFAULT_ALLOCATOR_MARGIN)
    predictor = Predictor(spec, target=target, mamba="mamba-ssm", budget=budget)
    estimate = predictor.coarse_estimate(spec.frames, limit)
    info = {"predicted_max_frames": estimate, "predictions": len(predictor.results),
            "target": target, "budget_bytes": budget, "predict_s": time.perf_counter() - t0}
    return max(1, estimate), info, predictor
