"""``serve``: serving throughput measured on vLLM (``--engine vllm``) or simulated for any GPU (``--engine sim``)."""

from __future__ import annotations

import itertools
import json
import os
import sys

from bench import flags
from bench.cli.common import split
from bench.errors import UserError

SUMMARY = ("generated_tok_s", "total_tok_s", "requests_s", "ttft_p50_s", "tpot_p50_s", "mean_running_seqs",
           "max_running_seqs", "preemptions")


def add_commands(sub) -> None:
    p = sub.add_parser("serve", help="serving throughput: vLLM's benchmark measured, or its scheduler simulated")
    p.add_argument("--engine", default="sim", help="sim (vLLM's V1 scheduler simulated; default) | vllm")
    p.add_argument("--arch", help="backbones (comma list)")
    p.add_argument("--preset", help="tiny | small | paper (random weights)")
    p.add_argument("--checkpoint", help="local checkpoint directory of the arch's family")
    p.add_argument("--dtype", default="bfloat16", help="model dtype (default bfloat16)")
    p.add_argument("--input-len", type=flags.positive_int_list, help="prompt tokens per request (comma list)")
    p.add_argument("--frames", type=flags.positive_int_list, help="instead of --input-len: a video cell's frames (comma list); the request is "
                                    "its tokens after --compressor")
    p.add_argument("--compressor", default="none", help="with --frames: name:key=value,... (default none)")
    p.add_argument("--tokens-per-frame", default=16, type=flags.positive_int, help="with --frames (default 16)")
    p.add_argument("--prompt-tokens", default=64, type=flags.positive_int, help="with --frames (default 64)")
    p.add_argument("--output-len", type=flags.positive_int_list, default="128", help="generated tokens per request (comma list; default 128)")
    p.add_argument("--num-prompts", type=flags.positive_int_list, default="64", help="requests, all arriving at once (comma list; default 64)")
    p.add_argument("--max-num-seqs", type=flags.positive_int_list, help="vLLM's max running requests (comma list; default vLLM's for the device)")
    p.add_argument("--max-num-batched-tokens", type=flags.positive_int, help="vLLM's token budget per step")
    p.add_argument("--block-size", type=flags.positive_int, help="KV block tokens (default 16 on a GPU, 128 on CPU)")
    p.add_argument("--kv-space", type=flags.positive_size,
                   help="KV pool: vllm on CPU sets VLLM_CPU_KVCACHE_SPACE (whole GiB; default 1GiB); sim uses it "
                        "instead of the GPU memory left")
    p.add_argument("--gpu-memory-utilization", type=flags.fraction,
                   help="vLLM's share of the GPU memory (default 0.9; on vLLM-CPU the share of RAM it checks is free)")
    p.add_argument("--kv-blocks", type=flags.positive_int, help="KV pool in blocks (vLLM's --num-gpu-blocks-override)")
    p.add_argument("--seed", type=flags.nonnegative_int, default=0, help="prompt sampling seed (default 0)")
    p.add_argument("--output", help="append the records to this JSONL file")
    p.add_argument("--json", action="store_true", help="print the records as JSON lines instead of the table")
    g = p.add_argument_group("--engine vllm")
    g.add_argument("--engine-python", help="vLLM's interpreter (default $VIPERBENCH_VLLM_PYTHON)")
    g.add_argument("--timeout", type=flags.positive_float, default=900.0, help="seconds per engine run (default 900)")
    g.add_argument("--latency", default="serve",
                   help="serve (TTFT/TPOT by vllm bench serve against a child API server; default) | off "
                        "(throughput only, one engine start per cell)")
    g = p.add_argument_group("--engine sim")
    g.add_argument("--gpu", help="GPU from predict's table (default h100-80gb) or custom")
    g.add_argument("--gpu-memory", type=flags.positive_size, help="override the GPU's memory, e.g. 80GiB")
    g.add_argument("--gpu-tflops", type=flags.positive_float, help="override its dense bf16 TFLOP/s")
    g.add_argument("--gpu-bandwidth", type=flags.positive_rate, help="override its memory bandwidth, e.g. 3.35TB/s")

    g.add_argument("--efficiency", help="fractions of the roofline: gemm=0.7,attention=0.5,scan=0.3 (any of them)")
    g.add_argument("--step-overhead", type=flags.nonnegative_float, help="seconds per engine step (default 0.003)")
    g.add_argument("--request-overhead", type=flags.nonnegative_float,
                   help="seconds per step for each request it runs (default 0)")
    g.add_argument("--mamba-layer-overhead", type=flags.nonnegative_float,
                   help="seconds per step for each Mamba layer (default 0)")
    g.add_argument("--calibrate", help="fit the efficiencies and fixed times to the measured engine: vllm records "
                                       "of this JSONL file, and predict for the CPU they were measured on")
    g.add_argument("--replay", help="with --calibrate: simulate every measured record of this file at its settings")
    p.set_defaults(handler=cmd_serve)


