"""Paired A/B regression gate: the same cells from two checkouts, alternating, in fresh processes.

``viperbench ab --base REV|DIR --head REV|DIR [MATRIX.toml] [--pairs N]``

- A side is a directory holding a viperbench checkout, or a git revision of this project's
  repository, exported (``git archive``) into a temporary directory.
- Each pair runs the matrix (``matrix --interleave``) once for each side, each in a fresh child
  process that imports *that* checkout's code. With two or more CPUs the two sides of a pair
  run at the same time, each pinned to its own core, so a slow spell of the machine (another
  tenant, a throttled host) falls on both; the cores and the start order swap every pair. On
  one CPU they run in turn, (base, head), (head, base), ...
- Per cell and metric, pair i gives one ratio head_i / base_i of the two runs' medians. The
  gate's estimate is the geometric mean of those ratios, with a Student t interval on their
  logarithms (``bench.stats.paired_ratio_ci``); each gated (cell, metric) is a one-sided test at
  ``alpha / m`` (Bonferroni over the m of them), so the chance that an unchanged tree fails
  anywhere stays below ``alpha``.
  A timing regresses when that whole interval lies on the worse side of 1 and the estimate is
  beyond ``tolerance``. Every cell is judged on its own numbers: a slowdown in one backbone
  cannot hide behind a ratio to another.
- On CPU cells the gate reads the CPU-time rates (``prefill_cpu_tok_s``, ``decode_cpu_tok_s``)
  where both sides record them, wall-time rates otherwise.
- Exact work counters (``metrics.work``) of the two sides are compared as ``compare`` does:
  counted on the same machine with the same libraries, any added work is a regression.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from bench import metrics as catalogue
from bench.errors import UserError

REPO = Path(__file__).resolve().parents[2]
DEFAULT_MATRIX = REPO / "results" / "baselines" / "ab-gate.toml"
# metric -> (higher is better, the CPU-time twin used on CPU cells when both sides have it)
# gated timing -> its per-CPU-second twin, used when both sides have it; the direction is the catalogue's
GATED = {"prefill_tok_s": "prefill_cpu_tok_s", "decode_tok_s": "decode_cpu_tok_s"}


@dataclass
class Side:
    name: str  # base | head
    given: str  # what the user wrote
    path: Path
    commit: str | None


def _git(*args: str, cwd: Path = REPO, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(["git", *args], cwd=cwd, capture_output=True, **kwargs)


def is_checkout(path: Path) -> bool:
    """A viperbench checkout: its command line (a module, or a package in later trees) and a pyproject naming it."""
    pyproject = path / "pyproject.toml"
    cli = path / "bench" / "cli"
    try:
        return ((cli.with_suffix(".py").is_file() or (cli / "__init__.py").is_file())
                and 'name = "viperbench"' in pyproject.read_text())
    except OSError:
        return False


def resolve(name: str, given: str, scratch: Path) -> Side:
    """A side as a directory of code: the directory given, or the revision exported into ``scratch``."""
    path = Path(given)
    if path.is_dir():
        if not is_checkout(path):
            raise UserError(f"--{name} {given!r} is not a viperbench checkout (no bench/cli and pyproject.toml)")
        head = _git("rev-parse", "--short=12", "HEAD", cwd=path, text=True)
        return Side(name, given, path.resolve(), head.stdout.strip() if head.returncode == 0 else None)
    found = _git("rev-parse", "--verify", "--quiet", f"{given}^{{commit}}", text=True)
    if found.returncode != 0:
        raise UserError(f"--{name} {given!r} is neither a directory nor a revision of this repository")
    commit = found.stdout.strip()
    out = scratch / name
    out.mkdir(parents=True)
    archive = _git("archive", "--format=tar", commit)
    if archive.returncode != 0:
        raise UserError(f"--{name} {given!r}: git archive failed: {archive.stderr.decode().strip()[:200]}")
    tar_path = scratch / f"{name}.tar"
    tar_path.write_bytes(archive.stdout)
    with tarfile.open(tar_path) as tar:
        tar.extractall(out, filter="data")
    tar_path.unlink()
    if not is_checkout(out):
        raise UserError(f"--{name} {given!r} ({commit[:12]}) is not a viperbench checkout")
    return Side(name, given, out, commit[:12])


def start_side(side: Side, matrix: Path, out: Path, core: int | None) -> subprocess.Popen:
    """The matrix, interleaved, in a fresh child process that imports this side's code (on one core)."""
    env = {**os.environ, "PYTHONPATH": str(side.path)}
    env.setdefault("OMP_NUM_THREADS", "1")
    cmd = [sys.executable, "-m", "bench.cli", "matrix", str(matrix), "--interleave", "--no-progress",
           "--output", str(out)]
    pin = (lambda: os.sched_setaffinity(0, {core})) if core is not None else None
    return subprocess.Popen(cmd, cwd=side.path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True, preexec_fn=pin)


