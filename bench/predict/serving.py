"""What a serving simulation (``bench.serve``) needs from a prediction: the weights and the activation peak
of one engine step at the token budget (vLLM's profile run: one forward of ``max_num_batched_tokens``
tokens), and a request's tokens after compression. The fake pass (``bench.predict.fake_pass``) gives both,
with the GPU kernels' allocation patterns."""

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