def _ints(values: tuple[int, ...] | None) -> list[int | None]:
    """A comma-list flag's values (parsed by flags.positive_int_list), or [None] where it is not given."""
    return [None] if values is None else list(values)


def _efficiency(args):
    from bench.servesim.sim import KINDS, Efficiency

    given = {}
    for item in split(args.efficiency or ""):
        key, eq, value = item.partition("=")
        if not eq or key.strip() not in KINDS:
            raise UserError(f"malformed --efficiency {item!r}: expected gemm=F, attention=F or scan=F")
        given[key.strip()] = flags.positive_float.parse(value)
    for flag, name in (("step_overhead", "step_overhead_s"), ("request_overhead", "request_overhead_s"),
                       ("mamba_layer_overhead", "mamba_layer_overhead_s")):
        if getattr(args, flag) is not None:
            given[name] = getattr(args, flag)
    return Efficiency(**given).check()


def _cells(args) -> list[dict]:
    if args.input_len is None and args.frames is None:
        raise UserError("serve needs --input-len or --frames")
    if args.input_len is not None and args.frames is not None:
        raise UserError("give --input-len or --frames, not both")
    if args.frames is None and args.compressor != "none":
        raise UserError("--compressor acts on a video cell: give --frames")
    if not args.arch:
        raise UserError("serve needs --arch")
    if bool(args.preset) == bool(args.checkpoint):
        raise UserError("serve needs --preset or --checkpoint (one of them)")
    axes = {"arch": split(args.arch), "input_len": _ints(args.input_len),
            "frames": _ints(args.frames), "output_len": _ints(args.output_len),
            "num_prompts": _ints(args.num_prompts),
            "max_num_seqs": _ints(args.max_num_seqs)}
    return [dict(zip(axes, values)) for values in itertools.product(*axes.values())]


def cmd_serve(args) -> int:
    from bench.records import append_record, check_writable

    if args.engine not in ("sim", "vllm"):
        raise UserError(f"unknown --engine {args.engine!r}; valid: sim, vllm")
    if args.replay and not args.calibrate:
        raise UserError("--replay needs --calibrate (the efficiencies it simulates with)")
    if args.output:
        check_writable(args.output)
    if args.engine == "vllm":
        cells = _vllm(args)  # one engine run after another: each record is appended as its run ends
    elif args.replay:
        cells = _replay(args)
    else:
        cells = _sim(args)
    records = []
    for record in cells:
        records.append(record)
        if args.output:
            append_record(args.output, record)
        if args.json:
            print(json.dumps(record, default=str))
    if not args.json:
        from bench.reporting.table import summary

        print(summary(records, SUMMARY))
    if args.output:
        print(f"records appended to {args.output}", file=sys.stderr)
    return 1 if any(r["status"] == "error" for r in records) else 0


def _cell_spec(args, cell: dict, device: str):
    from bench.spec import make_spec

    values = {"arch": cell["arch"], "dtype": args.dtype, "device": device, "frames": cell["frames"] or 1,
              "compressor": args.compressor, "tokens_per_frame": args.tokens_per_frame,
              "prompt_tokens": args.prompt_tokens}
    values["preset" if args.preset else "checkpoint"] = args.preset or args.checkpoint
    return make_spec(values, {})


def _record_spec(args, cell: dict, *, input_len: int, device: str, settings, kv_space: int | None):
    from bench.servesim.records import serving_spec

    return serving_spec(arch=cell["arch"], preset=args.preset, checkpoint=args.checkpoint,
                        compressor=args.compressor if cell["frames"] else None, frames=cell["frames"],
                        tokens_per_frame=args.tokens_per_frame if cell["frames"] else None,
                        prompt_tokens=args.prompt_tokens if cell["frames"] else None, dtype=args.dtype,
                        device=device, input_len=input_len, output_len=cell["output_len"],
                        num_prompts=cell["num_prompts"], max_num_seqs=settings.max_num_seqs,
                        max_num_batched_tokens=settings.max_num_batched_tokens, block_size=settings.block_size,
                        gpu_memory_utilization=args.gpu_memory_utilization if device == "cpu" else
                        (args.gpu_memory_utilization or 0.9),
                        kv_space_bytes=kv_space, kv_blocks_override=args.kv_blocks)


