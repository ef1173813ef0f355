"""Serving measured: vLLM's own benchmarks driven as child processes (``vllm_driver``) on a preset written as a
checkpoint (``checkpoint``), as ``kind: "serving"`` records (``bench.servesim.records``)."""
