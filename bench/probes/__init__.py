"""Information-flow probes (issue 18): attention knockout sweeps, the logit lens and mixing maps.

Between the command line and the engine: a probe gets a built backbone and prepared documents
(``bench.probes.prompts``), runs passes through the harness's own layer loop
(``bench.engine.pipeline.prefill``) and returns rows of curves for one ``kind: "flow"`` record.
"""
