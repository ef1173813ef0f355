"""Cost accounting: cache bytes, analytic FLOPs and bytes per layer kind, utilisation, roofline bounds.

Everything here is computed from a backbone's structure (its config, layer kinds and the
Linear/Conv weights of each layer, read on the meta device) and from token counts *after
compression*; nothing is timed except the once-per-machine peak probes.

FLOPs (multiply-add = 2 FLOPs), for ``n`` tokens entering a layer, batch ``b``:

- every layer: ``2 b n W`` for its W Linear/Conv1d weights (projections, MLPs, the Mamba
  depthwise convolution); the harness computes logits for the last position only, so the
  LM head costs ``2 b hidden vocab`` per prefill and per decode step;
- attention, causal over the layer's own (possibly shortened) sequence:
  ``2 b H d n (n + 1)`` (QK^T and AV, H query heads of width d); a decode step at context c:
  ``4 b H d c``;
- Mamba-2, chunked SSD as the kernels compute it (chunk Q, heads H x P, state N, G groups):
  ``2 b n (Q G N + Q H P + 2 H P N)``; a decode step: ``4 b H P N``.

Compressors' own FLOPs (scoring, TransV's cross-attention) are not counted.
"""

from __future__ import annotations

import json
import os
import time

import torch
from torch import nn

from architectures.base import ATTENTION, MAMBA
from bench.cache import cache_dir

# --- cache bytes --------------------------------------------------------------------------


def _tensors(value) -> list[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, dict):
        value = list(value.values())
    if isinstance(value, (list, tuple)):
        return [t for v in value for t in _tensors(v)]
    return []


def _nbytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def cache_bytes(cache) -> dict[str, int]:
    """Bytes a transformers cache holds: attention KV, Mamba SSM (recurrent) state, Mamba conv state."""
    kv = ssm = conv = 0
    for layer in getattr(cache, "layers", []):
        kv += _nbytes(_tensors(getattr(layer, "keys", None)) + _tensors(getattr(layer, "values", None)))
        ssm += _nbytes(_tensors(getattr(layer, "recurrent_states", None)))
        conv += _nbytes(_tensors(getattr(layer, "conv_states", None)))
    return {"kv_cache_bytes": kv, "ssm_state_bytes": ssm, "conv_state_bytes": conv}


# --- shapes from the config -----------------------------------------------------------------


def _cfg(config, *names, default=None):
    for name in names:
        value = getattr(config, name, None)
        if value is not None:
            return value
    return default


