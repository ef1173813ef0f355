"""The ``viperbench`` command line.

Exit codes: 0 success, 1 a failed check or a failed cell, 2 bad input (one line on stderr).
"""

from __future__ import annotations

import argparse
import json
import sys

from bench import flags
from bench.errors import CheckFailed, UserError

# (flag, spec field, help). Each takes one value for `run`, comma lists for `matrix`.
CELL_FLAGS = [
    ("--arch", "arch", "backbone: transformer, mamba, hybrid or a plugin"),
    ("--preset", "preset", "tiny | small | paper (random weights)"),
    ("--checkpoint", "checkpoint", "local transformers checkpoint directory of the arch's family"),
    ("--compressor", "compressor", "name:key=value,... (default none)"),
    ("--frames", "frames", "video frames"),
    ("--tokens-per-frame", "tokens_per_frame", "vision tokens per frame after ToMe (default 16)"),
    ("--prompt-tokens", "prompt_tokens", "instruction tokens after the video (default 64)"),
    ("--new-tokens", "new_tokens", "decode steps after the first token, no stop token (default 32)"),
    ("--batch", "batch", "sequences per batch (default 1)"),
    ("--vision", "vision", "synthetic (random vision embeddings) | siglip (SigLIP tower + ToMe + MLP)"),
    ("--device", "device", "cpu | cuda | cuda:N (default cpu)"),
    ("--dtype", "dtype", "float32 | bfloat16 | float16 (default float32 on cpu, bfloat16 on cuda)"),
    ("--task", "task", "workload (default synthetic)"),
    ("--prefill-chunk", "prefill_chunk", "run the prefill N tokens at a time within each layer"),
    ("--memory-budget", "memory_budget", "e.g. 8GiB: a peak above it counts as OOM"),
    ("--warmup", "warmup", "untimed passes first (default 1)"),
    ("--repeats", "repeats", "timed passes; the record has their median and spread (default 3)"),
    ("--seed", "seed", "random seed (default 0)"),
]
CELL_LABELS = {dest: flag for flag, dest, _ in CELL_FLAGS}  # numbers are checked in bench.spec, as in a TOML file


class Parser(argparse.ArgumentParser):
    def __init__(self, *args, **kwargs):
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message):  # one line, exit 2
        self.exit(2, f"viperbench: error: {message}\n")


def _add_cell_flags(p: argparse.ArgumentParser, lists: bool) -> None:
    for flag, dest, help_ in CELL_FLAGS:
        p.add_argument(flag, dest=dest, default=None, help=help_ + (" (comma list)" if lists else ""))


def _cell_values(args) -> dict:
    return {dest: getattr(args, dest) for _, dest, _ in CELL_FLAGS if getattr(args, dest) is not None}


