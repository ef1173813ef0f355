"""The ``viperbench`` command line: one module per command group, each adding its commands.

Exit codes: 0 success, 1 a failed check or a failed cell, 2 bad input (one line on stderr).
"""

from __future__ import annotations

import argparse
import sys

from bench.cli import capacity, cells, evaluation, flow, gate, reporting, serving, streaming, training
from bench.cli.common import CELL_FLAGS, CELL_LABELS, Parser
from bench.errors import CheckFailed, UserError

GROUPS = (cells, capacity, serving, evaluation, training, gate, reporting, flow, streaming)
__all__ = ["CELL_FLAGS", "CELL_LABELS", "build_parser", "main"]


def build_parser() -> Parser:
    parser = Parser(prog="viperbench", description="Benchmark long-video backbones and visual-token compressors.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    for group in GROUPS:
        group.add_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["lm-eval"]:  # every later flag is lm-eval's own: no parsing here
        args = argparse.Namespace(command="lm-eval", args=argv[1:], handler=evaluation.cmd_lm_eval)
    elif argv[:1] == ["lmms-eval"]:  # the same for lmms-eval
        args = argparse.Namespace(command="lmms-eval", args=argv[1:], handler=evaluation.cmd_lmms_eval)
    else:
        try:
            args = build_parser().parse_args(argv)
        except SystemExit as exc:  # --help (0), or argparse's one error line (2)
            return exc.code
    try:
        return args.handler(args)
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
