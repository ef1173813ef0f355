"""Fake tensors for the data, real ones for the token layout: what a real video LLM's prompt needs.

A real video LLM's processor and model code compute the prompt's layout from integer tensors:
the placeholder ids of the processor's text, the video grid (temporal patches x height x width),
3-D rotary positions, vision masks, frame indices. They read their values (``.tolist()``, loops,
``nonzero``), which a fake tensor has none of. Under :class:`RealLayout` (pushed above
``FakeTensorMode(allow_non_fake_inputs=True)``):

- an op whose tensor inputs are all real runs for real (the layout, from real integers);
- a factory op (no tensor inputs) runs fake, and again for real when its result is an integer
  or boolean tensor (``torch.tensor(grid)``, ``arange``: layout again); floating results
  (weights, pixels, activations) stay fake;
- an op that mixes fake data with real layout runs fake; a real boolean index is first made the
  integer index it selects, so the result's shape is known without data;
- a float32 mixture-of-experts ``grouped_mm``, which this CPU build runs and the meta registration
  (written for the GPU kernel, bf16 only) refuses, gets its output's shape here.

Real tensors are still counted by ``LiveBytes`` as the device memory they are on a GPU.
"""

from __future__ import annotations

import torch
from torch._subclasses.fake_tensor import FakeTensor, unset_fake_temporarily
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

GROUPED_MM = torch.ops.aten._grouped_mm.default
INDEX_OPS = {torch.ops.aten.index.Tensor, torch.ops.aten.index_put.default, torch.ops.aten.index_put_.default,
             torch.ops.aten._unsafe_index_put.default}


def _is_layout(t) -> bool:
    return isinstance(t, torch.Tensor) and not isinstance(t, FakeTensor)


class RealLayout(TorchDispatchMode):
    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        tensors = [t for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)]
        if tensors and all(_is_layout(t) for t in tensors):
            with unset_fake_temporarily():
                return func(*args, **kwargs)
        if func is GROUPED_MM and args[0].dtype == torch.float32:
            return _grouped_mm_2d_3d(*args, **kwargs)
        if func in INDEX_OPS:
            args = (args[0], [j for i in args[1] for j in _int_index(i)], *args[2:])
        out = func(*args, **kwargs)
        if not tensors:
            results = [t for t in tree_flatten(out)[0] if isinstance(t, torch.Tensor)]
            if results and not any(t.is_floating_point() or t.is_complex() for t in results):
                with unset_fake_temporarily():
                    return func(*args, **kwargs)
        return out


def _grouped_mm_2d_3d(a, b, offs=None, bias=None, out_dtype=None):
    """A mixture-of-experts matmul ([tokens, in] by [experts, in, out], grouped by ``offs``) in float32,
    which this CPU build runs and the meta registration refuses (the GPU kernel takes bf16 only)."""
    if a.dim() != 2 or b.dim() != 3:
        raise NotImplementedError(f"float32 grouped_mm of {a.dim()}-D by {b.dim()}-D operands is not predicted")
    return torch.empty((a.shape[0], b.shape[-1]), dtype=out_dtype or a.dtype)


def _int_index(index) -> list:
    """A real boolean mask over k dimensions -> the k integer indices it selects; any other index as it is."""
    if _is_layout(index) and index.dtype == torch.bool:
        with unset_fake_temporarily():
            return list(index.nonzero().unbind(1))
    return [index]
