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
        # Real video LLMs (checkpoint's own vision tower, processor and chat template; see architectures/families)
        "nemotron_h_omni": ("architectures.families.nemotron_omni",
                            "Nemotron-3-Nano-Omni hybrid video LLM with EVS (paper: 30B-A3B)"),
        "qwen3_vl": ("architectures.families.qwen3_vl", "Qwen3-VL video LLM (paper: 8B)"),
        "qwen3_vl_moe": ("architectures.families.qwen3_vl", "Qwen3-VL-MoE video LLM (paper: 30B-A3B)"),
        "llava_onevision": ("architectures.families.llava_onevision", "LLaVA-OneVision video LLM (paper: 7B)"),
    },
)
register_architecture = ARCHITECTURES.register
