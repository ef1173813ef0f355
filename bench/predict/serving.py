"""Serving on a GPU predicted: what the serving simulation (``bench.servesim``) needs from a prediction, the
weights and the activation peak of one engine step at the token budget (vLLM's profile run: one forward of
``max_num_batched_tokens`` tokens) and a request's tokens after compression, both from the fake pass
(``bench.predict.fake_pass``) with the GPU kernels' allocation patterns; the KV pool vLLM leaves on a GPU;
and ``predict --serve-batch``'s simulated run."""

from __future__ import annotations

from bench.errors import UserError


def step_memory(spec, tokens: int, *, mamba: str = "mamba-ssm") -> dict:
    """Weights and activation bytes of one prefill of ``tokens`` tokens of ``spec``'s model (no compressor)."""
    from bench.predict.fake_pass import predict_pass

    frames = (tokens - spec.prompt_tokens - 1) // spec.tokens_per_frame
    if frames < 1:
        raise UserError(f"--max-num-batched-tokens {tokens} is shorter than one frame and the prompt")
    step = spec.replace(frames=frames, compressor="none", batch=1, new_tokens=1, prefill_chunk=None)
    parts = predict_pass(step, target="gpu", mamba=mamba)["parts"]
    return {"weights_bytes": parts["weights_bytes"], "activations_bytes": parts["activations_bytes"],
            "profile_tokens": frames * spec.tokens_per_frame + spec.prompt_tokens + 1}


def request_tokens(spec, *, mamba: str = "mamba-ssm") -> dict:
    """A request of ``spec``'s cell (its frames, prompt and compressor): input tokens, tokens after
    compression and the KV cache bytes at the end of its prefill, from the predicted pass. A compressor that
    drops inside the layers (TransV) leaves the attention layers before its last stage longer caches than
    the tokens after compression say; the KV bytes count them."""
    from bench.predict.fake_pass import predict_pass

    result = predict_pass(spec.replace(batch=1, new_tokens=1), target="gpu", mamba=mamba)
    return {"input_tokens": result["input_tokens"], "tokens_after_compression": result["tokens_after_compression"],
            "kv_cache_bytes": result["end_of_prefill"]["kv_cache_bytes"],
            "compressor_params_bytes": result["parts"]["compressor_params_bytes"]}


def request_length(spec, shape: dict, tokens: dict) -> tuple[int, dict]:
    """The simulated request of a video cell (``tokens``: ``request_tokens``): as many tokens as its KV cache
    holds per attention layer on average at the end of its prefill (a compressor dropping inside the layers
    leaves earlier layers longer caches), or its tokens after compression for a model without attention."""
    after = tokens["tokens_after_compression"]
    length = round(tokens["kv_cache_bytes"] / shape["kv_bytes_per_token"]) if shape["kv_bytes_per_token"] else after
    return max(1, length), {"input_tokens": tokens["input_tokens"], "tokens_after_compression": after,
                            "request_tokens": "KV cache bytes at the end of prefill / KV bytes per token"
                            if shape["kv_bytes_per_token"] else "tokens after compression"}


_STEP_MEMORY: dict[tuple, dict] = {}  # one process's fake passes at a token budget, per model


def gpu_kv_bytes(spec, gpu, settings, utilization: float) -> tuple[int, dict]:
    """The KV pool vLLM leaves on ``gpu`` for ``spec``'s model: utilization x memory, less the weights and
    the predicted activation peak of one step at the token budget (memoised per model and budget)."""
    from bench.servesim.simulate import kv_space

    key = (spec.arch, spec.preset, spec.checkpoint, spec.dtype, settings.max_num_batched_tokens)
    if key not in _STEP_MEMORY:
        _STEP_MEMORY[key] = step_memory(spec, settings.max_num_batched_tokens)
    m = _STEP_MEMORY[key]
    kv = kv_space(gpu.memory_bytes, utilization, m["weights_bytes"], m["activations_bytes"])
    return kv, {"kv": "gpu memory x utilization - weights - one step's activation peak (predicted)",
                "weights_bytes": m["weights_bytes"], "activations_bytes": m["activations_bytes"],
                "profile_tokens": m["profile_tokens"], "gpu_memory_utilization": utilization, "kv_space_bytes": kv}


def serve_batch(spec, gpu, *, requests: int) -> dict:
    """``predict --serve-batch``: ``requests`` requests of ``spec``'s cell (``spec.new_tokens`` generated each)
    served by the simulated engine at vLLM's defaults on ``gpu``."""
    from bench.servesim.sim import Efficiency
    from bench.servesim.simulate import engine_defaults, model_shape, simulate

    settings = engine_defaults("gpu", gpu.memory_bytes, gpu.name)
    kv, where = gpu_kv_bytes(spec, gpu, settings, 0.9)
    shape = model_shape(spec)
    input_len, extra = request_length(spec, shape, request_tokens(spec))
    m = simulate(shape, prompts=[input_len] * requests, outputs=[max(1, spec.new_tokens)] * requests,
                 kv_bytes=kv, peak_flops=gpu.bf16_tflops * 1e12, bandwidth=gpu.bandwidth, settings=settings,
                 efficiency=Efficiency())
    m.update(extra, request_len=input_len, memory=where)
    return m
