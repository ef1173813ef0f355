"""What the GPU kernels allocate, for predicting a GPU run on a CPU (used under fake tensors only).

On a GPU the backbones run other code than on this CPU build:

- **Mamba-2 scan** (prefill) and **state update** (decode): mamba-ssm's Triton kernels. We run
  mamba-ssm's own Python wrappers (``mamba_chunk_scan_combined``, ``selective_state_update``),
  so every ``torch.empty`` they make is counted, with each Triton launch made a no-op. When
  mamba-ssm cannot be imported at all, a closed form of the same wrappers' allocations is
  used instead (``_closed_form_chunk_scan``); ``backend()`` says which.
- **Gated RMSNorm** of every Mamba-2 block: mamba-ssm's fused Triton norm (``rmsnorm_fn``, routed by
  ``architectures.kernels``), its wrapper run with the launch a no-op: an output like its input and a
  float32 rstd per row and group, instead of transformers' float32 temporaries (closed form
  ``_closed_form_gated_norm`` where mamba-ssm cannot be imported).
- **Triton's autotuner**: on the first call of each autotuned kernel (one key per model) it benchmarks
  the configs with a 256 MiB L2-flush buffer (``torch.empty`` of 64 Mi int32, Triton's CUDA driver
  ``get_empty_cache_for_benchmark``); that transient is counted at the kernel's first call in the pass,
  since the first (cold) pass of a process is the one that OOMs.
- **Causal conv1d**: causal-conv1d's CUDA extension allocates one output like its input
  (``torch.empty_like(x)``) for the sequence and the decode step; that closed form is used.
- **Attention**: SDPA's flash kernel (no mask, grouped-query without repeating K/V) allocates
  the output and a float32 log-sum-exp per query and head; the harness's registered
  attention function is replaced by that allocation pattern for the prediction.

Nothing here computes values: the tensors are fake.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import math
import os
import sys
import types
from contextlib import contextmanager, nullcontext
from functools import lru_cache

import torch

WRAPPERS = "mamba_chunk_scan_combined, selective_state_update, rmsnorm_fn"
AUTOTUNE_BUFFER_BYTES = 256 * 2**20  # Triton's benchmark L2-flush buffer: 256 MiB of int32
_MODELING = ("transformers.models.nemotron_h.modeling_nemotron_h", "transformers.models.mamba2.modeling_mamba2")


@lru_cache(maxsize=1)
def _mamba_ssm() -> tuple[dict, str] | tuple[None, str]:
    """mamba-ssm's Python wrappers, importable even where its CUDA extensions are not built.

    The package's ``__init__`` imports compiled extensions; the Triton wrappers do not need them,
    so when the plain import fails they are loaded under a temporary namespace package, and
    ``sys.modules`` is restored afterwards (nothing else in the process sees that namespace).
    """
    try:
        from mamba_ssm.ops.triton.layernorm_gated import rmsnorm_fn
        from mamba_ssm.ops.triton.selective_state_update import selective_state_update
        from mamba_ssm.ops.triton.ssd_combined import mamba_chunk_scan_combined
        version = _version()
        return ({"chunk_scan": mamba_chunk_scan_combined, "state_update": selective_state_update,
                 "gated_norm": rmsnorm_fn},
                f"mamba-ssm {version}'s Python wrappers ({WRAPPERS}): "
                "their allocations counted, Triton launches as no-ops")
    except Exception:  # noqa: BLE001 - a broken install falls through to the namespace load
        pass
    spec = importlib.util.find_spec("mamba_ssm") if "mamba_ssm" not in sys.modules else None
    origin = spec.origin if spec else getattr(sys.modules.get("mamba_ssm"), "__file__", None)
    if not origin:
        return None, "closed form of mamba-ssm's wrappers (mamba-ssm not installed)"
    saved = {k: v for k, v in sys.modules.items() if k == "mamba_ssm" or k.startswith("mamba_ssm.")}
    for k in saved:
        del sys.modules[k]
    stub = types.ModuleType("mamba_ssm")
    stub.__path__ = [os.path.dirname(origin)]
    sys.modules["mamba_ssm"] = stub
    try:
        ssd = importlib.import_module("mamba_ssm.ops.triton.ssd_combined")
        ssu = importlib.import_module("mamba_ssm.ops.triton.selective_state_update")
        norm = importlib.import_module("mamba_ssm.ops.triton.layernorm_gated")
        funcs = {"chunk_scan": ssd.mamba_chunk_scan_combined, "state_update": ssu.selective_state_update,
                 "gated_norm": norm.rmsnorm_fn}
        return funcs, (f"mamba-ssm {_version()}'s Python wrappers ({WRAPPERS}; loaded without its CUDA "
                       "extensions): their allocations counted, Triton launches as no-ops")
    except Exception as exc:  # noqa: BLE001
        return None, f"closed form of mamba-ssm's wrappers (mamba-ssm unusable here: {type(exc).__name__})"
    finally:
        for k in [k for k in sys.modules if k == "mamba_ssm" or k.startswith("mamba_ssm.")]:
            del sys.modules[k]
        sys.modules.update(saved)


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("mamba_ssm")
    except Exception:  # noqa: BLE001
        return "?"


def backend() -> str:
    """How the Mamba layers' GPU allocations are predicted (goes into the prediction record)."""
    return _mamba_ssm()[1]


