"""Visual-token compressor registry. A compressor is written ``name:key=value,...``."""

from bench.registry import Registry

COMPRESSORS = Registry(
    "compressor",
    "viperbench.compressors",
    {
        "none": ("compressors.base", "no compression: every vision token reaches every layer"),
        "uniform": ("compressors.dropping", "uniform:layer=L,p=P keep evenly spaced vision tokens before layer L"),
        "attention": ("compressors.dropping",
                      "attention:layer=L,p=P keep the vision tokens the last instruction token attends to most"),
        "fastv": ("compressors.dropping", "fastv:layer=2,p=0.5 FastV, attention-guided dropping at layer 2"),
        "td": ("compressors.dropping", "td:schedule=uni_7_0.5-attn_39_0.9 staged dropping without transfer"),
        "transv": ("compressors.transv",
                   "transv:schedule=...,init=nearest_attn|random TimeViper's dropping + gated cross-attention transfer"),
        "stc_cacher": ("compressors.stc",
                       "stc_cacher:cache_interval=2,update_ratio=0.25 STC-Cacher, reuse reference-frame tower work"),
        "stc_pruner": ("compressors.stc",
                       "stc_pruner:tokens_per_frame=8,variant=paper|code STC-Pruner, keep each frame's novel tokens"),
        "stc": ("compressors.stc", "stc:cache_interval=2,update_ratio=0.25,tokens_per_frame=8 STC-Cacher + STC-Pruner"),
        "evs": ("compressors.evs", "evs:p=0.5 EVS, drop video tokens similar to the previous frame (Nemotron-Omni's rule)"),
        "visionzip": ("compressors.visionzip",
                      "visionzip:dominant=6,contextual=2 VisionZip, most-attended tokens + merged contextual tokens"),
    },
)
register_compressor = COMPRESSORS.register
