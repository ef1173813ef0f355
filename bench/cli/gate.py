"""Regression gates: compare against a baseline, paired A/B runs, per-commit history."""

from __future__ import annotations

import sys

from bench import flags
from bench.errors import CheckFailed, UserError
from bench.cli.common import Parser


def add_commands(sub) -> None:
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
    p.set_defaults(handler=cmd_compare)

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
    p.set_defaults(handler=cmd_ab)

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
    p.set_defaults(handler=cmd_history)


def cmd_compare(args) -> int:
    from bench.reporting.compare import OTHER_MACHINE, compare, machine, parse_reference, render_rows
    from bench.records import iter_records

    new = list(iter_records(args.new))
    rows = compare(new, list(iter_records(args.baseline)),
                   tolerance=args.tolerance, memory_tolerance=args.memory_tolerance,
                   reference=parse_reference(args.reference), accuracy_tolerance=args.accuracy_tolerance)
    bad = [r for r in rows if r.verdict == "REGRESSION"]
    print(render_rows(bad if args.only_regressions else rows))
    if any(r.note == OTHER_MACHINE for r in rows):
        here = ", ".join(sorted({machine(r) or "?" for r in new}))
        print(f"timings not gated: {args.baseline} has no records from {here}; "
              f"append this run's records to it to gate timings on this machine", file=sys.stderr)
    if bad:
        raise CheckFailed(f"{len(bad)} regression(s) against {args.baseline}")
    print(f"no regressions against {args.baseline} ({len(rows)} checks)")
    return 0


def cmd_ab(args) -> int:
    from bench.reporting.ab import render, run_ab

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
    from bench.reporting import history
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