def _filtered(func):
    params = set(inspect.signature(func).parameters)

    def call(*args, **kwargs):
        return func(*args, **{k: v for k, v in kwargs.items() if k in params})

    return call


def _closed_form_chunk_scan(x, dt, A, B, C, chunk_size, D=None, z=None, dt_bias=None, initial_states=None,
                            return_final_states=False, **_):
    """The allocations of mamba-ssm 2.x ``_mamba_chunk_scan_combined_fwd``, in its order: contiguous copies of
    B/C/x where needed, the dt cumsum, chunk states, state passing, C^T B per chunk, the chunk scan's output."""
    if B.stride(-1) != 1:
        B = B.contiguous()
    if C.stride(-1) != 1:
        C = C.contiguous()
    if x.stride(-1) != 1 and x.stride(1) != 1:
        x = x.contiguous()
    b, L, h, p = x.shape
    g, n = B.shape[2], B.shape[3]
    c = math.ceil(L / chunk_size)
    f32 = torch.float32
    dt_out = x.new_empty((b, h, c, chunk_size), dtype=f32)
    dA_cumsum = x.new_empty((b, h, c, chunk_size), dtype=f32)
    states = x.new_empty((b, c, h, p, n), dtype=f32)
    passed = x.new_empty((b, c, h, p * n), dtype=C.dtype)
    final = x.new_empty((b, h, p * n), dtype=f32)
    del states
    cb = x.new_empty((b, c, g, chunk_size, chunk_size), dtype=f32)
    out = x.new_empty((b, L, h, p))
    out_x = x.new_empty((b, L, h, p)) if z is not None else None
    del cb, passed, dA_cumsum, dt_out, out_x
    return (out, final.view(b, h, p, n)) if return_final_states else out


def _closed_form_gated_norm(x, weight, bias, z=None, eps=1e-6, group_size=None, norm_before_gate=True):
    """The allocations of mamba-ssm 2.x ``rmsnorm_fn`` (``_layer_norm_fwd``): contiguous copies of x and z where
    needed, the output like x, a float32 rstd per row and group."""
    x2 = x.reshape(-1, x.shape[-1])
    x2 = x2 if x2.stride(-1) == 1 else x2.contiguous()
    if z is not None:
        z2 = z.reshape(-1, z.shape[-1])
        z2 = z2 if z2.stride(-1) == 1 else z2.contiguous()
    groups = x2.shape[1] // (group_size or x2.shape[1])
    out = torch.empty_like(x2)
    rstd = x2.new_empty((groups * x2.shape[0],), dtype=torch.float32)
    del rstd
    return out.reshape(x.shape)


