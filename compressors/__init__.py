"""Visual-token compressor registry. A compressor is written ``name:key=value,...``."""

from bench.registry import Registry

COMPRESSORS = Registry(
    "compressor",
    "viperbench.compressors",
    {
        "none": ("compressors.base", "no compression: every vision token reaches every layer"),
    },
)
register_compressor = COMPRESSORS.register
