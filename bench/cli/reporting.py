"""Tables, figures and reports from records."""

from __future__ import annotations

from bench.errors import UserError
from bench.cli.common import split


def add_commands(sub) -> None:
    p = sub.add_parser("table", help="pivot records into a table")
    p.add_argument("files", nargs="+", help="JSONL result files")
    p.add_argument("--rows", default="arch", help="record keys for rows (comma list; default arch)")
    p.add_argument("--cols", default="frames", help="record keys for columns (comma list; default frames)")
    p.add_argument("--metric", default="prefill_tok_s", help="metric in the cells (default prefill_tok_s)")
    p.add_argument("--format", default="github", help="github | latex | csv")
    p.add_argument("--preset", help="paper-shaped table: efficiency | table1 (ignores --rows/--cols/--metric)")
    p.add_argument("--reference", help="with --preset: show each row's change against this row, e.g. compressor=none")
    p.add_argument("--ci", action="store_true", help="timings as value ± half-width of their 95%% interval")
    p.set_defaults(handler=cmd_table)

    p = sub.add_parser("plot", help="a figure from records (PNG or PDF by the file suffix)")
    p.add_argument("files", nargs="+", help="JSONL result files")
    p.add_argument("--kind", default="xy", help="xy | throughput | memory | maxframes | probes | pareto | niah | flow | stream (default xy)")
    p.add_argument("--x", default="frames", help="x key for xy plots (default frames)")
    p.add_argument("--y", default="prefill_tok_s", help="metric for xy plots (default prefill_tok_s)")
    p.add_argument("--series", help="keys that make one line each (comma list; default: the keys that vary)")
    p.add_argument("--out", default="figure.png", help="output file, .png or .pdf (default figure.png)")
    p.set_defaults(handler=cmd_plot)

    p = sub.add_parser("report", help="every table and figure for a run, with an index.md")
    p.add_argument("files", nargs="+", help="JSONL result files")
    p.add_argument("--out", required=True, help="output directory")
    p.set_defaults(handler=cmd_report)


def cmd_table(args) -> int:
    from bench.reporting.table import load_records, render

    records = load_records(args.files)
    if args.preset:
        from bench.reporting import paper_tables
        from bench.reporting.compare import parse_reference

        print(paper_tables.render(records, args.preset, fmt=args.format, reference=parse_reference(args.reference)))
        return 0
    print(render(records, split(args.rows), split(args.cols), args.metric, fmt=args.format, ci=args.ci))
    return 0


def cmd_plot(args) -> int:
    from bench.reporting import flow_plots, plots, stream_plots
    from bench.reporting.table import load_records

    records = load_records(args.files)
    kinds = {
        "xy": lambda out: plots.plot_xy(records, args.x, args.y, out,
                                        series=split(args.series) if args.series else None),
        "throughput": lambda out: plots.plot_throughput(records, out, x=args.x, metric=args.y),
        "memory": lambda out: plots.plot_memory(records, out, x=args.x),
        "maxframes": lambda out: plots.plot_max_frames(records, out),
        "probes": lambda out: plots.plot_probes(records, out),
        "pareto": lambda out: plots.plot_pareto(records, out),
        "niah": lambda out: plots.plot_niah(records, out),
        "flow": lambda out: flow_plots.plot_flow(records, out),
        "stream": lambda out: stream_plots.plot_stream(records, out),
    }
    if args.kind not in kinds:
        raise UserError(f"unknown plot kind {args.kind!r}; valid: {', '.join(kinds)}")
    print(kinds[args.kind](args.out))
    return 0


def cmd_report(args) -> int:
    from bench.reporting.report import write_report

    print(write_report(args.files, args.out))
    return 0
