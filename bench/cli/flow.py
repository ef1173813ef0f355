"""Information-flow probes: ``viperbench flow`` (attention knockout sweep, logit lens, mixing maps)."""

from __future__ import annotations

import sys

from bench import flags
from bench.cli.common import CELL_FLAGS, CELL_LABELS, TASK_CELL_DEFAULTS, split, task_data
from bench.errors import UserError

# the cell settings a probe run takes (one value each)
FLOW_CELL = ("arch", "preset", "checkpoint", "frames", "tokens_per_frame", "vision", "device", "dtype", "task",
             "prefill_chunk", "seed", "decoder")


def add_commands(sub) -> None:
    p = sub.add_parser("flow", help="information-flow probes: attention knockout sweep, logit lens, mixing maps")
    for flag, dest, help_ in CELL_FLAGS:
        if dest in FLOW_CELL:
            p.add_argument(flag, dest=dest, default=None, help=help_)
    p.add_argument("--data", help="the task's data directory (vniah: generated from --seed when not given)")
    p.add_argument("--fps", type=flags.positive_float, help="sample at this rate, at most --frames frames")
    p.add_argument("--probe", required=True, help="knockout | logit-lens | mixing")
    p.add_argument("--window", type=flags.positive_int, help="knockout: layers per window, slid over the depth "
                                                             "(default 1)")
    p.add_argument("--edges", help="knockout: edge groups, comma list, each EDGE[+EDGE...][:kinds=K] (default: "
                                   "video->question,video->last,question->last,frame->frame,video->text)")
    p.add_argument("--limit", type=flags.positive_int, help="only the first N documents")
    p.add_argument("--output", help="append the flow record to this JSONL file")
    p.set_defaults(handler=cmd_flow)


def cmd_flow(args) -> int:
    from bench.evaluation.evaluate import make_task
    from bench.probes.run import PROBES, TASKS
    from bench.spec import check_device, make_spec

    if args.probe not in PROBES:
        raise UserError(f"unknown --probe {args.probe!r}; valid: {', '.join(PROBES)}")
    if args.probe != "knockout" and (args.window is not None or args.edges is not None):
        raise UserError(f"--window and --edges belong to --probe knockout, not {args.probe}")
    given = {k: getattr(args, k) for k in FLOW_CELL if getattr(args, k) is not None}
    values = {**TASK_CELL_DEFAULTS, **given}
    if values.get("task") not in TASKS:
        raise UserError(f"flow needs --task {' or '.join(TASKS)} (got {values.get('task')!r})")
    spec = make_spec(values, CELL_LABELS)
    check_device(spec)
    edges = _edges(args.edges) if args.probe == "knockout" else []
    data, label = task_data(spec, args.data, "flow")
    task = make_task(spec.task, data)
    docs = task.docs()[:args.limit] if args.limit else task.docs()
    if not docs:
        raise UserError(f"task {spec.task} has no documents in {data}")
    if args.output:
        from bench.records import check_writable

        check_writable(args.output)
    return _run(spec, args, task, docs, data, label, edges)


def _edges(text: str | None) -> list[str]:
    from architectures.knockout import STANDARD_EDGES
    from bench.probes.knockout import edge_group

    edges = split(text) if text is not None else list(STANDARD_EDGES)
    if not edges:
        raise UserError("--edges names no edge group")
    for item in edges:
        edge_group(item)  # one line for a bad group, before any model is built
    return edges


def _run(spec, args, task, docs, data: str, label: str, edges: list[str]) -> int:
    from architectures.tokenizer import tokenizer_for
    from bench.measure.runner import build_model
    from bench.engine.own_layout import sampling_label
    from bench.probes.prompts import prepare
    from bench.probes.run import PROBES, flow_record, summary
    from bench.records import append_record
    from tasks.video import VideoError

    model = build_model(spec)
    tok = tokenizer_for(model.backbone)
    pdocs = []
    for k, doc in enumerate(docs):
        try:
            pdocs.append(prepare(model.backbone, model.vision, model.compressor, doc, tok, frames=spec.frames,
                                 fps=args.fps, seed=spec.seed + k, tokens_per_frame=spec.tokens_per_frame,
                                 decoder=spec.decoder))
        except VideoError as exc:
            print(f"warning: document {doc.id}: {exc}; left out", file=sys.stderr)
    if not pdocs:
        raise UserError(f"no document of {data} could be decoded")
    result = PROBES[args.probe](model.backbone, pdocs, tok, window=args.window or 1, edges=edges,
                                chunk=spec.prefill_chunk)
    record = flow_record(spec.to_dict(), spec.device, args.probe, result, task=task.name, data=label,
                         n=len(pdocs), n_total=len(docs), sampling=sampling_label(spec.frames, args.fps),
                         tokenizer=tok.name)
    print(summary(args.probe, result))
    if args.output:
        append_record(args.output, record)
        print(f"record appended to {args.output}", file=sys.stderr)
    return 0