def finish_side(side: Side, proc: subprocess.Popen, matrix: Path, out: Path, timeout: float) -> list[dict]:
    from bench.records import iter_records

    try:
        _, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise UserError(f"the {side.name} side ({side.given}) ran past {timeout:.0f} s on {matrix}") from None
    if proc.returncode == 2 or not out.exists():
        last = (err.strip().splitlines() or ["no output"])[-1]
        raise UserError(f"the {side.name} side ({side.given}) cannot run {matrix}: {last}")
    return list(iter_records(str(out)))


def cores() -> list[int]:
    """The CPUs this process may run on (Linux), else none known."""
    try:
        return sorted(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return []


def _key(record: dict) -> tuple:
    from bench.reporting.compare import cell_key

    return cell_key(record)


@dataclass
class Verdict:
    cell: str
    metric: str
    base: float | str | None
    head: float | str | None
    ratio: float | None
    low: float | None
    high: float | None
    verdict: str
    note: str = ""


def decide(pairs: list[tuple[list[dict], list[dict]]], tolerance: float, alpha: float) -> list[Verdict]:
    """The gate's verdicts from (base records, head records) of every pair."""
    import statistics

    from bench.reporting.compare import _label, spec_varying, work_rows
    from bench.stats import paired_ratio_ci

    indexed = [({_key(r): r for r in b_run}, {_key(r): r for r in h_run}) for b_run, h_run in pairs]
    base0, head0 = indexed[0]
    if set(base0) != set(head0):
        only = sorted(str(k) for k in set(base0) ^ set(head0))[:2]
        raise UserError(f"the two sides ran different cells (e.g. {', '.join(only)}): mismatched matrices")
    every = list(base0.values())
    varying = spec_varying(every)
    series: dict[tuple, list[float]] = {}
    values: dict[tuple, tuple[list[float], list[float]]] = {}
    out: list[Verdict] = []
    for key, base in base0.items():
        head = head0[key]
        label = _label(base, varying)
        if base.get("status") != "ok" or head.get("status") != "ok":
            verdict = "REGRESSION" if base.get("status") == "ok" else "info"
            out.append(Verdict(label, "status", base.get("status"), head.get("status"), None, None, None, verdict))
            continue
        for metric, cpu_twin in GATED.items():
            higher = catalogue.METRICS[metric].higher
            use = cpu_twin if all(cpu_twin in r["metrics"] for r in (base, head)) else metric
            ratios, b_values, h_values = [], [], []
            for b_index, h_index in indexed:
                b, h = b_index.get(key), h_index.get(key)
                if not b or not h or b.get("status") != "ok" or h.get("status") != "ok":
                    continue
                b_values.append(b["metrics"][use])
                h_values.append(h["metrics"][use])
                ratios.append(h["metrics"][use] / b["metrics"][use])
            series[(label, use, higher)] = ratios
            values[(label, use, higher)] = (b_values, h_values)
        for row in work_rows(label, base["metrics"], head["metrics"]):
            out.append(Verdict(row.cell, row.metric, row.old, row.new, row.ratio, None, None, row.verdict, row.note))
    # each (cell, metric) is tested one-sided at alpha / m (Bonferroni): a two-sided interval at 1 - 2 alpha / m
    level = 1 - 2 * alpha / max(1, len(series))
    for (label, metric, higher), ratios in series.items():
        if len(ratios) < 2:
            out.append(Verdict(label, metric, None, None, None, None, None, "info", "fewer than 2 pairs"))
            continue
        point, low, high = paired_ratio_ci(ratios, level)
        if higher:
            worse, better = high < 1 and point < 1 - tolerance, low > 1 and point > 1 + tolerance
        else:
            worse, better = low > 1 and point > 1 + tolerance, high < 1 and point < 1 - tolerance
        b_values, h_values = values[(label, metric, higher)]
        out.append(Verdict(label, metric, statistics.median(b_values), statistics.median(h_values), point, low, high,
                           "REGRESSION" if worse else "improved" if better else "ok",
                           f"{len(ratios)} pairs, {level:.2%} interval"))
    return out


def render(verdicts: list[Verdict]) -> str:
    from tabulate import tabulate

    from bench.reporting.compare import _fmt as num

    body = [[v.cell, v.metric, num(v.base), num(v.head),
             "—" if v.ratio is None else (f"{v.ratio:.3f}" if v.low is None else
                                          f"{v.ratio:.3f} [{v.low:.3f}, {v.high:.3f}]"), v.verdict, v.note]
            for v in verdicts]
    return tabulate(body, ["cell", "metric", "base", "head", "head/base [interval]", "verdict", "note"],
                    tablefmt="github", disable_numparse=True)


def run_ab(base: str, head: str, matrix: str | None, pairs: int, tolerance: float, alpha: float,
           output: str | None = None, timeout: float = 1800, log=None, parallel: bool = True) -> list[Verdict]:
    """Run the pairs and decide. ``log(message)`` sees one line per pair."""
    from bench.records import append_record

    matrix_path = Path(matrix) if matrix else DEFAULT_MATRIX
    if not matrix_path.is_file():
        raise UserError(f"matrix file not found: {matrix_path}")
    matrix_path = matrix_path.resolve()
    if pairs < 2:
        raise UserError(f"--pairs must be at least 2 (an interval needs two pairs), got {pairs}")
    scratch = Path(tempfile.mkdtemp(prefix="viperbench-ab-"))
    try:
        sides = {"base": resolve("base", base, scratch), "head": resolve("head", head, scratch)}
        results: list[tuple[list[dict], list[dict]]] = []
        free = cores()
        together = parallel and len(free) >= 2
        for i in range(pairs):
            order = ("base", "head") if i % 2 == 0 else ("head", "base")
            got, t0 = {}, time.perf_counter()
            if together:  # both at once, each on its own core; cores and start order swap every pair
                pins = dict(zip(order, (free[0], free[1])))
                procs = {name: start_side(sides[name], matrix_path, scratch / f"{name}-{i}.jsonl", pins[name])
                         for name in order}
                try:
                    for name in order:
                        got[name] = finish_side(sides[name], procs[name], matrix_path, scratch / f"{name}-{i}.jsonl",
                                                timeout)
                finally:
                    for proc in procs.values():
                        if proc.poll() is None:
                            proc.kill()
            else:
                for name in order:
                    out = scratch / f"{name}-{i}.jsonl"
                    got[name] = finish_side(sides[name], start_side(sides[name], matrix_path, out, None), matrix_path,
                                            out, timeout)
            if log:
                log(f"pair {i + 1}/{pairs}: base {sides['base'].commit or sides['base'].given}, head "
                    f"{sides['head'].commit or sides['head'].given}, {'together' if together else 'in turn'}, "
                    f"{time.perf_counter() - t0:.0f} s")
            if output:
                for name in order:
                    for record in got[name]:
                        append_record(output, {**record, "ab": {"side": name, "pair": i, "given": sides[name].given,
                                                                "commit": sides[name].commit,
                                                                "together": together}})
            results.append((got["base"], got["head"]))
        return decide(results, tolerance, alpha)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
