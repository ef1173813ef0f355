"""Fused Mamba kernels: which implementation transformers bound, and which one a tensor's device runs.

transformers binds mamba-ssm's and causal-conv1d's functions when its modeling module is
imported, if those packages import, and its own torch code otherwise, with no device check:
with the ``gpu`` extra installed a CPU cell would send CPU tensors into GPU kernels. So each
op is wrapped in a router (``install``):

- CUDA tensors run the bound implementation (mamba-ssm / causal-conv1d when they imported);
- CPU tensors run the library's torch code, except under Triton's interpreter
  (``TRITON_INTERPRET=1``, see ``use_triton_interpreter``), the CPU proxy of the GPU path,
  where mamba-ssm's Triton kernels run on the CPU too.

The Mamba-2 blocks' gated RMSNorm (``NemotronHRMSNormGated``, ``MambaRMSNormGated``) is a module,
not a bound function: transformers always runs its torch code, which upcasts to float32 and keeps
three float32 [L, inner] tensors alive. Where mamba-ssm bound, its ``forward`` is routed the same
way, to mamba-ssm's fused Triton norm (``mamba_ssm.ops.triton.layernorm_gated.rmsnorm_fn``, gate
applied before the norm, as the library's module does); op ``gated_rmsnorm``.

``implementations(device)`` says what a cell on ``device`` runs, op by op; records carry it
(``env.kernels``), so a broken mamba-ssm wheel that fell back to torch is never recorded as
the kernel. ``forced("torch" | "kernel")`` overrides the routing (tests compare both paths).
"""

from __future__ import annotations

import contextlib
import inspect
import os
import sys
import types
from collections import Counter
from importlib.metadata import PackageNotFoundError, version

# Global name in transformers' Mamba2/NemotronH modeling modules -> the op it stands for.
OPS = {
    "mamba2_chunk_scan": "mamba_chunk_scan_combined",
    "mamba2_selective_state_update": "selective_state_update",
    "mamba2_split_conv1d_scan_combined": "mamba_split_conv1d_scan_combined",
    "causal_conv1d_fn": "causal_conv1d_fn",
    "causal_conv1d_update": "causal_conv1d_update",
}
# The gated RMSNorm modules of the same modeling modules (routed by ``install`` as op GATED_NORM).
GATED_NORMS = ("NemotronHRMSNormGated", "MambaRMSNormGated")
GATED_NORM = "gated_rmsnorm"
PACKAGES = ("mamba_ssm", "causal_conv1d", "flash_attn")
PATHS = ("torch", "kernel")

_ROUTERS: dict[str, "Router"] = {}  # op -> router (the last module installed wins; all bind alike)
_forced: str | None = None
calls: Counter = Counter()  # (op, "torch" | package) -> calls since the process started


def interpreter_active() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


class Router:
    """Calls the bound kernel or the library's torch code for one op, by the device of its first tensor."""

    def __init__(self, op: str, wrapped):
        torch_fn = wrapped.__wrapped__  # the library's reference code (functools.wraps)
        binding = inspect.getclosurevars(wrapped).nonlocals  # what transformers' decorator closed over
        bound = binding.get("implementation", torch_fn)
        kernel = None if bound is torch_fn else bound
        self._bind(op, torch_fn, kernel, binding.get("package", bound.__module__.split(".")[0]) if kernel else None)

    def _bind(self, op: str, torch_fn, kernel, package: str | None) -> None:
        self.op, self.torch_fn, self.kernel, self.package = op, torch_fn, kernel, package
        self._accepts = _accepted(self.torch_fn)
        self._kernel_accepts = _accepted(self.kernel) if self.kernel else None

    def path_for(self, device_type: str) -> str:
        if self.kernel is None:
            return "torch"
        if _forced is not None:
            return _forced
        return "kernel" if device_type == "cuda" or interpreter_active() else "torch"

    def __call__(self, *args, **kwargs):
        first = next((a for a in args if hasattr(a, "device")), None)
        if self.path_for(first.device.type if first is not None else "cpu") == "kernel":
            calls[(self.op, self.package)] += 1
            return self.kernel(*args, **_only(kwargs, self._kernel_accepts))
        calls[(self.op, "torch")] += 1
        return self.torch_fn(*args, **_only(kwargs, self._accepts))


class GatedNormRouter(Router):
    """A gated RMSNorm module's ``forward`` (self, hidden_states, gate): its torch code or mamba-ssm's fused norm."""

    def __init__(self, torch_forward, fused):
        self._bind(GATED_NORM, torch_forward, fused, "mamba_ssm" if fused is not None else None)

    def __call__(self, norm, hidden_states, gate=None):
        if self.path_for(hidden_states.device.type) == "kernel":
            calls[(self.op, self.package)] += 1
            return self.kernel(norm, hidden_states, gate)
        calls[(self.op, "torch")] += 1
        return self.torch_fn(norm, hidden_states, gate)


def fused_gated_norm(rmsnorm_fn):
    """A gated RMSNorm module's forward on mamba-ssm's ``rmsnorm_fn`` (norm(x * silu(gate)) per group)."""

    def forward(norm, hidden_states, gate=None):
        return rmsnorm_fn(hidden_states, norm.weight, None, z=gate, eps=norm.variance_epsilon,
                          group_size=norm.group_size, norm_before_gate=False)

    return forward