def _conv1d_fn(x, weight, bias=None, activation=None, **_):
    """causal-conv1d's ``causal_conv1d_fn``: one output allocated like the input."""
    if x.stride(2) != 1 and x.stride(1) != 1:
        x = x.contiguous()
    return torch.empty_like(x)


def _conv1d_update(x, conv_state, weight, bias=None, activation=None, **_):
    """causal-conv1d's ``causal_conv1d_update``: the state is updated in place, one output like the input."""
    return torch.empty_like(x)


def _flash_attention(module, query, key, value, attention_mask, dropout=0.0, scaling=None, **_):
    """SDPA's flash kernel: output [b, q, h, d] and a float32 log-sum-exp [b, h, q]; K/V are not repeated."""
    b, h, q, _d = query.shape
    out = query.new_empty((b, q, h, value.shape[-1]))
    lse = query.new_empty((b, h, q), dtype=torch.float32)
    del lse
    return out, None


@contextmanager
def _triton_launches_off(autotune: bool = True):
    try:
        from triton.runtime.jit import KernelInterface
    except Exception:  # noqa: BLE001 - no triton: the closed form is in use anyway
        yield
        return
    from triton.runtime.autotuner import Autotuner

    tuned: set[int] = set()

    def launch(self, grid):
        if autotune and isinstance(self, Autotuner) and len(self.configs) > 1 and id(self) not in tuned:
            tuned.add(id(self))  # its first call benchmarks the configs with the L2-flush buffer alive
            buffer = torch.empty(AUTOTUNE_BUFFER_BYTES // 4, dtype=torch.int32)
            del buffer
        return lambda *args, **kwargs: None

    original, cuda_device = KernelInterface.__getitem__, torch.cuda.device
    KernelInterface.__getitem__ = launch
    torch.cuda.device = lambda *args, **kwargs: nullcontext()  # the wrappers select the tensors' GPU
    try:
        yield
    finally:
        KernelInterface.__getitem__ = original
        torch.cuda.device = cuda_device


@contextmanager
def gpu_kernels(mamba: str = "mamba-ssm", autotune: bool = True):
    """Within the block, the backbones allocate as on a GPU (see the module doc). ``mamba="torch"`` keeps
    transformers' reference Mamba code (what a GPU without mamba-ssm runs) and only swaps attention;
    ``autotune=False`` leaves out the autotuner's buffer (a warm process, or to compare code paths)."""
    from transformers import AttentionInterface
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    from architectures import attention, kernels

    saved_attn = ALL_ATTENTION_FUNCTIONS[attention.NAME]
    AttentionInterface.register(attention.NAME, _flash_attention)
    patched: list[tuple[object, str, object]] = []
    try:
        if mamba == "mamba-ssm":
            # the modeling modules first: they bind their kernels when imported, and must not see mamba-ssm here
            modules = [sys.modules.get(name) or importlib.import_module(name) for name in _MODELING]
            funcs, _ = _mamba_ssm()
            scan = _filtered(funcs["chunk_scan"]) if funcs else _closed_form_chunk_scan
            update = _filtered(funcs["state_update"]) if funcs else None
            norm = kernels.fused_gated_norm(funcs["gated_norm"] if funcs else _closed_form_gated_norm)
            for module in modules:
                for name in kernels.GATED_NORMS:
                    cls = getattr(module, name, None)
                    if cls is not None:
                        patched.append((cls, "forward", cls.forward))
                        cls.forward = norm
                for attr, repl in (("mamba2_chunk_scan", scan), ("mamba2_selective_state_update", update),
                                   ("causal_conv1d_fn", _conv1d_fn), ("causal_conv1d_update", _conv1d_update)):
                    if repl is not None and hasattr(module, attr):
                        patched.append((module, attr, getattr(module, attr)))
                        setattr(module, attr, repl)
        with _triton_launches_off(autotune):
            yield
    finally:
        for module, attr, original in reversed(patched):
            setattr(module, attr, original)
        AttentionInterface.register(attention.NAME, saved_attn)