# --- --engine vllm ------------------------------------------------------------------------------


def _vllm(args):
    """The measured records, one per cell, yielded as each cell's engine runs end."""
    from bench.serve import vllm_driver as drv
    from bench.serve.checkpoint import preset_checkpoint
    from bench.servesim.records import serving_record
    from bench.servesim.simulate import engine_defaults, machine, settings_from

    python = drv.engine_python(args.engine_python)
    if args.latency not in ("serve", "off"):
        raise UserError(f"unknown --latency {args.latency!r}; valid: serve, off")
    if args.frames is not None:
        raise UserError("serve --engine vllm takes --input-len (vLLM serves token prompts)")
    cells = _cells(args)
    kv_space = args.kv_space or 2**30
    if kv_space % 2**30:
        raise UserError(f"--kv-space {kv_space} bytes: vLLM-CPU takes whole GiB (VLLM_CPU_KVCACHE_SPACE)")
    models = {}
    for arch in dict.fromkeys(c["arch"] for c in cells):
        if args.checkpoint:
            models[arch] = args.checkpoint
        else:  # an unknown arch or preset: one line naming the known ones
            models[arch] = str(preset_checkpoint(arch, args.preset, dtype=args.dtype, seed=args.seed))
    for cell in cells:
        drv.check_lengths(models[cell["arch"]], cell["input_len"], cell["output_len"])
    for cell in cells:
        settings = settings_from(engine_defaults("cpu"), max_num_seqs=cell["max_num_seqs"],
                                 max_num_batched_tokens=args.max_num_batched_tokens, block_size=args.block_size)
        spec = _record_spec(args, cell, input_len=cell["input_len"], device="cpu", settings=settings,
                            kv_space=kv_space)
        engine_settings = {"max_num_seqs": settings.max_num_seqs, "block_size": settings.block_size,
                           "max_num_batched_tokens": settings.max_num_batched_tokens, "dtype": args.dtype,
                           "VLLM_CPU_KVCACHE_SPACE": kv_space // 2**30, "num_gpu_blocks_override": args.kv_blocks,
                           "gpu_memory_utilization": args.gpu_memory_utilization,
                           "enable_prefix_caching": False, "enable_chunked_prefill": True,
                           "max_model_len": cell["input_len"] + cell["output_len"], "seed": args.seed,
                           "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
                           "VLLM_CPU_OMP_THREADS_BIND": os.environ.get("VLLM_CPU_OMP_THREADS_BIND"),
                           "benchmark": "vllm bench throughput, --dataset-name random, --random-range-ratio 0: "
                                        "elapsed_s, generated/total tok/s, requests/s",
                           "latency_benchmark": None if args.latency == "off" else
                           "vllm bench serve against vllm serve (same engine settings), --dataset-name random, "
                           "--random-range-ratio 0, --request-rate inf, --ignore-eos: TTFT/TPOT (mean_, _p50 = "
                           "median, _p90, _p99), serve_* fields"}
        env = {"machine": machine(), "device_name": machine()}
        print(f"  vllm: {cell['arch']} {cell['input_len']}/{cell['output_len']} x{cell['num_prompts']} "
              f"max-num-seqs {settings.max_num_seqs} ...", file=sys.stderr, flush=True)
        run_settings = dict(input_len=cell["input_len"], output_len=cell["output_len"], dtype=args.dtype,
                            max_num_seqs=settings.max_num_seqs,
                            max_num_batched_tokens=settings.max_num_batched_tokens,
                            block_size=settings.block_size, kv_blocks=args.kv_blocks, seed=args.seed,
                            gpu_memory_utilization=args.gpu_memory_utilization)
        try:
            run = drv.run_throughput(python, models[cell["arch"]], kv_space_bytes=kv_space, timeout=args.timeout,
                                     num_prompts=cell["num_prompts"], **run_settings)
            latency = None
            if args.latency == "serve":
                latency = drv.run_serve(python, models[cell["arch"]], kv_space_bytes=kv_space,
                                        timeout=args.timeout, num_prompts=cell["num_prompts"], **run_settings)
        except drv.EngineFailed as exc:
            if len(cells) == 1:
                raise UserError(str(exc)) from None
            yield serving_record(spec, "vllm", env, {}, status="error", error=str(exc), settings=engine_settings)
            continue
        env["engine"] = run["log"]["engine"]
        metrics = drv.metrics_from(run, input_len=cell["input_len"], output_len=cell["output_len"],
                                   num_prompts=cell["num_prompts"])
        metrics["kv_pool_bytes"] = kv_space
        if latency is not None:
            metrics.update(drv.latency_metrics(latency))
        yield serving_record(spec, "vllm", env, metrics, settings=engine_settings)


