"""Workload registry: synthetic lengths, or task documents with decoded frames."""

from bench.registry import Registry

TASKS = Registry(
    "task",
    "viperbench.tasks",
    {
        "synthetic": ("tasks.synthetic", "lengths only: random frames or vision embeddings and random prompt ids"),
    },
)
register_task = TASKS.register
