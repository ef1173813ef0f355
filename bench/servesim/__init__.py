"""Serving simulated: vLLM's V1 scheduler step by step (``sim``), vLLM's defaults, the KV space, a measured
record replayed and the calibration fit (``simulate``), and the serving record both engines write
(``records``). It needs only a model's analytic shape (``bench.measure.cost``), so ``predict`` and ``serve``
both call it."""
