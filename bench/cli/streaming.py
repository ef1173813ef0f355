"""stream: a video stream fed chunk by chunk into a backbone, questions mid-stream (bench.stream)."""

from __future__ import annotations

import sys

from bench import flags
from bench.errors import UserError


def add_commands(sub) -> None:
    p = sub.add_parser("stream", help="frames arriving over time, chunk by chunk; questions mid-stream")
    p.add_argument("--arch", required=True, help="transformer | mamba | hybrid")
    p.add_argument("--preset", default="tiny", help="tiny | small | paper (default tiny)")
    p.add_argument("--checkpoint", help="a local checkpoint directory (with its vision side)")
    p.add_argument("--compressor", default="none", help="a compressor that streams, e.g. stc (default none)")
    p.add_argument("--fps", type=flags.positive_float, required=True, help="frames per second of the stream")
    p.add_argument("--chunk-frames", type=flags.positive_int, required=True, help="frames per chunk")
    p.add_argument("--duration", type=flags.positive_float, help="stream length in seconds")
    p.add_argument("--frames", type=flags.positive_int, help="stream length in frames")
    p.add_argument("--questions", help="question times in seconds, e.g. 30,60")
    p.add_argument("--question-every", type=flags.positive_float, help="a question every S seconds")
    p.add_argument("--clock", default="simulated", choices=("simulated", "wall"),
                   help="simulated: frames are there when the model is ready; wall: released at the stream's pace")
    p.add_argument("--memory-budget", type=flags.positive_size,
                   help="stop with status oom when weights + KV cache + Mamba state exceed this, e.g. 2GiB")
    p.add_argument("--window-frames", type=flags.positive_int,
                   help="sliding window: attention layers keep BOS, the first frame (sinks) and the last W frames")
    p.add_argument("--kv-offload", choices=("cpu", "disk"), help="move KV that leaves the window off the device")
    p.add_argument("--retrieve-frames", type=flags.positive_int,
                   help="at a question, reload per attention layer the K stored frames closest to the question")
    p.add_argument("--tokens-per-frame", type=flags.positive_int, default=16, help="tokens per frame (default 16)")
    p.add_argument("--vision", default="siglip", choices=("siglip", "synthetic"),
                   help="siglip: the preset's SigLIP tower on synthetic frames; synthetic: random embeddings")
    p.add_argument("--question-tokens", type=flags.positive_int, default=16, help="tokens per question (default 16)")
    p.add_argument("--new-tokens", type=flags.positive_int, default=8, help="answer tokens (default 8)")
    p.add_argument("--prefill-chunk", type=flags.positive_int, help="chunked prefill within each layer")
    p.add_argument("--dtype", help="float32 | bfloat16 | float16 (default float32; with --gpu bfloat16)")
    p.add_argument("--seed", type=flags.seed, default=0)
    p.add_argument("--gpu", help="predict instead of running: memory slope and hours of video that fit on this GPU "
                                 "(e.g. h100), from the fake pass of one chunk and the KV per token (bench.predict)")
    p.add_argument("--task", choices=("vniah",),
                   help="vniah: V-NIAH documents streamed (needle early, question at the end), scored; needs "
                        "--checkpoint and --frames (the haystack length)")
    p.add_argument("--per-cell", type=flags.positive_int, default=4, help="--task vniah: documents per depth")
    p.add_argument("--output", help="append the records to this JSONL file")
    p.set_defaults(handler=cmd_stream)


