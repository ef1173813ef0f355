"""Measure cells: list what is registered, run one cell, run a matrix of cells."""

from __future__ import annotations

import json
import sys

from bench import flags
from bench.cli.common import CELL_LABELS, add_cell_flags, cell_values, finish


def add_commands(sub) -> None:
    p = sub.add_parser("list", help="registered architectures, compressors and tasks")
    p.add_argument("--json", action="store_true", help="also presets with parameter counts (meta device)")
    p.set_defaults(handler=cmd_list)

    p = sub.add_parser("run", help="measure one cell")
    add_cell_flags(p, lists=False)
    p.add_argument("--output", help="append the record to this JSONL file")
    add_launcher_flags(p, matrix=False)
    p.set_defaults(handler=cmd_run)

    p = sub.add_parser("matrix", help="measure the cartesian product of settings")
    p.add_argument("file", nargs="?", help="TOML file: each key a cell setting, a value or a list")
    add_cell_flags(p, lists=True)
    p.add_argument("--output", help="append records to this JSONL file (flushed per cell)")
    p.add_argument("--resume", action="store_true", help="skip cells already recorded in --output")
    add_launcher_flags(p, matrix=True)
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--interleave", action="store_true",
                   help="build every cell, then measure round by round (for ratios between cells, e.g. CI gates)")
    p.set_defaults(handler=cmd_matrix)


def add_launcher_flags(p, matrix: bool) -> None:
    p.add_argument("--launcher", default="inline", help="inline | process | ray (docs/launchers.md)")
    if matrix:
        p.add_argument("--jobs", type=flags.positive_int, default=None,
                       help="cells at once: process launcher (default 1), ray (default: all the cluster fits)")
    p.add_argument("--cpus-per-cell", type=flags.positive_int, default=None,
                   help="threads of each cell's process; the CPUs a Ray cell asks for (ray default 1)")
    p.add_argument("--ray-address", default=None,
                   help="Ray cluster to connect to (auto, host:port, ray://host:port; default $RAY_ADDRESS, "
                        "else a local Ray)")
    p.add_argument("--ray-retries", type=flags.nonnegative_int, default=None,
                   help="re-runs of a cell lost with its Ray node or worker (default 2)")


def launcher_options(args) -> dict:
    names = ("jobs", "cpus_per_cell", "ray_address", "ray_retries")
    return {name: getattr(args, name) for name in names if getattr(args, name, None) is not None}


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


def cmd_run(args) -> int:
    from bench.launch.launchers import check_options, open_launcher
    from bench.records import append_record, check_writable
    from bench.spec import check_runnable, make_spec

    spec = make_spec(cell_values(args), CELL_LABELS)
    options = launcher_options(args)
    check_options(args.launcher, **options)
    if args.launcher != "ray":  # Ray workers check their own devices
        check_runnable(spec)
    if args.output:
        check_writable(args.output)
    with open_launcher(args.launcher, **options) as launcher:
        record = launcher.submit(spec).result()
    if args.output:
        append_record(args.output, record)
    return finish([record], args.output)


def cmd_matrix(args) -> int:
    from bench.launch.matrix import axes_from_flags, axes_from_toml, expand, run_matrix

    values = cell_values(args)
    axes, file_output = axes_from_toml(args.file, values) if args.file else (axes_from_flags(values), None)
    output = args.output if args.output is not None else file_output  # the flag overrides the file
    cells = expand(axes, {dest: CELL_LABELS[dest] for dest in values})
    records = run_matrix(cells, output, launcher=args.launcher, resume=args.resume,
                         progress=not args.no_progress, interleave=args.interleave, **launcher_options(args))
    # without an output file stdout holds the records, one JSON line each: the table goes to stderr
    return finish(records, output, table_file=None if output is not None else sys.stderr)
