"""How much fits: max-frames search by real probes, and prediction for a named GPU from a CPU."""

from __future__ import annotations

import argparse
import json
import sys

from bench import flags
from bench.errors import UserError
from bench.cli.common import CELL_LABELS, add_cell_flags, cell_values


def add_commands(sub) -> None:
    p = sub.add_parser("maxframes", help="largest frame count that fits (child process per probe)")
    add_cell_flags(p, lists=False)
    p.add_argument("--start", type=flags.positive_int, default=16, help="first probe (default 16 frames)")
    add_frames_limit(p, "stop doubling here (default 1048576)")
    p.add_argument("--precision", type=flags.fraction, default=1 / 32,
                   help="stop when the gap is within this fraction of the fitting count (default 1/32)")
    p.add_argument("--output", help="append the record to this JSONL file")

    p.add_argument("--predict-first", action="store_true",
                   help="start from the predicted max frames (bench.predict.capacity) and confirm with a few real probes")
    p.set_defaults(handler=cmd_maxframes)

    p = sub.add_parser("predict", help="peak memory, fit, max frames and roofline speed on a named GPU, from a CPU")
    add_cell_flags(p, lists=False)
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
    add_frames_limit(p, "largest frame count the search considers (default 1048576)")
    p.add_argument("--precision", type=flags.fraction, default=1 / 32,
                   help="max-frames search precision (default 1/32)")
    p.add_argument("--serve-batch", type=flags.positive_int,
                   help="also simulate this many requests served by vLLM (bench.serve; needs --batch 1)")
    p.add_argument("--json", action="store_true", help="print the record as JSON instead of the summary")
    p.add_argument("--output", help="append the record to this JSONL file")
    p.set_defaults(handler=cmd_predict)


def add_frames_limit(p, help: str) -> None:
    """``--frames-limit``: the largest frame count a max-frames search probes. ``--limit`` is its old name,
    still accepted (hidden from --help): ``eval --limit`` counts documents, not frames."""
    p.add_argument("--frames-limit", type=flags.positive_int, default=1 << 20, help=help)
    p.add_argument("--limit", dest="frames_limit", type=flags.positive_int, help=argparse.SUPPRESS)


def cmd_maxframes(args) -> int:
    from bench.launch.process import run_process
    from bench.measure.maxframes import record_probe, search, summary_line
    from bench.records import append_record, check_writable, environment
    from bench.spec import check_runnable, make_spec

    if args.frames_limit < args.start:
        raise UserError(f"--frames-limit {args.frames_limit} must be at least --start {args.start}")
    spec = make_spec({"frames": args.start, **cell_values(args)}, CELL_LABELS)
    if args.output:
        check_writable(args.output)
    check_runnable(spec)  # a CUDA cell needs CUDA before anything is predicted or probed for it

    def show(probe):
        peak = f"{probe['peak_mem_bytes'] / 2**20:.0f} MiB" if probe["peak_mem_bytes"] else "-"
        print(f"  probe {probe['frames']:>8} frames: {probe['status']:<5} peak {peak}", file=sys.stderr)

    probe = record_probe(run_process)  # each probe in a fresh child process: an OOM cannot poison the next
    env = environment(spec.device)
    if args.predict_first:
        from bench.predict.capacity import estimate_for_search

        estimate, predicted, predictor = estimate_for_search(spec, limit=args.frames_limit)
        print(f"  predicted max frames about {estimate} ({predicted['predictions']} predictions, "
              f"{predicted['predict_s']:.1f} s); one real probe at half of it calibrates the prediction, "
              "then a few confirm", file=sys.stderr)
        record = search(spec, probe=probe, env=env, limit=args.frames_limit, precision=args.precision,
                        on_probe=show, estimate=estimate, calibrate=predictor.calibrate)
        record["metrics"]["predicted_first"] = predicted
    else:
        record = search(spec, probe=probe, env=env, start=args.start, limit=args.frames_limit,
                        precision=args.precision, on_probe=show)
    if args.output:
        append_record(args.output, record)
    print(summary_line(record))
    return 0 if record["status"] == "ok" else 1


def cmd_predict(args) -> int:
    from bench.predict.gpus import resolve
    from bench.predict.capacity import predict, summary
    from bench.records import append_record, check_writable
    from bench.spec import make_spec

    values = {"frames": 64, "device": "cuda", **cell_values(args)}
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
                     limit=args.frames_limit, precision=args.precision)
    text = summary(record)
    if args.serve_batch:
        from bench.predict.serving import serve_batch

        if spec.batch != 1:
            raise UserError("--serve-batch needs --batch 1 (requests are served one sequence each)")
        sv = serve_batch(spec, gpu, requests=args.serve_batch)
        record["metrics"]["serving"] = sv
        text += "\n" + serve_batch_line(sv)
    if args.output:
        append_record(args.output, record)
    print(json.dumps(record, default=str) if args.json else text)
    return 0


def serve_batch_line(m: dict) -> str:
    return (f"  serving {m['num_requests']} requests (simulated vLLM, its defaults; serve --engine sim for more): "
            f"{m['generated_tok_s']:.0f} generated tok/s, {m['mean_running_seqs']:.1f} running on average "
            f"(max {m['max_running_seqs']}), {m['preemptions']} preemptions, TTFT p50 {m['ttft_p50_s']:.2f} s "
            "(predicted)")