def question_times(text: str | None) -> list[float] | None:
    if text is None:
        return None
    try:
        return [float(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise UserError(f"--questions must be seconds separated by commas, e.g. 30,60; got {text!r}") from None


def cmd_predicted(args) -> int:
    from bench.predict.stream import predict_stream
    from bench.records import append_record, environment, make_record

    if args.checkpoint or args.window_frames:
        raise UserError("stream --gpu predicts a preset's full cache: no --checkpoint, no --window-frames")
    metrics = predict_stream(args.arch, args.preset, args.compressor, args.gpu, fps=args.fps,
                             chunk_frames=args.chunk_frames, tokens_per_frame=args.tokens_per_frame,
                             dtype=args.dtype or "bfloat16")
    hours = metrics["hours_that_fit"]
    print(f"{args.arch} {args.preset} {args.compressor} on {metrics['gpu']} (predicted): memory slope "
          f"{metrics['memory_slope_bytes_per_s'] / 2**20:.3f} MiB per second of video at {args.fps:g} fps, "
          + (f"{hours:.1f} hours fit" if hours is not None else "memory does not grow: no length limit"))
    if args.output:
        spec = {"arch": args.arch, "preset": args.preset, "compressor": args.compressor, "fps": args.fps,
                "chunk_frames": args.chunk_frames, "tokens_per_frame": args.tokens_per_frame, "gpu": args.gpu,
                "task": "stream"}
        env = {k: v for k, v in environment("cpu").items() if k != "kernels"}
        append_record(args.output, make_record(spec, env, metrics={"row": "predicted", **metrics}, kind="stream",
                                               row="predicted"))
    return 0


def cmd_task(args) -> int:
    from bench.records import append_record
    from bench.stream.build import build_stream, make_window, stream_record
    from bench.stream.vniah import streamed_vniah

    if not args.checkpoint or not args.frames:
        raise UserError("stream --task vniah needs --checkpoint (a trained model) and --frames (the haystack length)")
    job = build_stream(args, dict(frames=args.frames))
    stream = job.stream
    metrics = streamed_vniah(stream.backbone, stream.vision, args.compressor, length=args.frames,
                             per_cell=args.per_cell, chunk_frames=args.chunk_frames, seed=args.seed,
                             make_window=lambda: make_window(stream.backbone, args.window_frames, args.kv_offload,
                                                             args.retrieve_frames))
    print(f"{args.arch} {args.compressor} window {args.window_frames} retrieve {args.retrieve_frames}: streamed "
          f"V-NIAH accuracy {metrics['accuracy']:.1f}% over {metrics['n']} documents, "
          f"{metrics['attended_tokens']:.0f} tokens attended at the question")
    if args.output:
        record = stream_record(job, {"row": "task"})
        record["task"] = {"name": "vniah", "metrics": metrics, "n": metrics["n"]}
        append_record(args.output, record)
    return 0


def cmd_stream(args) -> int:
    from bench.records import append_record, check_writable

    if args.gpu:
        return cmd_predicted(args)
    if args.task:
        return cmd_task(args)
    from bench.stream.build import build_stream, stream_record

    stream_plan_args = dict(duration=args.duration, frames=args.frames, questions=question_times(args.questions),
                            question_every=args.question_every, clock=args.clock, memory_budget=args.memory_budget)
    if args.output:
        check_writable(args.output)
    job = build_stream(args, stream_plan_args)

    def emit(row: dict) -> None:
        record = stream_record(job, row)
        if args.output:
            append_record(args.output, record)
        if row["row"] == "question":
            print(f"question at {row['stream_s']:g} s: TTFT {row['ttft_s']:.3f} s, context {row['context_tokens']} "
                  f"tokens", file=sys.stderr)

    summary = job.run(emit)
    rtf, slope = summary["real_time_factor"], summary["memory_slope_bytes_per_s"]
    print(f"{args.arch} {job.compressor_spec}: {summary['frames']} frames ({summary['stream_s']:g} s of video), "
          f"real-time factor {rtf:.3f}" if rtf is not None else f"{args.arch}: no frames",
          f"sustainable {summary['sustainable_fps']:.2f} fps" if summary["sustainable_fps"] else "",
          f"memory slope {slope / 1024:.1f} KiB/s" if slope is not None else "",
          f"status {summary['status']}" + (f" at {summary['oom_at_s']:g} s" if summary["oom_at_s"] else ""),
          sep=", ")
    if args.output:
        print(f"records appended to {args.output}", file=sys.stderr)
    return 0