def attention_shape(config) -> dict[str, int]:
    heads = config.num_attention_heads
    return {"heads": heads, "kv_heads": _cfg(config, "num_key_value_heads", default=heads),
            "head_dim": _cfg(config, "head_dim", default=config.hidden_size // heads)}


def mamba_shape(config) -> dict[str, int]:
    heads = _cfg(config, "mamba_num_heads", "num_heads")
    head_dim = _cfg(config, "mamba_head_dim") if hasattr(config, "mamba_head_dim") else config.head_dim
    state = _cfg(config, "ssm_state_size", "state_size")
    groups = _cfg(config, "n_groups", default=1)
    return {"heads": heads, "head_dim": head_dim, "state": state, "groups": groups,
            "conv_kernel": _cfg(config, "conv_kernel", default=4), "chunk": _cfg(config, "chunk_size", default=256),
            "conv_dim": heads * head_dim + 2 * groups * state}


def kv_bytes_per_token(backbone, dtype_bytes: int) -> int:
    """KV-cache bytes one token adds per sequence: 2 (K and V) x KV heads x head dim x bytes, per attention layer."""
    n_attn = backbone.layer_kinds().count(ATTENTION)
    if not n_attn:
        return 0
    a = attention_shape(backbone.config)
    return n_attn * 2 * a["kv_heads"] * a["head_dim"] * dtype_bytes


def state_bytes_per_sequence(backbone, dtype_bytes: int) -> dict[str, int]:
    """The Mamba cache per sequence, as transformers allocates it: the SSM state in float32 (the scan's
    final state, kernels and reference alike), the conv state (last ``conv_kernel`` inputs of the
    convolution) in the model's dtype."""
    n_mamba = backbone.layer_kinds().count(MAMBA)
    if not n_mamba:
        return {"ssm_state_bytes": 0, "conv_state_bytes": 0}
    m = mamba_shape(backbone.config)
    return {"ssm_state_bytes": n_mamba * m["heads"] * m["head_dim"] * m["state"] * 4,
            "conv_state_bytes": n_mamba * m["conv_dim"] * m["conv_kernel"] * dtype_bytes}


# --- FLOPs and bytes ------------------------------------------------------------------------


def _layer_weights(backbone) -> tuple[int, ...]:
    """Linear/Conv1d weight elements per layer (matmul work per token)."""
    out = []
    for layer in backbone.layers:
        out.append(sum(m.weight.numel() for m in layer.modules() if isinstance(m, (nn.Linear, nn.Conv1d))))
    return tuple(out)


def tokens_per_layer(num_layers: int, llm_tokens: int, stages: list[dict]) -> list[int]:
    """Tokens entering each layer: the LLM's input minus what drop stages before layer i removed."""
    drops = {}
    for s in stages:
        if s.get("where") == "layer" and s.get("layer") is not None:
            drops[s["layer"]] = drops.get(s["layer"], 0) + s["tokens_in"] - s["tokens_out"]
    out, n = [], llm_tokens
    for i in range(num_layers):
        n -= drops.get(i, 0)
        out.append(n)
    return out


def llm_input_tokens(input_tokens: int, vision_tokens: int, stages: list[dict]) -> int:
    """Tokens reaching layer 0: a projector-side compressor (STC-Pruner, VisionZip) shortens the video."""
    for s in stages:
        if s.get("where") == "projector":
            return input_tokens - vision_tokens + s["tokens_out"]
    return input_tokens


def flops(backbone, tokens: list[int], batch: int, new_tokens: int, all_logits: bool = False) -> dict:
    """Analytic prefill and decode FLOPs by layer kind (plus ``head``), and their totals. ``all_logits``:
    the prefill's LM head runs on every position that reaches it (``--logits all``), not only the last."""
    cfg, kinds, weights = backbone.config, backbone.layer_kinds(), _layer_weights(backbone)
    prefill: dict[str, float] = {}
    decode: dict[str, float] = {}
    a = attention_shape(cfg) if ATTENTION in kinds else None
    m = mamba_shape(cfg) if MAMBA in kinds else None
    for i, kind in enumerate(kinds):
        n = tokens[i]
        p = 2.0 * batch * n * weights[i]
        d = 2.0 * batch * weights[i] * new_tokens
        if kind == ATTENTION:
            p += 2.0 * batch * a["heads"] * a["head_dim"] * n * (n + 1)
            # steps s = 1..new_tokens see n + s keys
            d += 4.0 * batch * a["heads"] * a["head_dim"] * (new_tokens * n + new_tokens * (new_tokens + 1) / 2)
        elif kind == MAMBA:
            hp = m["heads"] * m["head_dim"]
            p += 2.0 * batch * n * (m["chunk"] * m["groups"] * m["state"] + m["chunk"] * hp + 2 * hp * m["state"])
            d += 4.0 * batch * hp * m["state"] * new_tokens
        prefill[kind] = prefill.get(kind, 0.0) + p
        decode[kind] = decode.get(kind, 0.0) + d
    head = 2.0 * batch * cfg.hidden_size * cfg.vocab_size
    prefill["head"], decode["head"] = head * (tokens[-1] if all_logits else 1), head * new_tokens
    return {"prefill_flops": sum(prefill.values()), "decode_flops": sum(decode.values()),
            "prefill_flops_by_kind": prefill, "decode_flops_by_kind": decode}


def decode_bytes(weights_read: int, kv_after_prefill: int, kv_per_token: int, state: int, batch: int,
                 new_tokens: int) -> float:
    """Bytes moved by ``new_tokens`` decode steps: every weight once per step, the whole KV cache (growing by one
    token per step), the Mamba state read and written. ``kv_after_prefill`` and ``state`` cover the batch."""
    kv_total = new_tokens * kv_after_prefill + batch * kv_per_token * new_tokens * (new_tokens + 1) / 2
    return float(new_tokens * (weights_read + 2 * state) + kv_total)


def weights_read_per_step(backbone, dtype_bytes: int) -> int:
    """Weights a decode step reads: all but the input embedding table (one row of it is read)."""
    total = sum(p.numel() for p in backbone.model.parameters())
    emb = backbone.model.get_input_embeddings().weight.numel()
    return (total - emb) * dtype_bytes


# --- device peaks -------------------------------------------------------------------------


def _probe(device: str, dtype: torch.dtype) -> dict:
    """Best-of-5 matmul FLOP/s and copy bytes/s on the device (a few seconds, once per machine)."""
    from bench.measure.meters import synchronize

    n = 2048 if device.startswith("cuda") else 1024
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    src = torch.empty(64 * 2**20 // 4 if device == "cpu" else 512 * 2**20 // 4, device=device)
    dst = torch.empty_like(src)
    best_mm = best_cp = float("inf")
    for _ in range(6):
        synchronize(device)
        t0 = time.perf_counter()
        a @ b
        synchronize(device)
        best_mm = min(best_mm, time.perf_counter() - t0)
        t0 = time.perf_counter()
        dst.copy_(src)
        synchronize(device)
        best_cp = min(best_cp, time.perf_counter() - t0)
    return {"flops_s": 2.0 * n**3 / best_mm, "bytes_s": 2.0 * src.numel() * src.element_size() / best_cp,
            "source": f"measured: {n}x{n} matmul and {src.numel() * 4 // 2**20} MiB copy, best of 6"}


def device_peaks(device: str, dtype: str, device_name: str) -> dict:
    """Peak FLOP/s and bytes/s of the device, measured once per machine and cached in the user cache dir."""
    key = f"{device_name}|{dtype}|threads={torch.get_num_threads()}|torch={torch.__version__}"
    path = cache_dir() / "device_peaks.json"
    try:
        cached = json.loads(path.read_text())
    except (OSError, ValueError):
        cached = {}
    if not isinstance(cached, dict):
        cached = {}
    if key not in cached:
        cached[key] = _probe(device, getattr(torch, dtype))
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            part = path.with_name(f"{path.name}.{os.getpid()}.part")  # whole or not at all: processes share it
            part.write_text(json.dumps(cached, indent=1))
            os.replace(part, path)
        except OSError:
            pass
    return cached[key]


# --- the record's metrics.cost --------------------------------------------------------------


def account(backbone, *, batch: int, new_tokens: int, input_tokens: int, vision_tokens: int, stages: list[dict],
            cache: dict | None, weights_bytes: int, dtype_bytes: int, all_logits: bool = False) -> dict:
    """Sizes, FLOPs and bytes of one pass (no timings): the part of ``metrics.cost`` that needs no clock."""
    tokens = tokens_per_layer(backbone.num_layers, llm_input_tokens(input_tokens, vision_tokens, stages), stages)
    out = {"weights_bytes": weights_bytes, **(cache or {}), "tokens_per_layer_kind": {}}
    for kind in dict.fromkeys(backbone.layer_kinds()):
        counts = [t for t, k in zip(tokens, backbone.layer_kinds()) if k == kind]
        out["tokens_per_layer_kind"][kind] = {"first": counts[0], "last": counts[-1]}
    out.update(flops(backbone, tokens, batch, new_tokens, all_logits))
    per_token = kv_bytes_per_token(backbone, dtype_bytes)
    state = (cache or {}).get("ssm_state_bytes", 0) + (cache or {}).get("conv_state_bytes", 0)
    kv = (cache or {}).get("kv_cache_bytes", 0)
    out["decode_bytes"] = decode_bytes(weights_read_per_step(backbone, dtype_bytes), kv, per_token, state, batch,
                                       new_tokens)
    out["kv_bytes_per_token"] = per_token
    return out


def utilisation(cost: dict, metrics: dict, peaks: dict) -> dict:
    """Achieved FLOP/s (prefill) and bytes/s (decode) over the device's peaks."""
    out = {"peak_flops_s": peaks["flops_s"], "peak_bytes_s": peaks["bytes_s"], "peaks_source": peaks["source"]}
    if metrics.get("prefill_s"):
        out["prefill_flops_s"] = cost["prefill_flops"] / metrics["prefill_s"]
        out["prefill_flops_util"] = out["prefill_flops_s"] / peaks["flops_s"]
    if metrics.get("decode_s"):
        out["decode_bytes_s"] = cost["decode_bytes"] / metrics["decode_s"]
        out["decode_bw_util"] = out["decode_bytes_s"] / peaks["bytes_s"]
        out["decode_flops_s"] = cost["decode_flops"] / metrics["decode_s"]
    return out


def roofline(cost: dict, flops_s: float, bytes_s: float, weights_read: int) -> dict:
    """Lower bounds on prefill and decode time: each is at least its FLOPs over the peak and its bytes over the
    bandwidth (prefill reads every weight at least once)."""
    prefill = max(cost["prefill_flops"] / flops_s, weights_read / bytes_s)
    decode = max(cost["decode_flops"] / flops_s, cost["decode_bytes"] / bytes_s)
    return {"prefill_s_lower_bound": prefill, "decode_s_lower_bound": decode}


def _module_bytes(module) -> int:
    if module is None:
        return 0
    return sum(t.numel() * t.element_size() for t in (*module.parameters(), *module.buffers()))


def record_cost(spec, model, metrics: dict, env: dict) -> dict:
    """``metrics.cost`` of a measured cell: sizes, analytic FLOPs and bytes, and utilisation of the device.

    Takes over ``metrics["cache"]`` (one_pass's cache sizes at the end of prefill)."""
    bb = model.backbone
    cache = metrics.pop("cache", None)
    dtype_bytes = torch.empty(0, dtype=bb.dtype).element_size()
    compressor = metrics.get("compressor") or {}
    out = account(bb, batch=spec.batch, new_tokens=spec.new_tokens, input_tokens=metrics["input_tokens"],
                  vision_tokens=metrics["vision_tokens"], stages=compressor.get("stages", []),
                  cache=cache, weights_bytes=_module_bytes(bb.model), dtype_bytes=dtype_bytes,
                  all_logits=spec.logits == "all")
    out["compressor_params_bytes"] = _module_bytes(getattr(model.compressor, "cross", None))
    out["vision_weights_bytes"] = _module_bytes(model.vision)
    try:
        peaks = device_peaks(spec.device, str(bb.dtype).removeprefix("torch."), env.get("device_name", spec.device))
        out["utilisation"] = utilisation(out, metrics, peaks)
    except RuntimeError as exc:  # a probe that cannot run leaves utilisation out, never the record
        out["utilisation"] = {"error": str(exc).splitlines()[0][:200]}
    return out


# --- per-token coefficients of a serving step (bench.serve) ---------------------------------


def serving_shape(backbone, dtype_bytes: int) -> dict:
    """What a serving step costs per token, from the same formulas as ``flops`` and ``decode_bytes``:
    GEMM FLOPs per token (every Linear/Conv1d weight, ``2 W``), attention FLOPs per query-key pair over
    all attention layers (``4 H d``), Mamba scan FLOPs per prefill token (chunked SSD) and per decode token,
    the LM head per sampled token, KV bytes per token, Mamba state bytes per sequence (SSM state float32,
    the last ``conv_kernel - 1`` conv inputs in the model's dtype, as vLLM's Mamba-2 layers hold them) and per
    layer, and the weights a step reads."""
    cfg, kinds = backbone.config, backbone.layer_kinds()
    weights = _layer_weights(backbone)
    out = {"gemm_flops_per_token": 2.0 * sum(weights), "attention_flops_per_pair": 0.0,
           "scan_flops_per_prefill_token": 0.0, "scan_flops_per_decode_token": 0.0,
           "head_flops_per_sample": 2.0 * cfg.hidden_size * cfg.vocab_size,
           "attention_layers": kinds.count(ATTENTION), "mamba_layers": kinds.count(MAMBA),
           "kv_bytes_per_token": kv_bytes_per_token(backbone, dtype_bytes),
           "weights_read_bytes": weights_read_per_step(backbone, dtype_bytes), "dtype_bytes": dtype_bytes}
    if ATTENTION in kinds:
        a = attention_shape(cfg)
        out["attention_flops_per_pair"] = 4.0 * a["heads"] * a["head_dim"] * kinds.count(ATTENTION)
    out["state_bytes_per_sequence"] = out["state_bytes_per_layer"] = 0
    if MAMBA in kinds:
        m = mamba_shape(cfg)
        # as vLLM holds it: the SSM state in float32, the conv state's last conv_kernel - 1 inputs
        out["state_bytes_per_layer"] = (m["heads"] * m["head_dim"] * m["state"] * 4
                                        + (m["conv_kernel"] - 1) * m["conv_dim"] * dtype_bytes)
        out["state_bytes_per_sequence"] = out["state_bytes_per_layer"] * kinds.count(MAMBA)
        hp, n = kinds.count(MAMBA), m["heads"] * m["head_dim"]
        out["scan_flops_per_prefill_token"] = 2.0 * hp * (m["chunk"] * m["groups"] * m["state"] + m["chunk"] * n
                                                          + 2 * n * m["state"])
        out["scan_flops_per_decode_token"] = 4.0 * hp * n * m["state"]
    return out