def build_parser() -> Parser:
    parser = Parser(prog="viperbench", description="Benchmark long-video backbones and visual-token compressors.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)

    p = sub.add_parser("list", help="registered architectures, compressors and tasks")
    p.add_argument("--json", action="store_true", help="also presets with parameter counts (meta device)")

    p = sub.add_parser("run", help="measure one cell")
    _add_cell_flags(p, lists=False)
    p.add_argument("--output", help="append the record to this JSONL file")
    p.add_argument("--launcher", default="inline", help="inline | process | ray (see bench/ray_launcher.py)")

    p = sub.add_parser("matrix", help="measure the cartesian product of settings")
    p.add_argument("file", nargs="?", help="TOML file: each key a cell setting, a value or a list")
    _add_cell_flags(p, lists=True)
    p.add_argument("--output", help="append records to this JSONL file (flushed per cell)")
    p.add_argument("--resume", action="store_true", help="skip cells already recorded in --output")
    p.add_argument("--launcher", default="inline", help="inline | process | ray (see bench/ray_launcher.py)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--interleave", action="store_true",
                   help="build every cell, then measure round by round (for ratios between cells, e.g. CI gates)")

    p = sub.add_parser("maxframes", help="largest frame count that fits (child process per probe)")
    _add_cell_flags(p, lists=False)
    p.add_argument("--start", type=flags.positive_int, default=16, help="first probe (default 16 frames)")
    p.add_argument("--limit", type=flags.positive_int, default=1 << 20, help="stop doubling here (default 1048576)")
    p.add_argument("--precision", type=flags.fraction, default=1 / 32,
                   help="stop when the gap is within this fraction of the fitting count (default 1/32)")
    p.add_argument("--output", help="append the record to this JSONL file")

    p.add_argument("--predict-first", action="store_true",
                   help="start from the predicted max frames (bench.predict) and confirm with a few real probes")

    p = sub.add_parser("predict", help="peak memory, fit, max frames and roofline speed on a named GPU, from a CPU")
    _add_cell_flags(p, lists=False)
    p.add_argument("--gpu", help="GPU from the built-in table (default h100-80gb) or custom")
    p.add_argument("--gpu-memory", type=flags.positive_size, help="override the GPU's memory, e.g. 80GiB")
    p.add_argument("--gpu-tflops", type=flags.positive_float, help="override its dense bf16 TFLOP/s")
    p.add_argument("--gpu-bandwidth", type=flags.positive_rate, help="override its memory bandwidth, e.g. 3.35TB/s")
    p.add_argument("--context-margin", type=flags.nonnegative_size, default="1.5GiB",
                   help="memory torch's allocator never sees: CUDA context, driver, workspaces (default 1.5GiB)")
    p.add_argument("--allocator-margin", type=flags.percent, default="5%",
                   help="caching-allocator fragmentation, 5%% or 0.05 (default 5%%)")
    p.add_argument("--mamba-kernels", default="mamba-ssm",
                   help="mamba-ssm (as a GPU with mamba-ssm runs) | torch (transformers' reference code)")
    p.add_argument("--no-max-frames", action="store_true", help="skip the predicted max-frames search")
    p.add_argument("--limit", type=flags.positive_int, default=1 << 20,
                   help="largest frame count the search considers")
    p.add_argument("--precision", type=flags.fraction, default=1 / 32,
                   help="max-frames search precision (default 1/32)")
    p.add_argument("--serve-batch", type=flags.positive_int,
                   help="also predict generated tokens/s for this many requests served together (needs --batch 1)")
    p.add_argument("--json", action="store_true", help="print the record as JSON instead of the summary")
    p.add_argument("--output", help="append the record to this JSONL file")

    p = sub.add_parser("eval", help="accuracy on a task's local data (per-document log + one aggregate record)")
    _add_cell_flags(p, lists=False)
    p.add_argument("--data", help="the task's data directory, in its official layout (vniah: generated from --seed "
                                  "when not given)")
    p.add_argument("--fps", type=flags.positive_float, help="sample at this rate, at most --frames frames (TimeViper: --fps 1 --frames 256)")
    p.add_argument("--limit", type=flags.positive_int, help="only the first N documents")
    p.add_argument("--judge", help="VDC judge: openai:URL#MODEL (an OpenAI-compatible server) or local:DIR")
    p.add_argument("--subtitles", action="store_true", help="Video-MME with subtitles")
    p.add_argument("--fidelity", action="store_true",
                   help="also run without the compressor: answer agreement and first-token KL")
    p.add_argument("--log", help="per-document JSONL log (a valid --predictions file for score)")
    p.add_argument("--output", help="append the aggregate record to this JSONL file")

    p = sub.add_parser("train", help="train a tiny model on a generated task, or only TransV's modules")
    p.add_argument("--arch", required=True, help="backbone: transformer, mamba, hybrid")
    p.add_argument("--preset", default="tiny", help="preset of a fresh model (default tiny)")
    p.add_argument("--checkpoint", help="start from this trained checkpoint (needed by --train transv)")
    p.add_argument("--task", default="vniah", help="generated training task (default vniah)")
    p.add_argument("--output", required=True, help="checkpoint directory to write (a run resumes from it)")
    p.add_argument("--train", default="model", help="model (everything) | transv (only TransV's modules)")
    p.add_argument("--compressor", default="none", help="with --train transv: transv:schedule=...")
    p.add_argument("--seed", type=flags.seed, default=0, help="training stream and initialisation seed (default 0)")
    p.add_argument("--steps", type=flags.positive_int, default=150, help="optimizer steps (default 150)")
    p.add_argument("--batch", type=flags.positive_int, default=16, help="samples per step (default 16)")
    p.add_argument("--lr", type=flags.positive_float, default=2e-3, help="AdamW learning rate (default 2e-3)")
    p.add_argument("--lengths", type=flags.positive_int_list, default="4,8,16",
                   help="haystack lengths in frames (comma list; default 4,8,16)")
    p.add_argument("--tokens-per-frame", type=flags.positive_int, default=4,
                   help="vision tokens per frame after ToMe (default 4)")
    p.add_argument("--save-every", type=flags.positive_int, default=25,
                   help="write the checkpoint every N steps (default 25)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")

    p = sub.add_parser("lm-eval", add_help=False,
                       help="lm-eval's command line with the viperbench model registered (extra `eval`)")
    p.add_argument("args", nargs=argparse.REMAINDER, help="lm-eval's own flags, e.g. --model viperbench ...")

    p = sub.add_parser("score", help="score saved predictions against a task's annotations (no model, no videos)")
    p.add_argument("--task", required=True, help="videomme | charades | vdc")
    p.add_argument("--data", required=True, help="the task's data directory (annotations only are read)")
    p.add_argument("--predictions", required=True, help='JSONL: {"id": ..., "output": "raw model text"} per line')
    p.add_argument("--judge", help="VDC judge: openai:URL#MODEL or local:DIR")
    p.add_argument("--output", help="append the aggregate record to this JSONL file")

    p = sub.add_parser("compare", help="regression gate: a new run against a baseline (exit 1 on regression)")
    p.add_argument("new", help="JSONL records of the new run")
    p.add_argument("--baseline", required=True, help="JSONL records of the baseline")
    p.add_argument("--tolerance", type=flags.percent, default="10%",
                   help="allowed timing regression, 10%% or 0.1 (default 10%%)")
    p.add_argument("--memory-tolerance", type=flags.percent, default="5%",
                   help="allowed peak-memory / max-frames regression, 5%% or 0.05 (default 5%%)")
    p.add_argument("--accuracy-tolerance", type=flags.nonnegative_float, default=2.0,
                   help="allowed drop of a task metric, in absolute points (default 2)")
    p.add_argument("--reference", help="gate timings relative to this in-run cell, e.g. arch=transformer")
    p.add_argument("--only-regressions", action="store_true", help="print only the rows that fail")

    p = sub.add_parser("ab", help="paired A/B gate: the same cells from two checkouts, alternating (exit 1 on regression)")
    p.add_argument("matrix", nargs="?", help="TOML matrix (default results/baselines/ab-gate.toml)")
    p.add_argument("--base", required=True, help="a viperbench checkout directory or a git revision")
    p.add_argument("--head", default=".", help="a viperbench checkout directory or a git revision (default .)")
    p.add_argument("--pairs", type=flags.positive_int, default=10,
                   help="base/head pairs of fresh processes (default 10)")
    p.add_argument("--tolerance", type=flags.percent, default="2%", help="smallest timing change that counts (default 2%%)")
    p.add_argument("--alpha", type=flags.fraction, default=0.05,
                   help="chance that an unchanged tree fails, over all gated timings together (default 0.05)")
    p.add_argument("--output", help="append every side's records, tagged with side and pair, to this JSONL file")
    p.add_argument("--in-turn", action="store_true",
                   help="run a pair's two sides one after the other (default: at once, one core each, with 2+ CPUs)")
    p.add_argument("--only-regressions", action="store_true", help="print only the rows that fail")

    p = sub.add_parser("history", help="per-commit history of gate metrics with step detection (SQLite store)")
    hist = p.add_subparsers(dest="action", required=True, parser_class=Parser)
    h = hist.add_parser("add", help="append records, keyed by commit, date and machine")
    h.add_argument("files", nargs="+", help="JSONL result files")
    h.add_argument("--commit", help="the commit the records measure (default: each record's env.commit)")
    h.add_argument("--date", type=flags.nonnegative_float, help="commit date as a Unix time (default: git's commit date, else now)")
    for name, help_ in (("show", "list the series and their detected steps"),
                        ("plot", "one metric over commits, steps marked"),
                        ("html", "a static page: one figure per metric, steps marked")):
        h = hist.add_parser(name, help=help_)
        h.add_argument("--metric", required=name == "plot", help="only this metric")
        h.add_argument("--cell", help="only cells whose label contains this text, e.g. arch=hybrid")
        h.add_argument("--threshold", type=flags.percent, default="2%", help="smallest step reported (default 2%%)")
        if name in ("plot", "html"):
            h.add_argument("--out", required=True, help="PNG/PDF file (plot) or directory (html)")
    for h in hist.choices.values():
        h.add_argument("--store", help="SQLite store (default $VIPERBENCH_HISTORY, else history.sqlite in the cache)")

    p = sub.add_parser("plot", help="a figure from records (PNG or PDF by the file suffix)")
    p.add_argument("files", nargs="+", help="JSONL result files")
    p.add_argument("--kind", default="xy", help="xy | throughput | memory | maxframes | probes | pareto | niah (default xy)")
    p.add_argument("--x", default="frames", help="x key for xy plots (default frames)")
    p.add_argument("--y", default="prefill_tok_s", help="metric for xy plots (default prefill_tok_s)")
    p.add_argument("--series", help="keys that make one line each (comma list; default: the keys that vary)")
    p.add_argument("--out", default="figure.png", help="output file, .png or .pdf (default figure.png)")

    p = sub.add_parser("report", help="every table and figure for a run, with an index.md")
    p.add_argument("files", nargs="+", help="JSONL result files")
    p.add_argument("--out", required=True, help="output directory")

    p = sub.add_parser("table", help="pivot records into a table")
    p.add_argument("files", nargs="+", help="JSONL result files")
    p.add_argument("--rows", default="arch", help="record keys for rows (comma list; default arch)")
    p.add_argument("--cols", default="frames", help="record keys for columns (comma list; default frames)")
    p.add_argument("--metric", default="prefill_tok_s", help="metric in the cells (default prefill_tok_s)")
    p.add_argument("--format", default="github", help="github | latex | csv")
    p.add_argument("--preset", help="paper-shaped table: efficiency | table1 (ignores --rows/--cols/--metric)")
    p.add_argument("--reference", help="with --preset: show each row's change against this row, e.g. compressor=none")
    p.add_argument("--ci", action="store_true", help="timings as value ± half-width of their 95%% interval")
    return parser


def cmd_list(args) -> int:
    from architectures import ARCHITECTURES
    from compressors import COMPRESSORS
    from tasks import TASKS

    registries = {"architectures": ARCHITECTURES, "compressors": COMPRESSORS, "tasks": TASKS}
    if not args.json:
        for title, reg in registries.items():
            print(f"{title}:")
            for name, desc in reg.describe().items():
                print(f"  {name:<14} {desc}")
        return 0
    out = {title: {name: {"description": desc} for name, desc in reg.describe().items()}
           for title, reg in registries.items()}
    for name, entry in out["architectures"].items():
        arch = ARCHITECTURES.get(name)
        entry["presets"] = {}
        for p in getattr(arch, "presets", {}):
            counts = arch.param_counts(p)
            entry["presets"][p] = {"params": counts["total"], "active_params": counts["active"]}
    print(json.dumps(out, indent=2))
    return 0


def _finish(records: list[dict], output: str | None, table_file=None) -> int:
    from bench.table import summary

    if records:
        print(summary(records), file=table_file or sys.stdout)
    if output:
        print(f"records appended to {output}", file=sys.stderr)
    return 1 if any(r["status"] == "error" for r in records) else 0


def cmd_run(args) -> int:
    from bench.launchers import LAUNCHERS
    from bench.records import append_record, check_writable
    from bench.spec import check_runnable, make_spec

    spec = make_spec(_cell_values(args), CELL_LABELS)
    if args.launcher not in LAUNCHERS:
        raise UserError(f"unknown launcher {args.launcher!r}; valid: {', '.join(LAUNCHERS)}")
    if args.launcher != "ray":  # Ray workers check their own devices
        check_runnable(spec)
    if args.output:
        check_writable(args.output)
    record = LAUNCHERS[args.launcher](spec)
    if args.output:
        append_record(args.output, record)
    return _finish([record], args.output)


def cmd_matrix(args) -> int:
    from bench.matrix import axes_from_flags, axes_from_toml, expand, run_matrix

    values = _cell_values(args)
    axes, file_output = axes_from_toml(args.file, values) if args.file else (axes_from_flags(values), None)
    output = args.output if args.output is not None else file_output  # the flag overrides the file
    cells = expand(axes, {dest: CELL_LABELS[dest] for dest in values})
    records = run_matrix(cells, output, launcher=args.launcher, resume=args.resume,
                         progress=not args.no_progress, interleave=args.interleave)
    # without an output file stdout holds the records, one JSON line each: the table goes to stderr
    return _finish(records, output, table_file=None if output is not None else sys.stderr)


def cmd_maxframes(args) -> int:
    from bench.maxframes import search, summary_line
    from bench.records import append_record, check_writable
    from bench.spec import make_spec

    if args.limit < args.start:
        raise UserError(f"--limit {args.limit} must be at least --start {args.start}")
    spec = make_spec({"frames": args.start, **_cell_values(args)}, CELL_LABELS)
    if args.output:
        check_writable(args.output)

    def show(probe):
        peak = f"{probe['peak_mem_bytes'] / 2**20:.0f} MiB" if probe["peak_mem_bytes"] else "-"
        print(f"  probe {probe['frames']:>8} frames: {probe['status']:<5} peak {peak}", file=sys.stderr)

    if args.predict_first:
        from bench.predict import estimate_for_search
        from bench.spec import check_runnable

        check_runnable(spec)  # a CUDA cell needs CUDA before anything is predicted for it
        estimate, predicted, predictor = estimate_for_search(spec, limit=args.limit)
        print(f"  predicted max frames about {estimate} ({predicted['predictions']} predictions, "
              f"{predicted['predict_s']:.1f} s); one real probe at half of it calibrates the prediction, "
              "then a few confirm", file=sys.stderr)
        record = search(spec, limit=args.limit, precision=args.precision, on_probe=show, estimate=estimate,
                        calibrate=predictor.calibrate)
        record["metrics"]["predicted_first"] = predicted
    else:
        record = search(spec, start=args.start, limit=args.limit, precision=args.precision, on_probe=show)
    if args.output:
        append_record(args.output, record)
    print(summary_line(record))
    return 0 if record["status"] == "ok" else 1


def cmd_predict(args) -> int:
    from bench.gpus import resolve
    from bench.predict import predict, summary
    from bench.records import append_record, check_writable
    from bench.spec import make_spec

    values = {"frames": 64, "device": "cuda", **_cell_values(args)}
    target = "cpu" if values["device"] == "cpu" else "gpu"
    if args.mamba_kernels not in ("mamba-ssm", "torch"):
        raise UserError(f"unknown --mamba-kernels {args.mamba_kernels!r}; valid: mamba-ssm, torch")
    spec = make_spec(values, CELL_LABELS)
    gpu = resolve(args.gpu, args.gpu_memory, args.gpu_tflops, args.gpu_bandwidth) if target == "gpu" else None
    if args.output:
        check_writable(args.output)
    record = predict(spec, gpu, target=target, mamba=args.mamba_kernels,
                     context_margin=args.context_margin,
                     allocator_margin=args.allocator_margin, max_frames=not args.no_max_frames,
                     limit=args.limit, precision=args.precision, serve_batch=args.serve_batch)
    if args.output:
        append_record(args.output, record)
    print(json.dumps(record, default=str) if args.json else summary(record))
    return 0


def cmd_eval(args) -> int:
    from bench.evaluate import evaluate
    from bench.spec import make_spec

    values = {"vision": "siglip", "frames": 16, "warmup": 0, "repeats": 1, **_cell_values(args)}
    if not values.get("task") or values["task"] == "synthetic":
        raise UserError("eval needs --task (videomme, charades, vdc, vniah)")
    spec = make_spec(values, CELL_LABELS)
    data = args.data
    if data is None:
        from tasks import TASKS

        task = TASKS.get(spec.task)
        if not getattr(task, "generates_data", False):
            raise UserError(f"eval --task {spec.task} needs --data DIR (the dataset in its official layout)")
        data = task.default_data(spec.seed)
    label = None if args.data else f"{spec.task} generated from seed {spec.seed}"
    record = evaluate(spec, data, data_label=label, judge=args.judge, subtitles=args.subtitles, limit=args.limit,
                      fps=args.fps, fidelity=args.fidelity, log=args.log, output=args.output)
    print(json.dumps(record["task"]))
    return 0


def cmd_train(args) -> int:
    from bench.train import TrainSettings, train

    settings = TrainSettings(arch=args.arch, output=args.output, preset=args.preset, checkpoint=args.checkpoint,
                             train=args.train, compressor=args.compressor, task=args.task, seed=args.seed,
                             steps=args.steps, batch=args.batch, lr=args.lr, lengths=args.lengths,
                             tokens_per_frame=args.tokens_per_frame, save_every=args.save_every)
    print(json.dumps(train(settings, progress=not args.no_progress)))
    return 0


def cmd_lm_eval(args) -> int:
    try:
        from bench.lm_eval_model import main as lm_eval_main
    except ModuleNotFoundError as exc:
        raise UserError(f"lm-eval is not installed ({exc.name}): pip install -e '.[eval]'") from None
    return lm_eval_main(args.args)


def cmd_score(args) -> int:
    from bench.evaluate import score_predictions

    record = score_predictions(args.task, args.data, args.predictions, judge=args.judge, output=args.output)
    print(json.dumps(record))
    return 0


def cmd_compare(args) -> int:
    from bench.compare import compare, parse_reference, render_rows
    from bench.records import iter_records

    rows = compare(list(iter_records(args.new)), list(iter_records(args.baseline)),
                   tolerance=args.tolerance, memory_tolerance=args.memory_tolerance,
                   reference=parse_reference(args.reference), accuracy_tolerance=args.accuracy_tolerance)
    bad = [r for r in rows if r.verdict == "REGRESSION"]
    print(render_rows(bad if args.only_regressions else rows))
    if bad:
        raise CheckFailed(f"{len(bad)} regression(s) against {args.baseline}")
    print(f"no regressions against {args.baseline} ({len(rows)} checks)")
    return 0


def cmd_ab(args) -> int:
    from bench.ab import render, run_ab

    if not 0 < args.alpha < 1:
        raise UserError(f"--alpha must be between 0 and 1, got {args.alpha}")
    verdicts = run_ab(args.base, args.head, args.matrix, args.pairs, args.tolerance, args.alpha,
                      output=args.output, log=lambda line: print(line, file=sys.stderr, flush=True),
                      parallel=not args.in_turn)
    bad = [v for v in verdicts if v.verdict == "REGRESSION"]
    print(render(bad if args.only_regressions else verdicts))
    if bad:
        worst = ", ".join(f"{v.cell} {v.metric} {v.ratio:.3f} [{v.low:.3f}, {v.high:.3f}]" if v.low is not None
                          else f"{v.cell} {v.metric}" for v in bad[:3])
        raise CheckFailed(f"{len(bad)} regression(s) of {args.head} against {args.base}: {worst}")
    print(f"no regressions of {args.head} against {args.base} ({len(verdicts)} checks)")
    return 0


def cmd_history(args) -> int:
    from bench import history
    from bench.records import iter_records

    if args.action == "add":
        records = [r for f in args.files for r in iter_records(f)]
        n = history.add(records, args.store, commit=args.commit, date=args.date, source=", ".join(args.files))
        print(f"{n} points added to {args.store or history.default_store()}")
        return 0
    found = history.series(args.store, metric=args.metric, cell=args.cell, threshold=args.threshold)
    if not found:
        raise UserError("no series match" + (f" --metric {args.metric}" if args.metric else "")
                        + (f" --cell {args.cell}" if args.cell else ""))
    if args.action == "show":
        print(history.show(found))
    elif args.action == "plot":
        print(history.plot(found, args.metric, args.out))
    else:
        print(history.html(found, args.out))
    return 0


def cmd_plot(args) -> int:
    from bench import plots
    from bench.table import load_records

    records = load_records(args.files)
    kinds = {
        "xy": lambda out: plots.plot_xy(records, args.x, args.y, out,
                                        series=_split(args.series) if args.series else None),
        "throughput": lambda out: plots.plot_throughput(records, out, x=args.x, metric=args.y),
        "memory": lambda out: plots.plot_memory(records, out, x=args.x),
        "maxframes": lambda out: plots.plot_max_frames(records, out),
        "probes": lambda out: plots.plot_probes(records, out),
        "pareto": lambda out: plots.plot_pareto(records, out),
        "niah": lambda out: plots.plot_niah(records, out),
    }
    if args.kind not in kinds:
        raise UserError(f"unknown plot kind {args.kind!r}; valid: {', '.join(kinds)}")
    print(kinds[args.kind](args.out))
    return 0


def cmd_report(args) -> int:
    from bench.report import write_report

    print(write_report(args.files, args.out))
    return 0


def _split(text: str) -> list[str]:
    return [k.strip() for k in text.split(",") if k.strip()]


def cmd_table(args) -> int:
    from bench.table import load_records, render

    records = load_records(args.files)
    if args.preset:
        from bench import paper_tables
        from bench.compare import parse_reference

        print(paper_tables.render(records, args.preset, fmt=args.format, reference=parse_reference(args.reference)))
        return 0
    print(render(records, _split(args.rows), _split(args.cols), args.metric, fmt=args.format, ci=args.ci))
    return 0


COMMANDS = {"list": cmd_list, "run": cmd_run, "matrix": cmd_matrix, "maxframes": cmd_maxframes, "table": cmd_table,
            "compare": cmd_compare, "plot": cmd_plot, "report": cmd_report, "eval": cmd_eval, "score": cmd_score,
            "train": cmd_train, "lm-eval": cmd_lm_eval,
            "predict": cmd_predict, "ab": cmd_ab, "history": cmd_history}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["lm-eval"]:  # every later flag is lm-eval's own: no parsing here
        args = argparse.Namespace(command="lm-eval", args=argv[1:])
    else:
        try:
            args = build_parser().parse_args(argv)
        except SystemExit as exc:  # --help (0), or argparse's one error line (2)
            return exc.code
    try:
        return COMMANDS[args.command](args)
    except UserError as exc:
        print(f"viperbench: error: {exc}", file=sys.stderr)
        return 2
    except CheckFailed as exc:
        print(f"viperbench: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("viperbench: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # e.g. `viperbench list --json | head`
        sys.stderr.close()
        return 0


if __name__ == "__main__":
    sys.exit(main())
