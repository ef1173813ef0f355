"""Workload registry: synthetic lengths, or task documents with decoded frames."""

from bench.registry import Registry

TASKS = Registry(
    "task",
    "viperbench.tasks",
    {
        "synthetic": ("tasks.synthetic", "lengths only: random frames or vision embeddings and random prompt ids"),
        "videomme": ("tasks.videomme", "Video-MME multiple choice: parquet + data/{videoID}.mp4; accuracy by split"),
        "charades": ("tasks.charades", "Charades-STA temporal grounding: charades_sta_test.txt; mIoU, R@0.3/0.5/0.7"),
        "vdc": ("tasks.vdc", "VDC detailed captions (five types), VDCscore through an LLM judge"),
        "vniah": ("tasks.vniah", "V-NIAH: a needle frame at depth d of a generated haystack; accuracy per length x depth"),
    },
)
register_task = TASKS.register
