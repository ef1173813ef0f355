"""lmms-eval model ``viperbench``: every lmms-eval video task through the harness's generate loop.

Registered by the entry point ``lmms_eval.models`` (``bench.evaluation.lmms_entry``, extra ``lmms``),
so lmms-eval's own command runs it::

    lmms-eval --model viperbench --model_args arch=hybrid,preset=tiny,frames=16 --tasks videomme ...
    lmms-eval --model viperbench --model_args checkpoint=DIR,compressor=transv --tasks ...

``model_args``: the cell's ``arch``, ``preset`` or ``checkpoint``, ``compressor`` (its own keys
separated by ``;``), ``device``, ``dtype``, ``prefill_chunk``, ``seed``; the sampling ``frames``
(uniform; default 16, as ``viperbench eval``) or ``fps`` (at most ``frames``); ``vision``
(``siglip``, the default, or ``synthetic``), ``tokens_per_frame``, ``decoder``; ``log``, a JSONL
file that gets one line per document (task, doc_id, output, token counts, stage times, error).
Other keys and values of the wrong type are one-line errors (``bench.evaluation.model_args``).

Each ``generate_until`` request is one video document: its video is decoded with viperbench's
decoder, then the context runs through ``bench.evaluation.evaluate.run_document``, the path
``viperbench eval`` takes (the checkpoint's processor and chat template for a real family, the own
layout ``[BOS][video][prompt]`` for the own backbones), greedy up to ``max_new_tokens``, cut at the
first ``until`` string. Each result carries its token counts into lmms-eval's samples.
Images, several videos in one document, documents without a video, ``loglikelihood`` and
multi-round requests are refused with one line. A video that cannot be decoded gives an empty
answer and an error line in the log, as in ``viperbench eval``.
"""

from __future__ import annotations

import sys

from lmms_eval.api.instance import GenerationResult, TokenCounts
from lmms_eval.api.model import lmms

from bench.errors import UserError
from bench.evaluation import model_args

MODEL_ARGS = {**model_args.CELL_ARGS, "frames": int, "fps": float, "vision": str, "tokens_per_frame": int,
              "decoder": str, "log": str}
DEFAULT_NEW_TOKENS = 256  # when a task's generation_kwargs name no max_new_tokens
RUNS: list["ViperbenchLMMS"] = []  # the models made in this process (``viperbench lmms-eval`` writes their records)
DEFAULTS: dict = {}  # model_args defaults ``viperbench lmms-eval`` sets (``log`` next to lmms-eval's samples)


