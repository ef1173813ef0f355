"""Serving: vLLM's own benchmarks driven as a child process (``vllm_driver``), and vLLM's V1 scheduler
simulated for any device (``sim``), both written as ``kind: "serving"`` records (``records``)."""
