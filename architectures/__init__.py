"""Backbone registry: each entry is a thin adapter over a transformers causal-LM class."""

from bench.registry import Registry

ARCHITECTURES = Registry(
    "architecture",
    "viperbench.architectures",
    {
        "transformer": ("architectures.transformer", "pure Transformer: transformers' Qwen3 (paper preset: Qwen3-8B)"),
        "mamba": ("architectures.mamba", "pure Mamba-2: transformers' Mamba2 (paper preset: hybrid's width and depth)"),
        "hybrid": (
            "architectures.hybrid",
            "hybrid Mamba-2/Transformer: transformers' NemotronH, TimeViper layout (paper: Nemotron-Nano-9B-v2)",
        ),
    },
)
register_architecture = ARCHITECTURES.register