class ViperbenchLMMS(lmms):
    is_simple = True

    def __init__(self, **kwargs):
        super().__init__()
        from architectures.tokenizer import tokenizer_for
        from bench.measure.runner import build_model
        from bench.spec import check_device, make_spec

        args = {**DEFAULTS, **model_args.check(kwargs, MODEL_ARGS)}
        self.fps, self.log = args.get("fps"), args.get("log")
        self.spec = make_spec(model_args.cell_values(args, frames=args.get("frames", 16),
                                                     vision=args.get("vision", "siglip"),
                                                     tokens_per_frame=args.get("tokens_per_frame"),
                                                     decoder=args.get("decoder"), warmup=0, repeats=1))
        check_device(self.spec)
        if self.log:
            from bench.records import check_writable

            check_writable(self.log)
        self.model = build_model(self.spec)
        self.tok = tokenizer_for(self.model.backbone)
        self.runs: dict[str, dict] = {}  # task -> {"n_total", "timings", "tokens_in", "kept"}
        self._warned: set[str] = set()
        RUNS.append(self)

    @classmethod
    def create_from_arg_string(cls, arg_string: str, additional_config: dict | None = None) -> "ViperbenchLMMS":
        """lmms-eval passes ``batch_size``, ``max_batch_size`` and ``device`` to every model: documents run one at
        a time here; ``device`` applies unless ``model_args`` names one."""
        from lmms_eval.utils import simple_parse_args_string

        args = model_args.parse(arg_string, simple_parse_args_string)
        device = (additional_config or {}).get("device")
        if "device" not in args and device:
            args["device"] = str(device)
        return cls(**args)

    # --- lmms-eval's request types ------------------------------------------------------------
    def loglikelihood(self, requests):
        raise UserError("--model viperbench: loglikelihood requests are not implemented (generate_until tasks only)")

    def generate_until_multi_round(self, requests):
        raise UserError("--model viperbench: multi-round requests are not implemented (generate_until tasks only)")

    def generate_until(self, requests) -> list[GenerationResult]:
        return [self._answer(*request.args) for request in requests]

    # --- one document -------------------------------------------------------------------------
    def _video(self, doc_to_visual, doc_id, task: str, split: str) -> str:
        visuals = doc_to_visual(self.task_dict[task][split][doc_id]) if doc_to_visual is not None else None
        visuals = [] if visuals is None else list(visuals)
        if len(visuals) != 1 or not isinstance(visuals[0], str):
            what = "no video" if not visuals else f"{len(visuals)} visuals" if len(visuals) > 1 else \
                f"an image or other visual ({type(visuals[0]).__name__}), not a video path"
            raise UserError(f"--model viperbench: task {task!r} document {doc_id} has {what}; "
                            "one video per document only")
        return visuals[0]

    def _warn_once(self, message: str) -> None:
        if message not in self._warned:
            self._warned.add(message)
            print(f"warning: {message}", file=sys.stderr)

    def _answer(self, context: str, gen_kwargs: dict, doc_to_visual, doc_id, task: str, split: str):
        from bench.evaluation.evaluate import run_document
        from bench.records import append_record
        from tasks.video import VideoError

        gen_kwargs = dict(gen_kwargs or {})
        if gen_kwargs.get("do_sample") or float(gen_kwargs.get("temperature") or 0) > 0:
            self._warn_once(f"task {task!r} asks for sampling; --model viperbench decodes greedily")
        max_new = int(gen_kwargs.get("max_new_tokens") or DEFAULT_NEW_TOKENS)
        until = gen_kwargs.get("until") or []
        until = [until] if isinstance(until, str) else list(until)
        video = self._video(doc_to_visual, doc_id, task, split)
        run = self.runs.setdefault(task, {"n_total": 0, "timings": [], "tokens_in": [], "kept": []})
        run["n_total"] += 1
        entry = {"task": task, "doc_id": doc_id, "video": video, "output": "", "error": None}
        try:
            doc = run_document(self.spec, self.model, self.tok, video, context, max_new, fps=self.fps,
                               seed=self.spec.seed + int(doc_id))
            text = self.tok.decode(doc.ids)
            for stop in until:
                text = text.split(stop)[0] if stop else text
            entry.update(output=text, tokens_in=doc.tokens_in, tokens_after_compression=doc.kept,
                         timings=doc.timings)
            run["timings"].append(doc.timings)
            run["tokens_in"].append(doc.tokens_in)
            run["kept"].append(doc.kept)
            counts = TokenCounts(input_tokens=doc.tokens_in, output_tokens=len(doc.ids))
        except (VideoError, RuntimeError, ValueError) as exc:
            entry["error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
            print(f"warning: {task} document {doc_id}: {entry['error']}", file=sys.stderr)
            counts = None
        if self.log:
            append_record(self.log, entry)
        return GenerationResult(text=entry["output"], token_counts=counts)

    # --- the viperbench record ----------------------------------------------------------------
    def records(self, results: dict | None) -> list[dict]:
        """One ``eval`` record per task this model answered: the mean stage times and token counts, with
        lmms-eval's metrics for that task (``results["results"][task]``, numbers only) when given."""
        import statistics
        from importlib.metadata import version

        from bench.evaluation.evaluate import mean_stage_times
        from bench.engine.own_layout import sampling_label
        from bench.records import environment, make_record

        out = []
        scores = (results or {}).get("results", {})
        for task, run in self.runs.items():
            metrics = {k.split(",")[0]: v for k, v in scores.get(task, {}).items()
                       if isinstance(v, (int, float)) and not isinstance(v, bool) and "stderr" not in k}
            n = len(run["timings"])
            metrics.update(n=n, n_total=run["n_total"])
            run_metrics = mean_stage_times(run["timings"])
            if n:
                run_metrics.update(input_tokens=round(statistics.fmean(run["tokens_in"])),
                                   tokens_after_compression=round(statistics.fmean(run["kept"])))
            out.append(make_record(self.spec.to_dict(), environment(self.spec.device, self.spec.decoder),
                                   metrics=run_metrics, kind="eval",
                                   task={"name": task, "metrics": metrics, "n": n, "n_total": run["n_total"],
                                         "data": f"lmms-eval {version('lmms-eval')}",
                                         "tokenizer": self.tok.name, "sampling": sampling_label(self.spec.frames,
                                                                                              self.fps)}))
        return out


def _output_dir(argv: list[str]) -> str | None:
    """The folder of lmms-eval's ``--output_path`` (a folder, or a results file in it), if given."""
    import os

    for k, arg in enumerate(argv):
        path = arg.split("=", 1)[1] if arg.startswith("--output_path=") else \
            argv[k + 1] if arg == "--output_path" and k + 1 < len(argv) else None
        if path:
            return os.path.dirname(path) or "." if path.endswith((".json", ".jsonl")) else path
    return None


def main(argv: list[str]) -> int:
    """lmms-eval's command line with the ``viperbench`` model registered. With ``--output_path DIR`` the
    per-document log defaults to ``DIR/viperbench_docs.jsonl`` and each task's ``eval`` record (stage times,
    token counts and lmms-eval's metrics) is appended to ``DIR/viperbench.jsonl``."""
    import os

    import lmms_eval.__main__ as lmms_main
    from lmms_eval.cli.dispatch import main as lmms_cli
    from lmms_eval.models import MODEL_REGISTRY_V2

    from bench.evaluation.lmms_entry import MANIFEST
    from bench.records import append_record

    MODEL_REGISTRY_V2.register_manifest(MANIFEST, overwrite=True)  # also when installed without the entry point
    out_dir = _output_dir(argv)
    if out_dir:
        os.makedirs(out_dir, exist_ok=True)
        DEFAULTS["log"] = os.path.join(out_dir, "viperbench_docs.jsonl")
    outcome: dict = {"results": [], "failed": 0, "user_error": None}
    evaluate_one = lmms_main.cli_evaluate_single

    def evaluate_and_keep(args=None):
        try:
            results, samples = evaluate_one(args)
        except UserError as exc:
            outcome["user_error"] = exc
            raise
        except Exception:
            outcome["failed"] += 1
            raise
        outcome["results"].append(results)
        return results, samples

    lmms_main.cli_evaluate_single = evaluate_and_keep  # lmms-eval prints and swallows a failed evaluation
    saved_argv = sys.argv
    sys.argv = ["lmms-eval", *argv]
    try:
        lmms_cli()
    finally:
        sys.argv, lmms_main.cli_evaluate_single = saved_argv, evaluate_one
        DEFAULTS.clear()
    if outcome["user_error"] is not None:
        raise outcome["user_error"]
    if out_dir:
        results = next((r for r in outcome["results"] if r), None)
        for model in RUNS:
            for record in model.records(results):
                append_record(os.path.join(out_dir, "viperbench.jsonl"), record)
    RUNS.clear()
    return 1 if outcome["failed"] else 0
