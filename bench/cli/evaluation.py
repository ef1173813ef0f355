"""Accuracy: evaluate on a task's local data, score saved predictions, lm-eval's and lmms-eval's command lines."""

from __future__ import annotations

import argparse
import json

from bench import flags
from bench.errors import UserError
from bench.cli.common import CELL_LABELS, TASK_CELL_DEFAULTS, add_cell_flags, cell_values, task_data


def add_commands(sub) -> None:
    p = sub.add_parser("eval", help="accuracy on a task's local data (per-document log + one aggregate record)")
    add_cell_flags(p, lists=False)
    p.add_argument("--data", help="the task's data directory, in its official layout (vniah: generated from --seed "
                                  "when not given)")
    p.add_argument("--fps", type=flags.positive_float, help="sample at this rate, at most --frames frames (TimeViper: --fps 1 --frames 256)")
    p.add_argument("--limit", type=flags.positive_int, help="only the first N documents")
    p.add_argument("--judge", help="VDC judge: openai:URL#MODEL (an OpenAI-compatible server) or local:DIR")
    p.add_argument("--subtitles", action="store_true", help="Video-MME with subtitles")
    p.add_argument("--fidelity", action="store_true",
                   help="also run without the compressor: answer agreement and first-token KL")
    p.add_argument("--knockout", help="attention knockout EDGE[+EDGE...][:layers=I-J], e.g. video->text or "
                                      "video->last+video->question:layers=4-9 (groups: video, text, question, "
                                      "last, bos; frame->frame): evaluate with those edges blocked")
    p.add_argument("--log", help="per-document JSONL log (a valid --predictions file for score)")
    p.add_argument("--output", help="append the aggregate record to this JSONL file")
    p.set_defaults(handler=cmd_eval)

    p = sub.add_parser("score", help="score saved predictions against a task's annotations (no model, no videos)")
    p.add_argument("--task", required=True, help="videomme | charades | vdc")
    p.add_argument("--data", required=True, help="the task's data directory (annotations only are read)")
    p.add_argument("--predictions", required=True, help='JSONL: {"id": ..., "output": "raw model text"} per line')
    p.add_argument("--judge", help="VDC judge: openai:URL#MODEL or local:DIR")
    p.add_argument("--output", help="append the aggregate record to this JSONL file")
    p.set_defaults(handler=cmd_score)

    p = sub.add_parser("lm-eval", add_help=False,
                       help="lm-eval's command line with the viperbench model registered (extra `eval`)")
    p.add_argument("args", nargs=argparse.REMAINDER, help="lm-eval's own flags, e.g. --model viperbench ...")
    p.set_defaults(handler=cmd_lm_eval)

    p = sub.add_parser("lmms-eval", add_help=False,
                       help="lmms-eval's command line with the viperbench model registered (extra `lmms`)")
    p.add_argument("args", nargs=argparse.REMAINDER, help="lmms-eval's own flags, e.g. --model viperbench ...")
    p.set_defaults(handler=cmd_lmms_eval)

    p = sub.add_parser("lmms-task", help="an lmms-eval task on a local copy of its data (an --include_path folder)")
    p.add_argument("task", help="videomme")
    p.add_argument("--data", required=True, help="the data directory, in the layout `eval --task TASK` reads")
    p.add_argument("--out", required=True, help="write the task here; give it to lmms-eval as --include_path")
    p.set_defaults(handler=cmd_lmms_task)


def cmd_eval(args) -> int:
    from architectures.knockout import parse_knockout
    from bench.evaluation.evaluate import evaluate
    from bench.spec import make_spec

    knockout = parse_knockout(args.knockout) if args.knockout is not None else None
    values = {**TASK_CELL_DEFAULTS, **cell_values(args)}
    if not values.get("task") or values["task"] == "synthetic":
        raise UserError("eval needs --task (videomme, charades, vdc, vniah)")
    spec = make_spec(values, CELL_LABELS)
    data, label = task_data(spec, args.data, "eval")
    record = evaluate(spec, data, data_label=None if args.data else label, judge=args.judge, subtitles=args.subtitles,
                      limit=args.limit, fps=args.fps, fidelity=args.fidelity, log=args.log, output=args.output, knockout=knockout)
    print(json.dumps(record["task"]))
    return 0


def cmd_score(args) -> int:
    from bench.evaluation.evaluate import score_predictions

    record = score_predictions(args.task, args.data, args.predictions, judge=args.judge, output=args.output)
    print(json.dumps(record))
    return 0


def cmd_lm_eval(args) -> int:
    try:
        from bench.evaluation.lm_eval_model import main as lm_eval_main
    except ModuleNotFoundError as exc:
        raise UserError(f"lm-eval is not installed ({exc.name}): pip install -e '.[eval]'") from None
    return lm_eval_main(args.args)


def _lmms(module: str):
    import importlib

    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as exc:
        raise UserError(f"lmms-eval is not installed ({exc.name}): pip install -e '.[lmms]'") from None


def cmd_lmms_eval(args) -> int:
    return _lmms("bench.evaluation.lmms_model").main(args.args)


def cmd_lmms_task(args) -> int:
    path = _lmms("bench.evaluation.lmms_tasks").write_local_task(args.task, args.data, args.out)
    print(json.dumps({"task": path.stem, "include_path": str(path.parent)}))
    return 0