# --- --engine sim -------------------------------------------------------------------------------


def _sim(args) -> list[dict]:
    from bench.predict.gpus import resolve
    from bench.predict.serving import request_length, request_tokens
    from bench.servesim.records import serving_record
    from bench.servesim.simulate import calibrated_peaks, engine_defaults, model_shape, settings_from, simulate

    eff, calibration = _efficiency(args), None
    if args.calibrate:
        eff, calibration = calibrate(args.calibrate)
    cells = _cells(args)
    if args.calibrate:  # the CPU the records were measured on
        peaks = calibrated_peaks(calibration, args.dtype)
        device, flops_s, bytes_s = "cpu", args.gpu_tflops * 1e12 if args.gpu_tflops else peaks["flops_s"], \
            args.gpu_bandwidth or peaks["bytes_s"]
        gpu = None
    else:
        gpu = resolve(args.gpu, args.gpu_memory, args.gpu_tflops, args.gpu_bandwidth)
        device, flops_s, bytes_s = gpu.name, gpu.bf16_tflops * 1e12, gpu.bandwidth
    records = []
    for cell in cells:
        spec = _cell_spec(args, cell, "cpu" if gpu is None else "cuda")
        shape = model_shape(spec)
        defaults = engine_defaults("cpu") if gpu is None else engine_defaults("gpu", gpu.memory_bytes, gpu.name)
        settings = settings_from(defaults, max_num_seqs=cell["max_num_seqs"],
                                 max_num_batched_tokens=args.max_num_batched_tokens, block_size=args.block_size)
        input_len, extra = cell["input_len"], {}
        if cell["frames"]:
            input_len, extra = request_length(spec, shape, request_tokens(spec))
        kv, where = _kv_bytes(args, shape, settings, gpu, spec)
        record_spec = _record_spec(args, cell, input_len=input_len, device="cpu" if gpu is None else device,
                                   settings=settings, kv_space=args.kv_space if gpu is None else None)
        m = simulate(shape, prompts=[input_len] * cell["num_prompts"], outputs=[cell["output_len"]] * cell["num_prompts"],
                     kv_bytes=kv, peak_flops=flops_s, bandwidth=bytes_s, settings=settings, efficiency=eff)
        m.update(extra)
        m["memory"] = where
        m["device"] = {"name": device, "flops_s": flops_s, "bytes_s": bytes_s,
                       "source": gpu.source if gpu else "measured by bench.measure.cost's probe, or given"}
        if calibration:
            m["calibration"] = calibration
        records.append(serving_record(record_spec, "sim", {"machine": None}, m, settings=m["settings"]))
    return records


def _kv_bytes(args, shape, settings, gpu, spec) -> tuple[int, dict]:
    """The KV pool of a simulated cell and how it was sized."""
    from bench.predict.serving import gpu_kv_bytes
    from bench.servesim.sim import Simulator

    if args.kv_blocks:
        block = Simulator(shape, 1, 1, settings).block_bytes()
        return args.kv_blocks * block, {"kv": f"{args.kv_blocks} blocks (--kv-blocks)"}
    if args.kv_space or gpu is None:
        if not args.kv_space:
            raise UserError("a CPU simulation needs --kv-space (vLLM-CPU's VLLM_CPU_KVCACHE_SPACE) or --kv-blocks")
        return args.kv_space, {"kv": "--kv-space"}
    return gpu_kv_bytes(spec, gpu, settings, args.gpu_memory_utilization or 0.9)


def calibrate(path: str):
    """Efficiencies fitted to the measured records of ``path`` (bench.servesim.simulate.calibrate)."""
    from bench.reporting.table import load_records
    from bench.servesim.simulate import calibrate as fit_records

    return fit_records(load_records([path]), path)


def _replay(args) -> list[dict]:
    from bench.reporting.table import load_records
    from bench.servesim.records import serving_record, serving_records

    from bench.servesim.simulate import calibrated_peaks, check_replayable, replay

    eff, calibration = calibrate(args.calibrate)
    measured = serving_records(load_records([args.replay]), "vllm")
    if not measured:
        raise UserError(f"--replay {args.replay} holds no measured serving records")
    out = []
    for r in check_replayable(measured, "--replay", args.replay):
        m = replay(r, calibrated_peaks(calibration, r["spec"]["dtype"]), eff)
        m["calibration"] = calibration
        out.append(serving_record(r["spec"], "sim", {"machine": r["env"].get("machine")}, m, settings=m["settings"]))
    return out