def _mamba_ssm_norm():
    try:
        from mamba_ssm.ops.triton.layernorm_gated import rmsnorm_fn
    except Exception:  # noqa: BLE001 - a broken install leaves the norm on torch, as transformers does for its ops
        return None
    return fused_gated_norm(rmsnorm_fn)


def _accepted(fn) -> frozenset[str] | None:
    params = inspect.signature(fn).parameters.values()
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return None
    return frozenset(p.name for p in params)


def _only(kwargs: dict, accepted: frozenset[str] | None) -> dict:
    return kwargs if accepted is None else {k: v for k, v in kwargs.items() if k in accepted}


def install(module: types.ModuleType) -> None:
    """Wrap the op globals of a transformers modeling module in routers (idempotent)."""
    for name, op in OPS.items():
        fn = getattr(module, name, None)
        if fn is None:
            continue
        if not isinstance(fn, Router):
            if not hasattr(fn, "__wrapped__"):
                raise RuntimeError(f"{module.__name__}.{name} is not a transformers kernel binding")
            fn = Router(op, fn)
            setattr(module, name, fn)
        _ROUTERS[op] = fn
    scan = _ROUTERS.get("mamba_chunk_scan_combined")
    for name in GATED_NORMS:
        cls = getattr(module, name, None)
        if cls is None:
            continue
        router = getattr(cls.forward, "router", None)
        if router is None:
            router = GatedNormRouter(cls.forward, _mamba_ssm_norm() if scan and scan.package == "mamba_ssm" else None)

            def forward(self, hidden_states, gate=None, _router=router):
                return _router(self, hidden_states, gate)

            forward.router = router
            cls.forward = forward
        _ROUTERS[GATED_NORM] = router


def implementations(device: str) -> dict[str, str]:
    """Op -> what a cell on ``device`` runs: ``torch`` or ``<package> <version>``."""
    device_type = device.split(":")[0]
    out = {}
    for op, router in sorted(_ROUTERS.items()):
        if router.path_for(device_type) == "kernel" and router.kernel is not None:
            mode = " (triton interpreter)" if device_type == "cpu" else ""
            out[op] = f"{router.package} {package_version(router.package)}{mode}"
        else:
            out[op] = "torch"
    return out


def bound() -> dict[str, str]:
    """Op -> the implementation transformers bound at import (``torch`` when the package did not import)."""
    return {op: r.package or "torch" for op, r in sorted(_ROUTERS.items())}


def package_version(name: str) -> str | None:
    try:
        return version(name.replace("_", "-"))
    except PackageNotFoundError:
        return None


def installed() -> dict[str, str | None]:
    """Kernel packages installed (their versions), whether or not they import."""
    return {name: package_version(name) for name in PACKAGES}


@contextlib.contextmanager
def forced(path: str | None):
    """Inside the block, run every routed op on ``path``: "torch", or "kernel" where one is bound
    (ops whose package did not import stay on torch); None: by device."""
    global _forced
    if path is not None and path not in PATHS:
        raise ValueError(f"unknown kernel path {path!r}; valid: {', '.join(PATHS)}")
    saved, _forced = _forced, path
    try:
        yield
    finally:
        _forced = saved


def use_triton_interpreter(first_config_only: bool = True) -> None:
    """Make mamba-ssm's Triton kernels run on the CPU (fp32 only: the interpreter's bf16 dot is wrong).

    Must run before transformers' Mamba2/NemotronH modeling modules are imported. Shims:
    an empty ``selective_scan_cuda`` (mamba_ssm's ``__init__`` imports the CUDA extension),
    ``torch.cuda.device(None)`` as a null context (the kernels' wrappers enter it with the
    tensor's index, None on CPU), and autotuners limited to their first config.
    """
    loaded = [m for m in ("transformers.models.mamba2.modeling_mamba2",
                          "transformers.models.nemotron_h.modeling_nemotron_h") if m in sys.modules]
    if loaded:
        raise RuntimeError(f"use_triton_interpreter() must run before {loaded[0]} is imported")
    os.environ["TRITON_INTERPRET"] = "1"
    sys.modules.setdefault("selective_scan_cuda", types.ModuleType("selective_scan_cuda"))
    import torch

    if not getattr(torch.cuda.device, "_viperbench_null_on_none", False):
        real = torch.cuda.device

        class device:  # noqa: N801 - stands in for torch.cuda.device
            _viperbench_null_on_none = True

            def __init__(self, index):
                self._inner = None if index is None else real(index)

            def __enter__(self):
                return self._inner.__enter__() if self._inner is not None else None

            def __exit__(self, *exc):
                return self._inner.__exit__(*exc) if self._inner is not None else False

        torch.cuda.device = device
    if first_config_only:
        from triton.runtime import autotuner

        init = autotuner.Autotuner.__init__
        if not getattr(init, "_viperbench_first_config", False):
            def first_config(self, fn, arg_names, configs, *args, **kwargs):
                init(self, fn, arg_names, configs[:1], *args, **kwargs)

            first_config._viperbench_first_config = True
            autotuner.Autotuner.__init__ = first_config
