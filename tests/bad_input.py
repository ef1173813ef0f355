"""Shared checks for bad input: exit code 2, exactly one stderr line naming the problem, no traceback.

In-process (`user_error`, through `bench.cli.main` with pytest's `capfd`, so writes to the file
descriptor by libraries are caught too) or in a child process (`child_user_error`, for what only a
real process shows: progress bars of other libraries, signals, interpreter start-up).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def assert_one_line_error(err: str, *needles: str) -> None:
    assert err.endswith("\n") and err.count("\n") == 1, f"expected exactly one stderr line, got {err!r}"
    assert "Traceback" not in err
    for needle in needles:
        assert needle in err, f"{needle!r} not in {err!r}"


def user_error(capfd, argv: list[str], *needles: str) -> str:
    """`viperbench ARGV` in this process: exit 2, nothing on stdout, one stderr line with every needle."""
    from bench.cli import main

    capfd.readouterr()
    rc = main(argv)
    out, err = capfd.readouterr()
    assert rc == 2, (rc, out, err)
    assert err.startswith("viperbench") and ": error: " in err, err
    assert_one_line_error(err, *needles)
    return err


def child_user_error(argv: list[str], *needles: str, env: dict | None = None, cwd=None,
                     timeout: float = 300) -> subprocess.CompletedProcess:
    """`python -m bench.cli ARGV` in a child process: exit 2, one stderr line with every needle."""
    full_env = {**os.environ, "PYTHONPATH": str(REPO), **(env or {})}
    proc = subprocess.run([sys.executable, "-m", "bench.cli", *argv], capture_output=True, text=True,
                          env=full_env, cwd=cwd or REPO, timeout=timeout)
    assert proc.returncode == 2, (proc.returncode, proc.stdout[-2000:], proc.stderr[-4000:])
    assert_one_line_error(proc.stderr, *needles)
    return proc
